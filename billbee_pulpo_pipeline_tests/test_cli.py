"""`billbee-pulpo` as a person runs it: real subprocesses against the session sandboxes."""

from __future__ import annotations

import json
import subprocess
import sys

from billbee_pulpo_pipeline.sandboxes import credentials as creds
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT


def cli(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", *args], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_check_passes_against_the_sandboxes(bpp_env):
    result = cli("check", "--config", str(EXAMPLE_CONFIG), env=bpp_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK   billbee-shop (billbee)" in result.stdout
    assert "OK   pulpo-wms (pulpo)" in result.stdout


def test_check_fails_clearly_with_a_wrong_password(bpp_env):
    env = {**bpp_env, "BILLBEE_API_PASSWORD": "wrong-password-4711", "PULPO_PASSWORD": "also-wrong-0815"}
    result = cli("check", env=env)
    assert result.returncode == 1
    assert "FAIL billbee-shop (billbee): authentication failed" in result.stdout
    assert "FAIL pulpo-wms (pulpo): authentication failed" in result.stdout
    output = result.stdout + result.stderr
    for secret in ("wrong-password-4711", "also-wrong-0815", creds.BILLBEE_API_KEY):
        assert secret not in output


def test_check_names_a_missing_env_var_without_traceback(bpp_env):
    env = {k: v for k, v in bpp_env.items() if k != "PULPO_PASSWORD"}
    result = cli("check", env=env)
    assert result.returncode == 2
    assert "PULPO_PASSWORD" in result.stderr
    assert "integrations.example.yaml" in result.stderr
    assert "pulpo-wms" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_fails_when_a_service_is_unreachable(bpp_env):
    env = {**bpp_env, "PULPO_BASE_URL": "http://127.0.0.1:9/api/v1"}
    result = cli("check", env=env)
    assert result.returncode == 1
    assert "FAIL pulpo-wms (pulpo): not reachable" in result.stdout
    assert "OK   billbee-shop" in result.stdout


def test_sync_json_summarises_every_integration(bpp_env):
    result = cli("sync", "--json", env=bpp_env)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)  # stdout holds exactly one JSON document
    names = [i["name"] for i in document["integrations"]]
    assert names == ["Produkte", "Verkaufsaufträge", "Status updates", "Lagerbestand", "Versandetiketten"]
    products = document["integrations"][0]
    assert products["status"] == "success"
    assert products["records_read"] > 0
    assert products["quarantined"] > 0  # the seeded catalogue has products without SKU
    assert products["api_calls"]["billbee"] >= 1
    assert document["ok"] is True


def test_sync_of_a_named_integration_runs_only_that_one(bpp_env):
    result = cli("sync", "--json", "Lagerbestand", env=bpp_env)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert [i["name"] for i in document["integrations"]] == ["Lagerbestand"]


def test_sync_of_an_unknown_integration_is_a_clear_error(bpp_env):
    result = cli("sync", "Nope", env=bpp_env)
    assert result.returncode == 2
    assert "unknown integration(s) 'Nope'" in result.stderr
    assert "'Produkte'" in result.stderr
