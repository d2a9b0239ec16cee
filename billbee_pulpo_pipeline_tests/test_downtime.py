"""Issue 5, downtime: the Dagster daemon is down for 6 hours, then restarted. The gap-filling sensor
fills the missed order windows with no one's help, and no order is lost or doubled.

The world: a Billbee sandbox whose 40,000 historic orders spread over the 30 days before its start
(LastModifiedAt = CreatedAt + 1 day), so every hour of the last day holds ~57 orders, the newest mostly
open, paid (Bezahlt, ~40 %) or cancelled (Storniert, ~5 %).

"Before the downtime": a persistent Dagster instance (the project's dagster.yaml, sqlite storage in a
tmp DAGSTER_HOME) on which the real jobs ran — products, then every order window of the last 24 h that
ended at least 6 hours ago — in process, one run per window as the schedule would have made them.
The downtime therefore starts at the end of the last window read (6 h + the minutes past the hour ago).

"Restart": the real `dagster-daemon run` on that DAGSTER_HOME and the project's workspace.yaml; nobody
launches anything. The gap filler (at most 4 runs per 60 s tick) must run the 6 ended windows of the
downtime, the schedule the current hour. The config sets `interval_minutes: 1` for the orders (a valid
merchant setting): with the default 10 the schedule's first tick, and the gap filler's grace for the
last ended window (one interval + 3 min), would make the wait depend on the minute the test starts in
(up to 13 min); the gap filler's own behaviour does not depend on the interval.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import dagster as dg
import pytest

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.common import flow_for
from billbee_pulpo_pipeline.defs.factory import build_definitions
from billbee_pulpo_pipeline.defs.sales_orders.assets import ORDERS, partitions_for
from billbee_pulpo_pipeline.defs.sales_orders.automation import (
    IN_FLIGHT,
    MAX_GAP_RUNS_PER_TICK,
    PARTITION_TAG,
    latest_read_until,
)
from billbee_pulpo_pipeline.defs.sales_orders.go_live import with_go_live
from billbee_pulpo_pipeline.defs.sales_orders.windows import HOUR, ended_windows, floor_hour
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.sandboxes.credentials import sandbox_env
from billbee_pulpo_pipeline.sandboxes.runner import SandboxProcess
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

HISTORIC_ORDERS = 40_000      # ~57 per hour, ~23 of them paid: >100 paid orders in 6 hours
PRODUCTS = 300
DOWNTIME_HOURS = 6
LOOKBACK_HOURS = 24           # the sales-order default (`lookback_hours`)
RESTART_BUDGET_S = 240        # the gap filler needs 2 ticks (60 s apart) for 6 windows, plus the runs
PAID, CANCELLED = 3, 8
PRODUCTS_SLUG, ORDERS_SLUG = "produkte", "verkaufsauftraege"
BEFORE_TAG = "bpp/test"

CONFIG = """
credentials:
  - {name: billbee-shop, type: billbee, base_url: "${BILLBEE_BASE_URL}", username: "${BILLBEE_USERNAME}",
     api_password: "${BILLBEE_API_PASSWORD}", api_key: "${BILLBEE_API_KEY}"}
  - {name: pulpo-wms, type: pulpo, base_url: "${PULPO_BASE_URL}", username: "${PULPO_USERNAME}",
     password: "${PULPO_PASSWORD}", warehouse_id: 1}
integrations:
  - {name: Produkte, type: products, source: billbee-shop, target: pulpo-wms, interval_minutes: 60}
  - {name: Verkaufsaufträge, type: sales_orders, source: billbee-shop, target: pulpo-wms, interval_minutes: 1,
     import_states: [Bezahlt], cancel_states: [Storniert]}
"""


@pytest.fixture(scope="module")
def world() -> Iterator[SandboxProcess]:
    with SandboxProcess(products=PRODUCTS, orders=HISTORIC_ORDERS, throttle=True) as process:
        yield process


@pytest.fixture
def homes(world: SandboxProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """BPP_HOME, a DAGSTER_HOME with the project's dagster.yaml, the config; exported for in-process runs."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text())
    config = tmp_path / "integrations.yaml"
    config.write_text(CONFIG)
    # The integration went live two days ago (partitions start at go-live, issue 11): the 24 windows
    # before the restart are its partitions.
    went_live = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    (tmp_path / "bpp" / "go_live").mkdir(parents=True)
    (tmp_path / "bpp" / "go_live" / ORDERS_SLUG).write_text(went_live.isoformat() + "\n")
    env = {**sandbox_env(world.billbee_url, world.pulpo_url), "BPP_HOME": str(tmp_path / "bpp"),
           "BPP_CONFIG": str(config), "DAGSTER_HOME": str(dagster_home)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def key_of(start: datetime) -> str:
    return start.strftime("%Y-%m-%d-%H:%M")


# ---- before the downtime: the real jobs, in process, on the persistent instance ----------------------


def run_before_downtime(instance: dg.DagsterInstance, home: Path, config_path: Path, keys: list[str]) -> float:
    """Products, then each order window in `keys`, as runs of the real jobs; returns the seconds taken."""
    started = time.monotonic()
    defs = build_definitions(load_config(config_path), home)
    tags = {BEFORE_TAG: "before_downtime"}
    products = defs.resolve_job_def(f"{PRODUCTS_SLUG}_job").execute_in_process(instance=instance, tags=tags)
    assert products.success
    orders_job = defs.resolve_job_def(f"{ORDERS_SLUG}_job")
    for key in keys:
        assert orders_job.execute_in_process(instance=instance, partition_key=key, tags=tags).success, key
    return time.monotonic() - started


# ---- the restart: the real daemon, watched through Dagster's records ----------------------------------


def start_daemon(env: dict[str, str], log: IO[str]) -> subprocess.Popen[bytes]:
    """`dagster-daemon run` on the project's workspace, in its own process group."""
    daemon = Path(sys.executable).parent / "dagster-daemon"
    return subprocess.Popen([str(daemon), "run", "-w", str(PROJECT_ROOT / "workspace.yaml")], cwd=PROJECT_ROOT,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log,
                            start_new_session=True)


def stop_daemon(process: subprocess.Popen[bytes]) -> None:
    """The daemon and what it started (code server, run workers) share its process group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # `dagster` children do not always stop on SIGTERM
    process.wait(timeout=30)


def order_runs(instance: dg.DagsterInstance, since: datetime) -> list[dg.DagsterRun]:
    records = instance.get_run_records(dg.RunsFilter(job_name=f"{ORDERS_SLUG}_job", created_after=since))
    return [record.dagster_run for record in records]


def settled(instance: dg.DagsterInstance, asset_key: dg.AssetKey, keys: list[str], current: str,
            since: datetime) -> tuple[bool, str]:
    """Every window in `keys` read to its end, the current hour read by the schedule, nothing in flight."""
    reads = latest_read_until(instance, asset_key, keys)
    open_windows = [k for k in keys if not reads.get(k, (False, ""))[0]]
    runs = order_runs(instance, since)
    in_flight = [r.run_id for r in runs if r.status in IN_FLIGHT]
    current_done = any(r.tags.get(PARTITION_TAG) == current and r.status == dg.DagsterRunStatus.SUCCESS
                       and r.tags.get("bpp/trigger") == "schedule" for r in runs)
    state = f"open windows {open_windows}, in flight {len(in_flight)}, current hour read: {current_done}"
    return not open_windows and not in_flight and current_done, state


def ticks_of(instance: dg.DagsterInstance, name: str) -> list[Any]:
    """The ticks of one sensor or schedule, oldest first."""
    [state] = [s for s in instance.all_instigator_state() if s.instigator_name == name]
    return sorted(instance.get_ticks(state.instigator_origin_id, state.selector_id), key=lambda t: t.timestamp)


# ---- the two systems, seen through the clients --------------------------------------------------------


def billbee_orders(env: dict[str, str], low: datetime, high: datetime) -> list[Any]:
    client = BillbeeClient(env["BILLBEE_BASE_URL"], credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD,
                           credentials.BILLBEE_API_KEY, pacer_dir=Path(env["BPP_HOME"]) / "pacer")
    return list(client.iter_orders(modified_at_min=low, modified_at_max=high))


def pulpo_orders_by_billbee_id(env: dict[str, str]) -> dict[str, list[Any]]:
    """PULPO's sales orders grouped by `external_order_num` (the writer puts the Billbee order id there)."""
    client = PulpoClient(env["PULPO_BASE_URL"], credentials.PULPO_USERNAME, credentials.PULPO_PASSWORD,
                         warehouse_id=1, token_dir=Path(env["BPP_HOME"]) / "tokens")
    grouped: dict[str, list[Any]] = {}
    for order in client.iter_sales_orders():
        grouped.setdefault(str(order.external_order_num), []).append(order)
    return grouped


# ---- the test ------------------------------------------------------------------------------------------


def wait_until_settled(instance: dg.DagsterInstance, asset_key: dg.AssetKey, first_start: datetime,
                       daemon: subprocess.Popen[bytes], daemon_log: Path, restart: datetime) -> None:
    deadline = time.monotonic() + RESTART_BUDGET_S
    while True:
        now = datetime.now(UTC)
        windows = [key_of(s) for s in ended_windows(now, LOOKBACK_HOURS, first_start, timedelta(0))]
        done, state = settled(instance, asset_key, windows, key_of(floor_hour(now)), restart)
        if done:
            return
        assert daemon.poll() is None, f"the daemon stopped: {daemon_log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, (f"not settled {RESTART_BUDGET_S} s after the restart: {state}\n"
                                             f"{daemon_log.read_text()[-3000:]}")
        time.sleep(3)


def check_dagster_records(instance: dg.DagsterInstance, asset_key: dg.AssetKey, first_start: datetime,
                          restart: datetime, before: list[str], downtime: list[str]) -> list[list[str]]:
    """Every window of the last 24 h complete; the gap filler ran exactly the downtime windows, each once,
    oldest first, at most 4 per tick; every run since the restart came from the daemon and succeeded.
    Returns the partitions the gap filler launched, tick by tick."""
    windows = [key_of(s) for s in ended_windows(datetime.now(UTC), LOOKBACK_HOURS, first_start, timedelta(0))]
    reads = latest_read_until(instance, asset_key, windows)
    assert [k for k in windows if not reads.get(k, (False, ""))[0]] == []
    runs = order_runs(instance, restart)
    assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [(r.run_id, r.status) for r in runs]
    assert all(r.tags.get("dagster/sensor_name") or r.tags.get("dagster/schedule_name") for r in runs)
    gap_runs = Counter(r.tags[PARTITION_TAG] for r in runs if r.tags.get("bpp/trigger") == "gap_filler")
    by_schedule = {r.tags[PARTITION_TAG] for r in runs if r.tags.get("bpp/trigger") == "schedule"}
    assert all(count == 1 for count in gap_runs.values()), gap_runs        # no window ran twice
    assert set(gap_runs) <= set(downtime) | {k for k in windows if k > downtime[-1]}, gap_runs
    assert not set(gap_runs) & set(before)
    # In the first minutes of an hour the schedule reads the previous hour, so the last ended window may
    # be the schedule's; every other downtime window must have been run by the gap filler.
    assert set(downtime) - set(gap_runs) <= by_schedule & {downtime[-1]}, (gap_runs, by_schedule)
    assert set(downtime[:-1]) <= set(gap_runs)

    partition_of = {r.run_id: r.tags.get(PARTITION_TAG) for r in runs}
    gap_ticks = ticks_of(instance, f"{ORDERS_SLUG}_gap_filler")
    launched = [[partition_of[run_id] for run_id in t.run_ids] for t in gap_ticks if t.run_ids]
    assert all(t.status.value != "FAILURE" for t in [*gap_ticks, *ticks_of(instance, f"{ORDERS_SLUG}_schedule")])
    assert all(len(batch) <= MAX_GAP_RUNS_PER_TICK for batch in launched), launched
    assert [k for batch in launched for k in batch] == sorted(gap_runs), launched
    assert len(launched[0]) == min(MAX_GAP_RUNS_PER_TICK, len(gap_runs)), launched
    return launched


def check_orders(env: dict[str, str], low: datetime, high: datetime) -> str:
    """Every paid order changed in (low, high] is in PULPO exactly once, or waits in the quarantine with a
    reason the merchant can act on; no cancelled one is open in PULPO; no PULPO order is doubled."""
    orders = billbee_orders(env, low, high)
    paid = {str(o.BillBeeOrderId) for o in orders if o.State == PAID}
    cancelled = {str(o.BillBeeOrderId) for o in orders if o.State == CANCELLED}
    assert len(paid) > 100 and len(cancelled) > 0, (len(paid), len(cancelled))
    in_pulpo = pulpo_orders_by_billbee_id(env)
    assert {k: len(v) for k, v in in_pulpo.items() if len(v) > 1} == {}
    store = StateStore(Path(env["BPP_HOME"]))
    quarantine = {q.record_key: q.reason for q in store.quarantine_list(ORDERS_SLUG, kind="order")}
    assert sorted(k for k in paid if k not in in_pulpo and not quarantine.get(k)) == []
    # The only reason this world gives: an article line without SKU, which the merchant must fix in Billbee.
    waiting = {k: quarantine[k] for k in paid & set(quarantine)}
    assert all("has no SKU" in reason for reason in waiting.values()), waiting
    assert len(waiting) < len(paid) // 10, waiting
    assert all(o.state == "cancelled" for k in cancelled for o in in_pulpo.get(k, []))
    return (f"{len(orders)} orders changed, {len(paid)} paid ({len(paid & set(in_pulpo))} in PULPO, "
            f"{len(waiting)} quarantined), {len(cancelled)} cancelled")


def test_six_hours_of_daemon_downtime_are_filled_by_the_gap_filler_without_loss_or_double(world, homes, tmp_path):
    home, config_path = Path(homes["BPP_HOME"]), Path(homes["BPP_CONFIG"])
    config = load_config(config_path)
    config = with_go_live(config, home)
    flow = flow_for(next(i for i in config.integrations if i.type == "sales_orders"), config)
    asset_key = flow.key(ORDERS)
    first_start = partitions_for(flow).start.astimezone(UTC)
    hour = floor_hour(datetime.now(UTC))
    downtime_start = hour - timedelta(hours=DOWNTIME_HOURS)
    lookback = ended_windows(hour, LOOKBACK_HOURS, first_start, timedelta(0))  # the 24 ended windows
    before = [key_of(s) for s in lookback if s + HOUR <= downtime_start]
    downtime = [key_of(s) for s in lookback if s >= downtime_start]
    assert len(before) == LOOKBACK_HOURS - DOWNTIME_HOURS and len(downtime) == DOWNTIME_HOURS

    instance = dg.DagsterInstance.from_config(homes["DAGSTER_HOME"])
    seconds = run_before_downtime(instance, home, config_path, before)
    reads = latest_read_until(instance, asset_key, before + downtime)
    assert all(reads[k][0] for k in before), reads
    assert not set(reads) & set(downtime)  # the daemon was down: nothing read these windows

    restart = datetime.now(UTC)  # from here on only the daemon acts
    daemon_log = tmp_path / "daemon.log"
    with daemon_log.open("w") as log:
        daemon = start_daemon(homes, log)
        try:
            wait_until_settled(instance, asset_key, first_start, daemon, daemon_log, restart)
            settled_after = (datetime.now(UTC) - restart).total_seconds()
        finally:
            stop_daemon(daemon)

    launched = check_dagster_records(instance, asset_key, first_start, restart, before, downtime)
    assert "FATAL" not in daemon_log.read_text()  # no run worker aborted at exit (see test_state_store)
    summary = check_orders(homes, downtime_start, restart)
    print(f"\nbefore the downtime: products + {len(before)} order windows in {seconds:.1f} s; settled "
          f"{settled_after:.0f} s after the restart; gap filler ticks {launched}; downtime: {summary}")
