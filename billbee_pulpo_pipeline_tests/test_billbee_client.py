"""Billbee client: pure parts without network, behaviour over real HTTP.

Scripted answers that a spec-following sandbox cannot give on demand (an HTML 503 then success, a 200
with ErrorCode, Retry-After values, a POST that times out) come from a small Starlette app served on
loopback by `serve_in_thread`. Paging, auth and throttling end to end run against the Billbee sandbox
when it is available.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import multiprocessing
import time
from collections import defaultdict, deque
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billbee_pulpo_pipeline.clients.billbee import (
    AddShipmentRequest,
    BillbeeClient,
    Dimensions,
    Order,
    Paging,
    Product,
    ShippingProvider,
    ShipWithLabelRequest,
    StockUpdate,
    format_billbee_datetime,
    parse_billbee_datetime,
)
from billbee_pulpo_pipeline.clients.billbee.client import (
    account_fingerprint,
    envelope_error,
    has_more_pages,
    pacer_state_file,
    stock_row_results,
    unwrap_envelope,
    unwrap_page,
    validate_page_size,
)
from billbee_pulpo_pipeline.clients.http import (
    AuthenticationError,
    NotFoundError,
    Pacer,
    RateRule,
    RequestRejectedError,
    TransientApiError,
)
from billbee_pulpo_pipeline.sandboxes.runner import serve_in_thread

USER, PASSWORD, API_KEY = "merchant@example.com", "s3cret-api-password", "key-0123456789abcdef"
BIG_ID = 20000000000012103  # > 2**53: a float cannot hold it
HTML_503 = "<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head><body>busy</body></html>"


# --------------------------------------------------------------------------------------------------
# Dates


def test_format_sends_iso_with_explicit_offset_in_utc():
    berlin = timezone(timedelta(hours=2))
    assert format_billbee_datetime(datetime(2024, 5, 1, 12, 0, tzinfo=berlin)) == "2024-05-01T10:00:00+00:00"
    with_fraction = datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert format_billbee_datetime(with_fraction) == "2024-05-01T12:00:00.500000+00:00"


def test_format_rejects_naive_datetimes():
    with pytest.raises(ValueError, match="naive"):
        format_billbee_datetime(datetime(2024, 5, 1, 12, 0))


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
    ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),  # no offset: read as UTC
    ("2024-05-01T12:00:00.1234567Z", datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)),
    ("2024-05-01T12:00:00.12+01:00", datetime(2024, 5, 1, 11, 0, 0, 120000, tzinfo=UTC)),
    ("2024-05-01 12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
])
def test_parse_is_lenient_and_always_aware(text, expected):
    parsed = parse_billbee_datetime(text)
    assert parsed.tzinfo is not None
    assert parsed == expected


def test_parse_rejects_garbage():
    with pytest.raises(ValueError):
        parse_billbee_datetime("yesterday")


def test_model_dates_empty_or_null_are_none():
    order = Order.model_validate({"BillBeeOrderId": 1, "CreatedAt": "2024-01-01T00:00:00", "ShippedAt": None,
                                  "PayedAt": ""})
    assert order.ShippedAt is None and order.PayedAt is None
    assert order.CreatedAt == datetime(2024, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------------------------------
# Envelope


def test_envelope_success_returns_data():
    assert unwrap_envelope({"ErrorCode": 0, "ErrorMessage": None, "Data": {"x": 1}}, "GET", "/x") == {"x": 1}
    assert unwrap_envelope([{"id": 1}], "GET", "/x") == [{"id": 1}]  # bare arrays pass through


@pytest.mark.parametrize(("body", "code", "fragment"), [
    ({"ErrorCode": 22, "ErrorMessage": "Bitte einen Verpackungstyp auswählen",
      "ErrorDescription": "InvalidShippingServices", "Data": None}, 22, "InvalidShippingServices"),
    ({"ErrorCode": 2, "ErrorMessage": None, "ErrorDescription": 2, "Data": None}, 2, "OrderNotFound"),
    ({"ErrorCode": 0, "ErrorMessage": "Parameter SKU is empty", "Data": None}, 0, "Parameter SKU is empty"),
    ({"ErrorCode": "11", "ErrorMessage": "", "Data": None}, 11, "InvalidData"),
])
def test_envelope_errors_raise_request_rejected(body, code, fragment):
    with pytest.raises(RequestRejectedError) as info:
        unwrap_envelope(body, "POST", "/shipment/shipwithlabel")
    assert info.value.code == code
    assert fragment in str(info.value)
    assert info.value.status == 200


def test_envelope_error_none_for_success_and_non_envelopes():
    assert envelope_error({"ErrorCode": 0, "ErrorMessage": "", "Data": []}) is None
    assert envelope_error([1, 2]) is None
    assert envelope_error(None) is None


def test_stock_rows_are_reported_per_row_without_raising():
    rows = [StockUpdate(Sku="A-1", NewQuantity=5), StockUpdate(Sku="nope", NewQuantity=1),
            StockUpdate(BillbeeId=BIG_ID, NewQuantity=3)]
    body = [
        {"ErrorCode": 0, "ErrorMessage": None, "Data": {"SKU": "A-1", "OldStock": 2, "CurrentStock": 5,
                                                         "UnfulfilledAmount": 1, "Message": "updated"}},
        {"ErrorCode": 0, "ErrorMessage": "Article not found", "Data": None},
    ]
    results = stock_row_results(body, rows, "POST", "/products/updatestockmultiple")
    assert [r.ok for r in results] == [True, False, False]
    assert (results[0].old_stock, results[0].current_stock, results[0].unfulfilled_amount) == (2, 5, 1)
    assert results[1].sku == "nope" and results[1].error_message == "Article not found"
    assert results[2].billbee_id == BIG_ID and "no result" in results[2].error_message


def test_stock_rows_whole_call_refused_raises():
    with pytest.raises(RequestRejectedError):
        stock_row_results({"ErrorCode": 1, "ErrorMessage": "API not activated", "Data": None},
                          [StockUpdate(Sku="A", NewQuantity=1)], "POST", "/products/updatestockmultiple")


# --------------------------------------------------------------------------------------------------
# Paging arithmetic


@pytest.mark.parametrize("size", [0, -1, 251])
def test_page_size_outside_billbee_limits_is_refused(size):
    with pytest.raises(ValueError):
        validate_page_size(size)


def test_page_size_limits_accepted():
    assert validate_page_size(1) == 1 and validate_page_size(250) == 250


def test_has_more_pages():
    assert has_more_pages(1, Paging(Page=1, TotalPages=3), 250, 250)
    assert not has_more_pages(3, Paging(Page=3, TotalPages=3), 10, 250)
    assert not has_more_pages(1, Paging(Page=1, TotalPages=5), 0, 250)  # empty page ends the walk
    assert has_more_pages(1, None, 250, 250)  # no Paging: a full page may have a successor
    assert not has_more_pages(1, None, 249, 250)


def test_unwrap_page_reads_paging_and_data():
    items, paging = unwrap_page({"ErrorCode": 0, "Data": [{"Id": 1}], "Paging": {"Page": 1, "TotalPages": 2,
                                 "TotalRows": 3, "PageSize": 2}}, "GET", "/products")
    assert items == [{"Id": 1}] and paging.TotalRows == 3


# --------------------------------------------------------------------------------------------------
# Models


def test_seventeen_digit_ids_survive_json_exactly():
    text = json.dumps({
        "BillBeeOrderId": BIG_ID, "CreatedAt": "2024-05-01T12:00:00Z", "ShippingProviderId": BIG_ID + 1,
        "ShippingProviderProductId": BIG_ID + 2, "UnknownNewField": {"x": 1},
        "OrderItems": [{"BillbeeId": BIG_ID + 3, "Quantity": 1.5,
                        "Product": {"BillbeeId": BIG_ID + 4, "Id": 77}}],
    })
    order = Order.model_validate_json(text)
    assert order.BillBeeOrderId == BIG_ID
    assert order.ShippingProviderId == BIG_ID + 1 and order.ShippingProviderProductId == BIG_ID + 2
    assert order.OrderItems[0].BillbeeId == BIG_ID + 3 and order.OrderItems[0].Product.BillbeeId == BIG_ID + 4
    assert order.OrderItems[0].Quantity == 1.5
    assert order.OrderItems[0].Product.Id == "77"  # external ids are strings even when sent as numbers
    assert order.model_extra["UnknownNewField"] == {"x": 1}
    assert json.loads(order.model_dump_json())["BillBeeOrderId"] == BIG_ID


def test_ids_refuse_floats():
    with pytest.raises(ValidationError, match="float"):
        Order.model_validate({"BillBeeOrderId": float(BIG_ID), "CreatedAt": "2024-01-01"})
    with pytest.raises(ValidationError):
        StockUpdate(BillbeeId=1.0, NewQuantity=1)


def test_product_multilingual_texts_and_bom():
    product = Product.model_validate({
        "Id": BIG_ID, "SKU": "BOX", "Type": 2, "Title": [{"Text": "Box", "LanguageCode": "EN"},
                                                        {"Text": "Kiste", "LanguageCode": "DE"}],
        "BillOfMaterial": [{"Amount": 2, "ArticleId": BIG_ID + 5, "SKU": "A"}],
        "Stocks": [{"StockId": 7, "StockCurrent": 3.5}], "Weight": 250, "SomethingNew": True,
    })
    assert product.title() == "Kiste" and product.title(("en",)) == "Box"
    assert product.BillOfMaterial[0].ArticleId == BIG_ID + 5
    assert product.Stocks[0].StockCurrent == 3.5 and product.Weight == 250
    assert product.model_extra == {"SomethingNew": True}


def test_request_models_serialise_as_billbee_expects():
    label = ShipWithLabelRequest(OrderId=BIG_ID, ProviderId=BIG_ID + 1, ProductId=BIG_ID + 2,
                                 ChangeStateToSend=True, Dimension=Dimensions(length=30, width=20, height=10),
                                 ShipDate=datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    body = label.to_json()
    assert body["OrderId"] == BIG_ID and body["ProductId"] == BIG_ID + 2
    assert body["Dimension"] == {"length": 30.0, "width": 20.0, "height": 10.0}
    assert body["ShipDate"] == "2024-05-01T10:00:00+00:00"
    assert "PrinterName" not in body  # unset fields are not sent
    shipment = AddShipmentRequest(ShippingId="00340434", OrderId="CARRIER-1", ShippingProviderId=BIG_ID)
    assert shipment.to_json() == {"ShippingId": "00340434", "OrderId": "CARRIER-1",
                                  "ShippingProviderId": BIG_ID}


def test_request_models_refuse_typos_naive_dates_and_rows_without_product():
    with pytest.raises(ValidationError):
        StockUpdate(SKU="A", NewQuantity=1)  # Billbee's request field is `Sku`
    with pytest.raises(ValidationError):
        StockUpdate(NewQuantity=1)
    with pytest.raises(ValidationError):
        ShipWithLabelRequest(OrderId=1, ProviderId=2, ProductId=3, ShipDate=datetime(2024, 5, 1))


def test_shipping_provider_lower_case_keys_with_big_ids():
    provider = ShippingProvider.model_validate(
        {"id": BIG_ID, "name": "DHL",
         "products": [{"id": BIG_ID + 1, "displayName": "Paket", "productName": "p"}]})
    assert provider.id == BIG_ID and provider.products[0].id == BIG_ID + 1
    assert provider.products[0].displayName == "Paket"


# --------------------------------------------------------------------------------------------------
# A scripted Billbee over real HTTP


class ScriptedBillbee:
    """Answers each (method, path) from a script of responses; the last one repeats. Records requests."""

    def __init__(self) -> None:
        self.scripts: dict[tuple[str, str], deque[dict[str, Any]]] = defaultdict(deque)
        self.calls: list[dict[str, Any]] = []

    def script(self, method: str, path: str, *answers: dict[str, Any]) -> None:
        self.scripts[(method, "/api/v1/" + path)] = deque(answers)

    def reset(self) -> None:
        self.scripts.clear()
        self.calls.clear()

    def calls_to(self, method: str, path: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["method"] == method and c["path"] == "/api/v1/" + path]

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        path = request.scope.get("raw_path", request.url.path.encode()).decode()  # as sent, still quoted
        self.calls.append({"method": request.method, "path": path, "time": time.monotonic(),
                           "query": list(request.query_params.multi_items()),
                           "headers": dict(request.headers),
                           "body": json.loads(raw) if raw else None})
        queue = self.scripts.get((request.method, path))
        if not queue:
            return JSONResponse({"Message": "No HTTP resource was found"}, status_code=404)
        answer = queue.popleft() if len(queue) > 1 else queue[0]
        if callable(answer):
            answer = answer(request)
        if answer.get("delay"):
            await asyncio.sleep(answer["delay"])
        status = answer.get("status", 200)
        headers = answer.get("headers", {})
        if "html" in answer:
            return Response(answer["html"], status_code=status, media_type="text/html", headers=headers)
        if "raw" in answer:
            return Response(answer["raw"], status_code=status, headers=headers)
        return JSONResponse(answer.get("json"), status_code=status, headers=headers)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST", "PUT", "PATCH"])])


@pytest.fixture(scope="module")
def scripted_server():
    fake = ScriptedBillbee()
    url, stop = serve_in_thread(fake.app())
    yield fake, url + "/api/v1"
    stop.set()


@pytest.fixture()
def fake(scripted_server):
    server, _ = scripted_server
    server.reset()
    return server


def make_client(scripted_server, **overrides: Any) -> BillbeeClient:
    _, url = scripted_server
    options: dict[str, Any] = {"rate_per_endpoint": 0, "rate_per_user": 0, "backoff_factor": 0.01,
                               "timeout": (2, 5)}
    options.update(overrides)
    return BillbeeClient(url, USER, PASSWORD, API_KEY, **options)


def ok(data: Any, **extra: Any) -> dict[str, Any]:
    return {"json": {"ErrorCode": 0, "ErrorMessage": None, "ErrorDescription": 0, "Data": data, **extra}}


ORDER = {"BillBeeOrderId": BIG_ID, "Id": "AMZ-1", "OrderNumber": "AMZ-1", "State": 3,
         "CreatedAt": "2024-05-01T12:00:00", "OrderItems": [{"Quantity": 2, "Product": {"SKU": "A-1"}}]}


def test_sends_basic_auth_api_key_and_accept_json(fake, scripted_server):
    fake.script("GET", f"orders/{BIG_ID}", ok(ORDER))
    order = make_client(scripted_server).get_order(BIG_ID)
    assert order.BillBeeOrderId == BIG_ID and order.OrderItems[0].Product.SKU == "A-1"
    headers = fake.calls[0]["headers"]
    assert headers["authorization"] == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert headers["x-billbee-api-key"] == API_KEY
    assert headers["accept"] == "application/json"


def test_retries_html_503_then_succeeds(fake, scripted_server, caplog):
    busy = {"status": 503, "html": HTML_503}
    stock = {"Id": BIG_ID, "Name": "Lager", "IsDefault": True}
    fake.script("GET", "products/stocks", busy, busy, ok([stock]))
    client = make_client(scripted_server)
    with caplog.at_level(logging.INFO, logger="billbee_pulpo_pipeline.billbee"):
        stocks = client.get_stock_locations()
    assert "after 2 retries (HTTP 503, HTTP 503)" in caplog.text
    assert stocks[0].Id == BIG_ID and stocks[0].IsDefault
    assert len(fake.calls) == 3
    assert client.stats.calls == 3 and client.stats.retries == 2


def test_html_503_that_persists_is_transient_with_readable_message(fake, scripted_server):
    fake.script("GET", "products/stocks", {"status": 503, "html": HTML_503})
    client = make_client(scripted_server, max_retries=2)
    with pytest.raises(TransientApiError) as info:
        client.get_stock_locations()
    assert "503 Service Unavailable" in str(info.value) and info.value.status == 503
    assert info.value.outcome_unknown is False  # a GET changes nothing
    assert len(fake.calls) == 3


def test_429_waits_for_retry_after(fake, scripted_server):
    throttled = {"status": 429, "headers": {"Retry-After": "1"}, "json": {}}
    fake.script("GET", "products/stocks", throttled, ok([]))
    client = make_client(scripted_server)
    started = time.monotonic()
    assert client.get_stock_locations() == []
    assert len(fake.calls) == 2
    assert fake.calls[1]["time"] - fake.calls[0]["time"] >= 1.0
    assert time.monotonic() - started >= 1.0
    assert client.stats.throttled == 1 and client.stats.calls == 2


def test_429_that_persists_is_transient_and_counted_once_per_answer(fake, scripted_server):
    fake.script("POST", "products/updatestock", {"status": 429, "headers": {"Retry-After": "0"}, "json": {}})
    client = make_client(scripted_server, max_retries=2)
    with pytest.raises(TransientApiError) as info:
        client.update_stock(StockUpdate(Sku="A-1", NewQuantity=1))
    assert info.value.status == 429
    assert info.value.outcome_unknown is False  # a throttled request was not executed
    assert len(fake.calls) == 3
    assert client.stats.calls == 3 and client.stats.throttled == 3


def test_get_429_that_persists_is_counted_once_per_answer(fake, scripted_server):
    fake.script("GET", "products/stocks", {"status": 429, "headers": {"Retry-After": "0"}, "json": {}})
    client = make_client(scripted_server, max_retries=2)
    with pytest.raises(TransientApiError) as info:
        client.get_stock_locations()
    assert info.value.status == 429
    assert len(fake.calls) == 3
    assert client.stats.calls == 3 and client.stats.throttled == 3


def test_post_is_retried_on_429(fake, scripted_server):
    fake.script("POST", f"orders/{BIG_ID}/tags", {"status": 429, "headers": {"Retry-After": "0"}, "json": {}},
                ok({}))
    make_client(scripted_server).add_order_tags(BIG_ID, ["wms-exported"])
    assert len(fake.calls) == 2
    assert fake.calls[1]["body"] == {"Tags": ["wms-exported"]}


def test_post_5xx_is_not_retried_and_outcome_unknown(fake, scripted_server):
    fake.script("POST", "shipment/shipwithlabel", {"status": 503, "html": HTML_503})
    client = make_client(scripted_server)
    with pytest.raises(TransientApiError) as info:
        client.ship_with_label(ShipWithLabelRequest(OrderId=BIG_ID, ProviderId=1, ProductId=2))
    assert info.value.outcome_unknown is True
    assert len(fake.calls) == 1 and client.stats.calls == 1


def test_post_timeout_is_not_retried_and_outcome_unknown(fake, scripted_server):
    fake.script("POST", "shipment/shipwithlabel", {"delay": 1.5, **ok({"ShippingId": "late"})})
    client = make_client(scripted_server, timeout=(2, 0.4))
    with pytest.raises(TransientApiError) as info:
        client.ship_with_label(ShipWithLabelRequest(OrderId=BIG_ID, ProviderId=1, ProductId=2))
    assert info.value.outcome_unknown is True
    assert "may have been executed" in str(info.value)
    assert len(fake.calls) == 1


def test_get_timeout_is_retried(fake, scripted_server):
    fake.script("GET", "products/stocks", {"delay": 1.0, **ok([])}, ok([{"Id": 1}]))
    client = make_client(scripted_server, timeout=(2, 0.4))
    assert [s.Id for s in client.get_stock_locations()] == [1]
    assert len(fake.calls) == 2


def test_post_to_closed_port_is_known_not_sent():
    client = BillbeeClient("http://127.0.0.1:9/api/v1", USER, PASSWORD, API_KEY, rate_per_endpoint=0,
                           rate_per_user=0, max_retries=1, backoff_factor=0.01, timeout=(0.5, 1))
    with pytest.raises(TransientApiError) as info:
        client.add_shipment(1, AddShipmentRequest(ShippingId="X"))
    assert info.value.outcome_unknown is False


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_helps_and_leaks_no_secret(fake, scripted_server, status, caplog):
    fake.script("GET", "products", {"status": status, "json": {"Message": "Authorization has been denied"}})
    client = make_client(scripted_server)
    with caplog.at_level(logging.DEBUG, logger="billbee_pulpo_pipeline"), \
            pytest.raises(AuthenticationError) as info:
        client.check_connection()
    text = str(info.value) + repr(info.value) + repr(client) + caplog.text
    assert "Einstellungen" in str(info.value) and "API key" in str(info.value)
    assert PASSWORD not in text and API_KEY not in text
    assert repr(client) == f"BillbeeClient(base_url={client.base_url!r}, username={USER!r})"
    assert len(fake.calls) == 1  # credentials errors are not retried


def test_404_raises_not_found(fake, scripted_server):
    with pytest.raises(NotFoundError):
        make_client(scripted_server).get_order(123)


def test_error_code_inside_200_raises_request_rejected(fake, scripted_server):
    fake.script("POST", "shipment/shipwithlabel", {"json": {
        "ErrorCode": 22, "ErrorMessage": "Bitte einen Verpackungstyp auswählen",
        "ErrorDescription": "InvalidShippingServices", "Data": None}})
    with pytest.raises(RequestRejectedError) as info:
        make_client(scripted_server).ship_with_label(
            ShipWithLabelRequest(OrderId=1, ProviderId=2, ProductId=3))
    assert info.value.code == 22 and "Verpackungstyp" in str(info.value)


def test_400_with_envelope_is_rejected_with_billbee_message(fake, scripted_server):
    fake.script("POST", "orders/5/shipment", {"status": 400, "json": {
        "ErrorCode": 11, "ErrorMessage": "ShippingId is missing", "Data": None}})
    with pytest.raises(RequestRejectedError) as info:
        make_client(scripted_server).add_shipment(5, AddShipmentRequest(ShippingId=" "))
    assert info.value.status == 400 and info.value.code == 11 and "ShippingId is missing" in str(info.value)


def test_empty_200_is_success_for_state_change_and_shipment(fake, scripted_server):
    fake.script("PUT", f"orders/{BIG_ID}/orderstate", {"raw": b""})
    fake.script("POST", f"orders/{BIG_ID}/shipment", {"raw": b""})
    client = make_client(scripted_server)
    client.set_order_state(BIG_ID, "Versendet")
    client.add_shipment(BIG_ID, AddShipmentRequest(ShippingId="00340434", OrderId="C-1", CarrierId=2,
                                                   ShipmentType=0))
    assert fake.calls[0]["body"] == {"NewStateId": 4}
    assert fake.calls[1]["path"] == f"/api/v1/orders/{BIG_ID}/shipment"
    assert fake.calls[1]["body"] == {"ShippingId": "00340434", "OrderId": "C-1", "CarrierId": 2,
                                     "ShipmentType": 0}


def test_update_stock_multiple_returns_row_results(fake, scripted_server):
    def answer(request: Request) -> dict[str, Any]:
        return {"json": [
            {"ErrorCode": 0, "ErrorMessage": None, "Data": {"SKU": "A-1", "OldStock": 0, "CurrentStock": 12,
                                                             "UnfulfilledAmount": 2, "Message": "updated"}},
            {"ErrorCode": 0, "ErrorMessage": "Parameter SKU is empty", "Data": None}]}

    fake.script("POST", "products/updatestockmultiple", answer)
    rows = [StockUpdate(Sku="A-1", NewQuantity=14, AutosubtractReservedAmount=True, StockId=BIG_ID),
            StockUpdate(BillbeeId=BIG_ID, NewQuantity=3)]
    results = make_client(scripted_server).update_stock_multiple(rows)
    assert [(r.ok, r.current_stock) for r in results] == [(True, 12), (False, None)]
    assert results[1].error_message == "Parameter SKU is empty" and results[1].billbee_id == BIG_ID
    sent = fake.calls[0]["body"]
    assert sent[0] == {"Sku": "A-1", "StockId": BIG_ID, "NewQuantity": 14.0,
                       "AutosubtractReservedAmount": True}
    assert sent[1] == {"BillbeeId": BIG_ID, "NewQuantity": 3.0}


def test_pagination_walks_all_pages_with_paging_info(fake, scripted_server):
    total = 7

    def page(request: Request) -> dict[str, Any]:
        number, size = int(request.query_params["page"]), int(request.query_params["pageSize"])
        rows = [{"BillBeeOrderId": BIG_ID + i, "CreatedAt": "2024-05-01T00:00:00Z"}
                for i in range((number - 1) * size, min(number * size, total))]
        paging = {"Page": number, "PageSize": size, "TotalRows": total, "TotalPages": -(-total // size)}
        return ok(rows, Paging=paging)

    fake.script("GET", "orders", page)
    client = make_client(scripted_server)
    since = datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    pages = list(client.iter_order_pages(modified_at_min=since, order_state_ids=[1, 3], shop_ids=[BIG_ID],
                                         page_size=3))
    assert [p.number for p in pages] == [1, 2, 3]
    assert [len(p.items) for p in pages] == [3, 3, 1]
    assert all(p.paging.TotalRows == total for p in pages)
    ids = [o.BillBeeOrderId for o in client.iter_orders(page_size=3)]
    assert ids == [BIG_ID + i for i in range(total)]
    query = fake.calls[0]["query"]
    assert ("orderStateId", "1") in query and ("orderStateId", "3") in query  # repeated keys
    assert ("shopId", str(BIG_ID)) in query
    assert ("modifiedAtMin", "2024-05-01T10:00:00+00:00") in query  # '+' survived URL encoding
    assert ("page", "1") in query and ("pageSize", "3") in query


def test_pagination_stops_on_empty_data_even_if_paging_claims_more(fake, scripted_server):
    claims_more = {"Page": 1, "TotalPages": 9, "TotalRows": 2000, "PageSize": 250}
    fake.script("GET", "products", ok([], Paging=claims_more))
    assert list(make_client(scripted_server).iter_products()) == []
    assert len(fake.calls) == 1


def test_page_size_over_limit_is_refused_before_any_call(fake, scripted_server):
    with pytest.raises(ValueError):
        list(make_client(scripted_server).iter_products(page_size=500))
    assert fake.calls == []


def test_shipping_providers_bare_array_or_envelope(fake, scripted_server):
    providers = [{"id": BIG_ID, "name": "DHL", "products": [{"id": BIG_ID + 1, "displayName": "Paket"}]}]
    client = make_client(scripted_server)
    fake.script("GET", "shipment/shippingproviders", {"json": providers})
    assert client.get_shipping_providers()[0].products[0].id == BIG_ID + 1
    fake.script("GET", "shipment/shippingproviders", ok(providers))
    assert client.get_shipping_providers()[0].id == BIG_ID


def test_lookups_and_enums(fake, scripted_server):
    client = make_client(scripted_server)
    fake.script("GET", "products/A%2F1", ok({"Id": BIG_ID, "SKU": "A/1"}))
    fake.script("GET", "products/reservedamount", ok({"ReservedAmount": 4.0}))
    fake.script("GET", "enums/orderstates",
                {"json": [{"Id": 1, "Name": "Bestellt"}, {"Id": 4, "Name": "Versendet"}]})
    fake.script("GET", "shipment/shippingcarriers", {"json": [{"Id": 2, "Name": "DHL"}]})
    fake.script("GET", "orders/findbyextref/AMZ-1", ok(ORDER))
    fake.script("GET", "orders/findbyextref/UNKNOWN",
                {"json": {"ErrorCode": 2, "ErrorMessage": "Order not found", "Data": None}})
    shipment = {"BillbeeId": BIG_ID, "ShippingId": "T1", "Created": "2024-05-01T12:00:00Z"}
    fake.script("GET", "shipment/shipments", ok([shipment], Paging={"Page": 1, "TotalPages": 1}))
    assert client.get_product("A/1", lookup_by="sku").Id == BIG_ID
    assert client.get_reserved_amount("A-1", stock_id=BIG_ID) == 4.0
    assert client.get_order_state_enum() == {1: "Bestellt", 4: "Versendet"}
    assert client.get_shipping_carriers()[0].Name == "DHL"
    assert client.find_order_by_ext_ref("AMZ-1").BillBeeOrderId == BIG_ID
    assert client.find_order_by_ext_ref("UNKNOWN") is None
    shipments = list(client.iter_shipments(order_id=BIG_ID, minimum_shipment_id=5))
    assert shipments[0].BillbeeId == BIG_ID
    reserved_query = fake.calls_to("GET", "products/reservedamount")[0]["query"]
    assert sorted(reserved_query) == sorted([("id", "A-1"), ("lookupBy", "sku"), ("stockId", str(BIG_ID))])
    assert fake.calls_to("GET", "products/A%2F1")[0]["query"] == [("lookupBy", "sku")]  # SKU quoted in path
    with pytest.raises(ValueError):
        client.get_product("x", lookup_by="name")


# --------------------------------------------------------------------------------------------------
# Pacing


def test_pacing_same_endpoint_at_two_per_second(fake, scripted_server):
    fake.script("GET", "products/stocks", ok([]))
    client = make_client(scripted_server, rate_per_endpoint=2.0, rate_per_user=10.0)
    started = time.monotonic()
    for _ in range(5):
        client.get_stock_locations()
    assert time.monotonic() - started >= (5 - 1) / 2.0
    times = [c["time"] for c in fake.calls]
    assert all(b - a >= 0.45 for a, b in zip(times, times[1:], strict=False))


def test_rate_zero_disables_pacing(fake, scripted_server):
    fake.script("GET", "products/stocks", ok([]))
    client = make_client(scripted_server, rate_per_endpoint=0, rate_per_user=0)
    started = time.monotonic()
    for _ in range(6):
        client.get_stock_locations()
    assert time.monotonic() - started < 1.0


def test_pacer_state_file_is_named_by_hash_and_holds_no_secret(tmp_path, fake, scripted_server):
    fake.script("GET", "products/stocks", ok([]))
    _, url = scripted_server
    client = make_client(scripted_server, rate_per_endpoint=50.0, rate_per_user=50.0, pacer_dir=tmp_path)
    client.get_stock_locations()
    state = pacer_state_file(tmp_path, account_fingerprint(url, USER, API_KEY))
    assert state.exists()
    for path in tmp_path.iterdir():
        content = path.read_text() if path.is_file() else ""
        for secret in (PASSWORD, API_KEY, USER):
            assert secret not in path.name and secret not in content
    assert "GET /products/stocks" in state.read_text()


def _paced_worker(tag: str, state_file: str, start_at: float, calls: int, rate: float, queue: Any) -> None:
    pacer = Pacer([RateRule("endpoint", rate, lambda endpoint: endpoint)], state_file=Path(state_file))
    time.sleep(max(0.0, start_at - time.time()))
    stamps = []
    for _ in range(calls):
        pacer.acquire("GET /orders")
        stamps.append(time.time())
    queue.put((tag, stamps))


def _min_span(stamps: list[float], window: int) -> float:
    stamps = sorted(stamps)
    return min(stamps[i + window] - stamps[i] for i in range(len(stamps) - window))


def test_two_processes_sharing_a_state_file_respect_the_rate(tmp_path):
    rate, calls, window = 4.0, 6, 4
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start_at = time.time() + 2.5  # all processes are up before the first acquire
    # Two processes share one state file; a control pair uses a file each and so is not coordinated.
    plan = [("shared", "shared.json"), ("shared", "shared.json"), ("apart", "a.json"), ("apart", "b.json")]
    workers = [context.Process(target=_paced_worker,
                               args=(tag, str(tmp_path / name), start_at, calls, rate, queue))
               for tag, name in plan]
    for worker in workers:
        worker.start()
    stamps: dict[str, list[float]] = defaultdict(list)
    for _ in plan:
        tag, times = queue.get(timeout=60)
        stamps[tag].extend(times)
    for worker in workers:
        worker.join(timeout=10)
    assert len(stamps["shared"]) == len(stamps["apart"]) == 2 * calls
    # Together at most `rate` per second: any `window + 1` consecutive starts span >= window / rate.
    assert _min_span(stamps["shared"], window) >= window / rate - 0.05
    assert max(stamps["shared"]) - min(stamps["shared"]) >= (2 * calls - 1) / rate - 0.05
    # The control shows the check has teeth: uncoordinated processes run at twice the rate.
    assert _min_span(stamps["apart"], window) < window / rate * 0.75


# --------------------------------------------------------------------------------------------------
# End to end against the Billbee sandbox (once it exists)


@pytest.fixture()
def billbee_sandbox(request):
    """The session's sandboxes (conftest), once the Billbee sandbox exists; skipped until then."""
    pytest.importorskip("billbee_pulpo_pipeline.sandboxes.billbee.app")
    pytest.importorskip("billbee_pulpo_pipeline.sandboxes.pulpo.app")
    return request.getfixturevalue("sandbox")


def sandbox_client(sandbox, **overrides: Any) -> BillbeeClient:
    from billbee_pulpo_pipeline.sandboxes import credentials

    options: dict[str, Any] = {"backoff_factor": 0.05}
    options.update(overrides)
    return BillbeeClient(sandbox.billbee_url, credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD,
                         credentials.BILLBEE_API_KEY, **options)


def test_sandbox_paging_products_and_orders(billbee_sandbox):
    client = sandbox_client(billbee_sandbox)
    total_products = client.check_connection().TotalRows
    assert total_products and total_products > 100
    pages = list(client.iter_product_pages(page_size=100))
    assert [p.number for p in pages] == list(range(1, -(-total_products // 100) + 1))
    assert all(p.paging.TotalRows == total_products for p in pages)
    assert len({product.Id for page in pages for product in page.items}) == total_products
    order_pages = list(client.iter_order_pages(page_size=250))
    orders = [order for page in order_pages for order in page.items]
    assert len({o.BillBeeOrderId for o in orders}) == order_pages[0].paging.TotalRows == len(orders)
    assert all(o.CreatedAt.tzinfo is not None for o in orders)
    assert client.stats.throttled == 0


def test_sandbox_wrong_password_is_authentication_error(billbee_sandbox):
    from billbee_pulpo_pipeline.sandboxes import credentials

    client = BillbeeClient(billbee_sandbox.billbee_url, credentials.BILLBEE_USERNAME, "wrong-password",
                           credentials.BILLBEE_API_KEY)
    with pytest.raises(AuthenticationError) as info:
        client.check_connection()
    assert "wrong-password" not in str(info.value) and credentials.BILLBEE_API_KEY not in str(info.value)
    assert "Einstellungen" in str(info.value)


def test_sandbox_paced_client_provokes_no_429_and_unpaced_one_recovers(billbee_sandbox):
    billbee_sandbox.reset_stats("billbee")
    paced = sandbox_client(billbee_sandbox)
    for _ in range(6):
        paced.get_stock_locations()
    assert billbee_sandbox.stats("billbee")["throttled_429"] == 0 and paced.stats.throttled == 0
    unpaced = sandbox_client(billbee_sandbox, rate_per_endpoint=0, rate_per_user=0)
    for _ in range(6):
        unpaced.get_stock_locations()  # the sandbox throttles; Retry-After is honoured and calls succeed
    assert unpaced.stats.throttled >= 1
    assert billbee_sandbox.stats("billbee")["throttled_429"] == unpaced.stats.throttled
