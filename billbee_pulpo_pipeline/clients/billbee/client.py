"""Plain Billbee REST client (no Dagster): pacing, retries, envelope checks, paging and typed models.

Billbee's limits are 2 requests/s per endpoint and 10/s per API key + user; the client paces itself
below both so a normal run provokes no 429. It still honours `Retry-After` when one comes.
Idempotent requests are retried on 5xx, timeouts and connection errors. POST is retried only on 429,
because that request was not executed. A POST that times out or gets a 5xx may have been executed, so
it raises `TransientApiError` with `outcome_unknown = True`. Callers must check before they send it
again (a second label costs money).

Billbee also reports errors inside HTTP 200 (`ErrorCode`/`ErrorMessage`), so every answer goes through
the envelope check. The one exception is `updatestockmultiple`, which answers per row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import requests
from pydantic import BaseModel, TypeAdapter, ValidationError
from requests.auth import HTTPBasicAuth
from urllib3.exceptions import MaxRetryError, NewConnectionError

from billbee_pulpo_pipeline.clients.billbee.filter_zone import DEFAULT_ZONE, send_high, send_low, zone
from billbee_pulpo_pipeline.clients.billbee.models import (
    AddShipmentRequest,
    LeanProduct,
    Order,
    Paging,
    Product,
    Shipment,
    ShippingCarrier,
    ShippingProvider,
    ShipWithLabelRequest,
    ShipWithLabelResult,
    StockLocation,
    StockRowResult,
    StockUpdate,
    _LeanProductEnvelope,
    format_billbee_datetime,
)
from billbee_pulpo_pipeline.clients.billbee.states import state_id
from billbee_pulpo_pipeline.clients.http import (
    ApiError,
    AuthenticationError,
    CallStats,
    NotFoundError,
    Pacer,
    RateRule,
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
from billbee_pulpo_pipeline.clients.usage import shared_counter

logger = logging.getLogger("billbee_pulpo_pipeline.billbee")

SYSTEM = "Billbee"
USER_AGENT = "billbee-pulpo-pipeline/0.1"
MAX_PAGE_SIZE = 250
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
AUTH_HINT = (
    "check username, API password and API key; "
    "is the API activated under Einstellungen → Billbee-API?"
)

# Names of Billbee's `ErrorCode` values (official C# SDK `ApiResult.cs`; 22 seen in a real answer).
ERROR_CODE_NAMES: dict[int, str] = {
    1: "ApiNotActivated", 2: "OrderNotFound", 3: "InvoiceNotCreated", 4: "CantCreateInvoice",
    5: "OrderCanceled", 6: "OrderDeleted", 7: "OrderNotPaid", 8: "InternalError", 9: "OrderExists",
    10: "WrongShopId", 11: "InvalidData", 16: "NoPaidAccount", 17: "APIServiceNotBooked",
    18: "CantCreateDeliveryNote", 22: "InvalidShippingServices",
}
ORDER_NOT_FOUND = 2

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class ResultPage(Generic[ModelT]):
    """One page of a paged list. `paging.TotalRows` per page lets callers notice a shifting window."""

    number: int
    items: list[ModelT]
    paging: Paging | None


# --------------------------------------------------------------------------------------------------
# Lean product pages: the fast path of a full product scan

_LEAN_PRODUCT_PAGE = TypeAdapter(_LeanProductEnvelope)
_ENVELOPE_FIELDS = frozenset({"Data", "ErrorCode", "ErrorMessage"})


def _lean_product_page(body: bytes) -> tuple[list[LeanProduct], Paging | None]:
    """Items and paging of a product page read by the lean path, with the regular envelope checks."""
    try:
        envelope = _LEAN_PRODUCT_PAGE.validate_json(body)
    except ValidationError:
        envelope = None
    if envelope is None or not envelope.model_fields_set & _ENVELOPE_FIELDS:
        # Not an envelope we can read fast (empty, HTML, a bare list, bad Data): the regular path
        # raises the same errors `iter_product_pages` would, or reads an odd but valid answer.
        try:
            parsed = json.loads(body) if body.strip() else None
        except ValueError:
            parsed = None
        if parsed is None:
            excerpt = " ".join(body[:200].decode("utf-8", "replace").split()) or "an empty answer"
            raise _transient("GET", "/products", f"unreadable answer: {excerpt}", status=200)
        raw_items, paging = unwrap_page(parsed, "GET", "/products")
        return _parse_items(LeanProduct, raw_items, "GET", "/products"), paging
    unwrap_envelope({"ErrorCode": envelope.ErrorCode, "ErrorMessage": envelope.ErrorMessage,
                     "ErrorDescription": envelope.ErrorDescription}, "GET", "/products")
    return envelope.Data or [], envelope.paging


# --------------------------------------------------------------------------------------------------
# Pure helpers (no network)


def _parse_items(model: type[ModelT], raw_items: list[Any], method: str, path: str) -> list[ModelT]:
    """Validate the records of a reply. A record of the wrong shape (a value of another JSON type than
    the spec's) is a broken answer, not a bad record: an `ApiError` naming the record and field, never
    the value (it may be personal data), instead of pydantic's text."""
    items = []
    for index, item in enumerate(raw_items):
        try:
            items.append(model.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the record"
            ident = next((item.get(k) for k in ("BillBeeOrderId", "Id") if isinstance(item, Mapping)
                          and isinstance(item.get(k), int)), None)
            record = f"record {index + 1}" + (f" (id {ident})" if ident is not None else "")
            raise ApiError(SYSTEM, method, path, f"unreadable {model.__name__} in the reply, {record}: "
                           f"field {where}: {first['msg']}", status=200) from None
    return items


def validate_page_size(page_size: int) -> int:
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise TypeError(f"page_size must be an int, got {type(page_size).__name__}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE} (Billbee's limit): {page_size}")
    return page_size


def has_more_pages(page: int, paging: Paging | None, item_count: int, page_size: int) -> bool:
    """Whether page `page + 1` should be requested. An empty page always ends the walk. Without
    `Paging` (a broken answer), a full page means there may be more."""
    if item_count == 0:
        return False
    if paging is not None and paging.TotalPages is not None:
        return page < paging.TotalPages
    return item_count >= page_size


def _lenient_code(value: Any) -> int | str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def envelope_error(body: Any) -> tuple[int | str | None, str] | None:
    """`(code, message)` when `body` is a Billbee envelope that reports an error, else None.

    Success means `ErrorCode == 0` and an empty `ErrorMessage`. `ErrorDescription` is an int in the
    spec, but real answers carry the name string (e.g. "InvalidShippingServices"), so both are read.
    """
    if not isinstance(body, Mapping):
        return None
    code = _lenient_code(body.get("ErrorCode"))
    raw_message = body.get("ErrorMessage")
    message = str(raw_message).strip() if raw_message not in (None, "") else ""
    if code in (None, 0) and not message:
        return None
    description = _lenient_code(body.get("ErrorDescription"))
    name = description if isinstance(description, str) else None
    if name is None:
        number = description if isinstance(description, int) and description else code
        name = ERROR_CODE_NAMES.get(number) if isinstance(number, int) else (number or None)
    if code in (None, 0) and isinstance(description, int) and description:
        code = description
    text = message or name or "Billbee reported an error"
    if name and message and name not in message:
        text = f"{message} ({name})"
    return code, text


def _is_envelope(body: Any) -> bool:
    return isinstance(body, Mapping) and bool({"Data", "ErrorCode", "ErrorMessage"} & set(body))


def unwrap_envelope(body: Any, method: str, path: str) -> Any:
    """The `Data` of an envelope, after raising `RequestRejectedError` for an error inside it.
    Bodies that are not envelopes (a bare list, for example) come back unchanged."""
    error = envelope_error(body)
    if error is not None:
        code, message = error
        raise RequestRejectedError(SYSTEM, method, path, message, status=200, code=code,
                                   details={"ErrorDescription": body.get("ErrorDescription")})
    if _is_envelope(body):
        return body.get("Data")
    return body


def unwrap_page(body: Any, method: str, path: str) -> tuple[list[Any], Paging | None]:
    data = unwrap_envelope(body, method, path)
    if data is None:
        data = []
    if not isinstance(data, list):
        raise _transient(method, path, f"expected a list in Data, got {type(data).__name__}")
    raw_paging = body.get("Paging") if isinstance(body, Mapping) else None
    paging = Paging.model_validate(raw_paging) if isinstance(raw_paging, Mapping) else None
    return data, paging


def stock_row_results(body: Any, rows: list[StockUpdate], method: str, path: str) -> list[StockRowResult]:
    """Per-row results of updatestockmultiple: one envelope per input row, in input order.

    Row errors come back as results with `ok=False`; only an error for the whole call raises. A row
    Billbee did not answer is reported as not ok, because its update is not confirmed.
    """
    if not isinstance(body, list):
        unwrap_envelope(body, method, path)  # raises when the whole call was refused
        raise _transient(method, path, "expected one result per row", outcome_unknown=True)
    if len(body) != len(rows):
        logger.warning("Billbee %s %s answered %d rows for %d sent", method, path, len(body), len(rows))
    results = []
    for index, row in enumerate(rows):
        envelope = body[index] if index < len(body) else None
        results.append(_stock_row_result(envelope, row))
    return results


def _stock_row_result(envelope: Any, row: StockUpdate | None) -> StockRowResult:
    sku = row.Sku if row else None
    ids = {"billbee_id": row.BillbeeId if row else None, "stock_id": row.StockId if row else None}
    if not isinstance(envelope, Mapping):
        return StockRowResult(sku=sku, ok=False, error_message="Billbee returned no result for this row",
                              **ids)
    data = envelope.get("Data") if isinstance(envelope.get("Data"), Mapping) else {}
    error = envelope_error(envelope)
    return StockRowResult(
        sku=data.get("SKU") or sku,
        ok=error is None,
        error_code=error[0] if error else None,
        error_message=error[1] if error else None,
        old_stock=data.get("OldStock"),
        current_stock=data.get("CurrentStock"),
        unfulfilled_amount=data.get("UnfulfilledAmount"),
        message=data.get("Message"),
        **ids,
    )


def _transient(method: str, path: str, message: str, *, status: int | None = None,
               outcome_unknown: bool = False) -> TransientApiError:
    error = TransientApiError(SYSTEM, method, path, message, status=status)
    error.outcome_unknown = outcome_unknown  # type: ignore[attr-defined]
    return error


def _json_message(body: Any) -> str | None:
    if isinstance(body, Mapping):
        for key in ("ErrorMessage", "Message", "message", "error", "title"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def error_from_response(response: requests.Response, method: str, path: str, username: str) -> ApiError:
    """The exception for a non-2xx answer. JSON and HTML bodies are both read; no secret is included."""
    status = response.status_code
    body = json_or_none(response)
    error = envelope_error(body)
    code = error[0] if error else None
    server_message = (error[1] if error else None) or _json_message(body) or body_excerpt(response)
    if status in (401, 403):
        return AuthenticationError(
            SYSTEM, method, path, f"Billbee refused the credentials of user '{username}': {AUTH_HINT}",
            status=status, code=code, details=server_message)
    if status == 404:
        return NotFoundError(SYSTEM, method, path, server_message, status=status, code=code)
    if status == 429:
        return _transient(method, path, f"still throttled after retries: {server_message}", status=status)
    if status >= 500:
        return _transient(method, path, server_message, status=status,
                          outcome_unknown=method.upper() not in SAFE_METHODS)
    return RequestRejectedError(SYSTEM, method, path, server_message, status=status, code=code,
                                details=body if isinstance(body, Mapping) else None)


def _never_sent(exc: BaseException | None) -> bool:
    """True when a transport error proves the request never reached the server (no connection)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError) and exc.args:
        reason = exc.args[0].reason if isinstance(exc.args[0], MaxRetryError) else exc.args[0]
        return isinstance(reason, NewConnectionError)
    return False


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_billbee_datetime(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_query_value(v) for v in value]  # requests sends lists as repeated keys
    return value


def build_query(**params: Any) -> dict[str, Any]:
    """Query parameters with None dropped, dates as ISO-8601 with offset and booleans in lower case."""
    return {key: _query_value(value) for key, value in params.items() if value is not None}


def _int_id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip().isdigit():
        raise ValueError(f"{what} must be numeric, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------------
# Pacing shared per Billbee account


def account_fingerprint(base_url: str, username: str, api_key: str) -> str:
    """A sha256 that identifies (base_url, username, api_key) without revealing any of them."""
    material = json.dumps([base_url.rstrip("/"), username, api_key])
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def pacer_state_file(pacer_dir: Path, fingerprint: str) -> Path:
    return Path(pacer_dir) / f"billbee-pacer-{fingerprint[:32]}.json"


_PACERS: dict[tuple[str, float, float, str], Pacer] = {}
_PACERS_LOCK = threading.Lock()


def shared_pacer(fingerprint: str, rate_per_endpoint: float, rate_per_user: float,
                 pacer_dir: Path | None) -> Pacer:
    """One pacer per account and settings in this process; across processes through the state file."""
    for name, rate in (("rate_per_endpoint", rate_per_endpoint), ("rate_per_user", rate_per_user)):
        if rate < 0:
            raise ValueError(f"{name} must be >= 0 (0 disables the limit), got {rate}")
    state_file = pacer_state_file(pacer_dir, fingerprint) if pacer_dir is not None else None
    key = (fingerprint, float(rate_per_endpoint), float(rate_per_user), str(state_file or ""))
    with _PACERS_LOCK:
        pacer = _PACERS.get(key)
        if pacer is None:
            rules = [RateRule("endpoint", rate_per_endpoint, _same_endpoint),
                     RateRule("user", rate_per_user, _whole_account)]
            pacer = _PACERS[key] = Pacer(rules, state_file=state_file)
        return pacer


def _same_endpoint(endpoint: str) -> str:
    return endpoint


def _whole_account(endpoint: str) -> str:
    return "*"


# --------------------------------------------------------------------------------------------------
# The client


class BillbeeClient(SessionClient):
    """Billbee REST API v1. `base_url` is e.g. `https://api.billbee.io/api/v1`; paths are relative to it."""

    def __init__(
        self,
        base_url: str,
        username: str,
        api_password: str,
        api_key: str,
        *,
        rate_per_endpoint: float = 2.0,
        rate_per_user: float = 10.0,
        pacer_dir: Path | None = None,
        timeout: tuple[float, float] = (5, 60),
        max_retries: int = 6,
        backoff_factor: float = 0.5,
    ) -> None:
        problem = check_base_url(base_url)
        if problem is not None:
            raise ValueError(f"Billbee base URL: {problem}")
        if not username or not api_password or not api_key:
            raise ValueError("Billbee needs a username, an API password and an API key")
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_factor = backoff_factor
        account = account_fingerprint(self.base_url, username, api_key)
        # With a pacing folder (every process of one install shares it), calls are also counted per
        # account and month there: Billbee bills the calls beyond 100,000 a month (see clients/usage.py).
        counter = shared_counter(pacer_dir, account, self.base_url) if pacer_dir is not None else None
        self.stats = CallStats(on_call=counter.add if counter is not None else None)
        self.pacer = shared_pacer(account, rate_per_endpoint, rate_per_user, pacer_dir)
        # The zone the date filters of GET /orders are written in (see filter_zone.py); readers set the
        # one configured or detected for this account.
        self.filter_timezone = DEFAULT_ZONE
        # The secrets live only in the session (auth object and header), never in attributes or reprs.
        self._session = make_session(USER_AGENT)
        self._session.auth = HTTPBasicAuth(username, api_password)
        self._session.headers["X-Billbee-Api-Key"] = api_key

    def __repr__(self) -> str:
        return f"BillbeeClient(base_url={self.base_url!r}, username={self.username!r})"

    # ---- transport ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                 json_body: Any = None, template: str | None = None, stream: bool = False) -> requests.Response:
        """One logical request: pace, send with retries, raise for non-2xx answers. `stream` leaves
        the body of a 2xx answer unread (the caller reads it)."""
        shown_path = "/" + path.lstrip("/")
        endpoint = template or endpoint_template(method, shown_path)
        waited = self.pacer.acquire(endpoint)
        if waited > 0.05:
            logger.debug("Billbee %s: paced %.2f s to stay under the rate limits", endpoint, waited)
        retry = make_retry(self.stats, endpoint, total=self.max_retries, backoff_factor=self.backoff_factor)
        kwargs: dict[str, Any] = {"params": params}
        if json_body is not None:
            kwargs["json"] = json_body
        if stream:
            kwargs["stream"] = True
        try:
            response = send(self._session, method, f"{self.base_url}{shown_path}", endpoint=endpoint,
                            stats=self.stats, timeout=self.timeout, retry=retry, **kwargs)
        except TransientApiError as exc:
            unknown = method.upper() not in SAFE_METHODS and not _never_sent(exc.__cause__)
            reason = exc.reason + ("; the request may have been executed" if unknown else "")
            raise _transient(method, shown_path, reason, outcome_unknown=unknown) from exc
        self._log_retries(response, endpoint)
        if not 200 <= response.status_code < 300:
            raise error_from_response(response, method, shown_path, self.username)
        return response

    @staticmethod
    def _log_retries(response: requests.Response, endpoint: str) -> None:
        retries = getattr(getattr(response, "raw", None), "retries", None)
        history = getattr(retries, "history", None) or ()
        if history:
            causes = ", ".join(f"HTTP {h.status}" if h.status else type(h.error).__name__ for h in history)
            logger.info("Billbee %s: succeeded after %d retr%s (%s)", endpoint, len(history),
                        "y" if len(history) == 1 else "ies", causes)

    def _json(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              json_body: Any = None, template: str | None = None, expect_body: bool = True) -> Any:
        """The parsed JSON answer. Empty 2xx bodies mean success for calls that need no answer."""
        response = self._request(method, path, params=params, json_body=json_body, template=template)
        body = json_or_none(response)
        if body is None and (expect_body or response.content.strip()):
            what = "an empty answer" if not response.content.strip() else body_excerpt(response)
            raise _transient(method, "/" + path.lstrip("/"), f"unreadable answer: {what}",
                             status=response.status_code,
                             outcome_unknown=method.upper() not in SAFE_METHODS)
        return body

    def _data(self, method: str, path: str, **kwargs: Any) -> Any:
        return unwrap_envelope(self._json(method, path, **kwargs), method, "/" + path.lstrip("/"))

    def call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
             json: Any = None) -> Any:
        """Any other endpoint: the envelope's `Data` (or the bare body), errors raised as for the rest."""
        method = method.upper()
        return self._data(method, path, params=build_query(**(params or {})), json_body=json,
                          expect_body=method in SAFE_METHODS)

    def _iter_pages(self, path: str, model: type[ModelT], page_size: int,
                    params: Mapping[str, Any]) -> Iterator[ResultPage[ModelT]]:
        validate_page_size(page_size)
        page = 1
        while True:
            body = self._json("GET", path, params={**params, "page": page, "pageSize": page_size})
            raw_items, paging = unwrap_page(body, "GET", "/" + path)
            items = _parse_items(model, raw_items, "GET", "/" + path)
            yield ResultPage(number=page, items=items, paging=paging)
            if not has_more_pages(page, paging, len(items), page_size):
                return
            page += 1

    # ---- connection --------------------------------------------------------------------------------

    def check_connection(self) -> Paging:
        """A cheap authenticated call (one product). Bad credentials raise AuthenticationError with a hint.
        Returns the product list's paging (`TotalRows` = number of products)."""
        pages = self.iter_product_pages(page_size=1)
        try:
            first = next(pages)
        finally:
            pages.close()
        return first.paging or Paging(Page=1, TotalRows=len(first.items))

    # ---- products and stock ------------------------------------------------------------------------

    def iter_product_pages(self, page_size: int = MAX_PAGE_SIZE, min_created_at: datetime | None = None,
                           minimum_billbee_article_id: int | None = None,
                           maximum_billbee_article_id: int | None = None) -> Iterator[ResultPage[Product]]:
        params = build_query(minCreatedAt=min_created_at, minimumBillBeeArticleId=minimum_billbee_article_id,
                             maximumBillBeeArticleId=maximum_billbee_article_id)
        return self._iter_pages("products", Product, page_size, params)

    def iter_product_pages_lean(self, page_size: int = MAX_PAGE_SIZE) -> Iterator[ResultPage[LeanProduct]]:
        """All products, page by page, as `LeanProduct`: the fast path of a full scan.

        pydantic-core parses and validates each page straight from the bytes (in Rust), building only
        the transferred fields, and the body is read in 1 MB chunks rather than requests' 10 kB;
        `iter_product_pages` builds full models from `json.loads` output, which costs ~15 s of CPU
        for 200,000 products. Pacing, retries and error handling are the same: an answer the lean
        model cannot read goes through the regular envelope checks, which raise.
        """
        validate_page_size(page_size)
        page = 1
        while True:
            body = self._product_page_bytes({"page": page, "pageSize": page_size})
            items, paging = _lean_product_page(body)
            yield ResultPage(number=page, items=items, paging=paging)
            if not has_more_pages(page, paging, len(items), page_size):
                return
            page += 1

    def _product_page_bytes(self, params: Mapping[str, Any]) -> bytes:
        """The body of one product page. A body cut off in transfer is fetched again (a GET), as
        `_request` does for failures before the body, up to `max_retries` times."""
        attempts = 0
        while True:
            response = self._request("GET", "products", params=params, stream=True)
            try:
                return b"".join(response.iter_content(1 << 20))
            except requests.exceptions.RequestException as exc:
                attempts += 1
                if attempts > self.max_retries:
                    raise _transient("GET", "/products", f"answer cut off: {type(exc).__name__}") from exc
                logger.info("Billbee GET /products: answer cut off (%s); reading the page again",
                            type(exc).__name__)

    def iter_products(self, page_size: int = MAX_PAGE_SIZE, min_created_at: datetime | None = None,
                      **filters: Any) -> Iterator[Product]:
        for page in self.iter_product_pages(page_size, min_created_at, **filters):
            yield from page.items

    def get_product(self, product_id: int | str, lookup_by: str = "id") -> Product:
        """One product by Billbee id, SKU or EAN (`lookup_by` = 'id' | 'sku' | 'ean')."""
        if lookup_by not in {"id", "sku", "ean"}:
            raise ValueError(f"lookup_by must be 'id', 'sku' or 'ean', got {lookup_by!r}")
        path = f"products/{quote(str(product_id), safe='')}"
        data = self._data("GET", path, params={"lookupBy": lookup_by}, template="GET /products/{id}")
        if not data:
            raise NotFoundError(SYSTEM, "GET", "/" + path, f"no product with {lookup_by} {product_id!r}")
        return Product.model_validate(data)

    def get_stock_locations(self) -> list[StockLocation]:
        data = self._data("GET", "products/stocks")
        return [StockLocation.model_validate(item) for item in _as_list(data, "GET", "/products/stocks")]

    def get_reserved_amount(self, sku_or_id: int | str, lookup_by: str = "sku",
                            stock_id: int | None = None) -> float:
        """The open (reserved, not yet shipped) quantity of a product."""
        if lookup_by not in {"id", "sku"}:
            raise ValueError(f"lookup_by must be 'id' or 'sku', got {lookup_by!r}")
        params = build_query(id=str(sku_or_id), lookupBy=lookup_by, stockId=stock_id)
        data = self._data("GET", "products/reservedamount", params=params)
        amount = data.get("ReservedAmount") if isinstance(data, Mapping) else None
        return float(amount) if amount is not None else 0.0

    def update_stock(self, update: StockUpdate) -> StockRowResult:
        """Set one product's absolute stock; a refusal raises RequestRejectedError."""
        body = self._json("POST", "products/updatestock", json_body=update.to_json())
        unwrap_envelope(body, "POST", "/products/updatestock")
        return _stock_row_result(body, update)

    def update_stock_multiple(self, updates: Iterable[StockUpdate]) -> list[StockRowResult]:
        """Set the absolute stock of several products in one call; errors are reported per row.
        The maximum batch size is undocumented: callers send modest chunks (e.g. 50)."""
        rows = list(updates)
        if not rows:
            return []
        path = "products/updatestockmultiple"
        body = self._json("POST", path, json_body=[row.to_json() for row in rows])
        return stock_row_results(body, rows, "POST", "/" + path)

    # ---- orders ------------------------------------------------------------------------------------

    def iter_order_pages(
        self,
        modified_at_min: datetime | None = None,
        modified_at_max: datetime | None = None,
        order_state_ids: Iterable[int] | None = None,
        min_order_date: datetime | None = None,
        max_order_date: datetime | None = None,
        shop_ids: Iterable[int] | None = None,
        page_size: int = MAX_PAGE_SIZE,
        *,
        tags: Iterable[str] | None = None,
        exclude_tags: bool | None = None,
        minimum_billbee_order_id: int | None = None,
    ) -> Iterator[ResultPage[Order]]:
        """Pages of orders. `modifiedAtMin` is exclusive and `modifiedAtMax` inclusive (Billbee's
        wording). Keep the window fixed across the pages of one run and de-duplicate by id. Dates are
        written in `filter_timezone` with its offset; lower bounds never later, upper bounds never earlier
        than asked for, however Billbee reads them (see filter_zone.py)."""
        name = self.filter_timezone
        zone(name)  # an unknown zone fails here, before any call

        def low(value: datetime | None) -> str | None:
            return send_low(value, name).isoformat() if value is not None else None

        def high(value: datetime | None) -> str | None:
            return send_high(value, name).isoformat() if value is not None else None

        params = build_query(
            modifiedAtMin=low(modified_at_min), modifiedAtMax=high(modified_at_max),
            orderStateId=list(order_state_ids) if order_state_ids is not None else None,
            minOrderDate=low(min_order_date), maxOrderDate=high(max_order_date),
            shopId=list(shop_ids) if shop_ids is not None else None,
            tag=list(tags) if tags is not None else None, excludeTags=exclude_tags,
            minimumBillBeeOrderId=minimum_billbee_order_id,
        )
        return self._iter_pages("orders", Order, page_size, params)

    def iter_orders(
        self,
        modified_at_min: datetime | None = None,
        modified_at_max: datetime | None = None,
        order_state_ids: Iterable[int] | None = None,
        min_order_date: datetime | None = None,
        max_order_date: datetime | None = None,
        shop_ids: Iterable[int] | None = None,
        page_size: int = MAX_PAGE_SIZE,
        **filters: Any,
    ) -> Iterator[Order]:
        """The orders of `iter_order_pages` (same arguments), one by one."""
        pages = self.iter_order_pages(modified_at_min, modified_at_max, order_state_ids, min_order_date,
                                      max_order_date, shop_ids, page_size, **filters)
        for page in pages:
            yield from page.items

    def get_order(self, billbee_order_id: int) -> Order:
        """One order by its internal `BillBeeOrderId` (Billbee allows 6 calls per order and minute)."""
        order_id = _int_id(billbee_order_id, "billbee_order_id")
        data = self._data("GET", f"orders/{order_id}")
        if not data:
            raise NotFoundError(SYSTEM, "GET", f"/orders/{order_id}", f"no order {order_id}")
        return Order.model_validate(data)

    def find_order_by_ext_ref(self, ext_ref: str) -> Order | None:
        """The order with this external (marketplace) order number, or None when there is none."""
        path = f"orders/findbyextref/{quote(str(ext_ref), safe='')}"
        try:
            data = self._data("GET", path, template="GET /orders/findbyextref/{extRef}")
        except NotFoundError:
            return None
        except RequestRejectedError as exc:
            if exc.code == ORDER_NOT_FOUND:
                return None
            raise
        return Order.model_validate(data) if data else None

    def set_order_state(self, order_id: int, state: int | str) -> None:
        """Change an order's state (id, German name or alias: see states.py). Billbee tells the shop."""
        order_id = _int_id(order_id, "order_id")
        path = f"orders/{order_id}/orderstate"
        body = self._json("PUT", path, json_body={"NewStateId": state_id(state)}, expect_body=False)
        unwrap_envelope(body, "PUT", "/" + path)

    def add_shipment(self, order_id: int, shipment: AddShipmentRequest) -> None:
        """Attach a tracking number to an order. `order_id` is the BillBeeOrderId."""
        order_id = _int_id(order_id, "order_id")
        path = f"orders/{order_id}/shipment"
        body = self._json("POST", path, json_body=shipment.to_json(), expect_body=False)
        unwrap_envelope(body, "POST", "/" + path)

    def add_order_tags(self, order_id: int, tags: Iterable[str]) -> None:
        """Add tags to an order (existing ones stay; Billbee ignores case)."""
        order_id = _int_id(order_id, "order_id")
        tag_list = [str(tag) for tag in tags if str(tag).strip()]
        if not tag_list:
            return
        path = f"orders/{order_id}/tags"
        body = self._json("POST", path, json_body={"Tags": tag_list}, expect_body=False)
        unwrap_envelope(body, "POST", "/" + path)

    def get_order_state_enum(self) -> dict[int, str]:
        """Billbee's own list of order states, as {id: name}."""
        data = self._data("GET", "enums/orderstates")
        return _parse_enum(data)

    # ---- shipping ----------------------------------------------------------------------------------

    def ship_with_label(self, request: ShipWithLabelRequest) -> ShipWithLabelResult:
        """Create a carrier label for an order. Not retried except on 429: if it raises with
        `outcome_unknown`, look at the order's shipments before trying again."""
        path = "shipment/shipwithlabel"
        data = self._data("POST", path, json_body=request.to_json())
        if not isinstance(data, Mapping):
            raise _transient("POST", "/" + path, "the answer holds no label result", status=200,
                             outcome_unknown=True)
        return ShipWithLabelResult.model_validate(data)

    def iter_shipment_pages(
        self,
        order_id: int | None = None,
        created_at_min: datetime | None = None,
        minimum_shipment_id: int | None = None,
        shipping_provider_id: int | None = None,
        page_size: int = MAX_PAGE_SIZE,
        *,
        created_at_max: datetime | None = None,
    ) -> Iterator[ResultPage[Shipment]]:
        params = build_query(orderId=order_id, createdAtMin=created_at_min, createdAtMax=created_at_max,
                             minimumShipmentId=minimum_shipment_id, shippingProviderId=shipping_provider_id)
        return self._iter_pages("shipment/shipments", Shipment, page_size, params)

    def iter_shipments(
        self,
        order_id: int | None = None,
        created_at_min: datetime | None = None,
        minimum_shipment_id: int | None = None,
        shipping_provider_id: int | None = None,
        page_size: int = MAX_PAGE_SIZE,
        **filters: Any,
    ) -> Iterator[Shipment]:
        """The shipments of `iter_shipment_pages` (same arguments), one by one."""
        pages = self.iter_shipment_pages(order_id, created_at_min, minimum_shipment_id, shipping_provider_id,
                                         page_size, **filters)
        for page in pages:
            yield from page.items

    def get_shipping_providers(self) -> list[ShippingProvider]:
        """Providers with their products. Billbee may answer a bare array or an envelope; both work."""
        data = self._data("GET", "shipment/shippingproviders")
        providers = _as_list(data, "GET", "/shipment/shippingproviders")
        return [ShippingProvider.model_validate(provider) for provider in providers]

    def get_shipping_carriers(self) -> list[ShippingCarrier]:
        data = self._data("GET", "shipment/shippingcarriers")
        carriers = _as_list(data, "GET", "/shipment/shippingcarriers")
        return [ShippingCarrier.model_validate(carrier) for carrier in carriers]


def _as_list(data: Any, method: str, path: str) -> list[Any]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise _transient(method, path, f"expected a list, got {type(data).__name__}")
    return data


def _parse_enum(data: Any) -> dict[int, str]:
    """Enum endpoints are untyped in the spec: accept [{Id, Name}], [{id, name}] or {id: name}."""
    result: dict[int, str] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            if str(key).strip().lstrip("-").isdigit():
                result[int(key)] = str(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                result[value] = str(key)  # {name: id}
        return result
    for entry in data or []:
        if isinstance(entry, Mapping):
            lowered = {str(k).lower(): v for k, v in entry.items()}
            number, name = lowered.get("id"), lowered.get("name")
            if number is not None and str(number).lstrip("-").isdigit():
                result[int(number)] = str(name) if name is not None else str(number)
    return result
