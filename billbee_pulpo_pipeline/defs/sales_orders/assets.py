"""Sales orders (Billbee → PULPO): Billbee orders read by `LastModifiedAt` windows.

Windows are hourly UTC partitions, so a missed window is visible in the UI and backfillable.
Partition [start, end) is read as `modifiedAtMin=start` (exclusive) and `modifiedAtMax=end`
(inclusive): the half-open windows (start, end] tile time with no gap and no overlap.
`end_offset=1` makes the current, still open hour a partition too; each schedule tick reads only what
changed since the previous read of that window (a watermark per window, see windows.py).
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field

from billbee_pulpo_pipeline.clients.billbee import (
    MAX_PAGE_SIZE,
    BillbeeClient,
    Order,
    ResultPage,
    parse_billbee_datetime,
)
from billbee_pulpo_pipeline.clients.billbee.filter_zone import GuardResult, SentRange, check_range
from billbee_pulpo_pipeline.defs.common import (
    STATE_STORE_KEY,
    CallMeter,
    Flow,
    WriteConfig,
    canonical_json,
    count_metadata,
    fingerprint,
    preview_table,
    record_success,
    ui_metadata,
)
from billbee_pulpo_pipeline.defs.filter_zone import AUTO, remember_zone
from billbee_pulpo_pipeline.defs.sales_orders.windows import (
    OVERLAP,
    ReadRange,
    WindowRead,
    advanced_watermark,
    format_watermark,
    is_complete,
    parse_watermark,
    read_orders,
    read_range,
    utc_now,
)
from billbee_pulpo_pipeline.defs.sales_orders.writer import CHECK as WRITER_CHECK
from billbee_pulpo_pipeline.defs.sales_orders.writer import WRITER, OrderWriter, accounted_check
from billbee_pulpo_pipeline.defs.write_behind import WriteBehind
from billbee_pulpo_pipeline.mapping.orders import content_fields, order_fields
from billbee_pulpo_pipeline.progress import Progress
from billbee_pulpo_pipeline.state import StateStore

ORDERS = "billbee_orders"
CONSISTENCY_CHECK = "window_read_consistent"
DATE_FILTER_CHECK = "billbee_date_filter_matches"


def partitions_for(flow: Flow) -> dg.HourlyPartitionsDefinition:
    start = getattr(flow.integration.settings, "start_date", None) or default_start()
    return dg.HourlyPartitionsDefinition(start_date=start.strftime("%Y-%m-%d-%H:00"), timezone="UTC", end_offset=1)


def default_start() -> datetime:
    """First day of the previous month (UTC): enough history to backfill, few enough partitions."""
    today = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (today - timedelta(days=1)).replace(day=1)


def read_until_cursor(flow: Flow, partition_key: str) -> str:
    """State-store cursor holding a window's watermark (ISO-8601, UTC)."""
    return f"{flow.slug}.orders_read_until.{partition_key}"


class OrdersSyncConfig(WriteConfig):
    """Launchpad options of the orders op; the defaults are what the schedule and sensor run."""

    reread: bool = Field(False, description="Read the whole window again instead of only what changed since "
                                            "its watermark (unchanged orders still cause no write downstream).")
    page_size: int = Field(MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE,
                           description="Orders per Billbee page (250 = fewest calls; smaller only for tests).")


def order_row(order: Order) -> tuple[str, str, str]:
    """(BillBeeOrderId, content hash, full order JSON) for the snapshot; ids stay exact (no float)."""
    fields = order_fields(order)
    payload = canonical_json(order.model_dump(mode="json", by_alias=True))
    return fields["billbee_order_id"], fingerprint(content_fields(fields)), payload


def order_problem(order: Order) -> str | None:
    """Why an order cannot go on to PULPO as read (None when it can): the blocking check's record test."""
    if order.State is None:
        return "no State"
    for number, item in enumerate(order.OrderItems or [], 1):
        if item.Quantity is None:
            label = item.BillbeeId if item.BillbeeId is not None else f"no. {number}"
            return f"order item {label} has no Quantity"
    return None


def without_stale(store: StateStore, dataset: str, orders: Iterable[Order]) -> tuple[list[Order], int]:
    """Drop orders older than the version already stored: a run of an old window that finishes after a
    run of a newer one must not put an order back to its earlier state."""
    orders = list(orders)
    stored = store.snapshot_rows(dataset, [str(o.BillBeeOrderId) for o in orders])
    fresh = []
    for order in orders:
        payload = stored.get(str(order.BillBeeOrderId))
        stored_at = _last_modified(payload) if payload else None
        if stored_at is not None and order.LastModifiedAt is not None and order.LastModifiedAt < stored_at:
            continue
        fresh.append(order)
    return fresh, len(orders) - len(fresh)


def _last_modified(payload: str) -> datetime | None:
    value = json.loads(payload).get("LastModifiedAt")
    return parse_billbee_datetime(value) if value else None


def sales_orders_assets(flow: Flow, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """`billbee_orders` (hourly windows) and `pulpo_sales_orders`: two assets, one op, so that a run
    materializing both writes to PULPO while the Billbee read waits for its pacer (`write_behind.py`).
    Either can be materialized alone: a window read without writing, or the writer over what is stored."""
    reader_key, writer_key = flow.key(ORDERS), flow.key(WRITER)

    @dg.multi_asset(
        name=f"{flow.slug}__sales_orders",
        specs=[
            dg.AssetSpec(reader_key, group_name=flow.slug, kinds={"billbee", "duckdb"}, tags=flow.tags,
                         partitions_def=partitions, skippable=True, description=reader_description(flow)),
            dg.AssetSpec(writer_key, group_name=flow.slug, kinds={"pulpo", "duckdb"}, tags=flow.tags,
                         deps=[reader_key], skippable=True, description=writer_description(flow)),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                CONSISTENCY_CHECK, asset=reader_key, blocking=True,
                description="The window was read from a consistent page set (unique ids = TotalRows of the "
                            "final pass) and every order read has a state and order items that parse. "
                            "Blocking: an order that does not parse never reaches PULPO."),
            dg.AssetCheckSpec(
                WRITER_CHECK, asset=writer_key, blocking=False,
                description="Every importable order the run handled is in PULPO, quarantined with a reason or "
                            "skipped with a reason (e.g. only vouchers). Warns; the run's writes stand."),
            dg.AssetCheckSpec(
                DATE_FILTER_CHECK, asset=reader_key, blocking=False,
                description="Every order Billbee returned lies in the modifiedAtMin/Max range asked for (± 1 s). "
                            "If not, the window is not marked complete, and with billbee_filter_timezone: auto "
                            "the reader switches to the zone Billbee applied and reads the window again. Warns."),
        ],
        can_subset=True,
        required_resource_keys={flow.source_key, flow.target_key, STATE_STORE_KEY},
        # Runs of several windows (backfills, the gap filler) each write. Racing writers are safe
        # (PULPO refuses a second order with the same order_num and the loser adopts it), but wasteful:
        # a pool limit of 1 (dagster.yaml `concurrency: pools:`) makes them queue instead.
        pool=f"{flow.slug}_pulpo_writes",
    )
    def sales_orders(context: dg.AssetExecutionContext, config: OrdersSyncConfig) -> Iterator[dg.MaterializeResult]:
        store = context.resources.state_store.store()
        writer = None
        if writer_key in context.selected_asset_keys:
            pulpo = getattr(context.resources, flow.target_key).client()
            writer_meter = CallMeter(pulpo=pulpo.stats)
            writer = OrderWriter(flow, pulpo, store, dry_run=config.dry_run, log=context.log)
        if reader_key in context.selected_asset_keys:
            early_writes = writer.write_pass if writer is not None and not config.dry_run else None
            metadata, checks = read_window(context, flow, store, config, early_writes)
            check = checks[0]
            record_success(context, store, flow, ORDERS, ui_metadata(metadata))
            yield dg.MaterializeResult(asset_key=reader_key, metadata=ui_metadata(metadata), check_results=checks)
            if not check.passed:
                return  # the failed blocking check fails the run; the window is read again next time
        if writer is not None:
            yield write_result(context, flow, writer, writer_meter, config.dry_run)

    return sales_orders


def read_window(context: dg.AssetExecutionContext, flow: Flow, store: StateStore, config: OrdersSyncConfig,
                early_writes: Callable[[], None] | None
                ) -> tuple[dict[str, dg.MetadataValue], list[dg.AssetCheckResult]]:
    """Read the partition's window (what changed since its watermark), storing each page as it comes
    so that the writer's early passes run meanwhile; advance the watermark when all is well."""
    client = getattr(context.resources, flow.source_key).client()
    meter = CallMeter(billbee=client.stats)
    dataset = flow.dataset(ORDERS)
    window = context.partition_time_window
    cursor = read_until_cursor(flow, context.partition_key)
    previous = parse_watermark(store.get_cursor(cursor))
    started = utc_now()
    wanted = read_range(window.start, window.end, previous, started, reread=config.reread)
    counts: Counter[str] = Counter()
    progress = Progress(f"{flow.name} {context.partition_key}", "orders", context.log.info)

    guards: list[GuardResult] = []
    adapted = ""
    with WriteBehind(early_writes, name=f"{flow.slug}-pulpo-writes") as behind:
        store_page = page_storer(store, dataset, behind, progress, config.page_size, counts)
        result = WindowRead.nothing()
        if wanted is not None:
            result, guard = guarded_read(client, wanted, config.page_size, context.log.warning, store_page)
            guards.append(guard)
            if not guard.ok:
                context.log.warning(mismatch_message(flow, context.partition_key, guard))
                setting = getattr(flow.source, "billbee_filter_timezone", AUTO)
                if setting == AUTO and guard.detected_zone is not None:
                    # Send the bounds the way Billbee reads them from now on (every reader of the account),
                    # and read this window again so that it can complete in this run.
                    remember_zone(store, flow.source.slug, guard.detected_zone,
                                  f"{flow.name} {context.partition_key}: {len(guard.outside)} order(s) outside "
                                  f"the range, offset {guard.offset_observed}")
                    adapted = f"{client.filter_timezone} -> {guard.detected_zone}"
                    client.filter_timezone = guard.detected_zone
                    context.log.warning(f"{flow.name}: Billbee reads the date filters as {guard.detected_zone} "
                                        f"wall time; sending them that way from now on and reading "
                                        f"{context.partition_key} again")
                    result, guard = guarded_read(client, wanted, config.page_size, context.log.warning,
                                                 store_page)
                    guards.append(guard)
    if wanted is not None:
        progress.finish()

    problems = [{"billbee_order_id": str(o.BillBeeOrderId), "problem": p}
                for o in result.orders if (p := order_problem(o)) is not None]
    # Orders that cannot go on are not stored and keep the watermark back: the check fails (blocking
    # the PULPO write) and the next run reads them again, until Billbee answers them whole. A read that
    # returned orders outside its range proves nothing about the range: it keeps the watermark back too.
    range_ok = not guards or guards[-1].ok
    read_until = (previous if problems or not range_ok
                  else advanced_watermark(window.start, window.end, previous, started))
    if read_until is not None and read_until != previous:
        store.set_cursor(cursor, format_watermark(read_until))
    complete = is_complete(read_until, window.end)
    context.log.info(f"{flow.name} {context.partition_key}: read {len(result.orders)} orders in "
                     f"{wanted or 'nothing (window complete)'}, {counts['new']} new, {counts['changed']} changed")
    metadata = {
        **count_metadata(records_read=len(result.orders), new=counts["new"], changed=counts["changed"],
                         unchanged=counts["unchanged"], stale_skipped=counts["stale"], pages=result.pages,
                         rereads=max(result.rereads, 0), problems=len(problems)),
        **meter.metadata(),
        "window": dg.MetadataValue.text(f"({window.start.isoformat()}, {window.end.isoformat()}]"),
        "read_range": dg.MetadataValue.text(str(wanted) if wanted else "none"),
        "read_until": dg.MetadataValue.text(format_watermark(read_until) if read_until else ""),
        "complete": dg.MetadataValue.bool(complete),
        **filter_metadata(client.filter_timezone, guards, adapted),
    }
    return metadata, [consistency_result(flow, result, problems), date_filter_result(flow, guards, adapted)]


def guarded_read(client: BillbeeClient, wanted: ReadRange, page_size: int, on_shift: Callable[[str], None],
                 on_page: Callable[[ResultPage[Order]], None]) -> tuple[WindowRead, GuardResult]:
    """One complete read of `wanted` and its range guard (against the bounds the client actually sent)."""
    sent = SentRange.of(wanted.low, wanted.high, client.filter_timezone)
    result = read_orders(client, wanted, page_size=page_size, on_shift=on_shift, on_page=on_page)
    return result, check_range(sent, [(str(o.BillBeeOrderId), o.LastModifiedAt) for o in result.orders])


def page_storer(store: StateStore, dataset: str, behind: WriteBehind, progress: Progress, page_size: int,
                counts: Counter[str]) -> Callable[[ResultPage[Order]], None]:
    """Stores each page's usable orders as it arrives (while the pacer waits for the next page) and wakes
    the writer when something is new or changed."""

    def store_page(page: ResultPage[Order]) -> None:
        total = page.paging.TotalRows if page.paging is not None else None
        # Position in the current pass (a read that shifted is paged again from page 1).
        progress.update((page.number - 1) * page_size + len(page.items), total)
        usable = [o for o in page.items if order_problem(o) is None]
        fresh, stale = without_stale(store, dataset, usable)
        # Refreshed payloads keep each order's stored LastModifiedAt current (`without_stale` compares it).
        diff = store.upsert_snapshot(dataset, [order_row(o) for o in fresh], refresh_payloads=True)
        counts.update(new=diff.new, changed=diff.changed, unchanged=diff.unchanged, stale=stale)
        if diff.new or diff.changed:
            behind.wake()

    return store_page


def mismatch_message(flow: Flow, partition_key: str, guard: GuardResult) -> str:
    first = ", ".join(f"{key} at {format_watermark(at)}" for key, at in guard.outside[:3])
    cause = (f"Billbee read the bounds as {guard.detected_zone} wall time (offset {guard.offset_observed})"
             if guard.detected_zone else "no time zone explains it")
    return (f"{flow.name} {partition_key}: {len(guard.outside)} of {guard.checked} orders lie outside the range "
            f"asked for ({format_watermark(guard.sent.low)}, {format_watermark(guard.sent.high)}] (e.g. {first}): "
            f"{cause}. The window is not marked complete.")


def filter_metadata(zone: str, guards: list[GuardResult], adapted: str) -> dict[str, dg.MetadataValue]:
    first_bad = next((g for g in guards if not g.ok), None)
    return {
        "filter_timezone": dg.MetadataValue.text(zone),
        "filter_timezone_adapted": dg.MetadataValue.text(adapted),
        "filter_offset_observed": dg.MetadataValue.text(first_bad.offset_observed if first_bad else ""),
        "out_of_range": dg.MetadataValue.int(len(first_bad.outside) if first_bad else 0),
    }


def date_filter_result(flow: Flow, guards: list[GuardResult], adapted: str) -> dg.AssetCheckResult:
    """Warns when a read of this run returned orders outside the range it asked for."""
    first_bad = next((g for g in guards if not g.ok), None)
    rows = [{"billbee_order_id": key, "last_modified_at": format_watermark(at)}
            for key, at in (first_bad.outside if first_bad else [])]
    sent_zone = first_bad.sent.zone if first_bad else (guards[-1].sent.zone if guards else "")
    return dg.AssetCheckResult(
        asset_key=flow.key(ORDERS),
        check_name=DATE_FILTER_CHECK,
        passed=first_bad is None,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "filter_timezone_sent": dg.MetadataValue.text(sent_zone),
            "detected_timezone": dg.MetadataValue.text((first_bad.detected_zone or "unknown") if first_bad else ""),
            "filter_offset_observed": dg.MetadataValue.text(first_bad.offset_observed if first_bad else ""),
            "filter_timezone_adapted": dg.MetadataValue.text(adapted),
            "out_of_range": dg.MetadataValue.int(len(rows)),
            "out_of_range_preview": preview_table(rows),
        },
    )


def write_result(context: dg.AssetExecutionContext, flow: Flow, writer: OrderWriter, meter: CallMeter,
                 dry_run: bool) -> dg.MaterializeResult:
    """The writer's complete pass and its materialization; fails the run when PULPO stopped it."""
    report = writer.run()
    metadata = {**report.metadata(dry_run), **meter.metadata()}
    c = report.counts
    context.log.info(f"{flow.name}: {report.read} orders pending; created {c['created']}, adopted "
                     f"{c['adopted']}, cancelled {c['cancelled']}, updated {c['updated']}, attention "
                     f"{c['attention']}, quarantined {c['quarantined']}, skipped {c['skipped']}")
    if writer.halted:
        raise dg.Failure(description=f"{c['failed']} order(s) not written: {writer.halted}. They stay "
                                     "pending and the next run retries them (looking each up first).",
                         metadata=metadata)
    record_success(context, writer.store, flow, WRITER, metadata)
    return dg.MaterializeResult(asset_key=flow.key(WRITER), metadata=ui_metadata(metadata),
                                check_results=[accounted_check(writer, flow)])


def reader_description(flow: Flow) -> str:
    return f"""Billbee orders of account '{flow.source.name}' changed in one UTC hour ({flow.name}).

`GET /orders` with `modifiedAtMin` (exclusive) .. `modifiedAtMax` (inclusive), 250 per page. Each run
reads only what changed since the window's watermark (minus a {int(OVERLAP.total_seconds() // 60)}-minute
overlap), never past the moment the read starts; orders that change while the window is paged make it
read again. The latest version of every order is upserted into DuckDB dataset `{flow.dataset(ORDERS)}`
with a content hash, page by page; unchanged orders are not stored as changes and cause no PULPO write.

Re-running a window is always safe: once complete (`complete` = true in the metadata) a run makes no
Billbee call; launchpad config `reread: true` reads the whole window again and stores only real
changes. Windows missed during downtime are re-run by the `{flow.slug}_gap_filler` sensor; for longer
outages use "Materialize missing" on this asset: windows never read show as missing, a window read only
partly shows `complete: false` in its metadata (materialize its partition again)."""


def writer_description(flow: Flow) -> str:
    return f"""PULPO sales orders of warehouse user '{flow.target.name}' converged to the Billbee
orders of '{flow.source.name}' ({flow.name}).

Takes every order of `{flow.dataset(ORDERS)}` whose hash was not processed yet (plus quarantined orders,
re-evaluated every run): creates orders in the import states (bulk), cancels those in the cancel states,
updates changed ones while PULPO still has them in `queue` and reports the rest as needing attention.
Each write is framed by the ledger, so retries and crashes never duplicate an order. In a run with a
window read, orders are written while Billbee is still being paged. Launchpad `dry_run: true` shows the
plan and writes nothing."""


def consistency_result(flow: Flow, result: WindowRead, problems: list[dict[str, Any]]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=flow.key(ORDERS),
        check_name=CONSISTENCY_CHECK,
        passed=result.consistent and not problems,
        metadata={
            "unique_orders": dg.MetadataValue.int(len(result.orders)),
            "total_rows": dg.MetadataValue.int(result.total_rows if result.total_rows is not None else -1),
            "passes": dg.MetadataValue.int(result.passes),
            "problems": preview_table(problems),
        },
    )
