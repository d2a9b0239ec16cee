"""The 'shipping_labels' integration: Billbee labels for PULPO's packed boxes.

`pulpo_finished_packing_orders` (the read asset shared with the other PULPO → Billbee flows) →
`billbee_labels`: one Billbee label per box, its tracking on the PULPO box and the label PDF attached
to it (see `writer.py` for the exactly-once rules). The packing sensor launches the job within
seconds of a finished packing order; the schedule at `interval_minutes` is the safety net and
retries refused labels when they are due.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import dagster as dg
from filelock import Timeout as LockTimeout
from pydantic import Field

from billbee_pulpo_pipeline.defs.common import (
    STATE_STORE_KEY,
    CallMeter,
    Flow,
    WriteConfig,
    flow_definitions,
    preview_table,
    record_success,
    ui_metadata,
)
from billbee_pulpo_pipeline.defs.packing_events import PACKING_ORDERS, packing_orders_asset, packing_sensor
from billbee_pulpo_pipeline.defs.shipping_labels.writer import (
    ACCOUNTED_CHECK,
    LOCK_WAIT_SECONDS,
    PLAN_CHECK,
    WRITER,
    LabelWriter,
)
from billbee_pulpo_pipeline.defs.shipping_method_filter import OTHER_METHOD, methods_note
from billbee_pulpo_pipeline.mapping.labels import RETRY_DELAYS


def build(flow: Flow) -> dg.Definitions:
    return flow_definitions(flow, [packing_orders_asset(flow), labels_asset(flow)],
                            "Billbee labels for PULPO's packed boxes.",
                            sensors=lambda job: [packing_sensor(flow, job)])


class LabelsConfig(WriteConfig):
    """Launchpad options of the label writer; the defaults are what the sensor and schedule run."""

    retry_refused: bool = Field(False, description="Try every box waiting in quarantine (refused by Billbee, no "
                                                   "weight, …) now instead of at its next retry time: use it "
                                                   "after fixing the cause in Billbee or PULPO.")


def labels_asset(flow: Flow) -> dg.AssetsDefinition:
    key = flow.key(WRITER)
    pulpo_key, billbee_key = flow.source_key, flow.target_key

    @dg.asset(
        key=key,
        group_name=flow.slug,
        kinds={"billbee", "pulpo", "duckdb"},
        deps=[flow.key(PACKING_ORDERS)],
        tags=flow.tags,
        required_resource_keys={pulpo_key, billbee_key, STATE_STORE_KEY},
        description=describe(flow),
        check_specs=[
            dg.AssetCheckSpec(
                PLAN_CHECK, asset=key, blocking=True,
                description="Before the labels of each packing order are bought: every planned Billbee call "
                            "is for a box of a packing order whose sales order came from Billbee, has a provider "
                            "and product, a weight when the packing order has several boxes, no tracking on the "
                            "PULPO box, no label done or under way in the ledger, and no box is planned twice. "
                            "Blocking: when it fails, that packing order and all after it are not written."),
            dg.AssetCheckSpec(
                ACCOUNTED_CHECK, asset=key,
                description="Every box of the packing orders the run handled has its label and tracking, or "
                            "waits in quarantine with a reason, or its packing order was skipped with a reason."),
        ],
        # Labels cost money: runs of one integration never write at once (a file lock in the writer;
        # a Dagster pool limit of 1 makes them queue instead of waiting inside the step).
        pool=f"{flow.slug}_labels",
    )
    def billbee_labels(context: dg.AssetExecutionContext, config: LabelsConfig) -> dg.MaterializeResult:
        pulpo = getattr(context.resources, pulpo_key).client()
        billbee = getattr(context.resources, billbee_key).client()
        store = context.resources.state_store.store()
        meter = CallMeter(billbee=billbee.stats, pulpo=pulpo.stats)
        writer = LabelWriter(flow, billbee, pulpo, store, dry_run=config.dry_run,
                             retry_refused=config.retry_refused, log=context.log)
        try:
            with writer.lock():
                report = writer.run()
        except LockTimeout as exc:
            raise dg.Failure(description=f"Another run of {flow.name} has been writing labels for "
                                         f"{int(LOCK_WAIT_SECONDS)} s; this run wrote nothing "
                                         "(the next one takes over what is left).") from exc
        metadata = ui_metadata({**report.metadata(config.dry_run), **meter.metadata()})
        c = report.counts
        context.log.info(f"{flow.name}: {c['packing_orders']} packing orders, {c['boxes']} boxes; labels "
                         f"{c['labels_created']} new, {c['labels_recovered']} recovered; trackings "
                         f"{c['trackings_written']}; attachments {c['attachments']}; quarantined {c['quarantined']}, "
                         f"waiting {c['waiting']}, not from Billbee {c['not_from_billbee']}, other shipping method "
                         f"{c[OTHER_METHOD]}")
        plan_check = plan_result(flow, writer.planned, writer.problems)
        if writer.problems:
            context.log.error(f"{flow.name}: the label plan is not safe, nothing more was written: "
                              f"{writer.problems[:5]}")
            return dg.MaterializeResult(metadata=metadata,
                                        check_results=[plan_check, accounted_result(flow, writer, skipped=True)])
        if writer.halted:
            raise dg.Failure(description=f"{writer.halted}. What was done is recorded; the rest stays pending "
                                         "and the next run continues (looking at Billbee first where a label "
                                         "call's outcome is unknown).", metadata=metadata)
        record_success(context, store, flow, WRITER, metadata)
        return dg.MaterializeResult(metadata=metadata,
                                    check_results=[plan_check, accounted_result(flow, writer)])

    return billbee_labels


def plan_result(flow: Flow, planned: list[dict], problems: list[dict[str, str]]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=flow.key(WRITER), check_name=PLAN_CHECK, passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"planned_labels": dg.MetadataValue.int(len(planned)),
                  "problems": preview_table(problems)},
        description=None if not problems else "The run stopped before a packing order whose plan would buy a "
                                              "label it must not. Look at the problems; the ledger and PULPO "
                                              "show what exists.",
    )


def accounted_result(flow: Flow, writer: LabelWriter, skipped: bool = False) -> dg.AssetCheckResult:
    missing = [] if skipped else writer.unaccounted
    return dg.AssetCheckResult(
        asset_key=flow.key(WRITER), check_name=ACCOUNTED_CHECK, passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"unaccounted": dg.MetadataValue.int(len(missing)),
                  "unaccounted_preview": preview_table(missing),
                  "dry_run": dg.MetadataValue.bool(writer.dry_run)},
    )


def describe(flow: Flow) -> str:
    delays = ", ".join(_duration(d.total_seconds()) for d in RETRY_DELAYS[:-1])
    return f"""Billbee labels for the boxes PULPO user '{flow.source.name}' packed, made through Billbee
account '{flow.target.name}' ({flow.name}).

For each box of a finished packing order whose sales order came from Billbee: `POST
/shipment/shipwithlabel` (provider/product from `provider_map` by the PULPO shipping method, else the
Billbee order's own; weight and dimensions of the box), then the tracking onto the PULPO box
(`shipment_tracking`) and the label PDF attached to it. Exactly one label per box, also across crashes:
each step is framed by the ledger, and a call whose answer was lost is looked up among the order's
Billbee shipments before it is made again. Billbee's refusals (e.g. ErrorCode 22, package type missing)
go to quarantine with Billbee's message and what to fix; the other boxes go on. Refused boxes are
tried again after {delays}, then daily, or at once with launchpad `retry_refused: true`. Launchpad
`dry_run: true` shows the plan (metadata `plan`) and writes nothing. State lives in DuckDB under
$BPP_HOME: datasets `{flow.dataset('labels_processed')}`, `{flow.dataset('labels_waiting')}`.\
{methods_note(flow.integration.settings.pulpo_shipping_methods)}"""  # type: ignore[attr-defined]


def _duration(seconds: float) -> str:
    return f"{int(seconds // 3600)} h" if seconds >= 3600 else f"{int(seconds // 60)} min"
