"""Billbee order → PULPO sales order mapping (pure functions, no I/O)."""

from __future__ import annotations

import json

import pytest

from billbee_pulpo_pipeline.clients.billbee.models import Order
from billbee_pulpo_pipeline.clients.pulpo import SalesOrderPayload
from billbee_pulpo_pipeline.config.models import SalesOrdersSettings
from billbee_pulpo_pipeline.defs.common import canonical_json, fingerprint
from billbee_pulpo_pipeline.mapping import orders as om

ORDER_ID = 30_000_000_000_000_123  # 17 digits, above 2**53
CUSTOMER_ID = 70_000_000_000_900_000


def billbee_order(**overrides) -> dict:
    order = {
        "BillBeeOrderId": ORDER_ID,
        "OrderNumber": "A-1001",
        "State": 3,
        "CreatedAt": "2026-03-01T10:00:00Z",
        "LastModifiedAt": "2026-03-01T11:00:00.1234567Z",
        "ApiAccountName": "Mein Shop",
        "Customer": {"Id": CUSTOMER_ID, "Name": "Jürgen Groß", "Email": "j@example.com", "Number": 4711},
        "ShippingAddress": {
            "FirstName": "Jürgen", "LastName": "Groß 🚚", "Company": "Bäckerei Öz", "NameAddition": "c/o Müller",
            "Street": "Königsallee", "HouseNumber": "12a", "Line2": "Hinterhaus", "Zip": "40212",
            "City": "Düsseldorf", "State": "", "CountryISO2": "DE", "Email": "j@example.com", "Phone": "+49 211 1",
        },
        "OrderItems": [
            {"BillbeeId": 50_000_000_000_000_001, "Quantity": 2.0,
             "Product": {"SKU": "SKU-1", "BillbeeId": 20_000_000_000_001_001, "Weight": 300}},
            {"BillbeeId": 50_000_000_000_000_002, "Quantity": 1.0, "IsCoupon": True,
             "Product": {"Id": "COUPON-10", "SKU": None, "IsDigital": True, "Weight": 0}},
            {"BillbeeId": 50_000_000_000_000_003, "Quantity": 1.0,
             "Product": {"Id": "Geschenkverpackung", "SKU": None, "Weight": 0}},
        ],
        "ShippingProviderId": 20_000_000_000_012_101,
        "ShippingProviderName": "DHL",
        "ShippingProviderProductId": 20_000_000_000_083_771,
        "ShippingProviderProductName": "DHL Paket",
    }
    order.update(overrides)
    return order


def settings(**values) -> SalesOrdersSettings:
    return SalesOrdersSettings.model_validate(values)


def test_fields_are_the_same_from_the_model_and_from_its_stored_json():
    model = Order.model_validate(billbee_order())
    stored = json.loads(canonical_json(model.model_dump(mode="json", by_alias=True)))
    assert om.order_fields(model) == om.order_fields(stored) == om.fields_from_payload(canonical_json(stored))
    fields = om.order_fields(model)
    assert fields["billbee_order_id"] == str(ORDER_ID)  # exact, never through a float
    assert fields["customer"]["id"] == str(CUSTOMER_ID)
    assert fields["lines"][0]["billbee_product_id"] == "20000000000001001"
    # the modification time alone does not change the hash; the address does
    later = om.order_fields(billbee_order(LastModifiedAt="2026-03-02T08:00:00Z"))
    assert fingerprint(om.content_fields(later)) == fingerprint(om.content_fields(fields))
    moved = billbee_order()
    moved["ShippingAddress"] = {**moved["ShippingAddress"], "Street": "Kö"}
    assert fingerprint(om.content_fields(om.order_fields(moved))) != fingerprint(om.content_fields(fields))


def test_payload_maps_identity_address_lines_and_attributes():
    fields = om.order_fields(billbee_order())
    selection = om.select_lines(fields)
    assert selection.problem is None and selection.skipped == 2  # the coupon and the gift wrapping
    payload = om.sales_order_payload(fields, selection.lines, {"SKU-1": 77}, warehouse_id=1, shipping_method=3)
    assert payload["external_order_num"] == "30000000000000123"
    assert payload["order_num"] == "A-1001"
    assert payload["warehouse_id"] == 1 and payload["shipping_method_id"] == 3
    assert "third_party_id" not in payload
    assert payload["items"] == [{"product_id": 77, "quantity": 2, "line_order_id": "50000000000000001"}]
    assert payload["ship_to"] == {
        "name": "Jürgen Groß 🚚", "company_name": "Bäckerei Öz", "name2": "c/o Müller", "phone_number": "+49 211 1",
        "address": {"street": "Königsallee", "house_nr": "12a", "street2": "Hinterhaus", "zip": "40212",
                    "city": "Düsseldorf", "country_alpha2": "DE", "email": "j@example.com"},
    }
    assert json.loads(payload["attributes"]) == {"billbee_order_id": "30000000000000123", "billbee_shop": "Mein Shop"}
    wire = SalesOrderPayload.model_validate(payload).to_wire()  # what the client sends: types as PULPO wants
    assert wire["items"][0]["quantity"] == 2 and isinstance(wire["attributes"], str)


def test_order_number_falls_back_to_the_billbee_id():
    assert om.order_num(om.order_fields(billbee_order(OrderNumber=""))) == str(ORDER_ID)
    assert om.order_num(om.order_fields(billbee_order(OrderNumber=None))) == str(ORDER_ID)


@pytest.mark.parametrize(("line", "expected"), [
    ({"Quantity": 1.5, "Product": {"SKU": "SKU-9", "Weight": 100}}, "quantity 1.5 of SKU SKU-9 is not a whole number"),
    ({"Quantity": 1.0, "Product": {"SKU": None, "Weight": 250}}, "has no SKU"),
])
def test_lines_pulpo_cannot_take_are_reasons_for_quarantine(line, expected):
    order = billbee_order(OrderItems=[{"BillbeeId": 1, **line}])
    problem = om.select_lines(om.order_fields(order)).problem
    assert problem is not None and expected in problem


def test_lines_left_out_and_coupon_setting():
    order = billbee_order(OrderItems=[
        {"BillbeeId": 1, "Quantity": 1.0, "Product": {"SKU": "EBOOK-1", "IsDigital": True, "Weight": 0}},
        {"BillbeeId": 2, "Quantity": 0.0, "Product": {"SKU": "SKU-1", "Weight": 10}},
        {"BillbeeId": 3, "Quantity": 1.0, "IsCoupon": True, "Product": {"SKU": "GUTSCHEIN", "Weight": 0}},
    ])
    fields = om.order_fields(order)
    assert om.select_lines(fields).lines == []  # a download, a removed position and a voucher
    kept = om.select_lines(fields, skip_coupon_lines=False).lines
    assert [(line.sku, line.quantity) for line in kept] == [("GUTSCHEIN", 1)]


def test_shipping_method_by_id_or_name_with_a_default_anywhere():
    fields = om.order_fields(billbee_order())
    rules = settings(shipping_method_map=[
        {"pulpo_shipping_method_id": 9},                                          # the default, listed first
        {"billbee_provider": "dpd", "pulpo_shipping_method_id": 4},
        {"billbee_provider": "DHL", "billbee_product": "Paket", "pulpo_shipping_method_id": 3},
    ]).shipping_method_map
    assert om.shipping_method_id(fields, rules) == 3           # name, product without the provider prefix
    by_id = settings(shipping_method_map=[
        {"billbee_product": 20_000_000_000_083_771, "pulpo_shipping_method_id": 5}]).shipping_method_map
    assert om.shipping_method_id(fields, by_id) == 5
    gls = om.order_fields(billbee_order(ShippingProviderId=1, ShippingProviderName="GLS",
                                        ShippingProviderProductName="GLS BusinessParcel"))
    assert om.shipping_method_id(gls, rules) == 9               # the default
    assert om.shipping_method_id(gls, rules[1:]) is None         # unmapped: no method at all


def test_address_problems_and_customer_payload():
    no_street = billbee_order()
    no_street["ShippingAddress"] = {**no_street["ShippingAddress"], "Street": "  "}
    assert om.address_problem(om.order_fields(no_street)) == "the shipping address has no street"
    no_address = billbee_order(ShippingAddress=None)
    assert om.address_problem(om.order_fields(no_address)) == "the order has no shipping address"
    invoice_only = billbee_order(ShippingAddress=None, InvoiceAddress={"Street": "Rechnungsweg", "City": "Köln"})
    assert om.ship_to(om.order_fields(invoice_only))["address"]["street"] == "Rechnungsweg"

    customer = om.order_fields(billbee_order())["customer"]
    party = om.customer_payload(customer, tenant_id=1)
    assert party == {"third_type": "C", "identifier_type": "billbee_customer", "identifier_number": str(CUSTOMER_ID),
                     "erp_id": str(CUSTOMER_ID), "erp_code": "4711", "name": "Jürgen Groß",
                     "email": "j@example.com", "tenant_id": 1, "active": True}
