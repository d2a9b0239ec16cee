"""Multi-merchant PULPO tenants (a 3PL keeps one merchant per client), over HTTP against the sandboxes.

The PULPO credential's `merchant_id` goes on every product, kit product, customer and sales order the
flows create, and every lookup by SKU or erp id returns only that merchant's records. The test tenant
has merchant 1 (the default, another client of the 3PL) holding three of our SKUs and our Billbee
customer already, with lower ids than anything the flows create: a lookup that took the first hit
would link merchant 1's records.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests

from billbee_pulpo_pipeline.clients.http import RequestRejectedError
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.mapping.orders import customer_payload
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.sandboxes.catalog import sku_for
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests import spec_support as spec
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT, SANDBOX_ORDERS, SANDBOX_PRODUCTS
from billbee_pulpo_pipeline_tests.test_contract_requests import spec_violations

PRODUCTS = 60                  # Billbee catalogue; index 49 is a bundle of 47 and 48
HOURLY = 696                   # historic Billbee orders one per hour: the current hour starts empty
SHARED = [sku_for(i) for i in (1, 2, 48)]  # SKUs merchant 1 has in PULPO too (48: a kit component)
OURS, OTHER = 2, 1
CUSTOMER_ID = "70000000000900000"  # the Billbee sandbox's customer of created orders
PRODUCT_KIND = "product:billbee_shop:pulpo_wms"
ORDERS_GROUP = "verkaufsauftraege"


@pytest.fixture
def tenant(sandbox):
    sandbox.reset("billbee", products=PRODUCTS, orders=HOURLY)
    sandbox.reset("pulpo", products=0)
    yield sandbox
    sandbox.reset("billbee", products=SANDBOX_PRODUCTS, orders=SANDBOX_ORDERS)
    sandbox.reset("pulpo", products=0)  # also restores the behaviour knobs


def merchant_config(tmp_path: Path) -> Path:
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    assert "# merchant_id: 2" in text and "# customer: none" in text
    path = tmp_path / "integrations.yaml"
    path.write_text(text.replace("# merchant_id: 2", f"merchant_id: {OURS}").replace(
        "# customer: none", "customer: per_customer"), encoding="utf-8")
    return path


def client(sandbox, tmp_path: Path, merchant_id: int | None) -> PulpoClient:
    return PulpoClient(sandbox.pulpo_url, credentials.PULPO_USERNAME, credentials.PULPO_PASSWORD, warehouse_id=1,
                       merchant_id=merchant_id, token_dir=tmp_path / "test-tokens")


def simulator_list(sandbox, path: str, key: str) -> list[dict[str, Any]]:
    """Every row of a PULPO list, all merchants (read as the simulator: the filter knob aside)."""
    session = requests.Session()
    session.headers.update(credentials.SIMULATOR_HEADERS)
    token = session.post(f"{sandbox.pulpo_url}/auth", json={
        "grant_type": "password", "username": credentials.PULPO_USERNAME,
        "password": credentials.PULPO_PASSWORD, "scope": "general"}, timeout=30).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    rows: list[dict[str, Any]] = []
    while True:
        page = session.get(f"{sandbox.pulpo_url}{path}", params={"limit": 100, "offset": len(rows)}, timeout=30)
        rows += page.json()[key]
        if len(rows) >= page.json()["total_results"] or not page.json()[key]:
            return rows


def materialize(config_path: Path, home: Path, group: str, **kwargs: Any) -> dg.ExecuteInProcessResult:
    config = load_config(config_path)
    return dg.materialize(list(build_definitions(config, home).assets), selection=dg.AssetSelection.groups(group),
                          resources=build_resources(config, home), raise_on_error=False, **kwargs)


def paid_order(sandbox, lines: list[tuple[str, int]], number: str) -> str:
    session = requests.Session()
    session.auth = (credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD)
    session.headers.update({"X-Billbee-Api-Key": credentials.BILLBEE_API_KEY, **credentials.SIMULATOR_HEADERS})
    address = {"FirstName": "Erika", "LastName": "Mustermann", "Street": "Hauptstraße", "HouseNumber": "5",
               "Zip": "10115", "City": "Berlin", "CountryISO2": "DE"}
    body = {"CreatedAt": datetime.now(UTC).isoformat(), "State": 3, "OrderNumber": number,
            "ShippingAddress": address, "InvoiceAddress": address,
            "OrderItems": [{"Product": {"SKU": sku}, "Quantity": qty} for sku, qty in lines]}
    response = session.post(f"{sandbox.billbee_url}/orders", json=body, timeout=30)
    response.raise_for_status()
    return str(response.json()["Data"]["BillBeeOrderId"])


def other_merchant_data(sandbox, tmp_path: Path) -> dict[str, int]:
    """Merchant 1's products under our SKUs and our Billbee customer: SKU (or 'customer') -> its id."""
    theirs = client(sandbox, tmp_path, OTHER)
    result = theirs.bulk_create_products([{"sku": sku, "name": f"Merchant 1 {sku}", "barcodes": [f"M1-{sku}"]}
                                          for sku in SHARED])
    assert result.all_ok
    party = theirs.create_third_party(customer_payload({"id": CUSTOMER_ID, "name": "Kundin"}, 1))
    return {**{ok.key: ok.id for ok in result.ok}, "customer": party.id}


def test_two_merchants_share_skus_and_each_flow_links_only_its_own(tenant, bpp_env, tmp_path):
    foreign = other_merchant_data(tenant, tmp_path)
    config = merchant_config(tmp_path)
    home = Path(bpp_env["BPP_HOME"])
    tenant.reset_stats("pulpo")

    # The products flow through `billbee-pulpo sync` (the CLI builds the PULPO client from the credential).
    done = subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "Produkte", "--json"],
                          env={**bpp_env, "BPP_CONFIG": str(config)}, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [summary] = json.loads(done.stdout)["integrations"]
    assert summary["status"] == "success" and summary["quarantined"] == 0
    rows = simulator_list(tenant, "/inventory/products", "products")
    ours = {p["sku"]: p for p in rows if p["merchant_id"] == OURS}
    theirs = [p for p in rows if p["merchant_id"] == OTHER]
    assert len(ours) == PRODUCTS and set(SHARED) <= set(ours)          # the shared SKUs exist twice now
    assert sorted((p["sku"], p["name"], p["barcodes"]) for p in theirs) == sorted(
        (sku, f"Merchant 1 {sku}", [f"M1-{sku}"]) for sku in SHARED)  # merchant 1's products untouched
    mapped = set(StateStore(home).mappings(PRODUCT_KIND).values())
    assert mapped == {str(p["id"]) for p in ours.values()}             # linked to ours only
    writes = [r for r in tenant.requests("pulpo", limit=5000) if not r["simulator"]
              and r["method"] in ("POST", "PUT") and "/inventory/" in r["path"]]
    product_rows = [row for r in writes if "products" in r["path"] for row in r["body"]]
    assert product_rows and all(row["merchant_id"] == OURS for row in product_rows)
    [kit] = simulator_list(tenant, "/inventory/kits", "kits")
    assert kit["product_id"] == ours[sku_for(49)]["id"]
    assert sorted(i["product_id"] for i in kit["items"]) == sorted(ours[sku_for(i)]["id"] for i in (47, 48))

    # The order flow in a home without the products flow's mapping resolves SKUs by lookup, and PULPO
    # answers `?sku=` with merchant 1's product first.
    while datetime.now(UTC).minute == 59 and datetime.now(UTC).second >= 30:
        time.sleep(1)  # the order and the sync share the current hour
    order_id = paid_order(tenant, [(SHARED[0], 1), (SHARED[1], 2), (sku_for(5), 1)], "MM-1")
    orders_home = home.parent / "orders-home"
    result = materialize(config, orders_home, ORDERS_GROUP,
                         partition_key=datetime.now(UTC).strftime("%Y-%m-%d-%H:00"))
    assert result.success
    [order] = [o for o in simulator_list(tenant, "/sales/orders", "sales_orders")
               if o["external_order_num"] == order_id]
    assert order["merchant_id"] == OURS
    by_product = {i["product_id"]: i["quantity"] for i in order["items"]}
    assert by_product == {ours[SHARED[0]]["id"]: 1, ours[SHARED[1]]["id"]: 2, ours[sku_for(5)]["id"]: 1}
    assert not set(by_product) & {foreign[sku] for sku in SHARED}      # never merchant 1's product
    parties = simulator_list(tenant, "/iam/third_parties?merchant_id=2", "third_parties")
    [party] = [p for p in parties if p["erp_id"] == CUSTOMER_ID]
    assert order["third_party_id"] == party["id"] != foreign["customer"] and party["merchant_id"] == OURS
    creates = [r for r in tenant.requests("pulpo", limit=5000) if not r["simulator"] and r["method"] == "POST"
               and r["path"].endswith(("/sales/orders", "/sales/bulk/orders", "/iam/third_parties"))]
    bodies = [row for r in creates for row in (r["body"] if isinstance(r["body"], list) else [r["body"]])]
    assert bodies and all(row["merchant_id"] == OURS for row in bodies)


def test_without_merchant_id_nothing_is_sent_and_lookups_see_the_whole_tenant(tenant, tmp_path):
    other_merchant_data(tenant, tmp_path)
    ours = client(tenant, tmp_path, OURS)
    created = ours.create_product({"sku": SHARED[0], "name": "ours"})
    assert created.merchant_id == OURS
    assert [p.id for p in ours.iter_products(sku=SHARED[0])] == [created.id]
    assert ours.find_third_party(CUSTOMER_ID) is None                  # merchant 1's customer is not ours

    plain = client(tenant, tmp_path, None)
    tenant.reset_stats("pulpo")
    assert sorted(p.merchant_id for p in plain.iter_products(sku=SHARED[0])) == [OTHER, OURS]
    assert plain.find_third_party(CUSTOMER_ID) is not None            # the default merchant's, as before
    plain.create_product({"sku": "NEW-1", "name": "new"})
    [request] = [r for r in tenant.requests("pulpo") if r["method"] == "POST" and not r["simulator"]
                 and r["path"].endswith("/inventory/products")]
    assert "merchant_id" not in request["body"]
    listed = [r for r in tenant.requests("pulpo") if r["method"] == "GET" and "/inventory/products" in r["path"]]
    assert listed and all("merchant_id" not in dict(r["query"]) for r in listed)


def test_merchant_scoped_requests_follow_the_spec(tenant, tmp_path):
    """What a client with `merchant_id` sends stays within PULPO's spec: `merchant_id` only in bodies whose
    schema has it (Product, SalesOrderBodyRequest, ThirdParty) and as a query filter only where declared."""
    spec.load_spec("pulpo")
    other_merchant_data(tenant, tmp_path)
    tenant.reset_stats("pulpo")
    ours = client(tenant, tmp_path, OURS)
    created = ours.create_product({"sku": SHARED[0], "name": "Tasse", "barcodes": ["4006381333931"]})
    ours.bulk_create_products([{"sku": "MM-2", "name": "Zwei"}])
    assert [p.id for p in ours.iter_products(sku=SHARED[0])] == [created.id]
    assert list(ours.products_by_id([created.id])) == [created.id]
    party = ours.create_third_party(customer_payload({"id": "4711", "name": "Kunde"}, 1))
    assert ours.find_third_party("4711") == party
    ship_to = {"name": "Jürgen Groß", "address": {"street": "Hauptstraße", "house_nr": "5", "zip": "10115",
                                                  "city": "Berlin", "country_alpha2": "DE"}}
    order = ours.create_sales_order({"order_num": "MM-ORDER-1", "external_order_num": "30000000000000042",
                                     "ship_to": ship_to, "third_party_id": party.id,
                                     "items": [{"product_id": created.id, "quantity": 2}]})
    ours.bulk_create_sales_orders([{"order_num": "MM-ORDER-2", "ship_to": ship_to,
                                    "items": [{"product_id": created.id, "quantity": 1}]}])
    ours.update_sales_order(order.id, {"notes": "Bitte klingeln"})
    assert ours.find_sales_order_by_order_num("MM-ORDER-1").id == order.id
    ours.update_product(created.id, {"name": "Tasse blau"})
    ours.bulk_update_products([{"id": created.id, "active": False}])

    logged = [r for r in tenant.requests("pulpo") if not r["simulator"]]
    violations = spec_violations("pulpo", logged)
    assert violations == [], "\n".join(violations)
    bodies = [row for r in logged if r["method"] in ("POST", "PUT") and not r["path"].endswith("/auth")
              for row in (r["body"] if isinstance(r["body"], list) else [r["body"]])]
    assert len(bodies) == 8 and all(row["merchant_id"] == OURS for row in bodies)
    [lookup] = [r for r in logged if r["method"] == "GET" and r["path"].endswith("/iam/third_parties")]
    assert ("merchant_id", str(OURS)) in [tuple(q) for q in lookup["query"]]


def test_the_sandbox_models_merchants(tenant, tmp_path):
    theirs, ours = client(tenant, tmp_path, OTHER), client(tenant, tmp_path, OURS)
    first = theirs.create_product({"sku": "SAME", "name": "eins"})
    with pytest.raises(RequestRejectedError) as taken:
        theirs.create_product({"sku": "SAME", "name": "doppelt"})
    assert taken.value.field_errors == {"sku": "has already been taken"}  # unique per merchant ...
    second = ours.create_product({"sku": "SAME", "name": "zwei"})          # ... not per tenant
    assert (first.merchant_id, second.merchant_id) == (OTHER, OURS) and first.id != second.id
    with pytest.raises(RequestRejectedError) as unknown:
        client(tenant, tmp_path, 9).create_product({"sku": "X", "name": "x"})
    assert unknown.value.field_errors == {"merchant_id": "does not exist"}
    ship_to = {"name": "A", "address": {"street": "Weg 1", "zip": "10115", "city": "Berlin", "country_alpha2": "DE"}}
    with pytest.raises(RequestRejectedError) as foreign:  # a line naming merchant 1's product
        ours.create_sales_order({"order_num": "F-1", "ship_to": ship_to,
                                 "items": [{"product_id": first.id, "quantity": 1}]})
    assert foreign.value.field_errors == {"product_id": "does not exist"}
    assert ours.create_sales_order({"order_num": "F-1", "ship_to": ship_to,
                                    "items": [{"product_id": second.id, "quantity": 1}]}).merchant_id == OURS
    theirs.create_third_party(customer_payload({"id": "1", "name": "Eins"}, 1))
    ours.create_third_party(customer_payload({"id": "1", "name": "Eins bei zwei"}, 1))  # per merchant too
    unfiltered = simulator_list(tenant, "/iam/third_parties", "third_parties")
    assert [p["merchant_id"] for p in unfiltered] == [OTHER]  # the spec: "else use the default merchant_id"
    assert tenant.control("PUT", "pulpo", "behaviour", {"product_barcodes_on_update": "merge"}) == {
        "product_barcodes_on_update": "merge"}
    with pytest.raises(requests.HTTPError):
        tenant.control("PUT", "pulpo", "behaviour", {"product_barcodes_on_update": "sometimes"})
