"""HTTP plumbing shared by the Billbee and PULPO clients.

Errors carry the system, method, path and a readable message, never headers or credentials.
Retries are urllib3's `Retry`, extended to count every attempt (each one is a billed API call)
and to retry 429 for every method (a throttled request was not executed, so resending is safe).
Pacing is a cross-process scheduler over a small JSON file, so parallel Dagster runs that talk to
the same Billbee account share one budget.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import requests
from filelock import FileLock
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 120.0


class ApiError(Exception):
    """A call to an external API failed; the message names the system, the call and the reason."""

    def __init__(
        self,
        system: str,
        method: str,
        path: str,
        message: str,
        *,
        status: int | None = None,
        code: int | str | None = None,
        details: Any = None,
    ) -> None:
        self.system = system
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.reason = message
        self.details = details
        status_text = f"HTTP {status}" if status is not None else "no response"
        code_text = f", error code {code}" if code not in (None, 0, "") else ""
        super().__init__(f"{system} {method} {path} failed ({status_text}{code_text}): {message}")


class TransientApiError(ApiError):
    """Server error, timeout, throttling or an unreadable body: trying again later may succeed."""


class AuthenticationError(ApiError):
    """The credentials were refused (HTTP 401/403)."""


class NotFoundError(ApiError):
    """The resource does not exist (HTTP 404)."""


class RequestRejectedError(ApiError):
    """The service understood the request and refused it (4xx other than 401/403/404/429, or an
    error inside an HTTP 200 envelope). Retrying the same request will not help."""


@dataclass
class CallStats:
    """Counts of calls made through one client (thread-safe). Every HTTP attempt counts as a call."""

    calls: int = 0
    throttled: int = 0
    retries: int = 0
    by_endpoint: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    # Called once per attempt, e.g. `MonthlyCallCounter.add` (Billbee bills calls per month).
    on_call: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_attempt(self, endpoint: str) -> None:
        with self._lock:
            self.calls += 1
            self.by_endpoint[endpoint] += 1
        if self.on_call is not None:
            self.on_call()

    def record_status(self, status: int) -> None:
        with self._lock:
            self.by_status[status] += 1
            if status == 429:
                self.throttled += 1

    def record_retry(self, endpoint: str) -> None:
        with self._lock:
            self.retries += 1
            self.calls += 1
            self.by_endpoint[endpoint] += 1
        if self.on_call is not None:
            self.on_call()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": self.calls,
                "throttled_429": self.throttled,
                "retries": self.retries,
                "by_endpoint": dict(self.by_endpoint),
            }


class CountingRetry(Retry):
    """urllib3 Retry that counts retried attempts, retries 429 for any method and caps Retry-After."""

    stats: CallStats | None = None
    endpoint: str = ""

    def new(self, **kw: Any) -> CountingRetry:
        retry = super().new(**kw)
        retry.stats = self.stats
        retry.endpoint = self.endpoint
        return retry

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code == 429 and self.total is not None and self.total > 0:
            return True  # a throttled request was not executed: resending is safe for every method
        return super().is_retry(method, status_code, has_retry_after)

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), MAX_RETRY_AFTER_SECONDS)

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> CountingRetry:
        new_retry = super().increment(method, url, response, error, _pool, _stacktrace)
        # Only after the retry is granted: when retries are exhausted, urllib3 hands this response back
        # to `send`, which records its status itself (recording it here too counted it twice).
        if self.stats is not None:
            if response is not None:
                self.stats.record_status(response.status)
            self.stats.record_retry(self.endpoint)
        return new_retry


def make_retry(stats: CallStats, endpoint: str, *, total: int = 6, backoff_factor: float = 0.5) -> CountingRetry:
    """Retry policy: idempotent methods on 5xx, timeouts and connection errors; any method on 429."""
    retry = CountingRetry(
        total=total,
        connect=total,
        read=total,
        status=total,
        other=0,
        allowed_methods=IDEMPOTENT_METHODS,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_factor,
        backoff_max=30.0,
        backoff_jitter=0.25,
        respect_retry_after_header=True,
        raise_on_status=False,
        raise_on_redirect=False,
    )
    retry.stats = stats
    retry.endpoint = endpoint
    return retry


class SessionClient:
    """Base of the API clients: owns `_session` and closes it, also as a context manager."""

    _session: requests.Session

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def make_session(user_agent: str, pool_size: int = 4) -> requests.Session:
    """A session whose adapters do no retries of their own: retries are passed per request."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update({"Accept": "application/json", "User-Agent": user_agent})
    return session


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    endpoint: str,
    stats: CallStats,
    timeout: tuple[float, float],
    retry: Retry | None,
    **kwargs: Any,
) -> requests.Response:
    """Send one logical request with the given retry policy; count attempts and statuses.

    Raises `TransientApiError` for timeouts and connection errors that survive the retries.
    The request is sent through a per-call adapter so the retry policy is per request.
    """
    stats.record_attempt(endpoint)
    adapter = session.get_adapter(url)
    previous = adapter.max_retries
    try:
        if retry is not None:
            adapter.max_retries = retry
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.exceptions.RetryError as exc:  # retries exhausted on a status
        raise TransientApiError("http", method, endpoint, "retries exhausted") from exc
    except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
        raise TransientApiError("http", method, endpoint, f"{type(exc).__name__}: no answer") from exc
    finally:
        adapter.max_retries = previous
    stats.record_status(response.status_code)
    return response


def json_or_none(response: requests.Response) -> Any:
    """The JSON body, or None when the body is empty or not JSON (HTML error pages happen)."""
    if not response.content or not response.content.strip():
        return None
    try:
        return response.json()
    except ValueError:
        return None


def body_excerpt(response: requests.Response, limit: int = 200) -> str:
    """A short, single-line excerpt of a non-JSON body, for error messages."""
    text = response.text or ""
    if "<html" in text[:500].lower() or "<!doctype" in text[:500].lower():
        title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        return f"HTML error page{': ' + title.group(1).strip() if title else ''}"[:limit]
    return " ".join(text.split())[:limit] or "empty body"


# --------------------------------------------------------------------------------------------------
# Pacing


@dataclass(frozen=True)
class RateRule:
    """At most `rate` requests per second for every request whose bucket key `key(endpoint)` matches."""

    name: str
    rate: float
    key: Callable[[str], str]


class Pacer:
    """Spaces requests so that every rule holds, across threads and (with `state_file`) processes.

    It is a virtual scheduler: each bucket remembers the earliest time its next request may start;
    a request takes the latest of its buckets' slots and pushes each bucket forward by 1/rate.
    A `margin` above 1 leaves headroom for network jitter between our clock and the server's: 1.02 is
    10 ms per request at 2 requests/s, several times the jitter of a normal connection.
    """

    def __init__(self, rules: Iterable[RateRule], state_file: Path | None = None, margin: float = 1.02) -> None:
        self.rules = [rule for rule in rules if rule.rate > 0]
        self.state_file = state_file
        self.margin = margin
        self._lock = threading.Lock()
        self._slots: dict[str, float] = {}
        self._file_lock = FileLock(str(state_file) + ".lock") if state_file else None
        if state_file:
            state_file.parent.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    def acquire(self, endpoint: str) -> float:
        """Block until `endpoint` may be called; return the seconds waited."""
        if not self.rules:
            return 0.0
        with self._lock:
            if self._file_lock is not None:
                with self._file_lock:
                    slots = self._read_slots()
                    start = self._reserve(slots, endpoint)
                    self._write_slots(slots)
            else:
                start = self._reserve(self._slots, endpoint)
        wait = start - time.time()
        if wait > 0:
            time.sleep(wait)
        return max(wait, 0.0)

    def _reserve(self, slots: dict[str, float], endpoint: str) -> float:
        now = time.time()
        keys = [f"{rule.name}:{rule.key(endpoint)}" for rule in self.rules]
        start = max([now] + [slots.get(k, 0.0) for k in keys])
        for rule, k in zip(self.rules, keys, strict=True):
            slots[k] = start + self.margin / rule.rate
        # Forget buckets idle for a minute so the state stays small.
        for k in [k for k, t in slots.items() if t < now - 60]:
            del slots[k]
        return start

    def _read_slots(self) -> dict[str, float]:
        assert self.state_file is not None
        try:
            return {str(k): float(v) for k, v in json.loads(self.state_file.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _write_slots(self, slots: dict[str, float]) -> None:
        assert self.state_file is not None
        tmp = self.state_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(slots))
        os.replace(tmp, self.state_file)


_NUMERIC_SEGMENT = re.compile(r"/\d+(?=/|$)")


def endpoint_template(method: str, path: str) -> str:
    """`GET /orders/123/shipment` -> `GET /orders/{id}/shipment`: the unit Billbee throttles by."""
    path = path.split("?", 1)[0]
    return f"{method.upper()} {_NUMERIC_SEGMENT.sub('/{id}', path)}"


def is_loopback_url(url: str) -> bool:
    import ipaddress
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:  # an IP literal only: a DNS name such as 127.evil.example.com may resolve anywhere
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str) -> str | None:
    """None when the URL is acceptable: https anywhere, or http on loopback only; else the reason."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if "@" in parts.netloc:
        return "the URL must not contain credentials (use the username/password fields)"
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return f"'{url}' is not an http(s) URL"
    if parts.scheme == "http" and not is_loopback_url(url):
        return f"'{url}' must use https:// (plain http:// is only allowed for loopback sandboxes)"
    return None
