"""What the Dagster UI shows: one group per integration carrying its config name, the same numeric series
on every materialization (so the "Plots" tab has them for every asset), and the WARN checks
`no_quarantined_records` / `no_writes_need_attention` on each writer, with the right counts after real
runs against the sandboxes (through `billbee-pulpo sync` and through `dg.materialize`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.attention import ATTENTION_CHECK, QUARANTINE_CHECK
from billbee_pulpo_pipeline.defs.common import UI_COUNTS, ui_metadata
from billbee_pulpo_pipeline.defs.factory import WRITER_ASSETS, build_definitions, build_resources
from billbee_pulpo_pipeline.sandboxes.pulpo.warehouse import WarehouseSimulator
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT
from billbee_pulpo_pipeline_tests.test_orders_writing import CANCELLED, KNOWN, UNKNOWN, Shop, fresh_world, hour_key

FAKE_ENV = {"BILLBEE_USERNAME": "user@example.com", "BILLBEE_API_PASSWORD": "pw-123456", "BILLBEE_API_KEY": "k-123456",
            "PULPO_USERNAME": "tenant_api", "PULPO_PASSWORD": "pw-789012"}
ORDERS = "verkaufsauftraege"
SHIPMENTS = {"name": "Erzeuge Sendungen", "type": "shipments", "source": "pulpo-wms", "target": "billbee-shop"}


def six_flows_config(tmp_path: Path) -> Path:
    """The example config with shipments instead of labels (the two may not share one pair): with the
    example itself, every integration type."""
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    data["integrations"] = [i for i in data["integrations"] if i["type"] != "shipping_labels"] + [SHIPMENTS]
    path = tmp_path / "shipments.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def values(metadata: dict[str, dg.MetadataValue]) -> dict[str, Any]:
    return {key: value.value for key, value in metadata.items()}


# ---- definitions (no network) --------------------------------------------------------------------


def test_each_integration_is_one_group_whose_assets_carry_its_config_name(tmp_path):
    for path in (EXAMPLE_CONFIG, six_flows_config(tmp_path)):
        config = load_config(path, env=FAKE_ENV)
        defs = build_definitions(config, tmp_path)
        dg.Definitions.validate_loadable(defs)
        names = {i.slug: i.name for i in config.integrations}
        names |= {f"{i.slug}_sweep": i.name for i in config.integrations if i.type == "sales_orders"}
        for spec in defs.resolve_all_asset_specs():
            assert spec.group_name in names, spec.key
            assert spec.metadata["integration"] == names[spec.group_name]      # "Verkaufsaufträge", not the slug
            assert spec.description and spec.kinds, spec.key
        graph = defs.resolve_asset_graph()
        for integration in config.integrations:
            writer = dg.AssetKey([integration.slug, WRITER_ASSETS[integration.type]])
            checks = {key.name: graph.get_check_spec(key) for key in graph.get_check_keys_for_assets({writer})}
            assert {QUARANTINE_CHECK, ATTENTION_CHECK} <= set(checks), integration.name
            assert not checks[QUARANTINE_CHECK].blocking and not checks[ATTENTION_CHECK].blocking
            job_checks = defs.resolve_job_def(f"{integration.slug}_job").asset_layer.asset_graph.asset_check_keys
            assert dg.AssetCheckKey(writer, QUARANTINE_CHECK) in job_checks      # they run with every job run


def test_ui_metadata_fills_missing_series_with_zero_and_refuses_non_counts():
    filled = ui_metadata({"records_read": dg.MetadataValue.int(7), "cursor": dg.MetadataValue.text("x")})
    series = {k: v.value for k, v in filled.items() if k in UI_COUNTS}
    assert series == {**dict.fromkeys(UI_COUNTS, 0), "records_read": 7}
    assert filled["cursor"].value == "x"
    try:
        ui_metadata({"quarantined": dg.MetadataValue.text("3")})
    except TypeError as exc:
        assert "quarantined" in str(exc)
    else:
        raise AssertionError("a text count must be refused: it would not plot")


# ---- real runs ------------------------------------------------------------------------------------


def test_every_materialization_of_a_cli_sync_has_numeric_series(bpp_env, tmp_path, monkeypatch):
    """`billbee-pulpo sync` (all integrations) with a persistent DAGSTER_HOME, as the demo runs it; then the
    instance's event log, as the UI reads it."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = {**bpp_env, "DAGSTER_HOME": str(dagster_home)}
    result = subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "--json"], env=env,
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    config = load_config(EXAMPLE_CONFIG)
    defs = build_definitions(config, Path(bpp_env["BPP_HOME"]))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.get() as instance:
        keys = [spec.key for spec in defs.resolve_all_asset_specs()]
        assert len(keys) == 11  # the ten flow assets and the sales orders' state sweep (issue 11)
        for key in keys:
            event = instance.get_latest_materialization_event(key)
            assert event is not None, key
            metadata = event.asset_materialization.metadata
            for name in UI_COUNTS:
                assert isinstance(metadata[name], dg.IntMetadataValue), (key, name)
        snapshot = values(instance.get_latest_materialization_event(
            dg.AssetKey(["produkte", "billbee_products"])).asset_materialization.metadata)
        writer = values(instance.get_latest_materialization_event(
            dg.AssetKey(["produkte", "pulpo_products"])).asset_materialization.metadata)
        assert snapshot["billbee_calls"] >= 1 and snapshot["pulpo_calls"] == 0 and snapshot["records_read"] > 0
        assert writer["pulpo_calls"] >= 1 and writer["billbee_calls"] == 0

        # The seeded catalogue has products without SKU: the products writer's quarantine check warns with the
        # store's count; nothing needed attention anywhere.
        open_products = StateStore(Path(bpp_env["BPP_HOME"])).quarantine_overview("produkte")[0]
        assert open_products > 0
        for integration in config.integrations:
            writer_key = dg.AssetKey([integration.slug, WRITER_ASSETS[integration.type]])
            quarantine, attention = (
                instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(writer_key, name))
                .event.dagster_event.event_specific_data for name in (QUARANTINE_CHECK, ATTENTION_CHECK))
            assert attention.passed, integration.name
            if integration.slug == "produkte":
                assert not quarantine.passed and quarantine.severity == dg.AssetCheckSeverity.WARN
                assert quarantine.metadata["quarantined"].value == open_products


def test_shipments_materializations_have_numeric_series(bpp_env, tmp_path):
    config = load_config(six_flows_config(tmp_path))
    home = Path(bpp_env["BPP_HOME"])
    result = dg.materialize(list(build_definitions(config, home).assets), resources=build_resources(config, home),
                            selection=dg.AssetSelection.groups("erzeuge_sendungen"))
    assert result.success
    events = result.get_asset_materialization_events()
    assert {e.asset_key.path[-1] for e in events} == {"pulpo_finished_packing_orders", "billbee_shipments"}
    for event in events:
        metadata = event.materialization.metadata
        assert all(isinstance(metadata[name], dg.IntMetadataValue) for name in UI_COUNTS), event.asset_key
    assert set(check_evaluations(result)) >= {QUARANTINE_CHECK, ATTENTION_CHECK}


def sync_orders(home: Path, shop: Shop) -> dg.ExecuteInProcessResult:
    config = load_config(EXAMPLE_CONFIG)
    result = None
    for partition in sorted(shop.touched or {hour_key()}):
        result = dg.materialize(list(build_definitions(config, home).assets), resources=build_resources(config, home),
                                selection=dg.AssetSelection.groups(ORDERS), partition_key=partition)
        assert result.success     # WARN checks never fail a run
    shop.touched = set()
    assert result is not None
    return result


def test_quarantine_and_refused_cancel_show_as_warning_checks(sandbox, bpp_env):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop = Shop(sandbox)
    shipped = shop.order([(KNOWN[0], 1)], number="U-1")
    waiting = shop.order([(UNKNOWN, 2)], number="U-2")              # PULPO does not know the product
    shop.order([(KNOWN[1], 1.5)], number="U-3")                    # PULPO counts whole units

    first = check_evaluations(sync_orders(home, shop))
    quarantine = first[QUARANTINE_CHECK]
    assert not quarantine.passed and quarantine.severity == dg.AssetCheckSeverity.WARN
    assert values(quarantine.metadata)["quarantined"] == 2 and values(quarantine.metadata)["quarantined_order"] == 2
    assert f"waiting for product {UNKNOWN}" in quarantine.metadata["reasons"].value
    assert waiting in quarantine.metadata["reasons"].value
    assert first[ATTENTION_CHECK].passed and values(first[ATTENTION_CHECK].metadata)["attention"] == 0

    warehouse = WarehouseSimulator(sandbox.pulpo_url)
    warehouse.ship_all()
    warehouse.close()
    shop.set_state(shipped, CANCELLED)                              # too late: PULPO has shipped it
    second = check_evaluations(sync_orders(home, shop))
    attention = second[ATTENTION_CHECK]
    assert not attention.passed and attention.severity == dg.AssetCheckSeverity.WARN
    assert values(attention.metadata)["attention"] == 1
    assert f"order:cancel:{shipped}" in attention.metadata["writes"].value
    assert "can not be cancelled" in attention.metadata["writes"].value
    assert values(second[QUARANTINE_CHECK].metadata)["quarantined"] == 2

    # "Execute checks" in the UI: the checks alone, after a person resolved one entry, show the store as it is.
    StateStore(home).quarantine_resolve_many(ORDERS, [waiting])
    writer = dg.AssetKey([ORDERS, "pulpo_sales_orders"])
    config = load_config(EXAMPLE_CONFIG)
    alone = dg.materialize(list(build_definitions(config, home).assets), resources=build_resources(config, home),
                           selection=dg.AssetSelection.checks(dg.AssetCheckKey(writer, QUARANTINE_CHECK)))
    assert alone.get_asset_materialization_events() == []
    assert set(check_evaluations(alone)) == {QUARANTINE_CHECK}
    assert values(check_evaluations(alone)[QUARANTINE_CHECK].metadata)["quarantined"] == 1
