"""The DuckDB state store: API, diff correctness and speed, and concurrent writers in separate processes."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from filelock import FileLock

from billbee_pulpo_pipeline.state import (
    SCHEMA_VERSION,
    LedgerFinish,
    LedgerStart,
    StateStore,
    StateStoreError,
    bpp_home,
    canonical_json,
    snapshot_row,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BIG_ID = "20000000000012103"  # > 2**53: a float would turn it into ...12104


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "home")


def rows_for(records: dict[str, dict]) -> list[tuple[str, str, str]]:
    return [snapshot_row(key, record) for key, record in records.items()]


TIME_FIELDS = ("created_at", "updated_at", "finished_at", "first_seen", "last_seen", "resolved_at")


def untimed(entry):
    """A ledger or quarantine entry with each timestamp replaced by whether it is set: two stores that
    saw the same operations at different moments compare equal."""
    names = {f.name for f in dataclasses.fields(entry)}
    return dataclasses.replace(entry, **{n: getattr(entry, n) is not None for n in TIME_FIELDS if n in names})


# --------------------------------------------------------------------------------------------------
# Location and schema


def test_bpp_home_from_env_or_default():
    assert bpp_home({"BPP_HOME": "/srv/bpp"}) == Path("/srv/bpp")
    assert bpp_home({}) == Path(".bpp")


def test_store_path_is_a_directory_or_a_file(tmp_path):
    assert StateStore(tmp_path / "home").path == tmp_path / "home" / "state.duckdb"
    assert StateStore(tmp_path / "custom.duckdb").path == tmp_path / "custom.duckdb"
    assert StateStore.from_env({"BPP_HOME": str(tmp_path / "h")}).path == tmp_path / "h" / "state.duckdb"


def test_schema_is_created_idempotently_with_a_version_row(tmp_path):
    first = StateStore(tmp_path)
    first.set_cursor("a", "1")
    second = StateStore(tmp_path)  # a new process would do the same: CREATE ... IF NOT EXISTS
    assert second.schema_version() == SCHEMA_VERSION
    assert second.get_cursor("a") == "1"
    with duckdb.connect(str(first.path)) as conn:
        assert conn.execute("SELECT count(*) FROM meta WHERE key = 'schema_version'").fetchone() == (1,)


def test_a_newer_schema_is_refused(tmp_path):
    StateStore(tmp_path).set_cursor("a", "1")
    with duckdb.connect(str(tmp_path / "state.duckdb")) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StateStoreError, match="schema version 99"):
        StateStore(tmp_path).get_cursor("a")


def plain_duckdb_connect(store: StateStore) -> subprocess.CompletedProcess:
    """Open the database from another process, ignoring the file lock (as the DuckDB CLI would):
    fails while this process holds it (in-process DuckDB would share the instance)."""
    code = f"import duckdb; duckdb.connect({str(store.path)!r}).execute('SELECT 1')"
    return subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, text=True)


def test_the_database_is_given_back_after_a_short_idle_time_or_on_close(store):
    store.set_cursor("a", "1")
    time.sleep(store.hold * 5)  # idle: the connection was closed and the lock released
    assert plain_duckdb_connect(store).returncode == 0
    held = StateStore(store.path, hold=60, max_lease=60)
    held.set_cursor("a", "2")
    assert "lock" in plain_duckdb_connect(held).stderr.lower()  # held for the next call ...
    held.close()
    assert plain_duckdb_connect(held).returncode == 0  # ... until closed
    assert held.get_cursor("a") == "2"
    held.close()


def test_a_busy_process_lets_others_in_after_max_lease(store):
    """A process calling the store without pause holds the database at most `max_lease` at a time."""
    store.set_cursor("a", "0")
    stop = time.monotonic() + 4
    worker = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom billbee_pulpo_pipeline.state import StateStore\n"
        f"s = StateStore({str(store.path)!r})\n"
        f"while time.monotonic() < {stop}:\n    s.set_cursor('busy', str(time.time()))\n")])
    try:
        time.sleep(1.0)
        waits = []
        for _ in range(3):
            started = time.monotonic()
            store.get_cursor("busy")
            store.close()
            waits.append(time.monotonic() - started)
        assert worker.poll() is None  # the other process was still busy the whole time
        assert max(waits) < store.max_lease + 1.0
    finally:
        worker.wait(timeout=30)
    assert worker.returncode == 0


def test_a_process_exiting_while_the_reaper_closes_the_database_exits_cleanly(tmp_path):
    """Exit right when the idle connection is being closed (`hold` after the last call): the interpreter
    stops daemon threads at exit, and one stopped inside DuckDB's close aborted the process (exit 134,
    "FATAL: exception not rethrown") in about half of these exits, e.g. Dagster run workers after
    RUN_SUCCESS. Sixteen exits spread over that moment must all be clean."""
    code = ("import sys, time\nfrom billbee_pulpo_pipeline.state import StateStore\n"
            "StateStore(sys.argv[1]).set_cursor('a', '1')\ntime.sleep(float(sys.argv[2]))\n")
    codes = []
    for batch in range(4):
        workers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"{batch}-{i}"),
                                     str(0.095 + 0.01 * (4 * batch + i) / 16)], cwd=PROJECT_ROOT,
                                    stderr=subprocess.PIPE, text=True) for i in range(4)]
        codes += [(w.wait(timeout=60), w.stderr.read()[-300:]) for w in workers]
    assert all(code == 0 for code, _ in codes), codes


# --------------------------------------------------------------------------------------------------
# Snapshots


def test_first_snapshot_is_all_new(store):
    diff = store.replace_snapshot("shop.products", rows_for({"a": {"q": 1}, "b": {"q": 2}}))
    assert diff.counts() == {"new": 2, "changed": 0, "removed": 0, "unchanged": 0}
    assert diff.new_keys == ["a", "b"] and diff.has_changes
    expected = {"a": canonical_json({"q": 1}), "b": canonical_json({"q": 2})}
    assert store.snapshot_rows("shop.products") == expected


def test_diff_classifies_new_changed_removed_unchanged(store):
    store.replace_snapshot("d", rows_for({"keep": {"v": 1}, "edit": {"v": 1}, "gone": {"v": 1}}))
    diff = store.replace_snapshot("d", rows_for({"keep": {"v": 1}, "edit": {"v": 2}, "fresh": {"v": 3}}))
    assert (diff.new_keys, diff.changed_keys, diff.removed_keys) == (["fresh"], ["edit"], ["gone"])
    assert diff.counts() == {"new": 1, "changed": 1, "removed": 1, "unchanged": 1}
    assert sorted(diff.upsert_keys) == ["edit", "fresh"]
    assert store.snapshot_keys("d") == {"keep", "edit", "fresh"}
    assert store.snapshot_rows("d", ["edit", "missing"]) == {"edit": canonical_json({"v": 2})}
    again = store.replace_snapshot("d", rows_for({"keep": {"v": 1}, "edit": {"v": 2}, "fresh": {"v": 3}}))
    assert again.counts() == {"new": 0, "changed": 0, "removed": 0, "unchanged": 3} and not again.has_changes


def test_diff_matches_a_python_reference_on_random_data(store):
    rng = random.Random(7)
    before = {f"k{i}": {"q": rng.randint(0, 3)} for i in range(2_000)}
    after = {k: {"q": rng.randint(0, 3)} for k in before if rng.random() < 0.9}
    after |= {f"n{i}": {"q": 1} for i in range(150)}
    store.replace_snapshot("r", rows_for(before))
    diff = store.replace_snapshot("r", rows_for(after))
    assert set(diff.new_keys) == after.keys() - before.keys()
    assert set(diff.removed_keys) == before.keys() - after.keys()
    assert set(diff.changed_keys) == {k for k in after.keys() & before.keys() if after[k] != before[k]}
    assert diff.unchanged == sum(1 for k in after.keys() & before.keys() if after[k] == before[k])
    assert store.snapshot_rows("r") == {k: canonical_json(v) for k, v in after.items()}


def test_datasets_are_independent(store):
    store.replace_snapshot("one", rows_for({"a": {}}))
    diff = store.replace_snapshot("two", rows_for({"b": {}}))
    assert diff.removed == 0 and store.snapshot_keys("one") == {"a"}
    store.delete_snapshot("one")
    assert store.snapshot_keys("one") == set() and store.snapshot_keys("two") == {"b"}


def test_diff_snapshot_stores_nothing_and_upsert_keeps_other_keys(store):
    store.replace_snapshot("d", rows_for({"a": {"v": 1}, "b": {"v": 1}}))
    preview = store.diff_snapshot("d", rows_for({"a": {"v": 2}}))
    assert (preview.changed_keys, preview.removed_keys) == (["a"], ["b"])
    assert store.snapshot_rows("d", ["a"]) == {"a": canonical_json({"v": 1})}
    partial = store.diff_snapshot("d", rows_for({"a": {"v": 2}}), complete=False)
    assert partial.removed == 0

    upsert = store.upsert_snapshot("d", rows_for({"a": {"v": 2}, "c": {"v": 1}}))
    assert upsert.counts() == {"new": 1, "changed": 1, "removed": 0, "unchanged": 0}
    assert store.snapshot_keys("d") == {"a", "b", "c"}
    assert store.delete_snapshot_rows("d", ["b", "zz"]) == 1
    assert store.snapshot_keys("d") == {"a", "c"}
    assert store.summary()["snapshots"] == {"d": 2}


def test_dataframe_input_with_integer_and_17_digit_keys(store):
    frame = pd.DataFrame({"key": [int(BIG_ID), 5], "hash": ["h1", "h2"], "payload_json": ["{}", "{}"]})
    diff = store.replace_snapshot("df", frame)
    assert sorted(diff.new_keys) == sorted([BIG_ID, "5"])
    assert store.snapshot_keys("df") == {BIG_ID, "5"}


def test_bad_snapshot_input_is_refused(store):
    with pytest.raises(StateStoreError, match="duplicate snapshot key"):
        store.replace_snapshot("d", [("a", "h", "{}"), ("a", "h2", "{}")])
    with pytest.raises(TypeError, match="17-digit"):
        store.replace_snapshot("d", [(2.0e16, "h", "{}")])
    with pytest.raises(TypeError, match="float"):
        store.replace_snapshot("d", pd.DataFrame({"key": [1.0], "hash": ["h"], "payload": ["{}"]}))
    with pytest.raises(StateStoreError, match="without key or hash"):
        store.replace_snapshot("d", [("a", None, "{}")])
    with pytest.raises(StateStoreError, match="columns"):
        store.replace_snapshot("d", pd.DataFrame({"id": ["a"]}))
    assert store.snapshot_keys("d") == set(), "a refused snapshot writes nothing"


def test_empty_snapshot_removes_everything(store):
    store.replace_snapshot("d", rows_for({"a": {}, "b": {}}))
    diff = store.replace_snapshot("d", [])
    assert diff.removed_keys == ["a", "b"] and store.snapshot_keys("d") == set()


def test_200k_row_diff_in_about_a_second(store):
    count = 200_000
    first = [(f"{10**16 + i}", f"h{i}", f'{{"i":{i}}}') for i in range(count)]
    store.replace_snapshot("big", first)
    second = [(key, h if i % 10 else h + "x", payload) for i, (key, h, payload) in enumerate(first[1_000:])]
    second += [(f"new{i}", "h", "{}") for i in range(500)]

    started = time.perf_counter()
    diff = store.replace_snapshot("big", second)
    elapsed = time.perf_counter() - started

    assert diff.counts() == {"new": 500, "changed": 19_900, "removed": 1_000, "unchanged": 179_100}
    assert len(diff.changed_keys) == 19_900 and len(diff.removed_keys) == 1_000
    assert elapsed < 3.0, f"200k-row diff took {elapsed:.2f} s"
    assert store.summary()["snapshots"]["big"] == 199_500


def random_datasets(store, seed: int = 11) -> tuple[dict[str, dict], dict[str, dict]]:
    """A source snapshot and an acknowledged one that overlap with new, changed, removed, unchanged."""
    rng = random.Random(seed)
    acknowledged = {f"{10**16 + i}": {"q": rng.randint(0, 3)} for i in range(1_500)}
    source = {k: {"q": rng.randint(0, 3)} for k in acknowledged if rng.random() < 0.9}
    source |= {f"n{i}": {"q": 1} for i in range(120)}
    store.replace_snapshot("s.source", rows_for(source))
    store.replace_snapshot("s.acknowledged", rows_for(acknowledged))
    return source, acknowledged


def test_compare_snapshots_equals_diff_snapshot_and_stores_nothing(store):
    source, acknowledged = random_datasets(store)
    source_rows = [(k, h, p) for k, (h, p) in store.snapshot_records("s.source").items()]

    compared = store.compare_snapshots("s.source", "s.acknowledged")

    assert compared == store.diff_snapshot("s.acknowledged", source_rows)
    assert set(compared.new_keys) == source.keys() - acknowledged.keys()
    assert set(compared.removed_keys) == acknowledged.keys() - source.keys()
    assert set(compared.changed_keys) == {k for k in source.keys() & acknowledged.keys()
                                          if source[k] != acknowledged[k]}
    assert store.snapshot_keys("s.acknowledged") == set(acknowledged)
    assert store.compare_snapshots("s.source", "s.nothing").new == len(source)


def test_pending_changes_are_new_and_changed_rows_with_their_hashes(store):
    source, acknowledged = random_datasets(store)
    hashes = {key: content_hash for key, content_hash, _ in rows_for(source)}
    expected = sorted((k, hashes[k]) for k in source if k not in acknowledged or source[k] != acknowledged[k])

    assert store.pending_changes("s.source", "s.acknowledged") == expected
    store.upsert_snapshot("s.acknowledged", [(k, h, None) for k, h in expected[:10]])  # processed: drop out
    assert store.pending_changes("s.source", "s.acknowledged") == expected[10:]
    assert store.pending_changes("s.nothing", "s.acknowledged") == []


def test_snapshot_records_and_hashes(store):
    rows = rows_for({BIG_ID: {"v": 1}, "b": {"v": 2}})
    store.replace_snapshot("d", rows)
    assert store.snapshot_records("d") == {key: (h, p) for key, h, p in rows}
    assert store.snapshot_records("d", [int(BIG_ID), "missing"]) == {BIG_ID: (rows[0][1], rows[0][2])}
    assert store.snapshot_hashes("d") == {key: h for key, h, _ in rows}
    assert store.snapshot_hashes("d", ["b", "b"]) == {"b": rows[1][1]}
    assert store.snapshot_records("d", []) == {} and store.snapshot_rows("d", []) == {}
    with pytest.raises(TypeError, match="17-digit"):
        store.snapshot_hashes("d", [float(BIG_ID)])


# --------------------------------------------------------------------------------------------------
# Cursors and mappings


def test_cursors(store):
    assert store.get_cursor("shop.orders_since") is None
    store.set_cursor("shop.orders_since", "2026-01-01T00:00:00Z")
    store.set_cursor("shop.orders_since", "2026-01-02T00:00:00Z")
    store.set_cursor("other.x", "1")
    assert store.get_cursor("shop.orders_since") == "2026-01-02T00:00:00Z"
    assert store.cursors("shop.") == {"shop.orders_since": "2026-01-02T00:00:00Z"}
    with pytest.raises(TypeError):
        store.set_cursor("n", 5)  # type: ignore[arg-type]


def test_mappings_keep_17_digit_ids_exact(store):
    store.put_mapping("product", int(BIG_ID), 501, {"sku": "A-1"})
    store.put_mapping("product", "42", "502")
    store.put_mapping("order", "42", "9001")
    found = store.get_mapping("product", BIG_ID)
    assert found is not None
    assert (found.billbee_id, found.pulpo_id, found.extra) == (BIG_ID, "501", {"sku": "A-1"})
    assert found.updated_at.tzinfo is UTC
    assert store.get_mapping_by_pulpo("product", 501).billbee_id == BIG_ID
    assert store.get_mapping("product", "nope") is None
    assert store.mappings("product") == {BIG_ID: "501", "42": "502"}
    assert store.mappings("order") == {"42": "9001"}
    store.put_mapping("product", "42", "503")  # a re-created PULPO product replaces the mapping
    assert store.mappings("product")["42"] == "503"
    assert store.delete_mapping("product", "42") and not store.delete_mapping("product", "42")
    with pytest.raises(TypeError, match="17-digit"):
        store.put_mapping("product", float(BIG_ID), "1")


def test_bulk_mappings(store):
    written = store.put_mappings("product", [(str(i), str(1000 + i), None) for i in range(5_000)] +
                                 [("0", "1", {"again": True})])
    assert written == 5_000
    mapping = store.mappings("product")
    assert len(mapping) == 5_000 and mapping["0"] == "1" and mapping["4999"] == "5999"
    assert store.get_mapping("product", "0").extra == {"again": True}


def test_get_mappings_equals_get_mapping(store):
    store.put_mappings("product", [(int(BIG_ID), 501, {"sku": "A-1"}), ("42", "502", None)])
    store.put_mapping("order", "42", "9001")
    wanted = [BIG_ID, "42", "missing", BIG_ID]

    found = store.get_mappings("product", wanted)

    assert found == {key: store.get_mapping("product", key) for key in (BIG_ID, "42")}
    assert found[BIG_ID].pulpo_id == "501" and found["42"].extra is None
    assert store.get_mappings("product", [int(BIG_ID)]).keys() == {BIG_ID}
    assert store.get_mappings("order", wanted) == {"42": store.get_mapping("order", "42")}
    assert store.get_mappings("product", []) == {}
    with pytest.raises(TypeError, match="17-digit"):
        store.get_mappings("product", [float(BIG_ID)])


def test_get_mappings_by_pulpo_lists_every_billbee_id_most_recent_first(store):
    store.put_mapping("product", "old", "900")
    store.put_mapping("product", "new", "900")
    store.put_mappings("product", [("b", "800", None), ("a", "800", None)])  # one batch: same timestamp
    store.put_mapping("kit", "x", "900")

    found = store.get_mappings_by_pulpo("product", [900, "800", "777"])

    assert {pid: [m.billbee_id for m in ms] for pid, ms in found.items()} == \
        {"900": ["new", "old"], "800": ["a", "b"]}
    for pulpo_id in ("900", "800"):
        assert found[pulpo_id][0] == store.get_mapping_by_pulpo("product", pulpo_id)


def test_mappings_by_extra_finds_the_most_recent_mapping_per_value(store):
    store.put_mappings("product", [("1", "501", {"sku": "A"}), ("2", "502", {"sku": "B"}),
                                   ("9", "509", {"sku": 12345}), ("8", "508", None)])
    store.put_mapping("product", "3", "503", {"sku": "A"})  # later: wins for SKU A
    store.put_mappings("product", [("5", "505", {"sku": "T"}), ("4", "504", {"sku": "T"})])  # tie: by id
    store.put_mapping("kit", "7", "507", {"sku": "B"})

    found = store.mappings_by_extra("product", "sku", ["A", "B", "T", "12345", "none"])

    assert {value: m.billbee_id for value, m in found.items()} == {"A": "3", "B": "2", "T": "4", "12345": "9"}
    assert found["A"] == store.get_mapping("product", "3")
    assert store.mappings_by_extra("product", "sku", [12345])["12345"].pulpo_id == "509"
    assert store.mappings_by_extra("kit", "sku", ["A", "B"]).keys() == {"B"}
    assert store.mappings_by_extra("product", "name", ["A"]) == {}
    assert store.mappings_by_extra("product", "sku", []) == {}
    with pytest.raises(ValueError, match="identifiers"):
        store.mappings_by_extra("product", "sku') OR 1=1 --", ["A"])


# --------------------------------------------------------------------------------------------------
# Ledger and quarantine


def test_ledger_lifecycle(store):
    first = store.ledger_begin("order:1:create", "verkaufsauftraege", "create_order", {"order": BIG_ID})
    assert (first.status, first.attempts, first.previous_status) == ("pending", 1, None)
    assert first.request == {"order": BIG_ID} and first.created_at.tzinfo is UTC
    assert abs((datetime.now(UTC) - first.created_at).total_seconds()) < 60

    retry = store.ledger_begin("order:1:create", "verkaufsauftraege", "create_order", {"order": BIG_ID})
    assert (retry.status, retry.attempts, retry.previous_status) == ("pending", 2, "pending")
    assert retry.created_at == first.created_at

    done = store.ledger_finish("order:1:create", "done", {"http": 201}, remote_id=int(BIG_ID), message="ok")
    assert (done.status, done.remote_id, done.outcome, done.message) == ("done", BIG_ID, {"http": 201}, "ok")
    assert done.finished_at is not None and done.finished_at >= done.created_at
    assert store.ledger_get("order:1:create") == done
    again = store.ledger_begin("order:1:create", "verkaufsauftraege", "create_order", None)
    assert (again.previous_status, again.attempts) == ("done", 3)

    with pytest.raises(ValueError, match="status must be one of"):
        store.ledger_finish("order:1:create", "pending")
    with pytest.raises(KeyError):
        store.ledger_finish("unknown", "done")
    assert store.ledger_get("unknown") is None


def test_ledger_entries_filter(store):
    for index, (integration, status) in enumerate([("a", "done"), ("a", "failed"), ("b", "done"),
                                                   ("b", "attention"), ("b", "skipped")]):
        store.ledger_begin(f"k{index}", integration, "write", {"i": index})
        store.ledger_finish(f"k{index}", status)
    store.ledger_begin("k9", "a", "write", None)
    assert {e.key for e in store.ledger_entries(integration="a")} == {"k0", "k1", "k9"}
    assert {e.key for e in store.ledger_entries(status="done")} == {"k0", "k2"}
    assert [e.key for e in store.ledger_entries(integration="b", status="attention")] == ["k3"]
    assert store.ledger_entries(limit=1)[0].key == "k9", "most recent first"


def test_ledger_close_interrupted_closes_only_old_pending_entries_of_the_actions(store):
    store.ledger_begin("old-update", "a", "update", None)
    store.ledger_begin("old-create", "a", "create", None)
    store.ledger_begin("other-integration", "b", "update", None)
    store.ledger_begin("finished", "a", "update", None)
    store.ledger_finish("finished", "done")
    time.sleep(0.01)
    cutoff = datetime.now(UTC)
    store.ledger_begin("new-update", "a", "update", None)  # a run in flight beside the closing one
    assert store.ledger_close_interrupted("a", ["update"], cutoff, "superseded") == 1
    statuses = {e.key: (e.status, e.message) for e in store.ledger_entries()}
    assert statuses["old-update"] == ("failed", "superseded")
    assert statuses["old-create"][0] == statuses["other-integration"][0] == statuses["new-update"][0] == "pending"
    assert statuses["finished"][0] == "done"


def test_quarantine(store):
    first = store.quarantine_put("produkte", BIG_ID, "no SKU", {"id": int(BIG_ID)}, kind="product")
    assert (first.occurrences, first.record_key, first.payload) == (1, BIG_ID, {"id": int(BIG_ID)})
    time.sleep(0.01)
    second = store.quarantine_put("produkte", BIG_ID, "SKU empty", {"id": 2}, kind="product")
    assert (second.occurrences, second.reason, second.payload) == (2, "SKU empty", {"id": 2})
    assert second.first_seen == first.first_seen and second.last_seen > first.last_seen
    store.quarantine_put("lagerbestand", "S-1", "unknown SKU")
    assert [q.record_key for q in store.quarantine_list("produkte")] == [BIG_ID]
    assert len(store.quarantine_list()) == 2

    assert store.quarantine_resolve("produkte", BIG_ID) is True
    assert store.quarantine_resolve("produkte", BIG_ID) is False
    assert store.quarantine_list("produkte") == []
    resolved = store.quarantine_list("produkte", include_resolved=True)[0]
    assert resolved.resolved_at is not None

    reopened = store.quarantine_put("produkte", BIG_ID, "still no SKU", kind="product")
    assert reopened.resolved_at is None and reopened.occurrences == 3


def test_quarantine_sync_puts_current_and_resolves_the_rest(store):
    counts = store.quarantine_sync("produkte", "product", {"1": ("no SKU", {"id": 1}), "2": ("dup", None)})
    assert counts == {"open": 2, "new": 2, "resolved": 0}
    counts = store.quarantine_sync("produkte", "product", {"2": ("dup", None), "3": ("no SKU", None)})
    assert counts == {"open": 2, "new": 1, "resolved": 1}
    store.quarantine_put("produkte", "9", "other kind", kind="bundle")
    assert store.quarantine_sync("produkte", "product", {}) == {"open": 0, "new": 0, "resolved": 2}
    assert [(q.kind, q.record_key) for q in store.quarantine_list("produkte")] == [("bundle", "9")]
    assert {q.record_key: q.occurrences for q in store.quarantine_list(include_resolved=True)} == \
        {"1": 1, "2": 2, "3": 1, "9": 1}


def test_batched_ledger_equals_the_single_record_methods(store, tmp_path):
    batched = StateStore(tmp_path / "batched")
    starts = [("k1", "create", {"order": BIG_ID}), ("k2", "cancel", {"pulpo_id": "7"}), ("k3", "update", None)]
    steps = [
        ("begin", starts),
        ("begin", [("k1", "create", {"order": BIG_ID, "retry": True})]),
        ("finish", [("k2", "done", {"http": 201}, int(BIG_ID), "ok"), ("k3", "failed", None, None, "422")]),
        ("finish", [("k1", "attention", None, None, "shipped"), ("k2", "done", {"again": 1})]),  # keeps remote
        ("begin", [("k2", "cancel", None), ("k4", "create", {"n": 4})]),
    ]
    previous: dict[int, dict] = {}
    for step, items in steps:
        if step == "begin":
            single = {key: store.ledger_begin(key, "orders", action, request) for key, action, request in items}
            many = batched.ledger_begin_many("orders", items)
        else:
            single = {item[0]: store.ledger_finish(*item) for item in items}
            many = batched.ledger_finish_many(items)
        assert {k: untimed(e) for k, e in many.items()} == {k: untimed(e) for k, e in single.items()}, step
        if step == "begin":
            previous[len(previous)] = {k: (e.previous_status, e.attempts) for k, e in many.items()}
    assert previous == {0: {"k1": (None, 1), "k2": (None, 1), "k3": (None, 1)}, 1: {"k1": ("pending", 2)},
                        2: {"k2": ("done", 2), "k4": (None, 1)}}

    entries = {e.key: e for e in batched.ledger_entries()}
    assert {k: untimed(e) for k, e in entries.items()} == {e.key: untimed(e) for e in store.ledger_entries()}
    assert (entries["k2"].attempts, entries["k2"].remote_id, entries["k2"].status) == (2, BIG_ID, "pending")
    assert entries["k1"].request == {"order": BIG_ID, "retry": True} and entries["k1"].remote_id is None
    assert batched.ledger_get_many(["k1", "k3", "nope", "k1"]) == \
        {"k1": batched.ledger_get("k1"), "k3": batched.ledger_get("k3")}
    assert batched.ledger_begin_many("orders", []) == {} and batched.ledger_finish_many([]) == {}
    begun = batched.ledger_begin_many("orders", [LedgerStart("k5", "create")])["k5"]
    assert begun.created_at == begun.updated_at and begun.created_at.tzinfo is UTC
    assert abs((datetime.now(UTC) - begun.created_at).total_seconds()) < 60, "UTC, not local time"
    done = batched.ledger_finish_many([LedgerFinish("k5", "skipped")])["k5"]
    assert done.finished_at is not None and done.finished_at >= done.created_at


def test_a_refused_ledger_batch_records_nothing(store):
    store.ledger_begin_many("orders", [("a", "create", None), ("b", "create", None)])
    with pytest.raises(KeyError, match="'unknown'"):
        store.ledger_finish_many([("a", "done"), ("unknown", "done")])
    with pytest.raises(ValueError, match="status must be one of"):
        store.ledger_finish_many([("a", "done"), ("b", "pending")])
    with pytest.raises(ValueError, match="repeated ledger key 'a'"):
        store.ledger_finish_many([("a", "done"), ("a", "failed")])
    with pytest.raises(ValueError, match="repeated ledger key 'b'"):
        store.ledger_begin_many("orders", [("b", "create", None), ("b", "create", None)])
    assert {(e.key, e.status, e.attempts) for e in store.ledger_entries()} == {("a", "pending", 1),
                                                                              ("b", "pending", 1)}


def test_batched_quarantine_equals_the_single_record_methods(store, tmp_path):
    batched = StateStore(tmp_path / "batched")
    store.quarantine_put("orders", "a", "waiting for product X", {"n": 1}, kind="order")
    store.quarantine_put("orders", "b", "bad address", None, kind="order")
    store.quarantine_put("orders", int(BIG_ID), "rejected", {"id": BIG_ID}, kind="order")
    assert batched.quarantine_put_many("orders", "order", {
        "a": ("waiting for product X", {"n": 1}), "b": ("bad address", None),
        int(BIG_ID): ("rejected", {"id": BIG_ID})}) == 3
    store.quarantine_put("orders", "a", "waiting for product Y", {"n": 2}, kind="order")
    assert batched.quarantine_put_many("orders", "order", {"a": ("waiting for product Y", {"n": 2})}) == 0
    assert [store.quarantine_resolve("orders", key, kind="order") for key in ("b", "zz")] == [True, False]
    assert batched.quarantine_resolve_many("orders", ["b", "zz"], kind="order") == {"b"}
    store.quarantine_put("orders", "b", "bad address again", kind="order")
    assert batched.quarantine_put_many("orders", "order", {"b": ("bad address again", None)}) == 1  # reopened

    def everything(s: StateStore) -> dict:  # by key: one batch shares first_seen, so list order differs
        return {q.record_key: untimed(q) for q in s.quarantine_list(include_resolved=True)}

    assert everything(batched) == everything(store)
    assert {q.record_key: q.occurrences for q in batched.quarantine_list()} == {"a": 2, "b": 2, BIG_ID: 1}
    assert batched.quarantine_put_many("orders", "order", {}) == 0


def test_quarantine_open_keys_and_resolving_any_kind(store):
    store.quarantine_put_many("orders", "order", {"1": ("r", None), "2": ("r", None), "3": ("r", None)})
    store.quarantine_put_many("orders", "customer", {"1": ("r", None)})
    store.quarantine_put_many("stock", "order", {"9": ("r", None)})
    store.quarantine_resolve("orders", "3", kind="order")

    assert store.quarantine_open_keys("orders", kind="order") == {"1", "2"}
    assert store.quarantine_open_keys("orders") == {"1", "2"}
    assert store.quarantine_open_keys("orders", kind="order", record_keys=[2, "3", "9"]) == {"2"}
    assert store.quarantine_open_keys("orders", record_keys=[]) == set()
    assert store.quarantine_resolve_many("orders", ["1"]) == {"1"}, "no kind: every kind"
    assert store.quarantine_open_keys("orders", kind="customer") == set()
    assert store.quarantine_open_keys("stock") == {"9"}
    assert store.quarantine_resolve_many("orders", []) == set()


def test_batches_of_10000_take_one_transaction_each(store):
    count = 10_000
    keys = [str(10**16 + i) for i in range(count)]
    store.replace_snapshot("o.orders", [(k, f"h{i}", "{}") for i, k in enumerate(keys)])
    store.replace_snapshot("o.processed", [(k, f"h{i}", "{}") for i, k in enumerate(keys[:count // 2])])
    store.put_mappings("product", [(k, str(i), {"sku": f"S{i}"}) for i, k in enumerate(keys)])
    ledger_keys = [f"order:create:{k}" for k in keys]
    operations = {
        "pending_changes": lambda: store.pending_changes("o.orders", "o.processed"),
        "snapshot_records": lambda: store.snapshot_records("o.orders", keys),
        "get_mappings": lambda: store.get_mappings("product", keys),
        "get_mappings_by_pulpo": lambda: store.get_mappings_by_pulpo("product", [str(i) for i in range(count)]),
        "mappings_by_extra": lambda: store.mappings_by_extra("product", "sku", [f"S{i}" for i in range(count)]),
        "ledger_begin_many": lambda: store.ledger_begin_many("o", [(k, "create", {"k": k}) for k in ledger_keys]),
        "ledger_get_many": lambda: store.ledger_get_many(ledger_keys),
        "ledger_finish_many": lambda: store.ledger_finish_many([(k, "done", None, "1") for k in ledger_keys]),
        "quarantine_put_many": lambda: store.quarantine_put_many("o", "order", {k: ("r", None) for k in keys}),
        "quarantine_open_keys": lambda: store.quarantine_open_keys("o", kind="order", record_keys=keys),
        "quarantine_resolve_many": lambda: store.quarantine_resolve_many("o", keys, kind="order"),
    }
    sizes, seconds = {}, {}
    for name, operation in operations.items():
        started = time.perf_counter()
        result = operation()
        seconds[name] = round(time.perf_counter() - started, 3)
        sizes[name] = result if isinstance(result, int) else len(result)

    assert sizes == {name: count // 2 if name == "pending_changes" else count for name in operations}
    assert max(seconds.values()) < 2.0, f"10,000-record batches (s): {seconds}"
    assert store.summary("o")["ledger"]["done"] == count and store.quarantine_open_keys("o") == set()


def test_summary(store):
    store.ledger_begin("a1", "orders", "create", None)
    store.ledger_finish("a1", "done")
    store.ledger_begin("a2", "orders", "create", None)
    store.ledger_begin("b1", "stock", "update", None)
    store.ledger_finish("b1", "failed")
    store.quarantine_put("orders", "7", "bad address")
    store.set_cursor("orders.since", "x")
    store.set_cursor("stock.since", "y")
    store.replace_snapshot("orders.billbee_orders", rows_for({"1": {}}))
    store.put_mapping("order", "1", "2")

    overall = store.summary()
    assert overall["ledger"] == {"pending": 1, "done": 1, "failed": 1, "attention": 0, "skipped": 0}
    assert overall["quarantine_open"] == 1 and overall["mappings"] == {"order": 1}
    assert overall["last_write"].tzinfo is UTC
    orders = store.summary("orders")
    assert orders["ledger"] == {"pending": 1, "done": 1, "failed": 0, "attention": 0, "skipped": 0}
    assert orders["cursors"] == {"orders.since": "x"}
    assert orders["snapshots"] == {"orders.billbee_orders": 1}
    assert store.summary("stock")["quarantine_open"] == 0


# --------------------------------------------------------------------------------------------------
# Concurrency


WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from billbee_pulpo_pipeline.state import StateStore, snapshot_row

    home, worker, writes, start_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    while not start_file.exists():  # start together, so the writes really overlap
        time.sleep(0.005)
    store = StateStore(home)
    for i in range(writes):
        kind = i % 4
        if kind == 0:
            store.ledger_begin(f"w{worker}-{i}", f"integration{worker}", "write", {"i": i})
            store.ledger_finish(f"w{worker}-{i}", "done", {"i": i}, remote_id=str(i))
        elif kind == 1:
            store.set_cursor(f"integration{worker}.cursor", str(i))
        elif kind == 2:
            rows = [snapshot_row(f"{worker}-{j}", {"i": i, "j": j}) for j in range(i + 1)]
            store.replace_snapshot(f"integration{worker}.snapshot", rows)
        else:
            store.put_mapping("product", f"{worker}{i:05d}", str(i))
    print("ok")
""")


def test_concurrent_writers_in_separate_processes(tmp_path):
    home, start = tmp_path / "home", tmp_path / "start"
    workers, writes = 4, 100
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    processes = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(home), str(w), str(writes), str(start)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for w in range(workers)
    ]
    time.sleep(0.5)  # let every interpreter import before the start signal
    start.touch()
    results = [process.communicate(timeout=240) for process in processes]
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
        assert out.strip() == "ok" and "Traceback" not in err

    store = StateStore(home)
    entries = store.ledger_entries(status="done")
    assert len(entries) == workers * writes // 4
    last = {0: writes - 4, 1: writes - 3, 2: writes - 2, 3: writes - 1}
    for w in range(workers):
        assert {e.key for e in entries if e.integration == f"integration{w}"} == \
            {f"w{w}-{i}" for i in range(0, writes, 4)}
        assert store.get_cursor(f"integration{w}.cursor") == str(last[1])
        assert len(store.snapshot_keys(f"integration{w}.snapshot")) == last[2] + 1
    assert len(store.mappings("product")) == workers * writes // 4
    assert all(entry.attempts == 1 for entry in entries)


def test_threads_share_one_store(store):
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for i in range(25):
                store.ledger_begin(f"t{thread}-{i}", "threads", "write", None)
                store.set_cursor(f"threads.t{thread}", str(i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.ledger_entries(integration="threads")) == 100
    assert store.cursors("threads.") == {f"threads.t{t}": "24" for t in range(4)}


def test_waits_for_a_foreign_duckdb_lock_then_succeeds(store):
    store.set_cursor("a", "1")
    store.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time\nconn = duckdb.connect({str(store.path)!r})\n"
         "print('held', flush=True)\ntime.sleep(1.5)\nconn.close()"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        store.set_cursor("a", "2")  # DuckDB refuses while the other process holds the file: retried
        waited = time.perf_counter() - started
    finally:
        holder.wait(timeout=30)
    assert store.get_cursor("a") == "2"
    assert waited > 0.5


def test_busy_lock_beyond_the_timeout_is_a_clear_error(tmp_path):
    store = StateStore(tmp_path, timeout=0.3)
    store.set_cursor("a", "1")
    store.close()
    with FileLock(str(store.path) + ".lock"), pytest.raises(StateStoreError, match="busy"):
        store.get_cursor("a")
    assert store.get_cursor("a") == "1"


def test_upsert_can_refresh_the_payload_of_rows_whose_hash_is_unchanged(store: StateStore) -> None:
    store.upsert_snapshot("orders", [("1", "h1", '{"v": 1}'), ("2", "h2", '{"v": 1}')])
    kept = store.upsert_snapshot("orders", [("1", "h1", '{"v": 2}')])
    assert (kept.new, kept.changed, kept.unchanged) == (0, 0, 1)
    assert store.snapshot_rows("orders", ["1"]) == {"1": '{"v": 1}'}  # by default the stored payload stays
    refreshed = store.upsert_snapshot("orders", [("1", "h1", '{"v": 2}'), ("3", "h3", "{}")], refresh_payloads=True)
    assert (refreshed.new, refreshed.changed, refreshed.unchanged) == (1, 0, 1)
    assert store.snapshot_rows("orders") == {"1": '{"v": 2}', "2": '{"v": 1}', "3": "{}"}
    assert store.snapshot_hashes("orders") == {"1": "h1", "2": "h2", "3": "h3"}


def test_hash_prefixes_are_the_leading_hex_digits_of_numeric_keys_as_ints(store: StateStore) -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    store.upsert_snapshot("p", [("30000000000000697", sha, "{}"), ("sku-1", sha, "{}"), ("7", "short", "{}")])
    assert store.snapshot_hash_prefixes("p") == {30000000000000697: int(sha[:15], 16)}
    assert store.snapshot_hash_prefixes("p", hex_digits=4) == {30000000000000697: int(sha[:4], 16)}
    with pytest.raises(ValueError, match="hex_digits"):
        store.snapshot_hash_prefixes("p", hex_digits=16)
