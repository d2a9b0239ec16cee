"""The line resolution both the sales-orders and the stock flow use (`mapping/articles.py`) and the
sales-orders flow's use of it (`defs/sales_orders/lines.py`): pure functions and plain objects, no network."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from billbee_pulpo_pipeline.defs.sales_orders.lines import Hit, LineResolver
from billbee_pulpo_pipeline.mapping import orders as om
from billbee_pulpo_pipeline.mapping.articles import (
    Article,
    Component,
    LineRef,
    article_from_fields,
    resolve_line,
    whole,
)
from billbee_pulpo_pipeline.mapping.stock import OpenOrder, OrderLine, open_units

SHIRT = Article("1", "SHIRT-RED", (), 501)
MUG = Article("2", "MUG", (), None)                          # in the snapshot, not (yet) in PULPO's mapping
SET = Article("3", "SET", (Component("1", "SHIRT-RED", 1.0), Component("2", "MUG", 2.0)), 503)
BIG = Article("4", "BIG", (Component("3", "SET", 1.0), Component(None, "LOOSE", 3.0)))
ARTICLES = {a.billbee_id: a for a in (SHIRT, MUG, SET, BIG)}


def test_a_marketplace_sku_resolves_to_the_linked_article():
    [part] = resolve_line(LineRef("1", "AMZ-B07XYZ", 2), ARTICLES).parts
    assert (part.article_id, part.sku, part.quantity, part.known, part.pulpo_id) == ("1", "SHIRT-RED", 2, True, 501)
    assert part.label() == "SHIRT-RED (sold as AMZ-B07XYZ)"


def test_an_unknown_article_keeps_the_line_sku_and_names_the_article():
    [part] = resolve_line(LineRef("99", "AMZ-1", 1), ARTICLES).parts
    assert (part.sku, part.known, part.pulpo_id) == ("AMZ-1", False, None)
    assert part.label() == "AMZ-1 (Billbee article 99)"
    [plain] = resolve_line(LineRef(None, "SKU-7", 1), ARTICLES).parts     # no linked article: by SKU
    assert (plain.article_id, plain.sku, plain.label()) == (None, "SKU-7", "SKU-7")


def test_a_bundle_ships_as_its_components_times_the_amount_nested_too():
    parts = resolve_line(LineRef("3", "SET", 2, bundle=True), ARTICLES).parts
    assert [(p.sku, p.quantity, p.path, p.pulpo_id) for p in parts] == [("SHIRT-RED", 2, (1,), 501),
                                                                      ("MUG", 4, (2,), None)]
    nested = resolve_line(LineRef("4", "BIG", 1, bundle=True), ARTICLES).parts
    assert [(p.sku, p.quantity, p.path, p.known) for p in nested] == [
        ("SHIRT-RED", 1, (1, 1), True), ("MUG", 2, (1, 2), True), ("LOOSE", 3, (2,), False)]


def test_a_kept_bundle_stays_whole_and_an_unknown_bundle_is_reported():
    [kit] = resolve_line(LineRef("3", "SET", 2, bundle=True), ARTICLES, keep={"3"}).parts
    assert (kit.sku, kit.quantity, kit.bundle, kit.pulpo_id) == ("SET", 2, True, 503)
    unknown = resolve_line(LineRef("98", "BOX", 1, bundle=True), ARTICLES)
    assert unknown.parts == () and unknown.unknown_bundle == "BOX (Billbee article 98)"
    [whole_line] = resolve_line(LineRef("98", "BOX", 1, bundle=True), ARTICLES, split_bundles=False).parts
    assert (whole_line.sku, whole_line.bundle, whole_line.known) == ("BOX", True, False)


def test_articles_from_the_products_snapshot():
    bundle = article_from_fields({"billbee_id": "3", "sku": " SET ", "type": 2, "bill_of_material": [
        {"sku": "A", "article_id": "1", "amount": 2}, {"sku": "B", "article_id": None, "amount": None}]}, 77)
    assert bundle == Article("3", "SET", (Component("1", "A", 2.0), Component(None, "B", 1.0)), 77)
    plain = article_from_fields({"billbee_id": "5", "sku": "X", "type": 1, "bill_of_material": [
        {"sku": "A", "article_id": "1", "amount": 2}]})
    assert not plain.bundle                                  # only Type 2 splits, as the products flow's kits


def test_whole_units():
    assert (whole(2.0), whole(0.1 * 3 * 10), whole(1.5), whole(0.0)) == (2, 3, None, None)


def test_open_units_count_marketplace_and_bundle_lines_against_the_article_skus():
    orders = [OpenOrder("1", 3, (OrderLine("AMZ-B07XYZ", 2, 1), OrderLine("SET", 1, 3, True),
                                 OrderLine("LEGACY", 1, None), OrderLine("BOX", 1, 98, True)))]
    units = open_units(orders, {3}, set(), {"BOX": [("MUG", 5.0)]}, ARTICLES)
    assert units.units == {"SHIRT-RED": 3.0, "MUG": 7.0, "LEGACY": 1.0}  # BOX (unknown) still splits by its SKU
    assert "AMZ-B07XYZ" not in units.units and units.unresolved == {}
    without = open_units(orders, {3}, set(), {}, None)                   # no articles known: by SKU, as before
    assert without.units == {"AMZ-B07XYZ": 2.0, "LEGACY": 1.0} and without.unresolved == {"SET": 1.0, "BOX": 1.0}


# ---- the sales-orders flow's resolver over a catalog in memory -----------------------------------------


@dataclass
class Catalog:
    articles: dict[str, Article]
    makes_kits: bool = True
    made: set[str] = field(default_factory=set)
    products_name: str | None = "Produkte"

    def load(self, ids: Any) -> dict[str, Article]:
        list(ids)
        return self.articles

    def kits(self, ids: Any) -> set[str]:
        return set(ids) & self.made


def line(article: str | None, sku: str, quantity: int = 1, bundle: bool = False, position: str = "10") -> om.Line:
    return om.Line(sku, quantity, position, article, bundle)


def resolver(pulpo: dict[str, Hit], bundles: str = "components", **catalog: Any) -> tuple[LineResolver, list[str]]:
    asked: list[str] = []

    def lookup(sku: str) -> Hit | None:
        asked.append(sku)
        return pulpo.get(sku)

    lines = LineResolver(Catalog(dict(ARTICLES), **catalog), lookup, bundles)  # type: ignore[arg-type]
    return lines, asked


def test_resolver_uses_the_mapping_first_and_looks_each_sku_up_once():
    lines, asked = resolver({"MUG": Hit(502, "2")})
    order = [line("1", "AMZ-B07XYZ", 2), line("2", "MUG", 1, position="11"), line("2", "MUG", 3, position="12")]
    lines.prepare(order)
    resolved = lines.resolve(order)
    assert [(x.product_id, x.quantity, x.position) for x in resolved] == [(501, 2, "10"), (502, 1, "11"),
                                                                          (502, 3, "12")]
    assert asked == ["MUG"] and lines.counts["lines_by_article"] == 1


def test_resolver_never_takes_another_articles_product_for_a_marketplace_sku():
    lines, _ = resolver({"AMZ-1": Hit(600, "1")})                        # PULPO's AMZ-1 is article 1's
    assert lines.resolve([line("99", "AMZ-1")]) == "waiting for product AMZ-1 (Billbee article 99)"
    lines, _ = resolver({"AMZ-1": Hit(601, None)})                       # made by hand: no article named
    assert [x.product_id for x in lines.resolve([line("99", "AMZ-1")])] == [601]  # type: ignore[union-attr]


def test_resolver_splits_bundles_with_line_ids_per_component():
    lines, _ = resolver({"MUG": Hit(502, "2")})
    resolved = lines.resolve([line("3", "SET", 2, bundle=True, position="50")])
    assert [(x.product_id, x.quantity, x.position) for x in resolved] == [(501, 2, "50-1"), (502, 4, "50-2")]
    assert lines.counts["bundle_lines_split"] == 1
    half = Article("7", "HALF", (Component("2", "MUG", 0.5),))
    lines.catalog.articles["7"] = half  # type: ignore[attr-defined]
    assert lines.resolve([line("7", "HALF", 2, bundle=True)])[0].quantity == 1  # type: ignore[index]
    assert lines.resolve([line("7", "HALF", 1, bundle=True)]) == (
        "bundle HALF: 0.5 × MUG is not a whole number; PULPO counts units (check the Amount in the bundle's "
        "bill of material)")


def test_resolver_kit_mode_uses_a_kit_where_one_exists_else_the_parts():
    lines, _ = resolver({"MUG": Hit(502, "2")}, bundles="kit", made={"3"})
    lines.prepare([line("3", "SET", bundle=True)])
    assert [(x.product_id, x.quantity) for x in lines.resolve([line("3", "SET", 2, bundle=True)])] == [(503, 2)]
    lines, _ = resolver({"MUG": Hit(502, "2")}, bundles="kit", made=set())  # kit not made (yet): the parts
    lines.prepare([line("3", "SET", bundle=True)])
    assert [x.product_id for x in lines.resolve([line("3", "SET", 1, bundle=True)])] == [501, 502]
    # products `bundles: skip`: no flow makes kits; a kit made by hand in PULPO under the bundle's SKU is used
    lines, _ = resolver({"SET": Hit(700, None), "MUG": Hit(502, "2")}, bundles="kit", makes_kits=False)
    lines.catalog.articles["3"] = replace(SET, pulpo_id=None)  # type: ignore[attr-defined]  # skipped: unmapped
    assert [x.product_id for x in lines.resolve([line("3", "SET", 1, bundle=True)])] == [700]


def test_resolver_unknown_bundle_waits_with_what_to_do():
    lines, _ = resolver({})
    assert lines.resolve([line("98", "BOX", 1, bundle=True)]) == (
        "waiting for bundle BOX (Billbee article 98): its parts are not known yet; the products integration "
        "'Produkte' reads them on its next sync")
    lines, _ = resolver({"BOX": Hit(800, None)}, bundles="kit", makes_kits=False, products_name=None)
    assert [x.product_id for x in lines.resolve([line("98", "BOX", 1, bundle=True)])] == [800]


def test_a_line_without_sku_goes_by_its_linked_article():
    fields = {"lines": [{"position": "1", "sku": None, "billbee_product_id": "1", "quantity": 2.0, "weight_g": 300},
                        {"position": "2", "sku": None, "billbee_product_id": None, "quantity": 1.0, "weight_g": 0}]}
    selection = om.select_lines(fields)
    assert [(x.sku, x.quantity, x.billbee_product_id) for x in selection.lines] == [("", 2, "1")]
    assert selection.skipped == 1 and selection.problem is None        # the weightless fee line is left out
    lines, asked = resolver({})
    assert [(x.sku, x.product_id) for x in lines.resolve(selection.lines)] == [("SHIRT-RED", 501)]  # type: ignore[union-attr]
    assert lines.resolve([line("55", "", 1)]) == ("waiting for product Billbee article 55 (the line has no SKU and "
                                                  "the products integration has not read the article yet)")
    assert asked == []
    unlinked = {"lines": [{"position": "3", "sku": "", "billbee_product_id": None, "quantity": 1, "weight_g": 250}]}
    assert om.select_lines(unlinked).problem == ("position 3 has no SKU: the warehouse cannot tell which article "
                                                 "to pick; give the article a SKU in Billbee")
