"""`billbee-pulpo status`: what every integration has done and what waits, from local records only.

Reads the state store (last successful step per integration, pending records, quarantine, ledger
entries needing attention) and the Billbee call counters under `$BPP_HOME/pacing` (see
`clients/usage.py`). It calls no API and needs no Dagster daemon, so it answers even when both
systems are down. The counts come from what every process records: the assets write the sync log
(`StateStore.record_sync`) whether the daemon, the UI or `billbee-pulpo sync` ran them.
"""

from __future__ import annotations

import calendar
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from billbee_pulpo_pipeline.clients.billbee.client import account_fingerprint
from billbee_pulpo_pipeline.clients.usage import AccountUsage, month_of, read_usage
from billbee_pulpo_pipeline.config import BillbeeCredential, IntegrationConfig
from billbee_pulpo_pipeline.defs.common import Flow, flow_for
from billbee_pulpo_pipeline.defs.sales_orders.go_live import with_go_live
from billbee_pulpo_pipeline.state import DB_FILE_NAME, StateStore

FREE_CALLS_PER_MONTH = 100_000
COST_NOTE = f"Billbee bills each call beyond {FREE_CALLS_PER_MONTH:,} a month"
EXAMPLE_KEYS = 3
MAX_REASON_GROUPS = 20
MAX_ATTENTION_SHOWN = 10
# The counts of a step worth showing, in this order (every asset reports these names).
MAIN_COUNTS = ("records_read", "records_written", "records_skipped", "quarantined", "billbee_calls", "pulpo_calls")


# ---- Billbee's monthly budget -----------------------------------------------------------------------


@dataclass(frozen=True)
class MonthForecast:
    """Calls so far this month, extrapolated linearly to the month's end."""

    month: str
    calls: int
    elapsed_fraction: float
    projected: int
    free_calls: int
    runs_out_at: datetime | None   # when the free calls are used up at this rate (None: they last)

    @property
    def used_up(self) -> bool:
        return self.calls >= self.free_calls

    def summary(self) -> str:
        text = (f"{self.calls:,} calls in {self.month}, forecast {self.projected:,} for the month "
                f"({self.projected * 100 // self.free_calls} % of the {self.free_calls:,} free calls)")
        if self.used_up:
            return f"{text}; the free calls are used up: {COST_NOTE}"
        if self.runs_out_at is not None:
            return (f"{text}; at this rate they run out on {self.runs_out_at:%Y-%m-%d %H:%M} UTC, "
                    f"after that {COST_NOTE}")
        return text


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """Start of `now`'s calendar month (UTC) and of the next one."""
    now = now.astimezone(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(now.year, now.month)[1]
    return start, start + timedelta(days=days)


def forecast_month(calls: int, now: datetime, free_calls: int = FREE_CALLS_PER_MONTH) -> MonthForecast:
    """Calls so far ÷ the elapsed fraction of the month; and at that rate, when the free calls run out."""
    start, end = month_bounds(now)
    elapsed = (now.astimezone(UTC) - start) / (end - start)
    projected = round(calls / elapsed) if elapsed > 0 else calls
    runs_out_at = None
    if calls > 0 and elapsed > 0:
        moment = start + (now.astimezone(UTC) - start) * (free_calls / calls)
        if moment < end:
            runs_out_at = moment
    return MonthForecast(month_of(now), calls, elapsed, projected, free_calls, runs_out_at)


@dataclass
class AccountStatus:
    credential: str | None     # the config's name for it; None for an account only the counters know
    base_url: str | None
    account: str               # fingerprint prefix naming the counter file (no secret in it)
    forecast: MonthForecast

    def as_dict(self) -> dict[str, Any]:
        f = self.forecast
        return {"credential": self.credential, "base_url": self.base_url, "account": self.account,
                "month": f.month, "calls": f.calls, "forecast": f.projected, "free_calls": f.free_calls,
                "elapsed_fraction": round(f.elapsed_fraction, 4), "used_up": f.used_up,
                "runs_out_at": f.runs_out_at.isoformat() if f.runs_out_at else None, "summary": f.summary()}


def billbee_accounts(config: IntegrationConfig, home: Path, now: datetime) -> list[AccountStatus]:
    """Calls this month per Billbee account: the config's accounts first (0 calls when none were made),
    then any other account counted in this home (an earlier config, say)."""
    usage = {u.account: u for u in read_usage(home / "pacing", month_of(now))}
    shown: list[AccountStatus] = []
    for credential in config.credentials:
        if not isinstance(credential, BillbeeCredential):
            continue
        found = _usage_of(credential, usage)
        account = found.account if found else _account_of(credential) or ""
        shown.append(AccountStatus(credential.name, credential.base_url, account,
                                   forecast_month(found.calls if found else 0, now)))
        if found:
            usage.pop(found.account)
    shown += [AccountStatus(None, u.base_url, u.account, forecast_month(u.calls, now)) for u in usage.values()]
    return shown


def _account_of(credential: BillbeeCredential) -> str | None:
    if not (credential.base_url and credential.username and credential.api_key):
        return None  # variables unset in this shell: matched by base URL below
    return account_fingerprint(credential.base_url.rstrip("/"), credential.username,
                               credential.api_key.get_secret_value())[:32]


def _usage_of(credential: BillbeeCredential, usage: dict[str, AccountUsage]) -> AccountUsage | None:
    account = _account_of(credential)
    if account is not None:
        return usage.get(account)
    same_url = [u for u in usage.values() if credential.base_url and u.base_url == credential.base_url.rstrip("/")]
    return same_url[0] if len(same_url) == 1 else None


# ---- per integration --------------------------------------------------------------------------------


@dataclass
class IntegrationStatus:
    name: str
    slug: str
    type: str
    interval_minutes: int
    last_success: dict[str, Any] | None = None
    lag_seconds: float | None = None
    lag_note: str = ""
    late: bool = False
    pending: int | None = None
    pending_note: str = ""
    quarantined: int = 0
    quarantine_reasons: list[dict[str, Any]] = field(default_factory=list)
    attention: int = 0
    attention_writes: list[dict[str, Any]] = field(default_factory=list)
    failed_writes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def integration_status(flow: Flow, store: StateStore | None, now: datetime) -> IntegrationStatus:
    integration = flow.integration
    status = IntegrationStatus(integration.name, integration.slug, integration.type, integration.interval_minutes)
    if store is None:
        status.lag_note, status.pending_note, status.late = "never synced", "nothing stored yet", True
        return status
    steps = store.last_syncs(flow.slug)
    last = next((s for s in steps if s.step == writer_step(integration.type)), None)
    if last is not None:
        # The run's other steps (the reader of a multi-asset) add their counts: records read, calls.
        totals: dict[str, int] = defaultdict(int)
        for step in steps:
            if step.run_id == last.run_id:
                for name, value in step.counts.items():
                    totals[name] += value
        status.last_success = {
            "step": last.step, "finished_at": last.finished_at.isoformat(), "run_id": last.run_id,
            "age_seconds": round((now - last.finished_at).total_seconds(), 1),
            "counts": {name: totals[name] for name in MAIN_COUNTS if name in totals},
        }
    _lag(status, flow, store, now, last.finished_at if last else None)
    status.pending, status.pending_note = pending_records(flow, store)
    _quarantine(status, store)
    _attention(status, store)
    return status


def writer_step(integration_type: str) -> str:
    """The asset whose success is the integration's sync: the one that writes to the target."""
    from billbee_pulpo_pipeline.defs.sales_orders.writer import WRITER as ORDERS_WRITER
    from billbee_pulpo_pipeline.defs.shipments.writer import WRITER as SHIPMENTS_WRITER
    from billbee_pulpo_pipeline.defs.shipping_labels.writer import WRITER as LABELS_WRITER
    from billbee_pulpo_pipeline.defs.status_updates.writer import WRITER as STATUS_WRITER
    from billbee_pulpo_pipeline.defs.stock.assets import WRITER as STOCK_WRITER

    return {"products": "pulpo_products", "sales_orders": ORDERS_WRITER, "status_updates": STATUS_WRITER,
            "stock": STOCK_WRITER, "shipping_labels": LABELS_WRITER, "shipments": SHIPMENTS_WRITER}[integration_type]


def _lag(status: IntegrationStatus, flow: Flow, store: StateStore, now: datetime,
         last_success: datetime | None) -> None:
    """Sales orders: how far behind the oldest moment not read yet is. Others: the age of the last
    success, late when it exceeds two intervals (the schedule missed a run or runs fail)."""
    allowed = timedelta(minutes=2 * flow.integration.interval_minutes)
    if flow.integration.type == "sales_orders":
        behind, note = orders_read_lag(flow, store, now)
        status.lag_seconds, status.lag_note = round(behind.total_seconds(), 1), note
        status.late = behind > allowed
        return
    if last_success is None:
        status.lag_note, status.late = "never synced", True
        return
    age = now - last_success
    status.lag_seconds = round(age.total_seconds(), 1)
    status.late = age > allowed
    status.lag_note = f"last success {human_age(age)} ago, runs every {flow.integration.interval_minutes} min"


def orders_read_lag(flow: Flow, store: StateStore, now: datetime) -> tuple[timedelta, str]:
    """The oldest moment not read yet: the watermark of the oldest window within `lookback_hours`
    not read to its end (its start when never read), else the current window's watermark."""
    from billbee_pulpo_pipeline.defs.sales_orders.assets import partitions_for, read_until_cursor
    from billbee_pulpo_pipeline.defs.sales_orders.windows import (
        ended_windows,
        floor_hour,
        is_complete,
        parse_watermark,
    )

    partitions = partitions_for(flow)
    lookback = int(getattr(flow.integration.settings, "lookback_hours", 24))
    starts = [*ended_windows(now, lookback, partitions.start.astimezone(UTC), timedelta(0)), floor_hour(now)]
    for start in starts:
        key = start.strftime(partitions.fmt)
        watermark = parse_watermark(store.get_cursor(read_until_cursor(flow, key)))
        if is_complete(watermark, start + timedelta(hours=1)):
            continue
        if watermark is None:
            return now - start, f"window {key} not read yet"
        return max(now - watermark, timedelta(0)), f"orders read up to {watermark:%Y-%m-%d %H:%M:%S} UTC"
    return timedelta(0), "up to date"


def pending_records(flow: Flow, store: StateStore) -> tuple[int | None, str]:
    """Records read but not yet processed by the writer, from the datasets the flow keeps; records in
    quarantine are counted there, not here."""
    kind = flow.integration.type
    if kind == "stock":
        return None, "computed fresh from PULPO on every run"
    if kind == "products":
        diff = store.compare_snapshots(flow.dataset("billbee_products"), flow.dataset("pulpo_products_acknowledged"))
        keys, note = {*diff.new_keys, *diff.changed_keys}, "Billbee products new or changed, not yet in PULPO"
    elif kind == "sales_orders":
        keys = {key for key, _ in store.pending_changes(flow.dataset("billbee_orders"),
                                                        flow.dataset("pulpo_orders_processed"))}
        note = "Billbee orders stored, not yet handled for PULPO"
    else:
        processed = {"status_updates": "billbee_packed_processed", "shipping_labels": "labels_processed",
                     "shipments": "shipments_processed"}[kind]
        keys = {key for key, _ in store.pending_changes(flow.dataset("pulpo_finished_packing_orders"),
                                                        flow.dataset(processed))}
        note = "finished packing orders not yet handled"
        if kind == "status_updates":
            keys |= {key for key, _ in store.pending_changes(flow.dataset("pulpo_ended_sales_orders"),
                                                             flow.dataset("billbee_ended_processed"))}
            note = "finished packing orders and ended sales orders not yet handled"
    parked = store.quarantine_open_keys(flow.slug, record_keys=keys) if keys else set()
    return len(keys - parked), note


_VARYING = re.compile(r"[\w.\-/]*\d[\w.\-/]*")
_LIST_OF_VARYING = re.compile(r"…(?:, …)+")


def reason_pattern(reason: str) -> str:
    """A reason with its record-specific parts (ids, SKUs, quantities: anything with a digit) as "…",
    so that "waiting for product SKU-1" and "waiting for product SKU-2, SKU-3" count as one reason."""
    return _LIST_OF_VARYING.sub("…", _VARYING.sub("…", reason))


def _quarantine(status: IntegrationStatus, store: StateStore) -> None:
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    entries = store.quarantine_list(status.slug)
    for entry in entries:
        groups[reason_pattern(entry.reason)].append((entry.record_key, entry.reason))
    status.quarantined = len(entries)
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    status.quarantine_reasons = [
        {"reason": pattern, "count": len(found),
         "examples": [{"key": key, "reason": reason} for key, reason in found[:EXAMPLE_KEYS]]}
        for pattern, found in ranked[:MAX_REASON_GROUPS]]


def _attention(status: IntegrationStatus, store: StateStore) -> None:
    counts = store.summary(status.slug)["ledger"]
    status.attention, status.failed_writes = counts["attention"], counts["failed"]
    status.attention_writes = [
        {"key": e.key, "action": e.action, "message": e.message, "updated_at": e.updated_at.isoformat()}
        for e in store.ledger_entries(status.slug, "attention", limit=MAX_ATTENTION_SHOWN)
    ]


# ---- the whole report --------------------------------------------------------------------------------


@dataclass
class StatusReport:
    generated_at: datetime
    config: str
    state_store: str
    integrations: list[IntegrationStatus]
    billbee_accounts: list[AccountStatus]

    @property
    def needs_attention(self) -> bool:
        return any(i.late or i.quarantined or i.attention or i.failed_writes for i in self.integrations) or \
            any(a.forecast.used_up or a.forecast.runs_out_at is not None for a in self.billbee_accounts)

    def as_dict(self) -> dict[str, Any]:
        return {"generated_at": self.generated_at.isoformat(), "config": self.config,
                "state_store": self.state_store, "needs_attention": self.needs_attention,
                "integrations": [i.as_dict() for i in self.integrations],
                "billbee_accounts": [a.as_dict() for a in self.billbee_accounts]}


def collect_status(config: IntegrationConfig, home: Path, now: datetime | None = None) -> StatusReport:
    """The status of every configured integration, in config order; reads local files only."""
    now = now or datetime.now(UTC)
    store = StateStore(home) if (home / DB_FILE_NAME).exists() else None   # never create one just to look
    config = with_go_live(config, home, create=False)
    try:
        integrations = [integration_status(flow_for(i, config), store, now) for i in config.integrations]
    finally:
        if store is not None:
            store.close()
    return StatusReport(now, str(config.source_path), str(home / DB_FILE_NAME), integrations,
                        billbee_accounts(config, home, now))


# ---- text ---------------------------------------------------------------------------------------------


def human_age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def render_text(report: StatusReport) -> str:
    lines = [f"billbee-pulpo status at {report.generated_at:%Y-%m-%d %H:%M:%S} UTC (config {report.config})"]
    for i in report.integrations:
        lines += ["", *_integration_lines(i)]
    lines += ["", "Billbee API calls this month:"]
    if not report.billbee_accounts:
        lines.append("  no Billbee account configured")
    for a in report.billbee_accounts:
        name = a.credential or f"account {a.account} (not in this config)"
        lines.append(f"  {name} ({a.base_url or 'unknown URL'}): {a.forecast.summary()}")
    return "\n".join(lines)


def _integration_lines(i: IntegrationStatus) -> list[str]:
    flag = "LATE " if i.late else ""
    lines = [f"{i.name} ({i.type}, every {i.interval_minutes} min) {flag}".rstrip()]
    if i.last_success:
        counts = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in i.last_success["counts"].items())
        age = human_age(timedelta(seconds=i.last_success["age_seconds"]))
        lines.append(f"  last success: {i.last_success['finished_at'][:19].replace('T', ' ')} UTC ({age} ago)"
                     + (f"; {counts}" if counts else ""))
    else:
        lines.append("  last success: never")
    lag = human_age(timedelta(seconds=i.lag_seconds)) if i.lag_seconds is not None else "-"
    lines.append(f"  lag: {lag} ({i.lag_note})")
    pending = f"{i.pending:,}" if i.pending is not None else "-"
    lines.append(f"  pending: {pending} ({i.pending_note})")
    lines.append(f"  quarantined: {i.quarantined:,}")
    for group in i.quarantine_reasons[:5]:
        examples = ", ".join(example["key"] for example in group["examples"])
        lines.append(f"    {group['count']:>5} x {group['reason']} (e.g. {examples})")
    if len(i.quarantine_reasons) > 5:
        lines.append(f"    … and {len(i.quarantine_reasons) - 5} more reasons (--json lists them)")
    lines.append(f"  writes needing attention: {i.attention:,}" + (f", failed: {i.failed_writes:,}"
                                                                   if i.failed_writes else ""))
    for write in i.attention_writes[:5]:
        lines.append(f"    {write['key']}: {write['message'] or write['action']}")
    return lines
