"""The state sweep of the sales-order flow: a safety net that does not depend on the modification cursor.

Every `sweep_minutes` (default 60) `GET /orders?orderStateId=<import states>&modifiedAtMin=<now - sweep_days>`
(default 14 days, 250 per page, read until one pass is consistent) and every order it returns goes into
the same `billbee_orders` snapshot the hourly windows fill, so the same writer creates what PULPO lacks,
exactly once through its ledger. An order in an import state that PULPO does not have and the snapshot
does not hold in an import state, although its window was read past its last change, is one the cursor
missed (a date filter Billbee read differently, a window lost): counted as `sweep_recovered`, named in a
warning check and the log. (One paid since the last window tick is just not read yet: imported, not counted.)

Go-live: the first sweep of an integration (none has finished yet) has no `modifiedAtMin` at all: it
imports every order in an import state now, however old its last change (weekend backlog, pre-orders,
orders waiting for stock), with `minOrderDate = import_since` when set. Those are counted as `backlog`,
not as recovered. Orders are written while Billbee is still being paged (`write_behind.py`). Launchpad
`dry_run: true` shows the plan and writes nothing to PULPO; the backlog is then imported by the next run.

Cost: a shop whose paid orders are packed within the day holds fewer than 250 orders in the import
states, so a sweep is one call: one call an hour at the default.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field

from billbee_pulpo_pipeline.clients.billbee import MAX_PAGE_SIZE, Order, ResultPage
from billbee_pulpo_pipeline.config.models import SalesOrdersSettings
from billbee_pulpo_pipeline.defs.common import (
    STATE_STORE_KEY,
    CallMeter,
    Flow,
    WriteConfig,
    count_metadata,
    mapping_kind,
    preview_table,
    record_success,
    ui_metadata,
)
from billbee_pulpo_pipeline.defs.sales_orders.assets import ORDERS, page_storer, read_until_cursor
from billbee_pulpo_pipeline.defs.sales_orders.windows import (
    WindowRead,
    WindowReadError,
    floor_hour,
    parse_watermark,
    read_complete_window,
    utc_now,
)
from billbee_pulpo_pipeline.defs.sales_orders.writer import WRITER, OrderWriter, ordered_before
from billbee_pulpo_pipeline.defs.write_behind import WriteBehind
from billbee_pulpo_pipeline.progress import Progress
from billbee_pulpo_pipeline.state import StateStore

SWEEP = "billbee_open_import_orders"
SWEEP_CHECK = "no_orders_missed_by_cursor"
SWEEP_PASSES = 3


def sweep_group(flow: Flow) -> str:
    """The sweep's own asset group beside the integration's: a run of the integration's group (a window,
    with its partition) never includes the unpartitioned sweep, which runs at its own interval."""
    return f"{flow.slug}_sweep"


def sweep_cursor(flow: Flow) -> str:
    """State-store cursor of the last finished sweep: {"at": ISO time, "backlog_done": true}."""
    return f"{flow.slug}.state_sweep"


def last_sweep(store: StateStore, flow: Flow) -> dict[str, Any] | None:
    text = store.get_cursor(sweep_cursor(flow))
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def sweep_due(store: StateStore, flow: Flow, now: datetime | None = None) -> bool:
    """Whether a one-off sync should sweep: never swept (go-live) or the last sweep is `sweep_minutes` old."""
    last = last_sweep(store, flow)
    if not last or not last.get("backlog_done") or not last.get("at"):
        return True
    minutes = int(getattr(flow.integration.settings, "sweep_minutes", 60))
    return datetime.fromisoformat(last["at"]) + timedelta(minutes=minutes) <= (now or datetime.now(UTC))


class SweepConfig(WriteConfig):
    """Launchpad options of the state sweep."""

    page_size: int = Field(MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE,
                           description="Orders per Billbee page (250 = fewest calls; smaller only for tests).")


class MissedOrders:
    """Sorts the import-state orders a sweep returns, before they are stored: already known, not read yet,
    or missed. Missed means its window's watermark vouches for its last change (every order of the window
    changed at or before the watermark was read) and yet neither PULPO nor the snapshot has it in an import
    state. An order paid since the last window tick is merely not read yet: no false alarm."""

    def __init__(self, flow: Flow, store: StateStore, settings: SalesOrdersSettings) -> None:
        self.flow, self.store, self.settings = flow, store, settings
        self._watermarks: dict[str, datetime | None] | None = None
        self.import_ids = set(settings.import_state_ids)
        self.order_kind = mapping_kind("order", flow)
        self.found: set[str] = set()     # in an import state (and not before import_since)
        self.unmapped: set[str] = set()  # ... and not in PULPO
        self.missed: dict[str, str] = {}  # id -> order number: neither in PULPO nor stored in an import state

    def judge(self, orders: list[Order]) -> None:
        wanted = {}
        for order in orders:  # only the fields needed here: this runs on every page, while the pacer waits
            fields = {"created_at": order.CreatedAt.isoformat() if order.CreatedAt else None,
                      "order_number": order.OrderNumber, "modified": order.LastModifiedAt}
            if order.State in self.import_ids and not ordered_before(fields, self.settings.import_since):
                wanted[str(order.BillBeeOrderId)] = fields
        self.found.update(wanted)
        keys = [k for k in wanted if k not in self.missed]
        mapped = self.store.get_mappings(self.order_kind, keys)
        stored = self.store.snapshot_rows(self.flow.dataset(ORDERS), keys)
        for key in keys:
            if key in mapped:
                continue
            self.unmapped.add(key)
            state = json.loads(stored[key]).get("State") if key in stored else None
            if state not in self.import_ids and self.read_past(wanted[key]["modified"]):
                self.missed[key] = str(wanted[key].get("order_number") or "")

    def read_past(self, modified: datetime | None) -> bool:
        """Whether the window of `modified` has been read at least up to it."""
        if modified is None:
            return False
        if self._watermarks is None:  # once per sweep, and only when there is a candidate
            prefix = read_until_cursor(self.flow, "")
            self._watermarks = {key[len(prefix):]: parse_watermark(value)
                                for key, value in self.store.cursors(prefix).items()}
        mark = self._watermarks.get(floor_hour(modified).strftime("%Y-%m-%d-%H:%M"))
        return mark is not None and modified.astimezone(UTC) <= mark


def sweep_assets(flow: Flow) -> dg.AssetsDefinition:
    """`billbee_open_import_orders`: the state sweep, which also writes what it finds (see the module)."""
    key = flow.key(SWEEP)
    settings: SalesOrdersSettings = flow.integration.settings  # type: ignore[assignment]

    @dg.multi_asset(
        name=f"{flow.slug}__state_sweep",
        specs=[dg.AssetSpec(key, group_name=sweep_group(flow), kinds={"billbee", "pulpo", "duckdb"}, tags=flow.tags,
                            skippable=True, description=sweep_description(flow))],
        check_specs=[dg.AssetCheckSpec(
            SWEEP_CHECK, asset=key, blocking=False,
            description="The state sweep found no order in an import state that the modification cursor missed "
                        "(not in PULPO and not read by a window). When it warns, the orders named were imported "
                        "by the sweep: look at the date-filter check and the README's live-tenant checks.")],
        required_resource_keys={flow.source_key, flow.target_key, STATE_STORE_KEY},
        pool=f"{flow.slug}_pulpo_writes",  # the same pool as the window runs: never two writers at once
    )
    def state_sweep(context: dg.AssetExecutionContext, config: SweepConfig) -> Iterator[dg.MaterializeResult]:
        store = context.resources.state_store.store()
        client = getattr(context.resources, flow.source_key).client()
        pulpo = getattr(context.resources, flow.target_key).client()
        meter = CallMeter(billbee=client.stats, pulpo=pulpo.stats)
        writer = OrderWriter(flow, pulpo, store, dry_run=config.dry_run, log=context.log)
        previous = last_sweep(store, flow)
        backlog = not (previous and previous.get("backlog_done"))
        started = utc_now()
        since = None if backlog else started - timedelta(days=settings.sweep_days)
        min_order = (datetime(settings.import_since.year, settings.import_since.month, settings.import_since.day,
                              tzinfo=UTC) if settings.import_since else None)
        missed = MissedOrders(flow, store, settings)
        counts: Counter[str] = Counter()
        progress = Progress(f"{flow.name} state sweep", "orders", context.log.info)
        consistent = True
        with WriteBehind(None if config.dry_run else writer.write_pass, name=f"{flow.slug}-sweep-writes") as behind:
            store_orders = page_storer(store, flow.dataset(ORDERS), behind, progress, config.page_size, counts)

            def pages() -> Iterator[ResultPage[Order]]:
                for page in client.iter_order_pages(order_state_ids=settings.import_state_ids,
                                                    modified_at_min=since, min_order_date=min_order,
                                                    page_size=config.page_size):
                    missed.judge(page.items)  # before storing: what did the snapshot hold until now?
                    store_orders(page)
                    yield page

            try:
                result = read_complete_window(pages, max_passes=SWEEP_PASSES, on_shift=context.log.warning)
            except WindowReadError as exc:  # what was read is stored; the next sweep reads it all again
                context.log.warning(f"{flow.name} state sweep: {exc}")
                consistent, result = False, WindowRead.nothing()
        progress.finish()
        report = writer.run()
        if writer.halted:
            raise dg.Failure(description=f"state sweep: orders not written: {writer.halted}. They stay pending and "
                                         "the next run retries them.")
        if consistent and not config.dry_run:
            store.set_cursor(sweep_cursor(flow), json.dumps({"at": started.isoformat(), "backlog_done": True}))

        recovered = {} if backlog else missed.missed
        recovered_preview = preview_table([{"billbee_order_id": k, "order_number": v}
                                           for k, v in sorted(recovered.items())])
        if recovered:
            context.log.warning(f"{flow.name}: the state sweep found {len(recovered)} order(s) in an import state "
                                f"that the modification cursor missed, now handed to the writer: "
                                f"{', '.join(sorted(recovered)[:10])}")
        mode = "backlog (go-live)" if backlog else f"changed in the last {settings.sweep_days} days"
        context.log.info(f"{flow.name} state sweep ({mode}): {len(missed.found)} orders in an import state, "
                         f"{len(missed.unmapped) if backlog else 0} backlog, {len(recovered)} recovered; "
                         f"created {report.counts['created']}")
        writer_meta = report.metadata(config.dry_run)
        metadata = {
            **writer_meta,
            **count_metadata(records_read=len(result.orders) if consistent else sum(counts.values()),
                             in_import_states=len(missed.found), backlog=len(missed.unmapped) if backlog else 0,
                             sweep_recovered=len(recovered), pages=result.pages, new=counts["new"],
                             changed=counts["changed"]),
            **meter.metadata(),
            "mode": dg.MetadataValue.text(mode),
            "since": dg.MetadataValue.text(since.isoformat() if since else "any time"),
            "import_since": dg.MetadataValue.text(settings.import_since.isoformat() if settings.import_since else ""),
            "consistent": dg.MetadataValue.bool(consistent),
            "recovered_preview": recovered_preview,
        }
        if not config.dry_run:
            record_success(context, store, flow, SWEEP, ui_metadata(metadata))
            record_success(context, store, flow, WRITER, ui_metadata(writer_meta))
        yield dg.MaterializeResult(asset_key=key, metadata=ui_metadata(metadata), check_results=[
            dg.AssetCheckResult(
                asset_key=key, check_name=SWEEP_CHECK, passed=not recovered, severity=dg.AssetCheckSeverity.WARN,
                metadata={"sweep_recovered": dg.MetadataValue.int(len(recovered)),
                          "recovered_preview": recovered_preview})])

    return state_sweep


def sweep_description(flow: Flow) -> str:
    settings: SalesOrdersSettings = flow.integration.settings  # type: ignore[assignment]
    states = ", ".join(s.name for s in settings.import_states)
    return f"""State sweep of Billbee account '{flow.source.name}' ({flow.name}): a safety net beside the windows.

Every {settings.sweep_minutes} min `GET /orders?orderStateId=<{states}>&modifiedAtMin=<now - {settings.sweep_days}
days>` (250 per page, read until consistent); every order goes into dataset `{flow.dataset(ORDERS)}` and the
order writer creates what PULPO lacks (exactly once, ledger). `sweep_recovered` counts orders in an import
state the modification cursor missed; the check `{SWEEP_CHECK}` warns when it is not 0.

The first sweep (go-live) has no date bound: it imports every order in an import state now, however old
(`import_since` leaves out orders created before it). Launchpad `dry_run: true` shows that backlog first."""


def sweep_sensor(flow: Flow, job: "dg.UnresolvedAssetJobDefinition") -> dg.SensorDefinition:
    """Requests a sweep when the last one is `sweep_minutes` old, judged from Dagster's records (no DuckDB,
    no API): so the go-live backlog runs within a minute of the first start, then at its interval."""
    settings: SalesOrdersSettings = flow.integration.settings  # type: ignore[assignment]
    minutes = settings.sweep_minutes
    key = flow.key(SWEEP)

    @dg.sensor(name=f"{flow.slug}_state_sweep", job=job, minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"{flow.name}: the state sweep every {minutes} min (sweep_minutes), and at once when it "
                           "never ran (the go-live backlog).")
    def sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        now = datetime.now(UTC)
        record = context.instance.get_latest_materialization_event(key)
        last = datetime.fromtimestamp(record.timestamp, UTC) if record is not None else None
        if last is not None and last + timedelta(minutes=minutes) > now:
            return dg.SkipReason(f"last sweep {last.isoformat(timespec='minutes')}; next after {minutes} min")
        # One request per interval: a failing sweep is tried again at the next interval, not every minute.
        bucket = int(now.timestamp() // (minutes * 60))
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"sweep:{bucket}",
                                                           tags={**flow.tags, "bpp/trigger": "state_sweep"})])

    return sensor
