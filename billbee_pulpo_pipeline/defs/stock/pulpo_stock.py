"""PULPO's side of the stock flow: the stock summary of the configured warehouse, read page by page.

`GET /inventory/stocks/summary?warehouse_id[]=<warehouse>` gives per product `sku`, `available`
(storage minus PULPO's reservations) and `total` (physical), for that warehouse only, so other
warehouses never count. The snapshot `<slug>.pulpo_stock` keeps one row per SKU (payload: product
id, available, total); its "hash" is that content as text, cheaper than a digest and as exact.

Rows are handed on in chunks while the read goes on, so the writer can send full Billbee batches
while PULPO is still being paged (Billbee's pacer, not PULPO, bounds the run).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.state import SnapshotDiff, StateStore

PULPO_STOCK = "pulpo_stock"
CHUNK = 500  # rows handed to the writer at a time

StockRow = tuple[int, int, int | None]  # available, total, PULPO product id


@dataclass
class PulpoStockRead:
    rows: dict[str, StockRow] = field(default_factory=dict)
    records: int = 0
    without_sku: int = 0
    duplicates: dict[str, list[int | None]] = field(default_factory=dict)  # SKU → PULPO product ids


def read_pulpo_stock(client: PulpoClient, warehouse_id: int,
                     on_chunk: Callable[[list[tuple[str, StockRow]]], None] | None = None) -> PulpoStockRead:
    """Every SKU of the warehouse's stock summary; `on_chunk` sees the rows as they arrive. A SKU listed
    for two PULPO products cannot be told apart: it is reported in `duplicates` and left out (its
    first row may already have been handed on)."""
    read = PulpoStockRead()
    chunk: list[tuple[str, StockRow]] = []
    for summary in client.iter_stock_summary(warehouse_id=warehouse_id):
        read.records += 1
        sku = (summary.sku or "").strip()
        if not sku:
            read.without_sku += 1
            continue
        row = (int(summary.available or 0), int(summary.total or 0), summary.product_id)
        if sku in read.rows or sku in read.duplicates:
            first = read.rows.pop(sku, None)
            ids = read.duplicates.setdefault(sku, [first[2]] if first else [])
            ids.append(row[2])
            continue
        read.rows[sku] = row
        chunk.append((sku, row))
        if on_chunk is not None and len(chunk) >= CHUNK:
            on_chunk(chunk)
            chunk = []
    if on_chunk is not None and chunk:
        on_chunk(chunk)
    return read


def snapshot_rows(read: PulpoStockRead) -> list[tuple[str, str, str]]:
    return [(sku, f"{pid}:{available}:{total}", f'{{"available":{available},"product_id":{_json_id(pid)},'
             f'"total":{total}}}') for sku, (available, total, pid) in read.rows.items()]


def _json_id(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def store_snapshot(store: StateStore, dataset: str, read: PulpoStockRead) -> SnapshotDiff:
    return store.replace_snapshot(dataset, snapshot_rows(read))


def stored_rows(store: StateStore, dataset: str) -> dict[str, StockRow]:
    """The stored snapshot, for a writer run without a new read."""
    rows = {}
    for sku, payload in store.snapshot_rows(dataset).items():
        data = json.loads(payload)
        rows[sku] = (int(data.get("available") or 0), int(data.get("total") or 0), data.get("product_id"))
    return rows
