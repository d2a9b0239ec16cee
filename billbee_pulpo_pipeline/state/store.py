"""DuckDB state store: snapshots with content hashes, cursors, id mappings, a write ledger, a quarantine.

DuckDB lets only one process open a database file for writing; a second one fails with "Could not set
lock on file". Integrations run as separate Dagster runs (processes) at the same moment, so every public
method here works in one transaction on a connection taken under a cross-process file lock
(`state.duckdb.lock` beside the database). Opening and closing the database costs ~12-30 ms of CPU,
so a process that just used it keeps it open for `hold` seconds (0.1) in case the next call follows
(a writer's calls come in bursts); after that idle time, or at the latest `max_lease` seconds (1.0)
after taking it, the connection is closed and the lock released, so other processes queue for at
most about a second instead of failing. A call that took longer than `HEAVY_CALL` closes it at once
(reopening costs little next to it, and DuckDB's buffers go back to the system). A DuckDB lock error
(a process that ignores the file lock, such as the DuckDB CLI) is retried until `timeout`.

The store never receives secrets: callers store ids, hashes, business payloads and request summaries,
never credentials or auth headers. Ids are VARCHAR, so 17-digit Billbee ids never pass through a float.
Timestamps are UTC (stored as naive TIMESTAMP in UTC, returned timezone-aware).

Each call still costs a transaction (~1-2 ms on a held connection, 15-50 ms on a fresh one), so every
per-record method has a set-based counterpart for thousands of records in one transaction
(`get_mappings`, `ledger_begin_many`, `quarantine_put_many`, ...). The single-record methods call
them, so both have the same semantics. Callers never touch the tables: this class is the only place that knows them.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pandas as pd
from filelock import FileLock
from filelock import Timeout as FileLockTimeout

SCHEMA_VERSION = 1
DB_FILE_NAME = "state.duckdb"
HOME_ENV = "BPP_HOME"
DEFAULT_HOME = ".bpp"

HEAVY_CALL = 0.25   # seconds: a call that took longer releases the database at once instead of holding it
YIELD_PAUSE = 0.03  # seconds a process that held the database for `max_lease` waits before taking it again

LEDGER_STATUSES = ("pending", "done", "failed", "attention", "skipped")
FINISHED_STATUSES = frozenset(LEDGER_STATUSES) - {"pending"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot_rows (
    dataset VARCHAR NOT NULL, key VARCHAR NOT NULL, hash VARCHAR NOT NULL, payload VARCHAR,
    changed_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    dataset VARCHAR PRIMARY KEY, row_count BIGINT NOT NULL, updated_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    name VARCHAR PRIMARY KEY, value VARCHAR NOT NULL, updated_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS id_mappings (
    kind VARCHAR NOT NULL, billbee_id VARCHAR NOT NULL, pulpo_id VARCHAR NOT NULL, extra VARCHAR,
    updated_at TIMESTAMP NOT NULL, PRIMARY KEY (kind, billbee_id)
);
CREATE TABLE IF NOT EXISTS ledger (
    key VARCHAR PRIMARY KEY, integration VARCHAR NOT NULL, action VARCHAR NOT NULL, status VARCHAR NOT NULL,
    attempts INTEGER NOT NULL, request VARCHAR, outcome VARCHAR, remote_id VARCHAR, message VARCHAR,
    created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL, finished_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS quarantine (
    integration VARCHAR NOT NULL, kind VARCHAR NOT NULL, record_key VARCHAR NOT NULL,
    reason VARCHAR NOT NULL, payload VARCHAR, first_seen TIMESTAMP NOT NULL, last_seen TIMESTAMP NOT NULL,
    occurrences INTEGER NOT NULL, resolved_at TIMESTAMP, PRIMARY KEY (integration, kind, record_key)
);
CREATE TABLE IF NOT EXISTS sync_log (
    integration VARCHAR NOT NULL, step VARCHAR NOT NULL, finished_at TIMESTAMP NOT NULL, run_id VARCHAR,
    counts VARCHAR, PRIMARY KEY (integration, step)
);
"""

Rows = Iterable[tuple[Any, str, Any]] | pd.DataFrame


class StateStoreError(RuntimeError):
    """The state store cannot be used (busy beyond the timeout, newer schema, bad input)."""


def bpp_home(env: Mapping[str, str] | None = None) -> Path:
    """The product's home directory: $BPP_HOME, else ./.bpp (not created here)."""
    env = os.environ if env is None else env
    return Path(env.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal records give equal text, hence equal hashes."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


def snapshot_row(key: Any, record: Any) -> tuple[str, str, str]:
    """(key, content hash, payload JSON) for `replace_snapshot`, hashing the canonical JSON."""
    payload = canonical_json(record)
    return _id(key), hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest(), payload


def _id(value: Any) -> str:
    """Ids as text; floats are refused because a 17-digit id does not survive one."""
    if isinstance(value, bool | float):
        raise TypeError(f"ids must be str or int, not {type(value).__name__} (17-digit ids lose digits)")
    if isinstance(value, int | str):
        return str(value)
    raise TypeError(f"ids must be str or int, not {type(value).__name__}")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None


def _loads(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


def _dumps(value: Any) -> str | None:
    return canonical_json(value) if value is not None else None


@dataclass(frozen=True)
class SnapshotDiff:
    """How an incoming snapshot differs from the stored one, by key and content hash."""

    dataset: str
    new: int
    changed: int
    removed: int
    unchanged: int
    new_keys: list[str] = field(repr=False)
    changed_keys: list[str] = field(repr=False)
    removed_keys: list[str] = field(repr=False)

    @property
    def upsert_keys(self) -> list[str]:
        """Keys to write to the target: new and changed (fetch them with `snapshot_rows`)."""
        return self.new_keys + self.changed_keys

    @property
    def has_changes(self) -> bool:
        return bool(self.new or self.changed or self.removed)

    def counts(self) -> dict[str, int]:
        return {
            "new": self.new, "changed": self.changed, "removed": self.removed, "unchanged": self.unchanged
        }


@dataclass(frozen=True)
class IdMapping:
    kind: str
    billbee_id: str
    pulpo_id: str
    extra: dict[str, Any] | None
    updated_at: datetime


@dataclass(frozen=True)
class LedgerEntry:
    """One write to an external system. `previous_status` (set by `ledger_begin`) is the status before
    this attempt: 'pending' means an earlier attempt died between begin and finish, so the write may or
    may not have happened: check the remote system before sending it again."""

    key: str
    integration: str
    action: str
    status: str
    attempts: int
    request: dict[str, Any] | None
    outcome: dict[str, Any] | None
    remote_id: str | None
    message: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    previous_status: str | None = None


@dataclass(frozen=True)
class QuarantineEntry:
    integration: str
    kind: str
    record_key: str
    reason: str
    payload: Any
    first_seen: datetime
    last_seen: datetime
    occurrences: int
    resolved_at: datetime | None


@dataclass(frozen=True)
class SyncRecord:
    """The last successful run of one step (asset) of an integration, with its main counts."""

    integration: str
    step: str
    finished_at: datetime
    run_id: str | None
    counts: dict[str, int]


class LedgerStart(NamedTuple):
    """One item of `ledger_begin_many` (a plain `(key, action, request)` tuple works too)."""

    key: str
    action: str
    request: dict[str, Any] | None = None


class LedgerFinish(NamedTuple):
    """One item of `ledger_finish_many` (a plain tuple in this order works too)."""

    key: str
    status: str
    outcome: dict[str, Any] | None = None
    remote_id: str | int | None = None
    message: str | None = None


_LEDGER_COLUMNS = ("key, integration, action, status, attempts, request, outcome, remote_id, message, "
                   "created_at, updated_at, finished_at")
_QUARANTINE_COLUMNS = ("integration, kind, record_key, reason, payload, first_seen, last_seen, occurrences, "
                       "resolved_at")


class _Database:
    """This process's connection to one database file, shared by every `StateStore` on that path:
    taken under the file lock, kept between calls for `hold` seconds of idle time or `max_lease`
    seconds in all, then closed and the lock released (by the next call or a reaper thread)."""

    _registry: dict[tuple[int, Path], _Database] = {}
    _registry_lock = threading.Lock()

    @classmethod
    def of(cls, path: Path) -> _Database:
        key = (os.getpid(), path.resolve())  # a forked child never uses its parent's connection
        with cls._registry_lock:
            if key not in cls._registry:
                cls._registry[key] = cls(path)
            return cls._registry[key]

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = FileLock(str(path) + ".lock", thread_local=False)
        self.mutex = threading.RLock()   # one transaction at a time in this process
        self.conn: duckdb.DuckDBPyConnection | None = None
        self.leased_at = self.used_at = self.yield_until = 0.0
        self.hold, self.max_lease = 0.1, 1.0
        self.depth = 0
        self.reaper: threading.Thread | None = None

    @contextmanager
    def transaction(self, store: StateStore) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.mutex:
            if self.depth:  # a store method called from inside another: same transaction
                assert self.conn is not None
                yield self.conn
                return
            conn = self._take(store)
            self.depth = 1
            self.used_at = time.monotonic()  # the call's start, for HEAVY_CALL
            try:
                if not store._schema_checked:  # once per store object, as another version may have run
                    store._create_schema(conn)
                    store._schema_checked = True
                conn.execute("BEGIN TRANSACTION")
                yield conn
                conn.execute("COMMIT")
                _drop_temporary(conn)
            except BaseException:
                self.release()  # closing rolls the open transaction back
                raise
            finally:
                self.depth = 0
            started, self.used_at = self.used_at, time.monotonic()
            self.hold, self.max_lease = store.hold, store.max_lease
            if self.hold <= 0 or self.used_at - started > HEAVY_CALL:
                self.release()  # after a heavy call reopening costs little, and closing frees DuckDB's memory
            elif self.used_at - self.leased_at >= self.max_lease:
                self.release()
                # The file lock is not fair: pause before taking it again so a waiting process gets in.
                self.yield_until = time.monotonic() + YIELD_PAUSE
            else:
                self._start_reaper()

    def _take(self, store: StateStore) -> duckdb.DuckDBPyConnection:
        if self.conn is not None:
            return self.conn
        started = time.monotonic()
        if started < self.yield_until:
            time.sleep(self.yield_until - started)
        try:
            self.lock.acquire(timeout=store.timeout, poll_interval=0.005)  # 50 ms default would idle
        except FileLockTimeout:
            raise StateStoreError(f"state store {self.path} stayed busy for {store.timeout:.0f} s") from None
        try:
            conn = self._open(started, store.timeout)
        except BaseException:
            self.lock.release()
            raise
        self.conn, self.leased_at = conn, time.monotonic()
        return conn

    def _open(self, started: float, timeout: float) -> duckdb.DuckDBPyConnection:
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() - started > timeout:
                    raise StateStoreError(f"cannot open state store {self.path}: {exc}") from None
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)

    def release(self) -> None:
        """Close the connection and release the file lock (no-op when nothing is held)."""
        with self.mutex:
            if self.conn is None:
                return
            try:
                self.conn.close()
            finally:
                self.conn = None
                self.lock.release()

    def _start_reaper(self) -> None:
        if self.reaper is None or not self.reaper.is_alive():
            self.reaper = threading.Thread(target=self._reap, name="state-store-release", daemon=True)
            self.reaper.start()

    def _reap(self) -> None:
        while True:
            time.sleep(self.hold / 2)
            if not self.mutex.acquire(blocking=False):
                continue  # a call is running: it decides on release itself
            try:
                if self.conn is None:
                    return
                now = time.monotonic()
                if now - self.used_at >= self.hold or now - self.leased_at >= self.max_lease:
                    self.release()
                    return
            finally:
                self.mutex.release()


@atexit.register
def _release_all_at_exit() -> None:
    """Close every held connection before the interpreter stops its daemon threads: a reaper stopped
    inside DuckDB's `close()` aborts the process ("FATAL: exception not rethrown", exit 134) after
    its work succeeded. `release` waits for a reaper that is closing already. A forked child leaves
    its parent's connections alone (their file lock is shared with the parent)."""
    for (pid, _), database in list(_Database._registry.items()):
        if pid == os.getpid():
            database.release()


def _drop_temporary(conn: duckdb.DuckDBPyConnection) -> None:
    """Drop the temp tables and registered frames of a finished call: the connection may be kept for
    the next call, which creates them anew (and their memory is not held meanwhile)."""
    for name, kind in conn.execute("""
        SELECT table_name, 'TABLE' FROM duckdb_tables() WHERE temporary
        UNION ALL SELECT view_name, 'VIEW' FROM duckdb_views() WHERE temporary AND NOT internal
    """).fetchall():
        if kind == "VIEW":
            conn.unregister(name)
        else:
            conn.execute(f'DROP TABLE IF EXISTS temp."{name}"')


def _ledger_entry(row: tuple[Any, ...], previous_status: str | None = None) -> LedgerEntry:
    key, integration, action, status, attempts, request, outcome, remote_id, message, created, updated, \
        finished = row
    return LedgerEntry(key, integration, action, status, attempts, _loads(request), _loads(outcome),
                       remote_id, message, created.replace(tzinfo=UTC), updated.replace(tzinfo=UTC),
                       _aware(finished), previous_status)


def _quarantine_entry(row: tuple[Any, ...]) -> QuarantineEntry:
    integration, kind, record_key, reason, payload, first_seen, last_seen, occurrences, resolved_at = row
    return QuarantineEntry(integration, kind, record_key, reason, _loads(payload),
                           first_seen.replace(tzinfo=UTC), last_seen.replace(tzinfo=UTC), occurrences,
                           _aware(resolved_at))


class StateStore:
    """The pipeline's local state in one DuckDB file; safe to use from many processes at once.

    `path` is the database file (`*.duckdb`/`*.db`) or a directory such as `bpp_home()`, in which case
    the file is `state.duckdb` inside it. `timeout` bounds the wait for the lock in seconds.
    Secrets are never stored here: the store is never given credentials, tokens or auth headers.
    """

    def __init__(self, path: Path | str, *, timeout: float = 120.0, hold: float = 0.1,
                 max_lease: float = 1.0) -> None:
        path = Path(path).expanduser()
        self.path = path if path.suffix in {".duckdb", ".db"} else path / DB_FILE_NAME
        self.timeout = timeout
        self.hold = hold
        self.max_lease = max_lease
        self._schema_checked = False
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> StateStore:
        """The store in $BPP_HOME (default ./.bpp)."""
        return cls(bpp_home(env), **kwargs)

    def __repr__(self) -> str:
        return f"StateStore({str(self.path)!r})"

    # ---- connection handling

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection under the file lock, inside a transaction (committed on exit, rolled back on an
        exception). Every store of this process on the same file shares it; see the module docstring."""
        with _Database.of(self.path).transaction(self) as conn:
            yield conn

    def close(self) -> None:
        """Give the database back now instead of after `hold` seconds."""
        _Database.of(self.path).release()

    def _create_schema(self, conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        elif int(row[0]) > SCHEMA_VERSION:
            raise StateStoreError(f"state store {self.path} has schema version {row[0]}, newer than this "
                                  f"program's {SCHEMA_VERSION}; upgrade billbee-pulpo")

    def schema_version(self) -> int:
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    # ---- snapshots

    def replace_snapshot(self, dataset: str, rows: Rows) -> SnapshotDiff:
        """Store `rows` (key, hash, payload_json) as the dataset's complete snapshot and return the diff to
        the previous one: keys not in `rows` are removed. Only new, changed and removed rows are written.

        The snapshot is committed at once. When the target write may fail, prefer `diff_snapshot`, write,
        then `upsert_snapshot` / `delete_snapshot_rows` for the records that succeeded, so failed records
        show up as changes again on the next run."""
        frame = _frame(rows)
        with self._connect() as conn:
            diff = self._diff(conn, dataset, frame, complete=True)
            self._apply(conn, dataset)
            self._write_snapshot_meta(conn, dataset)
        return diff

    def diff_snapshot(self, dataset: str, rows: Rows, *, complete: bool = True) -> SnapshotDiff:
        """The diff `replace_snapshot` (complete) or `upsert_snapshot` would return, storing nothing."""
        frame = _frame(rows)
        with self._connect() as conn:
            return self._diff(conn, dataset, frame, complete=complete)

    def upsert_snapshot(self, dataset: str, rows: Rows, *, refresh_payloads: bool = False) -> SnapshotDiff:
        """Add or update some rows of the snapshot (keys not in `rows` stay; `removed` is always 0): for
        incremental reads and for committing the records a write succeeded for. `refresh_payloads`
        also stores the payload of rows whose hash is unchanged (a newer version of a record whose
        hashed content is the same: still 'unchanged' in the diff)."""
        frame = _frame(rows)
        with self._connect() as conn:
            diff = self._diff(conn, dataset, frame, complete=False)
            self._apply(conn, dataset)
            if refresh_payloads:
                conn.execute("""
                    UPDATE snapshot_rows s SET payload = i.payload FROM incoming i
                    WHERE s.dataset = $dataset AND s.key = i.key AND s.hash = i.hash
                      AND s.payload IS DISTINCT FROM i.payload
                """, {"dataset": dataset})
            self._write_snapshot_meta(conn, dataset)
        return diff

    def delete_snapshot_rows(self, dataset: str, keys: Iterable[Any]) -> int:
        """Remove some keys from the snapshot; returns how many existed."""
        wanted = [_id(key) for key in keys]
        with self._connect() as conn:
            _key_table(conn, "wanted", wanted)
            condition = "dataset = ? AND key IN (SELECT key FROM wanted)"
            found = conn.execute(
                f"SELECT count(*) FROM snapshot_rows WHERE {condition}", [dataset]
            ).fetchone()
            conn.execute(f"DELETE FROM snapshot_rows WHERE {condition}", [dataset])
            self._write_snapshot_meta(conn, dataset)
        return int(found[0]) if found else 0

    def snapshot_rows(self, dataset: str, keys: Iterable[Any] | None = None) -> dict[str, str]:
        """key -> payload JSON of the stored snapshot, for all keys or the given ones."""
        return dict(self._select_snapshot(dataset, "s.payload", keys))

    def snapshot_records(
        self, dataset: str, keys: Iterable[Any] | None = None
    ) -> dict[str, tuple[str, str | None]]:
        """key -> (hash, payload JSON) of the stored snapshot, for all keys or the given ones."""
        return {key: (content_hash, payload) for key, content_hash, payload
                in self._select_snapshot(dataset, "s.hash, s.payload", keys)}

    def snapshot_hashes(self, dataset: str, keys: Iterable[Any] | None = None) -> dict[str, str]:
        """key -> content hash of the stored snapshot (no payloads: cheap for whole datasets)."""
        return dict(self._select_snapshot(dataset, "s.hash", keys))

    def snapshot_hash_prefixes(self, dataset: str, hex_digits: int = 15) -> dict[int, int]:
        """Numeric key -> the first `hex_digits` (at most 15) of the stored SHA-256 hex hash, as ints,
        computed inside DuckDB: a compact view of a whole dataset (200,000 rows take ~20 MB here, the
        texts of `snapshot_hashes` ~90 MB). Rows with a non-numeric key or another kind of hash are
        left out (a caller comparing against this treats them as changed)."""
        if not 1 <= hex_digits <= 15:
            raise ValueError("hex_digits must be 1..15 (the prefix must fit into 60 bits)")
        with self._connect() as conn:
            columns = conn.execute(f"""
                SELECT k, p FROM (
                    SELECT TRY_CAST(key AS UBIGINT) AS k,
                           TRY_CAST('0x' || substr(hash, 1, {hex_digits}) AS UBIGINT) AS p
                    FROM snapshot_rows WHERE dataset = ? AND length(hash) = 64
                ) WHERE k IS NOT NULL AND p IS NOT NULL
            """, [dataset]).fetchnumpy()
        return dict(zip(columns["k"].tolist(), columns["p"].tolist(), strict=True))

    def _select_snapshot(self, dataset: str, columns: str, keys: Iterable[Any] | None) -> list[tuple[Any, ...]]:
        wanted = None if keys is None else [_id(key) for key in keys]
        if wanted == []:
            return []
        with self._connect() as conn:
            if wanted is None:
                return conn.execute(
                    f"SELECT s.key, {columns} FROM snapshot_rows s WHERE s.dataset = ?", [dataset]
                ).fetchall()
            _key_table(conn, "wanted", wanted)
            return conn.execute(
                f"SELECT s.key, {columns} FROM snapshot_rows s JOIN wanted w ON s.key = w.key "
                "WHERE s.dataset = ?", [dataset],
            ).fetchall()

    def compare_snapshots(self, dataset: str, reference: str) -> SnapshotDiff:
        """How stored `dataset` differs from stored `reference` (e.g. a source snapshot against what the
        target acknowledged): new = only in `dataset`, removed = only in `reference`. Equal to
        `diff_snapshot(reference, <rows of dataset>)`, so `.dataset` is `reference`; stores nothing."""
        with self._connect() as conn:
            conn.execute(
                "CREATE TEMP TABLE incoming AS SELECT key, hash FROM snapshot_rows WHERE dataset = ?", [dataset]
            )
            return self._classify(conn, reference, complete=True)

    def pending_changes(self, dataset: str, reference: str) -> list[tuple[str, str]]:
        """(key, hash) of the rows of `dataset` that are missing from `reference` or have another hash
        there, by key: the records still to process when `reference` holds the hashes processed."""
        with self._connect() as conn:
            return conn.execute("""
                SELECT d.key, d.hash FROM snapshot_rows d
                LEFT JOIN (SELECT key, hash FROM snapshot_rows WHERE dataset = $reference) r ON r.key = d.key
                WHERE d.dataset = $dataset AND (r.key IS NULL OR r.hash <> d.hash)
                ORDER BY d.key
            """, {"dataset": dataset, "reference": reference}).fetchall()

    def snapshot_keys(self, dataset: str) -> set[str]:
        with self._connect() as conn:
            result = conn.execute("SELECT key FROM snapshot_rows WHERE dataset = ?", [dataset]).fetchall()
        return {key for (key,) in result}

    def delete_snapshot(self, dataset: str) -> None:
        """Forget a dataset, so the next run treats every record as new (a full resend)."""
        with self._connect() as conn:
            conn.execute("DELETE FROM snapshot_rows WHERE dataset = ?", [dataset])
            conn.execute("DELETE FROM snapshots WHERE dataset = ?", [dataset])

    def _load_incoming(self, conn: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> None:
        conn.register("incoming_frame", frame)
        conn.execute("""
            CREATE TEMP TABLE incoming AS SELECT CAST(key AS VARCHAR) AS key, CAST(hash AS VARCHAR) AS hash,
                CAST(payload AS VARCHAR) AS payload FROM incoming_frame
        """)
        conn.unregister("incoming_frame")
        total, distinct, nulls = conn.execute(
            "SELECT count(*), count(DISTINCT key), count(*) FILTER (key IS NULL OR hash IS NULL) "
            "FROM incoming"
        ).fetchone() or (0, 0, 0)
        if nulls:
            raise StateStoreError(f"{nulls} snapshot row(s) without key or hash")
        if distinct != total:
            duplicate = conn.execute(
                "SELECT key FROM incoming GROUP BY key HAVING count(*) > 1 ORDER BY key LIMIT 1"
            ).fetchone()
            raise StateStoreError(f"{total - distinct} duplicate snapshot key(s), e.g. {duplicate[0]!r}")

    def _diff(
        self, conn: duckdb.DuckDBPyConnection, dataset: str, frame: pd.DataFrame, *, complete: bool
    ) -> SnapshotDiff:
        """Classify every key in SQL (a hash join, not a Python loop) into the temp table `diff`.
        `complete`: the incoming rows are the whole dataset, so stored keys missing from them are removed."""
        self._load_incoming(conn, frame)
        return self._classify(conn, dataset, complete=complete)

    def _classify(self, conn: duckdb.DuckDBPyConnection, dataset: str, *, complete: bool) -> SnapshotDiff:
        """The diff of the temp table `incoming` (key, hash) against the stored `dataset`."""
        join = "FULL OUTER JOIN" if complete else "LEFT JOIN"
        conn.execute(f"""
            CREATE TEMP TABLE diff AS
            SELECT coalesce(i.key, s.key) AS key,
                   CASE WHEN s.key IS NULL THEN 'new'
                        WHEN i.key IS NULL THEN 'removed'
                        WHEN i.hash <> s.hash THEN 'changed'
                        ELSE 'unchanged' END AS status
            FROM incoming i
            {join} (SELECT key, hash FROM snapshot_rows WHERE dataset = ?) s ON i.key = s.key
        """, [dataset])
        counts = dict(conn.execute("SELECT status, count(*) FROM diff GROUP BY status").fetchall())
        keys: dict[str, list[str]] = {"new": [], "changed": [], "removed": []}
        for key, status in conn.execute(
            "SELECT key, status FROM diff WHERE status <> 'unchanged' ORDER BY key"
        ).fetchall():
            keys[status].append(key)
        return SnapshotDiff(
            dataset=dataset,
            new=counts.get("new", 0),
            changed=counts.get("changed", 0),
            removed=counts.get("removed", 0),
            unchanged=counts.get("unchanged", 0),
            new_keys=keys["new"],
            changed_keys=keys["changed"],
            removed_keys=keys["removed"],
        )

    def _apply(self, conn: duckdb.DuckDBPyConnection, dataset: str) -> None:
        """Write the rows of the last `_diff` that are new or changed; delete changed and removed ones."""
        conn.execute("""
            DELETE FROM snapshot_rows WHERE dataset = $dataset
              AND key IN (SELECT key FROM diff WHERE status IN ('changed', 'removed'))
        """, {"dataset": dataset})
        conn.execute("""
            INSERT INTO snapshot_rows
            SELECT $dataset, i.key, i.hash, i.payload, $now FROM incoming i
            JOIN diff d ON d.key = i.key AND d.status IN ('new', 'changed')
        """, {"dataset": dataset, "now": _now()})

    def _write_snapshot_meta(self, conn: duckdb.DuckDBPyConnection, dataset: str) -> None:
        conn.execute("""
            INSERT INTO snapshots
            SELECT $dataset, (SELECT count(*) FROM snapshot_rows WHERE dataset = $dataset), $now
            ON CONFLICT (dataset) DO UPDATE SET row_count = excluded.row_count,
                updated_at = excluded.updated_at
        """, {"dataset": dataset, "now": _now()})

    # ---- cursors

    def get_cursor(self, name: str) -> str | None:
        """A watermark such as the last order modification time read; None before the first run."""
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM cursors WHERE name = ?", [name]).fetchone()
        return row[0] if row else None

    def set_cursor(self, name: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"cursor values are text, not {type(value).__name__}")
        with self._connect() as conn:
            conn.execute("""
                INSERT INTO cursors VALUES (?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
            """, [name, value, _now()])

    def cursors(self, prefix: str = "") -> dict[str, str]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT name, value FROM cursors WHERE starts_with(name, ?) ORDER BY name", [prefix]
            ).fetchall()
        return dict(rows)

    # ---- id mappings

    def put_mapping(self, kind: str, billbee_id: str | int, pulpo_id: str | int,
                    extra: dict[str, Any] | None = None) -> None:
        """Remember that Billbee `billbee_id` is PULPO `pulpo_id` for `kind` (product, order, ...)."""
        self.put_mappings(kind, [(billbee_id, pulpo_id, extra)])

    def put_mappings(
        self, kind: str, items: Iterable[tuple[str | int, str | int, dict[str, Any] | None]]
    ) -> int:
        """Bulk `put_mapping` in one transaction; the last item wins for a repeated Billbee id."""
        rows = {_id(billbee): (_id(pulpo), _dumps(extra)) for billbee, pulpo, extra in items}
        if not rows:
            return 0
        frame = pd.DataFrame(
            {"billbee_id": list(rows), "pulpo_id": [v[0] for v in rows.values()],
             "extra": [v[1] for v in rows.values()]},
            dtype=object,
        )
        with self._connect() as conn:
            conn.register("mapping_frame", frame)
            conn.execute("""
                INSERT INTO id_mappings
                SELECT $kind, CAST(billbee_id AS VARCHAR), CAST(pulpo_id AS VARCHAR), CAST(extra AS VARCHAR),
                       $now FROM mapping_frame
                ON CONFLICT (kind, billbee_id) DO UPDATE SET pulpo_id = excluded.pulpo_id,
                    extra = excluded.extra, updated_at = excluded.updated_at
            """, {"kind": kind, "now": _now()})
        return len(rows)

    def get_mapping(self, kind: str, billbee_id: str | int) -> IdMapping | None:
        billbee_id = _id(billbee_id)
        return self.get_mappings(kind, [billbee_id]).get(billbee_id)

    def get_mappings(self, kind: str, billbee_ids: Iterable[str | int]) -> dict[str, IdMapping]:
        """`get_mapping` for many ids in one transaction: billbee_id -> mapping, for those that have one."""
        wanted = [_id(key) for key in billbee_ids]
        if not wanted:
            return {}
        with self._connect() as conn:
            _key_table(conn, "wanted", wanted)
            rows = conn.execute(
                f"SELECT {_MAPPING_COLUMNS} FROM id_mappings m JOIN wanted w ON m.billbee_id = w.key "
                "WHERE m.kind = ?", [kind],
            ).fetchall()
        return {row[1]: _mapping(row) for row in rows}

    def get_mapping_by_pulpo(self, kind: str, pulpo_id: str | int) -> IdMapping | None:
        """The mapping for a PULPO id (the most recent one if several Billbee ids point to it)."""
        pulpo_id = _id(pulpo_id)
        found = self.get_mappings_by_pulpo(kind, [pulpo_id]).get(pulpo_id)
        return found[0] if found else None

    def get_mappings_by_pulpo(self, kind: str, pulpo_ids: Iterable[str | int]) -> dict[str, list[IdMapping]]:
        """PULPO id -> every mapping pointing to it, most recent first (ties by Billbee id), for the PULPO
        ids that have one. Several Billbee records can point to one PULPO record."""
        wanted = [_id(key) for key in pulpo_ids]
        if not wanted:
            return {}
        with self._connect() as conn:
            _key_table(conn, "wanted", wanted)
            rows = conn.execute(
                f"SELECT {_MAPPING_COLUMNS} FROM id_mappings m JOIN wanted w ON m.pulpo_id = w.key "
                "WHERE m.kind = ? ORDER BY m.updated_at DESC, m.billbee_id", [kind],
            ).fetchall()
        found: dict[str, list[IdMapping]] = {}
        for row in rows:
            found.setdefault(row[2], []).append(_mapping(row))
        return found

    def mappings_by_extra(self, kind: str, field: str, values: Iterable[str | int]) -> dict[str, IdMapping]:
        """value -> the mapping whose `extra[field]`, as text, is that value (the most recent one, ties by
        Billbee id, if several), for the values found: e.g. SKU -> product mapping."""
        if not _EXTRA_FIELD.fullmatch(field):
            raise ValueError(f"extra field names are identifiers, not {field!r}")
        wanted = [_id(value) for value in values]
        if not wanted:
            return {}
        with self._connect() as conn:
            _key_table(conn, "wanted", wanted)
            rows = conn.execute(f"""
                SELECT w.key, {_MAPPING_COLUMNS} FROM id_mappings m
                JOIN wanted w ON json_extract_string(m.extra, $path) = w.key
                WHERE m.kind = $kind
                QUALIFY row_number() OVER (PARTITION BY w.key ORDER BY m.updated_at DESC, m.billbee_id) = 1
            """, {"kind": kind, "path": f'$."{field}"'}).fetchall()
        return {row[0]: _mapping(row[1:]) for row in rows}

    def mappings(self, kind: str) -> dict[str, str]:
        """billbee_id -> pulpo_id for every mapping of `kind`."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT billbee_id, pulpo_id FROM id_mappings WHERE kind = ?", [kind]
            ).fetchall()
        return dict(rows)

    def delete_mapping(self, kind: str, billbee_id: str | int) -> bool:
        with self._connect() as conn:
            found = conn.execute(
                "SELECT count(*) FROM id_mappings WHERE kind = ? AND billbee_id = ?", [kind, _id(billbee_id)]
            ).fetchone()
            conn.execute("DELETE FROM id_mappings WHERE kind = ? AND billbee_id = ?", [kind, _id(billbee_id)])
        return bool(found and found[0])

    # ---- ledger

    def ledger_begin(
        self, key: str, integration: str, action: str, request: dict[str, Any] | None = None
    ) -> LedgerEntry:
        """Record that a write identified by the idempotency `key` is about to be sent: status 'pending',
        attempts + 1. `request` is a summary for humans and retries; never put credentials in it."""
        key = _id(key)
        return self.ledger_begin_many(integration, [(key, action, request)])[key]

    def ledger_begin_many(
        self, integration: str, items: Iterable[LedgerStart | tuple[Any, ...]]
    ) -> dict[str, LedgerEntry]:
        """`ledger_begin` for many `(key, action, request)` in one transaction: key -> entry, with
        `previous_status`. Keys must be unique (beginning one write twice at once is a bug)."""
        starts = [LedgerStart(_id(item[0]), *item[1:]) for item in items]
        keys = _unique([start.key for start in starts], "ledger")
        if not keys:
            return {}
        columns = {"key": keys, "action": [str(start.action) for start in starts],
                   "request": [_dumps(start.request) for start in starts]}
        now = _now()
        with self._connect() as conn:
            _columns_table(conn, "begun", columns)
            previous = dict(conn.execute(
                "SELECT key, status FROM ledger WHERE key IN (SELECT key FROM begun)"
            ).fetchall())
            conn.execute("""
                INSERT INTO ledger
                    (key, integration, action, status, attempts, request, created_at, updated_at)
                SELECT key, $integration, action, 'pending', 1, request, $now, $now FROM begun
                ON CONFLICT (key) DO UPDATE SET status = 'pending', attempts = attempts + 1,
                    integration = excluded.integration, action = excluded.action, request = excluded.request,
                    updated_at = excluded.updated_at, finished_at = NULL
            """, {"integration": integration, "now": now})
            rows = conn.execute(
                f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE key IN (SELECT key FROM begun)"
            ).fetchall()
        return {row[0]: _ledger_entry(row, previous.get(row[0])) for row in rows}

    def ledger_finish(
        self,
        key: str,
        status: str,
        outcome: dict[str, Any] | None = None,
        remote_id: str | int | None = None,
        message: str | None = None,
    ) -> LedgerEntry:
        """Record the result of a write begun with `ledger_begin`: done, failed, attention or skipped.
        A `remote_id` of None keeps the one recorded before."""
        key = _id(key)
        return self.ledger_finish_many([(key, status, outcome, remote_id, message)])[key]

    def ledger_finish_many(self, items: Iterable[LedgerFinish | tuple[Any, ...]]) -> dict[str, LedgerEntry]:
        """`ledger_finish` for many `(key, status, outcome, remote_id, message)` (the last three
        optional) in one transaction: key -> entry. Keys must be unique and begun; otherwise nothing is
        recorded (ValueError / KeyError)."""
        finishes = [LedgerFinish(_id(item[0]), *item[1:]) for item in items]
        keys = _unique([finish.key for finish in finishes], "ledger")
        if not keys:
            return {}
        for finish in finishes:
            if finish.status not in FINISHED_STATUSES:
                raise ValueError(f"status must be one of {', '.join(sorted(FINISHED_STATUSES))}, "
                                 f"not {finish.status!r}")
        columns = {
            "key": keys,
            "status": [finish.status for finish in finishes],
            "outcome": [_dumps(finish.outcome) for finish in finishes],
            "remote_id": [None if finish.remote_id is None else _id(finish.remote_id) for finish in finishes],
            "message": [None if finish.message is None else str(finish.message) for finish in finishes],
        }
        with self._connect() as conn:
            _columns_table(conn, "finished", columns)
            unknown = conn.execute(
                "SELECT key FROM finished WHERE key NOT IN (SELECT key FROM ledger) ORDER BY key LIMIT 1"
            ).fetchone()
            if unknown is not None:
                raise KeyError(f"no ledger entry {unknown[0]!r}; call ledger_begin first")
            conn.execute("""
                UPDATE ledger SET status = f.status, outcome = f.outcome,
                    remote_id = coalesce(f.remote_id, ledger.remote_id), message = f.message,
                    updated_at = $now, finished_at = $now
                FROM finished f WHERE ledger.key = f.key
            """, {"now": _now()})
            rows = conn.execute(
                f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE key IN (SELECT key FROM finished)"
            ).fetchall()
        return {row[0]: _ledger_entry(row) for row in rows}

    def ledger_close_interrupted(self, integration: str, actions: Collection[str], before: datetime,
                                 message: str) -> int:
        """Mark 'failed' (with `message`) the entries of `actions` still 'pending' since before `before`:
        for writers whose keys name the data sent (a later write of changed data has another key), once a
        complete pass has made the target right again, a killed run's entry is owed nothing. Returns how
        many were closed."""
        with self._connect() as conn:
            closed = conn.execute("""
                UPDATE ledger SET status = 'failed', message = $message, updated_at = $now, finished_at = $now
                WHERE integration = $integration AND status = 'pending' AND action IN (SELECT unnest($actions))
                  AND updated_at < $before
                RETURNING key
            """, {"message": message, "now": _now(), "integration": integration, "actions": list(actions),
                  "before": before.astimezone(UTC).replace(tzinfo=None)}).fetchall()
        return len(closed)

    def ledger_get(self, key: str) -> LedgerEntry | None:
        key = _id(key)
        return self.ledger_get_many([key]).get(key)

    def ledger_get_many(self, keys: Iterable[str]) -> dict[str, LedgerEntry]:
        """key -> entry for the given keys that have one, in one transaction."""
        wanted = [_id(key) for key in keys]
        if not wanted:
            return {}
        with self._connect() as conn:
            _key_table(conn, "wanted", wanted)
            rows = conn.execute(
                f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE key IN (SELECT key FROM wanted)"
            ).fetchall()
        return {row[0]: _ledger_entry(row) for row in rows}

    def ledger_entries(
        self, integration: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[LedgerEntry]:
        """Entries, most recently updated first, optionally filtered by integration and status."""
        query = f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE (? IS NULL OR integration = ?) " \
                "AND (? IS NULL OR status = ?) ORDER BY updated_at DESC, key"
        params: list[Any] = [integration, integration, status, status]
        if limit is not None:
            query += " LIMIT ?"
            params.append(int(limit))
        with self._connect() as conn:
            rows = conn.execute(query, params).fetchall()
        return [_ledger_entry(row) for row in rows]

    # ---- quarantine

    def quarantine_put(
        self,
        integration: str,
        record_key: str | int,
        reason: str,
        payload: Any = None,
        *,
        kind: str = "record",
    ) -> QuarantineEntry:
        """Park a record that cannot be synced, with the reason. Repeats update the reason and payload,
        keep `first_seen`, count `occurrences` and reopen a resolved entry. `kind` (product, order, ...)
        separates record types of one integration."""
        self._quarantine_upsert(integration, kind, {_id(record_key): (reason, payload)})
        entries = self.quarantine_list(integration, include_resolved=True, kind=kind, record_key=record_key)
        return entries[0]

    def quarantine_sync(
        self, integration: str, kind: str, current: Mapping[Any, tuple[str, Any]]
    ) -> dict[str, int]:
        """Make `current` (record_key -> (reason, payload)) the open quarantine of this integration and
        kind, after a full read: listed records are put (see `quarantine_put`), open ones not listed are
        resolved. Returns counts: open, new (first time or reopened), resolved."""
        return self._quarantine_upsert(integration, kind, {_id(k): v for k, v in current.items()},
                                       resolve_others=True)

    def quarantine_put_many(self, integration: str, kind: str, records: Mapping[Any, tuple[str, Any]]) -> int:
        """`quarantine_put` for many record_key -> (reason, payload) in one transaction; other open
        entries stay (unlike `quarantine_sync`). Returns how many were opened (first time or reopened)."""
        if not records:
            return 0
        return self._quarantine_upsert(integration, kind, {_id(k): v for k, v in records.items()})["new"]

    def _quarantine_upsert(
        self, integration: str, kind: str, records: dict[str, tuple[str, Any]], resolve_others: bool = False
    ) -> dict[str, int]:
        frame = pd.DataFrame({
            "record_key": list(records),
            "reason": [str(reason) for reason, _ in records.values()],
            "payload": [_dumps(payload) for _, payload in records.values()],
        }, dtype=object)
        with self._connect() as conn:
            # `now` taken under the store's lock: first_seen then follows commit order, so a reader that
            # remembers the newest first_seen it saw (the quarantine alert sensor) never misses an entry.
            params = {"integration": integration, "kind": kind, "now": _now()}
            conn.register("quarantined", frame)
            conn.execute("""
                CREATE TEMP TABLE q AS SELECT CAST(record_key AS VARCHAR) AS record_key,
                    CAST(reason AS VARCHAR) AS reason, CAST(payload AS VARCHAR) AS payload FROM quarantined
            """)
            new = conn.execute("""
                SELECT count(*) FROM q WHERE NOT EXISTS (
                    SELECT 1 FROM quarantine x WHERE x.integration = $integration AND x.kind = $kind
                      AND x.record_key = q.record_key AND x.resolved_at IS NULL)
            """, {"integration": integration, "kind": kind}).fetchone()
            resolved = (0,)
            if resolve_others:
                others = """FROM quarantine WHERE integration = $integration AND kind = $kind
                    AND resolved_at IS NULL AND record_key NOT IN (SELECT record_key FROM q)"""
                resolved = conn.execute(f"SELECT count(*) {others}",
                                        {"integration": integration, "kind": kind}).fetchone() or (0,)
                conn.execute(
                    f"UPDATE quarantine SET resolved_at = $now WHERE rowid IN (SELECT rowid {others})", params
                )
            if records:
                conn.execute("""
                    INSERT INTO quarantine
                    SELECT $integration, $kind, record_key, reason, payload, $now, $now, 1, NULL FROM q
                    ON CONFLICT (integration, kind, record_key) DO UPDATE SET reason = excluded.reason,
                        payload = excluded.payload, last_seen = excluded.last_seen,
                        occurrences = occurrences + 1, resolved_at = NULL
                """, params)
        return {"open": len(records), "new": int(new[0]) if new else 0, "resolved": int(resolved[0])}

    def quarantine_resolve(self, integration: str, record_key: str | int, *, kind: str | None = None) -> bool:
        """Mark the open entry (of any kind unless given) resolved, kept for history; False if none."""
        return bool(self.quarantine_resolve_many(integration, [record_key], kind=kind))

    def quarantine_resolve_many(
        self, integration: str, record_keys: Iterable[str | int], *, kind: str | None = None
    ) -> set[str]:
        """`quarantine_resolve` for many keys in one transaction; returns the keys that had an open entry."""
        wanted = [_id(key) for key in record_keys]
        if not wanted:
            return set()
        condition = """integration = $integration AND ($kind IS NULL OR kind = $kind) AND resolved_at IS NULL
                       AND record_key IN (SELECT key FROM wanted)"""
        params = {"integration": integration, "kind": kind}
        with self._connect() as conn:
            _key_table(conn, "wanted", wanted)
            found = conn.execute(f"SELECT DISTINCT record_key FROM quarantine WHERE {condition}", params).fetchall()
            conn.execute(f"UPDATE quarantine SET resolved_at = $now WHERE {condition}", {**params, "now": _now()})
        return {key for (key,) in found}

    def quarantine_open_keys(
        self, integration: str, *, kind: str | None = None, record_keys: Iterable[str | int] | None = None
    ) -> set[str]:
        """Keys with an open entry (of any kind unless given), among `record_keys` if given: membership
        without loading reasons and payloads."""
        wanted = None if record_keys is None else [_id(key) for key in record_keys]
        if wanted == []:
            return set()
        query = ("SELECT DISTINCT record_key FROM quarantine WHERE integration = $integration "
                 "AND ($kind IS NULL OR kind = $kind) AND resolved_at IS NULL")
        with self._connect() as conn:
            if wanted is not None:
                _key_table(conn, "wanted", wanted)
                query += " AND record_key IN (SELECT key FROM wanted)"
            rows = conn.execute(query, {"integration": integration, "kind": kind}).fetchall()
        return {key for (key,) in rows}

    def quarantine_list(
        self,
        integration: str | None = None,
        include_resolved: bool = False,
        *,
        kind: str | None = None,
        record_key: str | int | None = None,
    ) -> list[QuarantineEntry]:
        """Quarantined records, oldest first; open ones only unless `include_resolved`."""
        key = None if record_key is None else _id(record_key)
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine WHERE (? IS NULL OR integration = ?) "
                "AND (? IS NULL OR kind = ?) AND (? IS NULL OR record_key = ?) "
                "AND (? OR resolved_at IS NULL) "
                "ORDER BY first_seen, integration, kind, record_key",
                [integration, integration, kind, kind, key, key, include_resolved],
            ).fetchall()
        return [_quarantine_entry(row) for row in rows]

    # ---- sync log

    def record_sync(self, integration: str, step: str, counts: Mapping[str, int], run_id: str | None = None,
                    *, finished_at: datetime | None = None) -> None:
        """Remember that `step` (an asset name) of `integration` succeeded now, with its main counts:
        what `billbee-pulpo status` shows as the last successful sync. One row per step, replaced."""
        when = finished_at.astimezone(UTC).replace(tzinfo=None) if finished_at else _now()
        with self._connect() as conn:
            conn.execute("INSERT OR REPLACE INTO sync_log VALUES (?, ?, ?, ?, ?)",
                         [integration, step, when, run_id, _dumps({k: int(v) for k, v in counts.items()})])

    def last_syncs(self, integration: str | None = None) -> list[SyncRecord]:
        """The last success of every step (of one integration if given), newest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT integration, step, finished_at, run_id, counts FROM sync_log "
                "WHERE (? IS NULL OR integration = ?) ORDER BY finished_at DESC, integration, step",
                [integration, integration],
            ).fetchall()
        return [SyncRecord(i, step, at.replace(tzinfo=UTC), run_id, _loads(counts) or {})
                for i, step, at, run_id, counts in rows]

    def quarantine_overview(
        self, integration: str, *, limit: int = 10
    ) -> tuple[int, dict[str, int], list[QuarantineEntry]]:
        """Open entries of one integration: how many, how many per kind, and the `limit` oldest."""
        with self._connect() as conn:
            by_kind = dict(conn.execute(
                "SELECT kind, count(*) FROM quarantine WHERE integration = ? AND resolved_at IS NULL GROUP BY kind",
                [integration],
            ).fetchall())
            rows = conn.execute(
                f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine WHERE integration = ? AND resolved_at IS NULL "
                "ORDER BY first_seen, kind, record_key LIMIT ?", [integration, int(limit)],
            ).fetchall()
        counts = {str(kind): int(n) for kind, n in by_kind.items()}
        return sum(counts.values()), counts, [_quarantine_entry(row) for row in rows]

    def quarantine_opened_after(
        self, after: datetime | None, *, per_integration: int = 5
    ) -> tuple[datetime | None, dict[str, int], list[QuarantineEntry]]:
        """Open entries first quarantined after `after` (every open one when None): the newest first_seen
        among them, their count per integration and the `per_integration` oldest of each. Entries written by
        one call share their first_seen and later calls get later ones (taken under the lock), so passing
        the newest first_seen seen as the next `after` misses nothing."""
        since = "(CAST($after AS TIMESTAMP) IS NULL OR first_seen > CAST($after AS TIMESTAMP))"
        params = {"after": after.astimezone(UTC).replace(tzinfo=None) if after else None}
        with self._connect() as conn:
            counts = conn.execute(
                f"SELECT integration, count(*), max(first_seen) FROM quarantine WHERE resolved_at IS NULL "
                f"AND {since} GROUP BY integration", params,
            ).fetchall()
            rows = conn.execute(
                f"SELECT {_QUARANTINE_COLUMNS} FROM (SELECT *, row_number() OVER (PARTITION BY integration "
                f"ORDER BY first_seen, kind, record_key) AS n FROM quarantine WHERE resolved_at IS NULL AND {since}) "
                "WHERE n <= $limit ORDER BY integration, first_seen, kind, record_key",
                {**params, "limit": int(per_integration)},
            ).fetchall()
        newest = max((_aware(at) for _, _, at in counts), default=None)
        return newest, {str(i): int(n) for i, n, _ in counts}, [_quarantine_entry(row) for row in rows]

    # ---- overview

    def summary(self, integration: str | None = None) -> dict[str, Any]:
        """Counts for the status command. With `integration`, the ledger and quarantine are filtered by
        it, and cursors and snapshot datasets by the naming convention `<integration>.<name>`."""
        prefix = f"{integration}." if integration else ""
        with self._connect() as conn:
            ledger = dict(conn.execute(
                "SELECT status, count(*) FROM ledger WHERE (? IS NULL OR integration = ?) GROUP BY status",
                [integration, integration],
            ).fetchall())
            last_write = conn.execute(
                "SELECT max(updated_at) FROM ledger WHERE (? IS NULL OR integration = ?)",
                [integration, integration],
            ).fetchone()
            quarantine = conn.execute(
                "SELECT count(*) FILTER (resolved_at IS NULL), count(*) FILTER (resolved_at IS NOT NULL) "
                "FROM quarantine WHERE (? IS NULL OR integration = ?)", [integration, integration]
            ).fetchone()
            snapshots = dict(conn.execute(
                "SELECT dataset, row_count FROM snapshots WHERE starts_with(dataset, ?) ORDER BY dataset",
                [prefix],
            ).fetchall())
            cursors = dict(conn.execute(
                "SELECT name, value FROM cursors WHERE starts_with(name, ?) ORDER BY name", [prefix]
            ).fetchall())
            mappings = dict(conn.execute(
                "SELECT kind, count(*) FROM id_mappings GROUP BY kind ORDER BY kind"
            ).fetchall())
        return {
            "integration": integration,
            "ledger": {status: int(ledger.get(status, 0)) for status in LEDGER_STATUSES},
            "last_write": _aware(last_write[0]) if last_write else None,
            "quarantine_open": int(quarantine[0]) if quarantine else 0,
            "quarantine_resolved": int(quarantine[1]) if quarantine else 0,
            "snapshots": snapshots,
            "cursors": cursors,
            "mappings": mappings,
        }


_MAPPING_COLUMNS = "m.kind, m.billbee_id, m.pulpo_id, m.extra, m.updated_at"
_EXTRA_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _key_table(conn: duckdb.DuckDBPyConnection, name: str, keys: list[str]) -> None:
    """Temp table `name` (key VARCHAR) of the distinct `keys`: one side of a hash join, so a lookup of
    10,000 ids is one statement."""
    conn.execute(f"CREATE TEMP TABLE {name} AS SELECT DISTINCT unnest($keys::VARCHAR[]) AS key", {"keys": keys})


def _columns_table(conn: duckdb.DuckDBPyConnection, name: str, columns: dict[str, list[str | None]]) -> None:
    """Temp table `name` of VARCHAR columns from equally long lists (bound as list parameters)."""
    select = ", ".join(f"unnest(${column}::VARCHAR[]) AS {column}" for column in columns)
    conn.execute(f"CREATE TEMP TABLE {name} AS SELECT {select}", columns)


def _unique(keys: list[str], what: str) -> list[str]:
    if len(set(keys)) != len(keys):
        repeated = Counter(keys).most_common(1)[0][0]
        raise ValueError(f"repeated {what} key {repeated!r} in one batch")
    return keys


def _mapping(row: tuple[Any, ...]) -> IdMapping:
    kind, billbee_id, pulpo_id, extra, updated_at = row
    return IdMapping(kind, billbee_id, pulpo_id, _loads(extra), updated_at.replace(tzinfo=UTC))


def _frame(rows: Rows) -> pd.DataFrame:
    """Snapshot input as a DataFrame with text columns key, hash, payload."""
    if isinstance(rows, pd.DataFrame):
        columns = {str(column).lower(): column for column in rows.columns}
        payload = columns.get("payload", columns.get("payload_json"))
        if "key" not in columns or "hash" not in columns or payload is None:
            raise StateStoreError("snapshot DataFrame needs columns key, hash and payload (or payload_json)")
        frame = rows[[columns["key"], columns["hash"], payload]].copy()
        frame.columns = ["key", "hash", "payload"]
        if frame["key"].dtype.kind == "f":
            raise TypeError("snapshot keys must not be floats (17-digit ids lose digits)")
        if frame["key"].dtype.kind == "O":  # mixed Python objects: check each id
            frame["key"] = frame["key"].map(_id)
        return frame
    keys: list[str] = []
    hashes: list[str] = []
    payloads: list[str | None] = []
    for key, content_hash, payload in rows:
        keys.append(_id(key))
        hashes.append(content_hash)
        payloads.append(payload if payload is None or isinstance(payload, str) else canonical_json(payload))
    return pd.DataFrame({"key": keys, "hash": hashes, "payload": payloads}, dtype=object)
