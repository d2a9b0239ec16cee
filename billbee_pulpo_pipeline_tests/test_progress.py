"""Progress of long first syncs: the lines themselves (pure), and the lines a real read of 3,000 Billbee
products writes to the CLI's stderr (`billbee-pulpo sync`, a subprocess) and to Dagster's event log
(`dg.materialize`), against a sandbox of its own with Billbee's pace kept by the client (2 calls/s)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.progress import PROGRESS_ENV, Progress, progress_every, progress_line
from billbee_pulpo_pipeline.sandboxes.credentials import sandbox_env
from billbee_pulpo_pipeline.sandboxes.runner import SandboxProcess
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT

PRODUCTS = 3000
RUNNING = re.compile(r"Produkte: ([\d,]+) of 3,000 products \((\d+) %\), [\d.,]+/s, about .+ left")
FINAL = re.compile(r"Produkte: 3,000 of 3,000 products \(100 %\), [\d.,]+/s, done in \d+ s")


# ---- pure ---------------------------------------------------------------------------------------------


def test_progress_line_shows_done_of_total_rate_and_time_left():
    assert progress_line("Produkte", "products", 12_000, 20_000, 24.1) == \
        "Produkte: 12,000 of 20,000 products (60 %), 498/s, about 16 s left"
    assert progress_line("Produkte", "products", 20_000, 20_000, 40.0, finished=True) == \
        "Produkte: 20,000 of 20,000 products (100 %), 500/s, done in 40 s"
    assert progress_line("Lager", "articles", 1_000, 200_000, 10.0) == \
        "Lager: 1,000 of 200,000 articles (0 %), 100/s, about 33 min 10 s left"
    assert progress_line("Aufträge", "orders", 5, None, 2.0) == "Aufträge: 5 orders, 2.5/s"
    assert progress_line("Aufträge", "orders", 0, 500, 0.0) == "Aufträge: 0 of 500 orders (0 %), 0.0/s"


def test_progress_logs_at_most_every_interval_and_at_the_end():
    now = [0.0]
    lines: list[str] = []
    progress = Progress("Produkte", "products", lines.append, every=10, clock=lambda: now[0])
    for second in range(1, 26):           # a page a second, 100 products a page
        now[0] = float(second)
        progress.update(second * 100, 2500)
    progress.finish()
    assert lines == ["Produkte: 1,000 of 2,500 products (40 %), 100/s, about 15 s left",
                     "Produkte: 2,000 of 2,500 products (80 %), 100/s, about 5 s left",
                     "Produkte: 2,500 of 2,500 products (100 %), 100/s, done in 25 s"]


def test_progress_interval_comes_from_the_environment():
    assert progress_every({}) == 10.0
    assert progress_every({PROGRESS_ENV: "0.5"}) == 0.5
    assert progress_every({PROGRESS_ENV: "soon"}) == 10.0
    assert progress_every({PROGRESS_ENV: "-3"}) == 0.0


# ---- a real read of 3,000 products ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_shop() -> Iterator[SandboxProcess]:
    with SandboxProcess(products=PRODUCTS, orders=20, throttle=False) as process:
        yield process


@pytest.fixture
def env(big_shop: SandboxProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {**sandbox_env(big_shop.billbee_url, big_shop.pulpo_url), "BPP_HOME": str(tmp_path / "bpp"),
              "BPP_CONFIG": str(EXAMPLE_CONFIG), PROGRESS_ENV: "0.5"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    big_shop.reset("pulpo", products=0)
    return {**os.environ, **values}


def assert_progress(lines: list[str]) -> None:
    """Several running lines with growing counts and a time left, then the final line."""
    running = [m for line in lines if (m := RUNNING.search(line))]
    done = [int(m.group(1).replace(",", "")) for m in running]
    assert len(running) >= 2, lines
    assert done == sorted(done) and done[0] < PRODUCTS
    assert sum(bool(FINAL.search(line)) for line in lines) == 1


def test_cli_sync_prints_progress_on_stderr_and_keeps_stdout_json(env):
    done = subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "Produkte", "--json"],
                          env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    report = json.loads(done.stdout)                 # progress never reaches stdout
    assert report["ok"] and report["integrations"][0]["records_read"] == PRODUCTS
    assert_progress(done.stderr.splitlines())


def test_progress_lines_are_in_the_dagster_event_log(env):
    home = Path(env["BPP_HOME"])
    config = load_config(EXAMPLE_CONFIG)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(list(build_definitions(config, home).assets), instance=instance,
                            selection=dg.AssetSelection.assets(dg.AssetKey(["produkte", "billbee_products"])),
                            resources=build_resources(config, home))
    assert result.success
    messages = [entry.user_message for entry in instance.all_logs(result.run_id) if not entry.is_dagster_event]
    assert_progress(messages)
