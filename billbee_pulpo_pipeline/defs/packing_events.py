"""Finished PULPO packing orders: what drives the PULPO → Billbee flows (status updates, shipping
labels, shipments).

PULPO has webhooks, but a merchant's Dagster usually cannot receive them, so a sensor polls
`GET /packing/orders` by state and `updated_at`. Its cursor is data: the (`updated_at`, id) of the
newest finished packing order seen, never a counter; the run key names that order, so a tick that
sees nothing new launches nothing and two ticks never launch the same work. The flow's interval
schedule runs the same job as a safety net.

The read asset keeps its own cursor in the state store, advanced only after the rows are stored,
and reads a few minutes before it (an order PULPO commits late with an older `updated_at` is not
skipped); what it read again is unchanged in the snapshot and causes no write downstream.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from billbee_pulpo_pipeline.clients.pulpo import PackingOrder, PulpoClient
from billbee_pulpo_pipeline.defs.common import (
    STATE_STORE_KEY,
    CallMeter,
    Flow,
    canonical_json,
    count_metadata,
    fingerprint,
    ui_metadata,
)

FINISHED_PACKING_STATES = ("ended", "closed")
FIRST_RUN_LOOKBACK = timedelta(hours=24)   # how far back the very first read looks
READ_OVERLAP = timedelta(minutes=2)        # the asset reads this much before its cursor
SENSOR_SECONDS = 30                        # default sensor interval: p95 latency stays under a minute
PACKING_ORDERS = "pulpo_finished_packing_orders"


@dataclass(frozen=True, order=True)
class PackingCursor:
    """Position after the newest finished packing order seen: (`updated_at`, id)."""

    updated_at: datetime
    id: int

    def encode(self) -> str:
        return json.dumps({"updated_at": self.updated_at.isoformat(), "id": self.id})

    @classmethod
    def decode(cls, text: str | None) -> "PackingCursor | None":
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(_as_utc(data["updated_at"]) or datetime.min.replace(tzinfo=UTC), int(data["id"]))
        except (ValueError, KeyError, TypeError):
            return None  # an unreadable cursor reads the lookback again: duplicates are harmless


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def cursor_of(order: PackingOrder) -> PackingCursor | None:
    updated = _as_utc(order.updated_at)
    return PackingCursor(updated, int(order.id)) if updated is not None and order.id is not None else None


def finished_packing_orders(client: PulpoClient, warehouse_id: int | None, after: PackingCursor | None, *,
                            overlap: timedelta = timedelta(0), now: datetime | None = None) -> list[PackingOrder]:
    """Finished packing orders of the warehouse after `after` (minus `overlap`), oldest first."""
    now = now or datetime.now(UTC)
    since = after.updated_at - overlap if after else now - FIRST_RUN_LOOKBACK
    found: dict[int, PackingOrder] = {}
    for state in FINISHED_PACKING_STATES:
        for order in client.iter_packing_orders(state=state, updated_at_gte=since, warehouse_id=warehouse_id):
            position = cursor_of(order)
            if position is None or (after is not None and not overlap and position <= after):
                continue
            found[position.id] = order
    return sorted(found.values(), key=lambda o: cursor_of(o))  # type: ignore[arg-type, return-value]


def read_cursor_name(flow: Flow) -> str:
    return f"{flow.slug}.packing_read_after"


def packing_orders_asset(flow: Flow) -> dg.AssetsDefinition:
    """The flow's snapshot of finished packing orders (dataset `<slug>.pulpo_finished_packing_orders`)."""
    warehouse_id = getattr(flow.source, "warehouse_id", None)

    @dg.asset(
        key=flow.key(PACKING_ORDERS),
        group_name=flow.slug,
        kinds={"pulpo", "duckdb"},
        required_resource_keys={flow.source_key, STATE_STORE_KEY},
        tags=flow.tags,
        description=f"""Packing orders finished in PULPO warehouse {warehouse_id} ({flow.name}).

`GET /packing/orders` by state ({", ".join(FINISHED_PACKING_STATES)}) and `updated_at` since the stored
cursor (minus {int(READ_OVERLAP.total_seconds() // 60)} minutes), stored in DuckDB with a content hash per
packing order: only new or changed ones move on to the Billbee write.""",
    )
    def pulpo_finished_packing_orders(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        client = getattr(context.resources, flow.source_key).client()
        store = context.resources.state_store.store()
        meter = CallMeter(pulpo=client.stats)
        after = PackingCursor.decode(store.get_cursor(read_cursor_name(flow)))
        orders = finished_packing_orders(client, warehouse_id, after, overlap=READ_OVERLAP)
        rows = []
        for order in orders:
            payload = order.model_dump(mode="json")
            rows.append((str(order.id), fingerprint(payload), canonical_json(payload)))
        diff = store.upsert_snapshot(flow.dataset(PACKING_ORDERS), rows)
        newest = max((p for o in orders if (p := cursor_of(o)) is not None), default=after)
        if newest is not None and newest != after:
            store.set_cursor(read_cursor_name(flow), newest.encode())
        return dg.MaterializeResult(metadata=ui_metadata({
            **count_metadata(records_read=len(rows), new=diff.new, changed=diff.changed, unchanged=diff.unchanged),
            **meter.metadata(),
            "cursor": dg.MetadataValue.text(newest.encode() if newest else "none yet"),
        }))

    return pulpo_finished_packing_orders


def packing_sensor(flow: Flow, job: "dg.UnresolvedAssetJobDefinition",
                   seconds: int = SENSOR_SECONDS) -> dg.SensorDefinition:
    """Launches the flow's job when PULPO has finished packing orders newer than the sensor's cursor."""
    warehouse_id = getattr(flow.source, "warehouse_id", None)

    @dg.sensor(
        name=f"{flow.slug}_packing_sensor", job=job, minimum_interval_seconds=seconds,
        default_status=dg.DefaultSensorStatus.RUNNING, required_resource_keys={flow.source_key},
        description=f"{flow.name}: every {seconds} s, asks PULPO for packing orders finished since its cursor "
                    "(updated_at and id of the newest one seen) and runs the flow when there are any.",
    )
    def packing_finished(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        client = getattr(context.resources, flow.source_key).client()
        after = PackingCursor.decode(context.cursor)
        orders = finished_packing_orders(client, warehouse_id, after)
        if not orders:
            return dg.SkipReason(f"no packing order finished after {after.encode() if after else 'the lookback'}")
        newest = cursor_of(orders[-1])
        assert newest is not None
        return dg.SensorResult(
            run_requests=[dg.RunRequest(
                run_key=f"packing:{newest.updated_at.isoformat()}:{newest.id}",
                tags={**flow.tags, "bpp/trigger": "packing_sensor", "bpp/packing_orders": str(len(orders))})],
            cursor=newest.encode(),
        )

    return packing_finished
