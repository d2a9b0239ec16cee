"""What both sandboxes share: request accounting, fault injection, throttling and the control API.

Every API route is registered through `SandboxApp.api_route`, which wraps the handler so that each
request is counted by its route template, may be hit by an injected fault, is authenticated and,
where the system throttles, paced by token buckets. The control API lives under `/__sandbox/`:

    GET  /__sandbox/stats          request counts per endpoint, 429s served, token requests, faults
    POST /__sandbox/stats/reset
    GET  /__sandbox/faults         PUT the same document to change the fault knobs
    GET  /__sandbox/config         PUT {"throttle": false} to switch throttling off (and the sandbox's own knobs)
    GET  /__sandbox/requests       the most recent requests (time, method, path, query, JSON body, status)

Requests that carry `X-Sandbox-Actor: simulator` come from the simulated shop or warehouse: they are
counted apart and never hit by faults or throttling, so the product's figures stay its own.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Handler = Callable[[Request], Awaitable[Response]]
ThrottleRule = tuple[str, float] | tuple[str, float, float]  # (bucket key, rate per second[, capacity])
SIMULATOR_HEADER = "x-sandbox-actor"

HTML_ERROR_PAGE = (
    "<!DOCTYPE html><html><head><title>{status} {reason}</title></head>"
    "<body><h1>{status} {reason}</h1><p>The service is temporarily unavailable.</p></body></html>"
)


@dataclass
class Faults:
    """Fault knobs. Rates are probabilities per product request (0..1)."""

    rate_429: float = 0.0          # answer 429 with Retry-After, as throttling would
    retry_after_seconds: int = 1
    rate_5xx: float = 0.0          # answer 500 or 503
    html_bodies: bool = True       # 5xx bodies are HTML pages rather than JSON
    slow_rate: float = 0.0         # delay the answer by slow_seconds (past a client timeout)
    slow_seconds: float = 0.0
    token_ttl_seconds: int | None = None  # PULPO: lifetime of newly issued tokens (None: the default)
    methods: list[str] | None = None      # only requests with these HTTP methods get faults (None: all)

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if not hasattr(self, key):
                raise ValueError(f"unknown fault knob '{key}'")
            setattr(self, key, value)


@dataclass
class Stats:
    """Request accounting of one sandbox."""

    requests: Counter[str] = field(default_factory=Counter)
    simulator_requests: Counter[str] = field(default_factory=Counter)
    throttled_429: int = 0
    fault_429: int = 0
    fault_5xx: int = 0
    fault_slow: int = 0
    token_requests: int = 0
    unauthorized: int = 0
    started_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "total_requests": sum(self.requests.values()),
            "simulator_requests": dict(self.simulator_requests),
            "throttled_429": self.throttled_429,
            "fault_429": self.fault_429,
            "fault_5xx": self.fault_5xx,
            "fault_slow": self.fault_slow,
            "token_requests": self.token_requests,
            "unauthorized": self.unauthorized,
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }


class TokenBuckets:
    """Token buckets with capacity = rate (one second of burst), refilled continuously."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, rate: float, now: float, capacity: float | None = None) -> float:
        """Take one token; return 0 when granted, else the seconds until one is available.
        `capacity` (default: rate) allows slow limits such as 6 per minute (rate 0.1, capacity 6)."""
        capacity = rate if capacity is None else capacity
        tokens, last = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate

    def clear(self) -> None:
        self._buckets.clear()


class SandboxApp:
    """Base of the Billbee and PULPO sandboxes. Subclasses add routes and implement the hooks."""

    system = "sandbox"

    def __init__(self, *, seed: int = 1, throttle: bool = True) -> None:
        self.seed = seed
        self.throttle = throttle
        self.faults = Faults()
        self.stats = Stats()
        self.fault_rng = random.Random(seed ^ 0x5EED)
        self.buckets = TokenBuckets()
        self.request_log: deque[dict[str, Any]] = deque(maxlen=5000)
        self._routes: list[Route] = []

    # ---- hooks -----------------------------------------------------------------------------------

    def authenticate(self, request: Request) -> Response | None:
        """Return an error response when the request is not authenticated, else None."""
        return None

    def throttle_rules(self, request: Request, template: str) -> list[ThrottleRule]:
        """(bucket key, requests per second[, burst capacity]) rules for this request; none by default."""
        return []

    def throttled_response(self, retry_after: int) -> Response:
        return JSONResponse({"Message": "Too many requests"}, status_code=429,
                            headers={"Retry-After": str(retry_after)})

    def error_response(self, status: int, message: str) -> Response:
        return JSONResponse({"message": message}, status_code=status)

    def reset_world(self, params: dict[str, Any]) -> dict[str, Any]:
        """Rebuild the data from the seed (subclasses); returns a summary."""
        return {}

    def extra_control_routes(self) -> list[Route]:
        return []

    def update_config(self, values: dict[str, Any]) -> None:
        """PUT /__sandbox/config: the behaviour knobs (subclasses add their own)."""
        if "throttle" in values:
            self.throttle = bool(values["throttle"])
            self.buckets.clear()

    def config_values(self) -> dict[str, Any]:
        return {"throttle": self.throttle, "seed": self.seed}

    # ---- routing ---------------------------------------------------------------------------------

    def api_route(self, method: str, template: str, handler: Handler, *, auth: bool = True) -> None:
        """Register an API endpoint under its spec path template (Starlette syntax)."""
        wrapped = self._wrap(method, template, handler, auth)
        self._routes.append(Route(template, wrapped, methods=[method]))

    def _wrap(self, method: str, template: str, handler: Handler, auth: bool) -> Handler:
        label = f"{method} {template.replace(':int', '').replace(':path', '')}"

        async def endpoint(request: Request) -> Response:
            simulator = request.headers.get(SIMULATOR_HEADER) == "simulator"
            (self.stats.simulator_requests if simulator else self.stats.requests)[label] += 1
            if not simulator:
                if request.method in ("POST", "PUT", "PATCH"):
                    # Read the body now: a slow answer must not lose a request the server received, which
                    # it carries out even when the client gives up waiting (the outcome-unknown case).
                    await request.body()
                faulted = await self._inject_fault(request.method)
                if faulted is not None:
                    return await self._log(request, label, faulted)
            if auth:
                denied = self.authenticate(request)
                if denied is not None:
                    self.stats.unauthorized += 1
                    return await self._log(request, label, denied)
            if self.throttle and not simulator:
                now = time.monotonic()
                waits = [self.buckets.take(rule[0], rule[1], now, rule[2] if len(rule) > 2 else None)
                         for rule in self.throttle_rules(request, label)]
                wait = max(waits, default=0.0)
                if wait > 0:
                    self.stats.throttled_429 += 1
                    return await self._log(request, label, self.throttled_response(max(1, int(wait + 0.999))))
            try:
                response = await handler(request)
            except SandboxError as exc:
                response = exc.response or self.error_response(exc.status, exc.message)
            return await self._log(request, label, response)

        endpoint.__name__ = handler.__name__
        return endpoint

    async def _inject_fault(self, method: str) -> Response | None:
        f = self.faults
        rng = self.fault_rng
        if f.methods is not None and method.upper() not in {m.upper() for m in f.methods}:
            return None
        if f.slow_rate and rng.random() < f.slow_rate:
            self.stats.fault_slow += 1
            await asyncio.sleep(f.slow_seconds)
        if f.rate_5xx and rng.random() < f.rate_5xx:
            self.stats.fault_5xx += 1
            status = rng.choice([500, 503])
            reason = "Internal Server Error" if status == 500 else "Service Unavailable"
            if f.html_bodies:
                return Response(HTML_ERROR_PAGE.format(status=status, reason=reason), status_code=status,
                                media_type="text/html")
            return self.error_response(status, reason)
        if f.rate_429 and rng.random() < f.rate_429:
            self.stats.fault_429 += 1
            return self.throttled_response(f.retry_after_seconds)
        return None

    async def _log(self, request: Request, label: str, response: Response) -> Response:
        body: Any = None
        if request.method in {"POST", "PUT", "PATCH"}:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = {"_raw": "<not JSON>"}
            body = redact(body)
        self.request_log.append({
            "at": time.time(),  # when the answer was ready (both sandboxes share the clock)
            "method": request.method,
            "path": request.url.path,
            "endpoint": label,
            "query": list(request.query_params.multi_items()),
            "body": body,
            "content_type": request.headers.get("content-type"),
            "status": response.status_code,
            "simulator": request.headers.get(SIMULATOR_HEADER) == "simulator",
        })
        return response

    # ---- control API -----------------------------------------------------------------------------

    def _control_routes(self) -> list[Route]:
        async def stats(_: Request) -> Response:
            return JSONResponse({"system": self.system, **self.stats.as_dict()})

        async def reset_stats(_: Request) -> Response:
            self.stats = Stats()
            self.request_log.clear()
            return JSONResponse({"ok": True})

        async def faults(request: Request) -> Response:
            if request.method == "PUT":
                try:
                    self.faults.update(await request.json())
                except (ValueError, TypeError) as exc:
                    return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse(asdict(self.faults))

        async def config(request: Request) -> Response:
            if request.method == "PUT":
                try:
                    self.update_config(await request.json())
                except (ValueError, TypeError) as exc:
                    return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse(self.config_values())

        async def requests_log(request: Request) -> Response:
            limit = int(request.query_params.get("limit", "1000"))
            return JSONResponse(list(self.request_log)[-limit:])

        async def reset(request: Request) -> Response:
            params = await request.json() if await request.body() else {}
            self.faults = Faults()
            self.buckets.clear()
            summary = self.reset_world(params)
            self.stats = Stats()
            self.request_log.clear()
            return JSONResponse(summary)

        return [
            Route("/__sandbox/stats", stats, methods=["GET"]),
            Route("/__sandbox/stats/reset", reset_stats, methods=["POST"]),
            Route("/__sandbox/faults", faults, methods=["GET", "PUT"]),
            Route("/__sandbox/config", config, methods=["GET", "PUT"]),
            Route("/__sandbox/requests", requests_log, methods=["GET"]),
            Route("/__sandbox/reset", reset, methods=["POST"]),
            *self.extra_control_routes(),
        ]

    def build(self) -> Starlette:
        async def not_found(request: Request, exc: Exception) -> Response:
            return self.error_response(404, f"No route for {request.method} {request.url.path}")

        return Starlette(routes=[*self._control_routes(), *self._routes],
                         exception_handlers={404: not_found, 405: not_found})


SECRET_KEYS = frozenset({"password", "api_password", "access_token", "refresh_token", "secret", "token"})


def redact(value: Any) -> Any:
    """Replace the values of secret-looking keys, so the request log never holds a credential."""
    if isinstance(value, dict):
        return {k: ("***" if str(k).lower() in SECRET_KEYS else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


class SandboxError(Exception):
    """Raised by handlers to answer with an error; `response` overrides the default error body."""

    def __init__(self, status: int, message: str, response: Response | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.response = response
