"""Slack alerts: the run-failure and quarantine sensors evaluated against real runs and a real state
store, posting to a local HTTP server that stands in for Slack (webhook and Web API); the `alerts:`
config section and its secret rules."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from billbee_pulpo_pipeline.config import ConfigError, load_config, parse_config
from billbee_pulpo_pipeline.defs.alerts import NOT_CONFIGURED, AlertError, SlackAlerts
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.defs.resources import StateStoreResource
from billbee_pulpo_pipeline.sandboxes import credentials as creds
from billbee_pulpo_pipeline.sandboxes.runner import serve_in_thread
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT

WEBHOOK_PATH = "/services/T000/B000/webhook-secret-part-4711"
DAGSTER_URL = "http://dagster.example.test"
SANDBOX_SECRETS = (creds.BILLBEE_API_PASSWORD, creds.BILLBEE_API_KEY, creds.PULPO_PASSWORD)
SECRET_ENV = ["BILLBEE_API_KEY", "BILLBEE_API_PASSWORD", "PULPO_PASSWORD"]


class SlackStandIn:
    """Records what would have reached Slack; `refuse` makes the webhook answer like a revoked one."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.refuse = False
        self.app = Starlette(routes=[Route("/services/{rest:path}", self.webhook, methods=["POST"]),
                                     Route("/api/chat.postMessage", self.chat, methods=["POST"])])

    async def webhook(self, request: Request) -> Response:
        if self.refuse:
            return PlainTextResponse("no_service", status_code=404)
        self.posts.append({"path": request.url.path, **json.loads(await request.body())})
        return PlainTextResponse("ok")

    async def chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.posts.append({"path": request.url.path, "authorization": request.headers.get("authorization"), **body})
        return JSONResponse({"ok": True, "channel": "C0123456789", "ts": "1700000000.000100"})

    def texts(self) -> list[str]:
        return [post["text"] for post in self.posts]


@pytest.fixture(scope="module")
def slack() -> Iterator[tuple[SlackStandIn, str]]:
    stand_in = SlackStandIn()
    url, stop = serve_in_thread(stand_in.app)
    yield stand_in, url
    stop.set()


@pytest.fixture
def slack_server(slack: tuple[SlackStandIn, str]) -> tuple[SlackStandIn, str]:
    stand_in, url = slack
    stand_in.posts.clear()
    stand_in.refuse = False
    return stand_in, url


def webhook_alerts(url: str) -> SlackAlerts:
    return SlackAlerts(webhook_url=url + WEBHOOK_PATH, dagster_url=DAGSTER_URL, secret_env=SECRET_ENV)


def assert_no_secret(texts: list[str]) -> None:
    for text in texts:
        for secret in (*SANDBOX_SECRETS, "webhook-secret-part-4711"):
            assert secret not in text


# ---- quarantine alerts ---------------------------------------------------------------------------


def quarantine_tick(home: Path, alerts: SlackAlerts, cursor: str | None) -> tuple[Any, str | None]:
    defs = build_definitions(load_config(EXAMPLE_CONFIG), home)
    sensor = defs.resolve_sensor_def("quarantine_alerts")
    context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), cursor=cursor,
                                      resources={"alerts": alerts, "state_store": StateStoreResource(home=str(home))})
    result = sensor(context)
    return result, context.cursor


def test_quarantine_sensor_posts_one_message_per_integration_and_each_entry_once(bpp_env, slack_server):
    stand_in, url = slack_server
    home = Path(bpp_env["BPP_HOME"])
    sync = subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "Produkte", "--json"],
                          env=bpp_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert sync.returncode == 0, sync.stderr[-3000:]
    store = StateStore(home)
    products_open, _, first = store.quarantine_overview("produkte", limit=1)
    assert products_open > 0                                  # the seeded catalogue has products without SKU
    store.quarantine_put_many("verkaufsauftraege", "order", {"30000000000000001": ("waiting for product SKU-9", None)})

    _, cursor = quarantine_tick(home, webhook_alerts(url), None)
    assert len(stand_in.posts) == 2 and all(p["path"] == WEBHOOK_PATH for p in stand_in.posts)
    products, orders = sorted(stand_in.texts(), key=lambda text: "Verkaufsaufträge" in text)
    assert f"*billbee-pulpo: Produkte*: {products_open} new record(s) in quarantine ({products_open} open)" in products
    assert first[0].reason in products and f"{DAGSTER_URL}/assets/produkte/pulpo_products" in products
    assert "Verkaufsaufträge*: 1 new record(s) in quarantine (1 open)" in orders
    assert "order 30000000000000001: waiting for product SKU-9" in orders
    assert_no_secret(stand_in.texts())

    stand_in.posts.clear()
    again, cursor = quarantine_tick(home, webhook_alerts(url), cursor)
    assert isinstance(again, dg.SkipReason) and "no record went into quarantine since" in again.skip_message
    assert stand_in.posts == []                               # nothing new: nothing posted twice

    store.quarantine_put_many("verkaufsauftraege", "order", {"30000000000000002": ("quantity 1.5 is no unit", None)})
    quarantine_tick(home, webhook_alerts(url), cursor)
    assert len(stand_in.posts) == 1
    assert "Verkaufsaufträge*: 1 new record(s) in quarantine (2 open)" in stand_in.texts()[0]
    assert "30000000000000002" in stand_in.texts()[0] and "30000000000000001" not in stand_in.texts()[0]


# ---- run failures --------------------------------------------------------------------------------


def failed_run(home: Path, instance: dg.DagsterInstance) -> tuple[dg.DagsterRun, dg.DagsterEvent]:
    config = load_config(EXAMPLE_CONFIG)
    result = dg.materialize(list(build_definitions(config, home).assets), resources=build_resources(config, home),
                            selection=dg.AssetSelection.groups("status_updates"), instance=instance,
                            tags={"integration": "status_updates"}, raise_on_error=False)
    assert not result.success
    [record] = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    return instance.get_run_by_id(result.run_id), record.event_log_entry.dagster_event


def failure_tick(home: Path, instance: dg.DagsterInstance, alerts: SlackAlerts,
                 run: dg.DagsterRun, event: dg.DagsterEvent) -> Any:
    sensor = build_definitions(load_config(EXAMPLE_CONFIG), home).resolve_sensor_def("run_failure_alerts")
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alerts", dagster_event=event, dagster_instance=instance, dagster_run=run,
        resources={"alerts": alerts}).for_run_failure()
    return sensor(context)


def test_run_failure_sensor_posts_the_failed_run_once_without_secrets(bpp_env, slack_server, monkeypatch):
    stand_in, url = slack_server
    home = Path(bpp_env["BPP_HOME"])
    monkeypatch.setenv("PULPO_PASSWORD", "wrong-password-0815")   # PULPO refuses the API user: the run fails
    instance = dg.DagsterInstance.ephemeral()
    run, event = failed_run(home, instance)

    failure_tick(home, instance, webhook_alerts(url), run, event)
    [text] = stand_in.texts()
    assert text.startswith(":red_circle: *billbee-pulpo: Status updates*: a run failed")
    assert f"<{DAGSTER_URL}/runs/{run.run_id}|{run.run_id[:8]}>" in text
    assert "status_updates__pulpo_finished_packing_orders" in text      # the failed step ...
    assert "status_updates__pulpo_finished_packing_orders: PULPO POST /auth failed (HTTP 401): PULPO refused the " \
           "credentials of user 'demo_api'" in text                             # ... and why, without the class
    assert_no_secret([text])
    assert "wrong-password-0815" not in text


def test_without_alerts_config_both_sensors_skip_naming_the_setting_and_post_nothing(bpp_env, slack_server,
                                                                                     monkeypatch):
    stand_in, _ = slack_server
    home = Path(bpp_env["BPP_HOME"])
    defs = build_definitions(load_config(EXAMPLE_CONFIG), home)
    unconfigured = defs.resources["alerts"]                  # the example config has no alerts: section
    assert isinstance(unconfigured, SlackAlerts) and unconfigured.missing() == NOT_CONFIGURED
    StateStore(home).quarantine_put_many("produkte", "product", {"1": ("product 1 has no SKU", None)})

    skipped, cursor = quarantine_tick(home, unconfigured, None)
    assert isinstance(skipped, dg.SkipReason) and "slack_webhook_url" in skipped.skip_message
    assert cursor is None                                    # configured later, the first tick reports the backlog

    monkeypatch.setenv("PULPO_PASSWORD", "wrong-password-0815")
    instance = dg.DagsterInstance.ephemeral()
    run, event = failed_run(home, instance)
    result = failure_tick(home, instance, unconfigured, run, event)
    assert isinstance(result, dg.SkipReason) and "alerts:" in result.skip_message
    assert stand_in.posts == []


# ---- posting -------------------------------------------------------------------------------------


def test_bot_token_posts_to_the_channel_through_the_slack_web_api(slack_server):
    stand_in, url = slack_server
    alerts = SlackAlerts(token="xoxb-test-token-0000", channel="#lager", slack_api_url=f"{url}/api/")
    alerts.post("Lagerbestand: 3 new record(s) in quarantine")
    [post] = stand_in.posts
    assert post["path"] == "/api/chat.postMessage" and post["channel"] == "#lager"
    assert post["authorization"] == "Bearer xoxb-test-token-0000"
    assert post["text"] == "Lagerbestand: 3 new record(s) in quarantine"


def test_a_refused_post_is_an_error_that_quotes_neither_url_nor_secrets(slack_server, monkeypatch):
    stand_in, url = slack_server
    stand_in.refuse = True
    with pytest.raises(AlertError) as refused:
        webhook_alerts(url).post("text")
    assert "404" in str(refused.value) and "no_service" in str(refused.value)
    assert "webhook-secret-part-4711" not in str(refused.value)

    monkeypatch.setenv("PULPO_PASSWORD", "pulpo-secret-9876")
    stand_in.refuse = False
    webhook_alerts(url).post("PULPO said: password pulpo-secret-9876 is wrong")  # a message quoting a secret
    assert stand_in.texts() == ["PULPO said: password ${PULPO_PASSWORD} is wrong"]


# ---- configuration -------------------------------------------------------------------------------

ENV = {"BILLBEE_USERNAME": "u@example.com", "BILLBEE_API_PASSWORD": "pw-123456", "BILLBEE_API_KEY": "key-123456",
       "PULPO_USERNAME": "api", "PULPO_PASSWORD": "pw-789012",
       "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T1/B1/hook-secret-1234",
       "SLACK_BOT_TOKEN": "xoxb-bot-secret-5678"}


def config_with(alerts: str) -> str:
    return EXAMPLE_CONFIG.read_text(encoding="utf-8") + "\n" + alerts


def problems(alerts: str, env: dict[str, str] = ENV) -> str:
    with pytest.raises(ConfigError) as error:
        parse_config(config_with(alerts), "integrations.yaml", env)
    return str(error.value)


def test_alerts_config_errors_name_file_line_and_field_and_never_the_secret():
    lines = len(EXAMPLE_CONFIG.read_text(encoding="utf-8").splitlines())
    literal = problems("alerts:\n  slack_webhook_url: https://hooks.slack.com/services/T1/B1/literal-secret\n")
    assert literal.startswith(f"integrations.yaml:{lines + 3}: alerts: slack_webhook_url: must reference an "
                              "environment variable, e.g. ${SLACK_WEBHOOK_URL}")
    assert "literal-secret" not in literal

    channel = problems("alerts:\n  slack_token: ${SLACK_BOT_TOKEN}\n  slack_channel: Lager Kanal\n")
    assert f":{lines + 4}: alerts: slack_channel: 'Lager Kanal' is not a Slack channel" in channel
    assert "alerts: slack_channel: missing (required with slack_token)" in problems(
        "alerts:\n  slack_token: ${SLACK_BOT_TOKEN}\n")
    assert "give either slack_webhook_url or slack_token" in problems(
        "alerts:\n  slack_webhook_url: ${SLACK_WEBHOOK_URL}\n  slack_token: ${SLACK_BOT_TOKEN}\n"
        "  slack_channel: '#lager'\n")
    plain_http = problems("alerts:\n  slack_webhook_url: ${SLACK_WEBHOOK_URL}\n",
                          {**ENV, "SLACK_WEBHOOK_URL": "http://hooks.example.com/hook-secret-1234"})
    assert "alerts: slack_webhook_url: the variable's value is not an https:// URL" in plain_http
    assert "hook-secret-1234" not in plain_http
    leaked = problems("alerts:\n  slack_token: ${SLACK_BOT_TOKEN}\n  slack_channel: '#lager'\n"
                      "  dagster_url: https://x.test/${SLACK_BOT_TOKEN}\n")
    assert "alerts: dagster_url: uses the secret variable SLACK_BOT_TOKEN" in leaked
    assert "xoxb-bot-secret-5678" not in leaked


def test_alerts_secrets_reach_dagster_as_env_vars(tmp_path):
    path = tmp_path / "integrations.yaml"
    path.write_text(config_with("alerts:\n  slack_token: ${SLACK_BOT_TOKEN}\n  slack_channel: \"#lager\"\n"
                                "  dagster_url: https://dagster.example.com/\n"), encoding="utf-8")
    config = load_config(path, env=ENV)
    assert config.alerts is not None and config.alerts.slack_channel == "#lager"
    alerts = build_definitions(config, tmp_path).resources["alerts"]
    assert isinstance(alerts.token, dg.EnvVar) and alerts.token == "SLACK_BOT_TOKEN"
    assert alerts.channel == "#lager" and alerts.dagster_url == "https://dagster.example.com"
    assert {"PULPO_PASSWORD", "SLACK_BOT_TOKEN"} <= set(alerts.secret_env)
    assert "xoxb-bot-secret-5678" not in repr(alerts)
    # The code location loads without the secret set (the sensor reads it when it posts).
    deferred = load_config(path, env={k: v for k, v in ENV.items() if k != "SLACK_BOT_TOKEN"}, require_env=False)
    assert deferred.alerts is not None and deferred.alerts.env_refs == {"slack_token": "SLACK_BOT_TOKEN"}
