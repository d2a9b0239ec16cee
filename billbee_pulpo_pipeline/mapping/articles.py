"""Which Billbee articles an order line stands for: one resolution for the sales-orders flow (PULPO
products on the sales order) and the stock flow (open units per article SKU). Pure, no I/O.

A Billbee order position names its article twice: `Product.BillbeeId`, the article Billbee linked the
position to, and `Product.SKU`, the text the marketplace sold it under. The two differ for marketplace
listings (a seller SKU on Amazon or eBay, a variant SKU of a shop) that Billbee links to an article
with another SKU. The article is what ships, so it wins:

1. A line with a linked article that is known locally (the products flow's snapshot or its
   id mapping) stands for that article: its SKU, its PULPO product.
2. A line with a linked article that is not known locally stands for "article <id>, sold as <SKU>":
   the caller may look the line's SKU up, but must not take a product that belongs to another article.
3. A line without a linked article stands for its SKU.

Bundles (Billbee `Type` 2, an article with a `BillOfMaterial`) ship as their parts: the line becomes
one part per component, quantity × `Amount`, each component resolved the same way (by its article id,
else its SKU); bundles of bundles down to `MAX_DEPTH`. A bundle the caller keeps whole (`keep`, e.g.
a PULPO kit) stays one part. A line Billbee marks as a bundle whose article is unknown cannot be
split: `Resolution.unknown_bundle` says so and the caller decides.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

BUNDLE_TYPE = 2  # Billbee `Type` of a bill-of-materials article (products, order positions)
MAX_DEPTH = 3    # bundles of bundles are split this deep (orders and the stock flow alike)


@dataclass(frozen=True)
class Component:
    """One row of a bundle's bill of material."""

    article_id: str | None
    sku: str | None
    amount: float


@dataclass(frozen=True)
class Article:
    """A Billbee article as far as lines are concerned."""

    billbee_id: str
    sku: str | None
    components: tuple[Component, ...] = ()
    pulpo_id: int | None = None  # its PULPO product, from the products flow's mapping

    @property
    def bundle(self) -> bool:
        return bool(self.components)


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _amount(value: Any) -> float:
    """A bill-of-material amount; Billbee's default (missing, 0) is one piece."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return 1.0
    return float(value)


def article_from_fields(fields: Mapping[str, Any], pulpo_id: int | None = None) -> Article:
    """An `Article` from the products flow's snapshot record (`mapping.products.product_fields`)."""
    bom = (fields.get("bill_of_material") or []) if fields.get("type") == BUNDLE_TYPE else []
    components = tuple(Component(_text(row.get("article_id")), _text(row.get("sku")), _amount(row.get("amount")))
                       for row in bom)
    return Article(str(fields["billbee_id"]), _text(fields.get("sku")), components, pulpo_id)


@dataclass(frozen=True)
class LineRef:
    """An order line as sold: the linked article (if any), the line's SKU, the quantity."""

    article_id: str | None
    sku: str | None
    quantity: float
    bundle: bool = False  # Billbee marks the line's product as a bundle (Type 2)


@dataclass(frozen=True)
class Part:
    """What a line ships as: one article (or, when unknown, the line's SKU) and a quantity."""

    article_id: str | None
    sku: str | None          # the article's SKU when it is known, else the SKU on the line / in the BOM
    quantity: float
    known: bool              # the article is known locally (its SKU and PULPO product are the article's)
    pulpo_id: int | None = None
    path: tuple[int, ...] = ()   # component positions (1-based) inside the line's bundle; () = the line
    sold_as: str | None = None   # the line's SKU when it differs from `sku` (for messages)
    bundle: bool = False         # an unsplit bundle (kept whole, or too deep)

    def label(self) -> str:
        """How the merchant finds it: the SKU, what it was sold as, the article when not known locally."""
        text = self.sku or (f"Billbee article {self.article_id}" if self.article_id else "a line without SKU")
        if not self.sku and self.article_id:   # nothing to create or find it by: say what the merchant can do
            return text + (" (it has no SKU: give the article a SKU in Billbee)" if self.known else
                           " (the line has no SKU and the products integration has not read the article yet)")
        notes = []
        if self.sold_as:
            notes.append(f"sold as {self.sold_as}")
        if not self.known and self.article_id and self.sku:
            notes.append(f"Billbee article {self.article_id}")
        return f"{text} ({', '.join(notes)})" if notes else text


@dataclass(frozen=True)
class Resolution:
    parts: tuple[Part, ...] = ()
    unknown_bundle: str | None = None  # label of a bundle line whose parts are not known


def resolve_line(line: LineRef, articles: Mapping[str, Article], *, split_bundles: bool = True,
                 keep: Collection[str] = ()) -> Resolution:
    """The parts a line ships as (see the module docstring). `articles`: the known articles by Billbee
    id; `keep`: bundle article ids to keep whole although `split_bundles` (a PULPO kit exists)."""
    article = articles.get(line.article_id) if line.article_id else None
    if article is None:
        if line.bundle and split_bundles and line.article_id:
            sku = _text(line.sku)
            return Resolution(unknown_bundle=f"{sku} (Billbee article {line.article_id})" if sku
                              else f"Billbee article {line.article_id}")
        return Resolution((Part(line.article_id, _text(line.sku), line.quantity, False, bundle=line.bundle),))
    parts = _article_parts(article, line.quantity, articles, split_bundles, keep, (), 0)
    sold = _text(line.sku)
    if sold is not None and len(parts) == 1 and parts[0].sku != sold and not parts[0].path:
        parts = [replace(parts[0], sold_as=sold)]
    return Resolution(tuple(parts))


def _article_parts(article: Article, quantity: float, articles: Mapping[str, Article], split: bool,
                   keep: Collection[str], path: tuple[int, ...], depth: int) -> list[Part]:
    if not article.bundle or not split or article.billbee_id in keep or depth >= MAX_DEPTH:
        return [Part(article.billbee_id, article.sku, quantity, True, article.pulpo_id, path, bundle=article.bundle)]
    parts: list[Part] = []
    for number, component in enumerate(article.components, 1):
        amount = quantity * component.amount
        known = articles.get(component.article_id) if component.article_id else None
        if known is not None:
            parts += _article_parts(known, amount, articles, split, keep, (*path, number), depth + 1)
        else:
            parts.append(Part(component.article_id, component.sku, amount, False, path=(*path, number)))
    return parts


def whole(quantity: float) -> int | None:
    """A quantity as whole units, or None (PULPO counts units; 2.0000000001 from float products is 2)."""
    rounded = round(float(quantity), 6)
    return int(rounded) if rounded.is_integer() and rounded > 0 else None
