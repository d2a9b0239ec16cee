"""The 'status_updates' integration: packing finished in PULPO → state in Billbee.

Assets of the group `<slug>`:
- `pulpo_finished_packing_orders` (packing_events.py): finished packing orders, with a data cursor;
- `pulpo_ended_sales_orders`, only with `ended_state`: sales orders PULPO ended (shipped), read by
  `updated_at` with a data cursor the same way;
- `billbee_order_states`: the writer (`writer.py`), behind the blocking check
  `billbee_order_links_available` on the packing orders.
The packing sensor (every 15 s, cursor = `updated_at` and id of the newest finished packing order)
runs the job as soon as PULPO reports a finished packing order; the schedule at `interval_minutes`
is the safety net and picks up ended sales orders.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
from datetime import UTC, datetime

import dagster as dg

from billbee_pulpo_pipeline.clients.pulpo import PulpoClient, SalesOrder
from billbee_pulpo_pipeline.config.models import StatusUpdatesSettings
from billbee_pulpo_pipeline.defs.common import (
    STATE_STORE_KEY,
    CallMeter,
    Flow,
    WriteConfig,
    canonical_json,
    count_metadata,
    fingerprint,
    flow_definitions,
    record_success,
    ui_metadata,
)
from billbee_pulpo_pipeline.defs.packing_events import (
    FIRST_RUN_LOOKBACK,
    PACKING_ORDERS,
    READ_OVERLAP,
    PackingCursor,
    packing_orders_asset,
    packing_sensor,
)
from billbee_pulpo_pipeline.defs.status_updates.order_links import LINKS_CHECK, PendingSource, links_check
from billbee_pulpo_pipeline.defs.status_updates.writer import (
    ENDED_ORDERS,
    ENDED_PROCESSED,
    PACKED_PROCESSED,
    WRITER,
    StatusWriter,
)

ENDED_FIELDS = ("id", "order_num", "external_order_num", "state", "warehouse_id", "attributes", "updated_at")
# Packing → Billbee state is the latency the merchant sees (target p95 ≤ 60 s). A burst of packed orders
# is bound by Billbee's 2 state changes per second anyway; a 15 s sensor keeps the wait before the
# first write short (PULPO calls are not billed: two list calls per tick).
SENSOR_SECONDS = 15


def build(flow: Flow) -> dg.Definitions:
    settings: StatusUpdatesSettings = flow.integration.settings  # type: ignore[assignment]
    packing = packing_orders_asset(flow)
    reads = [packing]
    sources = [PendingSource(flow.dataset(PACKING_ORDERS), flow.dataset(PACKED_PROCESSED),
                             lambda payload: payload.get("sales_order_id"))]
    if settings.ended_state is not None:
        reads.append(ended_orders_asset(flow))
        sources.append(PendingSource(flow.dataset(ENDED_ORDERS), flow.dataset(ENDED_PROCESSED),
                                     lambda payload: payload.get("id")))
    assets = [*reads, links_check(flow, flow.key(PACKING_ORDERS), sources),
              order_states_asset(flow, [a.key for a in reads])]
    return flow_definitions(flow, assets, "packing finished in PULPO → state in Billbee.",
                            sensors=lambda job: [packing_sensor(flow, job, seconds=SENSOR_SECONDS)])


# --------------------------------------------------------------------------------------------------
# Ended sales orders (only with `ended_state`)


def ended_cursor_name(flow: Flow) -> str:
    return f"{flow.slug}.ended_read_after"


def ended_sales_orders(client: PulpoClient, after: PackingCursor | None, *,
                       now: datetime | None = None) -> list[SalesOrder]:
    """Sales orders PULPO ended since `after` minus the read overlap (first run: the lookback), oldest first."""
    since = after.updated_at - READ_OVERLAP if after else (now or datetime.now(UTC)) - FIRST_RUN_LOOKBACK
    found = {order.id: order for order in client.iter_sales_orders(state="ended", updated_at_gte=since)
             if order.id is not None and order.updated_at is not None}
    return sorted(found.values(), key=lambda o: (o.updated_at, o.id))


def ended_orders_asset(flow: Flow) -> dg.AssetsDefinition:
    """`<slug>/pulpo_ended_sales_orders`: the sales orders PULPO has ended (shipped)."""
    state = flow.integration.settings.ended_state  # type: ignore[union-attr]

    @dg.asset(
        key=flow.key(ENDED_ORDERS), group_name=flow.slug, kinds={"pulpo", "duckdb"}, tags=flow.tags,
        required_resource_keys={flow.source_key, STATE_STORE_KEY},
        description=f"""Sales orders PULPO ended, i.e. shipped ({flow.name}); each gets the Billbee state
{state} downstream.

`GET /sales/orders?state=ended` by `updated_at` since the stored cursor (the newest `updated_at` and id
seen) minus {int(READ_OVERLAP.total_seconds() // 60)} minutes, stored in DuckDB dataset
`{flow.dataset(ENDED_ORDERS)}` with a content hash: an order read again is unchanged and causes no write.""",
    )
    def pulpo_ended_sales_orders(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        client = getattr(context.resources, flow.source_key).client()
        store = context.resources.state_store.store()
        meter = CallMeter(pulpo=client.stats)
        after = PackingCursor.decode(store.get_cursor(ended_cursor_name(flow)))
        orders = ended_sales_orders(client, after)
        rows = []
        for order in orders:
            payload = order.model_dump(mode="json", include=set(ENDED_FIELDS))
            rows.append((str(order.id), fingerprint(payload), canonical_json(payload)))
        diff = store.upsert_snapshot(flow.dataset(ENDED_ORDERS), rows)
        newest = PackingCursor(orders[-1].updated_at, int(orders[-1].id)) if orders else after  # type: ignore[arg-type]
        if newest is not None and newest != after:
            store.set_cursor(ended_cursor_name(flow), newest.encode())
        return dg.MaterializeResult(metadata=ui_metadata({
            **count_metadata(records_read=len(rows), new=diff.new, changed=diff.changed, unchanged=diff.unchanged),
            **meter.metadata(),
            "cursor": dg.MetadataValue.text(newest.encode() if newest else "none yet"),
        }))

    return pulpo_ended_sales_orders


# --------------------------------------------------------------------------------------------------
# The writer


def order_states_asset(flow: Flow, reads: list[dg.AssetKey]) -> dg.AssetsDefinition:
    settings: StatusUpdatesSettings = flow.integration.settings  # type: ignore[assignment]
    ended = f" and {settings.ended_state} once PULPO ended (shipped) it" if settings.ended_state else ""

    @dg.asset(
        key=flow.key(WRITER), group_name=flow.slug, kinds={"billbee", "duckdb"}, tags=flow.tags, deps=reads,
        required_resource_keys={flow.source_key, flow.target_key, STATE_STORE_KEY},
        description=f"""Billbee order states of account '{flow.target.name}' ({flow.name}): {settings.packed_state}
once PULPO finished packing the order{ended}.

For every new finished packing order: its sales order is linked to the Billbee order through the
sales-orders flow's mapping (orders that did not come from Billbee are skipped and counted), the
Billbee order is read (`GET /orders/{{id}}`) and the state set (`PUT /orders/{{id}}/orderstate`) only
when the order is in an earlier state: an order already further on (Versendet) is left alone, one
that is Storniert, Gelöscht, Reklamation, Retoure or Archiviert is reported as needing attention.
Each state is set at most once per order (ledger `status:<order>:<state>`). Blocked by the check
`{LINKS_CHECK}`. Launchpad `dry_run: true` shows the plan and writes nothing.""",
    )
    def billbee_order_states(context: dg.AssetExecutionContext, config: WriteConfig) -> dg.MaterializeResult:
        billbee = getattr(context.resources, flow.target_key).client()
        pulpo = getattr(context.resources, flow.source_key).client()
        meter = CallMeter(billbee=billbee.stats, pulpo=pulpo.stats)
        writer = StatusWriter(flow, billbee, pulpo, context.resources.state_store.store(),
                              dry_run=config.dry_run, log=context.log)
        report = writer.run()
        metadata = ui_metadata({**report.metadata(config.dry_run), **meter.metadata()})
        c = report.counts
        context.log.info(f"{flow.name}: {report.read} pending; set {c['set']}, already {c['already'] + c['later']}, "
                         f"attention {c['protected'] + c['rejected']}, not from Billbee {c['not_from_billbee']}, "
                         f"waiting {c['waiting']}, quarantined {c['quarantined']}")
        if writer.halted:
            raise dg.Failure(description=f"{c['failed']} record(s) not written: {writer.halted}. They stay pending "
                                         "and the next run retries them (reading each Billbee order first).",
                             metadata=metadata)
        record_success(context, writer.store, flow, WRITER, metadata)
        return dg.MaterializeResult(metadata=ui_metadata(metadata))

    return billbee_order_states

