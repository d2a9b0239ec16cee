"""PULPO access tokens shared across threads and processes.

PULPO bans the IP of clients that request a token per call, and Dagster starts one process per run,
so the token lives in a small JSON file (mode 0600) under a cache directory. A `FileLock` around
read -> fetch -> write makes N processes that start together fetch exactly one token. The file name
is a hash of base URL and username: it reveals neither, and never involves the password.

A token is refreshed ahead of expiry when less than `refresh_fraction` of its lifetime is left,
relative to `expires_in`, because lifetimes vary from 12 hours down to seconds (chaos tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

DEFAULT_REFRESH_FRACTION = 0.2
LOCK_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class CachedToken:
    """A bearer token with its validity window (epoch seconds; wall clock, shared across processes)."""

    access_token: str = field(repr=False)
    issued_at: float
    expires_at: float

    @property
    def lifetime(self) -> float:
        return max(self.expires_at - self.issued_at, 0.0)

    def remaining(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    def needs_refresh(self, refresh_fraction: float, now: float | None = None) -> bool:
        """True once less than `refresh_fraction` of the lifetime is left (or it has expired)."""
        return self.remaining(now) <= refresh_fraction * self.lifetime

    @classmethod
    def from_grant(cls, access_token: str, expires_in: float, requested_at: float) -> CachedToken:
        """`requested_at` is taken before the request was sent, so the window errs on the short side."""
        return cls(access_token=access_token, issued_at=requested_at, expires_at=requested_at + expires_in)


TokenFetcher = Callable[[], CachedToken]


def cache_file_name(base_url: str, username: str) -> str:
    digest = hashlib.sha256(f"{base_url.rstrip('/')}\n{username}".encode()).hexdigest()
    return f"pulpo-token-{digest[:40]}.json"


class TokenCache:
    """One cached token per (base_url, username), shared through `token_dir`."""

    def __init__(self, token_dir: Path, base_url: str, username: str, *,
                 refresh_fraction: float = DEFAULT_REFRESH_FRACTION) -> None:
        if not 0.0 <= refresh_fraction < 1.0:
            raise ValueError("refresh_fraction must be in [0, 1)")
        self.token_dir = Path(token_dir)
        self.path = self.token_dir / cache_file_name(base_url, username)
        self.refresh_fraction = refresh_fraction
        self._owner = {"base_url": base_url.rstrip("/"), "username": username}
        self._file_lock = FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_SECONDS, mode=0o600)
        self._thread_lock = threading.Lock()
        self._memory: CachedToken | None = None

    def __repr__(self) -> str:
        return f"TokenCache(path={str(self.path)!r})"

    def get(self, fetch: TokenFetcher) -> CachedToken:
        """A fresh token: from memory, else from the shared file, else fetched (once, under the lock)."""
        token = self._memory
        if token is not None and not token.needs_refresh(self.refresh_fraction):
            return token
        with self._locked():
            token = self._read()
            if token is None or token.needs_refresh(self.refresh_fraction):
                token = self._fetch_and_store(fetch)
            self._memory = token
            return token

    def replace(self, rejected_token: str, fetch: TokenFetcher) -> CachedToken:
        """After a 401 for `rejected_token`: fetch a new token only if the cache still holds that one.

        Another process may have hit the same 401 first and already stored a fresh token.
        """
        with self._locked():
            token = self._read()
            stale = token is None or token.needs_refresh(self.refresh_fraction)
            if stale or token.access_token == rejected_token:
                token = self._fetch_and_store(fetch)
            self._memory = token
            return token

    def clear(self) -> None:
        with self._locked():
            self._memory = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    # ---- internals ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._thread_lock, self._file_lock:
            yield

    def _fetch_and_store(self, fetch: TokenFetcher) -> CachedToken:
        token = fetch()
        self._write(token)
        return token

    def _read(self) -> CachedToken | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if {k: data.get(k) for k in self._owner} != self._owner:
                return None
            return CachedToken(access_token=str(data["access_token"]), issued_at=float(data["issued_at"]),
                               expires_at=float(data["expires_at"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # missing or unreadable: fetch a new one

    def _write(self, token: CachedToken) -> None:
        data = {**self._owner, "access_token": token.access_token, "issued_at": token.issued_at,
                "expires_at": token.expires_at}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
