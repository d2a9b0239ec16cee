"""PULPO client: pure parts without network, behaviour over real HTTP against a small Starlette stub
of PULPO (cases the sandbox cannot produce on demand: token lifetimes, revoked tokens, capped pages,
5xx on one endpoint, ...), and several OS processes sharing one token."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billbee_pulpo_pipeline.clients.http import (
    ApiError,
    AuthenticationError,
    NotFoundError,
    RequestRejectedError,
    TransientApiError,
)
from billbee_pulpo_pipeline.clients.pulpo import (
    BulkResult,
    PulpoClient,
    SalesOrderPayload,
    TokenCache,
)
from billbee_pulpo_pipeline.clients.pulpo.client import bulk_result, parse_error_body
from billbee_pulpo_pipeline.clients.pulpo.models import (
    ProductPayload,
    SalesOrder,
    date_filter,
    parse_pulpo_datetime,
    wire,
)
from billbee_pulpo_pipeline.clients.pulpo.token_cache import CachedToken, cache_file_name
from billbee_pulpo_pipeline.sandboxes import credentials as sandbox_credentials
from billbee_pulpo_pipeline.sandboxes.runner import serve_in_thread
from billbee_pulpo_pipeline_tests import spec_support
from billbee_pulpo_pipeline_tests.conftest import PROJECT_ROOT

USERNAME = "acme_api"
PASSWORD = "pw-Secret-4711"

# --------------------------------------------------------------------------------------------------
# A stub of PULPO over real HTTP


class StubPulpo:
    """Just enough PULPO: password grant with a configurable lifetime, bearer checks that tell expired
    from unknown tokens, a product catalogue with a server-side page cap, 422s, bulk partial failure,
    and switchable 5xx/429/slow answers per endpoint."""

    def __init__(self, *, ttl: float = 3600, page_cap: int = 1000, products: int = 0,
                 auth_delay: float = 0.0) -> None:
        self.ttl = ttl
        self.page_cap = page_cap
        self.auth_delay = auth_delay
        self.tokens: dict[str, float] = {}          # token -> expires_at (server clock)
        self.token_issued: list[tuple[float, float | None]] = []  # (issued_at, previous token's expiry)
        self.expired_uses = 0
        self.unauthorized = 0
        self.always_401 = False
        self.fail: dict[str, list[int]] = {}         # "METHOD /path" -> statuses to answer first
        self.slow: dict[str, float] = {}             # "METHOD /path" -> seconds to stall
        self.requests: list[dict[str, Any]] = []
        self.products = [{"id": 1000 + i, "sku": f"SKU-{i:03d}", "name": f"Product {i}", "active": True,
                          "barcodes": [f"40000000{i:05d}"], "attributes": "{}"} for i in range(products)]
        self.summary_rows = [{"product_id": str(1000 + i), "sku": f"SKU-{i:03d}", "total": i, "available": i,
                              "unavailable": 0, "rejected": 0} for i in range(products)]
        self.summary_ignores_offset = False
        self.me_body: Any = None
        self.orders: list[dict[str, Any]] = []
        self._ids = itertools.count(5000)
        self._lock = threading.Lock()

    # ---- plumbing ----------------------------------------------------------------------------------

    def app(self) -> Starlette:
        routes = [
            ("POST", "/api/v1/auth", self.auth),
            ("GET", "/api/v1/iam/users/me", self.me),
            ("GET", "/api/v1/inventory/products", self.list_products),
            ("POST", "/api/v1/inventory/products", self.create_product),
            ("GET", "/api/v1/inventory/products/{id:int}", self.get_product),
            ("POST", "/api/v1/inventory/bulk/products", self.bulk_create),
            ("GET", "/api/v1/inventory/stocks/summary", self.stock_summary),
            ("GET", "/api/v1/sales/orders", self.list_orders),
            ("POST", "/api/v1/sales/orders", self.create_order),
            ("PUT", "/api/v1/sales/orders/{id:int}", self.update_order),
        ]
        return Starlette(routes=[Route(path, self._wrap(method, path, handler), methods=[method])
                                 for method, path, handler in routes])

    def _wrap(self, method: str, path: str, handler: Any) -> Any:
        label = f"{method} {path.removeprefix('/api/v1').replace(':int', '')}"

        async def endpoint(request: Request) -> Response:
            body = await request.body()
            with self._lock:
                self.requests.append({"endpoint": label, "query": list(request.query_params.multi_items()),
                                      "json": json.loads(body) if body else None,
                                      "auth": request.headers.get("authorization")})
                queued = self.fail.get(label)
                status = queued.pop(0) if queued else None
            if label in self.slow:
                await asyncio.sleep(self.slow[label])
            if status is not None:
                if status == 429:
                    return JSONResponse({"errors": {"message": "slow down"}}, status_code=429,
                                        headers={"Retry-After": "0"})
                return Response(f"<html><head><title>{status} Service Unavailable</title></head></html>",
                                status_code=status, media_type="text/html")
            if label != "POST /auth":
                denied = self._check_token(request)
                if denied is not None:
                    return denied
            return await handler(request)

        return endpoint

    def _check_token(self, request: Request) -> Response | None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        expires_at = self.tokens.get(token)
        if expires_at is not None and expires_at <= time.time():
            self.expired_uses += 1
        if self.always_401 or expires_at is None or expires_at <= time.time():
            self.unauthorized += 1
            return JSONResponse({"errors": {"message": "unauthorized"}}, status_code=401)
        return None

    def count(self, endpoint: str) -> int:
        return sum(1 for r in self.requests if r["endpoint"] == endpoint)

    def revoke_all(self) -> None:
        self.tokens.clear()

    # ---- handlers ----------------------------------------------------------------------------------

    async def auth(self, request: Request) -> Response:
        payload = await request.json()
        if self.auth_delay:
            await asyncio.sleep(self.auth_delay)
        if (payload.get("grant_type"), payload.get("username"), payload.get("password")) != (
                "password", USERNAME, PASSWORD):
            return JSONResponse({"errors": {"message": "unauthorized"}}, status_code=401)
        now = time.time()
        previous_expiry = max(self.tokens.values(), default=None)
        token = f"tok-{len(self.token_issued)}-{os.urandom(6).hex()}"
        self.tokens[token] = now + self.ttl
        self.token_issued.append((now, previous_expiry))
        return JSONResponse({"access_token": token, "expires_in": self.ttl, "token_type": "bearer",
                             "scope": payload.get("scope")})

    async def me(self, request: Request) -> Response:
        if self.me_body is not None:
            return JSONResponse(self.me_body)
        return JSONResponse({"id": 7, "username": USERNAME, "tenant_id": 1, "active": True,
                             "warehouses": [{"id": 1, "name": "Main"}], "brand_new_field": {"x": 1}})

    def _page(self, request: Request, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        limit = min(int(request.query_params.get("limit", 10)), self.page_cap)
        offset = int(request.query_params.get("offset", 0))
        return rows[offset:offset + limit], len(rows)

    async def list_products(self, request: Request) -> Response:
        rows = self.products
        if "sku" in request.query_params:
            rows = [p for p in rows if p["sku"] == request.query_params["sku"]]
        page, total = self._page(request, rows)
        return JSONResponse({"products": page, "total_results": total})

    def _product_errors(self, payload: dict[str, Any]) -> list[dict[str, str]]:
        errors = []
        if any(p["sku"] == payload.get("sku") for p in self.products):
            errors.append({"sku": "has already been taken"})
        if not payload.get("name"):
            errors.append({"name": "can't be blank"})
        return errors

    def _add_product(self, payload: dict[str, Any]) -> dict[str, Any]:
        product = {**payload, "id": next(self._ids)}
        self.products.append(product)
        return product

    async def create_product(self, request: Request) -> Response:
        payload = await request.json()
        errors = self._product_errors(payload)
        if errors:
            return JSONResponse({"errors": errors}, status_code=422)
        return JSONResponse(self._add_product(payload), status_code=201)

    async def get_product(self, request: Request) -> Response:
        wanted = request.path_params["id"]
        for product in self.products:
            if product["id"] == wanted:
                return JSONResponse(product)
        return JSONResponse({"errors": {"message": "Not found"}}, status_code=404)

    async def bulk_create(self, request: Request) -> Response:
        created, errors = [], []
        for payload in await request.json():  # spec: continue past failures; error entries name no item
            item_errors = self._product_errors(payload)
            if item_errors:
                errors.append({"errors": item_errors})
            else:
                product = self._add_product(payload)
                created.append({"id": product["id"], "sku": product["sku"]})
        return JSONResponse({"created": created, "errors": errors}, status_code=400 if errors else 201)

    async def stock_summary(self, request: Request) -> Response:
        if self.summary_ignores_offset:
            return JSONResponse(self.summary_rows[:self.page_cap])
        page, _ = self._page(request, self.summary_rows)
        return JSONResponse(page)  # the spec's bare array

    async def list_orders(self, request: Request) -> Response:
        rows = self.orders
        if "order_num" in request.query_params:  # a contains-search, as PULPO's may be
            rows = [o for o in rows if request.query_params["order_num"] in o["order_num"]]
        page, total = self._page(request, rows)
        return JSONResponse({"sales_orders": page, "total_results": total})

    async def create_order(self, request: Request) -> Response:
        order = {**await request.json(), "id": next(self._ids), "state": "queue"}
        self.orders.append(order)
        return JSONResponse(order, status_code=201)

    async def update_order(self, request: Request) -> Response:
        return JSONResponse({"errors": [{"state": "only orders in queue can be updated"}]}, status_code=403)


@pytest.fixture
def serve():
    stops: list[threading.Event] = []

    def start(stub: StubPulpo) -> str:
        url, stop = serve_in_thread(stub.app())
        stops.append(stop)
        return url + "/api/v1"

    yield start
    for stop in stops:
        stop.set()


def make_client(url: str, token_dir: Path, **kwargs: Any) -> PulpoClient:
    options: dict[str, Any] = {"token_dir": token_dir, "backoff_factor": 0.01, "max_retries": 3,
                               "timeout": (2, 5), **kwargs}
    return PulpoClient(url, USERNAME, PASSWORD, **options)


# --------------------------------------------------------------------------------------------------
# Pure parts


def test_error_bodies_become_field_messages():
    body = {"errors": [{"sku": "has already been taken"}, {"name": "can't be blank"}]}
    message, fields = parse_error_body(body)
    assert message == "sku: has already been taken; name: can't be blank"
    assert fields == {"sku": "has already been taken", "name": "can't be blank"}
    assert parse_error_body({"errors": {"message": "unauthorized"}}) == ("unauthorized", {})
    _, listed = parse_error_body({"errors": {"zip": ["is invalid", "is too long"]}})
    assert listed == {"zip": "is invalid, is too long"}
    assert parse_error_body(None) == ("", {})
    assert parse_error_body({"products": []}) == ("", {})


def test_payloads_follow_the_spec_wire_types():
    body = wire({"order_num": 4711, "external_order_num": 12345678901234567, "attributes": {"billbee_id": 1},
                 "items": [{"product_id": "1001", "quantity": 2.0, "line_order_id": 98765432109876543}],
                 "ship_to": {"name": "Erika", "address": {"street": "Hauptstr.", "house_nr": 5,
                                                          "zip": "10115", "country_alpha2": "DE"}},
                 "priority": 3}, SalesOrderPayload)
    assert body["external_order_num"] == "12345678901234567"  # exact: never through float
    assert body["order_num"] == "4711"
    assert body["items"] == [{"product_id": 1001, "quantity": 2, "line_order_id": "98765432109876543"}]
    assert json.loads(body["attributes"]) == {"billbee_id": 1}
    assert body["ship_to"]["address"]["house_nr"] == "5"
    assert body["priority"] == 3  # a spec field the payload model does not name passes through
    with pytest.raises(ValueError, match="fractional"):
        wire({"items": [{"product_id": 1, "quantity": 1.5}]}, SalesOrderPayload)
    schema = spec_support.request_body_schema("pulpo", "POST", "/sales/orders")
    spec_support.validate("pulpo", body, schema)


def test_product_payload_validates_against_the_spec():
    body = wire(ProductPayload(sku="A-1", name="Mug", barcodes=[4006381333931], weight=0.35,
                               attributes={"billbee_product_id": 98765432109876543}), ProductPayload)
    assert body["barcodes"] == ["4006381333931"]
    assert json.loads(body["attributes"]) == {"billbee_product_id": 98765432109876543}
    schema = spec_support.request_body_schema("pulpo", "POST", "/inventory/products")
    spec_support.validate("pulpo", body, schema)


def test_dates_are_utc_in_pulpo_format():
    berlin_summer = timezone(timedelta(hours=2))
    assert date_filter("gte", datetime(2026, 6, 1, 0, 30, tzinfo=berlin_summer)) == "gte:2026-05-31 22:30:00"
    assert date_filter("gte", datetime(2026, 6, 1, 8, 0)) == "gte:2026-06-01 08:00:00"  # naive = UTC
    assert parse_pulpo_datetime("2026-06-01 08:00:00") == datetime(2026, 6, 1, 8, tzinfo=UTC)
    assert parse_pulpo_datetime("2026-06-01T08:00:00.5Z") == datetime(2026, 6, 1, 8, 0, 0, 500000, tzinfo=UTC)
    assert parse_pulpo_datetime("not a date") is None


def test_models_keep_unknown_fields_and_parse_types():
    order = SalesOrder.model_validate({"id": 9, "order_num": "A-1", "external_order_num": 12345678901234567,
                                       "items": [{"product_id": 1, "quantity": 2, "future": True}],
                                       "updated_at": "2026-06-01 10:00:00", "attributes": '{"a": 1}',
                                       "new_top_level": [1, 2]})
    assert order.external_order_num == "12345678901234567"
    assert order.items[0].model_extra == {"future": True}
    assert order.model_extra == {"new_top_level": [1, 2]}
    assert order.attributes_dict == {"a": 1}
    assert order.updated_at == datetime(2026, 6, 1, 10, tzinfo=UTC)


def test_bulk_result_matches_spec_errors_to_items_in_order():
    rows = [{"sku": "A"}, {"sku": "B"}, {"sku": "C"}]
    body = {"created": [{"id": 1, "sku": "B"}],
            "errors": [{"errors": [{"sku": "has already been taken"}]},
                       {"errors": [{"name": "can't be blank"}]}]}
    result = bulk_result(body, rows, ok_field="created", key_field="sku")
    assert [(i.key, i.id) for i in result.ok] == [("B", 1)]
    assert [(f.key, f.field_errors) for f in result.failed] == [
        ("A", {"sku": "has already been taken"}), ("C", {"name": "can't be blank"})]
    keyed = bulk_result({"updated": [], "errors": [{"id": 12, "errors": [{"name": "too long"}]}]},
                        [{"id": 11, "sku": "X"}, {"id": 12, "sku": "Y"}], ok_field="updated", key_field="sku")
    assert [(f.key, f.reason) for f in keyed.failed] == [
        ("X", "not confirmed by PULPO (no result for this item)"), ("Y", "name: too long")]


def test_token_cache_refreshes_relative_to_lifetime(tmp_path):
    short = CachedToken("t", issued_at=100.0, expires_at=130.0)   # 30 s lifetime
    assert not short.needs_refresh(0.2, now=123.0)                # 7 s left > 6 s
    assert short.needs_refresh(0.2, now=124.5)                    # 5.5 s left < 20 %
    long = CachedToken("t", issued_at=0.0, expires_at=43200.0)    # 12 h lifetime
    assert long.needs_refresh(0.2, now=35000.0) and not long.needs_refresh(0.2, now=30000.0)


def test_token_cache_replaces_only_the_rejected_token(tmp_path):
    fetched: list[str] = []

    def fetch() -> CachedToken:
        fetched.append(f"t{len(fetched)}")
        return CachedToken(fetched[-1], issued_at=time.time(), expires_at=time.time() + 600)

    first, second = TokenCache(tmp_path, "https://x.pulpo.co/api/v1", "u"), \
        TokenCache(tmp_path, "https://x.pulpo.co/api/v1", "u")
    assert first.get(fetch).access_token == "t0"
    assert second.get(fetch).access_token == "t0"                 # shared through the file
    assert first.replace("t0", fetch).access_token == "t1"        # t0 was rejected: fetch once
    assert second.replace("t0", fetch).access_token == "t1"       # already replaced by the other one
    assert fetched == ["t0", "t1"]
    other_user = TokenCache(tmp_path, "https://x.pulpo.co/api/v1", "v")
    assert other_user.get(fetch).access_token == "t2"


def test_token_file_is_private_and_named_by_hash(tmp_path, serve):
    url = serve(StubPulpo())
    client = make_client(url, tmp_path / "tokens")
    client.check_connection()
    files = [p for p in (tmp_path / "tokens").iterdir() if p.suffix == ".json"]
    assert [p.name for p in files] == [cache_file_name(url, USERNAME)]
    name = files[0].name
    assert USERNAME not in name and PASSWORD not in name and "127.0.0.1" not in name
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert PASSWORD not in files[0].read_text()
    assert repr(client) == f"PulpoClient(base_url={url!r}, username={USERNAME!r})"


def test_plain_http_is_refused_outside_loopback(tmp_path):
    with pytest.raises(ValueError, match="https"):
        PulpoClient("http://eu.pulpo.co/api/v1", USERNAME, PASSWORD, token_dir=tmp_path)


# --------------------------------------------------------------------------------------------------
# Tokens over HTTP


CHILD = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
    url, token_dir, barrier, index = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    client = PulpoClient(url, os.environ["PULPO_USERNAME"], os.environ["PULPO_PASSWORD"], token_dir=token_dir)
    (barrier / f"ready-{index}").touch()
    while not (barrier / "go").exists():
        time.sleep(0.005)
    user = client.check_connection()
    skus = [p.sku for p in client.iter_products()]
    print(json.dumps({"user": user.username, "products": len(skus), "token_requests": client.token_requests}))
""")


def run_processes_together(url: str, tmp_path: Path, username: str, password: str,
                           count: int = 3) -> list[dict[str, Any]]:
    """Start `count` OS processes that each build a client on the same token dir, release them at
    the same moment and return what each reports."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PULPO_USERNAME": username, "PULPO_PASSWORD": password}
    command = [sys.executable, "-c", CHILD, url, str(tmp_path / "tokens"), str(barrier)]
    children = [subprocess.Popen([*command, str(i)], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
                for i in range(count)]
    try:
        deadline = time.time() + 30
        while len(list(barrier.glob("ready-*"))) < count:
            assert time.time() < deadline, "children did not start"
            time.sleep(0.01)
        (barrier / "go").touch()
        results = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            results.append(json.loads(out))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()


def test_processes_starting_together_share_one_token(tmp_path, serve):
    stub = StubPulpo(products=5, auth_delay=0.3)  # a slow grant widens the race window
    url = serve(stub)
    results = run_processes_together(url, tmp_path, USERNAME, PASSWORD)
    assert stub.count("POST /auth") == 1
    assert sorted(r["token_requests"] for r in results) == [0, 0, 1]
    assert all(r == {**r, "user": USERNAME, "products": 5} for r in results)
    assert stub.count("GET /iam/users/me") == 3 and stub.unauthorized == 0


def test_short_lived_tokens_are_refreshed_before_they_expire(tmp_path, serve):
    stub = StubPulpo(ttl=3)
    url = serve(stub)
    client = make_client(url, tmp_path)
    calls = 0
    deadline = time.time() + 5
    while time.time() < deadline:
        client.check_connection()
        calls += 1
        time.sleep(0.05)
    assert stub.expired_uses == 0 and stub.unauthorized == 0
    # one token per ~80 % of the 3 s lifetime, not one per call
    assert 2 <= stub.count("POST /auth") <= 4 < calls
    assert client.token_requests == stub.count("POST /auth")
    refreshes = stub.token_issued[1:]
    # each refresh came while the old token still had a good part of its lifetime left (a refresh
    # at expiry would leave ~0 s; ours is due at 20 %, with slack for a slow machine)
    assert all(expiry is not None and expiry - issued > 0.1 * stub.ttl for issued, expiry in refreshes)


def test_a_401_triggers_one_reauthentication(tmp_path, serve):
    stub = StubPulpo()
    url = serve(stub)
    client = make_client(url, tmp_path)
    client.check_connection()
    stub.revoke_all()  # e.g. PULPO restarted or the token was revoked
    assert client.check_connection().username == USERNAME
    assert stub.count("POST /auth") == 2 and stub.unauthorized == 1
    assert stub.count("GET /iam/users/me") == 3


def test_a_second_401_raises_without_leaking_secrets(tmp_path, serve, caplog):
    stub = StubPulpo()
    url = serve(stub)
    client = make_client(url, tmp_path)
    client.check_connection()
    stub.always_401 = True
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as info:
        client.check_connection()
    assert info.value.status == 401
    assert stub.count("POST /auth") == 2  # one re-authentication, not a loop
    tokens = list(stub.tokens)
    for text in (str(info.value), repr(info.value), repr(client), caplog.text):
        assert PASSWORD not in text
        assert not any(token in text for token in tokens)


def test_wrong_password_is_an_authentication_error(tmp_path, serve):
    url = serve(StubPulpo())
    client = PulpoClient(url, USERNAME, "wrong-0815", token_dir=tmp_path)
    with pytest.raises(AuthenticationError) as info:
        client.check_connection()
    assert "wrong-0815" not in str(info.value) and USERNAME in str(info.value)
    assert not list(tmp_path.glob("*.json"))  # nothing cached


# --------------------------------------------------------------------------------------------------
# Paging, errors, retries


def test_paging_reads_every_row_once_when_the_server_caps_the_limit(tmp_path, serve):
    stub = StubPulpo(products=23, page_cap=7)
    url = serve(stub)
    client = make_client(url, tmp_path, page_size=10)
    skus = [p.sku for p in client.iter_products(active=True)]
    assert skus == [f"SKU-{i:03d}" for i in range(23)]
    pages = [dict(r["query"]) for r in stub.requests if r["endpoint"] == "GET /inventory/products"]
    assert [p["offset"] for p in pages] == ["0", "7", "14", "21"]
    assert {p["limit"] for p in pages} == {"10"} and {p["active"] for p in pages} == {"true"}


def test_bare_list_paging_stops_on_an_empty_or_repeated_page(tmp_path, serve):
    stub = StubPulpo(products=12, page_cap=5)
    url = serve(stub)
    client = make_client(url, tmp_path, page_size=10, warehouse_id=3)
    rows = list(client.iter_stock_summary())
    assert [r.product_id for r in rows] == list(range(1000, 1012))  # string ids in the spec, ints here
    query = [r["query"] for r in stub.requests if r["endpoint"] == "GET /inventory/stocks/summary"]
    assert ("warehouse_id[]", "3") in query[0]
    stub.summary_ignores_offset = True
    assert len(list(client.iter_stock_summary(product_ids=[1000, 1001]))) == 5  # no duplicates
    assert ("product_id[]", "1001") in stub.requests[-1]["query"]


def test_validation_errors_are_parsed_into_fields(tmp_path, serve):
    url = serve(StubPulpo(products=1))
    client = make_client(url, tmp_path)
    with pytest.raises(RequestRejectedError) as info:
        client.create_product({"sku": "SKU-000", "name": ""})
    error = info.value
    assert error.status == 422
    assert error.field_errors == {"sku": "has already been taken", "name": "can't be blank"}
    assert "sku: has already been taken; name: can't be blank" in str(error)
    assert error.outcome_unknown is False
    created = client.create_product({"sku": "NEW-1", "name": "New", "attributes": {"k": 1}})
    assert created.id is not None and created.attributes_dict == {"k": 1}


def test_bulk_partial_failure_is_reported_per_item(tmp_path, serve):
    stub = StubPulpo(products=1)
    url = serve(stub)
    client = make_client(url, tmp_path)
    result = client.bulk_create_products([{"sku": "N-1", "name": "One"}, {"sku": "SKU-000", "name": "Dup"},
                                          {"sku": "N-2", "name": "Two"}, {"sku": "N-3"}])
    assert isinstance(result, BulkResult) and not result.all_ok
    created_ids = {p["sku"]: p["id"] for p in stub.products}
    assert result.ids_by_key() == {"N-1": created_ids["N-1"], "N-2": created_ids["N-2"]}
    assert [(f.key, f.reason) for f in result.failed] == [("SKU-000", "sku: has already been taken"),
                                                          ("N-3", "name: can't be blank")]


def test_post_503_is_not_retried_and_flags_an_unknown_outcome(tmp_path, serve):
    stub = StubPulpo()
    url = serve(stub)
    client = make_client(url, tmp_path)
    client.check_connection()
    stub.fail["POST /sales/orders"] = [503, 503]
    with pytest.raises(TransientApiError) as info:
        client.create_sales_order({"order_num": "B-1", "items": [{"product_id": 1, "quantity": 1}]})
    assert info.value.status == 503 and info.value.outcome_unknown is True
    assert "HTML error page: 503 Service Unavailable" in str(info.value)
    assert stub.count("POST /sales/orders") == 1
    assert client.stats.by_endpoint["POST /sales/orders"] == 1 and client.stats.retries == 0


def test_post_timeout_flags_an_unknown_outcome(tmp_path, serve):
    stub = StubPulpo()
    url = serve(stub)
    client = make_client(url, tmp_path, timeout=(2, 0.3))
    client.check_connection()
    stub.slow["POST /sales/orders"] = 1.0
    with pytest.raises(TransientApiError) as info:
        client.create_sales_order({"order_num": "B-2"})
    assert info.value.outcome_unknown is True
    time.sleep(0.8)  # let the stalled request finish server-side
    assert stub.count("POST /sales/orders") == 1


def test_get_503_is_retried_and_post_429_is_resent(tmp_path, serve):
    stub = StubPulpo()
    url = serve(stub)
    client = make_client(url, tmp_path, warehouse_id=2)
    stub.orders.append({"id": 1, "order_num": "B-7", "state": "queue", "warehouse_id": 2})
    stub.fail["GET /sales/orders"] = [503, 502]
    assert [o.order_num for o in client.iter_sales_orders(state="queue")] == ["B-7"]
    assert stub.count("GET /sales/orders") == 3 and client.stats.retries == 2
    stub.fail["POST /sales/orders"] = [429]
    order = client.create_sales_order({"order_num": "B-8", "external_order_num": 4711})
    assert order.order_num == "B-8" and order.warehouse_id == 2  # the client's warehouse is the default
    assert stub.count("POST /sales/orders") == 2 and client.stats.throttled == 1


def test_403_404_and_exact_order_lookup(tmp_path, serve):
    stub = StubPulpo(products=1)
    url = serve(stub)
    client = make_client(url, tmp_path)
    with pytest.raises(RequestRejectedError) as forbidden:
        client.update_sales_order(5, {"notes": "x"})
    assert forbidden.value.status == 403 and "only orders in queue" in str(forbidden.value)
    with pytest.raises(NotFoundError):
        client.get_product(999)
    assert client.get_product(1000).sku == "SKU-000"
    stub.orders += [{"id": 1, "order_num": "B-10"}, {"id": 2, "order_num": "B-1"}]
    assert client.find_sales_order_by_order_num("B-1").id == 2  # exact, not the contains-match B-10
    assert client.find_sales_order_by_order_num("B-2") is None


def test_filters_reach_the_server_in_pulpo_format(tmp_path, serve):
    stub = StubPulpo()
    url = serve(stub)
    client = make_client(url, tmp_path)
    since = datetime(2026, 6, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    list(client.iter_sales_orders(state="ended", updated_at_gte=since, warehouse_id=4))
    query = dict(stub.requests[-1]["query"])
    assert query == {"state": "ended", "updated_at": "gte:2026-06-01 00:00:00", "warehouse_id": "4",
                     "limit": "100", "offset": "0"}
    names = set(spec_support.query_parameters("pulpo", "GET", "/sales/orders"))
    assert set(query) <= names


def test_a_malformed_reply_is_an_api_error_naming_the_field(tmp_path, serve):
    stub = StubPulpo()
    url = serve(stub)
    client = make_client(url, tmp_path)
    stub.me_body = {"id": "seven", "username": "x"}
    with pytest.raises(ApiError, match=r"unexpected User in the reply \(id: ") as info:
        client.check_connection()
    assert "seven" not in str(info.value)


def test_api_errors_carry_no_request_secrets(tmp_path, serve):
    stub = StubPulpo()
    url = serve(stub)
    client = make_client(url, tmp_path)
    stub.fail["GET /iam/users/me"] = [500] * 4
    with pytest.raises(ApiError) as info:
        client.check_connection()
    assert info.value.outcome_unknown is False  # a GET changes nothing
    assert PASSWORD not in str(info.value) and not any(t in str(info.value) for t in stub.tokens)


# --------------------------------------------------------------------------------------------------
# Every call the client makes exists in the spec, with the spec's parameter names


class RecorderStub:
    """Answers every path: a token for /auth, an empty page for GETs and a record for writes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[str], Any]] = []

    def app(self) -> Starlette:
        async def anything(request: Request) -> Response:
            path = request.url.path.removeprefix("/api/v1")
            body = await request.body()
            self.calls.append((request.method, path, [k for k, _ in request.query_params.multi_items()],
                               json.loads(body) if body else None))
            if path == "/auth":
                return JSONResponse({"access_token": "t", "expires_in": 600, "token_type": "bearer",
                                     "scope": "general"})
            if request.method == "GET" and not path.rstrip("/").split("/")[-1].isdigit() \
                    and not path.endswith("/me"):
                return JSONResponse({"rows": [], "total_results": 0})
            return JSONResponse({"id": 1}, status_code=201 if request.method == "POST" else 200)

        methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
        return Starlette(routes=[Route("/{path:path}", anything, methods=methods)])


# Spec v4.6.50 lists no limit/offset on these list endpoints; the client pages them anyway
# (harmless when ignored, required when PULPO caps the reply).
PAGING_NOT_IN_SPEC = {"/inventory/products", "/inventory/kits", "/inventory/stocks/summary",
                      "/inventory/stocks/availability", "/shipping/shipping_methods",
                      "/packing/orders/{packing_order_id}/boxes/{box_id}/shipment_tracking"}


def test_every_request_matches_a_spec_operation_and_its_parameters(tmp_path):
    recorder = RecorderStub()
    url, stop = serve_in_thread(recorder.app())
    try:
        client = make_client(url + "/api/v1", tmp_path, warehouse_id=1)
        client.check_connection()
        client.list_warehouses()
        list(client.iter_products(sku="A", active=True, barcode="400"))
        client.get_product(3)
        client.create_product({"sku": "A", "name": "B"})
        client.update_product(3, {"name": "B"})
        client.bulk_create_products([{"sku": "A", "name": "B"}])
        client.bulk_update_products([{"id": 3, "sku": "A", "name": "B"}])
        list(client.iter_kits(product_id=3))
        client.create_kit({"name": "K", "product_id": 3, "items": [{"product_id": 4, "quantity": 2}]})
        list(client.iter_sales_orders(order_num="X", state="queue", updated_at_gte=datetime(2026, 1, 1)))
        client.find_sales_order_by_order_num("X")
        client.get_sales_order(5)
        client.create_sales_order({"order_num": "X", "items": [{"product_id": 3, "quantity": 1}]})
        client.update_sales_order(5, {"notes": "n"})
        client.cancel_sales_order(5)
        list(client.iter_packing_orders(state="ended", updated_at_gte=datetime(2026, 1, 1), sales_order_id=5))
        client.get_packing_order(6)
        client.list_boxes(6)
        client.search_boxes(tracking_code="T", warehouse_id=1)
        client.list_shipment_trackings(6, 7)
        client.create_shipment_tracking(6, 7, {"carrier_code": "dhl", "tracking_code": "T1"})
        client.update_shipment_tracking(6, 7, 8, {"tracking_url": "https://t/1"})
        client.attach_to_box(6, 7, "label.pdf", content=b"%PDF-1.4")
        list(client.iter_stock_summary(1, product_ids=[3, 4]))
        client.availability([3, 4], 1)
        client.list_shipping_methods()
    finally:
        stop.set()
    assert len({(m, p) for m, p, _, _ in recorder.calls}) >= 27
    for method, path, query, body in recorder.calls:
        template = spec_support.match_path("pulpo", method, path)
        assert template is not None, f"{method} {path} is not in the spec"
        allowed = set(spec_support.query_parameters("pulpo", method, template))
        if template in PAGING_NOT_IN_SPEC:
            allowed |= {"limit", "offset"}
        names = {name.removesuffix("[]") for name in query}
        assert names <= allowed, f"{method} {template}: {names - allowed} not in the spec"
        schema = spec_support.request_body_schema("pulpo", method, template)
        if body is not None and schema is not None and template != "/auth":
            spec_support.validate("pulpo", body, schema)


# --------------------------------------------------------------------------------------------------
# Against the PULPO sandbox (real HTTP, the spec's shapes, the sandbox's own token accounting)

SANDBOX_PRODUCTS = 150


@pytest.fixture(scope="module")
def pulpo_sandbox_url():
    from billbee_pulpo_pipeline.sandboxes.pulpo.app import PulpoSandbox

    url, stop = serve_in_thread(PulpoSandbox(seed=5, products=SANDBOX_PRODUCTS).build())
    yield url
    stop.set()


class SandboxControl:
    def __init__(self, root: str) -> None:
        self.root = root
        self.api = root + "/api/v1"

    def __call__(self, method: str, path: str, payload: Any = None) -> Any:
        response = requests.request(method, f"{self.root}/__sandbox/{path}", json=payload, timeout=30)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        return self("GET", "stats")


@pytest.fixture
def pulpo_sandbox(pulpo_sandbox_url):
    control = SandboxControl(pulpo_sandbox_url)
    control("POST", "reset", {"seed": 5, "products": SANDBOX_PRODUCTS})  # data, faults, stats, bans
    return control


def sandbox_client(control: SandboxControl, token_dir: Path, **kwargs: Any) -> PulpoClient:
    options: dict[str, Any] = {"token_dir": token_dir, "backoff_factor": 0.01, "max_retries": 2,
                               "timeout": (2, 10), **kwargs}
    return PulpoClient(control.api, sandbox_credentials.PULPO_USERNAME, sandbox_credentials.PULPO_PASSWORD,
                       **options)


def test_sandbox_catalogue_reference_data_and_stock(pulpo_sandbox, tmp_path):
    client = sandbox_client(pulpo_sandbox, tmp_path, page_size=150, warehouse_id=1)  # sandbox caps at 100
    assert client.check_connection().username == sandbox_credentials.PULPO_USERNAME
    assert [w.id for w in client.list_warehouses()] and client.list_shipping_methods()
    products = list(client.iter_products())
    ids = [p.id for p in products]
    assert len(ids) == len(set(ids)) == pulpo_sandbox("GET", "world")["products"]
    assert all(p.sku and p.name for p in products)
    first = client.get_product(ids[0])
    assert first.sku == products[0].sku
    assert [p.id for p in client.iter_products(sku=first.sku)] == [first.id]
    summary = list(client.iter_stock_summary())
    assert summary and len({s.product_id for s in summary}) == len(summary)
    some = [s.product_id for s in summary[:3]]
    available = {a.product_id: a.available_quantity for a in client.availability(some)}
    assert available == {s.product_id: s.available for s in summary[:3]}
    assert pulpo_sandbox.stats()["token_requests"] == 1


def test_sandbox_writes_and_rejections(pulpo_sandbox, tmp_path):
    client = sandbox_client(pulpo_sandbox, tmp_path, warehouse_id=1)
    existing = next(client.iter_products())
    result = client.bulk_create_products([{"sku": "NEW-A", "name": "A", "attributes": {"billbee_id": 1}},
                                          {"sku": existing.sku, "name": "dup"}, {"sku": "NEW-B"}])
    assert [i.key for i in result.ok] == ["NEW-A"]
    assert {f.key: f.field_errors for f in result.failed} == {
        existing.sku: {"sku": "has already been taken"}, "NEW-B": {"name": "can't be blank"}}
    assert client.get_product(result.ok[0].id).attributes_dict == {"billbee_id": 1}
    order_payload = {"order_num": "BB-1", "external_order_num": 98765432109876543,
                     "ship_to": {"name": "Erika", "address": {"street": "Hauptstr. 5", "zip": "34117",
                                                              "city": "Kassel", "country_alpha2": "DE"}},
                     "items": [{"product_id": existing.id, "quantity": 2}]}
    order = client.create_sales_order(order_payload)
    assert (order.state, order.warehouse_id, order.external_order_num) == ("queue", 1, "98765432109876543")
    with pytest.raises(RequestRejectedError) as duplicate:
        client.create_sales_order(order_payload)
    assert duplicate.value.field_errors == {"order_num": "has already been taken"}
    assert client.find_sales_order_by_order_num("BB-1").id == order.id
    assert client.update_sales_order(order.id, {"notes": "ring twice"}).notes == "ring twice"
    assert client.cancel_sales_order(order.id).state == "cancelled"
    with pytest.raises(RequestRejectedError) as forbidden:
        client.update_sales_order(order.id, {"notes": "too late"})
    assert forbidden.value.status == 403
    with pytest.raises(NotFoundError):
        client.get_sales_order(424242424)


def test_sandbox_processes_share_one_token(pulpo_sandbox, tmp_path):
    results = run_processes_together(pulpo_sandbox.api, tmp_path, sandbox_credentials.PULPO_USERNAME,
                                     sandbox_credentials.PULPO_PASSWORD)
    stats = pulpo_sandbox.stats()
    assert stats["token_requests"] == 1 and stats["unauthorized"] == 0
    assert {r["products"] for r in results} == {pulpo_sandbox("GET", "world")["products"]}


def test_sandbox_expired_and_short_lived_tokens(pulpo_sandbox, tmp_path):
    client = sandbox_client(pulpo_sandbox, tmp_path)
    client.check_connection()
    pulpo_sandbox("POST", "tokens/expire")
    client.check_connection()  # 401 -> one re-authentication -> success
    assert pulpo_sandbox.stats()["token_requests"] == 2 and pulpo_sandbox.stats()["unauthorized"] == 1
    pulpo_sandbox("PUT", "faults", {"token_ttl_seconds": 3})
    pulpo_sandbox("POST", "tokens/expire")
    client.check_connection()  # picks up a 3 s token
    deadline, calls = time.time() + 3.5, 0
    while time.time() < deadline:
        client.check_connection()
        calls += 1
        time.sleep(0.05)
    stats = pulpo_sandbox.stats()
    assert stats["unauthorized"] == 2  # only the two forced expiries, never an expired token
    assert 4 <= stats["token_requests"] <= 6 < calls


def test_sandbox_5xx_on_post_and_get(pulpo_sandbox, tmp_path):
    client = sandbox_client(pulpo_sandbox, tmp_path)
    client.check_connection()  # token cached before the faults start
    pulpo_sandbox("PUT", "faults", {"rate_5xx": 1.0})
    with pytest.raises(TransientApiError) as post:
        client.create_sales_order({"order_num": "BB-9"})
    assert post.value.outcome_unknown is True
    with pytest.raises(TransientApiError) as get:
        client.check_connection()
    assert get.value.outcome_unknown is False
    requests_seen = pulpo_sandbox.stats()["requests"]
    assert requests_seen["POST /api/v1/sales/orders"] == 1
    assert requests_seen["GET /api/v1/iam/users/me"] == 1 + 1 + 2  # before, then first try + 2 retries
