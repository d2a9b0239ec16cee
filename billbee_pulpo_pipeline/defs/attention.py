"""What needs a person, as asset checks on each integration's writer: records in quarantine and writes
the ledger marks as needing attention (a cancel PULPO refused because the order had shipped, a label
Billbee refused, a state that was not overwritten).

Both are WARN checks in one step that runs after the writer in every run (and on its own with "Execute
checks" in the UI): they never stop a run, they show the writer's asset yellow with the count and the
first reasons, and they turn green once nothing is left. They read only the state store.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg

from billbee_pulpo_pipeline.defs.common import STATE_STORE_KEY, Flow, preview_table
from billbee_pulpo_pipeline.state import StateStore

QUARANTINE_CHECK = "no_quarantined_records"
ATTENTION_CHECK = "no_writes_need_attention"
# A write needing attention stays so in the ledger for good (nothing un-ships an order); the check shows
# those of the last week, long enough to be seen on a Monday, short enough to turn green on its own.
ATTENTION_DAYS = 7
PREVIEW_ROWS = 10
REASON_WIDTH = 240  # the reason is what a person acts on: cut later than other previews


def attention_checks(flow: Flow, writer: dg.AssetKey) -> dg.AssetChecksDefinition:
    """`no_quarantined_records` and `no_writes_need_attention` on the integration's writer asset."""

    @dg.multi_asset_check(
        name=f"{flow.slug}__attention_checks",
        specs=[
            dg.AssetCheckSpec(
                QUARANTINE_CHECK, asset=writer, blocking=False,
                description=f"Warns while records of {flow.name} wait in quarantine (each with the reason a "
                            "person has to act on: a product without SKU, an order waiting for its product, a "
                            "label Billbee refused, ...). Metadata: how many, per kind, and the first reasons."),
            dg.AssetCheckSpec(
                ATTENTION_CHECK, asset=writer, blocking=False,
                description=f"Warns when writes of {flow.name} in the last {ATTENTION_DAYS} days need "
                            "attention (e.g. a cancellation PULPO refused because the order had already "
                            "shipped). Metadata: how many and the ledger's messages."),
        ],
        required_resource_keys={STATE_STORE_KEY},
        can_subset=True,  # the UI executes a single check too
    )
    def attention(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        store = context.resources.state_store.store()
        selected = {key.name for key in context.selected_asset_check_keys}
        if QUARANTINE_CHECK in selected:
            yield quarantine_result(store, flow, writer)
        if ATTENTION_CHECK in selected:
            yield attention_result(store, flow, writer)

    return attention


def quarantine_result(store: StateStore, flow: Flow, writer: dg.AssetKey) -> dg.AssetCheckResult:
    count, by_kind, first = store.quarantine_overview(flow.slug, limit=PREVIEW_ROWS)
    rows = [{"kind": e.kind, "record": e.record_key, "reason": e.reason,
             "since": e.first_seen.strftime("%Y-%m-%d %H:%M")} for e in first]
    return dg.AssetCheckResult(
        asset_key=writer, check_name=QUARANTINE_CHECK, passed=count == 0, severity=dg.AssetCheckSeverity.WARN,
        description=f"{count:,} record(s) of {flow.name} wait in quarantine; fix the reason in Billbee or PULPO, "
                    "the next run picks them up" if count else f"nothing of {flow.name} is in quarantine",
        metadata={"quarantined": dg.MetadataValue.int(count),
                  **{f"quarantined_{kind}": dg.MetadataValue.int(n) for kind, n in sorted(by_kind.items())},
                  "reasons": preview_table(rows, width=REASON_WIDTH)},
    )


def attention_result(store: StateStore, flow: Flow, writer: dg.AssetKey,
                     now: datetime | None = None) -> dg.AssetCheckResult:
    since = (now or datetime.now(UTC)) - timedelta(days=ATTENTION_DAYS)
    entries = [e for e in store.ledger_entries(flow.slug, status="attention") if e.updated_at >= since]
    rows = [{"write": e.key, "action": e.action, "message": e.message or "",
             "at": e.updated_at.strftime("%Y-%m-%d %H:%M")} for e in entries]
    return dg.AssetCheckResult(
        asset_key=writer, check_name=ATTENTION_CHECK, passed=not entries, severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(entries):,} write(s) of {flow.name} in the last {ATTENTION_DAYS} days need attention: "
                    "the target system refused them for a reason only a person can resolve" if entries
                    else f"no write of {flow.name} needed attention in the last {ATTENTION_DAYS} days",
        metadata={"attention": dg.MetadataValue.int(len(entries)),
                  "attention_days": dg.MetadataValue.int(ATTENTION_DAYS),
                  "writes": preview_table(rows, limit=PREVIEW_ROWS, width=REASON_WIDTH)},
    )
