"""PULPO stock of the configured warehouse, the read side of the stock flow (finished packing
orders, the read side of the other PULPO → Billbee flows, are in `packing_events.py`)."""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.

import dagster as dg

from billbee_pulpo_pipeline.defs.common import (
    STATE_STORE_KEY,
    CallMeter,
    Flow,
    canonical_json,
    count_metadata,
    fingerprint,
)


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
