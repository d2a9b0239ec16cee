"""The stock flow (PULPO → Billbee) end to end over HTTP against the sandboxes, through Dagster's
`materialize` and through `billbee-pulpo sync` in a subprocess.

Each test starts from its own small world: 120 Billbee articles (index 96 has no SKU; 49 and 99 are
bundles of the two articles before them) without orders, and a PULPO tenant whose 117 seeded
products (the same SKUs, no bundles) are stocked in warehouse 1, every fifth also in warehouse 2.
What Billbee should show is computed here from the sandboxes' raw answers, not with the flow's code.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests

from billbee_pulpo_pipeline.clients.billbee.states import DEFAULT_RESERVING_STATES
from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT, SANDBOX_ORDERS, SANDBOX_PRODUCTS

PRODUCTS = 120
GROUP = "lagerbestand"
OP = f"{GROUP}__stock"
ORDERS_GROUP = "verkaufsauftraege"
BUNDLES = {"SKU-0000049": [("SKU-0000047", 1), ("SKU-0000048", 2)]}
WRITE = "POST /api/v1/products/updatestockmultiple"
BESTELLT, BEZAHLT, STORNIERT = 1, 3, 8
STORAGE = {1: 101, 2: 201}  # storage location per PULPO warehouse


@pytest.fixture
def world(sandbox):
    sandbox.reset("billbee", products=PRODUCTS, orders=0)
    sandbox.reset("pulpo", products=PRODUCTS, stock=True)
    yield sandbox
    sandbox.reset("billbee", products=SANDBOX_PRODUCTS, orders=SANDBOX_ORDERS)
    sandbox.reset("pulpo", products=0)


# ---- running the flow --------------------------------------------------------------------------------


def sync(home: Path, *, dry_run: bool = False, reconcile: bool = False, config: Path = EXAMPLE_CONFIG,
         asset: str | None = None) -> dg.ExecuteInProcessResult:
    loaded = load_config(config)
    defs = build_definitions(loaded, home)
    selection = dg.AssetSelection.assets(dg.AssetKey([GROUP, asset])) if asset else dg.AssetSelection.groups(GROUP)
    return dg.materialize(list(defs.assets), selection=selection, resources=build_resources(loaded, home),
                          run_config={"ops": {OP: {"config": {"dry_run": dry_run, "reconcile": reconcile}}}},
                          raise_on_error=False)


def sync_orders(home: Path) -> None:
    """The sales-orders flow for the current hour (and the previous one, should the hour just have turned)."""
    loaded = load_config(EXAMPLE_CONFIG)
    defs = build_definitions(loaded, home)
    now = datetime.now(UTC)
    for partition in sorted({(now - timedelta(minutes=3)).strftime("%Y-%m-%d-%H:00"), now.strftime("%Y-%m-%d-%H:00")}):
        result = dg.materialize(list(defs.assets), selection=dg.AssetSelection.groups(ORDERS_GROUP),
                                resources=build_resources(loaded, home), partition_key=partition)
        assert result.success


def meta(result: dg.ExecuteInProcessResult, asset: str = "billbee_stock") -> dict[str, Any]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {e.event_specific_data.check_name: e.event_specific_data for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def cli(env: dict[str, str], **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "Lagerbestand", "--json"],
                          env={**env, **extra_env}, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


# ---- the two systems, as the simulated shop and warehouse see them (never throttled or counted) ----------


class Billbee:
    def __init__(self, sandbox) -> None:
        self.sandbox = sandbox
        self.url = sandbox.billbee_url
        self.session = requests.Session()
        self.session.auth = (credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD)
        self.session.headers.update({"X-Billbee-Api-Key": credentials.BILLBEE_API_KEY,
                                     **credentials.SIMULATOR_HEADERS})

    def _pages(self, path: str, **params: Any) -> list[dict[str, Any]]:
        rows, page = [], 1
        while True:
            body = self.session.get(f"{self.url}/{path}", params={**params, "page": page, "pageSize": 250},
                                    timeout=30).json()
            rows += body["Data"]
            if page >= body["Paging"]["TotalPages"]:
                return rows
            page += 1

    def stock(self) -> dict[str, float]:
        """SKU → StockCurrent of the default stock, for every article that is no bundle."""
        return {p["SKU"]: p["StockCurrent"] for p in self._pages("products") if p["SKU"] and p["Type"] != 2}

    def orders(self) -> list[dict[str, Any]]:
        return self._pages("orders")

    def order(self, lines: list[tuple[str, float]], state: int) -> str:
        body = {"CreatedAt": datetime.now(UTC).isoformat(), "State": state,
                "InvoiceAddress": {"FirstName": "Erika", "LastName": "Mustermann", "Street": "Hauptstraße",
                                   "HouseNumber": "5", "Zip": "10115", "City": "Berlin", "CountryISO2": "DE"},
                "OrderItems": [{"Product": {"SKU": sku}, "Quantity": qty} for sku, qty in lines]}
        response = self.session.post(f"{self.url}/orders", json=body, timeout=30)
        response.raise_for_status()
        return str(response.json()["Data"]["BillBeeOrderId"])

    def set_state(self, order_id: str, state: int) -> None:
        self.session.put(f"{self.url}/orders/{order_id}/orderstate", json={"NewStateId": state},
                         timeout=30).raise_for_status()

    def set_stock(self, sku: str, quantity: float) -> None:
        """A manual edit in Billbee's UI."""
        body = self.session.post(f"{self.url}/products/updatestock", json={"Sku": sku, "NewQuantity": quantity},
                                 timeout=30).json()
        assert body["ErrorCode"] == 0, body

    def written(self) -> list[dict[str, Any]]:
        """Every stock row the flow sent since the last stats reset, in order."""
        return [row for entry in self.sandbox.requests("billbee", limit=5000)
                if entry["endpoint"] == WRITE and not entry["simulator"] for row in entry["body"]]

    def write_calls(self) -> int:
        return self.sandbox.stats("billbee")["requests"].get(WRITE, 0)


class Pulpo:
    def __init__(self, sandbox) -> None:
        self.url = sandbox.pulpo_url
        self.session = requests.Session()
        self.session.headers.update(credentials.SIMULATOR_HEADERS)
        token = self.session.post(f"{self.url}/auth", json={
            "grant_type": "password", "username": credentials.PULPO_USERNAME, "password": credentials.PULPO_PASSWORD,
            "scope": "general"}, timeout=30).json()["access_token"]
        self.session.headers["Authorization"] = f"Bearer {token}"

    def summary(self, warehouse: int = 1) -> dict[str, dict[str, Any]]:
        rows = self.session.get(f"{self.url}/inventory/stocks/summary", params={"warehouse_id[]": warehouse},
                                timeout=30).json()
        return {row["sku"]: row for row in rows if row["sku"]}

    def add(self, sku: str, quantity: int, warehouse: int = 1) -> None:
        product_id = self.summary(warehouse).get(sku, {}).get("product_id") or self.product_id(sku)
        self.session.post(f"{self.url}/inventory/stocks/add", json={
            "product_id": int(product_id), "location_id": STORAGE[warehouse], "quantity": quantity},
            timeout=30).raise_for_status()

    def product_id(self, sku: str) -> int:
        body = self.session.get(f"{self.url}/inventory/products", params={"sku": sku}, timeout=30).json()
        return int(body["products"][0]["id"])

    def create_product(self, sku: str) -> None:
        self.session.post(f"{self.url}/inventory/products", json={"sku": sku, "name": f"Artikel {sku}"},
                          timeout=30).raise_for_status()

    def sales_orders(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            page = self.session.get(f"{self.url}/sales/orders", params={"limit": 100, "offset": len(rows)},
                                    timeout=30).json()
            rows += page["sales_orders"]
            if not page["sales_orders"] or len(rows) >= page["total_results"]:
                return rows


def expected(billbee: Billbee, pulpo: Pulpo, *, buffer: int = 0) -> dict[str, int]:
    """What Billbee must show: PULPO available in warehouse 1 minus the units of Billbee orders in a
    reserving state that PULPO has no (uncancelled) sales order for, never below 0. Bundles: none."""
    in_pulpo = {so["external_order_num"] for so in pulpo.sales_orders() if so["state"] != "cancelled"}
    opened: Counter[str] = Counter()
    for order in billbee.orders():
        if order["State"] in DEFAULT_RESERVING_STATES and str(order["BillBeeOrderId"]) not in in_pulpo:
            for item in order["OrderItems"]:
                sku = item["Product"]["SKU"]
                for part, amount in BUNDLES.get(sku, [(sku, 1)]):
                    opened[part] += item["Quantity"] * amount
    return {sku: max(0, math.floor(row["available"] - opened[sku] - buffer))
            for sku, row in pulpo.summary(1).items() if sku not in BUNDLES}


# ---- tests ---------------------------------------------------------------------------------------------


def test_first_sync_reaches_the_target_then_a_rerun_writes_nothing(world, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    billbee, pulpo = Billbee(world), Pulpo(world)
    before, targets = billbee.stock(), expected(billbee, pulpo)
    assert len(targets) == 117
    world.reset_stats("billbee")

    first = sync(home)
    assert first.success
    written = meta(first)
    assert written["reconcile"].startswith("first run")
    after = billbee.stock()
    assert {sku: after[sku] for sku in targets} == targets
    differing = {sku for sku, target in targets.items() if before[sku] != target}
    rows = billbee.written()
    assert sorted(r["Sku"] for r in rows) == sorted(differing)  # only what differed from Billbee's stock
    assert written["records_written"] == len(differing) and written["unchanged"] == len(targets) - len(differing)
    assert billbee.write_calls() == math.ceil(len(differing) / 100)
    # Warehouse 2 never counts: articles stocked in both show warehouse 1's quantity alone.
    second_warehouse = pulpo.summary(2)
    both = [sku for sku in second_warehouse if sku in targets and second_warehouse[sku]["available"] > 0]
    assert both and all(after[sku] == targets[sku] for sku in both)

    world.reset_stats("billbee")
    again = sync(home)
    assert again.success and billbee.write_calls() == 0
    assert meta(again)["reconcile"] == "no (not due)" and meta(again)["unchanged"] == len(targets)


def test_fifty_changed_skus_are_exactly_fifty_rows_and_a_rerun_none(world, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    billbee, pulpo = Billbee(world), Pulpo(world)
    assert sync(home).success
    chosen = sorted(sku for sku, target in expected(billbee, pulpo).items() if target > 0)[:50]
    assert len(chosen) == 50
    for sku in chosen:
        pulpo.add(sku, 3)
    targets = expected(billbee, pulpo)
    world.reset_stats("billbee")

    run = cli(bpp_env)  # `billbee-pulpo sync` runs the same assets
    assert run.returncode == 0, run.stderr[-2000:]
    [summary] = json.loads(run.stdout)["integrations"]
    assert summary["status"] == "success" and summary["written"] == 50
    rows = billbee.written()
    assert sorted(r["Sku"] for r in rows) == chosen
    assert all(r["NewQuantity"] == targets[r["Sku"]] for r in rows)
    assert billbee.write_calls() == 1  # ceil(50 / batch_size 100)
    after = billbee.stock()
    assert all(after[sku] == targets[sku] for sku in targets)

    world.reset_stats("billbee")
    again = sync(home)
    assert again.success and billbee.written() == [] and meta(again)["records_written"] == 0


def test_unknown_sku_is_quarantined_and_the_rest_written(world, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    billbee, pulpo = Billbee(world), Pulpo(world)
    assert sync(home).success
    pulpo.create_product("NUR-IN-PULPO-1")
    pulpo.add("NUR-IN-PULPO-1", 7)
    changed = sorted(sku for sku, t in expected(billbee, pulpo).items() if t > 0 and sku.startswith("SKU-"))[:3]
    for sku in changed:
        pulpo.add(sku, 2)
    targets = expected(billbee, pulpo)
    world.reset_stats("billbee")

    result = sync(home)
    assert result.success  # a refused row is a warning, not a failed run
    m = meta(result)
    assert (m["written"], m["refused"], m["quarantined"]) == (3, 1, 1)
    assert "NUR-IN-PULPO-1" in m["quarantine_preview"]
    assert sorted(r["Sku"] for r in billbee.written()) == sorted([*changed, "NUR-IN-PULPO-1"])
    assert all(billbee.stock()[sku] == targets[sku] for sku in changed)
    [entry] = StateStore(home).quarantine_list(GROUP, kind="stock")
    assert entry.record_key == "NUR-IN-PULPO-1" and "Article not found" in entry.reason
    assert checks(result)["stock_rows_accounted_for"].passed

    world.reset_stats("billbee")
    again = sync(home)  # unchanged value: not sent again
    assert again.success and billbee.write_calls() == 0 and meta(again)["still_quarantined"] == 1

    pulpo.add("NUR-IN-PULPO-1", 1)  # its value changed: retried (and refused again)
    third = sync(home)
    assert [r["Sku"] for r in billbee.written()] == ["NUR-IN-PULPO-1"] and meta(third)["quarantined"] == 1


def test_open_billbee_orders_not_in_pulpo_are_never_sold_twice(world, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    billbee, pulpo = Billbee(world), Pulpo(world)
    assert sync(home).success
    stocked = sorted(sku for sku, row in pulpo.summary(1).items() if row["available"] >= 10 and sku not in BUNDLES)
    a, b, c = stocked[:3]
    available = {sku: pulpo.summary(1)[sku]["available"] for sku in (a, b, c)}

    billbee.order([(a, 2), (b, 1)], BEZAHLT)          # imported into PULPO below: PULPO reserves it
    sync_orders(home)
    assert pulpo.summary(1)[a]["available"] == available[a] - 2
    unpaid = billbee.order([(a, 1), (c, 4)], BESTELLT)  # not an import state: Billbee reserves, PULPO not
    billbee.order([(b, 2)], BEZAHLT)                   # paid after the order sync: not in PULPO yet

    result = sync(home)
    assert result.success
    stock = billbee.stock()
    assert stock[a] == available[a] - 2 - 1   # the PULPO order once (inside available), the unpaid one once
    assert stock[b] == available[b] - 1 - 2
    assert stock[c] == available[c] - 4
    targets = expected(billbee, pulpo)
    assert {sku: stock[sku] for sku in targets} == targets
    m = meta(result)
    assert (m["open_orders_not_in_pulpo"], m["open_orders_in_pulpo"], m["open_units_subtracted"]) == (2, 1, 7)

    sync_orders(home)                                  # the paid order reaches PULPO: moves from O into Q
    assert sync(home).success
    assert billbee.stock()[b] == available[b] - 1 - 2

    billbee.set_state(unpaid, STORNIERT)               # cancelled in Billbee: its units are sellable again
    assert sync(home).success
    after = billbee.stock()
    assert (after[a], after[c]) == (available[a] - 2, available[c])


def test_bundles_get_no_row_and_bundle_orders_count_for_their_parts(world, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    billbee, pulpo = Billbee(world), Pulpo(world)
    pulpo.create_product("SKU-0000049")  # PULPO has the bundle as a product of its own (a kit), with stock
    pulpo.add("SKU-0000049", 5)
    for part, _ in BUNDLES["SKU-0000049"]:
        pulpo.add(part, 20)
    billbee.order([("SKU-0000049", 2)], BESTELLT)
    world.reset_stats("billbee")

    result = sync(home)
    assert result.success
    assert "SKU-0000049" not in {r["Sku"] for r in billbee.written()}
    assert meta(result)["bundles_skipped"] == 1
    stock, summary = billbee.stock(), pulpo.summary(1)
    assert stock["SKU-0000047"] == summary["SKU-0000047"]["available"] - 2
    assert stock["SKU-0000048"] == summary["SKU-0000048"]["available"] - 4


def test_implausible_snapshot_marks_nothing_sold_out(world, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    billbee = Billbee(world)
    assert sync(home).success
    before = billbee.stock()
    world.reset("pulpo", products=0)  # PULPO answers an empty stock summary (an incident, a wrong warehouse)
    world.reset_stats("billbee")

    result = sync(home)
    assert not result.success
    check = checks(result)["stock_snapshot_plausible"]
    assert not check.passed and "no stock at all" in check.description
    assert billbee.write_calls() == 0 and billbee.stock() == before

    # Confirmed by the merchant: the writer alone writes from the stored (empty) snapshot.
    alone = sync(home, asset="billbee_stock")
    assert alone.success
    assert all(quantity == 0 for sku, quantity in billbee.stock().items() if before.get(sku))


def test_dry_run_shows_the_plan_and_writes_nothing(world, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    billbee, pulpo = Billbee(world), Pulpo(world)
    assert sync(home).success
    changed = sorted(pulpo.summary(1))[:5]
    for sku in changed:
        pulpo.add(sku, 4)
    world.reset_stats("billbee")

    dry = sync(home, dry_run=True)
    assert dry.success and billbee.write_calls() == 0
    m = meta(dry)
    assert m["dry_run"] and m["planned"] == 5 and m["records_written"] == 0
    assert all(sku in m["plan_preview"] for sku in changed)

    real = sync(home)
    assert real.success and sorted(r["Sku"] for r in billbee.written()) == changed


def test_reconcile_repairs_manual_edits_in_billbee(world, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    billbee, pulpo = Billbee(world), Pulpo(world)
    assert sync(home).success
    targets = expected(billbee, pulpo)
    edited = sorted(targets)[10:13]
    for sku in edited:
        billbee.set_stock(sku, 999)
    world.reset_stats("billbee")

    assert sync(home).success and billbee.write_calls() == 0  # a regular run cannot see the edit
    result = sync(home, reconcile=True)
    assert result.success
    assert sorted(r["Sku"] for r in billbee.written()) == edited
    assert meta(result)["drift_repaired"] == 3 and meta(result)["reconcile"].startswith("asked for")
    assert all(billbee.stock()[sku] == targets[sku] for sku in edited)


def test_settings_total_autosubtract_buffer_and_stock_id(world, bpp_env, tmp_path):
    config = tmp_path / "stock.yaml"
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8").replace(
        "    # quantity: available ", "    quantity: total\n    autosubtract_reserved: true\n    safety_buffer: 2\n"
        "    stock_id: 1\n    # quantity: available ")
    config.write_text(text, encoding="utf-8")
    home = Path(bpp_env["BPP_HOME"])
    billbee, pulpo = Billbee(world), Pulpo(world)
    sku = sorted(s for s, row in pulpo.summary(1).items() if row["total"] >= 10)[0]
    billbee.order([(sku, 2)], BESTELLT)  # Billbee's own reservation, subtracted by Billbee
    world.reset_stats("billbee")

    result = sync(home, config=config)
    assert result.success
    rows = {r["Sku"]: r for r in billbee.written()}
    assert all(r["AutosubtractReservedAmount"] is True and r["StockId"] == 1 for r in rows.values())
    total = pulpo.summary(1)[sku]["total"]
    assert rows[sku]["NewQuantity"] == total - 2
    assert billbee.stock()[sku] == total - 2 - 2
    assert meta(result)["open_units_subtracted"] == 0  # Billbee subtracts, the flow does not


def test_crash_after_a_write_then_a_rerun_leaves_no_gap(world, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    billbee, pulpo = Billbee(world), Pulpo(world)
    assert sync(home).success
    chosen = sorted(expected(billbee, pulpo))[:110]  # two calls: 100 + 10
    for sku in chosen:
        pulpo.add(sku, 1)
    targets = expected(billbee, pulpo)
    world.reset_stats("billbee")

    crashed = cli(bpp_env, BPP_TEST_CRASH_AFTER="stock")
    assert crashed.returncode == 137
    assert len(billbee.written()) == 100  # Billbee took the first call; the run died before recording it

    rerun = cli(bpp_env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = billbee.stock()
    assert all(after[sku] == targets[sku] for sku in chosen)
    entries = [e for e in StateStore(home).ledger_entries(GROUP) if e.attempts == 2]
    assert len(entries) == 1 and entries[0].status == "done"  # the first call, sent again once
    world.reset_stats("billbee")
    assert sync(home).success and billbee.write_calls() == 0


def test_a_crashed_call_whose_rows_changed_since_is_closed_by_the_next_complete_run(world, bpp_env):
    """The chaos run found it: the crashed call's ledger key names its rows; when a value changes before
    the rerun, the rerun's batch has another key, and the crashed entry stayed 'pending' for ever."""
    home = Path(bpp_env["BPP_HOME"])
    billbee, pulpo = Billbee(world), Pulpo(world)
    assert sync(home).success
    chosen = sorted(expected(billbee, pulpo))[:5]
    for sku in chosen:
        pulpo.add(sku, 1)
    crashed = cli(bpp_env, BPP_TEST_CRASH_AFTER="stock")
    assert crashed.returncode == 137
    store = StateStore(home)
    [interrupted] = store.ledger_entries(GROUP, status="pending")
    pulpo.add(chosen[0], 2)  # the rerun's batch differs from the crashed one
    targets = expected(billbee, pulpo)

    rerun = cli(bpp_env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert all(billbee.stock()[sku] == targets[sku] for sku in chosen)
    assert store.ledger_entries(GROUP, status="pending") == []
    closed = store.ledger_get(interrupted.key)
    assert closed is not None and closed.status == "failed" and "interrupted" in (closed.message or "")


def test_schedules_run_the_sync_and_the_daily_reconcile(tmp_path):
    from billbee_pulpo_pipeline.defs.stock.assets import on_hours, reconcile_cron

    env = {"BILLBEE_USERNAME": "u@example.com", "BILLBEE_API_PASSWORD": "p", "BILLBEE_API_KEY": "k",
           "PULPO_USERNAME": "u", "PULPO_PASSWORD": "p"}
    defs = build_definitions(load_config(EXAMPLE_CONFIG, env=env), tmp_path)
    assert defs.resolve_schedule_def(f"{GROUP}_schedule").cron_schedule == "*/5 * * * *"
    reconcile = defs.resolve_schedule_def(f"{GROUP}_reconcile_schedule")
    assert reconcile.cron_schedule == "17 0 * * *" and reconcile.job_name == f"{GROUP}_reconcile_job"
    assert reconcile.default_status == dg.DefaultScheduleStatus.RUNNING
    assert defs.resolve_job_def(f"{GROUP}_reconcile_job").name == f"{GROUP}_reconcile_job"
    assert reconcile_cron(6) == "17 */6 * * *" and on_hours(6) is None
    assert reconcile_cron(36) == "17 * * * *" and on_hours(36) is not None
