"""Contract: every request the two clients send, as the sandboxes received it, matches the official specs:
a documented path and method, documented query parameter names, and a body valid against the body schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient
from billbee_pulpo_pipeline.clients.billbee.models import (
    AddShipmentRequest,
    Dimensions,
    ShipWithLabelRequest,
    StockUpdate,
)
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.sandboxes import credentials as creds
from billbee_pulpo_pipeline_tests import spec_support as spec

ARRAY_SUFFIX = re.compile(r"(\[\d*\])$")
# PULPO documents limit/offset paging as a convention of its list endpoints (API integration guide,
# notes/pulpo-api.md §4) but not on every operation of the spec: the client pages all lists that way.
CONVENTIONS = {"pulpo": {"limit", "offset"}, "billbee": set()}


def spec_violations(system: str, logged: list[dict]) -> list[str]:
    problems = []
    for request in logged:
        if request["simulator"] or request["path"].startswith("/__sandbox"):
            continue
        template = spec.match_path(system, request["method"], request["path"])
        if template is None:
            problems.append(f"{request['method']} {request['path']}: not in the {system} spec")
            continue
        allowed = set(spec.query_parameters(system, request["method"], template)) | CONVENTIONS[system]
        for name, _ in request["query"]:
            if ARRAY_SUFFIX.sub("", name) not in allowed and name not in allowed:
                problems.append(f"{request['method']} {template}: undocumented query parameter '{name}'")
        schema = spec.request_body_schema(system, request["method"], template)
        if schema is not None and request["body"] is not None:
            problems += [f"{request['method']} {template}: {e}"
                         for e in spec.validation_errors(system, request["body"], schema)]
    return problems


def test_billbee_client_requests_follow_the_spec(sandbox, tmp_path: Path):
    spec.load_spec("billbee")
    sandbox.reset_stats("billbee")
    client = BillbeeClient(sandbox.billbee_url, creds.BILLBEE_USERNAME, creds.BILLBEE_API_PASSWORD,
                           creds.BILLBEE_API_KEY, pacer_dir=tmp_path)
    client.check_connection()
    orders = next(iter(client.iter_order_pages(page_size=5, order_state_ids=[3, 4]))).items
    order = orders[0]
    product = next(iter(client.iter_products(page_size=3)))
    client.get_order(order.BillBeeOrderId)
    client.get_product(product.SKU, lookup_by="sku")
    client.set_order_state(order.BillBeeOrderId, "Gepackt")
    client.add_shipment(order.BillBeeOrderId, AddShipmentRequest(ShippingId="00340434161234567890", CarrierId=2,
                                                                 ShipmentType=0))
    client.add_order_tags(order.BillBeeOrderId, ["pulpo"])
    provider = client.get_shipping_providers()[0]
    client.ship_with_label(ShipWithLabelRequest(
        OrderId=orders[1].BillBeeOrderId, ProviderId=provider.id, ProductId=provider.products[0].id,
        ChangeStateToSend=False, WeightInGram=1200, Dimension=Dimensions(length=30, width=20, height=10)))
    list(client.iter_shipments(order_id=order.BillBeeOrderId))
    client.update_stock_multiple([StockUpdate(Sku=product.SKU, NewQuantity=7, AutosubtractReservedAmount=True),
                                  StockUpdate(Sku="NO-SUCH-SKU", NewQuantity=1)])
    client.get_reserved_amount(product.SKU)
    client.get_stock_locations()
    client.get_shipping_carriers()
    client.get_order_state_enum()

    logged = sandbox.requests("billbee")
    assert len([r for r in logged if not r["simulator"]]) >= 15
    assert spec_violations("billbee", logged) == []


def test_pulpo_client_requests_follow_the_spec(sandbox, tmp_path: Path):
    spec.load_spec("pulpo")
    sandbox.reset("pulpo", products=30, stock=True)
    client = PulpoClient(sandbox.pulpo_url, creds.PULPO_USERNAME, creds.PULPO_PASSWORD, warehouse_id=1,
                         token_dir=tmp_path)
    client.check_connection()
    client.list_warehouses()
    products = list(client.iter_products())
    client.get_product(products[0].id)
    created = client.create_product({"sku": "CONTRACT-1", "name": "Vertragstest Tasse", "barcodes": ["4006381333931"],
                                     "attributes": {"billbee_id": "20000000000001234"}})
    client.update_product(created.id, {"name": "Vertragstest Tasse blau"})
    client.bulk_create_products([{"sku": "CONTRACT-2", "name": "Zwei"}, {"sku": "CONTRACT-1", "name": "Doppelt"}])
    order = client.create_sales_order({
        "order_num": "CONTRACT-ORDER-1", "external_order_num": "30000000000000042", "warehouse_id": 1,
        "ship_to": {"name": "Jürgen Groß", "address": {"street": "Hauptstraße", "house_nr": "5", "zip": "10115",
                                                       "city": "Berlin", "country_alpha2": "DE"}},
        "items": [{"product_id": products[0].id, "quantity": 2}],
    })
    client.find_sales_order_by_order_num("CONTRACT-ORDER-1")
    client.update_sales_order(order.id, {"notes": "Bitte klingeln"})
    client.cancel_sales_order(order.id)
    list(client.iter_packing_orders(state="closed"))
    list(client.iter_stock_summary())
    client.availability([p.id for p in products[:5]])
    client.list_shipping_methods()

    logged = sandbox.requests("pulpo")
    assert len([r for r in logged if not r["simulator"]]) >= 15
    violations = spec_violations("pulpo", logged)
    assert violations == [], "\n".join(violations)


@pytest.mark.parametrize("system", ["billbee", "pulpo"])
def test_an_undocumented_parameter_would_be_caught(system):
    spec.load_spec(system)
    path = "/api/v1/orders" if system == "billbee" else "/api/v1/sales/orders"
    fake = [{"simulator": False, "method": "GET", "path": path, "query": [("noSuchParam", "1")], "body": None}]
    assert spec_violations(system, fake) == [f"GET {spec.match_path(system, 'GET', path)}: "
                                             "undocumented query parameter 'noSuchParam'"]
