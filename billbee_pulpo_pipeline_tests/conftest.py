"""Shared fixtures: one pair of sandboxes per test session (real HTTP servers in a child process)
and an environment that points the example config at them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from billbee_pulpo_pipeline.sandboxes.credentials import sandbox_env
from billbee_pulpo_pipeline.sandboxes.runner import SandboxProcess

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = PROJECT_ROOT / "integrations.example.yaml"

SANDBOX_PRODUCTS = 300
SANDBOX_ORDERS = 400


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(products=SANDBOX_PRODUCTS, orders=SANDBOX_ORDERS, throttle=True) as process:
        yield process


@pytest.fixture
def bpp_env(sandbox: SandboxProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Env for the example config against the session sandboxes, with a fresh BPP_HOME."""
    env = {**sandbox_env(sandbox.billbee_url, sandbox.pulpo_url), "BPP_HOME": str(tmp_path / "bpp"),
           "BPP_CONFIG": str(EXAMPLE_CONFIG)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return {**os.environ, **env}
