"""What drives the sales-order flow: the schedule at `interval_minutes` (and, later, the gap filler)."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from billbee_pulpo_pipeline.defs.common import Flow, interval_cron, on_interval


def orders_schedule(flow: Flow, job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    minutes = flow.integration.interval_minutes

    @dg.schedule(name=f"{flow.slug}_schedule", job=job, cron_schedule=interval_cron(minutes),
                 execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
                 description=f"{flow.name}: every {minutes} min, the hour the tick falls in.")
    def schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        check = on_interval(minutes)
        if check is not None and not check(context):
            return dg.SkipReason(f"not a {minutes}-minute tick")
        tick = context.scheduled_execution_time or datetime.now(UTC)
        return dg.RunRequest(partition_key=tick.astimezone(UTC).strftime("%Y-%m-%d-%H:00"), tags=flow.tags)

    return schedule
