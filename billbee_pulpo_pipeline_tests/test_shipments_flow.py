"""The shipments flow (PULPO → Billbee, labels made by another service) end to end over HTTP against the
session sandboxes: Billbee orders imported by the sales-orders flow, packed by the simulated warehouse,
labelled by a stand-in for Sendcloud that writes tracking codes to the PULPO boxes through PULPO's API,
then `pulpo_finished_packing_orders` → `billbee_shipments` → the Billbee sandbox.

Runs go through `dg.materialize` of the integration's group, through the plain `ShipmentWriter` with a
clock moved forward (a label printed minutes later, a box that never gets one) and through
`billbee-pulpo sync` in a subprocess (the crash test, the refused config).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient, ShipmentTracking
from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.common import flow_for
from billbee_pulpo_pipeline.defs.crash import CRASH_ENV
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.defs.shipments.writer import ShipmentWriter
from billbee_pulpo_pipeline.mapping.shipments import box_trackings, match_carrier, recheck_after, shipment_ledger_key
from billbee_pulpo_pipeline.mapping.status import status_ledger_key
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import PROJECT_ROOT
from billbee_pulpo_pipeline_tests.test_orders_writing import KNOWN, Shop, fresh_world
from billbee_pulpo_pipeline_tests.test_orders_writing import sync as sync_orders
from billbee_pulpo_pipeline_tests.test_status_updates import (
    Warehouse,
    billbee_calls,
    billbee_order,
    config_with,
    ledger,
    materialize,
    metadata,
)

GROUP = "sendungen"
SHIPMENTS = ("  - {name: Sendungen, type: shipments, source: pulpo-wms, target: billbee-shop, "
             "carrier_map: {ups: 5}}\n")
DHL_PROVIDER, DHL_PAKET = 20_000_000_000_012_101, 20_000_000_000_083_771
DHL, UPS = 2, 5
PAID, SHIPPED = 3, 4


class LabelService:
    """Sendcloud's part: when a box is packed it creates the label and writes the tracking to the box."""

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        self.issued = 0

    def packing_order_of(self, billbee_order_id: str) -> int:
        [order] = [o for o in self.warehouse.get("/sales/orders")["sales_orders"]
                   if o["external_order_num"] == billbee_order_id]
        [packing] = self.warehouse.packing_orders(order["id"])
        return int(packing["id"])

    def label(self, billbee_order_id: str, carrier_code: str) -> list[str]:
        """A tracking code on every box of the order's packing order; the codes, by box."""
        packing = self.packing_order_of(billbee_order_id)
        codes = []
        for box in sorted(self.warehouse.boxes(packing), key=lambda b: b["id"]):
            self.issued += 1
            code = f"TRK{billbee_order_id[-6:]}{self.issued:04d}"
            self.warehouse.post(f"/packing/orders/{packing}/boxes/{box['id']}/shipment_tracking", {
                "carrier_code": carrier_code, "tracking_code": code, "status": "generated",
                "tracking_url": f"https://track.example/{code}"})
            codes.append(code)
        return codes

    def fail(self, billbee_order_id: str, message: str) -> None:
        packing = self.packing_order_of(billbee_order_id)
        for box in self.warehouse.boxes(packing):
            self.warehouse.post(f"/packing/orders/{packing}/boxes/{box['id']}/shipment_tracking",
                                {"carrier_code": "dhl", "status": "failed", "error_message": message})


def billbee_shipments(sandbox, order_id: str) -> list[dict[str, Any]]:
    response = requests.get(f"{sandbox.billbee_url}/shipment/shipments", params={"orderId": order_id}, timeout=30,
                            auth=(credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD),
                            headers={"X-Billbee-Api-Key": credentials.BILLBEE_API_KEY, **credentials.SIMULATOR_HEADERS})
    response.raise_for_status()
    return response.json()["Data"]


def writer(home: Path, sandbox, config: Path, *, clock: timedelta = timedelta(0),
           billbee: BillbeeClient | None = None) -> ShipmentWriter:
    """The plain writer, as the asset builds it, with the clock moved forward by `clock`."""
    loaded = load_config(config)
    flow = flow_for(loaded.integration("Sendungen"), loaded)
    billbee = billbee or BillbeeClient(sandbox.billbee_url, credentials.BILLBEE_USERNAME,
                                       credentials.BILLBEE_API_PASSWORD, credentials.BILLBEE_API_KEY,
                                       pacer_dir=home / "pacing")
    pulpo = PulpoClient(sandbox.pulpo_url, credentials.PULPO_USERNAME, credentials.PULPO_PASSWORD, warehouse_id=1,
                        token_dir=home / "tokens")
    now: Callable[[], datetime] = lambda: datetime.now(UTC) + clock  # noqa: E731
    return ShipmentWriter(flow, billbee, pulpo, StateStore(home), now=now)


def world_with_orders(sandbox, bpp_env, tmp_path, *lines: list[tuple[str, int]]
                      ) -> tuple[Path, Path, Shop, Warehouse, list[str]]:
    """Fresh sandboxes, one paid Billbee order per `lines`, imported into PULPO and packed."""
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop, warehouse = Shop(sandbox), Warehouse(sandbox)
    orders = [shop.order(order_lines, number=f"V-{n}") for n, order_lines in enumerate(lines)]
    sync_orders(home, shop)
    warehouse.pack_all()
    config = config_with(tmp_path, SHIPMENTS)
    read_packing_orders(home, config)
    return home, config, shop, warehouse, orders


def read_packing_orders(home: Path, config: Path) -> None:
    """Only the read asset: what the plain writer works from."""
    loaded = load_config(config)
    defs = build_definitions(loaded, home)
    assert dg.materialize(list(defs.assets), selection=[dg.AssetKey([GROUP, "pulpo_finished_packing_orders"])],
                          resources=build_resources(loaded, home)).success


def posts(calls: list[str], order_id: str) -> list[int]:
    return [n for n, call in enumerate(calls) if call == f"POST /orders/{order_id}/shipment"]


# ---- tests ---------------------------------------------------------------------------------------


def test_each_tracking_code_becomes_one_shipment_then_versendet(sandbox, bpp_env, tmp_path):
    fresh_world(sandbox)
    home, config = Path(bpp_env["BPP_HOME"]), config_with(tmp_path, SHIPMENTS)
    shop, warehouse = Shop(sandbox), Warehouse(sandbox)
    dhl = shop.order([(KNOWN[0], 3), (KNOWN[1], 2)], number="D-1", ShippingProviderId=DHL_PROVIDER,
                     ShippingProviderProductId=DHL_PAKET)
    ups, late = shop.order([(KNOWN[1], 1)], number="U-1"), shop.order([(KNOWN[2], 1)], number="H-1")
    sync_orders(home, shop)
    warehouse.order_from_elsewhere("POS-9")
    warehouse.pack_all()
    labels = LabelService(warehouse)
    dhl_codes, ups_codes = labels.label(dhl, "dhl_de"), labels.label(ups, "UPS")   # `late` has no label yet

    sandbox.reset_stats("billbee")
    plan = metadata(materialize(home, GROUP, config, dry_run=True, writer="billbee_shipments"), "billbee_shipments")
    assert all(f"would add shipment {code}" in plan["plan"] for code in dhl_codes + ups_codes)
    assert plan["plan"].count("then set Versendet") == 2 and plan["records_written"] == 0
    assert [c for c in billbee_calls(sandbox) if not c.startswith("GET")] == [] and ledger(home, GROUP) == {}

    sandbox.reset_stats("billbee")
    result = materialize(home, GROUP, config, writer="billbee_shipments")
    assert result.success
    first = metadata(result, "billbee_shipments")
    assert first["shipments_added"] == len(dhl_codes) + len(ups_codes) and first["state_set"] == 2
    assert (first["complete"], first["waiting_for_tracking"], first["not_from_billbee"]) == (2, 1, 1)
    assert first["carrier_unmapped"] == 0 and first["records_written"] == len(dhl_codes) + len(ups_codes) + 2
    stored = {s["ShippingId"]: s for s in billbee_shipments(sandbox, dhl)}
    assert sorted(stored) == sorted(dhl_codes)                          # each code once
    assert {(s["ShippingCarrier"], s["ShippingProviderId"], s["ShippingProviderProductId"])
            for s in stored.values()} == {(DHL, DHL_PROVIDER, DHL_PAKET)}   # by name; the order's own provider
    [ups_shipment] = billbee_shipments(sandbox, ups)
    assert ups_shipment["ShippingId"] == ups_codes[0] and ups_shipment["ShippingCarrier"] == UPS  # carrier_map
    calls = billbee_calls(sandbox)
    for order in (dhl, ups):                                           # Versendet only after the shipments
        assert billbee_order(sandbox, order)["State"] == SHIPPED
        assert max(posts(calls, order)) < calls.index(f"PUT /orders/{order}/orderstate")
    assert billbee_order(sandbox, late)["State"] == PAID and billbee_shipments(sandbox, late) == []
    assert calls.count("GET /shipment/shippingcarriers") == 1

    sandbox.reset_stats("billbee")
    again = metadata(materialize(home, GROUP, config, writer="billbee_shipments"), "billbee_shipments")
    assert billbee_calls(sandbox) == [] and again["records_written"] == 0
    assert again["not_due"] == 1 and again["pulpo_calls"] == 0          # `late` is looked at again in 5 min

    late_codes = labels.label(late, "hermes_std")                      # printed later, by a carrier Billbee lacks
    report = writer(home, sandbox, config, clock=timedelta(minutes=6)).run()
    assert report.counts["shipments_added"] == 1 and report.counts["carrier_unmapped"] == 1
    assert report.counts["state_set"] == 1 and "add it to carrier_map" in report.unmapped[0]["reason"]
    assert [s["ShippingId"] for s in billbee_shipments(sandbox, late)] == late_codes
    [body] = [r["body"] for r in sandbox.requests("billbee") if r["path"].endswith(f"/orders/{late}/shipment")]
    assert "CarrierId" not in body and body["ShippingId"] == late_codes[0]
    assert billbee_order(sandbox, late)["State"] == SHIPPED

    sandbox.reset_stats("billbee")
    assert materialize(home, GROUP, config, writer="billbee_shipments").success
    assert billbee_calls(sandbox) == []                                # everything processed: nothing to do


def test_sync_killed_between_shipment_and_ledger_record_leaves_one_shipment(sandbox, bpp_env, tmp_path):
    home, config, _, warehouse, [order] = world_with_orders(sandbox, bpp_env, tmp_path, [(KNOWN[0], 1)])
    [code] = LabelService(warehouse).label(order, "dhl")
    env = {**bpp_env, "BPP_CONFIG": str(config)}
    command = [sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "Sendungen", "--json"]
    killed = subprocess.run(command, env={**env, CRASH_ENV: "shipment"}, cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=180)
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert [s["ShippingId"] for s in billbee_shipments(sandbox, order)] == [code]   # Billbee has it ...
    assert ledger(home)[shipment_ledger_key(order, code)].status == "pending"     # ... our record does not
    assert billbee_order(sandbox, order)["State"] == PAID                          # and Versendet waits for it

    sandbox.reset_stats("billbee")
    rerun = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert [s["ShippingId"] for s in billbee_shipments(sandbox, order)] == [code]   # still exactly one
    calls = billbee_calls(sandbox)
    assert "GET /shipment/shipments" in calls and not posts(calls, order)          # looked up, not re-sent
    assert billbee_order(sandbox, order)["State"] == SHIPPED
    entries = ledger(home)
    assert entries[shipment_ledger_key(order, code)].outcome == {"found_in_billbee": True}
    assert entries[status_ledger_key(order, SHIPPED)].status == "done"
    [summary] = json.loads(rerun.stdout)["integrations"]
    assert summary["status"] == "success" and summary["written"] == 1              # the state only


def test_a_shipment_call_that_timed_out_is_looked_up_before_it_is_sent_again(sandbox, bpp_env, tmp_path):
    home, config, _, warehouse, [order] = world_with_orders(sandbox, bpp_env, tmp_path, [(KNOWN[1], 1)])
    [code] = LabelService(warehouse).label(order, "dpd_classic")
    impatient = BillbeeClient(sandbox.billbee_url, credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD,
                              credentials.BILLBEE_API_KEY, pacer_dir=home / "pacing", timeout=(5, 1.0))
    sandbox.set_faults("billbee", slow_rate=1.0, slow_seconds=2.0, methods=["POST"])  # Billbee stores it late
    try:
        halted = writer(home, sandbox, config, billbee=impatient)
        report = halted.run()
    finally:
        sandbox.set_faults("billbee", slow_rate=0.0, slow_seconds=0.0, methods=None)
    assert halted.halted and "may have been executed" in halted.halted and report.counts["failed"] == 1
    assert ledger(home)[shipment_ledger_key(order, code)].status == "pending"
    deadline = time.time() + 10
    while not billbee_shipments(sandbox, order) and time.time() < deadline:
        time.sleep(0.2)
    assert [s["ShippingId"] for s in billbee_shipments(sandbox, order)] == [code]

    sandbox.reset_stats("billbee")
    report = writer(home, sandbox, config).run()                       # the next run (no wait: the look is due)
    assert report.counts["shipments_found"] == 1 and report.counts["shipments_added"] == 0
    assert [s["ShippingId"] for s in billbee_shipments(sandbox, order)] == [code]
    assert not posts(billbee_calls(sandbox), order) and billbee_order(sandbox, order)["State"] == SHIPPED


def test_boxes_that_never_get_a_tracking_code_are_given_up_after_the_wait(sandbox, bpp_env, tmp_path):
    home, config, _, warehouse, [order] = world_with_orders(sandbox, bpp_env, tmp_path, [(KNOWN[2], 1)])
    LabelService(warehouse).fail(order, "Adresse ungültig: Hausnummer fehlt")
    sandbox.reset_stats("billbee")
    waiting = writer(home, sandbox, config).run()
    assert waiting.counts["waiting_for_tracking"] == 1 and waiting.counts["label_errors"] == 1
    assert "Hausnummer fehlt" in waiting.waiting[0]["reason"]
    assert writer(home, sandbox, config, clock=timedelta(minutes=2)).run().counts["not_due"] == 1

    given_up = writer(home, sandbox, config, clock=timedelta(hours=49)).run()
    assert given_up.counts["expired"] == 1 and given_up.counts["shipments_added"] == 0
    [attention] = given_up.attention
    assert "within 48 h" in attention["reason"] and "Hausnummer fehlt" in attention["reason"]
    assert billbee_calls(sandbox) == [] and billbee_order(sandbox, order)["State"] == PAID
    assert StateStore(home).snapshot_keys(f"{GROUP}.tracking_watch") == set()
    assert writer(home, sandbox, config, clock=timedelta(hours=50)).run().read == 0   # not watched any more


def test_the_shipments_sensor_launches_on_packing_with_a_data_run_key(sandbox, bpp_env, tmp_path):
    home, config, _, warehouse, [order] = world_with_orders(sandbox, bpp_env, tmp_path, [(KNOWN[0], 1)])
    loaded = load_config(config)
    sensor = build_definitions(loaded, home).resolve_sensor_def(f"{GROUP}_packing_sensor")
    with dg.instance_for_test() as instance:
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=build_resources(loaded, home)))
    [request] = tick.run_requests
    [packing] = warehouse.packing_orders()
    assert request.run_key.endswith(f":{packing['id']}") and json.loads(tick.cursor)["id"] == packing["id"]
    assert request.tags["integration"] == GROUP


def test_labels_and_shipments_for_the_same_systems_are_refused(bpp_env, tmp_path):
    config = config_with(tmp_path, "  - {name: Etiketten, type: shipping_labels, source: pulpo-wms, target: "
                                   "billbee-shop}\n" + SHIPMENTS)
    result = subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "--config", str(config),
                             "--json"], env=bpp_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode not in (0, 137) and result.stdout == ""
    assert str(config) in result.stderr and 'integrations[1] "Sendungen"' in result.stderr
    assert "shipping_labels and shipments cannot both run" in result.stderr


# ---- pure functions ------------------------------------------------------------------------------

CARRIERS = {1: "DHL Express", 2: "DHL", 4: "DPD", 6: "GLS", 8: "Österr. Post"}


@pytest.mark.parametrize(("code", "carrier_map", "expected", "how"), [
    ("DHL", {}, 2, "name"),
    ("dhl_de", {}, 2, "name"),                     # the carrier's words start the code
    ("dhl_express", {}, 1, "name"),                # the longest such carrier wins
    ("DHL-Express-DE", {}, 1, "name"),
    ("dpd_classic", {}, 4, "name"),
    ("oesterr_post", {}, 8, "name"),               # umlauts and punctuation ignored
    ("dhlexpress", {}, None, "unmapped"),          # glued words are not guessed
    ("ups", {}, None, "unmapped"),                 # Billbee's list has no UPS
    ("ups", {"UPS": 5}, 5, "carrier_map"),         # map keys match case-insensitively; ids as they are
    ("sendcloud_dhl", {"sendcloud_dhl": "DHL"}, 2, "carrier_map"),
    ("x", {"x": "Hermes"}, None, "unmapped"),      # a mapped name Billbee does not list
    (None, {}, None, "unmapped"),
])
def test_carrier_matching(code, carrier_map, expected, how):
    match = match_carrier(code, CARRIERS, carrier_map)
    assert (match.carrier_id, match.how) == (expected, how)
    assert (match.note is None) == (expected is not None)


def test_recheck_backs_off_to_hourly():
    assert [recheck_after(n) for n in range(1, 8)] == [timedelta(minutes=m) for m in (5, 10, 20, 40, 60, 60, 60)]


def test_box_trackings_keep_codes_once_and_report_label_errors():
    rows = [ShipmentTracking(tracking_code=" A1 ", carrier_code="dhl"), ShipmentTracking(tracking_code="A1"),
            ShipmentTracking(error_message="Adresse ungültig"), ShipmentTracking(tracking_code="")]
    codes, errors = box_trackings(7, rows)
    assert [(t.box_id, t.code, t.carrier_code) for t in codes] == [(7, "A1", "dhl")]
    assert errors == ["Adresse ungültig"]
