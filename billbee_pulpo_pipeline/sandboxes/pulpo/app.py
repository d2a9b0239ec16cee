"""PULPO WMS sandbox: the subset of the v4.6.50 API the integration uses, over real HTTP.

Paths, parameters, list envelopes (`{"<plural>": [...], "total_results": N}`), field names and
types follow the Swagger spec. Where the spec is silent or contradicts itself, the sandbox decides
as follows (each choice is what a client must cope with anyway):

- Auth: `POST /api/v1/auth` takes JSON or a form; tokens are opaque JWT-looking strings valid
  3600 s (`faults.token_ttl_seconds` overrides for new tokens). `grant_type=refresh_token` swaps a
  still-valid token (field `refresh_token`, or the Bearer header) for a new one. A missing, unknown
  or expired Bearer is answered 401 `{"errors":{"message":"unauthorized"}}`.
- Token-storm ban (PULPO: "the system will ban your IP"): the 11th token request for one username
  within 60 s is refused with **429** plus `Retry-After`, and so is every `/auth` call for the next
  60 s. Other endpoints keep working with tokens already issued. Simulator calls are exempt.
- No throttling (PULPO documents no rate limits); faults still apply.
- Lists: `limit` defaults to 10 (the spec's documented default) and is capped at 100; `offset`
  pages; rows are sorted by id. `/inventory/stocks/summary` and `/availability` are bare lists
  (as specified, without `total_results`); they honour `limit`/`offset` when given (cap 100) and
  otherwise return every row.
- Errors: 422 `{"errors":[{"<field>":"<message>"}]}` with Ecto's messages ("can't be blank",
  "is invalid", "has already been taken", "does not exist"); nested fields (`street`,
  `product_id` of an item) are keyed by their own name. 403 (forbidden state change) uses the
  same list shape. 404 and other errors: `{"errors":{"message":"..."}}`. Where the spec declares
  400 rather than 422 (stock add/remove, pause, shipping finish, close) the sandbox answers 400.
- Bulk: products answer 201 `{"created"|"updated": [{id, sku}]}` when all succeed, else 400 with
  `errors: [{"errors": [...], "sku": <input sku>}]` (plus `id` on updates). Sales orders likewise
  with `{id, order_num}`, and `errors` is an object keyed by the order number
  (`{"<order_num>": {"<field>": "msg"}}`; the spec's `ErrorSalesOrderResponse`).
- Types exactly as in the spec: `attributes` is a JSON *string*, quantities are integers (no 1.5,
  no "2"). `sku` + `name` are required on products (missing from the spec's `Product`, used by
  the API); `order_num`, `warehouse_id`, `ship_to.address.street` and `items` on sales orders.
- Dates are returned as naive UTC ISO 8601 `YYYY-MM-DDThh:mm:ss` with second precision (Ecto's
  default); filters take `YYYY-MM-DD hh:mm:ss`. Two changes in one second share a timestamp, so an
  `updated_at` poller must use `gte:` and de-duplicate.
- Stock: `StockSummary.product_id` / `Availability.product_id` are strings, as the spec types
  them. `available` = storage - reservations of orders in queue/picking, literally, so it goes
  negative when orders outrun stock. A product appears in a warehouse's summary once it has had a
  stock record there (created products have none until goods arrive); `last_movement` changes on
  physical movements only, not on reservations. Unknown ids are simply absent from the list.
- Unknown ids on `/{id}` routes answer 404 `{"errors":{"message":"<entity> not found"}}`.
- Boxes: `POST …/box` takes the spec's `product_id`, `box_number`, `quantity` (form or JSON) and
  optionally `weight`, `length`, `width`, `height`, `name`; without them the box gets the smallest
  fitting carton of `GET /packing/boxes` and weighs tare + product weights (kg, cm).
- Labels: `POST …/boxes/{box}/attach` stores the `AttachmentRequest` on the box. `path` is taken
  as a reference to a file already uploaded to PULPO's storage (the upload itself is not public),
  or as the file itself when it is an RFC 2397 data URL (`data:application/pdf;base64,…`; one that
  does not decode is 422 `path: is invalid`); an http(s) `path` is returned as the attachment URL, anything else as
  `<base>/api/v1/attachment/{id}`. `POST /packing/boxes/attachments` takes `[box ids]` (or
  `{"ids"|"packing_box_ids": [...]}`) and returns `[{packing_box_id, attachments: [{type, url, …}]}]`.
- Third parties (customers/suppliers): `GET|POST /iam/third_parties`, `GET /iam/third_parties/{id}`
  with the spec's required fields (identifier_type, identifier_number, name, third_type C|S,
  tenant_id = the user's tenant) and filters; an identifier number is unique per type. A sales
  order's `third_party_id` must name one ("does not exist" otherwise), as a foreign key would.
- Merchants (a 3PL tenant keeps one per client): 1 (the default), 2 and 3. Products, third parties and
  sales orders store the `merchant_id` sent, else the default merchant; an unknown one is 422
  `merchant_id: does not exist`. SKUs are unique per merchant (two merchants may share one). A sales
  order's or kit's items must be products of its own merchant ("product_id: does not exist" otherwise).
  `GET /iam/third_parties` filters by `merchant_id`, else by the default merchant (as the spec says);
  an identifier number is unique per merchant and type. `GET /inventory/products` does not declare
  `merchant_id` and lists every merchant's products (each with its `merchant_id`).
- Spec gaps as knobs (`GET|PUT /__sandbox/behaviour`, reset by `/__sandbox/reset`):
  `product_barcodes_on_update` "replace" (default: the list sent becomes the product's) | "merge" (the
  codes sent are added to the product's).
- The spec's picking and shipping endpoints drive the order flow (see `data.py`); the simulated
  warehouse uses exactly those, so no control route creates warehouse tasks.

Control routes (besides those of `common.py`):

    POST /__sandbox/reset          {"seed": 1, "products": 200000, "stock": true}: new tenant; products
                                   1..M are catalogue entries with a SKU that are no bundles, stocked in
                                   warehouse 1 (every 5th also in warehouse 2) when "stock" is true.
                                   Issued tokens stay valid; bans are lifted; faults and stats reset
    POST /__sandbox/stock/shuffle  {"fraction": 0.01, "warehouse_id": 1}: change the storage stock of a
                                   deterministic fraction of stocked products; returns their ids/SKUs
    GET  /__sandbox/world          counts of products, orders per state, boxes, trackings, stock records
    POST /__sandbox/tokens/expire  expire every issued token (the next call gets 401)
    POST /__sandbox/auth/unban     lift token-storm bans
    GET|PUT /__sandbox/behaviour   the spec-gap knobs above, e.g. {"product_barcodes_on_update": "merge"}
    PUT  /__sandbox/sales/taken_message  {"message": "must be unique"}: PULPO's words for a used order_num
                                   (the spec leaves them open; null restores "has already been taken")
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billbee_pulpo_pipeline.sandboxes.common import SIMULATOR_HEADER, SandboxApp
from billbee_pulpo_pipeline.sandboxes.credentials import PULPO_PASSWORD, PULPO_USERNAME
from billbee_pulpo_pipeline.sandboxes.pulpo.data import (
    BEHAVIOUR_CHOICES,
    BOX_TEMPLATES,
    KIT_FILTERS,
    LOCATION_FILTERS,
    LOCATION_TYPES,
    METHOD_FILTERS,
    PICKING_FILTERS,
    World,
)
from billbee_pulpo_pipeline.sandboxes.pulpo.query import (
    PulpoError,
    Query,
    blank,
    int_list,
    invalid,
    not_found,
    paging,
    project,
    select,
    window,
)

PREFIX = "/api/v1"
DEFAULT_TOKEN_TTL_SECONDS = 3600
BAN_WINDOW_SECONDS = 60.0
BAN_THRESHOLD = 10  # token requests per username and window; the next one starts a ban
BAN_SECONDS = 60.0
UNAUTHORIZED = {"errors": {"message": "unauthorized"}}
WAREHOUSE_FILTERS = {
    "id": ("id", "int"),
    "name": ("name", "str"),
    "city": ("city", "str"),
    "active": ("active", "bool"),
    "zip_code": ("zip_code", "str"),
}
BOX_FIELD_KINDS = {
    "product_id": "int",
    "box_number": "int",
    "quantity": "int",
    "weight": "num",
    "length": "num",
    "width": "num",
    "height": "num",
}
STOCK_FIELD_KINDS = {"quantity": "int", "location_id": "int", "product_id": "int", "batch_id": "int"}
_INTEGER = re.compile(r"^-?\d+$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


@dataclass
class IssuedToken:
    username: str
    expires_at: float  # time.monotonic()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_token(username: str, ttl: int) -> str:
    """An opaque token shaped like PULPO's JWT (header.payload.signature); only its lookup counts."""
    issued = int(time.time())
    header = _b64(b'{"alg":"HS512","typ":"JWT"}')
    payload = _b64(
        json.dumps(
            {
                "aud": "pulpo_wms",
                "iss": "pulpo_wms",
                "sub": username,
                "iat": issued,
                "exp": issued + ttl,
                "jti": secrets.token_hex(12),
                "typ": "access",
            }
        ).encode()
    )
    return f"{header}.{payload}.{_b64(secrets.token_bytes(48))}"


async def read_body(request: Request) -> Any:
    """JSON, or a form (`application/x-www-form-urlencoded`, keys with `[]` become lists); None if empty."""
    raw = await request.body()
    if not raw.strip():
        return None
    if "application/x-www-form-urlencoded" in request.headers.get("content-type", ""):
        form: dict[str, Any] = {}
        for key, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
            if key.endswith("[]"):
                form.setdefault(key[:-2], []).append(value)
            else:
                form[key] = value
        return form
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid(("body", "is not valid JSON"), status=400) from None


def coerce_form(values: Any, kinds: dict[str, str]) -> dict[str, Any]:
    """Form fields arrive as text (spec `form_data`): cast them as Ecto would; JSON values stay as sent."""
    if not isinstance(values, dict):
        return {}
    out = dict(values)
    for key, kind in kinds.items():
        value = out.get(key)
        if not isinstance(value, str):
            continue
        text = value.strip()
        if kind == "int" and _INTEGER.match(text):
            out[key] = int(text)
        elif kind == "num" and _NUMBER.match(text):
            out[key] = float(text)
        elif text == "":
            out[key] = None
    return out


def query_of(request: Request) -> Query:
    query: Query = {}
    for key, value in request.query_params.multi_items():
        query.setdefault(key.removesuffix("[]"), []).append(value)
    return query


def listing(key: str, rows: list[Any], total: int, status: int = 200) -> JSONResponse:
    return JSONResponse({key: rows, "total_results": total}, status_code=status)


def paged(key: str, records: Any, query: Query, fields: Any) -> JSONResponse:
    limit, offset = paging(query)
    rows = select(records, query, fields)
    return listing(key, window(rows, limit, offset), len(rows))


def ok(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


Handler = Callable[[Request], Awaitable[Response]]


class PulpoSandbox(SandboxApp):
    """The PULPO WMS sandbox (see the module docstring for every decision the spec leaves open)."""

    system = "pulpo"

    def __init__(
        self, *, seed: int = 1, products: int = 0, stock: bool = True, throttle: bool = False
    ) -> None:
        super().__init__(seed=seed, throttle=throttle)
        self.world = World(seed=seed, products=products, stock=stock)
        self.tokens: dict[str, IssuedToken] = {}
        self.token_times: dict[str, deque[float]] = {}
        self.bans: dict[str, float] = {}
        self._register_routes()

    # ---- hooks -----------------------------------------------------------------------------------

    def error_response(self, status: int, message: str) -> Response:
        return JSONResponse({"errors": {"message": message}}, status_code=status)

    def authenticate(self, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        issued = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if issued is not None and issued.expires_at <= time.monotonic():
            self.tokens.pop(token.strip(), None)
            issued = None
        if issued is None:
            return JSONResponse(
                UNAUTHORIZED, status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        request.state.username = issued.username
        return None

    def reset_world(self, params: dict[str, Any]) -> dict[str, Any]:
        """Tokens survive a reset (the API user stays); bans and the data do not."""
        started = time.perf_counter()
        self.seed = int(params.get("seed", self.seed))
        summary = self.world.reset(
            seed=self.seed, products=int(params.get("products", 0)), stock=bool(params.get("stock", True))
        )
        self.bans.clear()
        self.token_times.clear()
        return {**summary, "seconds": round(time.perf_counter() - started, 3)}

    def extra_control_routes(self) -> list[Route]:
        async def shuffle(request: Request) -> Response:
            params = json.loads(await request.body() or b"{}")
            try:
                result = self.world.shuffle_stock(
                    float(params.get("fraction", 0.01)), int(params.get("warehouse_id", 1))
                )
            except PulpoError as exc:
                return exc.response or self.error_response(exc.status, exc.message)
            return ok(result)

        async def world(_: Request) -> Response:
            now = time.monotonic()
            return ok(
                {
                    **self.world.overview(),
                    "active_tokens": sum(1 for t in self.tokens.values() if t.expires_at > now),
                    "banned": sorted(k for k, until in self.bans.items() if until > now),
                }
            )

        async def expire_tokens(_: Request) -> Response:
            expired = len(self.tokens)
            self.tokens.clear()
            return ok({"expired": expired})

        async def taken_message(request: Request) -> Response:
            params = json.loads(await request.body() or b"{}")
            if "message" in params:   # null restores the default
                self.world.order_num_taken_message = str(params["message"] or type(self.world).order_num_taken_message)
            return ok({"message": self.world.order_num_taken_message})

        async def unban(_: Request) -> Response:
            self.bans.clear()
            self.token_times.clear()
            return ok({"ok": True})

        async def behaviour(request: Request) -> Response:
            if request.method == "PUT":
                values = json.loads(await request.body() or b"{}")
                for key, value in values.items():
                    if value not in BEHAVIOUR_CHOICES.get(key, ()):
                        return JSONResponse({"error": f"unknown behaviour {key}={value!r}"}, status_code=400)
                self.world.behaviour.update(values)
            return ok(self.world.behaviour)

        return [
            Route("/__sandbox/stock/shuffle", shuffle, methods=["POST"]),
            Route("/__sandbox/world", world, methods=["GET"]),
            Route("/__sandbox/tokens/expire", expire_tokens, methods=["POST"]),
            Route("/__sandbox/auth/unban", unban, methods=["POST"]),
            Route("/__sandbox/behaviour", behaviour, methods=["GET", "PUT"]),
            Route("/__sandbox/sales/taken_message", taken_message, methods=["GET", "PUT"]),
        ]

    # ---- auth ------------------------------------------------------------------------------------

    async def _auth(self, request: Request) -> Response:
        body = await read_body(request)
        body = body if isinstance(body, dict) else {}
        grant = body.get("grant_type") or "password"
        old_token = str(
            body.get("refresh_token") or request.headers.get("authorization", "").partition(" ")[2]
        )
        previous = self.tokens.get(old_token.strip()) if grant == "refresh_token" else None
        key = str(body.get("username") if grant == "password" else previous.username if previous else "") or (
            request.client.host if request.client else "unknown"
        )
        if request.headers.get(SIMULATOR_HEADER) != "simulator":
            self.stats.token_requests += 1
            refused = self._ban_check(key)
            if refused is not None:
                return refused
        if grant == "password":
            missing = [(k, "can't be blank") for k in ("username", "password", "scope") if blank(body.get(k))]
            if missing:
                raise invalid(*missing, status=400)
            if not (
                secrets.compare_digest(str(body["username"]).encode(), PULPO_USERNAME.encode())
                and secrets.compare_digest(str(body["password"]).encode(), PULPO_PASSWORD.encode())
            ):
                return JSONResponse(UNAUTHORIZED, status_code=401)
            username = str(body["username"])
        elif grant == "refresh_token":
            if previous is None or previous.expires_at <= time.monotonic():
                return JSONResponse(UNAUTHORIZED, status_code=401)
            self.tokens.pop(old_token.strip(), None)
            username = previous.username
        else:
            raise invalid(("grant_type", "is invalid"), status=400)
        ttl = self.faults.token_ttl_seconds
        ttl = DEFAULT_TOKEN_TTL_SECONDS if ttl is None else int(ttl)
        token = new_token(username, ttl)
        self._forget_expired()
        self.tokens[token] = IssuedToken(username, time.monotonic() + ttl)
        return ok(
            {
                "access_token": token,
                "expires_in": ttl,
                "scope": str(body.get("scope") or "general"),
                "token_type": "bearer",
            }
        )

    def _ban_check(self, key: str) -> Response | None:
        now = time.monotonic()
        until = self.bans.get(key, 0.0)
        if until > now:
            return self._banned(until - now)
        times = self.token_times.setdefault(key, deque())
        while times and times[0] <= now - BAN_WINDOW_SECONDS:
            times.popleft()
        times.append(now)
        if len(times) > BAN_THRESHOLD:
            self.bans[key] = now + BAN_SECONDS
            times.clear()
            return self._banned(BAN_SECONDS)
        return None

    @staticmethod
    def _banned(seconds: float) -> Response:
        wait = max(1, int(seconds + 0.999))
        message = (
            f"too many token requests: banned for {wait} s. "
            "Reuse the access token until it expires instead of requesting one per call"
        )
        return JSONResponse(
            {"errors": {"message": message}}, status_code=429, headers={"Retry-After": str(wait)}
        )

    def _forget_expired(self) -> None:
        if len(self.tokens) > 10_000:
            now = time.monotonic()
            self.tokens = {k: v for k, v in self.tokens.items() if v.expires_at > now}

    async def _logout(self, request: Request) -> Response:
        self.tokens.pop(request.headers.get("authorization", "").partition(" ")[2].strip(), None)
        return ok({"message": "ok"})

    # ---- routing ---------------------------------------------------------------------------------

    def _register_routes(self) -> None:
        w = self.world

        def route(method: str, path: str, handler: Handler, *, auth: bool = True) -> None:
            self.api_route(method, PREFIX + path, handler, auth=auth)

        def pid(request: Request, name: str = "id") -> int:
            return int(request.path_params[name])

        async def health(_: Request) -> Response:
            return Response(status_code=204)

        route("GET", "/", health, auth=False)
        route("POST", "/auth", self._auth, auth=False)
        route("POST", "/auth/logout", self._logout)

        async def me(request: Request) -> Response:
            return ok(w.user(request.state.username))

        route("GET", "/iam/users/me", me)

        async def third_parties(request: Request) -> Response:
            rows, total = w.list_third_parties(query_of(request))
            return listing("third_parties", rows, total)

        async def create_third_party(request: Request) -> Response:
            return ok(w.create_third_party(await read_body(request)), 201)

        async def third_party(request: Request) -> Response:
            return ok(w.third_party(pid(request)))

        route("GET", "/iam/third_parties", third_parties)
        route("POST", "/iam/third_parties", create_third_party)
        route("GET", "/iam/third_parties/{id:int}", third_party)
        self._register_reference_routes(route, pid)
        self._register_product_routes(route, pid)
        self._register_stock_routes(route)
        self._register_order_routes(route, pid)
        self._register_packing_routes(route, pid)

    def _register_reference_routes(self, route: Callable[..., None], pid: Callable[..., int]) -> None:
        w = self.world

        async def warehouses(request: Request) -> Response:
            return paged("warehouses", w.warehouses(), query_of(request), WAREHOUSE_FILTERS)

        async def warehouse(request: Request) -> Response:
            found = [x for x in w.warehouses() if x["id"] == pid(request)]
            if not found:
                raise not_found("warehouse")
            return ok(found[0])

        async def warehouse_locations(request: Request) -> Response:
            wid = pid(request)
            if wid not in w.stock:
                raise not_found("warehouse")
            rows = [loc for loc in w.locations() if loc["warehouse_id"] == wid]
            return listing("locations", rows, len(rows))

        async def locations(request: Request) -> Response:
            return paged("locations", w.locations(), query_of(request), LOCATION_FILTERS)

        async def location_types(_: Request) -> Response:
            rows = [
                {"id": k, "name": v, "inserted_at": w.seeded_at, "updated_at": w.seeded_at}
                for k, v in LOCATION_TYPES.items()
            ]
            return listing("location_types", rows, len(rows))

        async def methods(request: Request) -> Response:
            return paged("shipping_methods", w.shipping_methods(), query_of(request), METHOD_FILTERS)

        async def method(request: Request) -> Response:
            found = [m for m in w.shipping_methods() if m["id"] == pid(request)]
            if not found:
                raise not_found("shipping method")
            return ok(found[0])

        async def box_templates(request: Request) -> Response:
            rows = [{**t, "inserted_at": w.seeded_at, "updated_at": w.seeded_at} for t in BOX_TEMPLATES]
            return paged("boxes", rows, query_of(request), {"name": ("name", "str")})

        route("GET", "/warehouses/", warehouses)
        route("GET", "/warehouses/{id:int}", warehouse)
        route("GET", "/warehouses/{id:int}/locations", warehouse_locations)
        route("GET", "/warehouses/locations", locations)
        route("GET", "/warehouses/location_types", location_types)
        route("GET", "/shipping/shipping_methods", methods)
        route("GET", "/shipping/shipping_methods/{id:int}", method)
        route("GET", "/packing/boxes", box_templates)

    def _register_product_routes(self, route: Callable[..., None], pid: Callable[..., int]) -> None:
        w = self.world

        async def products(request: Request) -> Response:
            rows, total = w.list_products(query_of(request))
            return listing("products", rows, total)

        async def create(request: Request) -> Response:
            return ok(w.create_product(await read_body(request)), 201)

        async def show(request: Request) -> Response:
            return ok(w.get_product(pid(request)))

        async def update(request: Request) -> Response:
            return ok(w.update_product(pid(request), await read_body(request)))

        async def bulk_create(request: Request) -> Response:
            done, failed = w.bulk_products(await read_body(request), update=False)
            return ok({"created": done, "errors": failed}, 400) if failed else ok({"created": done}, 201)

        async def bulk_update(request: Request) -> Response:
            done, failed = w.bulk_products(await read_body(request), update=True)
            return ok({"updated": done, "errors": failed}, 400) if failed else ok({"updated": done}, 201)

        async def kits(request: Request) -> Response:
            return paged("kits", w.kits.values(), query_of(request), KIT_FILTERS)

        async def create_kit(request: Request) -> Response:
            return ok(w.create_kit(await read_body(request)), 201)

        async def kit(request: Request) -> Response:
            return ok(w.kit(pid(request)))

        async def deactivate_kit(request: Request) -> Response:
            return ok(w.deactivate_kit(pid(request)))

        route("GET", "/inventory/products", products)
        route("POST", "/inventory/products", create)
        route("GET", "/inventory/products/{id:int}", show)
        route("PUT", "/inventory/products/{id:int}", update)
        route("POST", "/inventory/bulk/products", bulk_create)
        route("PUT", "/inventory/bulk/products", bulk_update)
        route("GET", "/inventory/kits", kits)
        route("POST", "/inventory/kits", create_kit)
        route("GET", "/inventory/kits/{id:int}", kit)
        route("POST", "/inventory/kits/{id:int}/deactivate", deactivate_kit)

    def _register_stock_routes(self, route: Callable[..., None]) -> None:
        w = self.world

        async def summary(request: Request) -> Response:
            query = query_of(request)
            limit, offset = paging(query, default_limit=None)
            return ok(
                w.summary_rows(
                    int_list(query, "product_id", status=400),
                    int_list(query, "warehouse_id", status=400),
                    limit,
                    offset,
                )
            )

        async def availability(request: Request) -> Response:
            query = query_of(request)
            limit, offset = paging(query, default_limit=None)
            ids = int_list(query, "id")
            return ok(
                w.availability(
                    ids if ids is not None else int_list(query, "product_id"),
                    int_list(query, "warehouse_id"),
                    limit,
                    offset,
                )
            )

        async def stocks(request: Request) -> Response:
            rows, total = w.list_stocks(query_of(request))
            return listing("stocks", rows, total)

        async def add(request: Request) -> Response:
            return ok(w.add_stock(coerce_form(await read_body(request), STOCK_FIELD_KINDS)))

        async def remove(request: Request) -> Response:
            return ok(w.remove_stock(coerce_form(await read_body(request), STOCK_FIELD_KINDS)))

        async def correct(request: Request) -> Response:
            return ok(w.correct_stock(await read_body(request)), 201)

        route("GET", "/inventory/stocks", stocks)
        route("GET", "/inventory/stocks/summary", summary)
        route("GET", "/inventory/stocks/availability", availability)
        route("POST", "/inventory/stocks/add", add)
        route("POST", "/inventory/stocks/remove", remove)
        route("POST", "/inventory/stocks/correct", correct)

    def _register_order_routes(self, route: Callable[..., None], pid: Callable[..., int]) -> None:
        w = self.world

        async def orders(request: Request) -> Response:
            query = query_of(request)
            rows, total = w.list_orders(query)
            return listing("sales_orders", project(rows, query), total)

        async def create(request: Request) -> Response:
            return ok(w.create_order(await read_body(request)), 201)

        async def show(request: Request) -> Response:
            return ok(w.order(pid(request)))

        async def update(request: Request) -> Response:
            return ok(w.update_order(pid(request), await read_body(request)), 201)

        async def cancel(request: Request) -> Response:
            return ok(w.cancel_order(pid(request)))

        async def pause(request: Request) -> Response:
            return ok(w.pause_order(pid(request)))

        async def resume(request: Request) -> Response:
            return ok(w.resume_order(pid(request)))

        async def bulk_create(request: Request) -> Response:
            created, errors = w.bulk_orders(await read_body(request))
            return (
                ok({"created": created, "errors": errors}, 400) if errors else ok({"created": created}, 201)
            )

        async def pickings(request: Request) -> Response:
            return paged("picking_orders", w.picking.values(), query_of(request), PICKING_FILTERS)

        async def create_picking(request: Request) -> Response:
            body = coerce_form(await read_body(request), {"orders_count": "int"})
            created = w.create_picking(body.get("sales_orders"), body.get("orders_count"))
            return listing("picking_orders", created, len(created))

        async def picking(request: Request) -> Response:
            return ok(w.picking_order(pid(request)))

        async def accept_picking(request: Request) -> Response:
            return ok(w.accept_picking(pid(request)))

        async def finish_picking(request: Request) -> Response:
            return ok(w.finish_picking(pid(request)))

        async def shipping_orders(request: Request) -> Response:
            rows, total = w.list_shipping(query_of(request))
            return listing("shipping_orders", rows, total)

        async def shipping_order(request: Request) -> Response:
            return ok(w.shipping_order(pid(request)))

        async def finish_shipping(request: Request) -> Response:
            return ok(w.finish_shipping(pid(request)))

        route("GET", "/sales/orders", orders)
        route("POST", "/sales/orders", create)
        route("GET", "/sales/orders/{id:int}", show)
        route("PUT", "/sales/orders/{id:int}", update)
        route("POST", "/sales/orders/{id:int}/cancel", cancel)
        route("POST", "/sales/orders/{id:int}/pause", pause)
        route("POST", "/sales/orders/{id:int}/resume", resume)
        route("POST", "/sales/bulk/orders", bulk_create)
        route("GET", "/picking/orders", pickings)
        route("POST", "/picking/orders", create_picking)
        route("GET", "/picking/orders/{id:int}", picking)
        route("POST", "/picking/orders/{id:int}/accept", accept_picking)
        route("POST", "/picking/orders/{id:int}/finish", finish_picking)
        route("GET", "/shipping/orders", shipping_orders)
        route("GET", "/shipping/orders/{id:int}", shipping_order)
        route("POST", "/shipping/orders/{id:int}/finish", finish_shipping)

    def _register_packing_routes(self, route: Callable[..., None], pid: Callable[..., int]) -> None:
        w = self.world
        box_path = "/packing/orders/{packing_order_id:int}/boxes/{box_id:int}"

        def po_box(request: Request) -> tuple[int, int]:
            return pid(request, "packing_order_id"), pid(request, "box_id")

        def url_base(request: Request) -> str:
            return str(request.base_url).rstrip("/") + PREFIX

        async def packing_orders(request: Request) -> Response:
            query = query_of(request)
            rows, total = w.list_packing(query)
            return listing("packing_orders", project(rows, query), total)

        async def packing_order(request: Request) -> Response:
            return ok(w.packing_order(pid(request)))

        async def accept(request: Request) -> Response:
            return ok(w.accept_packing(pid(request)))

        async def finish(request: Request) -> Response:
            return ok(w.finish_packing(pid(request)))

        async def close(request: Request) -> Response:
            body = coerce_form(await read_body(request) or {}, {"shipping_location_id": "int"})
            raw = request.query_params.get("shipping_location_id")
            location = int(raw) if raw and _INTEGER.match(raw) else body.get("shipping_location_id", raw)
            return ok(w.close_packing(pid(request), location))

        async def shipping_locations(request: Request) -> Response:
            rows = w.shipping_locations(pid(request))
            return listing("locations", rows, len(rows))

        async def add_box(request: Request) -> Response:
            values = coerce_form(await read_body(request), BOX_FIELD_KINDS)
            return ok(w.add_to_box(pid(request, "packing_order_id"), values), 201)

        async def add_boxes(request: Request) -> Response:
            body = await read_body(request)
            entries = body if isinstance(body, list) else [body]
            if not entries:
                raise invalid(("boxes", "can't be blank"))
            box: dict[str, Any] = {}
            for entry in entries:
                box = w.add_to_box(pid(request, "packing_order_id"), coerce_form(entry, BOX_FIELD_KINDS))
            return ok(box, 201)

        async def boxes(request: Request) -> Response:
            rows, total = w.list_boxes(query_of(request), pid(request, "packing_order_id"))
            return listing("packing_boxes", rows, total)

        async def search_boxes(request: Request) -> Response:
            rows, total = w.list_boxes(query_of(request))
            return listing("packing_boxes", rows, total)

        async def box(request: Request) -> Response:
            return ok(w.box(*po_box(request)))

        async def update_box(request: Request) -> Response:
            return ok(w.update_box(*po_box(request), coerce_form(await read_body(request), {})))

        async def trackings(request: Request) -> Response:
            rows = w.list_trackings(*po_box(request), query_of(request))
            return listing("shipment_trackings", rows, len(rows))

        async def create_tracking(request: Request) -> Response:
            return ok(w.create_tracking(*po_box(request), await read_body(request)), 201)

        async def tracking(request: Request) -> Response:
            return ok(w.tracking(*po_box(request), pid(request, "tracking_id")))

        async def update_tracking(request: Request) -> Response:
            return ok(
                w.update_tracking(*po_box(request), pid(request, "tracking_id"), await read_body(request))
            )

        async def attach(request: Request) -> Response:
            updated = w.attach(*po_box(request), await read_body(request), url_base(request))
            return listing("packing_boxes", [updated], 1)

        async def register_attachment(request: Request) -> Response:
            body = await read_body(request)
            return ok(
                w.register_attachment(
                    *po_box(request), body if isinstance(body, dict) else {}, url_base(request)
                ),
                201,
            )

        async def box_attachments(request: Request) -> Response:
            body = await read_body(request)
            ids = body.get("packing_box_ids", body.get("ids")) if isinstance(body, dict) else body
            if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids
            ):
                raise invalid(("packing_box_ids", "is invalid"), status=400)
            return ok(w.box_attachments(ids))

        async def attachment(request: Request) -> Response:
            return ok(w.attachment(request.path_params["id"]))

        route("GET", "/packing/orders", packing_orders)
        route("GET", "/packing/orders/boxes/search", search_boxes)
        route("GET", "/packing/orders/{id:int}", packing_order)
        route("POST", "/packing/orders/{id:int}/accept", accept)
        route("POST", "/packing/orders/{id:int}/finish", finish)
        route("POST", "/packing/orders/{id:int}/close", close)
        route("GET", "/packing/orders/{id:int}/shipping_locations", shipping_locations)
        route("POST", "/packing/orders/{packing_order_id:int}/box", add_box)
        route("POST", "/packing/orders/{packing_order_id:int}/boxes", add_boxes)
        route("GET", "/packing/orders/{packing_order_id:int}/boxes", boxes)
        route("GET", box_path, box)
        route("PUT", box_path, update_box)
        route("GET", box_path + "/shipment_tracking", trackings)
        route("POST", box_path + "/shipment_tracking", create_tracking)
        route("GET", box_path + "/shipment_tracking/{tracking_id:int}", tracking)
        route("PUT", box_path + "/shipment_tracking/{tracking_id:int}", update_tracking)
        route("POST", box_path + "/attach", attach)
        route("POST", box_path + "/attachment", register_attachment)
        route("POST", "/packing/boxes/attachments", box_attachments)
        route("GET", "/attachment/{id}", attachment)
