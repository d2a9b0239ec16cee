"""The Dagster code location built from the config: groups, keys, schedules, resources."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.common import interval_cron, on_interval
from billbee_pulpo_pipeline.defs.factory import build_definitions
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG

FAKE_ENV = {"BILLBEE_USERNAME": "user@example.com", "BILLBEE_API_PASSWORD": "pw-not-in-defs-123",
            "BILLBEE_API_KEY": "key-not-in-defs-456", "PULPO_USERNAME": "tenant_api", "PULPO_PASSWORD": "pw-789"}


def example_defs(tmp_path: Path) -> tuple[dg.Definitions, object]:
    config = load_config(EXAMPLE_CONFIG, env=FAKE_ENV)
    return build_definitions(config, tmp_path), config


def test_one_group_per_integration_named_after_it(tmp_path):
    defs, config = example_defs(tmp_path)
    dg.Definitions.validate_loadable(defs)
    groups = {spec.group_name for spec in defs.resolve_all_asset_specs()}
    # sales orders add their state sweep's own group, so a window run of the group never includes it
    assert groups == {i.slug for i in config.integrations} | {"verkaufsauftraege_sweep"}
    assert "verkaufsauftraege" in groups and "produkte" in groups


def test_every_asset_has_description_and_kinds(tmp_path):
    defs, _ = example_defs(tmp_path)
    specs = list(defs.resolve_all_asset_specs())
    assert specs
    for spec in specs:
        assert spec.description and len(spec.description) > 40, spec.key
        assert spec.kinds, spec.key


def test_schedules_run_by_default_at_configured_interval(tmp_path):
    defs, config = example_defs(tmp_path)
    for integration in config.integrations:
        schedule = defs.resolve_schedule_def(f"{integration.slug}_schedule")
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        assert schedule.cron_schedule == interval_cron(integration.interval_minutes)
    assert defs.resolve_schedule_def("produkte_schedule").cron_schedule == "0 * * * *"
    assert defs.resolve_schedule_def("verkaufsauftraege_schedule").cron_schedule == "*/10 * * * *"


def test_secrets_are_env_vars_not_values(tmp_path):
    defs, _ = example_defs(tmp_path)
    billbee = defs.resources["billbee_shop"]
    pulpo = defs.resources["pulpo_wms"]
    assert isinstance(billbee.api_password, dg.EnvVar) and billbee.api_password == "BILLBEE_API_PASSWORD"
    assert isinstance(billbee.api_key, dg.EnvVar)
    assert isinstance(pulpo.password, dg.EnvVar)
    snapshot = repr(defs.resources) + repr(defs.get_repository_def().get_all_jobs())
    for secret in ("pw-not-in-defs-123", "key-not-in-defs-456", "pw-789"):
        assert secret not in snapshot


def test_two_shops_and_two_warehouses_in_one_config(tmp_path):
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    config_file = tmp_path / "two.yaml"
    config_file.write_text(
        """credentials:
  - {name: shop-a, type: billbee, base_url: https://api.billbee.io/api/v1, username: a@example.com,
     api_password: "${BILLBEE_API_PASSWORD}", api_key: "${BILLBEE_API_KEY}"}
  - {name: shop-b, type: billbee, base_url: https://api.billbee.io/api/v1, username: b@example.com,
     api_password: "${BILLBEE_API_PASSWORD}", api_key: "${BILLBEE_API_KEY}"}
  - {name: lager-nord, type: pulpo, base_url: https://eu.pulpo.co/api/v1, username: t_api,
     password: "${PULPO_PASSWORD}", warehouse_id: 1}
  - {name: lager-süd, type: pulpo, base_url: https://eu.pulpo.co/api/v1, username: t_api,
     password: "${PULPO_PASSWORD}", warehouse_id: 2}
integrations:
  - {name: Produkte A, type: products, source: shop-a, target: lager-nord}
  - {name: Produkte B, type: products, source: shop-b, target: lager-süd}
  - {name: Aufträge A, type: sales_orders, source: shop-a, target: lager-nord}
  - {name: Aufträge B, type: sales_orders, source: shop-b, target: lager-süd}
  - {name: Bestand Süd, type: stock, source: lager-süd, target: shop-b}
""", encoding="utf-8")
    assert text  # the example stays the reference for the contract
    defs = build_definitions(load_config(config_file, env=FAKE_ENV), tmp_path)
    dg.Definitions.validate_loadable(defs)
    specs = list(defs.resolve_all_asset_specs())
    assert len({spec.key for spec in specs}) == len(specs)  # no two integrations share an asset key
    assert {spec.group_name for spec in specs} == {"produkte_a", "produkte_b", "auftraege_a", "auftraege_b",
                                                   "auftraege_a_sweep", "auftraege_b_sweep", "bestand_sued"}
    assert {"shop_a", "shop_b", "lager_nord", "lager_sued", "state_store"} <= set(defs.resources)


@pytest.mark.parametrize(("minutes", "cron"), [(1, "* * * * *"), (10, "*/10 * * * *"), (60, "0 * * * *"),
                                               (7, "* * * * *"), (45, "* * * * *")])
def test_interval_cron(minutes, cron):
    assert interval_cron(minutes) == cron


def test_non_divisor_interval_keeps_its_cadence_across_the_hour():
    should_run = on_interval(7)
    assert should_run is not None
    start = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    ticks = []
    for minute in range(0, 180):
        at = datetime.fromtimestamp(start.timestamp() + minute * 60, tz=UTC)
        if should_run(dg.build_schedule_context(scheduled_execution_time=at)):
            ticks.append(minute)
    gaps = {b - a for a, b in zip(ticks, ticks[1:], strict=False)}
    assert gaps == {7}
    assert on_interval(10) is None


def test_interval_out_of_range_is_refused():
    with pytest.raises(ValueError, match="1-60"):
        interval_cron(0)
