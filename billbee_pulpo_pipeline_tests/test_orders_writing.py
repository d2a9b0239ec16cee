"""The write side of the sales-order flow, end to end over HTTP against the session sandboxes: Billbee
orders (created in the Billbee sandbox) → `billbee_orders` → `pulpo_sales_orders` → PULPO sandbox.

Runs go through `dg.materialize` of the whole integration group for the current hour and once through
the `billbee-pulpo sync` command in a subprocess (the crash test). The Billbee sandbox has no API to
edit an order's address; an edit is simulated by storing the edited order in `<slug>.billbee_orders`
exactly as the reader stores orders (full JSON, hash of `content_fields(order_fields(order))`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import requests

from billbee_pulpo_pipeline.clients.billbee.models import Order
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.common import canonical_json, fingerprint, flow_for, mapping_kind
from billbee_pulpo_pipeline.defs.crash import CRASH_ENV
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.defs.sales_orders.writer import OrderWriter
from billbee_pulpo_pipeline.mapping.orders import content_fields, order_fields
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.sandboxes.pulpo.warehouse import WarehouseSimulator
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT

GROUP = "verkaufsauftraege"
WRITER_OP = f"{GROUP}__sales_orders"
CREATE_ENDPOINTS = ("POST /api/v1/sales/bulk/orders", "POST /api/v1/sales/orders")
ORDERS = f"{GROUP}.billbee_orders"
PULPO_PRODUCTS = 100       # PULPO knows the catalogue's first 100 products (SKU-0000000 ..)
HOURLY = 696               # historic Billbee orders one per hour: the current hour starts empty
KNOWN = ["SKU-0000001", "SKU-0000002", "SKU-0000003"]
UNKNOWN = "SKU-0000250"    # sold in Billbee, not (yet) a PULPO product
UNKNOWN_ARTICLE = 20_000_000_000_001_250  # its Billbee article (catalogue index 250)
PAID, CANCELLED, ORDERED = 3, 8, 1
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
SECOND_SHOP = 20_000_000_000_000_712  # the sandbox's Amazon account


# ---- helpers -------------------------------------------------------------------------------------


def fresh_world(sandbox) -> None:
    sandbox.reset("billbee", orders=HOURLY)
    sandbox.reset("pulpo", products=PULPO_PRODUCTS, stock=True)


def hour_key(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%d-%H:00")


class Shop:
    """The merchant's side: orders in the Billbee sandbox (as the simulated shop, so never throttled)."""

    def __init__(self, sandbox) -> None:
        self.url = sandbox.billbee_url
        self.session = requests.Session()
        self.session.auth = (credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD)
        self.session.headers.update({"X-Billbee-Api-Key": credentials.BILLBEE_API_KEY,
                                     **credentials.SIMULATOR_HEADERS})
        self.touched: set[str] = set()   # hour partitions the changes fell into

    def _changed(self, call: Callable[[], requests.Response]) -> requests.Response:
        before = hour_key()
        response = call()
        response.raise_for_status()
        self.touched |= {before, hour_key()}
        return response

    def order(self, lines: list[tuple[str | None, float]], *, state: int = PAID, number: str | None = None,
              address: dict[str, str] | None = None, **extra: Any) -> str:
        address = address or {"FirstName": "Erika", "LastName": "Mustermann", "Street": "Hauptstraße",
                              "HouseNumber": "5", "Zip": "10115", "City": "Berlin", "CountryISO2": "DE"}
        body = {"CreatedAt": datetime.now(UTC).isoformat(), "State": state, "OrderNumber": number,
                "ShippingAddress": address, "InvoiceAddress": address,
                "OrderItems": [{"Product": {"SKU": sku, **({} if sku else {"Id": "Versand", "Weight": 0})},
                                "Quantity": qty} for sku, qty in lines], **extra}
        response = self._changed(lambda: self.session.post(f"{self.url}/orders", json=body, timeout=30))
        return str(response.json()["Data"]["BillBeeOrderId"])

    def set_state(self, order_id: str, state: int) -> None:
        self._changed(lambda: self.session.put(f"{self.url}/orders/{order_id}/orderstate",
                                               json={"NewStateId": state}, timeout=30))


def sync(home: Path, shop: Shop, *, dry_run: bool = False) -> dict[str, Any]:
    """Materialize the whole group for every hour the shop changed orders in; the writer's metadata."""
    config = load_config(EXAMPLE_CONFIG)
    defs = build_definitions(config, home)
    run_config = {"ops": {WRITER_OP: {"config": {"dry_run": dry_run}}}}
    metadata: dict[str, Any] = {}
    for partition in sorted(shop.touched or {hour_key()}):
        result = dg.materialize(list(defs.assets), selection=dg.AssetSelection.groups(GROUP),
                                resources=build_resources(config, home), partition_key=partition,
                                run_config=run_config)
        assert result.success
        [event] = [e for e in result.get_asset_materialization_events()
                   if e.asset_key == dg.AssetKey([GROUP, "pulpo_sales_orders"])]
        metadata = {k: v.value for k, v in event.materialization.metadata.items()}
        checks = [e.asset_check_evaluation_data for e in result.all_events
                  if e.event_type_value == "ASSET_CHECK_EVALUATION"
                  and e.asset_check_evaluation_data.check_name == "importable_orders_accounted_for"]
        metadata["check_passed"] = checks[-1].passed
    shop.touched = set()
    return metadata


def pulpo_client(home: Path, sandbox) -> PulpoClient:
    return PulpoClient(sandbox.pulpo_url, credentials.PULPO_USERNAME, credentials.PULPO_PASSWORD,
                       warehouse_id=1, token_dir=home / "tokens")


def pulpo_orders(sandbox) -> list[dict[str, Any]]:
    """Every sales order in the PULPO sandbox (read as the simulator, so it costs the product nothing)."""
    session = requests.Session()
    session.headers.update(credentials.SIMULATOR_HEADERS)
    token = session.post(f"{sandbox.pulpo_url}/auth", json={
        "grant_type": "password", "username": credentials.PULPO_USERNAME,
        "password": credentials.PULPO_PASSWORD, "scope": "general"}, timeout=30).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    rows, offset = [], 0
    while True:
        page = session.get(f"{sandbox.pulpo_url}/sales/orders", params={"limit": 100, "offset": offset},
                           timeout=30).json()
        rows += page["sales_orders"]
        offset += len(page["sales_orders"])
        if offset >= page["total_results"] or not page["sales_orders"]:
            return rows


def by_external(orders: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for order in orders:
        out.setdefault(order["external_order_num"], []).append(order)
    return out


def pulpo_writes(sandbox) -> list[str]:
    return [f"{r['method']} {r['path']}" for r in sandbox.requests("pulpo", limit=5000)
            if r["method"] in WRITES and not r["simulator"] and not r["path"].endswith("/auth")]


def edit_address(home: Path, order_id: str, **changes: str) -> None:
    """An address edit in Billbee, stored as the reader stores a changed order (a newer version, so a
    re-read of the unedited sandbox order is stale and does not replace it)."""
    store = StateStore(home)
    order = Order.model_validate(json.loads(store.snapshot_rows(ORDERS, [order_id])[order_id]))
    order.ShippingAddress = order.ShippingAddress.model_copy(update=changes)
    order.LastModifiedAt = datetime.now(UTC)
    fields = order_fields(order)
    store.upsert_snapshot(ORDERS, [(order_id, fingerprint(content_fields(fields)),
                                    canonical_json(order.model_dump(mode="json", by_alias=True)))])


def ledger(home: Path) -> dict[str, tuple[str, str | None]]:
    return {e.key: (e.status, e.message) for e in StateStore(home).ledger_entries(GROUP)}


# ---- tests ---------------------------------------------------------------------------------------


def test_paid_orders_imported_once_then_nothing_then_cancelled(sandbox, bpp_env):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop = Shop(sandbox)
    unicode_address = {"FirstName": "Zoë", "LastName": "Ørsted-Müller 🦄", "Company": "Straßenbäckerei Öß",
                       "Street": "Äußere Weißenburger Straße", "HouseNumber": "7½", "Zip": "81667",
                       "City": "München", "CountryISO2": "DE", "Email": "zoe@example.com"}
    paid = [shop.order([(KNOWN[0], 2), (None, 1)], number="W-1", address=unicode_address),
            shop.order([(KNOWN[1], 1), (KNOWN[2], 3)], number="W-2"),
            shop.order([(KNOWN[0], 1)], number="")]                    # no number: the Billbee id is used
    twin = shop.order([(KNOWN[1], 1)], number="W-2", ApiAccountId=SECOND_SHOP)  # another shop, same number
    unpaid = shop.order([(KNOWN[0], 1)], state=ORDERED, number="W-4")

    plan = sync(home, shop, dry_run=True)
    assert plan["dry_run"] is True and pulpo_orders(sandbox) == [] and ledger(home) == {}
    assert plan["plan"].count("would create") == 4 and plan["records_written"] == 0

    sandbox.reset_stats("pulpo")
    first = sync(home, shop)
    orders = by_external(pulpo_orders(sandbox))
    assert sorted(orders) == sorted([*paid, twin])                     # one each; the unpaid one not
    assert all(len(copies) == 1 for copies in orders.values())
    assert first["created"] == 4 and first["quarantined"] == 0 and first["records_written"] == 4
    assert StateStore(home).quarantine_list(GROUP, kind="order") == []
    assert orders[twin][0]["order_num"] == f"W-2-{SECOND_SHOP}"        # the other shop's W-2: numbered apart
    assert orders[paid[1]][0]["order_num"] == "W-2"
    assert first["check_passed"] is True and first["pulpo_429"] == 0
    assert pulpo_writes(sandbox).count("POST /api/v1/sales/bulk/orders") == 1

    w1 = orders[paid[0]][0]
    assert len(paid[0]) == 17 and w1["external_order_num"] == paid[0]   # 17-digit ids exact
    assert w1["order_num"] == "W-1" and orders[paid[2]][0]["order_num"] == paid[2]
    assert w1["ship_to"]["name"] == "Zoë Ørsted-Müller 🦄"
    assert w1["ship_to"]["company_name"] == "Straßenbäckerei Öß"
    assert w1["ship_to"]["address"]["street"] == "Äußere Weißenburger Straße"
    assert w1["ship_to"]["address"]["house_nr"] == "7½"
    assert [i["quantity"] for i in w1["items"]] == [2]                 # the shipping-fee line is left out
    assert json.loads(w1["attributes"])["billbee_order_id"] == paid[0]
    store = StateStore(home)
    flow = flow_for(load_config(EXAMPLE_CONFIG).integration(GROUP), load_config(EXAMPLE_CONFIG))
    assert store.get_mapping(mapping_kind("order", flow), paid[0]).extra["order_num"] == "W-1"
    assert store.get_mapping(mapping_kind("order", flow), unpaid) is None

    sandbox.reset_stats("pulpo")
    again = sync(home, shop)                                           # nothing changed
    assert pulpo_writes(sandbox) == [] and again["records_written"] == 0
    assert again["created"] == 0 and again["quarantined"] == 0

    # paid[2]: an earlier run cancelled it in PULPO and died before its ledger record
    store.ledger_begin(f"order:cancel:{paid[2]}", GROUP, "cancel")
    pulpo_client(home, sandbox).cancel_sales_order(orders[paid[2]][0]["id"])
    for order_id in (paid[1], paid[2], unpaid):                        # unpaid: never in PULPO
        shop.set_state(order_id, CANCELLED)
    cancelled = sync(home, shop)
    assert cancelled["cancelled"] == 2 and cancelled["skipped"] == 1 and cancelled["attention"] == 0
    states = {k: v[0]["state"] for k, v in by_external(pulpo_orders(sandbox)).items()}
    assert states == {paid[0]: "queue", paid[1]: "cancelled", paid[2]: "cancelled", twin: "queue"}
    assert {ledger(home)[f"order:cancel:{i}"][0] for i in paid[1:]} == {"done"}
    sandbox.reset_stats("pulpo")
    assert sync(home, shop)["records_written"] == 0 and pulpo_writes(sandbox) == []


def test_edits_and_cancellations_the_warehouse_overtook(sandbox, bpp_env):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop = Shop(sandbox)
    shipped, picked, waiting = (shop.order([(sku, 1)], number=f"E-{n}") for n, sku in enumerate(KNOWN))
    assert sync(home, shop)["created"] == 3

    edit_address(home, waiting, Street="Neue Straße", City="Köln")      # PULPO still has it in queue
    updated = sync(home, shop)
    assert updated["updated"] == 1 and updated["attention"] == 0
    assert by_external(pulpo_orders(sandbox))[waiting][0]["ship_to"]["address"]["street"] == "Neue Straße"

    warehouse = WarehouseSimulator(sandbox.pulpo_url)
    warehouse.step()                                                   # every order: queue -> picking
    edit_address(home, picked, Street="Zu spät")
    late = sync(home, shop)
    assert late["attention"] == 1 and late["updated"] == 0
    assert "not updatable: PULPO order is in state picking" in late["attention_preview"]
    assert ledger(home)[next(k for k in ledger(home) if k.startswith(f"order:update:{picked}"))] == (
        "attention", "not updatable: PULPO order is in state picking")

    warehouse.ship_all()
    warehouse.close()
    assert by_external(pulpo_orders(sandbox))[shipped][0]["state"] == "ended"
    shop.set_state(shipped, CANCELLED)
    refused = sync(home, shop)                                         # the run succeeds
    assert refused["attention"] == 1 and refused["cancelled"] == 0
    status, message = ledger(home)[f"order:cancel:{shipped}"]
    assert status == "attention" and "can not be cancelled" in message
    assert by_external(pulpo_orders(sandbox))[shipped][0]["state"] == "ended"


def test_order_waits_for_its_product_and_goes_through_without_help(sandbox, bpp_env):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop = Shop(sandbox)
    waiting = shop.order([(KNOWN[0], 1), (UNKNOWN, 2)], number="Q-1")
    fractional = shop.order([(KNOWN[0], 1.5)], number="Q-2")
    first = sync(home, shop)
    assert first["quarantined"] == 2 and first["created"] == 0 and pulpo_orders(sandbox) == []
    assert first["check_passed"] is True                               # quarantined with a reason counts
    reasons = {q.record_key: q.reason for q in StateStore(home).quarantine_list(GROUP, kind="order")}
    # The products flow has not read the article yet: the SKU is looked up, the article named for the merchant.
    assert reasons == {waiting: f"waiting for product {UNKNOWN} (Billbee article {UNKNOWN_ARTICLE})",
                       fractional: f"quantity 1.5 of SKU {KNOWN[0]} is not a whole number; PULPO counts units"}

    product = pulpo_client(home, sandbox).create_product({"sku": UNKNOWN, "name": "Neu eingetroffen"})
    second = sync(home, shop)                                          # no Billbee change at all
    assert second["created"] == 1 and second["quarantined"] == 1
    [order] = by_external(pulpo_orders(sandbox))[waiting]
    assert {i["product_id"]: i["quantity"] for i in order["items"]}[product.id] == 2
    open_keys = {q.record_key for q in StateStore(home).quarantine_list(GROUP, kind="order")}
    assert open_keys == {fractional}                                   # resolved once imported


def test_per_customer_creates_one_pulpo_customer_per_billbee_customer(sandbox, bpp_env):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop = Shop(sandbox)
    config = load_config(EXAMPLE_CONFIG)
    integration = config.integration(GROUP)
    settings = type(integration.settings).model_validate({
        **integration.settings.model_dump(), "customer": "per_customer",
        "shipping_method_map": [{"billbee_provider": "DPD", "pulpo_shipping_method_id": 999},  # PULPO has none
                                {"pulpo_shipping_method_id": 1}]})
    flow = flow_for(integration.model_copy(update={"settings": settings}), config)
    orders_ids = [shop.order([(KNOWN[0], 1)], number="C-1"), shop.order([(KNOWN[1], 1)], number="C-2"),
                  shop.order([(KNOWN[2], 1)], number="C-3", ShippingProviderId=20_000_000_000_012_105)]  # DPD
    sync(home, shop, dry_run=True)  # only the reader's work: the orders land in the dataset
    client = pulpo_client(home, sandbox)
    report = OrderWriter(flow, client, StateStore(home)).run()
    assert report.counts["created"] == 2 and report.counts["quarantined"] == 1
    assert "PULPO rejected the order: shipping_method_id: does not exist" in report.quarantine[0]["reason"]
    orders = by_external(pulpo_orders(sandbox))
    assert sorted(orders) == sorted(orders_ids[:2])
    assert {o[0]["shipping_method_id"] for o in orders.values()} == {1}         # the default row
    party_ids = {o[0]["third_party_id"] for o in orders.values()}
    assert len(party_ids) == 1 and None not in party_ids               # the sandbox's orders share a customer
    [party] = list(client.iter_third_parties(third_type="C"))
    assert party.id in party_ids and party.erp_id == str(70_000_000_000_900_000)
    assert StateStore(home).get_mapping(mapping_kind("customer", flow), party.erp_id).pulpo_id == str(party.id)

    sandbox.reset_stats("pulpo")
    again = OrderWriter(flow, client, StateStore(home)).run()          # the refused order is not resent
    assert again.read == 1 and again.counts["quarantined"] == 1 and pulpo_writes(sandbox) == []


def test_sync_killed_between_pulpo_write_and_ledger_record_leaves_no_duplicate(sandbox, bpp_env):
    fresh_world(sandbox)
    not_at_the_end_of_an_hour()  # both syncs must find the new orders in the same, current hour
    home = Path(bpp_env["BPP_HOME"])
    command = [sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "Verkaufsaufträge", "--json"]
    history = subprocess.run(command, env=bpp_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert history.returncode == 0, history.stderr[-2000:]  # the ended windows of the lookback, read whole
    shop = Shop(sandbox)
    ids = [shop.order([(KNOWN[0], 1)], number="K-1"), shop.order([(KNOWN[1], 1)], number="K-2")]
    killed = subprocess.run(command, env={**bpp_env, CRASH_ENV: "create"}, cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=180)
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert all(len(by_external(pulpo_orders(sandbox)).get(i, [])) == 1 for i in ids)  # PULPO has them ...
    assert {ledger(home)[f"order:create:{i}"][0] for i in ids} == {"pending"}  # ... our records do not

    sandbox.reset_stats("pulpo")
    rerun = subprocess.run(command, env=bpp_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    orders = by_external(pulpo_orders(sandbox))
    assert all(len(v) == 1 for v in orders.values()) and set(ids) <= set(orders)   # no duplicate
    assert pulpo_writes(sandbox) == []                                 # looked up and adopted, not re-sent
    assert {ledger(home)[f"order:create:{i}"][0] for i in ids} == {"done"}
    [summary] = json.loads(rerun.stdout)["integrations"]
    assert summary["status"] == "success" and summary["written"] == 0


def test_orders_reach_pulpo_while_later_pages_are_still_being_read(sandbox, bpp_env):
    """Write-behind: the read waits for Billbee's 2 requests/s between pages, and the writer uses that
    time, so the first PULPO create comes before the last Billbee page, and each order is created once."""
    fresh_world(sandbox)
    not_at_the_end_of_an_hour()
    home, shop = Path(bpp_env["BPP_HOME"]), Shop(sandbox)
    ids = [shop.order([(KNOWN[i % 2], 1)], number=f"W-{i}") for i in range(12)]
    config = load_config(EXAMPLE_CONFIG)
    result = dg.materialize(list(build_definitions(config, home).assets), selection=dg.AssetSelection.groups(GROUP),
                            resources=build_resources(config, home), partition_key=hour_key(),
                            run_config={"ops": {WRITER_OP: {"config": {"page_size": 4}}}})
    assert result.success
    pages = [r["at"] for r in sandbox.requests("billbee") if r["endpoint"] == "GET /api/v1/orders"
             and not r["simulator"]]
    creates = [r["at"] for r in sandbox.requests("pulpo") if r["endpoint"] in CREATE_ENDPOINTS]
    assert len(pages) >= 3 and creates
    assert min(creates) < max(pages)
    orders = by_external(pulpo_orders(sandbox))
    assert all(len(orders.get(i, [])) == 1 for i in ids)


def not_at_the_end_of_an_hour() -> None:
    now = datetime.now(UTC)
    if now.minute == 59 and now.second >= 30:
        time.sleep(61 - now.second)
