"""Billbee's side of the stock flow: its current stock per SKU (the full reconcile) and its bundles.

The cheapest way to learn Billbee's current stock of every article is the product list itself:
`GET /products` at 250 per page carries `StockCurrent` and `Stocks[]` (per stock location, with
`UnfulfilledAmount`), so 200,000 articles cost 800 calls (~7 minutes at Billbee's 2 calls/s), where
`GET /products/reservedamount` or single reads would cost one call per article. The same pages tell
which articles are bundles (`Type` 2 / `BillOfMaterial`): bundles get no stock row (Billbee computes
their stock from the components and refuses a write), and their bill of material lets open bundle
orders count for their components. Bundles are kept in `<slug>.billbee_bundles` (bundle SKU → parts).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient, Product
from billbee_pulpo_pipeline.clients.http import ApiError
from billbee_pulpo_pipeline.defs.common import Flow, mapping_kind
from billbee_pulpo_pipeline.mapping.stock import BUNDLE_TYPE
from billbee_pulpo_pipeline.progress import Progress
from billbee_pulpo_pipeline.state import StateStore, snapshot_row

BUNDLES = "billbee_bundles"
PAGE_SIZE = 250

Components = dict[str, list[tuple[str, float]]]


@dataclass
class BillbeeStock:
    """What a full read of Billbee's products found."""

    levels: dict[str, float | None] = field(default_factory=dict)  # SKU → value as a write would have set it
    bundles: Components = field(default_factory=dict)
    products: int = 0
    without_sku: int = 0


def is_bundle(product: Product) -> bool:
    return product.Type == BUNDLE_TYPE or bool(product.BillOfMaterial)


def components_of(product: Product) -> list[tuple[str, float]]:
    return [((item.SKU or "").strip(), float(item.Amount or 1)) for item in product.BillOfMaterial or []
            if (item.SKU or "").strip()]


def written_level(product: Product, stock_id: int | None, default_stock_id: int | None,
                  autosubtract: bool) -> float | None:
    """The value a stock write would have had to send for Billbee to show what it shows now: the
    current stock of the location, plus its unfulfilled amount when Billbee subtracts that itself."""
    location = stock_id or default_stock_id
    entry = next((s for s in product.Stocks or [] if location is not None and s.StockId == location), None)
    if stock_id is not None and entry is None:
        return None  # the article has no stock in that location yet: write it
    current = entry.StockCurrent if entry is not None and entry.StockCurrent is not None else product.StockCurrent
    if current is None:
        return None
    unfulfilled = (entry.UnfulfilledAmount or 0.0) if entry is not None else 0.0
    return float(current) + (float(unfulfilled) if autosubtract else 0.0)


def read_billbee_stock(client: BillbeeClient, *, stock_id: int | None, autosubtract: bool,
                       log: logging.Logger | Any = None, label: str = "Billbee stock") -> BillbeeStock:
    """Every article's stock and every bundle, from the product list."""
    log = log or logging.getLogger(__name__)
    progress = Progress(label, "Billbee articles", log.info)
    default_stock_id = None
    if stock_id is None and autosubtract:  # the default location's unfulfilled amount is needed
        default_stock_id = next((s.Id for s in client.get_stock_locations() if s.IsDefault), None)
    result = BillbeeStock()
    for page in client.iter_product_pages(page_size=PAGE_SIZE):
        for product in page.items:
            result.products += 1
            sku = (product.SKU or "").strip()
            if not sku:
                result.without_sku += 1
            elif is_bundle(product):
                result.bundles[sku] = components_of(product)
            else:
                result.levels[sku] = written_level(product, stock_id, default_stock_id, autosubtract)
        progress.update(result.products, page.paging.TotalRows if page.paging is not None else None)
    progress.finish()
    return result


class Bundles:
    """Bundle SKUs (no stock row of their own) and their parts, from every source the flow has."""

    def __init__(self, flow: Flow, store: StateStore) -> None:
        self.store = store
        self.dataset = flow.dataset(BUNDLES)
        self.kit_kind = mapping_kind("kit", flow)
        self.product_kind = mapping_kind("product", flow)

    def replace(self, bundles: Components) -> None:
        self.store.replace_snapshot(self.dataset, [
            snapshot_row(sku, {"components": [list(part) for part in parts]}) for sku, parts in bundles.items()])

    def add(self, bundles: Components) -> None:
        if bundles:
            self.store.upsert_snapshot(self.dataset, [
                snapshot_row(sku, {"components": [list(part) for part in parts]}) for sku, parts in bundles.items()])

    def components(self) -> Components:
        return {sku: [(part, float(amount)) for part, amount in json.loads(payload)["components"]]
                for sku, payload in self.store.snapshot_rows(self.dataset).items()}

    def kit_skus(self) -> set[str]:
        """SKUs the products flow of the same pair made PULPO kits of (bundles: kit)."""
        bundle_ids = list(self.store.mappings(self.kit_kind))
        if not bundle_ids:
            return set()
        mapped = self.store.get_mappings(self.product_kind, bundle_ids)
        return {str(m.extra["sku"]) for m in mapped.values() if m.extra and m.extra.get("sku")}

    def look_up(self, client: BillbeeClient, billbee_ids: list[int], limit: int) -> Components:
        """Parts of bundles seen in orders but not known yet: one `GET /products/{id}` each, at most
        `limit` per run (the rest next run); found ones are kept."""
        found: Components = {}
        for billbee_id in billbee_ids[:limit]:
            try:
                product = client.get_product(billbee_id)
            except ApiError:
                continue
            sku = (product.SKU or "").strip()
            if sku and is_bundle(product):
                found[sku] = components_of(product)
        self.add(found)
        return found
