"""The status-updates flow (PULPO → Billbee) end to end over HTTP against the session sandboxes: Billbee
orders imported into PULPO by the sales-orders flow, packed by the simulated warehouse through PULPO's
API, then `pulpo_finished_packing_orders` → `billbee_order_states` → the Billbee sandbox.

Runs go through `dg.materialize` of the integration's group, the packing sensor is evaluated with
`dg.build_sensor_context` against the PULPO sandbox, and the crash test runs `billbee-pulpo sync` in a
subprocess that dies between Billbee's answer and the ledger record.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.common import flow_for, mapping_kind
from billbee_pulpo_pipeline.defs.crash import CRASH_ENV
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.defs.packing_events import PackingCursor
from billbee_pulpo_pipeline.defs.status_updates.writer import StatusWriter
from billbee_pulpo_pipeline.mapping.status import decide_state, status_ledger_key
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.sandboxes.pulpo.warehouse import WarehouseSimulator
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT
from billbee_pulpo_pipeline_tests.test_orders_writing import KNOWN, Shop, fresh_world
from billbee_pulpo_pipeline_tests.test_orders_writing import sync as sync_orders

GROUP = "status_updates"
WRITER_OP = f"{GROUP}__billbee_order_states"
ORDER_KIND = "order:billbee_shop:pulpo_wms"
PACKED, SHIPPED, CANCELLED, PAID = 13, 4, 8, 3


# ---- helpers (also used by test_shipments_flow) ----------------------------------------------------


class Warehouse:
    """PULPO as the warehouse staff and the label service see it: the simulator's identity, so these
    calls never count as the product's."""

    def __init__(self, sandbox) -> None:
        self.url = sandbox.pulpo_url
        self.session = requests.Session()
        self.session.headers.update(credentials.SIMULATOR_HEADERS)
        token = self.session.post(f"{self.url}/auth", json={
            "grant_type": "password", "username": credentials.PULPO_USERNAME,
            "password": credentials.PULPO_PASSWORD, "scope": "general"}, timeout=30).json()["access_token"]
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.simulator = WarehouseSimulator(sandbox.pulpo_url)

    def get(self, path: str, **params: Any) -> Any:
        response = self.session.get(f"{self.url}{path}", params={"limit": 100, **params}, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any) -> Any:
        response = self.session.post(f"{self.url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def pack_all(self) -> None:
        self.simulator.pack_all()

    def ship_all(self) -> None:
        self.simulator.ship_all()

    def packing_orders(self, sales_order_id: int | None = None) -> list[dict[str, Any]]:
        params = {"sales_order_id": sales_order_id} if sales_order_id else {}
        return self.get("/packing/orders", **params)["packing_orders"]

    def boxes(self, packing_order_id: int) -> list[dict[str, Any]]:
        return self.get(f"/packing/orders/{packing_order_id}/boxes")["packing_boxes"]

    def order_from_elsewhere(self, number: str) -> int:
        """A sales order another channel put into PULPO (no Billbee attributes)."""
        order = self.post("/sales/orders", {
            "order_num": number, "warehouse_id": 1, "items": [{"product_id": 5, "quantity": 1}],
            "ship_to": {"name": "Laden Kunde", "address": {"street": "Marktplatz 1", "zip": "10115", "city": "Berlin",
                                                           "country_alpha2": "DE"}}})
        return int(order["id"])


def billbee_order(sandbox, order_id: str) -> dict[str, Any]:
    """The order as Billbee has it (read as the simulator: unthrottled, not counted)."""
    response = requests.get(f"{sandbox.billbee_url}/orders/{order_id}", timeout=30,
                            auth=(credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD),
                            headers={"X-Billbee-Api-Key": credentials.BILLBEE_API_KEY, **credentials.SIMULATOR_HEADERS})
    response.raise_for_status()
    return response.json()["Data"]


def billbee_calls(sandbox) -> list[str]:
    """The product's Billbee requests since the last stats reset, oldest first: 'METHOD path'."""
    return [f"{r['method']} {r['path'].removeprefix('/api/v1')}" for r in sandbox.requests("billbee", limit=5000)
            if not r["simulator"]]


def config_with(tmp_path: Path, integrations: str) -> Path:
    """The example's credentials with other integrations."""
    head = EXAMPLE_CONFIG.read_text(encoding="utf-8").split("\nintegrations:", 1)[0]
    path = tmp_path / "integrations.yaml"
    path.write_text(f"{head}\nintegrations:\n{integrations}", encoding="utf-8")
    return path


def materialize(home: Path, group: str, config_path: Path = EXAMPLE_CONFIG, *, dry_run: bool = False,
                writer: str = "billbee_order_states") -> dg.ExecuteInProcessResult:
    config = load_config(config_path)
    defs = build_definitions(config, home)
    return dg.materialize(list(defs.assets), selection=dg.AssetSelection.groups(group),
                          resources=build_resources(config, home), raise_on_error=False,
                          run_config={"ops": {f"{group}__{writer}": {"config": {"dry_run": dry_run}}}})


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def ledger(home: Path, integration: str | None = None) -> dict[str, Any]:
    """Ledger entries by key (of one integration when given: the orders flow has its own there)."""
    return {e.key: e for e in StateStore(home).ledger_entries(integration)}


# ---- tests ---------------------------------------------------------------------------------------


def test_packed_orders_get_the_packed_state_once_and_later_states_are_left_alone(sandbox, bpp_env):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop, warehouse = Shop(sandbox), Warehouse(sandbox)
    packed = [shop.order([(KNOWN[0], 1)], number="S-1"), shop.order([(KNOWN[1], 2), (KNOWN[2], 1)], number="S-2"),
              shop.order([(KNOWN[2], 1)], number="S-3")]
    shipped_by_hand = shop.order([(KNOWN[0], 1)], number="S-4")
    cancelled_late = shop.order([(KNOWN[1], 1)], number="S-5")
    assert sync_orders(home, shop)["created"] == 5
    shop.set_state(shipped_by_hand, SHIPPED)          # the merchant shipped it himself
    shop.set_state(cancelled_late, CANCELLED)         # cancelled after PULPO had it (no orders sync since)
    warehouse.order_from_elsewhere("POS-1")
    warehouse.pack_all()
    assert len(warehouse.packing_orders()) == 6

    sandbox.reset_stats("billbee")
    plan = materialize(home, GROUP, dry_run=True)
    assert plan.success
    planned = metadata(plan, "billbee_order_states")
    assert planned["dry_run"] is True and planned["records_written"] == 0
    assert planned["plan"].count("would set Gepackt") == 3 and "protected" in planned["plan"]
    assert [c for c in billbee_calls(sandbox) if not c.startswith("GET")] == []
    assert ledger(home, GROUP) == {} and all(billbee_order(sandbox, i)["State"] == PAID for i in packed)

    sandbox.reset_stats("billbee")
    first = materialize(home, GROUP)
    assert first.success and check_results(first)["billbee_order_links_available"].passed
    written = metadata(first, "billbee_order_states")
    assert (written["set"], written["later"], written["protected"], written["not_from_billbee"]) == (3, 1, 1, 1)
    assert written["records_written"] == 3 and written["attention"] == 1 and written["quarantined"] == 0
    assert "Storniert" in written["attention_preview"] and "POS-1" in written["not_from_billbee_preview"]
    assert {i: billbee_order(sandbox, i)["State"] for i in [*packed, shipped_by_hand, cancelled_late]} == {
        **dict.fromkeys(packed, PACKED), shipped_by_hand: SHIPPED, cancelled_late: CANCELLED}
    calls = billbee_calls(sandbox)
    assert sorted(c for c in calls if c.startswith("PUT")) == sorted(f"PUT /orders/{i}/orderstate" for i in packed)
    assert len([c for c in calls if c.startswith("GET /orders/")]) == 5     # one read per Billbee order
    assert written["billbee_calls"] == 8 and written["billbee_429"] == 0
    entries = ledger(home)
    assert {entries[status_ledger_key(i, PACKED)].status for i in packed} == {"done"}
    assert entries[status_ledger_key(shipped_by_hand, PACKED)].status == "skipped"
    assert entries[status_ledger_key(cancelled_late, PACKED)].status == "attention"

    sandbox.reset_stats("billbee")
    again = materialize(home, GROUP)                                   # a rerun writes (and reads) nothing
    assert again.success and billbee_calls(sandbox) == []
    assert metadata(again, "billbee_order_states")["records_read"] == 0


def test_ended_state_and_an_order_link_written_late(sandbox, bpp_env, tmp_path):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    config = config_with(tmp_path, "  - {name: Status, type: status_updates, source: pulpo-wms, target: "
                                   "billbee-shop, packed_state: Gepackt, ended_state: Versendet}\n")
    shop, warehouse = Shop(sandbox), Warehouse(sandbox)
    early, late = shop.order([(KNOWN[0], 1)], number="L-1"), shop.order([(KNOWN[1], 1)], number="L-2")
    sync_orders(home, shop)
    store = StateStore(home)
    link = store.get_mapping(ORDER_KIND, late)
    assert store.delete_mapping(ORDER_KIND, late)                      # as if its sales run died before recording it
    warehouse.pack_all()

    first = metadata(materialize(home, "status", config), "billbee_order_states")
    assert first["set"] == 1 and first["waiting"] == 1 and first["not_from_billbee"] == 0
    assert f"waiting for the link of Billbee order {late}" in first["waiting_preview"]
    assert billbee_order(sandbox, early)["State"] == PACKED and billbee_order(sandbox, late)["State"] == PAID

    warehouse.ship_all()                                               # PULPO ends both sales orders
    store.put_mapping(ORDER_KIND, late, link.pulpo_id, link.extra)     # the next sales run adopts it
    sandbox.reset_stats("billbee")
    second = materialize(home, "status", config)
    assert second.success
    done = metadata(second, "billbee_order_states")
    assert done["set"] == 3 and done["waiting"] == 0                   # late: Gepackt and Versendet; early: Versendet
    assert billbee_order(sandbox, early)["State"] == SHIPPED and billbee_order(sandbox, late)["State"] == SHIPPED
    puts = [c for c in billbee_calls(sandbox) if c.startswith("PUT")]
    assert puts.count(f"PUT /orders/{late}/orderstate") == 2
    history = [h["Text"] for h in billbee_order(sandbox, late)["History"] if "Status" in (h.get("Text") or "")]
    assert history[-2:] == [f"Status von {PAID} auf {PACKED} geändert", f"Status von {PACKED} auf {SHIPPED} geändert"]
    assert metadata(materialize(home, "status", config), "billbee_order_states")["records_read"] == 0


def test_an_order_link_that_never_comes_is_given_up_after_two_hours(sandbox, bpp_env):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop, warehouse = Shop(sandbox), Warehouse(sandbox)
    linked, foreign = shop.order([(KNOWN[0], 1)], number="G-1"), shop.order([(KNOWN[1], 1)], number="G-2")
    sync_orders(home, shop)
    assert StateStore(home).delete_mapping(ORDER_KIND, foreign)        # another Billbee account's order, say
    warehouse.pack_all()
    assert materialize(home, GROUP).success                            # reads the packing orders; `foreign` waits
    config = load_config(EXAMPLE_CONFIG)
    flow = flow_for(config.integration(GROUP), config)
    billbee = BillbeeClient(sandbox.billbee_url, credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD,
                            credentials.BILLBEE_API_KEY, pacer_dir=home / "pacing")
    pulpo = PulpoClient(sandbox.pulpo_url, credentials.PULPO_USERNAME, credentials.PULPO_PASSWORD, warehouse_id=1,
                        token_dir=home / "tokens")
    later = StatusWriter(flow, billbee, pulpo, StateStore(home), now=lambda: datetime.now(UTC) + timedelta(hours=3))
    report = later.run()
    assert report.read == 1 and report.counts["not_from_billbee"] == 1 and report.counts["waiting"] == 0
    assert f"Billbee order {foreign}" in report.skipped[0]["reason"] and "after 2 h" in report.skipped[0]["reason"]
    assert billbee_order(sandbox, linked)["State"] == PACKED and billbee_order(sandbox, foreign)["State"] == PAID
    assert StatusWriter(flow, billbee, pulpo, StateStore(home)).run().read == 0   # settled for good


def test_without_order_links_the_blocking_check_holds_back_every_write(sandbox, bpp_env, tmp_path):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop, warehouse = Shop(sandbox), Warehouse(sandbox)
    order = shop.order([(KNOWN[0], 1)], number="B-1")
    sync_orders(tmp_path / "other-home", shop)                         # the orders flow ran with another BPP_HOME
    warehouse.pack_all()
    sandbox.reset_stats("billbee")
    result = materialize(home, GROUP)
    assert not result.success
    check = check_results(result)["billbee_order_links_available"]
    assert not check.passed and "Run the sales-orders integration with the same BPP_HOME" in check.description
    assert [e.asset_key.path[-1] for e in result.get_asset_materialization_events()] == [
        "pulpo_finished_packing_orders"]                               # the writer never ran
    assert billbee_calls(sandbox) == [] and billbee_order(sandbox, order)["State"] == PAID
    assert StateStore(home).snapshot_keys(f"{GROUP}.billbee_packed_processed") == set()


def test_packing_sensor_cursor_and_run_keys_come_from_the_data(sandbox, bpp_env):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop, warehouse = Shop(sandbox), Warehouse(sandbox)
    shop.order([(KNOWN[0], 1)], number="T-1")
    sync_orders(home, shop)
    config = load_config(EXAMPLE_CONFIG)
    sensor = build_definitions(config, home).resolve_sensor_def(f"{GROUP}_packing_sensor")
    assert sensor.minimum_interval_seconds == 15 and sensor.default_status == dg.DefaultSensorStatus.RUNNING

    def tick(cursor: str | None) -> dg.SensorResult:
        with dg.instance_for_test() as instance:
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=build_resources(config, home))
            return sensor.evaluate_tick(context)

    nothing = tick(None)
    assert nothing.run_requests == [] and "no packing order finished" in nothing.skip_message
    warehouse.pack_all()
    [packing] = warehouse.packing_orders()
    first = tick(None)
    [request] = first.run_requests
    newest = PackingCursor.decode(first.cursor)
    assert newest.id == packing["id"] and newest.updated_at.isoformat()[:19] == packing["updated_at"][:19]
    assert request.run_key == f"packing:{newest.updated_at.isoformat()}:{newest.id}"
    assert tick(None).run_requests[0].run_key == request.run_key       # same data, same key
    assert tick(first.cursor).run_requests == []                       # nothing newer than the cursor

    shop.order([(KNOWN[1], 1)], number="T-2")
    sync_orders(home, shop)
    warehouse.pack_all()
    later = tick(first.cursor)
    [second] = later.run_requests
    assert second.run_key != request.run_key and PackingCursor.decode(later.cursor) > newest
    assert second.tags["bpp/packing_orders"] == "1"


def test_sync_killed_between_state_change_and_ledger_record_sets_nothing_twice(sandbox, bpp_env):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop, warehouse = Shop(sandbox), Warehouse(sandbox)
    orders = [shop.order([(KNOWN[n], 1)], number=f"K-{n}") for n in range(3)]
    sync_orders(home, shop)
    warehouse.pack_all()
    command = [sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "Status updates", "--json"]
    sandbox.reset_stats("billbee")
    killed = subprocess.run(command, env={**bpp_env, CRASH_ENV: "status"}, cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=180)
    assert killed.returncode == 137, killed.stderr[-2000:]
    [first_put] = [c for c in billbee_calls(sandbox) if c.startswith("PUT")]
    crashed = first_put.split("/")[2]
    assert billbee_order(sandbox, crashed)["State"] == PACKED           # Billbee has it ...
    assert ledger(home)[status_ledger_key(crashed, PACKED)].status == "pending"   # ... our record does not

    sandbox.reset_stats("billbee")
    rerun = subprocess.run(command, env=bpp_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    puts = [c for c in billbee_calls(sandbox) if c.startswith("PUT")]
    assert sorted(puts) == sorted(f"PUT /orders/{i}/orderstate" for i in orders if i != crashed)
    assert all(billbee_order(sandbox, i)["State"] == PACKED for i in orders)
    entry = ledger(home)[status_ledger_key(crashed, PACKED)]
    assert entry.status == "done" and entry.outcome == {"adopted": True}
    [summary] = json.loads(rerun.stdout)["integrations"]
    assert summary["status"] == "success" and summary["written"] == len(orders) - 1


def test_the_order_link_of_the_sales_flow_is_the_one_the_status_flow_reads(tmp_path):
    config = load_config(EXAMPLE_CONFIG, env={"BILLBEE_USERNAME": "u", "BILLBEE_API_PASSWORD": "p",
                                              "BILLBEE_API_KEY": "k", "PULPO_USERNAME": "u", "PULPO_PASSWORD": "p"})
    orders, status = (flow_for(config.integration(name), config) for name in ("Verkaufsaufträge", "Status updates"))
    assert mapping_kind("order", orders) == mapping_kind("order", status) == ORDER_KIND


@pytest.mark.parametrize(("current", "target", "action"), [
    (3, 13, "set"),            # Bezahlt → Gepackt
    (16, 13, "set"),           # Im Fulfillment → Gepackt
    (13, 13, "already"),
    (4, 13, "later"),          # Versendet is never turned back into Gepackt
    (7, 4, "later"),           # Abgeschlossen
    (13, 4, "set"),            # Gepackt → Versendet
    (3, 16, "set"),            # same step, another open state
    (8, 13, "protected"),      # Storniert
    (6, 4, "protected"),       # Gelöscht
    (17, 4, "protected"),      # Retoure
    (None, 13, "set"),
])
def test_state_rule(current, target, action):
    decision = decide_state(current, target)
    assert decision.action == action
    assert decision.writes == (action == "set")
    if action == "protected":
        assert "check the order in Billbee" in decision.reason
