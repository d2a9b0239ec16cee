"""What drives the sales-order flow: the schedule at `interval_minutes` and the gap-filling sensor.

The schedule reads the hour its tick falls in (and the previous hour until that one is complete). Dagster
does not catch up schedule ticks missed while the daemon was down, so the gap filler looks for ended
hourly windows that were not read to their end and runs them. Neither opens DuckDB nor calls an API: the
sensor judges completeness from Dagster's own records (the `read_until`/`complete` metadata of each
partition's latest materialization), so its ticks stay cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg

from billbee_pulpo_pipeline.defs.common import Flow, interval_cron, on_interval
from billbee_pulpo_pipeline.defs.sales_orders.assets import ORDERS, partitions_for, read_until_cursor
from billbee_pulpo_pipeline.defs.sales_orders.windows import (
    OVERLAP,
    ended_windows,
    floor_hour,
    is_complete,
    parse_watermark,
    tick_windows,
)
from billbee_pulpo_pipeline.state import StateStore

MAX_GAP_RUNS_PER_TICK = 4
"""Gap-filling runs requested per sensor tick (oldest first); the rest follow on later ticks."""

GAP_FILLER_INTERVAL_SECONDS = 60

PARTITION_TAG = "dagster/partition"
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def _key(partitions: dg.TimeWindowPartitionsDefinition, start: datetime) -> str:
    return start.astimezone(UTC).strftime(partitions.fmt)


def _first_start(partitions: dg.TimeWindowPartitionsDefinition) -> datetime:
    return partitions.start.astimezone(UTC)


def orders_schedule(flow: Flow, job: dg.UnresolvedAssetJobDefinition,
                    partitions: dg.TimeWindowPartitionsDefinition) -> dg.ScheduleDefinition:
    minutes = flow.integration.interval_minutes
    check = on_interval(minutes)

    @dg.schedule(name=f"{flow.slug}_schedule", job=job, cron_schedule=interval_cron(minutes),
                 execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING, tags=flow.tags,
                 description=f"{flow.name}: every {minutes} min, the orders changed since the last tick in the "
                             "hour the tick falls in (and in the previous hour until it is read to its end).")
    def schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        if check is not None and not check(context):
            return dg.SkipReason(f"not a {minutes}-minute tick")
        tick = (context.scheduled_execution_time or datetime.now(UTC)).astimezone(UTC)
        stamp = tick.strftime("%Y-%m-%dT%H:%M")
        return [dg.RunRequest(partition_key=_key(partitions, start), run_key=f"{_key(partitions, start)}@{stamp}",
                              tags={**flow.tags, "bpp/trigger": "schedule"})
                for start in tick_windows(tick, minutes, _first_start(partitions))]

    return schedule


def gap_grace(interval_minutes: int) -> timedelta:
    """How long after its end a window is left to the schedule, whose last read of it comes at most one
    interval plus the overlap later; a minute more lets that run show up as in flight."""
    return timedelta(minutes=interval_minutes) + OVERLAP + timedelta(minutes=1)


def latest_read_until(instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                      partition_keys: Sequence[str]) -> dict[str, tuple[bool, str]]:
    """(complete, read_until) from the latest materialization of each partition that has one: two
    indexed queries in Dagster's event log, whatever the number of partitions."""
    if not partition_keys:
        return {}
    latest = instance.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(partition_keys))
    if not latest:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(latest.values())), limit=len(latest)).records
    out: dict[str, tuple[bool, str]] = {}
    for record in records:
        materialization = record.asset_materialization
        if materialization is None or materialization.partition is None:
            continue
        metadata = materialization.metadata
        complete = metadata.get("complete")
        read_until = metadata.get("read_until")
        out[materialization.partition] = (bool(complete.value) if complete is not None else False,
                                          str(read_until.value) if read_until is not None else "")
    return out


def partitions_in_flight(instance: dg.DagsterInstance, job_name: str, asset_key: dg.AssetKey,
                         partition_keys: Iterable[str]) -> set[str]:
    """Partitions of `asset_key` with a queued or running run: of our job, or any run that selects
    the asset (a UI materialization or backfill)."""
    keys = list(partition_keys)
    if not keys:
        return set()
    runs = instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT, tags={PARTITION_TAG: keys}))
    busy = set()
    for run in runs:
        ours = run.job_name == job_name or (run.asset_selection is not None and asset_key in run.asset_selection)
        if ours and run.tags.get(PARTITION_TAG):
            busy.add(run.tags[PARTITION_TAG])
    return busy


def gap_filler_sensor(flow: Flow, job: dg.UnresolvedAssetJobDefinition,
                      partitions: dg.TimeWindowPartitionsDefinition) -> dg.SensorDefinition:
    """Runs ended hourly windows that were not read to their end (missed ticks after downtime).

    Looks back `lookback_hours` (integration setting, default 24) from the current hour, so the first
    start of an integration also imports that much history. Windows that ended less than one interval
    plus the overlap ago are left to the schedule. Outages longer than the lookback: open the asset and
    use "Materialize missing" (windows never read show as missing; windows read only partly show as
    materialized with `complete: false`, select them by partition and materialize them).
    """
    asset_key = flow.key(ORDERS)
    minutes = flow.integration.interval_minutes
    lookback_hours = int(getattr(flow.integration.settings, "lookback_hours", 24))

    @dg.sensor(name=f"{flow.slug}_gap_filler", job=job, minimum_interval_seconds=GAP_FILLER_INTERVAL_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"{flow.name}: re-runs ended hourly order windows of the last {lookback_hours} h "
                           f"that were not read to their end (Dagster does not catch up missed schedule ticks), "
                           f"at most {MAX_GAP_RUNS_PER_TICK} per tick, oldest first.")
    def gap_filler(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        now = datetime.now(UTC)
        starts = ended_windows(now, lookback_hours, _first_start(partitions), gap_grace(minutes))
        keys = [_key(partitions, start) for start in starts]
        reads = latest_read_until(context.instance, asset_key, keys)
        incomplete = [k for k in keys if not reads.get(k, (False, ""))[0]]
        busy = partitions_in_flight(context.instance, job.name, asset_key, incomplete)
        todo = [k for k in incomplete if k not in busy][:MAX_GAP_RUNS_PER_TICK]
        if not todo:
            return dg.SkipReason(f"all {len(keys)} ended windows of the last {lookback_hours} h are read to their end "
                                 f"or running ({len(busy)} in flight)")
        # The run key names the data (window + how far it was read) and the hour of the attempt: a window
        # whose run failed is tried again at most once an hour, not at every tick.
        hour = now.strftime("%Y-%m-%dT%H")
        return dg.SensorResult(run_requests=[
            dg.RunRequest(partition_key=k, run_key=f"gap:{k}:{reads.get(k, (False, ''))[1] or 'unread'}:{hour}",
                          tags={**flow.tags, "bpp/trigger": "gap_filler"})
            for k in todo
        ])

    return gap_filler


def windows_to_sync(flow: Flow, store: StateStore, now: datetime | None = None) -> list[str]:
    """Partition keys a one-off sync (`billbee-pulpo sync`, e.g. from cron) reads, oldest first: the
    ended windows of the last `lookback_hours` whose watermark in the state store has not reached
    their end, then the current hour. So changes made between a window's last read and its end are
    never lost to a sync that runs after the hour turned, with or without the Dagster daemon."""
    partitions = partitions_for(flow)
    now = now or datetime.now(UTC)
    lookback_hours = int(getattr(flow.integration.settings, "lookback_hours", 24))
    ended = [_key(partitions, start) for start in ended_windows(now, lookback_hours, _first_start(partitions),
                                                                timedelta(0))]
    unfinished = [key for key in ended if not is_complete(
        parse_watermark(store.get_cursor(read_until_cursor(flow, key))),
        partitions.time_window_for_partition_key(key).end)]
    return [*unfinished, _key(partitions, floor_hour(now))]
