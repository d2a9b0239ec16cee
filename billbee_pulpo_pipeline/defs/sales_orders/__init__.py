"""Dagster definitions of the 'sales_orders' integration type (Billbee → PULPO)."""

from __future__ import annotations

import dagster as dg

from billbee_pulpo_pipeline.defs.common import Flow
from billbee_pulpo_pipeline.defs.sales_orders.assets import partitions_for, sales_orders_assets
from billbee_pulpo_pipeline.defs.sales_orders.automation import gap_filler_sensor, orders_schedule
from billbee_pulpo_pipeline.defs.sales_orders.sweep import SWEEP, sweep_assets, sweep_sensor


def build(flow: Flow) -> dg.Definitions:
    partitions = partitions_for(flow)
    assets = [sales_orders_assets(flow, partitions), sweep_assets(flow)]
    sweep = dg.AssetSelection.assets(flow.key(SWEEP))
    job = dg.define_asset_job(f"{flow.slug}_job", selection=dg.AssetSelection.groups(flow.slug),
                              tags=flow.tags, description=f"{flow.name}: Billbee orders → PULPO, hour by hour.")
    sweep_job = dg.define_asset_job(f"{flow.slug}_sweep_job", selection=sweep, tags=flow.tags,
                                    description=f"{flow.name}: the state sweep (import states → PULPO).")
    return dg.Definitions(assets=assets, jobs=[job, sweep_job], schedules=[orders_schedule(flow, job, partitions)],
                          sensors=[gap_filler_sensor(flow, job, partitions), sweep_sensor(flow, sweep_job)])
