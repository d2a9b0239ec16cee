"""Issue 11, points 1, 2 and 11: no order lost whatever Billbee does with the date filter (range guard,
zone detection, state sweep), the go-live backlog, and hourly partitions that start at go-live.

Pure rules (the zones, DST, the go-live marker) are plain unit tests; the rest goes over HTTP against the
session sandboxes, through `billbee-pulpo sync`'s code (`operations.run_sync`) and `dg.materialize`.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import requests

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient
from billbee_pulpo_pipeline.clients.billbee.filter_zone import (
    SentRange,
    check_range,
    send_high,
    send_low,
    wall_readings,
)
from billbee_pulpo_pipeline.config import ConfigError, load_config
from billbee_pulpo_pipeline.defs.common import flow_for, mapping_kind
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.defs.filter_zone import detected_zone
from billbee_pulpo_pipeline.defs.sales_orders.go_live import go_live, marker_path, with_go_live
from billbee_pulpo_pipeline.defs.sales_orders.sweep import SWEEP, sweep_due
from billbee_pulpo_pipeline.defs.sales_orders.windows import OVERLAP, floor_hour
from billbee_pulpo_pipeline.operations import run_sync
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.state import StateStore

GROUP = "verkaufsauftraege"
ORDERS_KEY = dg.AssetKey([GROUP, "billbee_orders"])
SWEEP_KEY = dg.AssetKey([GROUP, SWEEP])
PAID = 3
ORDER_ID_BASE = 30_000_000_000_000_000
BERLIN = ZoneInfo("Europe/Berlin")
CREATES = ("POST /api/v1/sales/bulk/orders", "POST /api/v1/sales/orders")

CONFIG = """
credentials:
  - {name: billbee-shop, type: billbee, base_url: "${BILLBEE_BASE_URL}", username: "${BILLBEE_USERNAME}",
     api_password: "${BILLBEE_API_PASSWORD}", api_key: "${BILLBEE_API_KEY}"}
  - {name: pulpo-wms, type: pulpo, base_url: "${PULPO_BASE_URL}", username: "${PULPO_USERNAME}",
     password: "${PULPO_PASSWORD}", warehouse_id: 1}
integrations:
  - {name: Verkaufsaufträge, type: sales_orders, source: billbee-shop, target: pulpo-wms,
     import_states: [Bezahlt], cancel_states: [Storniert], %(settings)s}
"""


# ---- pure rules: zones and daylight saving ---------------------------------------------------------


def test_a_range_read_an_hour_early_is_recognised_as_berlin_wall_time_in_winter_and_summer():
    for moment, offset in ((datetime(2026, 12, 7, 10, tzinfo=UTC), "-01:00"),
                           (datetime(2026, 7, 7, 10, tzinfo=UTC), "-02:00")):
        sent = SentRange.of(moment, moment + timedelta(hours=1), "UTC")
        shift = -BERLIN.utcoffset(moment.replace(tzinfo=None))
        # what a server reading the UTC wall time as Berlin local time returns: the range shifted earlier
        guard = check_range(sent, [("1", moment + shift + timedelta(minutes=30)), ("2", moment + shift)])
        assert not guard.ok and guard.detected_zone == "Europe/Berlin" and guard.offset_observed == offset
        assert [key for key, _ in guard.outside] == ["1", "2"]
        assert check_range(sent, [("1", moment + timedelta(seconds=0.5)), ("2", moment + timedelta(hours=1))]).ok
    # bounds sent as Berlin wall time to a server that reads them as UTC: the range lies later
    winter = datetime(2026, 12, 7, 10, tzinfo=UTC)
    sent = SentRange.of(winter, winter + timedelta(hours=1), "Europe/Berlin")
    guard = check_range(sent, [("1", winter + timedelta(hours=1, minutes=20))])
    assert guard.detected_zone == "UTC" and guard.offset_observed == "+01:00"
    # an order far outside any reading: reported, but no zone is guessed
    guard = check_range(sent, [("1", winter + timedelta(hours=5))])
    assert not guard.ok and guard.detected_zone is None and guard.offset_observed == "unknown"


@pytest.mark.parametrize("day", [date(2026, 3, 29), date(2026, 10, 25)])
def test_bounds_in_berlin_time_cover_the_range_asked_for_across_both_dst_changes_however_billbee_reads_them(day):
    """Every minute of the DST days: a lower bound is never read later, an upper bound never earlier than
    asked for, whichever occurrence of a repeated autumn wall time a server picks; an honouring server gets
    the exact instant except inside the repeated hour (where the bound moves one hour out)."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=2)
    for minute in range(0, 6 * 60, 5):
        moment = start + timedelta(minutes=minute)
        low, high = send_low(moment, "Europe/Berlin"), send_high(moment, "Europe/Berlin")
        assert max(wall_readings(low, "Europe/Berlin")) <= moment <= min(wall_readings(high, "Europe/Berlin"))
        assert moment - timedelta(hours=1) <= low.astimezone(UTC) <= moment <= high.astimezone(UTC)
        assert high.astimezone(UTC) <= moment + timedelta(hours=1)
        repeated = wall_readings(moment.astimezone(BERLIN), "Europe/Berlin")
        if repeated[0] == repeated[1]:
            assert low.astimezone(UTC) == moment == high.astimezone(UTC)
        assert send_low(moment, "UTC") == moment == send_high(moment, "UTC")


# ---- pure rules: go-live -----------------------------------------------------------------------------


def test_go_live_marker_is_written_once_at_the_first_load_and_an_older_install_keeps_its_windows(tmp_path):
    now = datetime(2026, 12, 7, 10, 42, tzinfo=UTC)
    assert go_live(tmp_path / "new", "orders", create=False) is None
    assert go_live(tmp_path / "new", "orders", now=now) == datetime(2026, 12, 7, 9, tzinfo=UTC)  # the hour before
    assert go_live(tmp_path / "new", "orders", now=now + timedelta(days=3)) == datetime(2026, 12, 7, 9, tzinfo=UTC)
    assert marker_path(tmp_path / "new", "orders").read_text().startswith("2026-12-07T09:00:00+00:00")
    StateStore(tmp_path / "old").set_cursor("x", "1")  # an install from before markers existed
    assert go_live(tmp_path / "old", "orders", now=now) == datetime(2026, 11, 1, tzinfo=UTC)


def test_partitions_start_at_go_live_and_the_first_hour_has_no_gap_to_fill(sandbox, bpp_env, tmp_path):
    home = Path(bpp_env["BPP_HOME"])
    config = load_config(write_config(tmp_path))
    defs = build_definitions(config, home)
    hour = floor_hour(datetime.now(UTC))
    partitions = defs.resolve_assets_def(ORDERS_KEY).partitions_def
    assert partitions.start.astimezone(UTC) in (hour - timedelta(hours=1), hour - timedelta(hours=2))
    assert len(partitions.get_partition_keys()) <= 3  # not hundreds of never-read hours
    with dg.instance_for_test() as instance:  # the gap filler asks for the go-live hour at most, nothing before
        context = dg.build_sensor_context(instance=instance, definitions=defs)
        tick = defs.resolve_sensor_def(f"{GROUP}_gap_filler").evaluate_tick(context)
        assert {r.partition_key for r in tick.run_requests or []} <= {partitions.start.strftime("%Y-%m-%d-%H:00")}
    schedule = defs.resolve_schedule_def(f"{GROUP}_schedule")
    requests_ = schedule(dg.build_schedule_context(scheduled_execution_time=partitions.start + timedelta(minutes=10)))
    assert [r.partition_key for r in requests_] == [partitions.start.strftime("%Y-%m-%d-%H:00")]
    # an explicit start_date wins over the marker; the same marker is seen by every later load
    explicit = load_config(write_config(tmp_path, start_date="2026-01-05"))
    assert with_go_live(explicit, home).integrations[0].settings.start_date == datetime(2026, 1, 5, tzinfo=UTC)
    again = build_definitions(config, home).resolve_assets_def(ORDERS_KEY).partitions_def
    assert again.start == partitions.start


# ---- helpers over HTTP ---------------------------------------------------------------------------


def write_config(tmp_path: Path, **settings: Any) -> Path:
    path = tmp_path / "integrations.yaml"
    text = ", ".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in settings.items())
    path.write_text(CONFIG % {"settings": text or "interval_minutes: 10"})
    return path


class Shop:
    """The merchant's Billbee, as the simulated shop (never throttled, never counted as ours)."""

    def __init__(self, sandbox) -> None:
        self.url = sandbox.billbee_url
        self.session = requests.Session()
        self.session.auth = (credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD)
        self.session.headers.update({"X-Billbee-Api-Key": credentials.BILLBEE_API_KEY,
                                     **credentials.SIMULATOR_HEADERS})

    def paid_order(self, sku: str = "SKU-0000001") -> str:
        address = {"FirstName": "Erika", "LastName": "Mustermann", "Street": "Hauptstraße", "HouseNumber": "5",
                   "Zip": "10115", "City": "Berlin", "CountryISO2": "DE"}
        body = {"CreatedAt": datetime.now(UTC).isoformat(), "State": PAID, "ShippingAddress": address,
                "InvoiceAddress": address, "OrderItems": [{"Product": {"SKU": sku}, "Quantity": 1}]}
        response = self.session.post(f"{self.url}/orders", json=body, timeout=30)
        response.raise_for_status()
        return str(response.json()["Data"]["BillBeeOrderId"])

    def orders(self, **params: Any) -> list[dict[str, Any]]:
        out, page = [], 1
        while True:
            body = self.session.get(f"{self.url}/orders", params={**params, "page": page, "pageSize": 250},
                                    timeout=30).json()
            out += body["Data"]
            if page >= body["Paging"]["TotalPages"]:
                return out
            page += 1


def latest(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None) -> dict[str, Any]:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
        limit=1, ascending=False).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def latest_check(instance: dg.DagsterInstance, key: dg.AssetKey, name: str) -> Any:
    record = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(key, name))
    return record.event.dagster_event.event_specific_data


def in_pulpo(store: StateStore, flow, ids: list[str]) -> set[str]:
    return set(store.get_mappings(mapping_kind("order", flow), ids))


def pulpo_external_numbers(sandbox) -> list[str]:
    session = requests.Session()
    session.headers.update(credentials.SIMULATOR_HEADERS)
    token = session.post(f"{sandbox.pulpo_url}/auth", json={
        "grant_type": "password", "username": credentials.PULPO_USERNAME,
        "password": credentials.PULPO_PASSWORD, "scope": "general"}, timeout=30).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    numbers, offset = [], 0
    while True:
        body = session.get(f"{sandbox.pulpo_url}/sales/orders", params={"limit": 100, "offset": offset},
                           timeout=30).json()
        rows = body.get("sales_orders") or body.get("data") or []
        numbers += [str(r.get("external_order_num")) for r in rows]
        if len(rows) < 100:
            return numbers
        offset += 100


# ---- point 1: Billbee reads the date filters as Berlin wall time ---------------------------------------


def test_no_paid_order_is_lost_when_billbee_reads_the_date_filters_as_berlin_local_time(sandbox, bpp_env,
                                                                                         tmp_path):
    """The sandbox reads modifiedAtMin/Max as Europe/Berlin wall time and ignores the offset. A window whose
    shifted range holds no order cannot show it: the sweep recovers what it missed. A window whose shifted
    range holds one is caught by the guard, which detects the zone, keeps it and reads the window again;
    later reads are right. Syncs succeed throughout, and every paid order ends up in PULPO once."""
    sandbox.reset("billbee", orders=100)  # the newest historic order changed ~7 h ago: recent hours are quiet
    sandbox.reset("pulpo", products=300, stock=True)
    home = Path(bpp_env["BPP_HOME"])
    start = floor_hour(datetime.now(UTC)) - timedelta(days=2)
    config = load_config(write_config(tmp_path, lookback_hours=2, start_date=start.isoformat()))
    flow = flow_for(config.integrations[0], config)
    store, shop = StateStore(home), Shop(sandbox)
    sandbox.set_config("billbee", filter_dates_as="Europe/Berlin")
    try:
        with dg.instance_for_test() as instance:
            # go-live: the backlog by state (no date filter involved), the quiet windows read "correctly"
            assert all(s.status == "success" for s in run_sync(config, home, instance=instance))
            first = latest(instance, SWEEP_KEY)
            assert first["mode"].startswith("backlog") and first["sweep_recovered"] == 0 and first["backlog"] > 0

            # paid now; the current window asks Billbee for (hour, now] and gets (hour - 1 h, now - 1 h]: empty.
            # The sync runs once the re-read overlap has passed, so the window's watermark vouches for them.
            missed = [shop.paid_order(), shop.paid_order()]
            time.sleep(OVERLAP.total_seconds() + 3)
            assert all(s.status == "success" for s in run_sync(config, home, instance=instance))
            assert not in_pulpo(store, flow, missed)  # the cursor moved past them
            assert not sweep_due(store, flow)
            just_paid = shop.paid_order()  # no window read it yet: the sweep imports it, but it is no miss

            # the sweep (every sweep_minutes; here at once) finds them and imports them
            defs = build_definitions(config, home)
            result = dg.materialize(list(defs.assets), selection=[SWEEP_KEY], instance=instance,
                                    resources=build_resources(config, home))
            assert result.success
            swept = latest(instance, SWEEP_KEY)
            assert swept["sweep_recovered"] == 2 and swept["mode"].startswith("changed in the last 14 days")
            check = latest_check(instance, SWEEP_KEY, "no_orders_missed_by_cursor")
            assert not check.passed and check.metadata["sweep_recovered"].value == 2
            assert all(key in check.metadata["recovered_preview"].value for key in missed)
            assert just_paid not in check.metadata["recovered_preview"].value
            assert in_pulpo(store, flow, [*missed, just_paid]) == {*missed, just_paid}

            # a window whose shifted range holds an order: the guard notices, detects Berlin, reads again
            newest = BillbeeClient(sandbox.billbee_url, credentials.BILLBEE_USERNAME,
                                   credentials.BILLBEE_API_PASSWORD, credentials.BILLBEE_API_KEY,
                                   pacer_dir=home / "pacing").get_order(ORDER_ID_BASE + 99)
            window = floor_hour(newest.LastModifiedAt) + timedelta(hours=1)
            key = window.strftime("%Y-%m-%d-%H:00")
            result = dg.materialize(list(defs.assets), selection=dg.AssetSelection.groups(GROUP), instance=instance,
                                    resources=build_resources(config, home), partition_key=key)
            assert result.success  # a warning, never a failed sync
            meta = latest(instance, ORDERS_KEY, key)
            shift = BERLIN.utcoffset(window.replace(tzinfo=None))
            assert meta["out_of_range"] >= 1
            assert meta["filter_offset_observed"] == f"-{int(shift.seconds // 3600):02d}:00"
            assert meta["filter_timezone_adapted"] == "UTC -> Europe/Berlin"
            assert meta["filter_timezone"] == "Europe/Berlin"
            assert meta["complete"] is True  # the read in the detected zone matched its range
            check = latest_check(instance, ORDERS_KEY, "billbee_date_filter_matches")
            assert not check.passed and str(ORDER_ID_BASE + 99) in check.metadata["out_of_range_preview"].value
            assert detected_zone(store, "billbee_shop")["zone"] == "Europe/Berlin"
            logs = [e.message for e in instance.all_logs(result.run_id) if e.level >= 30]
            assert any("outside the range asked for" in m for m in logs)

            # from now on every read sends Berlin time: a new paid order comes through the next window
            late = shop.paid_order()
            assert all(s.status == "success" for s in run_sync(config, home, instance=instance))
            assert in_pulpo(store, flow, [late]) == {late}
            assert latest_check(instance, ORDERS_KEY, "billbee_date_filter_matches").passed
    finally:
        sandbox.set_config("billbee", filter_dates_as=None)

    paid = [str(o["BillBeeOrderId"]) for o in shop.orders(orderStateId=PAID)]
    quarantined = {q.record_key for q in store.quarantine_list(GROUP, kind="order")}
    assert sorted(set(paid) - in_pulpo(store, flow, paid) - quarantined) == []
    numbers = pulpo_external_numbers(sandbox)
    assert len(numbers) == len(set(numbers))


# ---- point 2: go-live imports the backlog ---------------------------------------------------------------


def test_go_live_imports_every_paid_order_however_old_except_before_import_since_after_a_dry_run(sandbox, bpp_env,
                                                                                                 tmp_path):
    sandbox.reset("billbee", orders=400, history_days=60)  # paid stragglers up to ~2 months old
    sandbox.reset("pulpo", products=300, stock=True)
    shop = Shop(sandbox)
    paid = shop.orders(orderStateId=PAID)
    created = sorted(datetime.fromisoformat(o["CreatedAt"]).date() for o in paid)
    import_since = created[len(created) // 4] + timedelta(days=1)
    wanted = [str(o["BillBeeOrderId"]) for o in paid if datetime.fromisoformat(o["CreatedAt"]).date() >= import_since]
    before = [o for o in paid if datetime.fromisoformat(o["CreatedAt"]).date() < import_since]
    old = [o for o in paid if str(o["BillBeeOrderId"]) in wanted
           and datetime.fromisoformat(o["LastModifiedAt"]) < datetime.now(UTC) - timedelta(days=3)]
    assert wanted and before and old  # the backlog holds orders far older than lookback_hours
    home = Path(bpp_env["BPP_HOME"])
    config = load_config(write_config(tmp_path, import_since=import_since.isoformat()))
    flow = flow_for(config.integrations[0], config)
    store = StateStore(home)

    with dg.instance_for_test() as instance:
        defs = build_definitions(config, home)
        creates = sum(sandbox.stats("pulpo")["requests"].get(e, 0) for e in CREATES)
        dry = dg.materialize(list(defs.assets), selection=[SWEEP_KEY], instance=instance,
                             resources=build_resources(config, home),
                             run_config={"ops": {f"{GROUP}__state_sweep": {"config": {"dry_run": True}}}})
        assert dry.success
        plan = latest(instance, SWEEP_KEY)
        assert plan["dry_run"] is True and plan["backlog"] == len(wanted) and "would create" in plan["plan"]
        assert sum(sandbox.stats("pulpo")["requests"].get(e, 0) for e in CREATES) == creates  # nothing written
        assert sweep_due(store, flow)  # the dry run did not count as the go-live sweep

        summaries = run_sync(config, home, instance=instance)
        assert all(s.status == "success" for s in summaries)
        done = latest(instance, SWEEP_KEY)
        assert done["mode"].startswith("backlog") and done["since"] == "any time" and done["sweep_recovered"] == 0
        quarantined = {q.record_key: q.reason for q in store.quarantine_list(GROUP, kind="order")}
        assert sorted(set(wanted) - in_pulpo(store, flow, wanted) - set(quarantined)) == []
        assert all(quarantined[k] for k in set(wanted) & set(quarantined))
        assert not in_pulpo(store, flow, [str(o["BillBeeOrderId"]) for o in before])

        # an order created before import_since that changes now reaches a window: left alone, with a reason
        excluded = str(before[0]["BillBeeOrderId"])
        sandbox.control("POST", "billbee", f"orders/{excluded}/touch")
        assert all(s.status == "success" for s in run_sync(config, home, instance=instance))
        assert not in_pulpo(store, flow, [excluded])
        outcome = json.loads(store.snapshot_rows(f"{GROUP}.pulpo_orders_processed", [excluded])[excluded])
        assert outcome["result"] == "skipped" and "before import_since" in outcome["reason"]
        sweeps = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=SWEEP_KEY), limit=10).records
        assert len(sweeps) == 2  # the dry run and the go-live sweep; the later sync did not sweep again


# ---- the sweep's automation and the sandbox knob ----------------------------------------------------


def test_the_sweep_sensor_runs_at_go_live_then_waits_sweep_minutes(bpp_env, tmp_path):
    config = load_config(write_config(tmp_path, sweep_minutes=60))
    defs = build_definitions(config, Path(bpp_env["BPP_HOME"]))
    sensor = defs.resolve_sensor_def(f"{GROUP}_state_sweep")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    with dg.instance_for_test() as instance:
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        [request] = first.run_requests  # never swept: the go-live backlog at once
        assert request.run_key.startswith("sweep:") and request.tags["bpp/trigger"] == "state_sweep"
        assert defs.resolve_job_def(f"{GROUP}_sweep_job").asset_layer.selected_asset_keys == {SWEEP_KEY}
        instance.report_runless_asset_event(dg.AssetMaterialization(SWEEP_KEY))
        later = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        assert not later.run_requests and "next after 60 min" in later.skip_message
    # the window job never includes the sweep (a partitioned run of the group stays a window run)
    assert SWEEP_KEY not in defs.resolve_job_def(f"{GROUP}_job").asset_layer.selected_asset_keys
    with pytest.raises(ConfigError, match="whole hours"):
        load_config(write_config(tmp_path, sweep_minutes=90))


def test_the_sandbox_reads_date_filters_as_berlin_wall_time_only_when_told(tmp_path):
    from billbee_pulpo_pipeline.sandboxes.runner import SandboxProcess

    with SandboxProcess(products=10, orders=696, throttle=False, filter_dates_as="Europe/Berlin") as box:
        assert box.set_config("billbee")["filter_dates_as"] == "Europe/Berlin"
        client = BillbeeClient(box.billbee_url, credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD,
                               credentials.BILLBEE_API_KEY, rate_per_endpoint=0, rate_per_user=0)
        newest = client.get_order(ORDER_ID_BASE + 695).LastModifiedAt  # one historic order per hour
        low, high = newest - timedelta(minutes=30), newest + timedelta(minutes=30)
        shift = BERLIN.utcoffset(newest.replace(tzinfo=None))
        asked_in_utc = [o.BillBeeOrderId for o in client.iter_orders(modified_at_min=low, modified_at_max=high)]
        assert asked_in_utc == [ORDER_ID_BASE + 695 - int(shift.total_seconds() // 3600)]  # an hour (or two) early
        client.filter_timezone = "Europe/Berlin"
        assert [o.BillBeeOrderId for o in client.iter_orders(modified_at_min=low, modified_at_max=high)] == [
            ORDER_ID_BASE + 695]
        assert box.set_config("billbee", filter_dates_as=None)["filter_dates_as"] is None
        client.filter_timezone = "UTC"
        assert [o.BillBeeOrderId for o in client.iter_orders(modified_at_min=low, modified_at_max=high)] == [
            ORDER_ID_BASE + 695]
        with pytest.raises(requests.HTTPError):
            box.set_config("billbee", filter_dates_as="America/New_York")
