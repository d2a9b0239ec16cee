"""Sales orders (Billbee → PULPO): Billbee orders read by `LastModifiedAt` windows.

Windows are hourly UTC partitions, so a missed window is visible in the UI and backfillable.
Partition [start, end) is read as `modifiedAtMin=start` (exclusive) and `modifiedAtMax=end`
(inclusive): the half-open windows (start, end] tile time with no gap and no overlap.
`end_offset=1` makes the current, still open hour a partition too, which the schedule re-reads
at every tick until the hour has passed.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
from datetime import UTC, datetime, timedelta

import dagster as dg

from billbee_pulpo_pipeline.defs.common import (
    STATE_STORE_KEY,
    CallMeter,
    Flow,
    canonical_json,
    count_metadata,
    fingerprint,
)
from billbee_pulpo_pipeline.mapping.orders import content_fields, order_fields


def partitions_for(flow: Flow) -> dg.HourlyPartitionsDefinition:
    start = getattr(flow.integration.settings, "start_date", None) or default_start()
    return dg.HourlyPartitionsDefinition(start_date=start.strftime("%Y-%m-%d-%H:00"), timezone="UTC", end_offset=1)


def default_start() -> datetime:
    """First day of the previous month (UTC): enough history to backfill, few enough partitions."""
    today = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (today - timedelta(days=1)).replace(day=1)


def billbee_orders_asset(flow: Flow, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:

    @dg.asset(
        key=flow.key("billbee_orders"),
        group_name=flow.slug,
        kinds={"billbee", "duckdb"},
        partitions_def=partitions,
        required_resource_keys={flow.source_key, STATE_STORE_KEY},
        tags=flow.tags,
        description=f"""Billbee orders of account '{flow.source.name}' changed in one UTC hour ({flow.name}).

`GET /orders` with `modifiedAtMin` (exclusive) and `modifiedAtMax` (inclusive) over the partition's
window, 250 per page, stored in DuckDB with a content hash per order.""",
    )
    def billbee_orders(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        client = getattr(context.resources, flow.source_key).client()
        store = context.resources.state_store.store()
        meter = CallMeter(billbee=client.stats)
        window = context.partition_time_window
        rows = {}
        for order in client.iter_orders(modified_at_min=window.start, modified_at_max=window.end, page_size=250):
            fields = order_fields(order)
            rows[fields["billbee_order_id"]] = (fingerprint(content_fields(fields)), canonical_json(fields))
        diff = store.replace_snapshot(flow.dataset(f"billbee_orders.{context.partition_key}"),
                                      [(k, h, p) for k, (h, p) in rows.items()])
        return dg.MaterializeResult(metadata={
            **count_metadata(records_read=len(rows), new=diff.new, changed=diff.changed, removed=diff.removed),
            **meter.metadata(),
            "window": dg.MetadataValue.text(f"({window.start.isoformat()}, {window.end.isoformat()}]"),
        })

    return billbee_orders
