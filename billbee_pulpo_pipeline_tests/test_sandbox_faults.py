"""The sandboxes' fault knobs, and the clients riding them out (real HTTP, session sandboxes)."""

from __future__ import annotations

import time

import pytest
import requests

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient
from billbee_pulpo_pipeline.clients.http import TransientApiError
from billbee_pulpo_pipeline.sandboxes import credentials as creds
from billbee_pulpo_pipeline.sandboxes.credentials import SIMULATOR_HEADERS

AUTH = (creds.BILLBEE_USERNAME, creds.BILLBEE_API_PASSWORD)
KEY = {"X-Billbee-Api-Key": creds.BILLBEE_API_KEY}


@pytest.fixture
def faulty(sandbox):
    sandbox.reset_stats("billbee")
    yield sandbox
    sandbox.set_faults("billbee", rate_429=0.0, rate_5xx=0.0, slow_rate=0.0, slow_seconds=0.0)


def client(sandbox, tmp_path, **kwargs) -> BillbeeClient:
    return BillbeeClient(sandbox.billbee_url, creds.BILLBEE_USERNAME, creds.BILLBEE_API_PASSWORD, creds.BILLBEE_API_KEY,
                         pacer_dir=tmp_path, **kwargs)


def test_429_burst_answers_with_retry_after_and_spares_the_simulator(faulty):
    faulty.set_faults("billbee", rate_429=1.0, retry_after_seconds=3)
    url = f"{faulty.billbee_url}/products?page=1&pageSize=1"
    answer = requests.get(url, auth=AUTH, headers=KEY, timeout=5)
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "3"
    assert requests.get(url, auth=AUTH, headers={**KEY, **SIMULATOR_HEADERS}, timeout=5).status_code == 200
    assert faulty.stats("billbee")["fault_429"] == 1


def test_5xx_faults_serve_html_pages(faulty):
    faulty.set_faults("billbee", rate_5xx=1.0, html_bodies=True)
    answer = requests.get(f"{faulty.billbee_url}/products", auth=AUTH, headers=KEY, timeout=5)
    assert answer.status_code in (500, 503)
    assert answer.headers["content-type"].startswith("text/html") and "<html>" in answer.text


def test_client_pages_through_5xx_and_429_faults(faulty, tmp_path):
    faulty.set_faults("billbee", rate_5xx=0.25, rate_429=0.15, retry_after_seconds=1)
    c = client(faulty, tmp_path, backoff_factor=0.05)
    products = list(c.iter_products(page_size=50))
    stats = faulty.stats("billbee")
    assert len({p.Id for p in products}) == len(products) >= 300  # every product exactly once
    assert stats["fault_5xx"] + stats["fault_429"] > 0
    assert c.stats.retries == stats["fault_5xx"] + stats["fault_429"]


def test_slow_answers_past_the_client_timeout_are_a_transient_error(faulty, tmp_path):
    faulty.set_faults("billbee", slow_rate=1.0, slow_seconds=1.5)
    c = client(faulty, tmp_path, timeout=(2, 0.3), max_retries=1, backoff_factor=0.01)
    started = time.monotonic()
    with pytest.raises(TransientApiError) as error:
        c.check_connection()
    assert time.monotonic() - started < 5
    assert creds.BILLBEE_API_PASSWORD not in str(error.value)
    assert faulty.stats("billbee")["fault_slow"] >= 2  # first try and one retry


def test_unknown_fault_knob_is_refused(faulty):
    root = faulty.root("billbee")
    answer = requests.put(f"{root}/__sandbox/faults", json={"rate_42": 1}, timeout=5)
    assert answer.status_code == 400 and "rate_42" in answer.json()["error"]
