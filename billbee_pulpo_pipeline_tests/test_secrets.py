"""No credential value appears in anything the product writes, after a chaos run of all six integrations.

One scenario runs, against the session sandboxes and with a persistent Dagster instance (compute logs on
disk), every integration type through Dagster `materialize` (faults on: 429 bursts, 5xx HTML pages, slow
answers, 3-second PULPO tokens) and through the CLI (`sync --json`, `check`), plus failing runs (a wrong
password, an unreachable host) so exception texts exist. Then everything written is scanned as bytes for
every secret and the encodings a header or form could carry it in (base64 of `user:password`, URL quoting).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import sqlite3
import stat
import subprocess
import sys
import urllib.parse
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient
from billbee_pulpo_pipeline.clients.http import check_base_url
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.config import ConfigError, load_config
from billbee_pulpo_pipeline.operations import run_sync
from billbee_pulpo_pipeline.sandboxes import credentials as creds
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT

# Wrong passwords with characters that URL-quoting and base64 change, so every encoding is searched.
WRONG_BILLBEE_PASSWORD = "wrong-Zebra+4711/pw="
WRONG_PULPO_PASSWORD = "wrong-Okapi&0815 pw"

# A second Billbee credential (same account) lets `shipments` run beside `shipping_labels`, which the
# loader refuses for one credential pair: so one config holds all six integration types.
SECOND_SHOP = """\
  - name: billbee-shop-2
    type: billbee
    base_url: ${BILLBEE_BASE_URL}
    username: ${BILLBEE_USERNAME}
    api_password: ${BILLBEE_API_PASSWORD}
    api_key: ${BILLBEE_API_KEY}
"""
SHIPMENTS = """\
  - name: Erzeuge Sendungen
    type: shipments
    source: pulpo-wms
    target: billbee-shop-2
"""
ALL_SIX = ["Produkte", "Verkaufsaufträge", "Status updates", "Lagerbestand", "Versandetiketten",
           "Erzeuge Sendungen"]

DAGSTER_YAML = """\
compute_logs:
  module: dagster._core.storage.local_compute_log_manager
  class: LocalComputeLogManager
  config:
    base_dir: {base_dir}
telemetry:
  enabled: false
"""


def six_type_config(path: Path) -> Path:
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    text = text.replace("integrations:\n", SECOND_SHOP + "integrations:\n", 1) + SHIPMENTS
    path.write_text(text, encoding="utf-8")
    return path


def encodings(value: str) -> set[bytes]:
    """The forms a secret can take on the wire or in a text: raw, URL-quoted, base64 (also urlsafe)."""
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value),
             base64.b64encode(value.encode()).decode(), base64.urlsafe_b64encode(value.encode()).decode()}
    forms |= {form.rstrip("=") for form in forms if len(form.rstrip("=")) >= 8}
    return {form.encode() for form in forms}


def secret_needles(tokens: Iterable[str]) -> dict[bytes, str]:
    """Every byte string that would reveal a secret, with a name for the failure message."""
    named = {
        "Billbee API password": creds.BILLBEE_API_PASSWORD,
        "Billbee API key": creds.BILLBEE_API_KEY,
        "PULPO password": creds.PULPO_PASSWORD,
        "wrong Billbee password": WRONG_BILLBEE_PASSWORD,
        "wrong PULPO password": WRONG_PULPO_PASSWORD,
        "Billbee basic auth": f"{creds.BILLBEE_USERNAME}:{creds.BILLBEE_API_PASSWORD}",
        "wrong Billbee basic auth": f"{creds.BILLBEE_USERNAME}:{WRONG_BILLBEE_PASSWORD}",
    }
    named |= {f"PULPO token …{token[-6:]}": token for token in tokens}
    needles: dict[bytes, str] = {}
    for name, value in named.items():
        for form in encodings(value):
            needles[form] = name
    # The token's signature alone also identifies it (an excerpt could cut the header off).
    for token in tokens:
        needles[token.rsplit(".", 1)[-1].encode()] = f"PULPO token signature …{token[-6:]}"
    return needles


def leaks_in(data: bytes, needles: dict[bytes, str], token_header: bytes | None) -> list[str]:
    found = [name for needle, name in needles.items() if needle in data]
    if token_header and token_header in data:  # any token the sandbox issued, also ones we never saw
        found.append("a PULPO access token (JWT header)")
    return sorted(set(found))


def files_under(root: Path) -> Iterator[Path]:
    yield from (p for p in sorted(root.rglob("*")) if p.is_file())


def token_files(bpp_home: Path) -> list[Path]:
    return [p for p in (bpp_home / "tokens").glob("pulpo-token-*.json")]


def harvest_tokens(bpp_home: Path, tokens: set[str]) -> None:
    for path in token_files(bpp_home):
        with contextlib.suppress(OSError, ValueError, KeyError):  # a file being replaced right now
            tokens.add(json.loads(path.read_text())["access_token"])


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", *args], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, timeout=timeout)


def duckdb_text(path: Path) -> bytes:
    """Every text value of every table: DuckDB compresses strings on disk, so bytes alone can miss them."""
    out: list[str] = []
    with duckdb.connect(str(path), read_only=True) as db:
        tables = db.execute("select table_schema, table_name from information_schema.tables").fetchall()
        for schema, table in tables:
            rows = db.execute(f'select * from "{schema}"."{table}"').fetchall()
            out.extend(repr(row) for row in rows)
    return "\n".join(out).encode()


def sqlite_text(path: Path) -> tuple[bytes, int]:
    """Every cell of every table, zlib blobs inflated: Dagster stores job and plan snapshots compressed."""
    out: list[bytes] = []
    inflated = 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = [row[0] for row in db.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            for row in db.execute(f'select * from "{table}"'):
                for cell in row:
                    if isinstance(cell, bytes):
                        try:
                            cell = zlib.decompress(cell)
                            inflated += 1
                        except zlib.error:
                            pass
                    out.append(cell if isinstance(cell, bytes) else str(cell).encode())
    return b"\n".join(out), inflated


@pytest.fixture
def chaos(sandbox):
    yield sandbox
    for system in ("billbee", "pulpo"):
        sandbox.set_faults(system, rate_429=0.0, rate_5xx=0.0, slow_rate=0.0, slow_seconds=0.0,
                           token_ttl_seconds=None)
    sandbox.control("POST", "pulpo", "auth/unban")  # the next test starts with a clean token budget


def test_no_secret_in_anything_written_after_a_chaos_run(bpp_env, chaos, tmp_path, monkeypatch):
    sandbox = chaos
    bpp_home = Path(bpp_env["BPP_HOME"])
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML.format(base_dir=dagster_home / "compute_logs"))
    config_path = six_type_config(tmp_path / "integrations.yaml")
    # An install live for two days (partitions start at go-live, issue 11): the first sync reads the 24
    # windows of the lookback, enough Billbee calls for the faults to hit.
    went_live = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    (bpp_home / "go_live").mkdir(parents=True, exist_ok=True)
    (bpp_home / "go_live" / "verkaufsauftraege").write_text(went_live.isoformat() + "\n")
    env = {**bpp_env, "DAGSTER_HOME": str(dagster_home), "BPP_CONFIG": str(config_path)}
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("BPP_CONFIG", str(config_path))
    for system in ("billbee", "pulpo"):
        sandbox.reset_stats(system)

    # Client loggers at DEBUG into a file that is scanned too.
    log_file = tmp_path / "client.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    package_logger = logging.getLogger("billbee_pulpo_pipeline")
    previous_level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.DEBUG)

    tokens: set[str] = set()
    outputs: dict[str, bytes] = {}
    instance = dg.DagsterInstance.get()
    try:
        # 1. Chaos through Dagster `materialize`: every integration type, faults on.
        sandbox.set_faults("billbee", rate_429=0.08, retry_after_seconds=1, rate_5xx=0.08, html_bodies=True,
                           slow_rate=0.03, slow_seconds=0.3)
        sandbox.set_faults("pulpo", rate_5xx=0.05, html_bodies=True, token_ttl_seconds=3)
        config = load_config(config_path)
        summaries = run_sync(config, bpp_home, instance=instance)
        harvest_tokens(bpp_home, tokens)
        assert [s.name for s in summaries] == ALL_SIX
        assert sandbox.stats("billbee")["fault_429"] + sandbox.stats("billbee")["fault_5xx"] > 0
        assert sandbox.stats("pulpo")["token_requests"] >= 1
        sandbox_logs = {system: sandbox.requests(system, limit=5000) for system in ("billbee", "pulpo")}

        # 2. Faults off: the CLI, as a person runs it, into the same persistent instance. Short-lived tokens
        # may have tripped the sandbox's token-storm ban (as PULPO would): lift it for the runs that follow.
        for system in ("billbee", "pulpo"):
            sandbox.set_faults(system, rate_429=0.0, rate_5xx=0.0, slow_rate=0.0, token_ttl_seconds=None)
        sandbox.control("POST", "pulpo", "auth/unban")
        synced = cli("sync", "--json", env=env)
        outputs["cli sync"] = synced.stdout + synced.stderr
        document = json.loads(synced.stdout)
        assert [i["name"] for i in document["integrations"]] == ALL_SIX
        checked = cli("check", env=env)
        outputs["cli check"] = checked.stdout + checked.stderr
        assert checked.returncode == 0, checked.stdout
        harvest_tokens(bpp_home, tokens)

        # 3. Failing runs: wrong passwords and an unreachable host, in process and through the CLI.
        wrong = {"BILLBEE_API_PASSWORD": WRONG_BILLBEE_PASSWORD, "PULPO_PASSWORD": WRONG_PULPO_PASSWORD}
        for key, value in wrong.items():
            monkeypatch.setenv(key, value)
        for token_file in token_files(bpp_home):  # else the cached token would hide the wrong password
            token_file.unlink()
        failed = run_sync(load_config(config_path), bpp_home, names=["Produkte", "Lagerbestand"],
                          instance=instance)
        assert all(s.status != "success" for s in failed), failed
        for key in wrong:
            monkeypatch.setenv(key, bpp_env[key])
        bad_env = {**env, **wrong}
        for name, args in {"cli check wrong": ("check",), "cli sync wrong": ("sync", "--json", "Lagerbestand")}.items():
            result = cli(*args, env=bad_env)
            assert result.returncode != 0
            outputs[name] = result.stdout + result.stderr
        unreachable = {**env, "PULPO_BASE_URL": "http://127.0.0.1:9/api/v1"}
        result = cli("sync", "--json", "Versandetiketten", env=unreachable)
        assert result.returncode != 0
        outputs["cli sync unreachable"] = result.stdout + result.stderr
        assert b"authentication failed" in outputs["cli check wrong"]
        recovered = cli("check", env=env)  # the right password again: a token is cached once more
        outputs["cli check recovered"] = recovered.stdout + recovered.stderr
        assert recovered.returncode == 0, recovered.stdout

        runs = instance.get_runs()
        run_texts = {f"run config {run.run_id[:8]}": json.dumps(run.run_config, default=str).encode()
                     for run in runs}
        failures, failure_texts = 0, ""
        for run in runs:
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                text = record.user_message or ""
                if event is not None:
                    text += repr(event.event_specific_data)
                    if event.is_step_failure or event.is_run_failure:
                        failures += 1
                        failure_texts += text
                run_texts[f"event log {run.run_id[:8]}"] = run_texts.get(f"event log {run.run_id[:8]}", b"") + \
                    text.encode()
        assert failures >= 2, "the failing runs recorded their exceptions"
        assert "refused the credentials" in failure_texts or "authentication" in failure_texts.lower()
        for system in ("billbee", "pulpo"):
            sandbox_logs[system] += sandbox.requests(system, limit=5000)
    finally:
        instance.dispose()
        package_logger.removeHandler(handler)
        handler.close()
        package_logger.setLevel(previous_level)

    # The token cache is the one file meant to hold a token: it must be private, and it is the only exclusion.
    cache_files = token_files(bpp_home)
    assert cache_files, "a PULPO token was cached"
    for path in cache_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    harvest_tokens(bpp_home, tokens)
    assert len(tokens) >= 2, "short token lifetimes rotated the PULPO token"
    token_header = next(iter(tokens)).split(".", 1)[0].encode()
    needles = secret_needles(tokens)

    leaks: dict[str, list[str]] = {}
    scanned = 0

    def scan(label: str, data: bytes) -> None:
        nonlocal scanned
        scanned += 1
        found = leaks_in(data, needles, token_header)
        if found:
            leaks[label] = found

    for path in files_under(bpp_home):
        if path not in cache_files:
            scan(str(path.relative_to(bpp_home)), path.read_bytes())
    assert (bpp_home / "state.duckdb").is_file()
    scan("state.duckdb (SQL)", duckdb_text(bpp_home / "state.duckdb"))
    compute_logs = list(files_under(dagster_home / "compute_logs"))
    inflated = 0
    for path in files_under(dagster_home):
        scan(f"DAGSTER_HOME/{path.relative_to(dagster_home)}", path.read_bytes())
        if path.suffix == ".db":
            text, blobs = sqlite_text(path)
            inflated += blobs
            scan(f"DAGSTER_HOME/{path.relative_to(dagster_home)} (SQL, inflated)", text)
    for label, data in {**outputs, **run_texts}.items():
        scan(label, data)
    scan("client debug log", log_file.read_bytes())
    for system, entries in sandbox_logs.items():
        scan(f"{system} sandbox request log", json.dumps(entries).encode())
    # The sandbox logs the token request's body with the password redacted (checked, not assumed).
    grants = [e for e in sandbox_logs["pulpo"] if e["method"] == "POST" and e["path"].endswith("/auth")]
    assert grants and all(e["body"]["password"] == "***" for e in grants if not e["simulator"])

    assert any(p.suffix == ".db" for p in files_under(dagster_home)), "the event log was on disk"
    assert compute_logs, "compute logs were captured on disk"
    assert inflated > 0, "the compressed job snapshots were read"
    assert scanned > 20
    assert not leaks, leaks


def test_the_scanner_finds_every_encoding():
    """The scan would see a leak: raw, in basic-auth base64, URL-quoted, and any sandbox token."""
    token = "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXh5eg"
    needles = secret_needles([token])
    basic = base64.b64encode(f"{creds.BILLBEE_USERNAME}:{creds.BILLBEE_API_PASSWORD}".encode())
    assert leaks_in(b"Authorization: Basic " + basic, needles, None) == ["Billbee basic auth"]
    assert "wrong Billbee password" in leaks_in(b"password=wrong-Zebra%2B4711%2Fpw%3D", needles, None)
    assert "wrong PULPO password" in leaks_in(b"password=wrong-Okapi%260815+pw", needles, None)
    assert leaks_in(b"Bearer " + token.encode(), needles, None)
    assert leaks_in(b"eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.other", {}, token.split(".")[0].encode())
    assert leaks_in(b"nothing to see", needles, token.split(".")[0].encode()) == []


def test_the_database_readers_see_compressed_text(tmp_path):
    """A secret inside a DuckDB table or a zlib blob in SQLite (as Dagster stores snapshots) is found."""
    secret = creds.PULPO_PASSWORD * 50  # long and repetitive: DuckDB compresses it on disk
    with duckdb.connect(str(tmp_path / "s.duckdb")) as db:
        db.execute("create table t (v varchar)")
        db.execute("insert into t values (?)", [secret])
    assert creds.PULPO_PASSWORD.encode() in duckdb_text(tmp_path / "s.duckdb")
    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as db:
        db.execute("create table snapshots (body blob)")
        db.execute("insert into snapshots values (?)", [zlib.compress(secret.encode())])
        db.commit()
    raw = (tmp_path / "s.db").read_bytes()
    text, inflated = sqlite_text(tmp_path / "s.db")
    assert creds.PULPO_PASSWORD.encode() not in raw  # invisible to a byte scan ...
    assert inflated == 1 and creds.PULPO_PASSWORD.encode() in text  # ... found once inflated


# --------------------------------------------------------------------------------------------------
# Only https leaves the machine (loopback http excepted)


@pytest.mark.parametrize("url", ["http://api.billbee.io/api/v1", "http://10.0.0.5/api/v1", "http://0.0.0.0:80/x",
                                 "http://127.evil.example.com/api/v1", "http://localhost.example.com/api"])
def test_config_refuses_plain_http_to_a_non_loopback_host(tmp_path, bpp_env, url):
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8").replace("${PULPO_BASE_URL:-https://eu.pulpo.co/api/v1}", url)
    path = tmp_path / "integrations.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "pulpo-wms" in message and "base_url" in message and "https://" in message
    assert creds.PULPO_PASSWORD not in message


@pytest.mark.parametrize("url", ["http://127.0.0.1:8002/api/v1", "http://localhost:8002/api/v1",
                                 "http://[::1]:8002/api/v1", "https://eu.pulpo.co/api/v1"])
def test_config_accepts_https_and_loopback_http(tmp_path, bpp_env, url):
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8").replace("${PULPO_BASE_URL:-https://eu.pulpo.co/api/v1}", url)
    path = tmp_path / "integrations.yaml"
    path.write_text(text, encoding="utf-8")
    pulpo = next(c for c in load_config(path).credentials if c.name == "pulpo-wms")
    assert pulpo.base_url == url


def test_clients_refuse_to_send_credentials_over_plain_http(tmp_path):
    url = "http://api.example.com/api/v1"
    assert "https://" in (check_base_url(url) or "")
    with pytest.raises(ValueError) as billbee_error:
        BillbeeClient(url, creds.BILLBEE_USERNAME, creds.BILLBEE_API_PASSWORD, creds.BILLBEE_API_KEY,
                      pacer_dir=tmp_path)
    with pytest.raises(ValueError) as pulpo_error:
        PulpoClient(url, creds.PULPO_USERNAME, creds.PULPO_PASSWORD, warehouse_id=1, token_dir=tmp_path)
    for error in (billbee_error, pulpo_error):
        assert "https://" in str(error.value)
        for secret in (creds.BILLBEE_API_PASSWORD, creds.BILLBEE_API_KEY, creds.PULPO_PASSWORD):
            assert secret not in str(error.value)
    assert not os.listdir(tmp_path) or not list(tmp_path.glob("pulpo-token-*")), "no token was fetched"
    assert re.search(r"loopback", check_base_url(url) or "")
