"""Thin Dagster resources over the plain clients and the state store.

Secrets reach the resources as `dg.EnvVar` (resolved in the run worker, shown by name only in the
UI) and are marked `dagster__is_secret`, so a literal value would be masked too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.config import BillbeeCredential, Credential, PulpoCredential, slugify
from billbee_pulpo_pipeline.defs.filter_zone import effective_zone
from billbee_pulpo_pipeline.state import StateStore

SECRET = {"dagster__is_secret": True}


class BillbeeResource(dg.ConfigurableResource):
    """A Billbee account (one credential of the config): basic auth + API key, self-paced."""

    credential: str = Field(description="Name of the credential in the integration config.")
    base_url: str
    username: str
    api_password: str = Field(json_schema_extra=SECRET)
    api_key: str = Field(json_schema_extra=SECRET)
    rate_limit_per_endpoint: float = 2.0
    rate_limit_per_user: float = 10.0
    timeout_seconds: float = 60.0
    filter_timezone: str = Field("auto", description="billbee_filter_timezone of the credential.")
    home: str = Field(description="BPP_HOME: where the cross-process pacing state lives.")

    _client: BillbeeClient | None = PrivateAttr(default=None)

    def client(self) -> BillbeeClient:
        """One client per resource instance, so its call counts cover the whole step. Its date filters
        use the account's zone (configured, or detected by the order reader: `defs/filter_zone.py`)."""
        if self._client is None:
            self._client = BillbeeClient(
                self.base_url, self.username, self.api_password, self.api_key,
                rate_per_endpoint=self.rate_limit_per_endpoint, rate_per_user=self.rate_limit_per_user,
                pacer_dir=Path(self.home) / "pacing", timeout=(5, self.timeout_seconds),
            )
            self._client.filter_timezone = effective_zone(self.filter_timezone, StateStore(Path(self.home)),
                                                          slugify(self.credential))
        return self._client


class PulpoResource(dg.ConfigurableResource):
    """A PULPO WMS user (one credential of the config), with its token shared across processes."""

    credential: str = Field(description="Name of the credential in the integration config.")
    base_url: str
    username: str
    password: str = Field(json_schema_extra=SECRET)
    warehouse_id: int
    merchant_id: int | None = Field(None, description="PULPO merchant the integration writes for (3PL tenants).")
    timeout_seconds: float = 60.0
    home: str = Field(description="BPP_HOME: where the shared token cache lives.")

    _client: PulpoClient | None = PrivateAttr(default=None)

    def client(self) -> PulpoClient:
        if self._client is None:
            self._client = PulpoClient(self.base_url, self.username, self.password,
                                       warehouse_id=self.warehouse_id, merchant_id=self.merchant_id,
                                       token_dir=Path(self.home) / "tokens",
                                       timeout=(5, self.timeout_seconds))
        return self._client


class StateStoreResource(dg.ConfigurableResource):
    """The DuckDB state store under BPP_HOME (snapshots, cursors, mappings, ledger, quarantine)."""

    home: str

    def store(self) -> StateStore:
        return StateStore(Path(self.home))


def _value(credential: Credential, field: str) -> Any:
    """`dg.EnvVar(NAME)` when the config referenced an env var (always so for secrets), else the value.

    EnvVar keeps the value out of the definitions snapshot, the UI and the run config.
    """
    ref = credential.env_refs.get(field)
    if ref is not None:
        return dg.EnvVar(ref)
    value = getattr(credential, field)
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def resource_for(credential: Credential, home: Path) -> dg.ConfigurableResource:
    if isinstance(credential, BillbeeCredential):
        return BillbeeResource(
            credential=credential.name, base_url=credential.base_url, username=_value(credential, "username"),
            api_password=_value(credential, "api_password"), api_key=_value(credential, "api_key"),
            rate_limit_per_endpoint=credential.rate_limit_per_endpoint,
            rate_limit_per_user=credential.rate_limit_per_user, timeout_seconds=credential.timeout_seconds,
            filter_timezone=credential.billbee_filter_timezone, home=str(home),
        )
    if isinstance(credential, PulpoCredential):
        return PulpoResource(
            credential=credential.name, base_url=credential.base_url, username=_value(credential, "username"),
            password=_value(credential, "password"), warehouse_id=credential.warehouse_id,
            merchant_id=credential.merchant_id, timeout_seconds=credential.timeout_seconds, home=str(home),
        )
    raise TypeError(f"unknown credential type {type(credential).__name__}")


def resource_key(credential: Credential) -> str:
    """Dagster resource key of a credential: its slug (a valid identifier)."""
    return credential.slug
