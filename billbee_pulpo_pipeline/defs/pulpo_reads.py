"""Read-side assets of the PULPO → Billbee flows: finished packing orders, their boxes, and stock.

Cursors come from data (PULPO `updated_at` plus id), never from counters, and are stored in the
state store only after the snapshot that used them was written.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from billbee_pulpo_pipeline.defs.common import (
    STATE_STORE_KEY,
    CallMeter,
    Flow,
    canonical_json,
    count_metadata,
    fingerprint,
)

FINISHED_PACKING_STATES = ("ended", "closed")
FIRST_RUN_LOOKBACK = timedelta(hours=24)


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def finished_packing_orders(flow: Flow, client: Any, store: Any) -> tuple[list[Any], str | None]:
    """Packing orders of the flow's warehouse finished since the stored cursor, and the new cursor."""
    cursor_name = f"{flow.slug}.packing_updated_at"
    stored = _as_utc(store.get_cursor(cursor_name))
    since = stored or datetime.now(UTC) - FIRST_RUN_LOOKBACK
    found, newest = [], stored
    for state in FINISHED_PACKING_STATES:
        for order in client.iter_packing_orders(state=state, updated_at_gte=since,
                                                warehouse_id=flow.source.warehouse_id):
            found.append(order)
            updated = _as_utc(getattr(order, "updated_at", None))
            if updated and (newest is None or updated > newest):
                newest = updated
    return found, newest.isoformat() if newest else None


def packing_orders_asset(flow: Flow) -> dg.AssetsDefinition:
    @dg.asset(
        key=flow.key("pulpo_finished_packing_orders"),
        group_name=flow.slug,
        kinds={"pulpo", "duckdb"},
        required_resource_keys={flow.source_key, STATE_STORE_KEY},
        tags=flow.tags,
        description=f"""Packing orders finished in PULPO warehouse {flow.source.warehouse_id} ({flow.name}).

Reads `GET /packing/orders` by state and `updated_at` since the last cursor (a data cursor: the
newest `updated_at` seen), and stores each with a content hash in DuckDB.""",
    )
    def pulpo_finished_packing_orders(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        client = getattr(context.resources, flow.source_key).client()
        store = context.resources.state_store.store()
        meter = CallMeter(pulpo=client.stats)
        orders, cursor = finished_packing_orders(flow, client, store)
        rows = []
        for order in orders:
            payload = order.model_dump(mode="json")
            rows.append((str(order.id), fingerprint(payload), canonical_json(payload)))
        diff = store.upsert_snapshot(flow.dataset("pulpo_finished_packing_orders"), rows)
        if cursor:
            store.set_cursor(f"{flow.slug}.packing_updated_at", cursor)
        return dg.MaterializeResult(metadata={
            **count_metadata(records_read=len(rows), new=diff.new, changed=diff.changed),
            **meter.metadata(),
            "cursor": dg.MetadataValue.text(cursor or "none yet"),
        })

    return pulpo_finished_packing_orders


def stock_asset(flow: Flow) -> dg.AssetsDefinition:
    quantity_field = getattr(flow.integration.settings, "quantity", "available")

    @dg.asset(
        key=flow.key("pulpo_stock"),
        group_name=flow.slug,
        kinds={"pulpo", "duckdb"},
        required_resource_keys={flow.source_key, STATE_STORE_KEY},
        tags=flow.tags,
        description=f"""Stock per SKU in PULPO warehouse {flow.source.warehouse_id} ({flow.name}).

`GET /inventory/stocks/summary` for the configured warehouse only (other warehouses never count),
quantity `{quantity_field}`, stored in DuckDB with a hash per SKU so only changes move on.""",
    )
    def pulpo_stock(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        client = getattr(context.resources, flow.source_key).client()
        store = context.resources.state_store.store()
        meter = CallMeter(pulpo=client.stats)
        rows = []
        for summary in client.iter_stock_summary(warehouse_id=flow.source.warehouse_id):
            if not summary.sku:
                continue
            payload = {"sku": summary.sku, "product_id": str(summary.product_id),
                       "quantity": int(getattr(summary, quantity_field) or 0)}
            rows.append((summary.sku, fingerprint(payload), canonical_json(payload)))
        diff = store.replace_snapshot(flow.dataset("pulpo_stock"), rows)
        return dg.MaterializeResult(metadata={
            **count_metadata(records_read=len(rows), new=diff.new, changed=diff.changed, removed=diff.removed,
                             unchanged=diff.unchanged),
            **meter.metadata(),
        })

    return pulpo_stock
