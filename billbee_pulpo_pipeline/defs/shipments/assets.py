"""The 'shipments' integration: tracking codes from another label service (Sendcloud, VCE, …) on
PULPO's boxes → shipments on the Billbee order, then the shipped state.

Assets of the group `<slug>`:
- `pulpo_finished_packing_orders` (packing_events.py): finished packing orders, with a data cursor;
- `billbee_shipments`: the writer (`writer.py`), behind the blocking check
  `billbee_order_links_available` on the packing orders.
The packing sensor (every 30 s) runs the job when packing finishes; the schedule at
`interval_minutes` (default 5) looks again at packing orders still waiting for tracking codes.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import dagster as dg

from billbee_pulpo_pipeline.config.models import ShipmentsSettings
from billbee_pulpo_pipeline.defs.common import (
    STATE_STORE_KEY,
    CallMeter,
    Flow,
    WriteConfig,
    flow_definitions,
    record_success,
    ui_metadata,
)
from billbee_pulpo_pipeline.defs.packing_events import PACKING_ORDERS, packing_orders_asset, packing_sensor
from billbee_pulpo_pipeline.defs.shipments.writer import CHECKS_PER_RUN, PROCESSED, WATCH, WRITER, ShipmentWriter
from billbee_pulpo_pipeline.defs.shipping_method_filter import methods_note
from billbee_pulpo_pipeline.defs.status_updates.order_links import LINKS_CHECK, PendingSource, links_check


def build(flow: Flow) -> dg.Definitions:
    packing = packing_orders_asset(flow)
    source = PendingSource(flow.dataset(PACKING_ORDERS), flow.dataset(PROCESSED),
                           lambda payload: payload.get("sales_order_id"))
    assets = [packing, links_check(flow, packing.key, [source]), shipments_asset(flow, packing.key)]
    return flow_definitions(flow, assets, "PULPO tracking → Billbee shipments.",
                            sensors=lambda job: [packing_sensor(flow, job)])


def shipments_asset(flow: Flow, packing: dg.AssetKey) -> dg.AssetsDefinition:
    settings: ShipmentsSettings = flow.integration.settings  # type: ignore[assignment]
    state = f"then sets {settings.shipped_state}" if settings.set_shipped_state else "sets no state"

    @dg.asset(
        key=flow.key(WRITER), group_name=flow.slug, kinds={"billbee", "duckdb"}, tags=flow.tags, deps=[packing],
        required_resource_keys={flow.source_key, flow.target_key, STATE_STORE_KEY},
        description=f"""Shipments on the orders of Billbee account '{flow.target.name}' for the tracking codes
another label service wrote to PULPO's boxes ({flow.name}); {state} once every box's code is stored.

Finished packing orders are watched (dataset `{flow.dataset(WATCH)}`) for up to
{settings.tracking_wait_hours} h: looked at on the first run, then after 5, 10, 20, 40 minutes and
hourly, at most {CHECKS_PER_RUN} per run. Each new code becomes one `POST /orders/{{id}}/shipment` with
the carrier (carrier_map, else Billbee's carrier list by name; unmapped ones are sent without and
counted) and the order's own shipping provider; the ledger key `shipment:<order>:<code>` makes it
happen once, and an attempt with an unknown outcome is looked up in Billbee's shipments before it is
sent again. Orders that did not come from Billbee are skipped and counted.\
{methods_note(settings.pulpo_shipping_methods)}
Blocked by the check `{LINKS_CHECK}`. Launchpad `dry_run: true` shows the plan and writes nothing.""",
    )
    def billbee_shipments(context: dg.AssetExecutionContext, config: WriteConfig) -> dg.MaterializeResult:
        billbee = getattr(context.resources, flow.target_key).client()
        pulpo = getattr(context.resources, flow.source_key).client()
        meter = CallMeter(billbee=billbee.stats, pulpo=pulpo.stats)
        writer = ShipmentWriter(flow, billbee, pulpo, context.resources.state_store.store(),
                                dry_run=config.dry_run, log=context.log)
        report = writer.run()
        metadata = ui_metadata({**report.metadata(config.dry_run), **meter.metadata()})
        c = report.counts
        context.log.info(f"{flow.name}: {report.read} packing orders watched, {c['checked']} looked at; "
                         f"{c['shipments_added']} shipments added, {c['state_set']} states set, {c['complete']} "
                         f"complete, {c['waiting_for_tracking']} waiting for tracking, {c['expired']} given up")
        if writer.halted:
            raise dg.Failure(description=f"{c['failed']} packing order(s) not finished: {writer.halted}. They stay "
                                         "watched; the next run looks in Billbee before it sends anything again.",
                             metadata=metadata)
        record_success(context, writer.store, flow, WRITER, metadata)
        return dg.MaterializeResult(metadata=metadata)

    return billbee_shipments
