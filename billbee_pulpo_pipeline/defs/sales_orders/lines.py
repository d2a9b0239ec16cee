"""Sales orders: the PULPO products an order's lines ship as (settings `bundles`), for the writer.

Each line is resolved by `mapping.articles.resolve_line` over the articles the products flow of the
same pair knows (`defs/articles.py`): by its Billbee article first, by its SKU only when it has no
linked article. A part's PULPO product is the products flow's mapping of the article; else the
article's SKU (the line's SKU when the article is not known locally) looked up in PULPO once per run.
A product found by the line's SKU that carries another Billbee article in its attributes is not taken:
a marketplace SKU never lands on the wrong article. Lookups are not written anywhere: the mapping
belongs to the products flow, and a lookup is cheap (PULPO calls cost nothing, one per SKU and run).

Bundles (`bundles`):
- `components` (default): the line becomes one line per component (quantity × Amount), each with
  `line_order_id` `<position>-<n>` (n = the component's place in the bill of material; nested bundles
  add `-<m>`), so PULPO reserves and picks the goods it has. Separate lines, not merged with another
  line of the same product: every line keeps its trace to the Billbee position, as two Billbee
  positions of one article already are two PULPO lines; packing reads quantities per product anyway.
- `kit`: the line stays one line with the bundle's PULPO kit product where a kit exists: the products
  flow's kit (products `bundles: kit`), or, when the products flow makes no kits (none, or `bundles:
  skip`), a product PULPO has under the bundle's SKU (a kit made by hand). Else its components, so an
  order never waits for a kit that no flow will make.
A bundle line whose article is not known locally cannot be split: the order waits with a reason until
the products flow has read the article (no Billbee call is made for it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from billbee_pulpo_pipeline.defs.articles import ArticleCatalog
from billbee_pulpo_pipeline.mapping import orders as om
from billbee_pulpo_pipeline.mapping.articles import LineRef, Part, resolve_line, whole

WAITING = "waiting for product"
LINE_COUNTS = ("lines_by_article", "bundle_lines_split", "bundle_lines_as_kit")


@dataclass(frozen=True)
class Hit:
    """A PULPO product found by SKU, with the Billbee article its attributes name (if any)."""

    product_id: int
    billbee_id: str | None


class LineResolver:
    """Resolves the lines of many orders; `prepare` loads what a chunk needs, `resolve` one order."""

    def __init__(self, catalog: ArticleCatalog, lookup: Callable[[str], Hit | None], bundles: str,
                 counts: dict[str, int] | None = None) -> None:
        self.catalog = catalog
        self.lookup = lookup
        self.kit_mode = bundles == "kit"
        self.counts = counts if counts is not None else {}  # the writer's report counts: shown as metadata
        for name in LINE_COUNTS:
            self.counts.setdefault(name, 0)
        self._skus: dict[str, Hit | None] = {}
        self._kits: dict[str, bool] = {}

    def prepare(self, lines: Iterable[om.Line]) -> None:
        articles = self.catalog.load(line.billbee_product_id for line in lines)
        if self.kit_mode and self.catalog.makes_kits:
            bundles = [key for key, a in articles.items() if a.bundle and key not in self._kits]
            made = self.catalog.kits(bundles)
            self._kits.update({key: key in made and articles[key].pulpo_id is not None for key in bundles})

    def resolve(self, lines: Sequence[om.Line]) -> list[om.Line] | str:
        """The order's PULPO lines, or why it cannot go yet (the quarantine reason)."""
        out: list[om.Line] = []
        missing: list[str] = []
        for line in lines:
            ref = LineRef(line.billbee_product_id, line.sku, line.quantity, line.bundle)
            resolution = resolve_line(ref, self.catalog.articles, keep=self._kept(line))
            if resolution.unknown_bundle is not None:
                whole_line = resolve_line(ref, self.catalog.articles, split_bundles=False)  # a kit by its SKU?
                if not (self.kit_mode and self._pulpo_id(whole_line.parts[0])):
                    return self._unknown_bundle(resolution.unknown_bundle)
                resolution = whole_line
            if len(resolution.parts) == 1 and resolution.parts[0].bundle and not self._pulpo_id(resolution.parts[0]):
                resolution = resolve_line(ref, self.catalog.articles)  # no kit in PULPO: ship the parts
                if resolution.unknown_bundle is not None:
                    return self._unknown_bundle(resolution.unknown_bundle)
            parts = resolution.parts
            for part in parts:
                quantity = whole(part.quantity)
                if quantity is None:
                    bundle = line.sku or f"Billbee article {line.billbee_product_id}"
                    return (f"bundle {bundle}: {part.quantity:g} × {part.label()} is not a whole number; PULPO "
                            "counts units (check the Amount in the bundle's bill of material)")
                product_id = self._pulpo_id(part)
                if product_id is None:
                    missing.append(part.label())
                    continue
                out.append(om.Line(part.sku or line.sku, quantity, _position(line.position, part),
                                   part.article_id, part.bundle, product_id))
            self._count(line, parts)
        if missing:
            return f"{WAITING} {', '.join(dict.fromkeys(missing))}"
        return out

    def _kept(self, line: om.Line) -> set[str]:
        """Bundle articles of this line to keep whole (kit mode, a kit exists or may exist in PULPO)."""
        if not self.kit_mode:
            return set()
        article = self.catalog.articles.get(line.billbee_product_id or "")
        if article is None or not article.bundle:
            return set()
        if self.catalog.makes_kits:
            return {article.billbee_id} if self._kits.get(article.billbee_id) else set()
        return {article.billbee_id}  # no flow makes kits: taken when PULPO has one under the bundle's SKU

    def _pulpo_id(self, part: Part) -> int | None:
        if part.pulpo_id is not None:
            return part.pulpo_id
        if not part.sku:
            return None
        if part.sku not in self._skus:
            self._skus[part.sku] = self.lookup(part.sku)
        hit = self._skus[part.sku]
        if hit is None:
            return None
        if not part.known and part.article_id and hit.billbee_id and hit.billbee_id != part.article_id:
            return None  # PULPO's product under this SKU is another Billbee article's
        return hit.product_id

    def _unknown_bundle(self, label: str) -> str:
        if self.catalog.products_name is not None:
            hint = f"the products integration '{self.catalog.products_name}' reads them on its next sync"
        else:
            hint = ("add a products integration for this Billbee account and PULPO user, or set bundles: kit "
                    "and make the bundle a kit in PULPO")
        return f"waiting for bundle {label}: its parts are not known yet; {hint}"

    def _count(self, line: om.Line, parts: Sequence[Part]) -> None:
        if any(p.path for p in parts):
            self.counts["bundle_lines_split"] += 1
        elif parts and parts[0].bundle:
            self.counts["bundle_lines_as_kit"] += 1
        elif parts and parts[0].sold_as:
            self.counts["lines_by_article"] += 1


def _position(position: str | None, part: Part) -> str | None:
    if not part.path:
        return position
    suffix = "-".join(str(n) for n in part.path)
    return f"{position}-{suffix}" if position else None
