"""The production profile (deploy/) for real: a PostgreSQL server from the Debian packages on loopback,
Dagster's storage in it through the unchanged `deploy/dagster.yaml`, and syncs against the sandboxes:
`billbee-pulpo sync` in process, then the code location as a gRPC server with the daemon and the
webserver as processes of their own (`deploy/workspace.yaml`), the daemon launching a queued run.

Needs the `postgresql` package (CI installs it). Without it the tests skip, saying why; under `CI=true`
a missing server fails them instead.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg2  # comes with dagster-postgres
import pytest
import requests
from dagster._core.events import DagsterEventType

from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline_tests.conftest import PROJECT_ROOT, SANDBOX_ORDERS, SANDBOX_PRODUCTS

DEPLOY = PROJECT_ROOT / "deploy"
# Stored under their legacy names (PIPELINE_SUCCESS, ...).
RUN_ENQUEUED, RUN_STARTING, RUN_SUCCESS = (DagsterEventType.RUN_ENQUEUED.value, DagsterEventType.RUN_STARTING.value,
                                           DagsterEventType.RUN_SUCCESS.value)
PRODUCTS = 40
SANDBOX_SECRETS = (credentials.BILLBEE_API_PASSWORD, credentials.BILLBEE_API_KEY, credentials.PULPO_PASSWORD)


def postgres_bin() -> Path:
    """The newest PostgreSQL server binaries of the Debian packages (15 on bookworm)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        reason = "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason} (CI must run this test)")
        pytest.skip(reason)
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Postgres:
    port: int
    user: str
    password: str
    database: str

    def env(self) -> dict[str, str]:
        """What deploy/dagster.yaml reads."""
        return {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USER": self.user,
                "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_DB": self.database}

    def query(self, sql: str, *params: object) -> list[tuple]:
        with psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                              dbname=self.database, connect_timeout=5) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        connection.close()
        return rows


class PostgresServer:
    """initdb + pg_ctl in a temporary directory; as the `postgres` system user when we are root (the
    server refuses to run as root). Password authentication on 127.0.0.1 only, no Unix socket."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="bpp-pg-"))  # not under pytest's root-only tmp tree
        self.data = self.root / "data"
        self.port = free_port()
        self.admin_password = secrets.token_urlsafe(16)

    def _as_server_user(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def _run(self, *argv: str) -> None:
        result = subprocess.run(self._as_server_user(*argv), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{argv[0]} failed:\n{result.stdout}\n{result.stderr}\n{self.log()}"

    def log(self) -> str:
        log = self.root / "server.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def start(self) -> None:
        password_file = self.root / "admin.pw"
        password_file.write_text(self.admin_password)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(password_file, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "bpp_admin", f"--pwfile={password_file}",
                  "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--encoding=UTF8", "--no-sync")
        password_file.unlink()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    def create_database(self, name: str, user: str, password: str) -> Postgres:
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="bpp_admin",
                                      password=self.admin_password, dbname="postgres", connect_timeout=5)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE ROLE {user} LOGIN PASSWORD %s", (password,))
            cursor.execute(f"CREATE DATABASE {name} OWNER {user}")
        connection.close()
        return Postgres(self.port, user, password, name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self._as_server_user(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                                "-w", "stop"), capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = PostgresServer()
    try:
        server.start()
        yield server.create_database("dagster", "dagster", secrets.token_urlsafe(18))
    finally:
        server.stop()


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME holding the production dagster.yaml exactly as shipped."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    return home


@pytest.fixture
def world(sandbox):
    """A small shop and an empty PULPO tenant, so every product the sync sends is a visible write."""
    sandbox.reset("billbee", products=PRODUCTS, orders=10)
    sandbox.reset("pulpo", products=0)
    yield sandbox
    sandbox.reset("billbee", products=SANDBOX_PRODUCTS, orders=SANDBOX_ORDERS)
    sandbox.reset("pulpo", products=0)


def production_env(bpp_env: dict[str, str], postgres: Postgres, dagster_home: Path) -> dict[str, str]:
    return {**bpp_env, **postgres.env(), "DAGSTER_HOME": str(dagster_home)}


def pulpo_skus(sandbox, tmp_path: Path) -> set[str]:
    client = PulpoClient(sandbox.pulpo_url, credentials.PULPO_USERNAME, credentials.PULPO_PASSWORD,
                         warehouse_id=1, token_dir=tmp_path / "test-tokens")
    return {product.sku for product in client.iter_products()}


def asset_keys(postgres: Postgres) -> set[tuple[str, ...]]:
    return {tuple(json.loads(key)) for (key,) in postgres.query("SELECT asset_key FROM asset_keys")}


def events_of(postgres: Postgres, run_id: str) -> dict[str, int]:
    rows = postgres.query("SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = %s "
                          "AND dagster_event_type IS NOT NULL GROUP BY 1", run_id)
    return dict(rows)


def assert_no_secret_stored(postgres: Postgres, *texts: str) -> None:
    """Neither the storage password nor an API secret in run records, tags or the event log."""
    for secret in (postgres.password, *SANDBOX_SECRETS):
        for text in texts:
            assert secret not in text
        hits = postgres.query(
            "SELECT (SELECT count(*) FROM runs WHERE strpos(run_body, %s) > 0)"
            " + (SELECT count(*) FROM run_tags WHERE strpos(value, %s) > 0)"
            " + (SELECT count(*) FROM event_logs WHERE strpos(event, %s) > 0)", *[secret] * 3)
        assert hits == [(0,)], f"a secret ({secret[:3]}…) is stored in PostgreSQL"


def test_cli_sync_keeps_runs_events_and_materializations_in_postgres(world, bpp_env, postgres, dagster_home,
                                                                     tmp_path):
    env = production_env(bpp_env, postgres, dagster_home)
    result = subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "--json", "Produkte",
                             "Lagerbestand"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    [products, stock] = json.loads(result.stdout)["integrations"]
    assert products["status"] == "success" and products["written"] > 0
    assert stock["status"] == "success"

    # The sync wrote to PULPO: every product it reports written is there.
    assert len(pulpo_skus(world, tmp_path)) == products["written"]

    # Dagster kept the run, its events and the materializations in PostgreSQL ...
    assert postgres.query("SELECT status FROM runs WHERE run_id = %s", products["run_id"]) == [("SUCCESS",)]
    events = events_of(postgres, products["run_id"])
    assert events.get(RUN_SUCCESS) == 1
    assert events.get("ASSET_MATERIALIZATION", 0) >= 2  # the Billbee snapshot and the PULPO write
    assert events.get("ASSET_CHECK_EVALUATION", 0) >= 1
    assert {("produkte", "billbee_products"), ("produkte", "pulpo_products")} <= asset_keys(postgres)
    # ... and nowhere else: no SQLite run storage was created beside dagster.yaml.
    assert not list(dagster_home.rglob("*.db"))
    # The stock writer claimed its pool's slot through this instance: the pool got `default_limit` 1.
    assert postgres.query("SELECT concurrency_key, \"limit\" FROM concurrency_limits") == [
        ("lagerbestand_billbee_stock", 1)]
    assert postgres.query("SELECT count(*) FROM concurrency_slots WHERE run_id IS NOT NULL") == [(0,)]  # released
    assert_no_secret_stored(postgres, result.stdout, result.stderr)


def test_instance_shows_the_production_settings_without_the_password(bpp_env, postgres, dagster_home, monkeypatch):
    env = production_env(bpp_env, postgres, dagster_home)
    info = subprocess.run([str(Path(sys.executable).parent / "dagster"), "instance", "info"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr[-3000:]
    for storage in ("run_storage: PostgresRunStorage", "event_log_storage: PostgresEventLogStorage",
                    "schedule_storage: PostgresScheduleStorage"):
        assert storage in info.stdout
    assert postgres.password not in info.stdout + info.stderr

    # The settings load as meant: one slot per pool the write stages declare, the run queue, retries.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with dg.DagsterInstance.get() as instance:
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.pool_config.pool_granularity.value == "op"
        assert concurrency.run_queue_config.max_concurrent_runs == 6
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_monitoring_enabled and instance.telemetry_enabled is False
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, cwd=PROJECT_ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for_grpc_server(port: int, server: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"code server exited:\n{log.read_text(errors='replace')[-3000:]}"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"code server did not listen within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


RUN_QUERY = """query ($id: ID!) {
  runOrError(runId: $id) { __typename ... on Run { status } }
  workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } }
}"""


def webserver_answer(url: str, run_id: str, webserver: subprocess.Popen[bytes], log: Path,
                     timeout: float = 120) -> dict:
    """The webserver's view of the run and the code location, once it answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert webserver.poll() is None, f"webserver exited:\n{log.read_text(errors='replace')[-3000:]}"
        try:
            response = requests.post(f"{url}/graphql", json={"query": RUN_QUERY, "variables": {"id": run_id}},
                                     timeout=10)
            if response.status_code == 200:
                return response.json()["data"]
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"webserver did not answer within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def test_daemon_and_webserver_run_the_code_location_from_postgres(world, bpp_env, postgres, dagster_home, tmp_path):
    """The process layout of deploy/README.md: the code location as a gRPC server, the daemon and the
    webserver as processes of their own (loading it through deploy/workspace.yaml), PostgreSQL between
    them. `dagster job launch` only queues a run; the daemon takes it from PostgreSQL and the
    DefaultRunLauncher runs it in the code location; the webserver shows it."""
    port, web_port = free_port(), free_port()
    env = {**production_env(bpp_env, postgres, dagster_home), "BPP_CODE_SERVER_HOST": "127.0.0.1",
           "BPP_CODE_SERVER_PORT": str(port), "BPP_HOME": str(tmp_path / "bpp-daemon")}
    tools = Path(sys.executable).parent
    workspace = str(DEPLOY / "workspace.yaml")
    logs = {name: tmp_path / f"{name}.log" for name in ("code-server", "daemon", "webserver")}
    processes = [start([str(tools / "dagster"), "code-server", "start", "-m", "billbee_pulpo_pipeline.definitions",
                        "-h", "127.0.0.1", "-p", str(port)], env, logs["code-server"])]
    try:
        wait_for_grpc_server(port, processes[0], logs["code-server"])
        daemon = start([str(tools / "dagster-daemon"), "run", "-w", workspace], env, logs["daemon"])
        webserver = start([str(tools / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port), "-w", workspace],
                          env, logs["webserver"])
        processes += [daemon, webserver]
        launched = subprocess.run([str(tools / "dagster"), "job", "launch", "-w", workspace, "-j", "produkte_job"],
                                  env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-3000:]
        [(run_id,)] = postgres.query("SELECT run_id FROM runs WHERE pipeline_name = 'produkte_job'")

        status, deadline = None, time.monotonic() + 150
        while time.monotonic() < deadline:
            [(status,)] = postgres.query("SELECT status FROM runs WHERE run_id = %s", run_id)
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            assert daemon.poll() is None, logs["daemon"].read_text(errors="replace")[-3000:]
            time.sleep(1)
        tails = "\n".join(f"{name}:\n{log.read_text(errors='replace')[-2000:]}" for name, log in logs.items())
        assert status == "SUCCESS", f"run {run_id} ended {status}\n{tails}"
        seen = webserver_answer(f"http://127.0.0.1:{web_port}", run_id, webserver, logs["webserver"])
    finally:
        for process in reversed(processes):
            stop(process)

    assert seen["runOrError"] == {"__typename": "Run", "status": "SUCCESS"}
    assert seen["workspaceOrError"]["locationEntries"] == [{"name": "billbee_pulpo_pipeline", "loadStatus": "LOADED"}]
    # `dagster job launch` only queued the run; the daemon took it from PostgreSQL and launched it.
    events = events_of(postgres, run_id)
    assert events.get(RUN_ENQUEUED) == 1 and events.get(RUN_STARTING) == 1 and events.get(RUN_SUCCESS) == 1
    assert events.get("ASSET_MATERIALIZATION", 0) >= 2
    daemons = {kind for (kind,) in postgres.query("SELECT daemon_type FROM daemon_heartbeats")}
    assert {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING"} <= daemons, daemons
    assert len(pulpo_skus(world, tmp_path)) > 0  # the run worker wrote the products to PULPO
    assert_no_secret_stored(postgres, *(log.read_text(errors="replace") for log in logs.values()))
