"""Stock (PULPO → Billbee): the PULPO stock snapshot, its plausibility check, the Billbee writer, the group.

Two assets in one op, so that a run that reads and writes sends Billbee's batches while PULPO is
still being paged (Billbee's pacer, 2 calls/s, bounds the run, not the sum of both):

- `<integration>/pulpo_stock`: PULPO's stock summary of the configured warehouse (see `pulpo_stock.py`),
  with the blocking check `stock_snapshot_plausible`.
- `<integration>/billbee_stock`: Billbee's stock kept at the target (formula in `mapping/stock.py`,
  writer in `writer.py`), with the check `stock_rows_accounted_for`.

Schedules: `<integration>_schedule` every `interval_minutes` (default 5) runs both; the full reconcile
runs every `reconcile_hours` (default 24) as `<integration>_reconcile_job`, and any run does it when it
is more than an hour overdue (so `billbee-pulpo sync` alone reconciles too). Launchpad: `dry_run`,
`reconcile`.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
from collections.abc import Callable, Iterator

import dagster as dg
from pydantic import Field

from billbee_pulpo_pipeline.config.models import StockSettings
from billbee_pulpo_pipeline.defs.common import (
    STATE_STORE_KEY,
    CallMeter,
    Flow,
    WriteConfig,
    count_metadata,
    flow_definitions,
    preview_table,
    record_success,
    ui_metadata,
)
from billbee_pulpo_pipeline.defs.stock.pulpo_stock import (
    PULPO_STOCK,
    PulpoStockRead,
    read_pulpo_stock,
    store_snapshot,
    stored_rows,
)
from billbee_pulpo_pipeline.defs.stock.writer import ACKNOWLEDGED, StockWriter
from billbee_pulpo_pipeline.mapping.stock import implausible, sellable, signature_quantity
from billbee_pulpo_pipeline.state import StateStore

WRITER = "billbee_stock"
PLAUSIBLE_CHECK = "stock_snapshot_plausible"
ACCOUNTED_CHECK = "stock_rows_accounted_for"
SNAPSHOT_QUARANTINE = "stock_snapshot"
RECONCILE_MINUTE = 17  # off the full hour, when other jobs start


class StockSyncConfig(WriteConfig):
    """Launchpad config of the stock flow."""

    reconcile: bool = Field(False, description="Run the full reconcile now: read Billbee's current stock of every "
                                               "article and write each one that differs from its target.")


def build(flow: Flow) -> dg.Definitions:
    assets = stock_assets(flow)
    regular = flow_definitions(flow, [assets], "PULPO stock → Billbee.")
    reconcile_job = dg.define_asset_job(
        f"{flow.slug}_reconcile_job", selection=dg.AssetSelection.groups(flow.slug), tags=flow.tags,
        config={"ops": {op_name(flow): {"config": {"reconcile": True, "dry_run": False}}}},
        description=f"{flow.name}: full reconcile of Billbee's stock with PULPO (repairs manual edits in Billbee).")
    return dg.Definitions.merge(regular, dg.Definitions(jobs=[reconcile_job],
                                                        schedules=[reconcile_schedule(flow, reconcile_job)]))


def op_name(flow: Flow) -> str:
    return f"{flow.slug}__stock"


def reconcile_cron(hours: int) -> str:
    """Cron of the reconcile: daily at 00:17 UTC for 24 h, every n hours for divisors of 24, else hourly
    (with `on_hours` letting every n-th hour since the epoch through)."""
    if hours == 24:
        return f"{RECONCILE_MINUTE} 0 * * *"
    if 24 % hours == 0:
        return f"{RECONCILE_MINUTE} */{hours} * * *"
    return f"{RECONCILE_MINUTE} * * * *"


def on_hours(hours: int) -> Callable[[dg.ScheduleEvaluationContext], bool] | None:
    if 24 % hours == 0:
        return None

    def should_execute(context: dg.ScheduleEvaluationContext) -> bool:
        tick = context.scheduled_execution_time
        return tick is None or int(tick.timestamp() // 3600) % hours == 0

    return should_execute


def reconcile_schedule(flow: Flow, job: "dg.UnresolvedAssetJobDefinition") -> dg.ScheduleDefinition:
    hours = _settings(flow).reconcile_hours
    return dg.ScheduleDefinition(
        name=f"{flow.slug}_reconcile_schedule", job=job, cron_schedule=reconcile_cron(hours),
        execution_timezone="UTC", should_execute=on_hours(hours), default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"{flow.name}: full reconcile every {hours} h (reconcile_hours in the integration config).",
        tags=flow.tags,
    )


def _settings(flow: Flow) -> StockSettings:
    settings = flow.integration.settings
    assert isinstance(settings, StockSettings)
    return settings


def stock_assets(flow: Flow) -> dg.AssetsDefinition:
    settings = _settings(flow)
    warehouse = getattr(flow.source, "warehouse_id", None)
    snapshot_key, writer_key = flow.key(PULPO_STOCK), flow.key(WRITER)

    @dg.multi_asset(
        name=op_name(flow),
        specs=[
            dg.AssetSpec(snapshot_key, group_name=flow.slug, kinds={"pulpo", "duckdb"}, tags=flow.tags,
                         skippable=True, description=SNAPSHOT_DESCRIPTION.format(
                             warehouse=warehouse, flow=flow.name, quantity=settings.quantity,
                             check=PLAUSIBLE_CHECK)),
            dg.AssetSpec(writer_key, group_name=flow.slug, kinds={"billbee", "duckdb"}, tags=flow.tags,
                         deps=[snapshot_key], skippable=True,
                         description=WRITER_DESCRIPTION.format(account=flow.target.name, flow=flow.name,
                                                               batch=settings.batch_size,
                                                               hours=settings.reconcile_hours)),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                PLAUSIBLE_CHECK, asset=snapshot_key, blocking=True,
                description="Holds back every write that would mark articles sold out when the PULPO snapshot "
                            "looks like an incident: empty while Billbee has stock from this integration, or "
                            "setting most articles with stock to 0 in one run."),
            dg.AssetCheckSpec(
                ACCOUNTED_CHECK, asset=writer_key,
                description="Every article whose target differed is now acknowledged by Billbee or in "
                            "quarantine with Billbee's reason (nothing held back or left unconfirmed)."),
        ],
        can_subset=True,
        required_resource_keys={flow.source_key, flow.target_key, STATE_STORE_KEY},
        # Two runs at once (a reconcile and a tick) write the same absolute values: safe but wasteful;
        # a pool limit of 1 (dagster.yaml `concurrency: pools:`) makes them queue instead.
        pool=f"{flow.slug}_billbee_stock",
    )
    def stock(context: dg.AssetExecutionContext, config: StockSyncConfig) -> Iterator[dg.MaterializeResult]:
        store = context.resources.state_store.store()
        writer, writer_meter = None, None
        if writer_key in context.selected_asset_keys:
            billbee = getattr(context.resources, flow.target_key).client()
            writer_meter = CallMeter(billbee=billbee.stats)
            writer = StockWriter(flow, billbee, store, dry_run=config.dry_run, reconcile=config.reconcile,
                                 log=context.log)
            writer.prepare()
        if snapshot_key in context.selected_asset_keys:
            try:
                metadata, check, failure = take_snapshot(context, flow, store, writer)
            except BaseException:
                if writer is not None:
                    writer.abort()
                raise
            yield dg.MaterializeResult(asset_key=snapshot_key, metadata=ui_metadata(metadata), check_results=[check])
            if failure is not None:
                raise failure
            record_success(context, store, flow, PULPO_STOCK, ui_metadata(metadata))
            if not check.passed:
                return  # the failed blocking check fails the run: no article was marked sold out
        elif writer is not None:
            try:
                write_from_stored_snapshot(context, flow, store, writer)
            except BaseException:
                writer.abort()
                raise
        if writer is not None and writer_meter is not None:
            metadata = ui_metadata({**writer.metadata(), **writer_meter.metadata()})
            record_success(context, store, flow, writer_key.path[-1], metadata)
            yield dg.MaterializeResult(asset_key=writer_key, metadata=metadata,
                                       check_results=[accounted_check(flow, writer)])

    return stock


SNAPSHOT_DESCRIPTION = """Stock per SKU in PULPO warehouse {warehouse} ({flow}).

`GET /inventory/stocks/summary` for this warehouse only (other warehouses never count); the quantity
written is `{quantity}`. Stored in DuckDB (one row per SKU); rows go on to the writer while PULPO is
still paged. SKUs PULPO lists for two products are quarantined. The blocking check `{check}` holds
back every sold-out write when the snapshot looks like a PULPO incident."""

WRITER_DESCRIPTION = """Billbee stock of account '{account}' kept at what can still be sold ({flow}).

Target = max(0, PULPO quantity − units of open Billbee orders PULPO does not have yet − safety
buffer). Writes only the articles whose target differs from what Billbee last acknowledged, via
`updatestockmultiple` with absolute values, {batch} per call; Billbee's per-row refusals go to
quarantine with its message and are retried when the value changes or at the full reconcile (every
{hours} h, and on the first run), which compares with Billbee's current stock and repairs manual
edits. Bundles get no row. Launchpad `dry_run: true` shows the plan and writes nothing;
`reconcile: true` reconciles now."""


def take_snapshot(context: dg.AssetExecutionContext, flow: Flow, store: StateStore, writer: StockWriter | None,
                  ) -> tuple[dict[str, dg.MetadataValue], dg.AssetCheckResult, BaseException | None]:
    """Read PULPO (rows go to the writer as they come), judge the snapshot, let the writer finish."""
    client = getattr(context.resources, flow.source_key).client()
    meter = CallMeter(pulpo=client.stats)
    warehouse = int(flow.source.warehouse_id)
    read = read_pulpo_stock(client, warehouse, on_chunk=writer.consider if writer is not None else None)
    failure: BaseException | None = None
    if writer is not None:
        writer.consider_removed()
        listed, with_stock, sell_outs = len(read.rows), writer.with_stock, writer.sell_outs
        problem = implausible(listed, with_stock, sell_outs)
        writer.flush(release_held=problem is None)
    else:
        listed, with_stock, sell_outs = standalone_counts(store, flow, read)
        problem = implausible(listed, with_stock, sell_outs)
    diff = store_snapshot(store, flow.dataset(PULPO_STOCK), read)  # while the writer sends its last batches
    duplicates = {sku: (f"PULPO lists SKU '{sku}' for several products ({', '.join(map(str, ids))}); its stock "
                        "is not sent until the SKU is unique in PULPO", {"product_ids": ids})
                  for sku, ids in read.duplicates.items()}
    store.quarantine_sync(flow.slug, SNAPSHOT_QUARANTINE, duplicates)
    if writer is not None:
        try:
            writer.finish()
        except Exception as exc:  # the snapshot is recorded first; the run fails after
            failure = exc
    metadata = {
        **count_metadata(records_read=read.records, skus=len(read.rows), without_sku=read.without_sku,
                         duplicate_skus=len(read.duplicates), new=diff.new, changed=diff.changed,
                         removed=diff.removed, unchanged=diff.unchanged, warehouse_id=warehouse),
        "quantity": dg.MetadataValue.text(_settings(flow).quantity),
        **meter.metadata(),
        "quarantine_preview": preview_table([{"sku": sku, "reason": why} for sku, (why, _) in duplicates.items()]),
    }
    return metadata, plausibility_check(flow, problem, listed, with_stock, sell_outs), failure


def standalone_counts(store: StateStore, flow: Flow, read: PulpoStockRead) -> tuple[int, int, int]:
    """The check's counts when only the snapshot runs: what Billbee acknowledged against PULPO alone."""
    settings = _settings(flow)
    with_stock = sell_outs = 0
    for sku, signature in store.snapshot_hashes(flow.dataset(ACKNOWLEDGED)).items():
        if (signature_quantity(signature) or 0) <= 0:
            continue
        with_stock += 1
        row = read.rows.get(sku)
        quantity = None if row is None else (row[1] if settings.quantity == "total" else row[0])
        sell_outs += sellable(quantity, 0, settings.safety_buffer) == 0
    return len(read.rows), with_stock, sell_outs


def plausibility_check(flow: Flow, problem: str | None, listed: int, with_stock: int,
                       sell_outs: int) -> dg.AssetCheckResult:
    metadata = {"pulpo_skus": dg.MetadataValue.int(listed),
                "billbee_articles_with_stock": dg.MetadataValue.int(with_stock),
                "would_sell_out": dg.MetadataValue.int(sell_outs)}
    if problem is None:
        return dg.AssetCheckResult(asset_key=flow.key(PULPO_STOCK), check_name=PLAUSIBLE_CHECK, passed=True,
                                   metadata=metadata, description="snapshot is plausible: sold-out writes may run")
    return dg.AssetCheckResult(
        asset_key=flow.key(PULPO_STOCK), check_name=PLAUSIBLE_CHECK, passed=False,
        severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
        description=f"No article was set to 0 in Billbee: {problem}. This is what an incomplete PULPO answer "
                    "looks like (an outage, another warehouse id, a changed API user). Check the stock in PULPO. "
                    f"If it really is gone, materialize `{flow.key(WRITER).to_user_string()}` on its own: it "
                    "writes from the snapshot this run stored (this check guards only runs that read PULPO).",
    )


def write_from_stored_snapshot(context: dg.AssetExecutionContext, flow: Flow, store: StateStore,
                               writer: StockWriter) -> None:
    """The writer alone, from the stored snapshot: the way to write what the check held back once a
    merchant has confirmed that PULPO really is sold out (the check guards runs that read PULPO)."""
    writer.consider(stored_rows(store, flow.dataset(PULPO_STOCK)).items())
    writer.consider_removed()
    problem = writer.problem()
    if problem is not None:
        context.log.warning(f"{flow.name}: writing from the stored snapshot although {problem}")
    writer.flush(release_held=True)
    writer.finish()


def accounted_check(flow: Flow, writer: StockWriter) -> dg.AssetCheckResult:
    missing = writer.unaccounted()
    dry = " (dry run: nothing was written)" if writer.dry_run else ""
    return dg.AssetCheckResult(
        asset_key=flow.key(WRITER), check_name=ACCOUNTED_CHECK, passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"{missing:,} articles were neither confirmed nor refused by Billbee (held back, not confirmed "
                     f"or not sent); a later run writes them{dry}") if missing else
                    f"every differing article is acknowledged by Billbee or quarantined with its reason{dry}",
        metadata={"unaccounted": dg.MetadataValue.int(missing)},
    )
