"""Alerts to Slack: a run of an integration failed, or records went into quarantine.

Configured by the optional `alerts:` section of `integrations.yaml`: an incoming-webhook URL, or a bot
token (posted through dagster-slack's `SlackResource`) and a channel; both secrets reach the sensors as
`dg.EnvVar`s. Without that section both sensors still run and skip every tick with a reason naming the
setting, so the UI says why nothing is posted.

- `run_failure_alerts`: one message per failed run of this code location, naming the integration (its
  config name), the run (linked when the Dagster UI's address is known) and the error.
- `quarantine_alerts`: every 2 minutes, the quarantine entries opened since its cursor (the newest
  `first_seen` it reported): one message per integration with the count, the open total and the first
  reasons. Entries already open when alerts are first configured are reported once by the first tick.

Messages never carry a secret: the values of every secret variable the config references (Billbee API
password and key, PULPO password, the Slack webhook and token) are replaced by their `${VAR}` name.
"""

# No `from __future__ import annotations`: Dagster reads the sensors' annotations at runtime.
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
from dagster_slack import SlackResource
from pydantic import Field
from slack_sdk.webhook import WebhookClient

from billbee_pulpo_pipeline.config import IntegrationConfig
from billbee_pulpo_pipeline.config.models import ALERT_SECRET_FIELDS, SECRET_FIELDS
from billbee_pulpo_pipeline.defs.resources import SECRET, StateStoreResource
from billbee_pulpo_pipeline.state import QuarantineEntry

ALERTS_KEY = "alerts"
WEBSERVER_ENV = "DAGSTER_WEBSERVER_URL"
QUARANTINE_SECONDS = 120
FIRST_REASONS = 5
NOT_CONFIGURED = ("no Slack alerts configured: add an `alerts:` section to integrations.yaml with slack_webhook_url: "
                  "${SLACK_WEBHOOK_URL} (or slack_token: ${SLACK_BOT_TOKEN} and slack_channel) to be notified")


# "billbee_pulpo_pipeline.clients.http.AuthenticationError: PULPO refused ...": the merchant needs the second half.
_ERROR_CLASS = re.compile(r"^[A-Za-z_][\w.]*: ")


class AlertError(RuntimeError):
    """Slack did not take the message (the text says why, without the webhook URL or token)."""


@dataclass(frozen=True)
class FlowInfo:
    """What an alert says about one integration: its config name and the asset to open."""

    name: str
    writer_path: tuple[str, ...]


class SlackAlerts(dg.ConfigurableResource):
    """Where alerts go. Secrets are `dg.EnvVar`s, read only when a sensor posts."""

    webhook_url: str | None = Field(None, json_schema_extra=SECRET, description="Slack incoming-webhook URL.")
    token: str | None = Field(None, json_schema_extra=SECRET, description="Slack bot token (with `channel`).")
    channel: str | None = Field(None, description="Channel the bot posts to.")
    dagster_url: str | None = Field(None, description="Dagster UI address for links (else $DAGSTER_WEBSERVER_URL).")
    secret_env: list[str] = Field(default_factory=list, description="Names of the variables holding secrets: "
                                                                    "their values never appear in a message.")
    slack_api_url: str = Field("https://slack.com/api/", description="Slack Web API base (changed only by tests).")

    def missing(self) -> str | None:
        """Why nothing can be posted, or None when Slack is configured."""
        return None if self.webhook_url or (self.token and self.channel) else NOT_CONFIGURED

    def link(self, path: str) -> str | None:
        base = (self.dagster_url or os.environ.get(WEBSERVER_ENV) or "").rstrip("/")
        return f"{base}/{path.lstrip('/')}" if base else None

    def redact(self, text: str) -> str:
        """`text` with the value of every secret variable replaced by `${NAME}` (longest first)."""
        labels = {os.environ.get(name, ""): f"${{{name}}}" for name in self.secret_env}
        labels.update({self.webhook_url or "": "<slack webhook>", self.token or "": "<slack token>"})
        for value in sorted((v for v in labels if len(v) >= 4), key=len, reverse=True):
            text = text.replace(value, labels[value])
        return text

    def post(self, text: str) -> None:
        """Post one message; `AlertError` when Slack refuses it or cannot be reached."""
        text = self.redact(text)
        try:
            if self.webhook_url:
                response = WebhookClient(self.webhook_url, timeout=15).send(text=text)
                if response.status_code != 200:
                    raise AlertError(f"Slack refused the webhook message: HTTP {response.status_code} "
                                     f"{response.body[:200]}")
            else:
                client = SlackResource(token=self.token or "").get_client()
                client.base_url = self.slack_api_url
                client.chat_postMessage(channel=self.channel, text=text)
        except AlertError as exc:
            raise AlertError(self.redact(str(exc))) from None
        except Exception as exc:  # slack_sdk and urllib errors: their text may quote the request
            raise AlertError(self.redact(f"posting to Slack failed: {type(exc).__name__}: {exc}"[:500])) from None


def alerts_resource(config: IntegrationConfig) -> SlackAlerts:
    """The resource for the config's `alerts:` section (an unconfigured one when there is none)."""
    secret_env = sorted({ref for c in config.credentials for field, ref in c.env_refs.items()
                         if field in SECRET_FIELDS[c.type]})
    alerts = config.alerts
    if alerts is None:
        return SlackAlerts(secret_env=secret_env)

    def value(field: str) -> str | dg.EnvVar | None:
        ref = alerts.env_refs.get(field)
        if ref is not None:
            return dg.EnvVar(ref)
        raw = getattr(alerts, field)
        return raw.get_secret_value() if hasattr(raw, "get_secret_value") else raw

    return SlackAlerts(
        webhook_url=value("slack_webhook_url"), token=value("slack_token"), channel=alerts.slack_channel,
        dagster_url=alerts.dagster_url,
        secret_env=sorted({*secret_env, *(alerts.env_refs[f] for f in ALERT_SECRET_FIELDS if f in alerts.env_refs)}),
    )


# --------------------------------------------------------------------------------------------------
# Run failures


def failure_reason(context: dg.RunFailureSensorContext) -> str:
    """The first line of each failed step's error (its cause where Dagster wraps one), else the run's."""
    reasons = []
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        if error is None:
            continue
        text = ((error.cause.message if error.cause else "") or error.message).strip()
        text = _ERROR_CLASS.sub("", text.splitlines()[0] if text else "")[:400]
        reasons.append(f"{event.step_key}: {text}" if text else event.step_key)
    return "\n".join(reasons[:3]) or (context.failure_event.message or "the run failed").strip()[:400]


def run_failure_text(context: dg.RunFailureSensorContext, flows: Mapping[str, FlowInfo], alerts: SlackAlerts) -> str:
    run = context.dagster_run
    slug = run.tags.get("integration", "")
    name = flows[slug].name if slug in flows else run.job_name
    link = alerts.link(f"runs/{run.run_id}")
    run_text = f"<{link}|{run.run_id[:8]}>" if link else run.run_id
    return (f":red_circle: *billbee-pulpo: {name}*: a run failed\n"
            f"Run {run_text} (job {run.job_name})\n"
            f"Reason: {failure_reason(context)}")


def run_failure_sensor(flows: Mapping[str, FlowInfo]) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name="run_failure_alerts", default_status=dg.DefaultSensorStatus.RUNNING,
        description="Posts every failed run of this code location to Slack (the `alerts:` section of "
                    "integrations.yaml): the integration, a link to the run and the error.",
    )
    def run_failure_alerts(context: dg.RunFailureSensorContext, alerts: SlackAlerts) -> dg.SkipReason | None:
        missing = alerts.missing()
        if missing:
            context.log.info(f"run {context.dagster_run.run_id} failed; not posted: {missing}")
            return dg.SkipReason(missing)
        alerts.post(run_failure_text(context, flows, alerts))
        context.log.info(f"posted the failure of run {context.dagster_run.run_id} to Slack")
        return None

    return run_failure_alerts


# --------------------------------------------------------------------------------------------------
# New quarantine entries


def quarantine_text(info: FlowInfo, slug: str, new: int, open_total: int, first: Iterable[QuarantineEntry],
                    alerts: SlackAlerts) -> str:
    lines = [f":warning: *billbee-pulpo: {info.name}*: {new} new record(s) in quarantine ({open_total} open)"]
    shown = 0
    for entry in first:
        lines.append(f"• {entry.kind} {entry.record_key}: {entry.reason[:300]}")
        shown += 1
    if new > shown:
        lines.append(f"… and {new - shown} more")
    link = alerts.link("assets/" + "/".join(info.writer_path))
    if link:
        lines.append(f"<{link}|Open in Dagster> (check `no_quarantined_records`)")
    return "\n".join(lines)


def decode_cursor(cursor: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(cursor) if cursor else None
    except ValueError:
        return None  # an unreadable cursor reports what is open once more: better than missing something


def quarantine_sensor(flows: Mapping[str, FlowInfo]) -> dg.SensorDefinition:
    @dg.sensor(
        name="quarantine_alerts", minimum_interval_seconds=QUARANTINE_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Every {QUARANTINE_SECONDS // 60} minutes, posts the records that went into quarantine since "
                    "the last tick to Slack: one message per integration with the count and the first reasons.",
    )
    def quarantine_alerts(context: dg.SensorEvaluationContext, alerts: SlackAlerts,
                          state_store: StateStoreResource) -> dg.SkipReason | None:
        missing = alerts.missing()
        if missing:
            return dg.SkipReason(missing)
        store = state_store.store()
        after = decode_cursor(context.cursor)
        newest, counts, first = store.quarantine_opened_after(after, per_integration=FIRST_REASONS)
        if newest is None:
            return dg.SkipReason(f"no record went into quarantine since {after.isoformat() if after else 'ever'}")
        for slug, count in sorted(counts.items()):
            info = flows.get(slug, FlowInfo(slug, (slug,)))
            open_total = store.quarantine_overview(slug, limit=0)[0]
            alerts.post(quarantine_text(info, slug, count, open_total, [e for e in first if e.integration == slug],
                                        alerts))
        context.update_cursor(newest.isoformat())
        context.log.info(f"posted new quarantine entries of {len(counts)} integration(s) to Slack")
        return None

    return quarantine_alerts


def alert_definitions(config: IntegrationConfig, writers: Mapping[str, dg.AssetKey]) -> dg.Definitions:
    """Both sensors and the `alerts` resource; `writers` maps each integration's slug to its writer asset."""
    flows = {i.slug: FlowInfo(i.name, tuple(writers[i.slug].path)) for i in config.integrations if i.slug in writers}
    return dg.Definitions(sensors=[run_failure_sensor(flows), quarantine_sensor(flows)],
                          resources={ALERTS_KEY: alerts_resource(config)})
