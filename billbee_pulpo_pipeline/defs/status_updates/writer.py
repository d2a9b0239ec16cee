"""Status updates (PULPO → Billbee): the writer that sets the Billbee state of packed orders (and of
orders PULPO ended, when `ended_state` is set), exactly once.

Which records: the finished packing orders of `<slug>.pulpo_finished_packing_orders` (and the ended
sales orders of `<slug>.pulpo_ended_sales_orders`) whose content hash is not in the matching
`…_processed` dataset: one SQL join per run, never a loop over everything. A record is processed
when nothing more is to be done for it: its state was set, the rule said no (recorded in the ledger
with the reason), or its sales order did not come from Billbee. Records waiting for their order link
and records Billbee could not be reached for stay pending and are looked at again by the next run.

Per Billbee order, one `GET /orders/{id}` (its current state decides, see `mapping/status.py`), then
at most one `PUT /orders/{id}/orderstate` per target state. An order whose states are all recorded in
the ledger costs no call. When several packing orders belong to one order (a split fulfilment), the
first one finished sets the state; the others find it recorded.

Exactly once: `status:<billbee order>:<state>` in the ledger frames every PUT. A run killed between
Billbee's answer and the record leaves it 'pending'; the next run reads the order and, finding the
state set, records it as done without a second PUT. With `BPP_TEST_CRASH_AFTER=status` the process
dies exactly there (crash tests only).
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient, Order
from billbee_pulpo_pipeline.clients.billbee.states import state_name
from billbee_pulpo_pipeline.clients.http import NotFoundError, TransientApiError
from billbee_pulpo_pipeline.clients.pulpo import PackingOrder, PulpoClient, SalesOrder
from billbee_pulpo_pipeline.config.models import StatusUpdatesSettings
from billbee_pulpo_pipeline.defs.common import Flow, WriteReport, canonical_json, count_metadata, write_metadata
from billbee_pulpo_pipeline.defs.packing_events import PACKING_ORDERS
from billbee_pulpo_pipeline.defs.status_updates.order_links import Halt, Link, OrderLinks, StateWrites, one_writer
from billbee_pulpo_pipeline.mapping.status import step_of
from billbee_pulpo_pipeline.state import StateStore

ENDED_ORDERS = "pulpo_ended_sales_orders"
PACKED_PROCESSED = "billbee_packed_processed"
ENDED_PROCESSED = "billbee_ended_processed"
WRITER = "billbee_order_states"
QUARANTINE_KIND = "packing_order"
COUNTS = ("set", "already", "later", "recorded", "protected", "rejected", "not_from_billbee", "waiting",
          "quarantined", "failed", "planned")


@dataclass
class Event:
    """One PULPO record asking for a Billbee state: a finished packing order or an ended sales order."""

    source: str                  # packed | ended
    key: str                     # packing order id | sales order id (the dataset key)
    hash: str
    sales_order_id: str | None
    finished_at: datetime | None
    target: int
    label: str                   # how the merchant recognises it: "packing order PA0000012"

    @property
    def processed_dataset(self) -> str:
        return PACKED_PROCESSED if self.source == "packed" else ENDED_PROCESSED


@dataclass
class Report(WriteReport):

    def metadata(self, dry_run: bool) -> dict[str, dg.MetadataValue]:
        c = self.counts
        return write_metadata(
            count_metadata(records_read=self.read, records_written=c["set"],
                           records_skipped=c["already"] + c["later"] + c["recorded"] + c["not_from_billbee"],
                           attention=c["protected"] + c["rejected"],
                           **{name: c[name] for name in COUNTS}),
            dry_run=dry_run, failures=self.failures, plan=self.plan,
            attention=self.attention, quarantine=self.quarantine, waiting=self.waiting,
            not_from_billbee=self.skipped)


class StatusWriter:
    """Sets the configured Billbee states for one integration's pending PULPO records (no Dagster)."""

    def __init__(self, flow: Flow, billbee: BillbeeClient, pulpo: PulpoClient, store: StateStore, *,
                 dry_run: bool = False, log: logging.Logger | Any = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.flow = flow
        self.settings: StatusUpdatesSettings = flow.integration.settings  # type: ignore[assignment]
        self.billbee = billbee
        self.store = store
        self.dry_run = dry_run
        self.log = log or logging.getLogger(__name__)
        self.links = OrderLinks(flow, pulpo, store, now=now)
        self.states = StateWrites(flow.slug, billbee, store, dry_run=dry_run, log=self.log)
        self.report = Report()
        self.halted: str | None = None
        self.processed: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        self.quarantined: dict[str, tuple[str, Any]] = {}
        self.settled: set[tuple[str, str]] = set()   # (source, key) of the records processed this run
        self._waiting: set[tuple[str, str]] = set()

    # ---- run ----------------------------------------------------------------------------------------

    def run(self) -> Report:
        with one_writer(self.store, self.flow):
            events = self.pending_events()
            self.report.read = len(events)
            try:
                self._process(events)
            except Halt as exc:
                self.halted = str(exc)
                done = self.settled | self._waiting | {("packed", key) for key in self.quarantined}
                failed = [e for e in events if (e.source, e.key) not in done]
                self.report.counts["failed"] += len(failed)
                self.report.failures += [{"record": e.label, "reason": str(exc)} for e in failed]
            finally:
                self._flush()
        return self.report

    def pending_events(self) -> list[Event]:
        """Packed events first, then ended ones: an order packed and shipped between two runs gets
        Gepackt before Versendet, not Versendet and then a refused Gepackt."""
        events = [self._packed(key, h, payload) for key, h, payload in self._pending(PACKING_ORDERS, PACKED_PROCESSED)]
        if self.settings.ended_state is not None:
            events += [self._ended(key, h, payload)
                       for key, h, payload in self._pending(ENDED_ORDERS, ENDED_PROCESSED)]
        return events

    def _pending(self, dataset: str, processed: str) -> list[tuple[str, str, str]]:
        pending = self.store.pending_changes(self.flow.dataset(dataset), self.flow.dataset(processed))
        payloads = self.store.snapshot_rows(self.flow.dataset(dataset), [key for key, _ in pending])
        return [(key, h, payloads[key]) for key, h in pending if key in payloads]

    def _packed(self, key: str, content_hash: str, payload: str) -> Event:
        order = PackingOrder.model_validate_json(payload)
        return Event("packed", key, content_hash, _id(order.sales_order_id), order.end_date or order.updated_at,
                     self.settings.packed_state.id, f"packing order {order.sequence_number or order.id}")

    def _ended(self, key: str, content_hash: str, payload: str) -> Event:
        order = SalesOrder.model_validate_json(payload)
        assert self.settings.ended_state is not None
        return Event("ended", key, content_hash, key, order.updated_at, self.settings.ended_state.id,
                     f"sales order {order.order_num or order.id}")

    # ---- per Billbee order ---------------------------------------------------------------------------

    def _process(self, events: list[Event]) -> None:
        for event in [e for e in events if e.sales_order_id is None]:
            self._quarantine(event, f"PULPO {event.label} names no sales order")
        linkable = [e for e in events if e.sales_order_id is not None]
        finished: dict[str, datetime | None] = {}
        for event in linkable:
            finished[event.sales_order_id] = _earliest(finished.get(event.sales_order_id), event.finished_at)
        links = self.links.resolve(finished)
        by_order: dict[str, list[Event]] = defaultdict(list)
        for event in linkable:
            link = links[event.sales_order_id]  # type: ignore[index]
            if link.status == "linked":
                by_order[str(link.billbee_order_id)].append(event)
            else:
                self._unlinked(event, link)
        recorded = self.states.recorded((order, e.target) for order, evs in by_order.items() for e in evs)
        for order_id in sorted(by_order):
            self._order(order_id, by_order[order_id], recorded)

    def _unlinked(self, event: Event, link: Link) -> None:
        row = {"record": event.label, "sales_order_id": event.sales_order_id or "", "reason": link.reason or ""}
        if link.status == "waiting":
            self._waiting.add((event.source, event.key))
            self.report.counts["waiting"] += 1
            self.report.waiting.append(row)
            return
        self.report.skipped.append(row)
        self._settle(event, "not_from_billbee", None, link.reason)

    def _order(self, order_id: str, events: list[Event], recorded: dict[tuple[str, int], Any]) -> None:
        open_targets = sorted({e.target for e in events if (order_id, e.target) not in recorded}, key=step_of)
        outcomes = {target: ("recorded", recorded[(order_id, target)].message)
                    for target in {e.target for e in events} if (order_id, target) in recorded}
        if open_targets:
            order = self._read_order(order_id, events)
            if order is None:
                return
            for target in open_targets:
                outcome = self.states.apply(order, target)
                outcomes[target] = (outcome.result, outcome.reason)
                if self.dry_run:
                    self._plan(order_id, events, target, outcome.result, outcome.reason, order.State)
        for event in events:
            result, reason = outcomes[event.target]
            if result in ("protected", "rejected"):
                self.report.attention.append({"billbee_order_id": order_id, "record": event.label,
                                              "reason": reason or ""})
            self._settle(event, result, order_id, reason)

    def _read_order(self, order_id: str, events: list[Event]) -> Order | None:
        try:
            return self.billbee.get_order(int(order_id))
        except NotFoundError:
            reason = f"Billbee has no order {order_id} (deleted?)"
            for event in events:
                self.report.attention.append({"billbee_order_id": order_id, "record": event.label, "reason": reason})
                self._settle(event, "rejected", order_id, reason)
            return None
        except TransientApiError as exc:
            raise Halt(f"Billbee order {order_id} could not be read: {exc.reason}") from exc

    def _plan(self, order_id: str, events: list[Event], target: int, result: str, reason: str | None,
              current: int | None) -> None:
        action = f"would set {state_name(target)}" if result == "planned" else result
        self.report.plan.append({"billbee_order_id": order_id, "records": ", ".join(e.label for e in events),
                                 "now": state_name(current) if current else "", "action": action,
                                 "reason": reason or ""})

    # ---- outcomes -----------------------------------------------------------------------------------

    def _settle(self, event: Event, result: str, order_id: str | None, reason: str | None) -> None:
        self.report.counts[result] += 1
        self.processed[event.processed_dataset].append((event.key, event.hash, canonical_json(
            {"result": result, "billbee_order_id": order_id, "reason": reason})))
        self.settled.add((event.source, event.key))

    def _quarantine(self, event: Event, reason: str) -> None:
        """Not processed: re-evaluated by every run (at no API cost) until PULPO's record changes."""
        self.report.counts["quarantined"] += 1
        row = {"record": event.label, "reason": reason}
        self.report.quarantine.append(row)
        self.quarantined[event.key] = (reason, row)

    def _flush(self) -> None:
        """Record the outcomes: 'processed' first (a crash before it only repeats the evaluation, the
        ledger keeps the writes from repeating), then the quarantine."""
        if self.dry_run:
            return
        for dataset, rows in self.processed.items():
            self.store.upsert_snapshot(self.flow.dataset(dataset), rows)
        self.store.quarantine_put_many(self.flow.slug, QUARANTINE_KIND, self.quarantined)
        self.store.quarantine_resolve_many(self.flow.slug, [key for source, key in self.settled if source == "packed"],
                                           kind=QUARANTINE_KIND)


def _id(value: Any) -> str | None:
    return None if value is None else str(value)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return min(a, b) if a and b else a or b
