"""Definitions built from the integration config: one asset group per configured integration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg

from billbee_pulpo_pipeline.config import IntegrationConfig
from billbee_pulpo_pipeline.defs import sales_orders
from billbee_pulpo_pipeline.defs.alerts import alert_definitions
from billbee_pulpo_pipeline.defs.attention import attention_checks
from billbee_pulpo_pipeline.defs.common import STATE_STORE_KEY, Flow, flow_for, with_integration_metadata
from billbee_pulpo_pipeline.defs.products import assets as products_assets
from billbee_pulpo_pipeline.defs.resources import StateStoreResource, resource_for, resource_key
from billbee_pulpo_pipeline.defs.sales_orders.go_live import with_go_live
from billbee_pulpo_pipeline.defs.sales_orders.writer import WRITER as SALES_ORDERS_WRITER
from billbee_pulpo_pipeline.defs.shipments import assets as shipments_assets
from billbee_pulpo_pipeline.defs.shipments.writer import WRITER as SHIPMENTS_WRITER
from billbee_pulpo_pipeline.defs.shipping_labels import assets as shipping_labels_assets
from billbee_pulpo_pipeline.defs.shipping_labels.writer import WRITER as LABELS_WRITER
from billbee_pulpo_pipeline.defs.status_updates import assets as status_updates_assets
from billbee_pulpo_pipeline.defs.status_updates.writer import WRITER as STATUS_WRITER
from billbee_pulpo_pipeline.defs.stock import assets as stock_assets

FLOW_BUILDERS: dict[str, Callable[[Flow], dg.Definitions]] = {
    "products": products_assets.build,
    "sales_orders": sales_orders.build,
    "status_updates": status_updates_assets.build,
    "stock": stock_assets.build,
    "shipping_labels": shipping_labels_assets.build,
    "shipments": shipments_assets.build,
}
# The asset of each type that writes to the target system: it carries the checks that show what needs a person.
WRITER_ASSETS: dict[str, str] = {
    "products": "pulpo_products",
    "sales_orders": SALES_ORDERS_WRITER,
    "status_updates": STATUS_WRITER,
    "stock": stock_assets.WRITER,
    "shipping_labels": LABELS_WRITER,
    "shipments": SHIPMENTS_WRITER,
}


def build_resources(config: IntegrationConfig, home: Path) -> dict[str, dg.ConfigurableResource]:
    resources: dict[str, dg.ConfigurableResource] = {
        resource_key(c): resource_for(c, home) for c in config.credentials
    }
    resources[STATE_STORE_KEY] = StateStoreResource(home=str(home))
    return resources


def build_definitions(config: IntegrationConfig, home: Path) -> dg.Definitions:
    """All integrations of `config` as one code location. Runs execute in process: the PULPO token
    and the DuckDB state store are shared per run, and a step per process would only add cost."""
    config = with_go_live(config, home)  # sales orders: hourly partitions from go-live (point of `go_live.py`)
    flows = [flow_for(i, config) for i in config.integrations]
    writers = {flow.slug: writer_key(flow) for flow in flows}
    return dg.Definitions.merge(
        *(integration_definitions(flow) for flow in flows),
        alert_definitions(config, writers),
        dg.Definitions(resources=build_resources(config, home), executor=dg.in_process_executor),
    )


def writer_key(flow: Flow) -> dg.AssetKey:
    return flow.key(WRITER_ASSETS[flow.integration.type])


def integration_definitions(flow: Flow) -> dg.Definitions:
    """One integration's group: its flow's definitions, the checks of what needs a person on its writer,
    and its config name on every asset (the group itself can only carry the slug)."""
    defs = FLOW_BUILDERS[flow.integration.type](flow)
    assets = [asset if isinstance(asset, dg.AssetChecksDefinition)   # checks have no spec to name
              else asset.map_asset_specs(lambda spec: with_integration_metadata(spec, flow))
              for asset in defs.assets or []]
    return dg.Definitions(assets=[*assets, attention_checks(flow, writer_key(flow))], jobs=defs.jobs,
                          schedules=defs.schedules, sensors=defs.sensors)
