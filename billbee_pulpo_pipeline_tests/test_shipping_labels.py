"""The shipping-labels flow, end to end over HTTP against the session sandboxes: Billbee orders (created in
the Billbee sandbox) are imported into PULPO by the sales-orders flow, the warehouse packs them into
boxes through PULPO's packing endpoints, and `versandetiketten` buys one Billbee label per box, writes
its tracking onto the PULPO box and attaches the PDF. Runs go through `dg.materialize` of the group and,
for the crash tests, through `billbee-pulpo sync` in a subprocess killed right after the label call.
Unit tests of the pure decisions (`mapping/labels.py`) need no network.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient, ShipWithLabelRequest
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.common import flow_for
from billbee_pulpo_pipeline.defs.crash import CRASH_ENV
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.defs.shipping_labels.writer import LabelWriter
from billbee_pulpo_pipeline.mapping import labels as lm
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.sandboxes.pulpo.warehouse import WarehouseSimulator
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT
from billbee_pulpo_pipeline_tests.test_orders_writing import KNOWN, Shop, fresh_world
from billbee_pulpo_pipeline_tests.test_orders_writing import sync as sync_orders

GROUP = "versandetiketten"
WRITER_OP = f"{GROUP}__billbee_labels"
PULPO_ACCOUNT = "pulpo_wms"
DHL, DHL_PAKET = 20_000_000_000_012_101, 20_000_000_000_083_771
DHL_EXPRESS, DHL_EXPRESS_WORLDWIDE = 20_000_000_000_012_103, 20_000_000_000_083_776
LABEL_CALL = "POST /api/v1/shipment/shipwithlabel"
SYNC = [sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "Versandetiketten", "--json"]


# ---- the world -----------------------------------------------------------------------------------


def paid_order(shop: Shop, number: str, quantity: int, provider: int = DHL, product: int = DHL_PAKET,
               sku: str = KNOWN[0]) -> str:
    return shop.order([(sku, quantity)], number=number, ShippingProviderId=provider,
                      ShippingProviderProductId=product)


def pack(sandbox, order_boxes: dict[str, list[float]], seed: int = 3) -> dict[str, int]:
    """The warehouse releases and picks every imported order, then packs the listed Billbee orders, one
    unit per box, with these box weights (kg): Billbee order id -> PULPO packing order id."""
    warehouse = WarehouseSimulator(sandbox.pulpo_url, seed=seed, correction_probability=0.0)
    try:
        warehouse.step()   # queue -> picking
        warehouse.step()   # picking -> packing: packing orders in queue
        orders = {o["id"]: o["external_order_num"] for o in warehouse._all("/sales/orders", "sales_orders")}
        packed = {}
        for packing in warehouse._all("/packing/orders", "packing_orders", state="queue"):
            billbee_id = orders.get(packing["sales_order_id"])
            if billbee_id not in order_boxes:
                continue
            pid = packing["id"]
            warehouse._call("POST", f"/packing/orders/{pid}/accept")
            [item] = packing["items"]
            for number, weight in enumerate(order_boxes[billbee_id], start=1):
                warehouse._call("POST", f"/packing/orders/{pid}/box", data={
                    "product_id": item["product_id"], "box_number": number, "quantity": 1, "weight": weight,
                    "length": 30, "width": 20, "height": 10})
            warehouse._call("POST", f"/packing/orders/{pid}/finish")
            packed[billbee_id] = pid
        assert set(packed) == set(order_boxes), packed
        return packed
    finally:
        warehouse.close()


def pulpo(home: Path, sandbox) -> PulpoClient:
    return PulpoClient(sandbox.pulpo_url, credentials.PULPO_USERNAME, credentials.PULPO_PASSWORD,
                       warehouse_id=1, token_dir=home / "tokens")


def billbee_order(shop: Shop, order_id: str) -> dict[str, Any]:
    """The order as the Billbee sandbox has it (read as the simulator: not throttled, not counted)."""
    response = shop.session.get(f"{shop.url}/orders/{order_id}", timeout=30)
    response.raise_for_status()
    return response.json()["Data"]


def label_calls(sandbox) -> list[dict[str, Any]]:
    return [r["body"] for r in sandbox.requests("billbee", limit=5000)
            if f"{r['method']} {r['path']}" == LABEL_CALL and not r["simulator"]]


def boxes_of(client: PulpoClient, packing_id: int) -> list[dict[str, Any]]:
    """Each box with its trackings and attachments, in box order."""
    boxes = sorted(client.list_boxes(packing_id), key=lambda b: b.box_number or 0)
    attachments = client.box_attachments([b.id for b in boxes])  # type: ignore[misc]
    return [{"id": b.id, "trackings": client.list_shipment_trackings(packing_id, b.id),  # type: ignore[arg-type]
             "attachments": attachments[b.id]} for b in boxes]  # type: ignore[index]


def attached_pdf(client: PulpoClient, attachment: dict[str, Any]) -> bytes:
    """The label as PULPO stored it: the sandbox keeps the spec's `path` (a data URL) per attachment."""
    record = client._request("GET", "/attachment/" + attachment["url"].rsplit("/", 1)[-1])
    head, _, data = record["path"].partition(",")
    assert head == "data:application/pdf;base64"
    return base64.b64decode(data)


def sync_labels(home: Path, *, dry_run: bool = False, retry_refused: bool = False) -> dict[str, Any]:
    """Materialize the labels group once; the writer's metadata and its checks' outcomes."""
    config = load_config(EXAMPLE_CONFIG)
    defs = build_definitions(config, home)
    result = dg.materialize(list(defs.assets), selection=dg.AssetSelection.groups(GROUP),
                            resources=build_resources(config, home),
                            run_config={"ops": {WRITER_OP: {"config": {"dry_run": dry_run,
                                                                       "retry_refused": retry_refused}}}})
    assert result.success
    [event] = [e for e in result.get_asset_materialization_events()
               if e.asset_key == dg.AssetKey([GROUP, "billbee_labels"])]
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    metadata["checks"] = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
                          for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    return metadata


def read_packing_orders(home: Path) -> None:
    """Materialize only the read asset: the finished packing orders go into the flow's snapshot."""
    config = load_config(EXAMPLE_CONFIG)
    defs = build_definitions(config, home)
    result = dg.materialize(list(defs.assets), resources=build_resources(config, home),
                            selection=dg.AssetSelection.assets(dg.AssetKey([GROUP, "pulpo_finished_packing_orders"])))
    assert result.success


def ledger(home: Path) -> dict[str, Any]:
    return {e.key: e for e in StateStore(home).ledger_entries(GROUP)}


def imported(sandbox, home: Path, shop: Shop) -> None:
    """The sales-orders flow brings the shop's new orders into PULPO (and records the order mapping)."""
    metadata = sync_orders(home, shop)
    assert metadata["created"] >= 1


# ---- end to end ----------------------------------------------------------------------------------


def test_one_label_per_box_with_tracking_and_pdf_then_nothing(sandbox, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    fresh_world(sandbox)
    shop = Shop(sandbox)
    two_boxes, one_box = paid_order(shop, "L-2", 2), paid_order(shop, "L-1", 1, sku=KNOWN[1])
    imported(sandbox, home, shop)
    packing = pack(sandbox, {two_boxes: [1.25, 0.8], one_box: [0.4]})
    sandbox.reset_stats("billbee")

    plan = sync_labels(home, dry_run=True)
    assert plan["plan"].count("| label |") == 3 and label_calls(sandbox) == []
    client = pulpo(home, sandbox)
    assert all(not b["trackings"] for b in boxes_of(client, packing[two_boxes]))

    metadata = sync_labels(home)
    assert (metadata["labels_created"], metadata["trackings_written"], metadata["attachments"]) == (3, 3, 3)
    assert metadata["checks"] == {"labels_plan_safe": True, "boxes_accounted_for": True,
                                  "no_quarantined_records": True, "no_writes_need_attention": True}
    calls = label_calls(sandbox)
    assert len(calls) == 3
    first, second = [c for c in calls if str(c["OrderId"]) == two_boxes]
    assert (first["WeightInGram"], second["WeightInGram"]) == (1250, 800)
    assert first["Dimension"] == {"length": 30.0, "width": 20.0, "height": 10.0}
    assert (first["ClientReference"], second["ClientReference"]) == ("L-2 1/2", "L-2 2/2")
    assert (first["ChangeStateToSend"], second["ChangeStateToSend"]) == (False, True)  # Versendet with the last
    for order_id, count in ((two_boxes, 2), (one_box, 1)):
        order = billbee_order(shop, order_id)
        shipments = {s["ShippingId"]: s for s in order["ShippingIds"]}
        assert len(shipments) == count and order["State"] == 4
        for box in boxes_of(client, packing[order_id]):
            [tracking] = box["trackings"]
            assert tracking.tracking_code in shipments and tracking.carrier_code == "dhl"
            assert tracking.tracking_url == shipments[tracking.tracking_code]["TrackingUrl"]
            [attachment] = box["attachments"]
            pdf = attached_pdf(client, attachment)
            assert pdf.startswith(b"%PDF") and f"Sendung {tracking.tracking_code}".encode() in pdf

    sandbox.reset_stats("billbee")
    again = sync_labels(home)
    assert label_calls(sandbox) == [] and again["records_written"] == 0
    assert all(len(billbee_order(shop, o)["ShippingIds"]) == n for o, n in ((two_boxes, 2), (one_box, 1)))


def test_billbee_refusal_is_quarantined_the_other_boxes_go_on_and_it_is_retried_once_fixed(sandbox, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    fresh_world(sandbox)
    shop = Shop(sandbox)
    express = paid_order(shop, "X-1", 1, DHL_EXPRESS, DHL_EXPRESS_WORLDWIDE)   # needs a package type
    parcel = paid_order(shop, "P-1", 1, sku=KNOWN[1])
    imported(sandbox, home, shop)
    packing = pack(sandbox, {express: [2.0], parcel: [0.5]})
    client = pulpo(home, sandbox)

    metadata = sync_labels(home)
    assert (metadata["labels_created"], metadata["quarantined"]) == (1, 1)
    assert "Bitte einen Verpackungstyp auswählen" in metadata["quarantine_preview"]
    [entry] = StateStore(home).quarantine_list(GROUP, kind="box")
    [express_box] = boxes_of(client, packing[express])
    assert entry.record_key == str(express_box["id"]) and "package type (Verpackungstyp)" in entry.reason
    assert ledger(home)[f"label:{PULPO_ACCOUNT}:{express_box['id']}"].status == "failed"
    assert express_box["trackings"] == [] and billbee_order(shop, express)["ShippingIds"] == []
    [parcel_box] = boxes_of(client, packing[parcel])
    assert len(parcel_box["trackings"]) == 1 and len(parcel_box["attachments"]) == 1

    sandbox.reset_stats("billbee")
    waiting = sync_labels(home)   # not due yet: the refused call is not repeated
    assert label_calls(sandbox) == [] and waiting["waiting"] == 1

    sandbox.control("PUT", "billbee", f"orders/{express}/packagetype", {"assigned": True})
    fixed = sync_labels(home, retry_refused=True)
    assert fixed["labels_created"] == 1 and len(label_calls(sandbox)) == 1
    assert len(billbee_order(shop, express)["ShippingIds"]) == 1
    assert StateStore(home).quarantine_list(GROUP, kind="box") == []
    [express_box] = boxes_of(client, packing[express])
    assert len(express_box["trackings"]) == 1 and len(express_box["attachments"]) == 1


def test_sigkill_after_the_label_call_makes_no_second_label(sandbox, bpp_env):
    """Killed after Billbee made box 1's label and its answer was stored, before the ledger said so: the
    rerun finds the label among the order's Billbee shipments, labels box 2 and completes both boxes."""
    home = Path(bpp_env["BPP_HOME"])
    fresh_world(sandbox)
    shop = Shop(sandbox)
    order_id = paid_order(shop, "K-2", 2)
    imported(sandbox, home, shop)
    packing = pack(sandbox, {order_id: [1.0, 1.5]})
    client = pulpo(home, sandbox)
    first_box = boxes_of(client, packing[order_id])[0]["id"]

    killed = subprocess.run(SYNC, env={**bpp_env, CRASH_ENV: "label"}, cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert len(billbee_order(shop, order_id)["ShippingIds"]) == 1           # Billbee made the label ...
    assert ledger(home)[f"label:{PULPO_ACCOUNT}:{first_box}"].status == "pending"  # ... our record did not

    sandbox.reset_stats("billbee")
    rerun = subprocess.run(SYNC, env=bpp_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    shipments = billbee_order(shop, order_id)["ShippingIds"]
    assert len(shipments) == 2                                              # one label per box, no more
    assert len(label_calls(sandbox)) == 1                                   # only box 2 was requested
    recovered = ledger(home)[f"label:{PULPO_ACCOUNT}:{first_box}"]
    assert recovered.status == "done" and recovered.outcome["recovered"] is True
    assert recovered.remote_id == shipments[0]["ShippingId"]
    for box in boxes_of(client, packing[order_id]):
        assert len(box["trackings"]) == 1 and len(box["attachments"]) == 1
    assert {b["trackings"][0].tracking_code for b in boxes_of(client, packing[order_id])} == \
        {s["ShippingId"] for s in shipments}
    [summary] = json.loads(rerun.stdout)["integrations"]
    assert summary["status"] == "success" and summary["quarantined"] == 0


def test_sigkill_before_the_answer_is_stored_recovers_the_label_and_reports_the_lost_pdf(sandbox, bpp_env):
    """Killed the moment Billbee answered, before anything was stored: the label PDF existed only in that
    answer. The rerun buys no second label, writes the tracking and asks the merchant to print the label
    from Billbee."""
    home = Path(bpp_env["BPP_HOME"])
    fresh_world(sandbox)
    shop = Shop(sandbox)
    order_id = paid_order(shop, "K-1", 1)
    imported(sandbox, home, shop)
    packing = pack(sandbox, {order_id: [0.9]})

    killed = subprocess.run(SYNC, env={**bpp_env, CRASH_ENV: "label_call"}, cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr[-2000:]
    sandbox.reset_stats("billbee")
    rerun = subprocess.run(SYNC, env=bpp_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    [shipment] = billbee_order(shop, order_id)["ShippingIds"]
    assert label_calls(sandbox) == []
    [box] = boxes_of(pulpo(home, sandbox), packing[order_id])
    [tracking] = box["trackings"]
    assert tracking.tracking_code == shipment["ShippingId"] and box["attachments"] == []
    attach = ledger(home)[f"attach:{PULPO_ACCOUNT}:{box['id']}"]
    assert attach.status == "attention" and "print the label from the order in Billbee" in attach.message


def test_a_label_call_whose_answer_is_lost_is_looked_up_before_it_is_made_again(sandbox, bpp_env):
    """Billbee makes the label but its answer comes after the client gave up (`outcome_unknown`): the run
    stops with the entry 'pending'; the next one finds the label among the order's shipments."""
    home = Path(bpp_env["BPP_HOME"])
    fresh_world(sandbox)
    shop = Shop(sandbox)
    order_id = paid_order(shop, "T-1", 1)
    imported(sandbox, home, shop)
    packing = pack(sandbox, {order_id: [0.7]})
    read_packing_orders(home)
    config = load_config(EXAMPLE_CONFIG)
    flow = flow_for(next(i for i in config.integrations if i.slug == GROUP), config)
    impatient = BillbeeClient(sandbox.billbee_url, credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD,
                              credentials.BILLBEE_API_KEY, pacer_dir=home / "pacing", timeout=(5, 1.5))
    sandbox.set_faults("billbee", slow_rate=1.0, slow_seconds=3.0, methods=["POST"])
    try:
        writer = LabelWriter(flow, impatient, pulpo(home, sandbox), StateStore(home))
        writer.run()
    finally:
        sandbox.set_faults("billbee", slow_rate=0.0, slow_seconds=0.0, methods=None)
    assert writer.halted and "looks at the order's shipments" in writer.halted and writer.problems == []
    [box] = boxes_of(pulpo(home, sandbox), packing[order_id])
    assert ledger(home)[f"label:{PULPO_ACCOUNT}:{box['id']}"].status == "pending"
    deadline = time.monotonic() + 15
    while not billbee_order(shop, order_id)["ShippingIds"] and time.monotonic() < deadline:
        time.sleep(0.5)  # the sandbox answers late, but it made the label
    [made] = billbee_order(shop, order_id)["ShippingIds"]

    sandbox.reset_stats("billbee")
    metadata = sync_labels(home)
    assert (metadata["labels_recovered"], metadata["labels_created"]) == (1, 0) and label_calls(sandbox) == []
    [box] = boxes_of(pulpo(home, sandbox), packing[order_id])
    assert [t.tracking_code for t in box["trackings"]] == [made["ShippingId"]]
    assert len(billbee_order(shop, order_id)["ShippingIds"]) == 1


def test_billbee_lists_a_new_label_as_the_spec_says_the_recovery_reads_it(sandbox, bpp_env):
    """What recognising a lost label relies on: the label's shipment is listed for the order, after the
    order's earlier shipments (`minimumShipmentId`: "new shipments have a greater id"), with the provider
    and product that were sent."""
    home = Path(bpp_env["BPP_HOME"])
    shop = Shop(sandbox)
    order_id = paid_order(shop, "REC-1", 1)
    shop.session.post(f"{shop.url}/orders/{order_id}/shipment", json={"ShippingId": "BY-HAND-1"},
                      timeout=30).raise_for_status()
    client = BillbeeClient(sandbox.billbee_url, credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD,
                           credentials.BILLBEE_API_KEY, pacer_dir=home / "pacing")
    [earlier] = list(client.iter_shipments(order_id=int(order_id)))
    made = client.ship_with_label(ShipWithLabelRequest(OrderId=int(order_id), ProviderId=DHL, ProductId=DHL_PAKET,
                                                       ChangeStateToSend=False))
    newer = [s.model_dump(mode="json") for s in client.iter_shipments(
        order_id=int(order_id), minimum_shipment_id=int(earlier.BillbeeId) + 1)]  # type: ignore[arg-type]
    assert [s["ShippingId"] for s in newer] == [made.ShippingId]
    found = lm.recognise_label(newer, provider_id=DHL, product_id=DHL_PAKET,
                               after_shipment_id=int(earlier.BillbeeId), claimed_by={}, box_id="1")  # type: ignore[arg-type]
    assert found is not None and found["ShippingId"] == made.ShippingId


# ---- pure decisions ------------------------------------------------------------------------------


def shipment(billbee_id: int, tracking: str, product: int = DHL_PAKET, kind: int = 0) -> dict[str, Any]:
    return {"BillbeeId": billbee_id, "ShippingId": tracking, "ShippingProviderId": DHL,
            "ShippingProviderProductId": product, "ShipmentType": kind}


def test_a_lost_label_is_recognised_only_among_new_unclaimed_shipments_of_the_product_sent():
    found = [shipment(10, "OLD"), shipment(12, "RETURN", kind=1), shipment(13, "OTHER-PRODUCT", product=1),
             shipment(14, "BOX-1"), shipment(16, "NEXT"), shipment(15, "MINE")]
    recognise = lambda claimed: lm.recognise_label(  # noqa: E731
        found, provider_id=DHL, product_id=DHL_PAKET, after_shipment_id=10, claimed_by=claimed, box_id="7")
    assert recognise({"BOX-1": "6"})["ShippingId"] == "MINE"                # lowest new one no other box owns
    assert recognise({"BOX-1": "6", "NEXT": "7"})["ShippingId"] == "NEXT"   # the one recorded for this box
    assert recognise({"BOX-1": "6", "MINE": "8", "NEXT": "9"}) is None      # Billbee made none: call again
    assert lm.foreign_shipments(found, {"BOX-1": "6", "MINE": "7"}) == ["OLD", "OTHER-PRODUCT", "NEXT"]


def test_the_carrier_comes_from_the_provider_map_else_from_the_order():
    provider_map = {3: (DHL_EXPRESS, DHL_EXPRESS_WORLDWIDE)}
    assert lm.choose_carrier(3, provider_map, DHL, DHL_PAKET) == lm.Carrier(DHL_EXPRESS, DHL_EXPRESS_WORLDWIDE,
                                                                             "provider_map")
    assert lm.choose_carrier(4, provider_map, DHL, DHL_PAKET) == lm.Carrier(DHL, DHL_PAKET, "order")
    reason = lm.choose_carrier(4, provider_map, None, None)
    assert isinstance(reason, str) and "provider_map row for PULPO shipping method 4" in reason


def test_box_measures_and_what_stops_a_label():
    assert (lm.weight_grams(1.2346), lm.weight_grams(0), lm.weight_grams(None)) == (1235, None, None)
    assert lm.dimensions_cm(30, 20, 10) == {"length": 30.0, "width": 20.0, "height": 10.0}
    assert lm.dimensions_cm(30, None, 10) is None
    assert lm.box_problem(None, 1) is None                  # Billbee weighs a single box from the articles
    assert "weigh the box in PULPO" in lm.box_problem(None, 2)  # type: ignore[operator]
    assert lm.client_reference("SIM1-000042", 2, 3) == "SIM1-000042 2/3"
    assert lm.client_reference(None, 1, 1) is None
    assert lm.carrier_code("DHL Express") == "dhl_express"


def test_refused_labels_wait_longer_each_time_up_to_a_day():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    waits = [lm.next_retry(n, at) - at for n in (1, 2, 3, 4, 9)]
    assert waits == [timedelta(minutes=15), timedelta(hours=1), timedelta(hours=4), timedelta(hours=24),
                     timedelta(hours=24)]
    reason = lm.refusal_reason("42", "box 1 of 1", 22, "Bitte einen Verpackungstyp auswählen")
    assert reason.startswith("Billbee refused the label: Bitte einen Verpackungstyp") and "order 42" in reason
    assert "To fix: assign a package type" in reason


@pytest.mark.parametrize(("row", "ledger_status", "problem"), [
    ({"billbee_order_id": None}, None, "no Billbee order"),
    ({"provider_id": None}, None, "no provider/product"),
    ({"weight_grams": None, "boxes_in_order": 2}, None, "no weight"),
    ({"pulpo_tracking": "0034"}, None, "already has tracking"),
    ({}, "done", "label already done"),
    ({}, "pending", "label already pending"),
])
def test_the_blocking_check_refuses_a_plan_that_would_buy_a_label_it_must_not(row, ledger_status, problem):
    good = {"box_id": "7", "billbee_order_id": "1", "provider_id": DHL, "product_id": DHL_PAKET,
            "weight_grams": 900, "boxes_in_order": 2, "pulpo_tracking": None}
    assert lm.plan_problems([good], {}) == []
    assert lm.plan_problems([good, good], {})[0]["problem"] == "planned twice"
    problems = lm.plan_problems([{**good, **row}], {"7": ledger_status} if ledger_status else {})
    assert [p for p in problems if problem in p["problem"]]
