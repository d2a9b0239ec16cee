"""Plain PULPO WMS REST client (spec v4.6.50, base URL `https://<tenant>.pulpo.co/api/v1`).

Built on the shared plumbing in `clients/http.py`: every HTTP attempt is counted in `stats`,
idempotent methods are retried on 5xx/timeouts/connection errors and every method on 429.
A POST that times out or answers 5xx may have been executed: it raises `TransientApiError` with
`outcome_unknown = True`, and the caller must look before it creates again.

Authentication is the OAuth2 password grant; the token is shared across processes through
`TokenCache` (one token per expiry window: PULPO bans IPs that fetch a token per call).

Merchants (3PL tenants): a client made with `merchant_id` sends it on every product, third party and
sales order it creates or updates (unless the body names one), and its product and third-party
lookups return only that merchant's records: each returned record's own `merchant_id` is checked, and
`GET /iam/third_parties` also gets the filter its spec declares. `GET /inventory/products` declares
none, so none is sent (the spec's parameters only); a `?sku=` lookup then sees one row per merchant
with that SKU and keeps ours. Kits carry no `merchant_id` in the spec: a kit belongs to its product,
which is the merchant's. Order lookups by `order_num` see every merchant (a number another merchant uses is a
collision to handle, not a record to adopt) but prefer the client's merchant's order.

Errors: every `ApiError` raised here has `outcome_unknown` (bool); `RequestRejectedError` also has
`field_errors` (`{"sku": "has already been taken"}`) parsed from PULPO's 422 `ErrorsList`.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import requests
import urllib3.exceptions
from pydantic import ValidationError

from billbee_pulpo_pipeline.clients.http import (
    IDEMPOTENT_METHODS,
    ApiError,
    AuthenticationError,
    CallStats,
    NotFoundError,
    RequestRejectedError,
    SessionClient,
    TransientApiError,
    body_excerpt,
    check_base_url,
    endpoint_template,
    json_or_none,
    make_retry,
    make_session,
    send,
)
from billbee_pulpo_pipeline.clients.pulpo.models import (
    AttachmentPayload,
    Availability,
    BulkItemFailure,
    BulkItemOk,
    BulkResult,
    Kit,
    KitPayload,
    PackingBox,
    PackingOrder,
    Product,
    ProductPayload,
    ProductUpdatePayload,
    PulpoPayload,
    PulpoRecord,
    SalesOrder,
    SalesOrderPayload,
    ShipmentTracking,
    ShipmentTrackingPayload,
    ShippingMethod,
    StockSummary,
    ThirdParty,
    ThirdPartyPayload,
    User,
    Warehouse,
    date_filter,
    format_pulpo_datetime,
    wire,
)
from billbee_pulpo_pipeline.clients.pulpo.token_cache import DEFAULT_REFRESH_FRACTION, CachedToken, TokenCache

logger = logging.getLogger("billbee_pulpo_pipeline.pulpo")

SYSTEM = "PULPO"
USER_AGENT = "billbee-pulpo-pipeline/0.1 (PULPO client)"
AUTH_PATH = "/auth"
AUTH_SCOPE = "general"
# The spec requires `expires_in`; should it be missing, PULPO's help text says tokens last one hour.
FALLBACK_EXPIRES_IN = 3600.0
# Ids per request for the list-filtered stock endpoints (keeps the query string well under URL limits).
IDS_PER_REQUEST = 100
GENERAL_ERROR_KEYS = frozenset({"message", "error", "detail", "reason", "Message"})

RecordT = TypeVar("RecordT", bound=PulpoRecord)
Payload = PulpoPayload | Mapping[str, Any]


@dataclass(frozen=True)
class _Credentials:
    username: str
    password: str = field(repr=False)


# --------------------------------------------------------------------------------------------------
# Error bodies


def parse_error_body(body: Any) -> tuple[str, dict[str, str]]:
    """PULPO error bodies -> (readable message, field errors).

    422: `{"errors": [{"sku": "has already been taken"}, {"name": "can't be blank"}]}`
    401: `{"errors": {"message": "unauthorized"}}`; other shapes (`{"message": ...}`, lists, strings)
    are read as well as they can be.
    """
    fields: dict[str, str] = {}
    general: list[str] = []

    def text(value: Any) -> str:
        if isinstance(value, list):
            return ", ".join(text(v) for v in value)
        return str(value)

    def collect(node: Any) -> None:
        if node is None:
            return
        if isinstance(node, list):
            for item in node:
                collect(item)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key == "errors":
                    collect(value)
                elif key in GENERAL_ERROR_KEYS:
                    general.append(text(value))
                else:
                    fields[str(key)] = f"{fields[str(key)]}; {text(value)}" if key in fields else text(value)
        else:
            general.append(str(node))

    if isinstance(body, dict) and not any(k in body for k in ("errors", *GENERAL_ERROR_KEYS)):
        return "", {}
    collect(body.get("errors", body) if isinstance(body, dict) else body)
    parts = [f"{name}: {message}" for name, message in fields.items()] + general
    return "; ".join(parts), fields


def _api_error(cls: type[ApiError], method: str, endpoint: str, message: str, *, status: int | None = None,
               details: Any = None, field_errors: dict[str, str] | None = None,
               outcome_unknown: bool = False) -> ApiError:
    error = cls(SYSTEM, method, endpoint, message, status=status, details=details)
    error.outcome_unknown = outcome_unknown  # type: ignore[attr-defined]
    error.field_errors = field_errors or {}  # type: ignore[attr-defined]
    return error


def _request_not_sent(exc: BaseException) -> bool:
    """True when the connection failed before the request went out (safe to repeat any method)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.ConnectTimeoutError)  # includes NewConnectionError


def _clean_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drop None, send booleans as true/false and datetimes in PULPO's format (UTC)."""
    cleaned: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            cleaned[key] = "true" if value else "false"
        elif isinstance(value, datetime):
            cleaned[key] = format_pulpo_datetime(value)
        else:
            cleaned[key] = value
    return cleaned


def _page_rows(body: Any, key: str, path: str) -> tuple[list[dict[str, Any]], int | None, bool]:
    """(rows, total_results, enveloped) from `{key: [...], total_results}` or a bare list."""
    if body is None:
        return [], None, False
    if isinstance(body, list):
        return body, None, False
    if not isinstance(body, dict):
        raise _api_error(ApiError, "GET", path, f"unexpected list reply of type {type(body).__name__}")
    total = body.get("total_results")
    try:
        total = int(total) if total is not None else None
    except (TypeError, ValueError):
        total = None
    rows = body.get(key)
    if rows is None:  # tolerate another envelope name when it is the only list in the reply
        lists = [v for k, v in body.items() if isinstance(v, list) and k != "errors"]
        rows = lists[0] if len(lists) == 1 else None
    if rows is None and total:
        raise _api_error(ApiError, "GET", path, f"the reply announces {total} rows but has no '{key}' list")
    if rows is not None and not isinstance(rows, list):
        raise _api_error(ApiError, "GET", path, f"'{key}' in the reply is not a list")
    return list(rows or []), total, True


def _unwrap(body: Any, key: str) -> Any:
    """A single record, also when PULPO wraps it (`{"sales_order": {...}}`)."""
    if isinstance(body, dict) and isinstance(body.get(key), dict):
        return body[key]
    return body


def _parse(model: type[RecordT], data: Any, method: str, path: str) -> RecordT:
    """Validate a reply record; a malformed reply is an `ApiError` naming the field (never its value)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "<root>"
        raise _api_error(ApiError, method, endpoint_template(method, path),
                         f"unexpected {model.__name__} in the reply ({where}: {first['msg']})") from None


def _chunks(values: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield list(values[start:start + size])


# --------------------------------------------------------------------------------------------------
# Client


class PulpoClient(SessionClient):
    """PULPO WMS REST client. Use one per (base_url, username); share `token_dir` across processes."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        warehouse_id: int | None = None,
        merchant_id: int | None = None,
        token_dir: Path,
        timeout: tuple[float, float] = (5, 60),
        max_retries: int = 6,
        backoff_factor: float = 0.5,
        page_size: int = 100,
        refresh_fraction: float = DEFAULT_REFRESH_FRACTION,
    ) -> None:
        problem = check_base_url(base_url)
        if problem:
            raise ValueError(f"PULPO base URL: {problem}")
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._credentials = _Credentials(username, password)
        self.warehouse_id = warehouse_id
        self.merchant_id = merchant_id
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_factor = backoff_factor
        self.page_size = page_size
        self.stats = CallStats()
        self.token_requests = 0
        self.token_cache = TokenCache(Path(token_dir), self.base_url, username,
                                      refresh_fraction=refresh_fraction)
        self._session = make_session(USER_AGENT)

    def __repr__(self) -> str:
        return f"PulpoClient(base_url={self.base_url!r}, username={self.username!r})"

    # ---- merchant scope ------------------------------------------------------------------------------

    def _for_merchant(self, body: dict[str, Any]) -> dict[str, Any]:
        """A request body with the client's merchant, unless it names one itself."""
        if self.merchant_id is not None and body.get("merchant_id") is None:
            body["merchant_id"] = self.merchant_id
        return body

    def _merchant_filter(self, filters: Mapping[str, Any]) -> dict[str, Any]:
        return {**filters, "merchant_id": self.merchant_id} if self.merchant_id is not None else dict(filters)

    def owns(self, record: Product | ThirdParty | SalesOrder) -> bool:
        """Whether a record belongs to the client's merchant (always, without a merchant)."""
        return self.merchant_id is None or record.merchant_id == self.merchant_id

    # ---- connection ----------------------------------------------------------------------------------

    def check_connection(self) -> User:
        """The authenticated user (`GET /iam/users/me`): proves URL, credentials and token handling."""
        return self._one(User, "GET", "/iam/users/me", "user")

    def list_warehouses(self) -> list[Warehouse]:
        return self._collect("/warehouses/", "warehouses", Warehouse)

    # ---- products ------------------------------------------------------------------------------------

    def iter_products(self, **filters: Any) -> Iterator[Product]:
        """`GET /inventory/products` with spec filters (sku=, active=, barcode=, article_number=, ...),
        only the client's merchant's products (see the module docstring).

        The spec lists no limit/offset here, but the reply is a `total_results` envelope; the pager
        sends them and stops correctly whether or not they are honoured.
        """
        rows = self._iterate("/inventory/products", "products", Product, filters)
        return rows if self.merchant_id is None else (p for p in rows if self.owns(p))

    def products_by_id(self, product_ids: Sequence[int]) -> dict[int, Product]:
        """The client's merchant's products with these ids: `GET /inventory/products?id[]=..` (PULPO's list
        form), 100 ids a call. Should a server answer with products it was not asked for (the id list
        ignored), the rest are fetched one by one rather than paging the whole catalogue."""
        wanted = {int(i) for i in product_ids}
        found: dict[int, Product] = {}
        list_honoured = True   # once a server showed it ignores the id list, no further list call is made
        for chunk in _chunks(sorted(wanted), IDS_PER_REQUEST):
            if list_honoured:
                rows = self._iterate("/inventory/products", "products", Product, {"id[]": chunk},
                                     expected=len(chunk))
                for product in rows:
                    if product.id not in chunk:
                        logger.info("GET /inventory/products ignored the id list; reading products one by one")
                        list_honoured = False
                        break
                    if self.owns(product):
                        found[product.id] = product
            if not list_honoured:
                found.update(self._products_one_by_one(pid for pid in chunk if pid not in found))
        return found

    def _products_one_by_one(self, product_ids: Iterable[int]) -> dict[int, Product]:
        found: dict[int, Product] = {}
        for pid in product_ids:
            try:
                product = self.get_product(pid)
            except NotFoundError:
                continue
            if self.owns(product):
                found[pid] = product
        return found

    def get_product(self, product_id: int) -> Product:
        return self._one(Product, "GET", f"/inventory/products/{product_id}", "product")

    def create_product(self, payload: Payload) -> Product:
        body = self._for_merchant(wire(payload, ProductPayload))
        return self._one(Product, "POST", "/inventory/products", "product", json=body)

    def update_product(self, product_id: int, payload: Payload) -> Product:
        return self._one(Product, "PUT", f"/inventory/products/{product_id}", "product",
                         json=self._for_merchant(wire(payload, ProductPayload)))

    def bulk_create_products(self, payloads: Iterable[Payload]) -> BulkResult:
        """`POST /inventory/bulk/products`: PULPO creates what it can; the result says per SKU."""
        rows = [self._for_merchant(wire(p, ProductPayload)) for p in payloads]
        return self._bulk("POST", "/inventory/bulk/products", rows, ok_field="created", key_field="sku")

    def bulk_update_products(self, payloads: Iterable[Payload]) -> BulkResult:
        """`PUT /inventory/bulk/products` (rows carry `id`); keyed by SKU, or by id when a row has none."""
        rows = [self._for_merchant(wire(p, ProductUpdatePayload)) for p in payloads]
        return self._bulk("PUT", "/inventory/bulk/products", rows, ok_field="updated", key_field="sku")

    # ---- kits ----------------------------------------------------------------------------------------

    def iter_kits(self, **filters: Any) -> Iterator[Kit]:
        return self._iterate("/inventory/kits", "kits", Kit, filters)

    def create_kit(self, payload: Payload) -> Kit:
        """`POST /inventory/kits`. The spec has no body schema; we send the `Kit` record's fields."""
        return self._one(Kit, "POST", "/inventory/kits", "kit", json=wire(payload, KitPayload))

    def deactivate_kit(self, kit_id: int) -> Kit:
        """`POST /inventory/kits/{id}/deactivate`: kits have no update, so a changed kit is replaced."""
        return self._one(Kit, "POST", f"/inventory/kits/{int(kit_id)}/deactivate", "kit")

    # ---- sales orders --------------------------------------------------------------------------------

    def iter_sales_orders(self, order_num: str | None = None, state: str | None = None,
                          updated_at_gte: datetime | None = None,
                          warehouse_id: int | None = None) -> Iterator[SalesOrder]:
        """`GET /sales/orders`; `warehouse_id` defaults to the client's warehouse."""
        return self._iterate("/sales/orders", "sales_orders", SalesOrder, {
            "order_num": order_num,
            "state": state,
            "updated_at": date_filter("gte", updated_at_gte) if updated_at_gte else None,
            "warehouse_id": warehouse_id if warehouse_id is not None else self.warehouse_id,
        })

    def find_sales_order_by_order_num(self, order_num: str) -> SalesOrder | None:
        """The order with exactly this `order_num`, in any warehouse (the check before a create); of any
        merchant, the client's merchant's first."""
        wanted = str(order_num)
        matches = [order for order in self._iterate("/sales/orders", "sales_orders", SalesOrder,
                                                    {"order_num": wanted}) if order.order_num == wanted]
        return next((order for order in matches if self.owns(order)), matches[0] if matches else None)

    def find_sales_orders_by_external_order_num(self, external_order_nums: Collection[str],
                                                 inserted_since: datetime) -> dict[str, SalesOrder]:
        """external_order_num -> order, among the orders inserted since `inserted_since` (UTC). The spec has
        no `external_order_num` filter, so the scan is bounded by `inserted_at=gte:` and matched here."""
        wanted = {str(n) for n in external_order_nums}
        stamp = inserted_since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        found: dict[str, SalesOrder] = {}
        for order in self._iterate("/sales/orders", "sales_orders", SalesOrder, {"inserted_at": f"gte:{stamp}"}):
            if order.external_order_num is not None and str(order.external_order_num) in wanted:
                found.setdefault(str(order.external_order_num), order)
        return found

    def get_sales_order(self, sales_order_id: int) -> SalesOrder:
        return self._one(SalesOrder, "GET", f"/sales/orders/{sales_order_id}", "sales_order")

    def create_sales_order(self, payload: Payload) -> SalesOrder:
        """`POST /sales/orders`; the client's warehouse is used when the payload names none.

        A timeout or 5xx raises `TransientApiError(outcome_unknown=True)`: look the order up by
        `order_num` before creating it again.
        """
        body_json = self._for_merchant(wire(payload, SalesOrderPayload))
        if body_json.get("warehouse_id") is None and self.warehouse_id is not None:
            body_json["warehouse_id"] = self.warehouse_id
        return self._one(SalesOrder, "POST", "/sales/orders", "sales_order", json=body_json)

    def update_sales_order(self, sales_order_id: int, payload: Payload) -> SalesOrder:
        """`PUT /sales/orders/{id}`; only orders still in `queue` may change (else 403 ->
        `RequestRejectedError` with status 403)."""
        return self._one(SalesOrder, "PUT", f"/sales/orders/{sales_order_id}", "sales_order",
                         json=self._for_merchant(wire(payload, SalesOrderPayload)))

    def cancel_sales_order(self, sales_order_id: int) -> SalesOrder:
        """`POST /sales/orders/{id}/cancel`; ended orders answer 422 (`RequestRejectedError`)."""
        return self._one(SalesOrder, "POST", f"/sales/orders/{sales_order_id}/cancel", "sales_order")

    def bulk_create_sales_orders(self, payloads: Iterable[Payload]) -> BulkResult:
        """`POST /sales/bulk/orders`: PULPO creates what it can; the result says per `order_num`.

        The spec's errors are an object keyed by order number (`ErrorSalesOrderResponse`:
        `{"<order_num>": {"<field>": "msg"}}`, `#<index>` where an item has no usable number); they
        are read as per-item errors, as are the list shapes `bulk_result` knows. Send unique order
        numbers per call, so every outcome belongs to exactly one item. A row without
        `warehouse_id` gets the client's warehouse."""
        rows = []
        for payload in payloads:
            row = self._for_merchant(wire(payload, SalesOrderPayload))
            if row.get("warehouse_id") is None and self.warehouse_id is not None:
                row["warehouse_id"] = self.warehouse_id
            rows.append(row)
        if not rows:
            return BulkResult()
        path = "/sales/bulk/orders"
        response = self._call("POST", path, json=rows)
        body = json_or_none(response)
        if not (response.ok or (response.status_code in (400, 422) and isinstance(body, dict)
                                and ("created" in body or isinstance(body.get("errors"), dict)))):
            self._raise_for_status(response, "POST", endpoint_template("POST", path))
        if not isinstance(body, dict):
            raise _api_error(ApiError, "POST", endpoint_template("POST", path),
                             f"unexpected bulk reply: {body_excerpt(response)}", status=response.status_code)
        errors = body.get("errors")
        if isinstance(errors, dict) and not ({"errors", *GENERAL_ERROR_KEYS} & errors.keys()):
            body = {**body, "errors": [_keyed_error(key, value) for key, value in errors.items()]}
        return bulk_result(body, rows, ok_field="created", key_field="order_num")

    # ---- packing -------------------------------------------------------------------------------------

    def iter_packing_orders(self, state: str | None = None, updated_at_gte: datetime | None = None,
                            sales_order_id: int | None = None,
                            warehouse_id: int | None = None) -> Iterator[PackingOrder]:
        return self._iterate("/packing/orders", "packing_orders", PackingOrder, {
            "state": state,
            "updated_at": date_filter("gte", updated_at_gte) if updated_at_gte else None,
            "sales_order_id": sales_order_id,
            "warehouse_id": warehouse_id if warehouse_id is not None else self.warehouse_id,
        })

    def get_packing_order(self, packing_order_id: int) -> PackingOrder:
        return self._one(PackingOrder, "GET", f"/packing/orders/{packing_order_id}", "packing_order")

    def list_boxes(self, packing_order_id: int) -> list[PackingBox]:
        """All boxes of a packing order (PULPO's default page here is only 10, so we always page)."""
        return self._collect(f"/packing/orders/{packing_order_id}/boxes", "packing_boxes", PackingBox)

    def search_boxes(self, **filters: Any) -> list[PackingBox]:
        """`GET /packing/orders/boxes/search` with spec filters (tracking_code=, warehouse_id=, ...)."""
        return self._collect("/packing/orders/boxes/search", "packing_boxes", PackingBox, filters)

    def list_shipment_trackings(self, packing_order_id: int, box_id: int) -> list[ShipmentTracking]:
        return self._collect(f"/packing/orders/{packing_order_id}/boxes/{box_id}/shipment_tracking",
                             "shipment_trackings", ShipmentTracking)

    def create_shipment_tracking(self, packing_order_id: int, box_id: int,
                                 payload: Payload) -> ShipmentTracking:
        path = f"/packing/orders/{packing_order_id}/boxes/{box_id}/shipment_tracking"
        return self._one(ShipmentTracking, "POST", path, "shipment_tracking",
                         json=wire(payload, ShipmentTrackingPayload))

    def update_shipment_tracking(self, packing_order_id: int, box_id: int, tracking_id: int,
                                 payload: Payload) -> ShipmentTracking:
        path = f"/packing/orders/{packing_order_id}/boxes/{box_id}/shipment_tracking/{tracking_id}"
        return self._one(ShipmentTracking, "PUT", path, "shipment_tracking",
                         json=wire(payload, ShipmentTrackingPayload))

    def attach_to_box(self, packing_order_id: int, box_id: int, filename: str, *, path: str | None = None,
                      content: bytes | None = None, content_type: str | None = None,
                      type: str = "label") -> list[PackingBox]:
        """`POST /packing/orders/{po}/boxes/{box}/attach` with the spec's `AttachmentRequest`
        (`filename`, `path`, `content_type`, `type`) and nothing else.

        UNVERIFIED (the spec does not say how a file reaches PULPO): `path` is "path of file to
        attach". Given `content`, the file travels in `path` itself as an RFC 2397 data URL
        (`data:<content_type>;base64,…`), the one way to hand over bytes with the spec's fields
        alone; otherwise `path` is a location PULPO can read (a storage key or URL). A live tenant
        may want the file uploaded to its S3 first and registered with `…/attachment` instead.
        """
        if path is None and content is None:
            raise ValueError("attach_to_box needs a path or the file content")
        guessed = mimetypes.guess_type(filename)[0]
        content_type = content_type or guessed or "application/pdf"
        if path is None:
            path = f"data:{content_type};base64,{base64.b64encode(content or b'').decode('ascii')}"
        attachment = AttachmentPayload(filename=filename, path=path, content_type=content_type, type=type)
        endpoint = f"/packing/orders/{packing_order_id}/boxes/{box_id}/attach"
        body = self._request("POST", endpoint, json=attachment.to_wire())
        if isinstance(body, dict) and "id" in body:
            body = [body]
        rows, _, _ = _page_rows(body, "packing_boxes", endpoint)
        return [_parse(PackingBox, row, "POST", endpoint) for row in rows]

    def box_attachments(self, box_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """`POST /packing/boxes/attachments` with `[box ids]`: box id -> its attachments (type, url,
        and whatever else PULPO returns, e.g. the file name). Boxes without attachments map to []."""
        found: dict[int, list[dict[str, Any]]] = {int(box): [] for box in box_ids}
        for chunk in _chunks([int(box) for box in box_ids], IDS_PER_REQUEST):
            body = self._request("POST", "/packing/boxes/attachments", json=chunk)
            for entry in body if isinstance(body, list) else []:
                if isinstance(entry, dict) and entry.get("packing_box_id") is not None:
                    attachments = entry.get("attachments") or []
                    found[int(entry["packing_box_id"])] = [a for a in attachments if isinstance(a, dict)]
        return found

    # ---- stock ---------------------------------------------------------------------------------------

    def iter_stock_summary(self, warehouse_id: int | None = None,
                           product_ids: Sequence[int] | None = None) -> Iterator[StockSummary]:
        """`GET /inventory/stocks/summary?warehouse_id[]=..&product_id[]=..` (list params in PULPO's
        `name[]=` form). The spec answers a bare list without paging; the pager copes with both."""
        warehouse = warehouse_id if warehouse_id is not None else self.warehouse_id
        base = {"warehouse_id[]": [warehouse] if warehouse is not None else None}
        chunks: Iterable[list[int] | None] = [None]
        if product_ids:
            chunks = _chunks(list(product_ids), IDS_PER_REQUEST)
        for chunk in chunks:
            yield from self._iterate("/inventory/stocks/summary", "stocks", StockSummary,
                                     {**base, "product_id[]": chunk}, expected=len(chunk) if chunk else None)

    def availability(self, product_ids: Sequence[int], warehouse_id: int | None = None) -> list[Availability]:
        """`GET /inventory/stocks/availability?id[]=..&warehouse_id[]=..` for the given product ids
        (the spec's 200 schema is a single `Availability`; lists and envelopes are read too)."""
        warehouse = warehouse_id if warehouse_id is not None else self.warehouse_id
        warehouses = [warehouse] if warehouse is not None else None
        result: list[Availability] = []
        for chunk in _chunks(list(product_ids), IDS_PER_REQUEST):
            result.extend(self._iterate("/inventory/stocks/availability", "availability", Availability,
                                        {"id[]": chunk, "warehouse_id[]": warehouses}, expected=len(chunk)))
        return result

    # ---- third parties (customers) ------------------------------------------------------------------

    def iter_third_parties(self, **filters: Any) -> Iterator[ThirdParty]:
        """`GET /iam/third_parties` with spec filters (erp_id=, third_type=, identifier_number=, ...),
        only the client's merchant's (the spec's `merchant_id` filter, and each record checked)."""
        rows = self._iterate("/iam/third_parties", "third_parties", ThirdParty, self._merchant_filter(filters))
        return rows if self.merchant_id is None else (p for p in rows if self.owns(p))

    def find_third_party(self, erp_id: str, third_type: str = "C") -> ThirdParty | None:
        """The third party with exactly this `erp_id` and type (the check before a create)."""
        wanted = str(erp_id)
        for party in self.iter_third_parties(erp_id=wanted, third_type=third_type):
            if party.erp_id == wanted and (party.third_type or third_type) == third_type:
                return party
        return None

    def create_third_party(self, payload: Payload) -> ThirdParty:
        """`POST /iam/third_parties` (422 `RequestRejectedError` names the refused fields)."""
        return self._one(ThirdParty, "POST", "/iam/third_parties", "third_party",
                         json=self._for_merchant(wire(payload, ThirdPartyPayload)))

    # ---- shipping ------------------------------------------------------------------------------------

    def list_shipping_methods(self) -> list[ShippingMethod]:
        return self._collect("/shipping/shipping_methods", "shipping_methods", ShippingMethod)

    def _one(self, model: type[RecordT], method: str, path: str, key: str, *, json: Any = None) -> RecordT:
        """One record from a call; PULPO may wrap it (`{"sales_order": {...}}`)."""
        return _parse(model, _unwrap(self._request(method, path, json=json), key), method, path)

    # ---- paging --------------------------------------------------------------------------------------

    def _iterate(self, path: str, key: str, model: type[RecordT], filters: Mapping[str, Any] | None = None,
                 *, expected: int | None = None) -> Iterator[RecordT]:
        for row in self._paginate(path, key, filters or {}, expected=expected):
            yield _parse(model, row, "GET", path)

    def _collect(self, path: str, key: str, model: type[RecordT],
                 filters: Mapping[str, Any] | None = None) -> list[RecordT]:
        return list(self._iterate(path, key, model, filters))

    def _paginate(self, path: str, key: str, filters: Mapping[str, Any], *,
                  expected: int | None = None) -> Iterator[dict[str, Any]]:
        """limit/offset paging. The offset advances by the rows actually received, since PULPO caps
        page sizes; it stops at `total_results` or an empty page. Without a total (bare lists) it
        also stops after a page shorter than an earlier one (the server's cap is then known), once
        `expected` rows (the most an id filter can match) have come, or when the server repeats a
        page (it ignores offset: the first reply was complete)."""
        params = _clean_params(filters)
        offset = 0
        previous: list[dict[str, Any]] | None = None
        largest_page = 0
        while True:
            body = self._request("GET", path, params={**params, "limit": self.page_size, "offset": offset})
            if isinstance(body, dict) and "product_id" in body:
                body = [body]  # a single record where a list was expected (spec: availability)
            rows, total, enveloped = _page_rows(body, key, path)
            if not rows:
                return
            if rows == previous:
                if enveloped:
                    raise _api_error(ApiError, "GET", path, f"paging stalled at offset {offset} of {total}: "
                                     "the server repeated the previous page")
                logger.debug("%s ignores offset; treating its reply as complete", path)
                return
            yield from rows
            offset += len(rows)
            short_page = len(rows) < min(self.page_size, largest_page)
            if total is not None:
                if offset >= total:
                    return
            elif short_page or (expected is not None and offset >= expected):
                return
            previous = rows
            largest_page = max(largest_page, len(rows))

    # ---- bulk ----------------------------------------------------------------------------------------

    def _bulk(self, method: str, path: str, rows: list[dict[str, Any]], *, ok_field: str,
              key_field: str) -> BulkResult:
        if not rows:
            return BulkResult()
        response = self._call(method, path, json=rows)
        body = json_or_none(response)
        looks_bulk = isinstance(body, dict) and ok_field in body
        if not (response.ok or (response.status_code in (400, 422) and looks_bulk)):
            self._raise_for_status(response, method, endpoint_template(method, path))
        if not isinstance(body, dict):
            raise _api_error(ApiError, method, endpoint_template(method, path),
                             f"unexpected bulk reply: {body_excerpt(response)}", status=response.status_code)
        return bulk_result(body, rows, ok_field=ok_field, key_field=key_field)

    # ---- HTTP ----------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                 json: Any = None) -> Any:
        """One authorised call; raises the mapped `ApiError` unless 2xx; returns the JSON body (or None)."""
        response = self._call(method, path, params=params, json=json)
        self._raise_for_status(response, method, endpoint_template(method, path))
        return json_or_none(response)

    def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              json: Any = None) -> requests.Response:
        """Send with the cached token; on 401 re-authenticate once (unless another process already
        did) and resend; a second 401 raises `AuthenticationError`."""
        token = self.token_cache.get(self._fetch_token)
        response = self._send(method, path, params=params, json=json, token=token)
        if response.status_code != 401:
            return response
        logger.info("PULPO answered 401 to %s; re-authenticating once", endpoint_template(method, path))
        token = self.token_cache.replace(token.access_token, self._fetch_token)
        response = self._send(method, path, params=params, json=json, token=token)
        if response.status_code == 401:
            message, _ = parse_error_body(json_or_none(response))
            raise _api_error(AuthenticationError, method, endpoint_template(method, path),
                             f"unauthorized even with a new token ({message or 'no details'})", status=401)
        return response

    def _send(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
              token: CachedToken | None = None) -> requests.Response:
        endpoint = endpoint_template(method, path)
        headers = {"Authorization": f"Bearer {token.access_token}"} if token is not None else {}
        retry = make_retry(self.stats, endpoint, total=self.max_retries, backoff_factor=self.backoff_factor)
        started = time.monotonic()
        try:
            response = send(self._session, method, self.base_url + path, endpoint=endpoint, stats=self.stats,
                            timeout=self.timeout, retry=retry, params=params, json=json, headers=headers)
        except TransientApiError as exc:
            cause = exc.__cause__
            sent = cause is None or not _request_not_sent(cause)
            unknown = method not in IDEMPOTENT_METHODS and sent
            raise _api_error(TransientApiError, method, endpoint, exc.reason,
                             outcome_unknown=unknown) from exc
        logger.debug("PULPO %s -> %s in %.2fs", endpoint, response.status_code, time.monotonic() - started)
        return response

    def _raise_for_status(self, response: requests.Response, method: str, endpoint: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        body = json_or_none(response)
        message, field_errors = parse_error_body(body)
        if not message:
            message = body_excerpt(response) if body is None else "no error details"
        if status == 401:
            cls: type[ApiError] = AuthenticationError
        elif status == 404:
            cls = NotFoundError
        elif status == 429 or status >= 500:
            unknown = status >= 500 and method not in IDEMPOTENT_METHODS
            raise _api_error(TransientApiError, method, endpoint, message, status=status, details=body,
                             outcome_unknown=unknown)
        else:  # 400, 403 (e.g. PUT on an order no longer in queue), 409, 422, ...
            cls = RequestRejectedError
        raise _api_error(cls, method, endpoint, message, status=status, details=body,
                         field_errors=field_errors)

    # ---- auth ----------------------------------------------------------------------------------------

    def _fetch_token(self) -> CachedToken:
        """OAuth2 password grant. Called by the token cache under its cross-process lock."""
        self.token_requests += 1
        requested_at = time.time()
        logger.info("requesting a PULPO access token for user %s at %s", self.username, self.base_url)
        body = {"grant_type": "password", "username": self._credentials.username,
                "password": self._credentials.password, "scope": AUTH_SCOPE}
        try:
            response = self._send("POST", AUTH_PATH, json=body)
        except TransientApiError as exc:
            exc.outcome_unknown = False  # type: ignore[attr-defined]  # a token request changes nothing
            raise
        data = json_or_none(response)
        if response.status_code in (400, 401, 403):
            message, _ = parse_error_body(data)
            reason = f"PULPO refused the credentials of user '{self.username}' ({message or 'no details'})"
            raise _api_error(AuthenticationError, "POST", AUTH_PATH, reason, status=response.status_code)
        if not response.ok:
            message, _ = parse_error_body(data)
            raise _api_error(TransientApiError, "POST", AUTH_PATH, message or body_excerpt(response),
                             status=response.status_code)
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise _api_error(TransientApiError, "POST", AUTH_PATH, "the token reply has no access_token",
                             status=response.status_code)
        return CachedToken.from_grant(token, _expires_in(data.get("expires_in")), requested_at)


def _expires_in(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 0.0
    if seconds <= 0:
        logger.warning("PULPO token reply has no usable expires_in (%r); assuming %.0f s", value,
                       FALLBACK_EXPIRES_IN)
        return FALLBACK_EXPIRES_IN
    return seconds


# --------------------------------------------------------------------------------------------------
# Bulk replies


def bulk_result(body: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], *, ok_field: str,
                key_field: str) -> BulkResult:
    """Per-item outcome of a bulk reply `{created|updated: [{id, sku}], errors: [...]}`.

    Each input row is keyed by its `key_field` (else its `id`, else `#<index>`). Rows listed under
    `ok_field` (matched by key field or id) succeeded. Error entries that name an item (key field,
    `id` or `index` next to the message) go to that item. The spec's entries
    (`{"errors": [{"sku": "has already been taken"}]}`) name none: they are matched to the
    unconfirmed items in order when the counts agree, else each unconfirmed item gets all of them.
    """
    keys = [str(row.get(key_field) or row.get("id") or f"#{index}") for index, row in enumerate(rows)]
    aliases: dict[str, str] = {}
    for key, row in zip(keys, rows, strict=True):
        for name in ("id", key_field):
            if row.get(name) not in (None, ""):
                aliases.setdefault(str(row[name]), key)
    result = BulkResult()
    confirmed: set[str] = set()
    for row in _flatten_ok(body.get(ok_field)):
        key = next((aliases[str(row[n])] for n in (key_field, "id") if str(row.get(n)) in aliases),
                   str(row.get(key_field) or row.get("id")))
        result.ok.append(BulkItemOk(key=key, id=row.get("id")))
        confirmed.add(key)
    pending = [key for key in keys if key not in confirmed]
    explained: dict[str, tuple[str, dict[str, str]]] = {}
    anonymous: list[tuple[str, dict[str, str]]] = []
    errors = body.get("errors") or []
    for entry in errors if isinstance(errors, list) else [errors]:
        named = _error_item_key(entry, key_field, keys)
        key = aliases.get(named, named) if named is not None else None
        if key is not None and key in pending:
            explained[key] = _entry_reason(entry, key_field)
        else:
            anonymous.append(_entry_reason(entry, key_field))
    unexplained = [key for key in pending if key not in explained]
    if len(anonymous) == len(unexplained):
        explained.update(zip(unexplained, anonymous, strict=True))
    elif anonymous:
        merged: dict[str, str] = {}
        for _, fields in anonymous:
            merged.update(fields)
        combined = ("; ".join(reason for reason, _ in anonymous), merged)
        explained.update({key: combined for key in unexplained})
    for key in pending:
        reason, fields = explained.get(key, ("not confirmed by PULPO (no result for this item)", {}))
        result.failed.append(BulkItemFailure(key=key, reason=reason, field_errors=fields))
    return result


def _keyed_error(key: str, value: Any) -> dict[str, Any]:
    """One entry of an error object keyed by item (`{"4711": {"sku": "msg"}}`, `{"#3": ...}`) as a
    list entry naming its item."""
    reasons = value if isinstance(value, list) else [value]
    if key.startswith("#") and key[1:].isdigit():
        return {"index": int(key[1:]), "errors": reasons}
    return {"order_num": key, "errors": reasons}


def _flatten_ok(rows: Any) -> Iterator[dict[str, Any]]:
    """Ok rows; the spec's 400 variant nests them (`created: [{created: [...]}]`)."""
    for row in rows or []:
        if isinstance(row, dict) and isinstance(row.get("created"), list):
            yield from _flatten_ok(row["created"])
        elif isinstance(row, dict):
            yield row


def _error_item_key(entry: Any, key_field: str, input_keys: list[str]) -> str | None:
    """The input key an error entry names, if it names one next to its message."""
    if not isinstance(entry, dict) or not ({"errors", *GENERAL_ERROR_KEYS} & entry.keys()):
        return None
    for name in (key_field, "id"):
        if entry.get(name) not in (None, "") and not isinstance(entry[name], list | dict):
            return str(entry[name])
    index = entry.get("index")
    if isinstance(index, int) and 0 <= index < len(input_keys):
        return input_keys[index]
    return None


def _entry_reason(entry: Any, key_field: str) -> tuple[str, dict[str, str]]:
    if isinstance(entry, dict):
        entry = {k: v for k, v in entry.items() if k not in {"index", "id"} and not (
            k == key_field and ({"errors", *GENERAL_ERROR_KEYS} & entry.keys()))}
    message, fields = parse_error_body(entry if isinstance(entry, dict) and "errors" in entry
                                       else {"errors": entry})
    return message or "rejected without details", fields
