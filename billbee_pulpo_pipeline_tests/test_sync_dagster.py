"""The read-side assets through Dagster's `materialize`, over HTTP against the sandboxes."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.sandboxes.catalog import NO_SKU_STRIDE
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, SANDBOX_PRODUCTS


def materialize_group(group: str, home: Path, **kwargs) -> dg.ExecuteInProcessResult:
    config = load_config(EXAMPLE_CONFIG)
    defs = build_definitions(config, home)
    return dg.materialize(list(defs.assets), selection=dg.AssetSelection.groups(group),
                          resources=build_resources(config, home), **kwargs)


def metadata_of(result: dg.ExecuteInProcessResult, asset: str | None = None) -> dict[str, object]:
    events = [e for e in result.get_asset_materialization_events()
              if asset is None or e.asset_key.path[-1] == asset]
    assert len(events) == 1, [e.asset_key for e in result.get_asset_materialization_events()]
    return {k: v.value for k, v in events[0].materialization.metadata.items()}


def test_product_snapshot_then_noop_resync(bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    first = materialize_group("produkte", home)
    assert first.success
    meta = metadata_of(first, "billbee_products")
    without_sku = SANDBOX_PRODUCTS // NO_SKU_STRIDE
    assert meta["total"] >= SANDBOX_PRODUCTS
    assert meta["quarantined"] >= without_sku
    assert meta["new"] == meta["total"] - meta["quarantined"]
    assert meta["billbee_calls"] >= 2
    assert meta["billbee_429"] == 0
    stored = StateStore(home).snapshot_keys("produkte.billbee_products")
    assert len(stored) == meta["new"]
    assert all(len(k) == 17 for k in stored)  # 17-digit Billbee ids kept exactly

    second = metadata_of(materialize_group("produkte", home), "billbee_products")
    assert second["new"] == 0 and second["changed"] == 0 and second["removed"] == 0
    assert second["unchanged"] == meta["new"]


def test_stock_snapshot_reads_the_configured_warehouse(bpp_env, sandbox):
    sandbox.reset("pulpo", products=120, stock=True)
    home = Path(bpp_env["BPP_HOME"])
    result = materialize_group("lagerbestand", home)
    assert result.success
    meta = metadata_of(result, "pulpo_stock")  # the group also holds the Billbee writer now
    assert meta["records_read"] > 0
    assert meta["pulpo_calls"] >= 2  # token + at least one page
