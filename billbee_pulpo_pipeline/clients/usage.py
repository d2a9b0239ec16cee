"""Billbee API calls per account and calendar month (UTC), counted across processes.

Billbee bills every call beyond 100,000 a month, so each HTTP attempt a Billbee client makes is
counted where it is made (`CallStats` calls `MonthlyCallCounter.add`). The count lives in a file of
one byte per call, `billbee-calls-<account>-<YYYY-MM>.count`, beside the pacer state (`pacing/`):
one `os.write` on a descriptor opened with O_APPEND, which the kernel applies atomically, so any
number of processes add to the same file without a lock, and the file size is the count. The byte
is written before the request leaves, so a process killed mid-run has counted every call it sent;
the price is a call counted but never sent when the process dies in the microseconds between the
two (and attempts that found no connection at all are counted too: they are attempts, not bills).
Appends are atomic on local file systems; on a network file system, counts may come out slightly
low. 100,000 calls take 100 kB a month.

`<account>` is the first 32 hex digits of `account_fingerprint` (no secret can be read back from
it); a small `billbee-calls-<account>.json` beside it holds the base URL, so `billbee-pulpo status`
can name an account it has no credentials for. No username, password or key is written.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

PREFIX = "billbee-calls-"
COUNT_SUFFIX = ".count"


def month_of(moment: datetime | None = None) -> str:
    """The calendar month (UTC) of `moment` (default now) as YYYY-MM."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m")


def count_file(folder: Path, account: str, month: str) -> Path:
    return Path(folder) / f"{PREFIX}{account[:32]}-{month}{COUNT_SUFFIX}"


def label_file(folder: Path, account: str) -> Path:
    return Path(folder) / f"{PREFIX}{account[:32]}.json"


class MonthlyCallCounter:
    """Adds one byte per call to this month's count file of one Billbee account (thread-safe)."""

    def __init__(self, folder: Path, account: str, base_url: str) -> None:
        self.folder = Path(folder)
        self.account = account[:32]
        self._lock = threading.Lock()
        self._month = ""
        self._fd: int | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_label(label_file(self.folder, self.account), {"base_url": base_url})

    def add(self) -> None:
        month = month_of()
        with self._lock:
            if month != self._month or self._fd is None:
                self._reopen(month)
            assert self._fd is not None
            os.write(self._fd, b".")

    def _reopen(self, month: str) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(count_file(self.folder, self.account, month), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                           0o644)
        self._month = month

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:
        self.close()


_COUNTERS: dict[tuple[str, str], MonthlyCallCounter] = {}
_COUNTERS_LOCK = threading.Lock()


def shared_counter(folder: Path, account: str, base_url: str) -> MonthlyCallCounter:
    """One counter (one open file) per account and folder in this process, shared by its clients."""
    key = (str(Path(folder).resolve()), account[:32])
    with _COUNTERS_LOCK:
        counter = _COUNTERS.get(key)
        if counter is None:
            counter = _COUNTERS[key] = MonthlyCallCounter(Path(folder), account, base_url)
        return counter


def _write_label(path: Path, label: dict[str, str]) -> None:
    text = json.dumps(label, sort_keys=True)
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class AccountUsage:
    """Calls one Billbee account made in one month, as counted in `folder`."""

    account: str
    month: str
    calls: int
    base_url: str | None


def read_usage(folder: Path, month: str | None = None) -> list[AccountUsage]:
    """Every account's calls in `month` (default this month), from the count files; no network."""
    month = month or month_of()
    suffix = f"-{month}{COUNT_SUFFIX}"
    found = []
    for path in sorted(Path(folder).glob(f"{PREFIX}*{suffix}")):
        account = path.name[len(PREFIX):-len(suffix)]
        found.append(AccountUsage(account, month, path.stat().st_size, _base_url(label_file(folder, account))))
    return found


def _base_url(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text()).get("base_url")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None
