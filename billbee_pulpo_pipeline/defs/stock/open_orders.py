"""Open Billbee orders for the stock formula (O): which orders hold stock in Billbee that PULPO does not have.

How they are read, with few Billbee calls (all at 250 per page):

- **Incremental** (every run): `GET /orders?modifiedAtMin=<watermark>` with no state filter, so an
  order that *leaves* the reserving states (shipped, cancelled) is seen too. A window with only a
  lower bound can only gain orders while it is paged, so no order slides past a page boundary.
  A shop with a few hundred changes per interval costs one call per run (8,640 a month at 5 min),
  where re-reading all open orders each run would cost one call per 250 open orders.
- **Full** (first run, after `reconcile_hours`, when `reserving_states` or the lookback changed, or
  when the watermark is older than the lookback): `GET /orders?orderStateId=<reserving states>
  &modifiedAtMin=<now − open_orders_lookback_days>`, read until one pass is consistent (the orders
  reader's `read_complete_window`), replacing the kept set.

The set lives in the state store (`<slug>.billbee_open_orders`: order id → state and stock lines).
Orders not changed within `open_orders_lookback_days` are dropped as abandoned (an unpaid order nobody
cancelled), as the full read leaves them out. The watermark is the read's start minus 2 minutes, so
late-visible changes and clock skew are read again (harmlessly: by id).

Whether PULPO has an order is the sales-orders flow's mapping `order:<billbee>:<pulpo>` of the same
pair, read *before* PULPO's stock: an order created in PULPO in between is then subtracted twice for
one run (undersold), never sold twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient, Order, ResultPage
from billbee_pulpo_pipeline.defs.common import Flow, mapping_kind
from billbee_pulpo_pipeline.defs.sales_orders.windows import read_complete_window
from billbee_pulpo_pipeline.mapping.stock import OpenOrder, open_order, order_record
from billbee_pulpo_pipeline.state import StateStore, snapshot_row

OPEN_ORDERS = "billbee_open_orders"
CURSOR = "open_orders_read"
OVERLAP = timedelta(minutes=2)
CANCELLED_IN_PULPO = "cancelled"


@dataclass
class OpenOrdersRead:
    """What one refresh did."""

    mode: str          # "full" or "incremental"
    read: int          # orders Billbee returned
    kept: int          # open orders held after the refresh
    dropped: int       # orders that left the reserving states or the lookback
    calls: int


class OpenOrders:
    """The flow's set of open Billbee orders: refreshed from Billbee, judged against PULPO's mappings."""

    def __init__(self, flow: Flow, client: BillbeeClient, store: StateStore, *, reserving_states: list[int],
                 lookback_days: int, log: logging.Logger | Any = None) -> None:
        self.flow = flow
        self.client = client
        self.store = store
        self.states = sorted(reserving_states)
        self.lookback = timedelta(days=lookback_days)
        self.dataset = flow.dataset(OPEN_ORDERS)
        self.cursor_name = flow.dataset(CURSOR)
        self.order_kind = mapping_kind("order", flow)
        self.log = log or logging.getLogger(__name__)

    # ---- refresh -------------------------------------------------------------------------------------

    def refresh(self, *, full: bool = False, now: datetime | None = None) -> OpenOrdersRead:
        """Bring the kept set up to date with Billbee; a full read when asked or when the cursor says so."""
        started = now or datetime.now(UTC)
        cursor = self._cursor()
        since = cursor.get("read_until") if cursor else None
        if full or self._needs_full(cursor, since, started):
            result = self._full(started)
        else:
            result = self._incremental(datetime.fromisoformat(since), started)
        self.store.set_cursor(self.cursor_name, json.dumps({
            "read_until": (started - OVERLAP).isoformat(), "states": self.states,
            "lookback_days": self.lookback.days}))
        return result

    def _cursor(self) -> dict[str, Any] | None:
        text = self.store.get_cursor(self.cursor_name)
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None  # unreadable: a full read rebuilds the set

    def _needs_full(self, cursor: Mapping[str, Any] | None, since: str | None, now: datetime) -> bool:
        if not cursor or not since:
            return True
        if cursor.get("states") != self.states or cursor.get("lookback_days") != self.lookback.days:
            return True
        try:
            return datetime.fromisoformat(since) < now - self.lookback
        except ValueError:
            return True

    def _full(self, started: datetime) -> OpenOrdersRead:
        calls = self.client.stats.snapshot()["calls"]

        def pages() -> Iterator[ResultPage[Order]]:
            return self.client.iter_order_pages(order_state_ids=self.states,
                                                modified_at_min=started - self.lookback, page_size=250)

        read = read_complete_window(pages, on_shift=self.log.warning)
        rows = [snapshot_row(o.BillBeeOrderId, _record(o)) for o in read.orders if o.State in self.states]
        diff = self.store.replace_snapshot(self.dataset, rows)
        return OpenOrdersRead("full", len(read.orders), len(rows), diff.removed,
                              self.client.stats.snapshot()["calls"] - calls)

    def _incremental(self, since: datetime, started: datetime) -> OpenOrdersRead:
        calls = self.client.stats.snapshot()["calls"]
        newest: dict[int, Order] = {}
        for order in self.client.iter_orders(modified_at_min=since, page_size=250):
            known = newest.get(order.BillBeeOrderId)
            if known is None or (order.LastModifiedAt or since) >= (known.LastModifiedAt or since):
                newest[order.BillBeeOrderId] = order
        open_now = [snapshot_row(i, _record(o)) for i, o in newest.items() if o.State in self.states]
        closed = [i for i, o in newest.items() if o.State not in self.states]
        if open_now:
            self.store.upsert_snapshot(self.dataset, open_now)
        dropped = self.store.delete_snapshot_rows(self.dataset, closed) if closed else 0
        dropped += self._drop_abandoned(started)
        return OpenOrdersRead("incremental", len(newest), len(self.store.snapshot_keys(self.dataset)), dropped,
                              self.client.stats.snapshot()["calls"] - calls)

    def _drop_abandoned(self, now: datetime) -> int:
        """Orders not changed within the lookback: the full read would leave them out too."""
        cutoff = now - self.lookback
        stale = []
        for key, payload in self.store.snapshot_rows(self.dataset).items():
            modified = json.loads(payload).get("modified")
            if modified and datetime.fromisoformat(modified) < cutoff:
                stale.append(key)
        return self.store.delete_snapshot_rows(self.dataset, stale) if stale else 0

    # ---- judgement -------------------------------------------------------------------------------------

    def orders(self) -> list[OpenOrder]:
        return [open_order(key, json.loads(payload)) for key, payload in self.store.snapshot_rows(self.dataset).items()]

    def in_pulpo(self, order_ids: list[str]) -> set[str]:
        """Orders PULPO has (an order mapping of this Billbee/PULPO pair, not cancelled in PULPO)."""
        mapped = self.store.get_mappings(self.order_kind, order_ids)
        return {key for key, m in mapped.items() if (m.extra or {}).get("state") != CANCELLED_IN_PULPO}


def _record(order: Order) -> dict[str, Any]:
    record = order_record(order)
    modified = order.LastModifiedAt or order.CreatedAt
    record["modified"] = modified.astimezone(UTC).isoformat() if modified else None
    return record
