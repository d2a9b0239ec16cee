"""The embedded default: `billbee-pulpo sandbox`, the live world and `billbee-pulpo demo --once`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import requests

from billbee_pulpo_pipeline.sandboxes.runner import READY_PREFIX, SandboxProcess
from billbee_pulpo_pipeline_tests.conftest import PROJECT_ROOT


def test_sandbox_command_serves_both_apis():
    proc = subprocess.Popen([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sandbox", "--billbee-port", "0",
                             "--pulpo-port", "0", "--products", "50", "--orders", "50"],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(READY_PREFIX), proc.stderr.read() if proc.poll() is not None else line
        urls = json.loads(line[len(READY_PREFIX):])
        for url in urls.values():
            stats = requests.get(url.replace("/api/v1", "/__sandbox/stats"), timeout=5).json()
            assert stats["total_requests"] == 0
        assert requests.get(f"{urls['billbee_url']}/products", timeout=5).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


def test_live_world_moves_shop_and_warehouse_on_its_own():
    with SandboxProcess(products=80, orders=40, live=True, tick_seconds=0.3) as sandbox:
        deadline = time.time() + 30
        while time.time() < deadline:
            shop = sandbox.stats("billbee")["simulator_requests"]
            if shop.get("POST /api/v1/orders", 0) >= 3 and shop.get("PUT /api/v1/orders/{id}/orderstate", 0) >= 1:
                break
            time.sleep(0.3)
        shop = sandbox.stats("billbee")["simulator_requests"]
        assert shop.get("POST /api/v1/orders", 0) >= 3, shop
        assert shop.get("PUT /api/v1/orders/{id}/orderstate", 0) >= 1, shop
        assert sandbox.stats("pulpo")["simulator_requests"], "the warehouse simulator acted through the PULPO API"


def test_demo_once_syncs_every_integration_against_the_sandboxes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BPP_", "BILLBEE_", "PULPO_", "DAGSTER_HOME"))}
    env["BPP_HOME"] = str(tmp_path / "home")
    result = subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "demo", "--once", "--billbee-port",
                             "0", "--pulpo-port", "0", "--products", "120", "--orders", "60"],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(("SUCCESS", "FAILED"))]
    assert len(lines) == 6 and all(ln.startswith("SUCCESS") for ln in lines), result.stdout  # all six types
    assert "Produkte (products): read 120" in result.stdout
    assert (tmp_path / "home" / "dagster_home" / "dagster.yaml").exists()
