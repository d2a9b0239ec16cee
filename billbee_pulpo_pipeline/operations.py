"""What the CLI does, as plain functions: check connections and run integrations through the very
same Dagster assets the schedules run (in process, no second implementation)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient
from billbee_pulpo_pipeline.clients.http import ApiError, AuthenticationError, TransientApiError
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.config import BillbeeCredential, Credential, Integration, IntegrationConfig
from billbee_pulpo_pipeline.defs.common import SYNC_ORDER, flow_for
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.defs.sales_orders.automation import windows_to_sync
from billbee_pulpo_pipeline.defs.sales_orders.go_live import with_go_live
from billbee_pulpo_pipeline.defs.sales_orders.sweep import SWEEP, sweep_due
from billbee_pulpo_pipeline.state import StateStore


@dataclass
class CheckResult:
    credential: str
    type: str
    ok: bool
    message: str


def client_for(credential: Credential, home: Path) -> BillbeeClient | PulpoClient:
    """A plain client from a fully resolved credential (env vars already substituted)."""
    if isinstance(credential, BillbeeCredential):
        return BillbeeClient(
            credential.base_url, credential.username, credential.api_password.get_secret_value(),
            credential.api_key.get_secret_value(), rate_per_endpoint=credential.rate_limit_per_endpoint,
            rate_per_user=credential.rate_limit_per_user, pacer_dir=home / "pacing", max_retries=2,
            timeout=(5, credential.timeout_seconds),
        )
    return PulpoClient(credential.base_url, credential.username, credential.password.get_secret_value(),
                       warehouse_id=credential.warehouse_id, merchant_id=credential.merchant_id,
                       token_dir=home / "tokens", max_retries=2,
                       timeout=(5, credential.timeout_seconds))


def check_credential(credential: Credential, home: Path) -> CheckResult:
    """The guide's "check connection": one authenticated call; the message says what to fix."""
    client = client_for(credential, home)
    try:
        client.check_connection()
    except AuthenticationError as exc:
        return CheckResult(credential.name, credential.type, False, f"authentication failed: {exc.reason}")
    except TransientApiError as exc:
        return CheckResult(credential.name, credential.type, False, f"not reachable: {exc.reason}")
    except ApiError as exc:
        return CheckResult(credential.name, credential.type, False, str(exc))
    return CheckResult(credential.name, credential.type, True, f"connected to {credential.base_url}")


def check_connections(config: IntegrationConfig, home: Path) -> list[CheckResult]:
    return [check_credential(c, home) for c in config.credentials]


@dataclass
class IntegrationSummary:
    name: str
    type: str
    status: str
    records_read: int = 0
    written: int = 0
    skipped: int = 0
    quarantined: int = 0
    api_calls: dict[str, int] = field(default_factory=dict)
    throttled_429: int = 0
    errors: list[str] = field(default_factory=list)
    run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_integrations(config: IntegrationConfig, names: Sequence[str]) -> list[Integration]:
    """The named integrations (by name or slug), or all, in dependency order; unknown names raise."""
    chosen = list(config.integrations)
    if names:
        by_name = {i.name: i for i in config.integrations} | {i.slug: i for i in config.integrations}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            known = ", ".join(f"'{i.name}'" for i in config.integrations)
            raise ValueError(f"unknown integration(s) {', '.join(repr(n) for n in unknown)}; configured: {known}")
        chosen = list({id(by_name[n]): by_name[n] for n in names}.values())
    return sorted(chosen, key=lambda i: SYNC_ORDER.index(i.type))


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Keep stdout for the JSON document: everything else a run prints goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def default_instance() -> dg.DagsterInstance:
    """The persistent instance when DAGSTER_HOME is set (the UI then shows CLI runs), else ephemeral."""
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def run_sync(config: IntegrationConfig, home: Path, names: Sequence[str] = (),
             instance: dg.DagsterInstance | None = None) -> list[IntegrationSummary]:
    """Materialize each selected integration's asset group once, in dependency order."""
    config = with_go_live(config, home)
    defs = build_definitions(config, home)
    assets = list(defs.assets or [])
    resources = build_resources(config, home)
    instance = instance or default_instance()
    summaries = []
    for integration in select_integrations(config, names):
        summary = None
        for selection, partition in runs_to_sync(config, integration, home):
            with stdout_to_stderr():
                result = dg.materialize(
                    assets, selection=selection, resources=resources,
                    instance=instance, partition_key=partition, raise_on_error=False,
                    tags={"integration": integration.slug, "launched_by": "billbee-pulpo sync"},
                )
            summary = summarise(integration, result, summary)
        assert summary is not None
        summaries.append(summary)
    return summaries


def runs_to_sync(config: IntegrationConfig, integration: Integration,
                 home: Path) -> list[tuple[dg.AssetSelection, str | None]]:
    """The runs of one sync: the integration's group once; for sales orders the state sweep when it is due
    (always at go-live: the backlog), then the windows not read to their end and the current one."""
    group = dg.AssetSelection.groups(integration.slug)
    if integration.type != "sales_orders":
        return [(group, None)]
    flow, store = flow_for(integration, config), StateStore(home)
    sweep = dg.AssetSelection.assets(flow.key(SWEEP))
    runs: list[tuple[dg.AssetSelection, str | None]] = [(sweep, None)] if sweep_due(store, flow) else []
    return [*runs, *((group, key) for key in windows_to_sync(flow, store))]


def summarise(integration: Integration, result: dg.ExecuteInProcessResult,
              summary: IntegrationSummary | None = None) -> IntegrationSummary:
    """The run's figures, added to `summary` when the sync took several runs (order windows)."""
    if summary is None:
        summary = IntegrationSummary(integration.name, integration.type, "success", run_id=result.run_id)
    if not result.success:
        summary.status = "failed"
        summary.run_id = result.run_id  # the run to open in the UI is the one that failed
    quarantined = 0
    for event in result.get_asset_materialization_events():
        metadata = {k: v.value for k, v in event.materialization.metadata.items()}

        def value(key: str, metadata: dict[str, object] = metadata) -> int:
            number = metadata.get(key, 0)
            return int(number) if isinstance(number, int | float) else 0

        summary.records_read += value("records_read")
        summary.written += value("records_written")
        summary.skipped += value("records_skipped")
        quarantined += value("quarantined")
        summary.throttled_429 += value("billbee_429") + value("pulpo_429")
        for system in ("billbee", "pulpo"):
            if f"{system}_calls" in metadata:
                summary.api_calls[system] = summary.api_calls.get(system, 0) + value(f"{system}_calls")
    # Each run re-evaluates what waits in quarantine: across the runs of one sync, the largest count.
    summary.quarantined = max(summary.quarantined, quarantined)
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            cause = error.cause.message.strip() if error.cause else ""
            summary.errors.append((cause or error.message.strip()).splitlines()[0][:500])
    return summary
