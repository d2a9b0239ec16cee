"""Shipments (PULPO → Billbee, labels made elsewhere): the writer that adds each tracking code of a
packed order's boxes to the Billbee order, exactly once, then sets the shipped state.

Which packing orders: the finished ones of `<slug>.pulpo_finished_packing_orders` not yet in
`<slug>.shipments_processed`. The label service (Sendcloud, VCE, …) writes the tracking to the PULPO
box some time after packing, so a packing order is *watched* (`<slug>.tracking_watch`: its box ids,
when it was last looked at, when next) until every box has a tracking code stored in Billbee, or for
at most `tracking_wait_hours`. It is looked at on the first run after packing, then after 5, 10, 20
and 40 minutes and hourly (`mapping/shipments.recheck_after`), and at most `CHECKS_PER_RUN` packing
orders per run: a box that never gets a label costs one PULPO call an hour, not one per tick. A look
costs one PULPO call per box (trackings are per box; the box ids are read once), and Billbee calls
only when there is something to write: `GET /orders/{id}`, one `POST /orders/{id}/shipment` per new
tracking code, and the state.

Per tracking code: `POST /orders/{id}/shipment` with the code, the carrier (`mapping/shipments.py`:
`carrier_map`, else Billbee's carrier list by name, else none and counted) and, by default
(`use_order_shipping_provider`), the order's own Billbee shipping provider and product.

The state (`set_shipped_state`, default Versendet) is set per packing order once every box has a
tracking code and every code is stored in Billbee: Billbee forwards the tracking to the marketplace
on that change, so it comes after the shipments, and only once all parcels have their number (a
second box's code added after Versendet would never reach the marketplace). A packing order whose
boxes do not all get a code within `tracking_wait_hours` is reported as needing attention with the
label service's error messages; the shipments stored stay, the state is not set.

Exactly once: the ledger key `shipment:<billbee order>:<tracking code>` frames every POST. Billbee's
shipment call has no idempotency key, so an attempt whose outcome is unknown (timeout, 5xx, or the
process killed before the record: `BPP_TEST_CRASH_AFTER=shipment`) stays 'pending', and the next run
first looks at the order's shipments in Billbee (`GET /shipment/shipments?orderId=`): found, it is
recorded as done; not found, it is sent. A code the Billbee order already carries (added by hand or
by another tool) is recorded without a POST. Orders in a protected state (Storniert, …) get nothing.

With `pulpo_shipping_methods`, only packing orders whose PULPO sales order has one of those shipping
methods are watched; the others are left to the labels integration (`defs/shipping_method_filter.py`).
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from billbee_pulpo_pipeline.clients.billbee import AddShipmentRequest, BillbeeClient, Order
from billbee_pulpo_pipeline.clients.billbee.states import state_name
from billbee_pulpo_pipeline.clients.http import NotFoundError, RequestRejectedError, TransientApiError
from billbee_pulpo_pipeline.clients.pulpo import PackingOrder, PulpoClient
from billbee_pulpo_pipeline.config.models import ShipmentsSettings
from billbee_pulpo_pipeline.defs.common import (
    Flow,
    WriteReport,
    canonical_json,
    count_metadata,
    fingerprint,
    write_metadata,
)
from billbee_pulpo_pipeline.defs.crash import crash_point
from billbee_pulpo_pipeline.defs.packing_events import PACKING_ORDERS
from billbee_pulpo_pipeline.defs.shipping_method_filter import OTHER_METHOD, ShippingMethodFilter
from billbee_pulpo_pipeline.defs.status_updates.order_links import Halt, OrderLinks, StateWrites, one_writer
from billbee_pulpo_pipeline.mapping.shipments import (
    CarrierMatch,
    Tracking,
    box_trackings,
    match_carrier,
    recheck_after,
    shipment_ledger_key,
)
from billbee_pulpo_pipeline.mapping.status import PROTECTED_STATES
from billbee_pulpo_pipeline.state import LedgerEntry, StateStore

PROCESSED = "shipments_processed"
WATCH = "tracking_watch"
WRITER = "billbee_shipments"
QUARANTINE_KIND = "packing_order"
CHECKS_PER_RUN = 40                    # packing orders looked at per run, oldest due first
CARRIERS_TTL = timedelta(hours=24)     # Billbee's carrier list is read at most once a day
COUNTS = ("checked", "shipments_added", "shipments_found", "state_set", "complete", "waiting_for_tracking",
          "expired", "protected", "order_missing", "not_due", "deferred", "not_from_billbee", "waiting_for_link",
          OTHER_METHOD, "no_shipping_method", "quarantined", "carrier_unmapped", "label_errors", "failed", "planned")


@dataclass
class Watch:
    """A finished packing order whose boxes are watched for tracking codes."""

    key: str
    hash: str
    order: PackingOrder
    finished_at: datetime
    next_check: datetime
    checks: int = 0
    box_ids: list[int] | None = None
    billbee_order_id: str = ""   # set once the link is resolved

    @property
    def label(self) -> str:
        return f"packing order {self.order.sequence_number or self.order.id}"

    def payload(self) -> dict[str, Any]:
        return {"finished_at": self.finished_at.isoformat(), "next_check": self.next_check.isoformat(),
                "checks": self.checks, "box_ids": self.box_ids, "sales_order_id": self.order.sales_order_id}


@dataclass
class Report(WriteReport):
    shipments: list[dict[str, str]] = field(default_factory=list)
    unmapped: list[dict[str, str]] = field(default_factory=list)

    def metadata(self, dry_run: bool) -> dict[str, dg.MetadataValue]:
        c = self.counts
        return write_metadata(
            count_metadata(records_read=self.read, records_written=c["shipments_added"] + c["state_set"],
                           records_skipped=c["not_from_billbee"] + c[OTHER_METHOD], attention=len(self.attention),
                           **{name: c[name] for name in COUNTS}),
            dry_run=dry_run, failures=self.failures, plan=self.plan,
            shipments=self.shipments, attention=self.attention, quarantine=self.quarantine,
            carrier_unmapped=self.unmapped, waiting=self.waiting, not_from_billbee=self.skipped)


class ShipmentWriter:
    """Adds PULPO's tracking codes to the Billbee orders of one integration (plain code, no Dagster)."""

    def __init__(self, flow: Flow, billbee: BillbeeClient, pulpo: PulpoClient, store: StateStore, *,
                 dry_run: bool = False, log: logging.Logger | Any = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.flow = flow
        self.settings: ShipmentsSettings = flow.integration.settings  # type: ignore[assignment]
        self.billbee = billbee
        self.pulpo = pulpo
        self.store = store
        self.dry_run = dry_run
        self.log = log or logging.getLogger(__name__)
        self.now = now
        self.links = OrderLinks(flow, pulpo, store, now=now)
        self.states = StateWrites(flow.slug, billbee, store, dry_run=dry_run, log=self.log)
        self.wait = timedelta(hours=self.settings.tracking_wait_hours)
        self.methods = ShippingMethodFilter(self.settings.pulpo_shipping_methods, pulpo)
        self.report = Report()
        self.halted: str | None = None
        self._carriers: dict[int, str] | None = None
        self.processed: list[tuple[str, str, str]] = []
        self.watching: dict[str, Watch] = {}
        self.quarantined: dict[str, tuple[str, Any]] = {}
        self.settled: set[str] = set()

    # ---- run ----------------------------------------------------------------------------------------

    def run(self) -> Report:
        with one_writer(self.store, self.flow):
            watches = self.pending_watches()
            self.report.read = len(watches)
            due: list[Watch] = []
            try:
                due = self._linked_and_due(watches)
                for watch in due:
                    self._check(watch)
            except Halt as exc:
                self.halted = str(exc)
                failed = [w for w in due if w.key not in self.settled and w.key not in self.watching]
                self.report.counts["failed"] += len(failed)
                self.report.failures += [{"record": w.label, "reason": str(exc)} for w in failed]
            finally:
                self._flush()
        return self.report

    def pending_watches(self) -> list[Watch]:
        """Every finished packing order not processed yet, with what is known of its watch."""
        source, watch_dataset = self.flow.dataset(PACKING_ORDERS), self.flow.dataset(WATCH)
        pending = self.store.pending_changes(source, self.flow.dataset(PROCESSED))
        keys = [key for key, _ in pending]
        payloads = self.store.snapshot_rows(source, keys)
        known = self.store.snapshot_rows(watch_dataset, keys)
        now = self.now()
        watches = []
        for key, content_hash in pending:
            if key not in payloads:
                continue
            order = PackingOrder.model_validate_json(payloads[key])
            state = json.loads(known[key]) if key in known else {}
            finished = order.end_date or order.updated_at or now
            watches.append(Watch(key, content_hash, order, _time(state.get("finished_at")) or finished,
                                 _time(state.get("next_check")) or now, int(state.get("checks", 0)),
                                 state.get("box_ids")))
        return watches

    def _linked_and_due(self, watches: list[Watch]) -> list[Watch]:
        """Settle what cannot be linked; the linked ones due for a look, oldest due first, capped."""
        for watch in [w for w in watches if w.order.sales_order_id is None]:
            self._quarantine(watch, f"PULPO {watch.label} names no sales order")
        linkable = [w for w in watches if w.order.sales_order_id is not None]
        finished: dict[str, datetime | None] = {}
        for watch in linkable:
            key = str(watch.order.sales_order_id)
            finished[key] = min(watch.finished_at, finished.get(key) or watch.finished_at)
        links = self.links.resolve(finished)
        due: list[Watch] = []
        now = self.now()
        for watch in linkable:
            link = links[str(watch.order.sales_order_id)]
            if link.status == "not_from_billbee":
                self.report.skipped.append({"record": watch.label, "reason": link.reason or ""})
                self._settle(watch, "not_from_billbee", None, link.reason)
            elif link.status == "waiting":
                self.report.counts["waiting_for_link"] += 1
                self.report.waiting.append({"record": watch.label, "reason": link.reason or ""})
            elif watch.checks == 0 and self._left_to_other_flow(watch, str(link.billbee_order_id)):
                continue
            elif watch.next_check <= now or now - watch.finished_at >= self.wait:
                watch.billbee_order_id = str(link.billbee_order_id)
                due.append(watch)
            else:
                self.report.counts["not_due"] += 1
        due.sort(key=lambda w: (w.next_check, w.key))
        self.report.counts["deferred"] += max(len(due) - CHECKS_PER_RUN, 0)
        return due[:CHECKS_PER_RUN]

    def _left_to_other_flow(self, watch: Watch, order_id: str) -> bool:
        """`pulpo_shipping_methods`: decided on a packing order's first look; one of another shipping method
        is settled as skipped, one without a shipping method as needing attention."""
        try:
            skip = self.methods.skip_reason(watch.order.sales_order_id)
        except NotFoundError:
            return False   # the look at its boxes reports it
        except TransientApiError as exc:
            raise Halt(f"PULPO sales order of {watch.label} could not be read: {exc.reason}") from exc
        if skip is None:
            return False
        reason, attention = skip
        if attention:
            self._attention(watch, order_id, reason)
        else:
            self.report.skipped.append({"record": watch.label, "reason": reason})
        self._settle(watch, "no_shipping_method" if attention else OTHER_METHOD, order_id, reason)
        return True

    # ---- one packing order --------------------------------------------------------------------------

    def _check(self, watch: Watch) -> None:
        order_id = watch.billbee_order_id
        self.report.counts["checked"] += 1
        codes, untracked, errors = self._trackings(watch)
        keys = {t.code: shipment_ledger_key(order_id, t.code) for t in codes}
        entries = self.store.ledger_get_many(keys.values())
        open_codes = [t for t in codes if _status(entries.get(keys[t.code])) in (None, "pending")]
        refused = [t for t in codes if _status(entries.get(keys[t.code])) in ("attention", "failed", "skipped")]
        complete = bool(codes) and not untracked and not refused
        target = self.settings.shipped_state.id if self.settings.set_shipped_state else None
        state_open = complete and target is not None and not self.states.recorded([(order_id, target)])
        if open_codes or state_open:
            order = self._read_order(order_id, watch)
            if order is None:
                return
            if order.State in PROTECTED_STATES:
                reason = (f"the Billbee order is {state_name(order.State)}: no shipment added; check the order "
                          "in Billbee")
                self._attention(watch, order_id, reason)
                self._settle(watch, "protected", order_id, reason)
                return
            for tracking in open_codes:
                if not self._ship(order, watch, tracking, entries.get(keys[tracking.code])):
                    complete = False
            if complete and state_open and target is not None:
                self._set_state(order, watch, target)
        self._conclude(watch, order_id, complete, codes, untracked, errors)

    def _trackings(self, watch: Watch) -> tuple[list[Tracking], list[int], list[str]]:
        """The tracking codes of the packing order's boxes, the boxes without one, label errors."""
        try:
            if watch.box_ids is None:
                watch.box_ids = sorted(int(b.id) for b in self.pulpo.list_boxes(int(watch.key)) if b.id is not None)
            codes: list[Tracking] = []
            untracked: list[int] = []
            errors: list[str] = []
            for box_id in watch.box_ids:
                found, failed = box_trackings(box_id, self.pulpo.list_shipment_trackings(int(watch.key), box_id))
                codes += [t for t in found if t.code not in {c.code for c in codes}]
                errors += [f"box {box_id}: {message}" for message in failed]
                if not found:
                    untracked.append(box_id)
        except NotFoundError:
            return [], [], ["PULPO no longer has this packing order"]
        except TransientApiError as exc:
            raise Halt(f"PULPO boxes of {watch.label} could not be read: {exc.reason}") from exc
        self.report.counts["label_errors"] += len(errors)
        return codes, untracked, errors

    def _read_order(self, order_id: str, watch: Watch) -> Order | None:
        try:
            return self.billbee.get_order(int(order_id))
        except NotFoundError:
            reason = f"Billbee has no order {order_id} (deleted?)"
            self._attention(watch, order_id, reason)
            self._settle(watch, "order_missing", order_id, reason)
            return None
        except TransientApiError as exc:
            raise Halt(f"Billbee order {order_id} could not be read: {exc.reason}") from exc

    def _ship(self, order: Order, watch: Watch, tracking: Tracking, entry: LedgerEntry | None) -> bool:
        """Store one tracking code on the Billbee order; True once Billbee has it (dry run: would have)."""
        order_id = str(order.BillBeeOrderId)
        key = shipment_ledger_key(order_id, tracking.code)
        known = {s.ShippingId for s in order.ShippingIds or [] if s.ShippingId}
        if entry is not None and entry.status == "pending":
            known |= self._billbee_shipments(order_id)    # an earlier attempt may have reached Billbee
        if tracking.code in known:
            if not self.dry_run:
                self.store.ledger_begin(key, self.flow.slug, "add_shipment", {"billbee_order_id": order_id,
                                                                             "tracking_code": tracking.code})
                self.store.ledger_finish(key, "done", {"found_in_billbee": True}, order_id)
            self.report.counts["shipments_found"] += 1
            return True
        carrier = self._carrier(tracking.carrier_code)
        request = self._request(order, watch, tracking, carrier)
        if self.dry_run:
            self._plan(watch, order_id, f"would add shipment {tracking.code}", _carrier_text(carrier))
            self.report.counts["planned"] += 1
            return True
        self.store.ledger_begin(key, self.flow.slug, "add_shipment", {
            "billbee_order_id": order_id, "tracking_code": tracking.code, "carrier_id": carrier.carrier_id,
            "packing_order": watch.key, "box_id": tracking.box_id})
        try:
            self.billbee.add_shipment(int(order_id), request)
        except (RequestRejectedError, NotFoundError) as exc:
            reason = f"Billbee refused tracking {tracking.code}: {exc.reason}"
            self.store.ledger_finish(key, "attention", None, order_id, reason)
            self._attention(watch, order_id, reason)
            return False
        except TransientApiError as exc:   # stays 'pending': the next run looks in Billbee before resending
            raise Halt(f"Billbee shipment call for order {order_id} failed: {exc.reason}") from exc
        crash_point("shipment")
        self.store.ledger_finish(key, "done", {"carrier_id": carrier.carrier_id}, order_id)
        self.report.counts["shipments_added"] += 1
        self.report.shipments.append({"billbee_order_id": order_id, "tracking_code": tracking.code,
                                      "carrier": _carrier_text(carrier), "record": watch.label})
        return True

    def _request(self, order: Order, watch: Watch, tracking: Tracking, carrier: CarrierMatch) -> AddShipmentRequest:
        if carrier.carrier_id is None:
            self.report.counts["carrier_unmapped"] += 1
            self.report.unmapped.append({"carrier_code": tracking.carrier_code or "", "tracking_code": tracking.code,
                                         "reason": carrier.note or ""})
        own = self.settings.use_order_shipping_provider
        return AddShipmentRequest(
            ShippingId=tracking.code, CarrierId=carrier.carrier_id, ShipmentType=0,
            ShippingProviderId=order.ShippingProviderId if own else None,
            ShippingProviderProductId=order.ShippingProviderProductId if own else None,
            Comment=f"PULPO {watch.label}, box {tracking.box_id}")

    def _billbee_shipments(self, order_id: str) -> set[str]:
        try:
            return {s.ShippingId for s in self.billbee.iter_shipments(order_id=int(order_id)) if s.ShippingId}
        except TransientApiError as exc:
            raise Halt(f"Billbee shipments of order {order_id} could not be read: {exc.reason}") from exc

    def _set_state(self, order: Order, watch: Watch, target: int) -> None:
        outcome = self.states.apply(order, target)
        if outcome.result == "set":
            self.report.counts["state_set"] += 1
        elif outcome.result in ("protected", "rejected"):
            self._attention(watch, str(order.BillBeeOrderId), outcome.reason or "")
        if self.dry_run:
            action = f"then set {state_name(target)}" if outcome.result == "planned" else outcome.result
            self._plan(watch, str(order.BillBeeOrderId), action, outcome.reason or "")

    def _conclude(self, watch: Watch, order_id: str, complete: bool, codes: list[Tracking], untracked: list[int],
                  errors: list[str]) -> None:
        """Done, given up (attention) or looked at again later."""
        if self.dry_run:
            if not complete:
                self._plan(watch, order_id, "wait for tracking", "; ".join(errors) or
                           f"{len(untracked)} box(es) without tracking code")
            return
        if complete:
            self._settle(watch, "complete", order_id, f"{len(codes)} tracking code(s) stored")
            return
        now = self.now()
        if now - watch.finished_at >= self.wait:
            hours = self.settings.tracking_wait_hours
            reason = (f"{len(untracked)} of {len(watch.box_ids or [])} box(es) got no tracking code within {hours} h"
                      f"{': ' + '; '.join(errors) if errors else ''}; {len(codes)} shipment(s) stored, the order "
                      "was not set to shipped: finish it in Billbee")
            self._attention(watch, order_id, reason)
            self._settle(watch, "expired", order_id, reason)
            return
        watch.checks += 1
        watch.next_check = now + recheck_after(watch.checks)
        self.watching[watch.key] = watch
        self.report.counts["waiting_for_tracking"] += 1
        self.report.waiting.append({"record": watch.label, "reason": "; ".join(errors) or
                                    f"{len(untracked)} box(es) without tracking code",
                                    "next_check": watch.next_check.strftime("%Y-%m-%d %H:%M")})

    def _carrier(self, code: str | None) -> CarrierMatch:
        direct = match_carrier(code, {}, self.settings.carrier_map)
        if direct.how == "carrier_map" and direct.carrier_id is not None:
            return direct           # an id in carrier_map needs no carrier list
        return match_carrier(code, self._carrier_list(), self.settings.carrier_map)

    def _carrier_list(self) -> dict[int, str]:
        """Billbee's carriers, kept a day in the state store (one call a day, not one per run)."""
        if self._carriers is not None:
            return self._carriers
        name = f"{self.flow.target.slug}.shipping_carriers"
        cached = json.loads(self.store.get_cursor(name) or "{}")
        fetched = _time(cached.get("fetched_at"))
        if fetched is not None and self.now() - fetched < CARRIERS_TTL:
            self._carriers = {int(k): v for k, v in cached["carriers"].items()}
            return self._carriers
        try:
            self._carriers = {c.Id: c.Name or "" for c in self.billbee.get_shipping_carriers()}
        except TransientApiError as exc:
            raise Halt(f"Billbee carrier list could not be read: {exc.reason}") from exc
        if not self.dry_run:
            self.store.set_cursor(name, canonical_json({"fetched_at": self.now().isoformat(),
                                                        "carriers": {str(k): v for k, v in self._carriers.items()}}))
        return self._carriers

    # ---- outcomes -----------------------------------------------------------------------------------

    def _settle(self, watch: Watch, result: str, order_id: str | None, reason: str | None) -> None:
        """Processed: not looked at again until PULPO changes the packing order."""
        self.report.counts[result] += 1
        self.processed.append((watch.key, watch.hash, canonical_json(
            {"result": result, "billbee_order_id": order_id, "reason": reason})))
        self.settled.add(watch.key)
        self.watching.pop(watch.key, None)

    def _attention(self, watch: Watch, order_id: str, reason: str) -> None:
        self.report.attention.append({"billbee_order_id": order_id, "record": watch.label, "reason": reason})

    def _quarantine(self, watch: Watch, reason: str) -> None:
        self.report.counts["quarantined"] += 1
        row = {"record": watch.label, "reason": reason}
        self.report.quarantine.append(row)
        self.quarantined[watch.key] = (reason, row)

    def _plan(self, watch: Watch, order_id: str, action: str, detail: str) -> None:
        self.report.plan.append({"billbee_order_id": order_id, "record": watch.label, "action": action,
                                 "detail": detail})

    def _flush(self) -> None:
        """Record the outcomes: processed packing orders leave the watch, the others keep their next look."""
        if self.dry_run:
            return
        watch_dataset = self.flow.dataset(WATCH)
        if self.processed:
            self.store.upsert_snapshot(self.flow.dataset(PROCESSED), self.processed)
            self.store.delete_snapshot_rows(watch_dataset, [key for key, _, _ in self.processed])
        if self.watching:
            self.store.upsert_snapshot(watch_dataset, [(w.key, fingerprint(w.payload()), canonical_json(w.payload()))
                                                       for w in self.watching.values()])
        self.store.quarantine_put_many(self.flow.slug, QUARANTINE_KIND, self.quarantined)
        self.store.quarantine_resolve_many(self.flow.slug, self.settled, kind=QUARANTINE_KIND)


def _status(entry: LedgerEntry | None) -> str | None:
    return entry.status if entry is not None else None


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _carrier_text(carrier: CarrierMatch) -> str:
    return f"CarrierId {carrier.carrier_id} (by {carrier.how})" if carrier.carrier_id is not None else \
        f"none: {carrier.note}"
