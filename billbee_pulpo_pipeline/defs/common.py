"""Pieces every flow's Dagster definitions share: the flow handle, metadata, schedules, hashing."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from filelock import FileLock
from pydantic import Field

from billbee_pulpo_pipeline.clients.http import CallStats
from billbee_pulpo_pipeline.config import Credential, Integration, IntegrationConfig
from billbee_pulpo_pipeline.defs.resources import resource_key
from billbee_pulpo_pipeline.state import StateStore, canonical_json

# Flows run in this order when `billbee-pulpo sync` runs them all: products before the orders that
# reference them, orders before anything the warehouse reports back about them.
SYNC_ORDER = ("products", "sales_orders", "status_updates", "stock", "shipping_labels", "shipments")

STATE_STORE_KEY = "state_store"


@dataclass(frozen=True)
class Flow:
    """One configured integration, as the Dagster layer sees it."""

    integration: Integration
    source: Credential
    target: Credential
    # The products integration of the same Billbee account and PULPO user (None without one): its
    # snapshot and mapping tell every flow of the pair which article an order line stands for.
    catalog: Integration | None = None

    @property
    def slug(self) -> str:
        return self.integration.slug

    @property
    def name(self) -> str:
        return self.integration.name

    @property
    def source_key(self) -> str:
        return resource_key(self.source)

    @property
    def target_key(self) -> str:
        return resource_key(self.target)

    def key(self, name: str) -> dg.AssetKey:
        """Asset keys are prefixed with the integration, so two shops or warehouses never collide."""
        return dg.AssetKey([self.slug, name])

    def dataset(self, name: str) -> str:
        """State-store dataset name of this integration."""
        return f"{self.slug}.{name}"

    @property
    def tags(self) -> dict[str, str]:
        return {"integration": self.slug, "integration_type": self.integration.type}



def mapping_kind(kind: str, flow: Flow) -> str:
    """State-store mapping kind for records linked between one Billbee account and one PULPO user,
    e.g. `product:billbee_shop:pulpo_wms`. The pair is ordered Billbee first, whichever way a flow
    runs, so the orders flow finds the products flow's mapping and the status flow the orders'."""
    billbee, pulpo = (flow.source, flow.target) if flow.source.type == "billbee" else (flow.target, flow.source)
    return f"{kind}:{billbee.slug}:{pulpo.slug}"


def flow_for(integration: Integration, config: IntegrationConfig) -> Flow:
    source, target = config.credential(integration.source), config.credential(integration.target)
    billbee, pulpo = (source, target) if source.type == "billbee" else (target, source)
    pair = (billbee.name, pulpo.name)
    catalog = next((i for i in config.integrations_of_type("products")
                    if (config.credential(i.source).name, config.credential(i.target).name) == pair), None)
    return Flow(integration, source, target, catalog)


def interval_cron(minutes: int) -> str:
    """Cron for an interval of 1-60 minutes. Divisors of 60 tile the hour exactly; for the other
    values the schedule ticks every minute and `on_interval` lets every `minutes`-th minute through."""
    if not 1 <= minutes <= 60:
        raise ValueError(f"interval_minutes must be 1-60, got {minutes}")
    if minutes == 60:
        return "0 * * * *"
    if minutes == 1 or 60 % minutes:
        return "* * * * *"
    return f"*/{minutes} * * * *"


def on_interval(minutes: int) -> Callable[[dg.ScheduleEvaluationContext], bool] | None:
    """`should_execute` for intervals that do not divide the hour: minutes since the epoch modulo
    the interval, so 7 means every 7 minutes around the clock, not 0, 7, ..., 56, 0."""
    if 60 % minutes == 0:
        return None

    def should_execute(context: dg.ScheduleEvaluationContext) -> bool:
        tick = context.scheduled_execution_time
        return tick is None or int(tick.timestamp() // 60) % minutes == 0

    return should_execute


def interval_schedule(flow: Flow, job: dg.UnresolvedAssetJobDefinition, name: str) -> dg.ScheduleDefinition:
    """The flow's schedule at its configured `interval_minutes`, running by default."""
    minutes = flow.integration.interval_minutes
    return dg.ScheduleDefinition(
        name=name, job=job, cron_schedule=interval_cron(minutes), execution_timezone="UTC",
        should_execute=on_interval(minutes), default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"{flow.name}: every {minutes} min (interval_minutes in the integration config).",
        tags=flow.tags,
    )


def flow_definitions(flow: Flow, assets: list[dg.AssetsDefinition], what: str,
                     sensors: Callable[[dg.UnresolvedAssetJobDefinition], list[dg.SensorDefinition]] | None = None,
                     ) -> dg.Definitions:
    """An integration's assets with its job (the whole group), the schedule at its interval and the
    sensors `sensors(job)` makes."""
    job = dg.define_asset_job(f"{flow.slug}_job", selection=dg.AssetSelection.groups(flow.slug), tags=flow.tags,
                              description=f"{flow.name}: {what}")
    return dg.Definitions(assets=assets, jobs=[job], schedules=[interval_schedule(flow, job, f"{flow.slug}_schedule")],
                          sensors=sensors(job) if sensors else None)


def fingerprint(payload: Mapping[str, Any]) -> str:
    """Content hash of the fields a flow transfers: canonical JSON, so key order never matters."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class WriteConfig(dg.Config):
    """Launchpad config of every write asset."""

    dry_run: bool = Field(False, description="Compute and show what would be written (metadata `plan`); write "
                                             "nothing to the target system, the ledger or the mappings.")


class CallMeter:
    """API calls used inside one asset: the delta of a client's counters between start and end."""

    def __init__(self, **stats: CallStats) -> None:
        self._stats = stats
        self._start = {name: s.snapshot() for name, s in stats.items()}

    def metadata(self) -> dict[str, dg.MetadataValue]:
        out: dict[str, dg.MetadataValue] = {}
        for name, stats in self._stats.items():
            now, start = stats.snapshot(), self._start[name]
            out[f"{name}_calls"] = dg.MetadataValue.int(now["calls"] - start["calls"])
            out[f"{name}_429"] = dg.MetadataValue.int(now["throttled_429"] - start["throttled_429"])
        return out


def preview_table(rows: list[Mapping[str, Any]], limit: int = 10, width: int = 80) -> dg.MetadataValue:
    """A small markdown table for the asset page (metadata lives in the event log: keep it short);
    cells are cut at `width` characters."""
    if not rows:
        return dg.MetadataValue.md("_none_")
    columns = list(rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:limit]:
        cells = [str(row.get(c, "")).replace("|", "\\|").replace("\n", " ")[:width] for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more")
    return dg.MetadataValue.md("\n".join(lines))


def count_metadata(**counts: int) -> dict[str, dg.MetadataValue]:
    return {name: dg.MetadataValue.int(int(value)) for name, value in counts.items()}


# The numeric series every materialization carries, so that every asset's "Plots" tab in the UI shows the
# same curves: records read and written, API calls and 429s per system, records quarantined by the run.
UI_COUNTS = ("records_read", "records_written", "quarantined", "billbee_calls", "billbee_429", "pulpo_calls",
             "pulpo_429")


def ui_metadata(metadata: Mapping[str, dg.MetadataValue]) -> dict[str, dg.MetadataValue]:
    """`metadata` with every series of `UI_COUNTS` as an int. A count the asset does not produce (PULPO
    calls of a Billbee read, writes of a read) is 0, so every run plots a point on every curve."""
    out = dict(metadata)
    for name in UI_COUNTS:
        value = out.setdefault(name, dg.MetadataValue.int(0))
        if not isinstance(value, dg.IntMetadataValue):
            raise TypeError(f"metadata {name} must be an int count, not {type(value).__name__}")
    return out


def with_integration_metadata(spec: dg.AssetSpec, flow: Flow) -> dg.AssetSpec:
    """The integration's own name (Dagster group names allow only `[A-Za-z0-9_]`, so the group is its
    slug) and type on the asset, shown under "Metadata" on its page in the UI."""
    return spec.merge_attributes(metadata={"integration": flow.name, "integration_type": flow.integration.type})


@dataclass
class WriteReport:
    """What a PULPO → Billbee writer run did: counts and the record lists its metadata previews."""

    read: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    attention: list[dict[str, str]] = field(default_factory=list)
    quarantine: list[dict[str, str]] = field(default_factory=list)
    waiting: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    plan: list[dict[str, str]] = field(default_factory=list)


def write_metadata(counts: dict[str, dg.MetadataValue], *, dry_run: bool, failures: list[Mapping[str, Any]],
                   plan: list[Mapping[str, Any]], **previews: list[Mapping[str, Any]]) -> dict[str, dg.MetadataValue]:
    """The metadata every writer shows: its counts, `dry_run`, a `<name>_preview` table per keyword,
    `failure_preview` when something failed and, in a dry run, the `plan`."""
    meta = {**counts, "dry_run": dg.MetadataValue.bool(dry_run),
            **{f"{name}_preview": preview_table(rows) for name, rows in previews.items()}}
    if failures:
        meta["failure_preview"] = preview_table(failures)
    if dry_run:
        meta["plan"] = preview_table(plan, limit=50)
    return meta


def writer_lock(store_path: Path, flow: Flow, timeout: float) -> FileLock:
    """Held while a PULPO → Billbee writer writes: a sensor run and a schedule run of one integration
    may overlap, and two of them must never send the same Billbee write. Inside it, a ledger entry
    still 'pending' can only be a crash or an unknown outcome, never a write in flight."""
    folder = store_path.parent / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{flow.slug}.writer.lock"), timeout=timeout)


def record_success(context: dg.AssetExecutionContext, store: StateStore, flow: Flow, step: str,
                   metadata: Mapping[str, dg.MetadataValue]) -> None:
    """Note in the state store that `step` of the flow finished, with its int counts: the "last
    successful sync" of `billbee-pulpo status`, for runs of the daemon, the UI and the CLI alike.
    A dry run wrote nothing, so it is no sync."""
    values = {name: value.value for name, value in metadata.items()}
    if values.get("dry_run") is True:
        return
    counts = {name: value for name, value in values.items() if isinstance(value, int) and not isinstance(value, bool)}
    store.record_sync(flow.slug, step, counts, context.run.run_id)
