"""Definitions built from the integration config: one asset group per configured integration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg

from billbee_pulpo_pipeline.config import IntegrationConfig
from billbee_pulpo_pipeline.defs import sales_orders
from billbee_pulpo_pipeline.defs.common import STATE_STORE_KEY, Flow, flow_for
from billbee_pulpo_pipeline.defs.products import assets as products_assets
from billbee_pulpo_pipeline.defs.resources import StateStoreResource, resource_for, resource_key
from billbee_pulpo_pipeline.defs.shipments import assets as shipments_assets
from billbee_pulpo_pipeline.defs.shipping_labels import assets as shipping_labels_assets
from billbee_pulpo_pipeline.defs.status_updates import assets as status_updates_assets
from billbee_pulpo_pipeline.defs.stock import assets as stock_assets

FLOW_BUILDERS: dict[str, Callable[[Flow], dg.Definitions]] = {
    "products": products_assets.build,
    "sales_orders": sales_orders.build,
    "status_updates": status_updates_assets.build,
    "stock": stock_assets.build,
    "shipping_labels": shipping_labels_assets.build,
    "shipments": shipments_assets.build,
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
    parts = [FLOW_BUILDERS[i.type](flow_for(i, config)) for i in config.integrations]
    return dg.Definitions.merge(
        *parts,
        dg.Definitions(resources=build_resources(config, home), executor=dg.in_process_executor),
    )
