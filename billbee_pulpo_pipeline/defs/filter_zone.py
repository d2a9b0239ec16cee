"""The zone the date filters of one Billbee account are sent in: configured, or detected and kept.

`billbee_filter_timezone` on the Billbee credential is `auto` (default), `UTC` or `Europe/Berlin`. With
`auto` the order reader's range guard detects the zone Billbee applies (see
`clients/billbee/filter_zone.py`) and keeps it here, per credential, so every reader of the account
(order windows, the state sweep, the stock flow's open orders) sends its bounds the same way.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from billbee_pulpo_pipeline.clients.billbee.filter_zone import DEFAULT_ZONE, FILTER_ZONES
from billbee_pulpo_pipeline.state import StateStore

AUTO = "auto"


def zone_cursor(credential_slug: str) -> str:
    return f"billbee.{credential_slug}.filter_timezone"


def detected_zone(store: StateStore, credential_slug: str) -> dict[str, str] | None:
    """What the guard found for this account ({zone, detected_at, evidence}), or None."""
    text = store.get_cursor(zone_cursor(credential_slug))
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get("zone") in FILTER_ZONES else None


def effective_zone(setting: str, store: StateStore, credential_slug: str) -> str:
    """The configured zone, or with `auto` the detected one (UTC until something was detected)."""
    if setting != AUTO:
        return setting
    found = detected_zone(store, credential_slug)
    return found["zone"] if found else DEFAULT_ZONE


def remember_zone(store: StateStore, credential_slug: str, zone: str, evidence: str) -> None:
    store.set_cursor(zone_cursor(credential_slug), json.dumps({
        "zone": zone, "detected_at": datetime.now(UTC).isoformat(timespec="seconds"), "evidence": evidence}))
