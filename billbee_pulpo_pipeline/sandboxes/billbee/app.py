"""Billbee REST API v1 sandbox: the spec's paths, parameters, envelopes and models over a lazy world.

Endpoints (all under /api/v1, spec `billbee-api-swagger2.yaml`):

    GET    /orders                      paged; minOrderDate, maxOrderDate, shopId[], orderStateId[], tag[],
                                        excludeTags, minimumBillBeeOrderId, modifiedAtMin (exclusive),
                                        modifiedAtMax (inclusive), articleTitleSource
    POST   /orders                      create (201, ApiResult<Order>)
    GET    /orders/{id}                 ApiResult<Order>; extra throttle 6 per order per minute
    GET    /orders/findbyextref/{extRef}
    PUT    /orders/{id}/orderstate      {NewStateId}; 200 with an empty body
    POST   /orders/{id}/shipment        ApiAddShipmentToOrderModel; 200 with an empty body
    POST   /orders/{id}/tags            add tags;  PUT: replace tags
    POST   /shipment/shipwithlabel      ApiResult<ShipmentWithLabelResult>
    GET    /shipment/shipments          paged; createdAtMin/Max, orderId, minimumShipmentId,
                                        shippingProviderId
    GET    /shipment/shippingproviders  bare JSON array with lower-case keys (as the official SDKs read it)
    GET    /shipment/shippingcarriers, /enums/shippingcarriers, /enums/orderstates, /enums/shipmenttypes
    GET    /products                    paged; minCreatedAt, minimumBillBeeArticleId, maximumBillBeeArticleId
    POST   /products                    create;  GET/PATCH/DELETE /products/{id} (GET: lookupBy=id|sku|ean)
    GET    /products/stocks, /products/reservedamount
    POST   /products/updatestock, /products/updatestockmultiple, /products/updatestockcode

Control routes besides the common ones (see `common.py`):

    GET  /__sandbox/summary                      counts: products, orders, overlay, shipments, start time
    POST /__sandbox/orders/{id}/touch            bump an order's LastModifiedAt (as an edit in the UI would)
    PUT  /__sandbox/orders/{id}/packagetype      {"assigned": true} lets DHL Express labels succeed for it
    PUT  /__sandbox/orders/{id}/ordernumber      {"OrderNumber": "…"}: renumber an order, as an edit in the UI
    POST /__sandbox/reset                        {seed, products, orders, marketplace_skus}: rebuild the world
                                                 (marketplace_skus: the first line of Amazon orders is sold
                                                 under a seller SKU, AMZ-<article SKU>; off by default)
    PUT  /__sandbox/products/delete_during_scan  {"product_id": id, "after_page": N}: once GET /products
                                                 has served page N (to the product, not the simulator),
                                                 delete that product, as a merchant deleting an article
                                                 while a scan pages; off by default, one shot

Decisions where the spec and notes are silent (each a guess at the live service, kept in one place):

- ErrorDescription carries the error NAME ("NoError", "InvalidShippingServices"), as real responses
  do (notes §3), although the spec types it as an int.
- Unknown order id -> HTTP 404 with ErrorCode 2 (OrderNotFound); unknown article -> HTTP 404, ErrorCode 11.
  Malformed input (bad types, pageSize outside 1..250, unknown state id) -> HTTP 400 envelope, ErrorCode 11.
- JSON property names are matched case-insensitively and numeric strings are accepted for numbers,
  as Json.NET does; booleans, non-numeric strings and fractions for integers are rejected.
- Business refusals of shipwithlabel (package type missing: ErrorCode 22; order canceled/deleted:
  5/6) answer HTTP 200 with the error in the envelope; an unknown provider/product answers 400.
- updatestock rows: a missing or empty Sku (without BillbeeId) is a row error "Parameter SKU is empty"
  in HTTP 200 (PHP SDK issue #78 shows exactly this for a lost Sku); an unknown SKU is "Article not
  found"; a bundle (calculated stock) and an unknown StockId are row errors too.
- Reservations (UnfulfilledAmount) count open orders in states.DEFAULT_RESERVING_STATES on the default
  stock; orders never change StockCurrent themselves (the warehouse's absolute pushes own it).
- Query dates without an offset are read as UTC; '+' decoded to a space in an offset is repaired.
  Knob `filter_dates_as` (PUT /__sandbox/config, default null = honour the offset): "Europe/Berlin" or
  "UTC" reads the wall time of GET /orders' date filters in that zone and ignores the offset, as the
  official C# SDK's offset-less local times suggest Billbee might (ambiguous autumn hour: standard time).
- Every order change (state, shipment, tags, label) sets LastModifiedAt to now (UTC), strictly after
  the previous change, so no two changes share a timestamp. POST /orders/{id}/shipment does not
  change the state; shipwithlabel sets state 4 unless ChangeStateToSend is false.
- GET /orders pages are ordered by BillBeeOrderId and evaluated per request (no snapshot), so an
  order modified while a client pages moves and shifts later pages, as the live API would. GET
  /products likewise (by article id): a deleted product shifts every later page by one.
- DELETE /products/{id} answers 200 with an empty envelope; the article is gone from every read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billbee_pulpo_pipeline.clients.billbee.states import ORDER_STATES
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.sandboxes.billbee.data import (
    CARRIERS,
    PROVIDER_BY_ID,
    PROVIDERS,
    SHOP_BY_ID,
    SHOPS,
    STOCK_BY_ID,
    STOCKS,
    WORLD_OPTIONS,
    OrderFilter,
    ProductCore,
    ShipmentFilter,
    ShippingProduct,
    ShippingProvider,
    World,
    WorldError,
    iso,
    label_pdf_base64,
    now_ms,
)
from billbee_pulpo_pipeline.sandboxes.catalog import billbee_product_id
from billbee_pulpo_pipeline.sandboxes.common import SIMULATOR_HEADER, SandboxApp, SandboxError, ThrottleRule

API = "/api/v1"
DENIED = {"Message": "Authorization has been denied for this request."}
ERROR_NAMES = {
    0: "NoError",
    1: "ApiNotActivated",
    2: "OrderNotFound",
    3: "InvoiceNotCreated",
    4: "CantCreateInvoice",
    5: "OrderCanceled",
    6: "OrderDeleted",
    7: "OrderNotPaid",
    8: "InternalError",
    9: "OrderExists",
    10: "WrongShopId",
    11: "InvalidData",
    22: "InvalidShippingServices",
}
ORDER_DETAIL = "GET /api/v1/orders/{id}"
MAX_PAGE_SIZE = 250
FILTER_DATE_READINGS = (None, "UTC", "Europe/Berlin")  # the `filter_dates_as` knob: None honours the offset
_INT_RE = re.compile(r"\s*[+-]?\d+\s*")


def json_response(content: Any, status: int = 200) -> Response:
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Response(body.encode("utf-8"), status_code=status, media_type="application/json; charset=utf-8")


def envelope(data: Any, code: int = 0, message: str | None = None) -> dict[str, Any]:
    return {
        "ErrorMessage": message,
        "ErrorCode": code,
        "ErrorDescription": ERROR_NAMES.get(code, str(code)),
        "Data": data,
    }


def paged(data: list[Any], page: int, page_size: int, total: int) -> dict[str, Any]:
    return {
        "Paging": {
            "Page": page,
            "TotalPages": -(-total // page_size),
            "TotalRows": total,
            "PageSize": page_size,
        },
        **envelope(data),
    }


def api_error(status: int, message: str, code: int = 11) -> SandboxError:
    return SandboxError(status, message, response=json_response(envelope(None, code, message), status))


def _fingerprint(secret: str) -> str:
    """Bucket keys hold a hash, never the API key itself."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


# ---- input parsing (Json.NET / ASP.NET binding rules, approximately) --------------------------------


def query_values(request: Request) -> dict[str, list[str]]:
    """Query parameters by lower-case name; `x[0]=`, `x[]=` and repeated `x=` all collect into x."""
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        name = re.sub(r"\[\d*\]$", "", key).lower()
        out.setdefault(name, []).append(value)
    return out


def parse_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise api_error(400, f"The value '{value}' is not valid for {name}.")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_RE.fullmatch(value):
        return int(value)
    raise api_error(400, f"The value '{value}' is not valid for {name}.")


def parse_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or value is None:
        raise api_error(400, f"The value '{value}' is not valid for {name}.")
    try:
        number = float(value) if isinstance(value, (int, float, str)) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise api_error(400, f"The value '{value}' is not valid for {name}.")
    return number


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise api_error(400, f"The value '{value}' is not valid for {name}.")


def parse_datetime_us(value: str, name: str, wall_zone: str | None = None) -> int:
    """Microseconds since the epoch; accepts ISO-8601 (with or without offset) and 'yyyy-MM-dd HH:mm'.
    `wall_zone` (the `filter_dates_as` knob) reads the wall time in that zone and ignores any offset;
    in the repeated autumn hour it takes standard time, as .NET's TimeZoneInfo.ConvertTimeToUtc does."""
    text = value.strip()
    if re.search(r"\d \d{2}:?\d{2}$", text) and "T" in text:
        text = text[:-6] + "+" + text[-5:] if text[-6] == " " else text  # '+' decoded to a space
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise api_error(400, f"The value '{value}' is not valid for {name}.") from None
    if wall_zone is not None:
        moment = moment.replace(tzinfo=UTC if wall_zone == "UTC" else ZoneInfo(wall_zone), fold=1)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _q_int(q: dict[str, list[str]], name: str, default: int | None = None) -> int | None:
    values = q.get(name.lower())
    return default if not values else parse_int(values[-1], name)


def _q_date_ms(q: dict[str, list[str]], name: str, *, round_up: bool = False,
              wall_zone: str | None = None) -> int | None:
    """A date filter in ms; inclusive lower bounds round up, other bounds down (see data.OrderFilter)."""
    values = q.get(name.lower())
    if not values or not values[-1].strip():
        return None
    us = parse_datetime_us(values[-1], name, wall_zone)
    return -(-us // 1000) if round_up else us // 1000


def _q_paging(q: dict[str, list[str]]) -> tuple[int, int]:
    page = _q_int(q, "page", 1)
    size = _q_int(q, "pageSize", 50)
    assert page is not None and size is not None
    if page < 1:
        raise api_error(400, "page must be 1 or greater")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise api_error(400, f"pageSize must be between 1 and {MAX_PAGE_SIZE}")
    return page, size


class Body:
    """A JSON object read with Json.NET's case-insensitive property matching."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.lower = {str(k).lower(): v for k, v in raw.items()}

    def has(self, name: str) -> bool:
        return self.lower.get(name.lower()) is not None

    def get(self, name: str) -> Any:
        return self.lower.get(name.lower())

    def get_int(self, name: str, required: bool = False) -> int | None:
        value = self.get(name)
        if value is None:
            if required:
                raise api_error(400, f"{name} is required")
            return None
        return parse_int(value, name)

    def get_number(self, name: str, required: bool = False) -> float | None:
        value = self.get(name)
        if value is None:
            if required:
                raise api_error(400, f"{name} is required")
            return None
        return parse_number(value, name)

    def get_bool(self, name: str, default: bool) -> bool:
        value = self.get(name)
        return default if value is None else parse_bool(value, name)

    def get_str(self, name: str) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise api_error(400, f"The value for {name} must be a string.")

    def get_obj(self, name: str) -> Body | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise api_error(400, f"{name} must be an object.")
        return Body(value)

    def get_list(self, name: str) -> list[Any]:
        value = self.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise api_error(400, f"{name} must be an array.")
        return value


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise api_error(400, "The request body is required.")
    try:
        return json.loads(raw)
    except ValueError:
        raise api_error(400, "The request body is not valid JSON.") from None


async def read_object(request: Request) -> Body:
    value = await read_json(request)
    if not isinstance(value, dict):
        raise api_error(400, "The request body must be a JSON object.")
    return Body(value)


def _path_int(request: Request, name: str = "id") -> int:
    return parse_int(request.path_params[name], name)


def _fmt(number: float) -> str:
    return f"{number:g}"


# ---- the app -----------------------------------------------------------------------------------------


class BillbeeSandbox(SandboxApp):
    system = "billbee"

    def __init__(
        self, *, seed: int = 1, products: int = 1000, orders: int = 2000, throttle: bool = True,
        **world_options: Any,
    ) -> None:
        super().__init__(seed=seed, throttle=throttle)
        self.world = World(seed=seed, products=products, orders=orders, **world_options)
        # None: date filters of GET /orders honour their offset; a zone name: their wall time is read in
        # that zone and the offset ignored (Billbee does not document which it does; see filter_zone.py).
        self.filter_dates_as: str | None = None
        self._register()

    def update_config(self, values: dict[str, Any]) -> None:
        if "filter_dates_as" in values:
            zone = values["filter_dates_as"]
            if zone not in FILTER_DATE_READINGS:
                raise ValueError(f"filter_dates_as must be one of {FILTER_DATE_READINGS}, got {zone!r}")
            self.filter_dates_as = zone
        super().update_config(values)

    def config_values(self) -> dict[str, Any]:
        return {**super().config_values(), "filter_dates_as": self.filter_dates_as}

    # ---- hooks ---------------------------------------------------------------------------------

    @staticmethod
    def _basic(request: Request) -> tuple[str, str] | None:
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = (
                base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None

    def authenticate(self, request: Request) -> Response | None:
        key = request.headers.get("x-billbee-api-key", "")
        basic = self._basic(request) or ("", "")
        ok = all(
            [
                hmac.compare_digest(key.encode(), credentials.BILLBEE_API_KEY.encode()),
                hmac.compare_digest(basic[0].encode(), credentials.BILLBEE_USERNAME.encode()),
                hmac.compare_digest(basic[1].encode(), credentials.BILLBEE_API_PASSWORD.encode()),
            ]
        )
        return None if ok else json_response(DENIED, 401)

    def throttle_rules(self, request: Request, template: str) -> list[ThrottleRule]:
        key = _fingerprint(request.headers.get("x-billbee-api-key", ""))
        user = _fingerprint((self._basic(request) or ("", ""))[0])
        rules: list[ThrottleRule] = [
            (f"key:{key}", 50.0),
            (f"user:{key}:{user}", 10.0),
            (f"endpoint:{key}:{user}:{template}", 2.0),
        ]
        if template == ORDER_DETAIL:  # 6 calls per order per minute, on top
            rules.append((f"order:{key}:{user}:{request.path_params.get('id')}", 6 / 60, 6.0))
        return rules

    def error_response(self, status: int, message: str) -> Response:
        return json_response({"Message": message}, status)  # ASP.NET Web API's own error body

    def reset_world(self, params: dict[str, Any]) -> dict[str, Any]:
        self.seed = int(params.get("seed", self.seed))
        self.world = World(
            seed=self.seed,
            products=int(params.get("products", self.world.n_products)),
            orders=int(params.get("orders", self.world.n_orders)),
            marketplace_skus=bool(params.get("marketplace_skus", False)),
            **{k: params[k] for k in WORLD_OPTIONS if params.get(k) is not None},
        )
        return self.world.summary()

    def extra_control_routes(self) -> list[Route]:
        async def summary(_: Request) -> Response:
            return json_response(self.world.summary())

        async def touch(request: Request) -> Response:
            order = self._call(self.world.touch, _path_int(request))
            return json_response(
                {"BillBeeOrderId": order["BillBeeOrderId"], "LastModifiedAt": order["LastModifiedAt"]}
            )

        async def order_number(request: Request) -> Response:
            body = await read_object(request)
            order = self._call(self.world.set_order_number, _path_int(request), body.get_str("OrderNumber") or "")
            return json_response({"BillBeeOrderId": order["BillBeeOrderId"], "OrderNumber": order["OrderNumber"]})

        async def package_type(request: Request) -> Response:
            body = await read_object(request)
            self._call(self.world.set_package_type, _path_int(request), body.get_bool("assigned", True))
            return json_response({"ok": True})

        async def delete_during_scan(request: Request) -> Response:
            body = await read_object(request)
            index = self.world.product_index_by_id(body.get_int("product_id", required=True) or 0)
            if index is None:
                raise api_error(404, "Article not found")
            self.world.delete_during_scan = (index, body.get_int("after_page") or 1)
            return json_response({"armed": True})

        return [
            Route("/__sandbox/products/delete_during_scan", self._guard(delete_during_scan), methods=["PUT"]),
            Route("/__sandbox/summary", self._guard(summary), methods=["GET"]),
            Route("/__sandbox/orders/{id}/touch", self._guard(touch), methods=["POST"]),
            Route("/__sandbox/orders/{id}/packagetype", self._guard(package_type), methods=["PUT"]),
            Route("/__sandbox/orders/{id}/ordernumber", self._guard(order_number), methods=["PUT"]),
        ]

    @staticmethod
    def _guard(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except SandboxError as exc:
                return exc.response or json_response({"error": exc.message}, exc.status)

        return endpoint

    @staticmethod
    def _call(fn: Any, *args: Any) -> Any:
        """Run a world operation, turning its refusals into envelope errors."""
        try:
            return fn(*args)
        except WorldError as exc:
            raise api_error(exc.status, exc.message, exc.code) from None

    # ---- routes --------------------------------------------------------------------------------

    def _register(self) -> None:
        r = self.api_route
        r("GET", f"{API}/orders", self.list_orders)
        r("POST", f"{API}/orders", self.create_order)
        r("GET", f"{API}/orders/findbyextref/{{extRef}}", self.find_by_ext_ref)
        r("GET", f"{API}/orders/{{id}}", self.get_order)
        r("PUT", f"{API}/orders/{{id}}/orderstate", self.update_state)
        r("POST", f"{API}/orders/{{id}}/shipment", self.add_shipment)
        r("POST", f"{API}/orders/{{id}}/tags", self.add_tags)
        r("PUT", f"{API}/orders/{{id}}/tags", self.set_tags)
        r("POST", f"{API}/shipment/shipwithlabel", self.ship_with_label)
        r("GET", f"{API}/shipment/shipments", self.list_shipments)
        r("GET", f"{API}/shipment/shippingproviders", self.shipping_providers)
        r("GET", f"{API}/shipment/shippingcarriers", self.shipping_carriers)
        r("GET", f"{API}/enums/shippingcarriers", self.enum_carriers)
        r("GET", f"{API}/enums/orderstates", self.enum_order_states)
        r("GET", f"{API}/enums/shipmenttypes", self.enum_shipment_types)
        r("GET", f"{API}/products/stocks", self.stocks)
        r("GET", f"{API}/products/reservedamount", self.reserved_amount)
        r("POST", f"{API}/products/updatestock", self.update_stock)
        r("POST", f"{API}/products/updatestockmultiple", self.update_stock_multiple)
        r("POST", f"{API}/products/updatestockcode", self.update_stock_code)
        r("GET", f"{API}/products", self.list_products)
        r("POST", f"{API}/products", self.create_product)
        r("GET", f"{API}/products/{{id}}", self.get_product)
        r("PATCH", f"{API}/products/{{id}}", self.patch_product)
        r("DELETE", f"{API}/products/{{id}}", self.delete_product)

    # ---- orders --------------------------------------------------------------------------------

    async def list_orders(self, request: Request) -> Response:
        q = query_values(request)
        page, size = _q_paging(q)
        states = q.get("orderstateid")
        shops = q.get("shopid")
        title_source = self._title_source(q)
        wall = self.filter_dates_as
        f = OrderFilter(
            min_order_ms=_q_date_ms(q, "minOrderDate", round_up=True, wall_zone=wall),
            max_order_ms=_q_date_ms(q, "maxOrderDate", wall_zone=wall),
            modified_min_ms=_q_date_ms(q, "modifiedAtMin", wall_zone=wall),
            modified_max_ms=_q_date_ms(q, "modifiedAtMax", wall_zone=wall),
            min_order_id=_q_int(q, "minimumBillBeeOrderId"),
            states=frozenset(parse_int(v, "orderStateId") for v in states) if states else None,
            shops=frozenset(parse_int(v, "shopId") for v in shops) if shops else None,
            tags=tuple(t for t in q.get("tag", []) if t),
            exclude_tags=parse_bool(q["excludetags"][-1], "excludeTags") if q.get("excludetags") else False,
        )
        total, orders = self.world.order_page(f, page, size, title_source)
        return json_response(paged(orders, page, size, total))

    @staticmethod
    def _title_source(q: dict[str, list[str]]) -> int:
        source = _q_int(q, "articleTitleSource", 0)
        if source not in (0, 1, 2, 3):
            raise api_error(400, "articleTitleSource must be 0, 1, 2 or 3")
        return 0 if source == 3 else int(source)

    async def get_order(self, request: Request) -> Response:
        order_id = _path_int(request)
        order = self.world.get_order(order_id, self._title_source(query_values(request)))
        if order is None:
            raise api_error(404, f"Order {order_id} not found", 2)
        return json_response(envelope(order))

    async def find_by_ext_ref(self, request: Request) -> Response:
        ref = request.path_params["extRef"]
        order_id = self.world.find_by_ext_ref(ref)
        order = None if order_id is None else self.world.get_order(order_id)
        if order is None:
            raise api_error(404, f"Order {ref} not found", 2)
        return json_response(envelope(order))

    async def update_state(self, request: Request) -> Response:
        order_id = _path_int(request)
        body = await read_object(request)
        state = body.get_int("NewStateId", required=True)
        if state not in ORDER_STATES:
            raise api_error(400, f"NewStateId {state} is not a valid order state")
        self._call(self.world.set_state, order_id, state)
        return Response(status_code=200)

    async def add_shipment(self, request: Request) -> Response:
        order_id = _path_int(request)
        body = await read_object(request)
        shipping_id = body.get_str("ShippingId")
        if not shipping_id:
            raise api_error(400, "ShippingId is required")
        body.get_str("OrderId")
        body.get_str("Comment")
        provider, product = self._provider_product(
            body.get_int("ShippingProviderId"), body.get_int("ShippingProviderProductId")
        )
        carrier = body.get_int("CarrierId")
        if carrier is not None and carrier not in CARRIERS:
            raise api_error(400, f"CarrierId {carrier} is not a known carrier")
        shipment_type = body.get_int("ShipmentType") or 0
        if shipment_type not in (0, 1):
            raise api_error(400, "ShipmentType must be 0 (shipment) or 1 (return)")
        self._call(
            lambda: self.world.add_shipment(
                order_id,
                shipping_id=shipping_id,
                provider=provider,
                product=product,
                carrier=carrier,
                shipment_type=shipment_type,
            )
        )
        return Response(status_code=200)

    @staticmethod
    def _provider_product(
        provider_id: int | None, product_id: int | None
    ) -> tuple[ShippingProvider | None, ShippingProduct | None]:
        provider = None
        if provider_id is not None:
            provider = PROVIDER_BY_ID.get(provider_id)
            if provider is None:
                raise api_error(400, f"Shipping provider {provider_id} not found")
        if product_id is None:
            return provider, None
        for candidate in [provider] if provider else list(PROVIDERS):
            for product in candidate.products:
                if product.id == product_id:
                    return candidate, product
        raise api_error(400, f"Shipping product {product_id} not found")

    async def _tags(self, request: Request, replace: bool) -> Response:
        order_id = _path_int(request)
        body = await read_object(request)
        tags = body.get_list("Tags")
        if not all(isinstance(t, str) for t in tags):
            raise api_error(400, "Tags must be a list of strings")
        self._call(self.world.add_tags, order_id, [t for t in tags if t.strip()], replace)
        return json_response(envelope(None))

    async def add_tags(self, request: Request) -> Response:
        return await self._tags(request, replace=False)

    async def set_tags(self, request: Request) -> Response:
        return await self._tags(request, replace=True)

    async def create_order(self, request: Request) -> Response:
        body = await read_object(request)
        created_text = body.get_str("CreatedAt")
        if not created_text:
            raise api_error(400, "CreatedAt is required")
        created = parse_datetime_us(created_text, "CreatedAt") // 1000
        shop_id = body.get_int("ApiAccountId") or _q_int(query_values(request), "shopId") or SHOPS[0].id
        shop = SHOP_BY_ID.get(shop_id)
        if shop is None:
            raise api_error(400, f"Shop {shop_id} not found", 10)
        state = body.get_int("State") or 1
        if state not in ORDER_STATES:
            raise api_error(400, f"State {state} is not a valid order state")
        items = [self._order_item(raw, k) for k, raw in enumerate(body.get_list("OrderItems"))]
        invoice = self._address(body.get_obj("InvoiceAddress"))
        shipping = (
            self._address(body.get_obj("ShippingAddress")) if body.has("ShippingAddress") else dict(invoice)
        )
        order = self.world.new_order_skeleton(shop, created, items, invoice, shipping)
        order.update(
            {
                "Id": body.get_str("Id") or "",
                "OrderNumber": body.get_str("OrderNumber") or "",
                "State": state,
                "Currency": body.get_str("Currency") or "EUR",
                "IsFromBillbeeApi": True,
                "ShippingCost": body.get_number("ShippingCost") or 0.0,
                "SellerComment": body.get_str("SellerComment"),
                "Tags": [t for t in body.get_list("Tags") if isinstance(t, str)],
                "VatMode": body.get_int("VatMode") or 0,
                "PaymentMethod": body.get_int("PaymentMethod"),
                "LanguageCode": body.get_str("LanguageCode") or "de",
            }
        )
        if body.has("TotalCost"):
            order["TotalCost"] = body.get_number("TotalCost")
        provider, product = self._provider_product(
            body.get_int("ShippingProviderId"), body.get_int("ShippingProviderProductId")
        )
        if provider:
            order["ShippingProviderId"], order["ShippingProviderName"] = provider.id, provider.name
        if product:
            order["ShippingProviderProductId"], order["ShippingProviderProductName"] = (
                product.id,
                product.display_name,
            )
        for name in ("PayedAt", "ConfirmedAt", "ShippedAt"):
            text = body.get_str(name)
            order[name] = iso(parse_datetime_us(text, name) // 1000) if text else None
        if state in (3, 4, 5, 7, 9, 13, 16) and not order["PayedAt"]:
            order["PayedAt"] = iso(now_ms())
        if order["PayedAt"]:
            order["PaidAmount"] = body.get_number("PaidAmount") or round(
                order["TotalCost"] + order["ShippingCost"], 2
            )
        stored = self._call(self.world.create_order, order, created)
        return json_response(envelope(stored), 201)

    def _order_item(self, raw: Any, k: int) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise api_error(400, f"OrderItems[{k}] must be an object")
        item = Body(raw)
        product = item.get_obj("Product") or Body({})
        sku = product.get_str("SKU")
        index = None
        if product.has("BillbeeId"):
            index = self.world.product_index_by_id(product.get_int("BillbeeId") or 0)
        if index is None and sku:
            index = self.world.product_index_by_sku(sku)
        core = self.world.product_core(index) if index is not None else None
        quantity = item.get_number("Quantity")
        quantity = 1.0 if quantity is None else quantity
        price = item.get_number("TotalPrice")
        total = round(price if price is not None else (core.price * quantity if core else 0.0), 2)
        external_id = product.get_str("Id") or (sku or "")
        return {
            "BillbeeId": 0,
            "TransactionId": item.get_str("TransactionId"),
            "Product": {
                "OldId": product.get_str("OldId"),
                "Id": external_id,
                "Title": product.get_str("Title") or (core.title_de if core else ""),
                "Weight": product.get_int("Weight")
                if product.has("Weight")
                else (core.weight_g if core else None),
                "SKU": sku,
                "SkuOrId": sku or external_id,
                "IsDigital": product.get_bool("IsDigital", False),
                "Images": [],
                "EAN": product.get_str("EAN") or (core.ean if core else None),
                "PlatformData": product.get_str("PlatformData"),
                "TARICCode": product.get_str("TARICCode"),
                "CountryOfOrigin": product.get_str("CountryOfOrigin"),
                "BillbeeId": billbee_product_id(index) if index is not None else None,
                "Type": (2 if core.is_bundle else 1) if core else None,
            },
            "Quantity": quantity,
            "TotalPrice": total,
            "TaxAmount": item.get_number("TaxAmount") or round(total * 19 / 119, 2),
            "TaxIndex": item.get_int("TaxIndex") if item.has("TaxIndex") else 1,
            "Discount": item.get_number("Discount") or 0.0,
            "Attributes": [],
            "GetPriceFromArticleIfAny": item.get_bool("GetPriceFromArticleIfAny", False),
            "IsCoupon": item.get_bool("IsCoupon", False),
            "ShippingProfileId": item.get_str("ShippingProfileId"),
            "DontAdjustStock": item.get_bool("DontAdjustStock", False),
            "UnrebatedTotalPrice": total,
            "SerialNumber": item.get_str("SerialNumber"),
            "InvoiceSKU": sku,
        }

    @staticmethod
    def _address(raw: Body | None) -> dict[str, Any]:
        fields = (
            "FirstName",
            "LastName",
            "Company",
            "NameAddition",
            "Street",
            "HouseNumber",
            "Zip",
            "City",
            "CountryISO2",
            "Country",
            "Line2",
            "Email",
            "State",
            "Phone",
        )
        address: dict[str, Any] = {"BillbeeId": None}
        for name in fields:
            address[name] = raw.get_str(name) if raw else None
        return address

    # ---- shipping ------------------------------------------------------------------------------

    async def ship_with_label(self, request: Request) -> Response:
        body = await read_object(request)
        order_id = body.get_int("OrderId", required=True)
        provider_id = body.get_int("ProviderId", required=True)
        product_id = body.get_int("ProductId", required=True)
        change_state = body.get_bool("ChangeStateToSend", True)
        weight = body.get_int("WeightInGram")
        ship_date = body.get_str("ShipDate")
        ship_ms = parse_datetime_us(ship_date, "ShipDate") // 1000 if ship_date else None
        reference = body.get_str("ClientReference")
        body.get_str("PrinterName")
        dimension = body.get_obj("Dimension")
        if dimension is not None:
            for side in ("length", "width", "height"):
                value = dimension.get_number(side)
                if value is not None and value <= 0:
                    raise api_error(400, f"Dimension.{side} must be positive")
        if weight is not None and weight <= 0:
            raise api_error(400, "WeightInGram must be positive")
        assert order_id is not None
        order = self.world.get_order(order_id)
        if order is None:
            raise api_error(404, f"Order {order_id} not found", 2)
        provider, product = self._provider_product(provider_id, product_id)
        assert provider is not None and product is not None
        if order["State"] == 8:
            return json_response(envelope(None, 5, "Die Bestellung wurde storniert"))
        if order["State"] == 6:
            return json_response(envelope(None, 6, "Die Bestellung wurde gelöscht"))
        if product.requires_package_type and not self.world.package_type_assigned(order_id):
            return json_response(envelope(None, 22, "Bitte einen Verpackungstyp auswählen"))
        tracking = self.world.tracking_number(provider, order_id * 31 + len(self.world.shipments))
        shipment = self.world.add_shipment(
            order_id, shipping_id=tracking, provider=provider, product=product, carrier=None, shipment_type=0
        )
        if change_state and order["State"] != 4:
            self.world.set_state(order_id, 4)
        address = order.get("ShippingAddress") or {}
        label_lines = [
            provider.name,
            product.display_name,
            f"Sendung {tracking}",
            f"{address.get('FirstName') or ''} {address.get('LastName') or ''}",
            f"{address.get('Zip') or ''} {address.get('City') or ''} {address.get('CountryISO2') or ''}",
            reference or order.get("OrderNumber") or "",
        ]
        export_docs = (
            label_pdf_base64(["Zollinhaltserklärung CN23", f"Sendung {tracking}"])
            if address.get("CountryISO2") == "CH"
            else None
        )
        result = {
            "OrderId": order_id,
            "OrderReference": order.get("OrderNumber"),
            "ShippingId": tracking,
            "TrackingUrl": shipment["TrackingUrl"],
            "LabelDataPdf": label_pdf_base64(label_lines),
            "ExportDocsPdf": export_docs,
            "Carrier": provider.carrier_name,
            "ShippingDate": iso(ship_ms) if ship_ms is not None else shipment["Created"],
        }
        return json_response(envelope(result))

    async def list_shipments(self, request: Request) -> Response:
        q = query_values(request)
        page, size = _q_paging(q)
        f = ShipmentFilter(
            created_min_ms=_q_date_ms(q, "createdAtMin", round_up=True),
            created_max_ms=_q_date_ms(q, "createdAtMax"),
            order_id=_q_int(q, "orderId"),
            min_shipment_id=_q_int(q, "minimumShipmentId"),
            provider_id=_q_int(q, "shippingProviderId"),
        )
        total, shipments = self.world.shipment_page(f, page, size)
        return json_response(paged(shipments, page, size, total))

    async def shipping_providers(self, _: Request) -> Response:
        return json_response(
            [
                {
                    "id": p.id,
                    "name": p.name,
                    "products": [
                        {"id": x.id, "displayName": x.display_name, "productName": x.product_name}
                        for x in p.products
                    ],
                }
                for p in PROVIDERS
            ]
        )

    async def shipping_carriers(self, _: Request) -> Response:
        used = sorted({p.carrier_id for p in PROVIDERS})
        return json_response([{"Id": c, "Name": CARRIERS[c]} for c in used])

    async def enum_carriers(self, _: Request) -> Response:
        return json_response([{"Id": c, "Name": name} for c, name in CARRIERS.items()])

    async def enum_order_states(self, _: Request) -> Response:
        return json_response([{"Id": s, "Name": name} for s, name in ORDER_STATES.items()])

    async def enum_shipment_types(self, _: Request) -> Response:
        return json_response([{"Id": 0, "Name": "Shipment"}, {"Id": 1, "Name": "Retoure"}])

    # ---- products ------------------------------------------------------------------------------

    def product_json(self, core: ProductCore) -> dict[str, Any]:
        world = self.world
        product_id = billbee_product_id(core.index)
        reserved = world.reserved_amount(product_id)
        current = world.stock_of(core, 1)
        stocks = [
            {
                "Name": loc.name,
                "StockId": loc.id,
                "StockCurrent": current if loc.id == 1 else world.stock_of(core, loc.id),
                "StockCurrentIsCalculated": core.is_bundle,
                "StockWarning": 5.0,
                "StockCode": core.stock_codes.get(loc.id),
                "UnfulfilledAmount": reserved if loc.is_default else 0.0,
                "StockDesired": 50.0,
            }
            for loc in STOCKS
        ]
        bom = [
            {"Amount": amount, "ArticleId": billbee_product_id(c), "SKU": world.product_core(c).sku}
            for c, amount in core.bom
        ]
        titles = [
            {"Text": core.title_de, "LanguageCode": "DE"},
            {"Text": core.title_en, "LanguageCode": "EN"},
            *core.extra_titles,
        ]
        return {
            "InvoiceText": [{"Text": core.title_de, "LanguageCode": "DE"}],
            "Manufacturer": core.manufacturer,
            "Id": product_id,
            "Title": titles,
            "Description": [],
            "ShortDescription": [],
            "BasicAttributes": [],
            "Images": [],
            "VatIndex": 1,
            "Price": core.price,
            "CostPrice": round(core.price * 0.45, 2),
            "Vat1Rate": 19.0,
            "Vat2Rate": 7.0,
            "StockDesired": 50.0,
            "StockCurrent": current,
            "StockWarning": 5.0,
            "SKU": core.sku,
            "EAN": core.ean,
            "Materials": [],
            "Tags": [],
            "Sources": [],
            "Weight": core.weight_g,
            "WeightNet": int(core.weight_g * 0.9),
            "LowStock": current < 5.0,
            "StockCode": core.stock_codes.get(1),
            "StockReduceItemsPerSale": 1.0,
            "Stocks": stocks,
            "Category1": None,
            "Category2": None,
            "Category3": None,
            "Type": 2 if core.is_bundle else 1,
            "Unit": 1,
            "UnitsPerItem": 1.0,
            "SoldAmount": None,
            "SoldSumGross": None,
            "SoldSumNet": None,
            "SoldSumNetLast30Days": None,
            "SoldSumGrossLast30Days": None,
            "SoldAmountLast30Days": None,
            "ShippingProductId": None,
            "IsDigital": False,
            "IsCustomizable": False,
            "DeliveryTime": 2,
            "Recipient": 0,
            "Occasion": 0,
            "CountryOfOrigin": core.country_of_origin,
            "ExportDescription": None,
            "ExportDescriptionMultiLanguage": [],
            "TaricNumber": core.taric,
            "Condition": 1,
            "WidthCm": core.width_cm,
            "LengthCm": core.length_cm,
            "HeightCm": core.height_cm,
            "BillOfMaterial": bom or None,
            "CustomFields": [],
            "IsDeactivated": False,
        }

    async def list_products(self, request: Request) -> Response:
        q = query_values(request)
        page, size = _q_paging(q)
        total, cores = self.world.product_page(
            min_created_ms=_q_date_ms(q, "minCreatedAt", round_up=True),
            min_id=_q_int(q, "minimumBillBeeArticleId"),
            max_id=_q_int(q, "maximumBillBeeArticleId"),
            page=page,
            page_size=size,
        )
        body = json_response(paged([self.product_json(c) for c in cores], page, size, total))
        if request.headers.get(SIMULATOR_HEADER) != "simulator":
            self.world.page_served(page)
        return body

    async def delete_product(self, request: Request) -> Response:
        index = self.world.product_index_by_id(_path_int(request))
        if index is None:
            raise api_error(404, "Article not found")
        self.world.delete_product(index)
        return json_response(envelope(None))

    def _lookup(self, ref: str, lookup_by: str) -> int:
        by = lookup_by.lower()
        if by == "id":
            index = self.world.product_index_by_id(parse_int(ref, "id"))
        elif by == "sku":
            index = self.world.product_index_by_sku(ref)
        elif by == "ean":
            found = self.world.product_indices_by_ean(ref)
            index = found[0] if found else None
        else:
            raise api_error(400, f"lookupBy must be id, sku or ean, not '{lookup_by}'")
        if index is None:
            raise api_error(404, "Article not found")
        return index

    async def get_product(self, request: Request) -> Response:
        q = query_values(request)
        index = self._lookup(request.path_params["id"], (q.get("lookupby") or ["id"])[-1])
        return json_response(envelope(self.product_json(self.world.product_core(index))))

    async def create_product(self, request: Request) -> Response:
        body = await read_object(request)
        missing = [
            n
            for n in ("VatIndex", "Price", "Vat1Rate", "Vat2Rate", "Type", "IsDigital", "IsCustomizable")
            if not body.has(n)
        ]
        if missing:
            raise api_error(400, f"Required fields missing: {', '.join(missing)}")
        for name in ("VatIndex", "Type"):
            body.get_int(name)
        for name in ("Price", "Vat1Rate", "Vat2Rate"):
            body.get_number(name)
        body.get_bool("IsDigital", False)
        body.get_bool("IsCustomizable", False)
        bom = self._bom(body) if body.get_int("Type") == 2 else ()
        titles = self._titles(body.get_list("Title"))
        de = next(
            (t["Text"] for t in titles if t["LanguageCode"].upper() == "DE"),
            titles[0]["Text"] if titles else "",
        )
        en = next((t["Text"] for t in titles if t["LanguageCode"].upper() == "EN"), de)
        stock = body.get_number("StockCurrent") or 0.0
        fields = {
            "sku": body.get_str("SKU") or None,
            "ean": body.get_str("EAN") or "",
            "title_de": de,
            "title_en": en,
            "weight_g": body.get_int("Weight") or 0,
            "length_cm": body.get_number("LengthCm") or 0.0,
            "width_cm": body.get_number("WidthCm") or 0.0,
            "height_cm": body.get_number("HeightCm") or 0.0,
            "bom": bom,
            "price": body.get_number("Price") or 0.0,
            "taric": body.get_str("TaricNumber") or "",
            "country_of_origin": body.get_str("CountryOfOrigin") or "",
            "stocks": {1: stock, 2: 0.0},
            "stock_codes": {1: body.get_str("StockCode") or ""},
            "manufacturer": body.get_str("Manufacturer") or "",
        }
        core = self._call(self.world.create_product, fields)
        return json_response(envelope(self.product_json(core)))

    def _bom(self, body: Body) -> tuple[tuple[int, float], ...]:
        parts = []
        for k, raw in enumerate(body.get_list("BillOfMaterial")):
            if not isinstance(raw, dict):
                raise api_error(400, f"BillOfMaterial[{k}] must be an object")
            part = Body(raw)
            index = (
                self.world.product_index_by_id(part.get_int("ArticleId") or 0)
                if part.has("ArticleId")
                else self.world.product_index_by_sku(part.get_str("SKU") or "")
            )
            if index is None:
                raise api_error(400, f"BillOfMaterial[{k}]: article not found")
            parts.append((index, part.get_number("Amount") or 1.0))
        if not parts:
            raise api_error(400, "A bundle (Type 2) needs a BillOfMaterial")
        return tuple(parts)

    @staticmethod
    def _titles(raw: list[Any]) -> list[dict[str, str]]:
        titles = []
        for k, entry in enumerate(raw):
            if not isinstance(entry, dict):
                raise api_error(400, f"Title[{k}] must be an object {{Text, LanguageCode}}")
            title = Body(entry)
            titles.append(
                {"Text": title.get_str("Text") or "", "LanguageCode": title.get_str("LanguageCode") or "DE"}
            )
        return titles

    async def patch_product(self, request: Request) -> Response:
        index = self.world.product_index_by_id(_path_int(request))
        if index is None:
            raise api_error(404, "Article not found")
        body = await read_object(request)
        core = self.world.product_core(index)
        changes: dict[str, Any] = {}
        simple = {
            "ean": ("EAN", Body.get_str),
            "price": ("Price", Body.get_number),
            "weight_g": ("Weight", Body.get_int),
            "manufacturer": ("Manufacturer", Body.get_str),
            "length_cm": ("LengthCm", Body.get_number),
            "width_cm": ("WidthCm", Body.get_number),
            "height_cm": ("HeightCm", Body.get_number),
            "taric": ("TaricNumber", Body.get_str),
            "country_of_origin": ("CountryOfOrigin", Body.get_str),
        }
        known = {"title", "sku", *(name.lower() for name, _ in simple.values())}
        unknown = [k for k in body.raw if str(k).lower() not in known]
        if unknown:
            raise api_error(400, f"Field(s) not patchable: {', '.join(map(str, unknown))}")
        for attr, (name, read) in simple.items():
            if body.has(name):
                changes[attr] = read(body, name)
        if body.has("Title"):
            titles = self._titles(body.get_list("Title"))
            changes["extra_titles"] = []
            for t in titles:
                lang = t["LanguageCode"].upper()
                if lang == "DE":
                    changes["title_de"] = t["Text"]
                elif lang == "EN":
                    changes["title_en"] = t["Text"]
                else:
                    changes["extra_titles"].append(t)
        if body.has("SKU"):
            sku = body.get_str("SKU") or None
            if sku and sku != core.sku and self.world.product_index_by_sku(sku) is not None:
                raise api_error(400, f"Ein Artikel mit der SKU '{sku}' existiert bereits")
            changes["sku"] = sku
        return json_response(envelope(self.product_json(self.world.patch_product(index, changes))))

    async def stocks(self, _: Request) -> Response:
        return json_response(
            envelope(
                [
                    {"Id": s.id, "Name": s.name, "Description": s.description, "IsDefault": s.is_default}
                    for s in STOCKS
                ]
            )
        )

    async def reserved_amount(self, request: Request) -> Response:
        q = query_values(request)
        ref = (q.get("id") or [""])[-1]
        if not ref:
            raise api_error(400, "id is required")
        index = self._lookup(ref, (q.get("lookupby") or ["id"])[-1])
        stock_id = _q_int(q, "stockId", 1) or 1
        if stock_id not in STOCK_BY_ID:
            raise api_error(400, f"Stock {stock_id} not found")
        amount = self.world.reserved_amount(billbee_product_id(index), stock_id)
        return json_response(envelope({"ReservedAmount": amount}))

    def _check_stock_row(self, raw: Any, k: int) -> Body:
        """Whole-request validation (types), as ASP.NET model binding would reject the request."""
        if not isinstance(raw, dict):
            raise api_error(400, f"Row {k} must be a JSON object")
        row = Body(raw)
        row.get_str("Sku")
        row.get_int("BillbeeId")
        row.get_int("StockId")
        row.get_str("Reason")
        for name in ("NewQuantity", "OldQuantity", "DeltaQuantity"):
            row.get_number(name)
        row.get_bool("ForceSendStockToShops", False)
        row.get_bool("AutosubtractReservedAmount", False)
        return row

    def _stock_row(self, row: Body) -> dict[str, Any]:
        world = self.world
        sku = row.get_str("Sku") or ""
        if row.has("BillbeeId"):
            index = world.product_index_by_id(row.get_int("BillbeeId") or 0)
        elif not sku.strip():
            return envelope(None, 11, "Parameter SKU is empty")
        else:
            index = world.product_index_by_sku(sku)
        if index is None:
            return envelope(None, 11, "Article not found")
        stock_id = row.get_int("StockId") or 1
        if stock_id not in STOCK_BY_ID:
            return envelope(None, 11, f"Stock {stock_id} not found")
        core = world.product_core(index)
        if core.is_bundle:
            return envelope(
                None,
                11,
                "The stock of a bill-of-materials article is calculated from its "
                "components and cannot be set",
            )
        new = row.get_number("NewQuantity")
        if new is None:
            return envelope(None, 11, "Parameter NewQuantity is empty")
        reserved = world.reserved_amount(billbee_product_id(index), stock_id)
        if row.get_bool("AutosubtractReservedAmount", False):
            new -= reserved
        old, current = world.set_stock(index, stock_id, new)
        return envelope(
            {
                "SKU": core.sku,
                "OldStock": old,
                "CurrentStock": current,
                "UnfulfilledAmount": reserved,
                "Message": f"The qty was successfully updated from {_fmt(old)} to {_fmt(current)}",
            }
        )

    async def update_stock(self, request: Request) -> Response:
        body = await read_json(request)
        row = self._check_stock_row(body, 0)
        return json_response(self._stock_row(row))

    async def update_stock_multiple(self, request: Request) -> Response:
        body = await read_json(request)
        if not isinstance(body, list):
            raise api_error(400, "The request body must be a JSON array of UpdateStockApiModel")
        rows = [self._check_stock_row(raw, k) for k, raw in enumerate(body)]
        return json_response([self._stock_row(row) for row in rows])

    async def update_stock_code(self, request: Request) -> Response:
        body = await read_object(request)
        sku = body.get_str("Sku") or ""
        code = body.get_str("StockCode")
        stock_id = body.get_int("StockId") or 1
        if body.has("BillbeeId"):
            index = self.world.product_index_by_id(body.get_int("BillbeeId") or 0)
        elif not sku.strip():
            return json_response(envelope(None, 11, "Parameter SKU is empty"))
        else:
            index = self.world.product_index_by_sku(sku)
        if index is None:
            return json_response(envelope(None, 11, "Article not found"))
        if stock_id not in STOCK_BY_ID:
            return json_response(envelope(None, 11, f"Stock {stock_id} not found"))
        self.world.set_stock_code(index, stock_id, code or "")
        return json_response(envelope({}))
