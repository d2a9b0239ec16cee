"""Shipping labels (PULPO → Billbee → PULPO): one Billbee label per packed PULPO box, exactly once.

Which packing orders: every finished packing order of `<slug>.pulpo_finished_packing_orders` whose
hash is not in `<slug>.labels_processed` yet, plus those in `<slug>.labels_waiting` whose retry is
due. A packing order belongs to a Billbee order through its `sales_order_id` and the sales-orders
flow's order mapping; packing orders of other sales orders are skipped and counted. With
`pulpo_shipping_methods`, only packing orders whose PULPO sales order has one of those shipping methods
get labels; the others are left to the shipments integration (`defs/shipping_method_filter.py`).

Per box, three steps, each framed by its own ledger entry (a crash between two resumes at the next):

1. `label:<pulpo account>:<box>`: `POST /shipment/shipwithlabel` for the Billbee order, one call per box. Provider and
   product: the `provider_map` row of the PULPO sales order's shipping method, else the Billbee
   order's own; weight (g) and dimensions (cm) of the box; `ClientReference` "<order number> n/m"
   on the label; `ChangeStateToSend` (setting `change_state_to_send`) only with the order's last box,
   so the shop learns every tracking number when the order becomes Versendet.
   Exactly one label per box: the entry is 'pending' before the call. Billbee's answer (tracking and
   label PDF) is written ahead into `<slug>.label_pdfs` the moment it arrives, then the tracking
   number is claimed for the box (mapping `label:<billbee>:<pulpo>`, ShippingId -> box id) and the
   entry set 'done'. A run that finds an entry still 'pending' (the process died after the call, or
   the answer was lost: `outcome_unknown`) looks at Billbee's shipments of the order first
   (`GET /shipment/shipments?orderId=&minimumShipmentId=`): a shipment newer than the ones the order
   had before the call, with the provider and product that were sent and claimed by no other box, is
   this box's label (boxes of one order are labelled one at a time). Only when there is none is the
   call made again. Runs of one integration hold a file lock while they write, so a sensor run and a
   schedule run never label the same box at once.
2. `tracking:<pulpo account>:<box>`: `POST …/boxes/{box}/shipment_tracking` {carrier_code, tracking_code, tracking_url},
   after looking at the box's trackings (one with our tracking code is adopted, not written again).
3. `attach:<pulpo account>:<box>` (setting `label_attach`): `POST …/boxes/{box}/attach` with the label PDF. UNVERIFIED:
   PULPO does not publish how a file reaches its storage before `attach` (pulpo-api.md §9). The spec's
   `AttachmentRequest` has `filename`, `content_type` and `path` ("path of file to attach") and no
   content field, so the label travels in `path` as an RFC 2397 data URL (`data:application/pdf;
   base64,…`); a live tenant may instead want the file uploaded to its S3 first and registered with
   `…/attachment` (id = S3 key). Verify on a PULPO test tenant. A crash between `attach` and its record
   is resolved by looking at the box's attachments (`POST /packing/boxes/attachments`) first. A label
   whose PDF was lost with its answer (the process died before storing it) cannot be fetched again:
   Billbee's API has no label download. The step is then recorded as 'attention' ("print it from
   Billbee") and the box is done otherwise.

Packing orders go one at a time: plan (reads), the blocking check `labels_plan_safe` over its planned
label calls against a fresh ledger read (`mapping/labels.py: plan_problems`), then its writes. A failed
check stops the run before that packing order's first write.

Refusals: Billbee refusing a label (ErrorCode 22: package type missing, a cancelled order, an unknown
product …) and boxes that cannot be labelled as they are (no weight in a packing order of several
boxes, no provider/product, a tracking already on the PULPO box, shipments on the Billbee order that
this flow did not make) go to quarantine with a reason the merchant can act on; the other boxes go
on. Such a packing order waits in `<slug>.labels_waiting` and is tried again 15 min, 1 h and 4 h
after the first refusals, then daily, or at once with launchpad `retry_refused: true` (after fixing
it in Billbee or PULPO). Every call is billed, so a refused call is never repeated every tick.

Test hook: env `BPP_TEST_CRASH_AFTER=label_call|label|tracking|attach` exits the process (code 137,
like SIGKILL) right after that remote write and before its record: `label_call` before Billbee's
answer is stored (the PDF is lost), `label` after it is stored but before the ledger says 'done'.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from filelock import FileLock

from billbee_pulpo_pipeline.clients.billbee import (
    BillbeeClient,
    Dimensions,
    Order,
    ShipWithLabelRequest,
    ShipWithLabelResult,
)
from billbee_pulpo_pipeline.clients.http import NotFoundError, RequestRejectedError, TransientApiError
from billbee_pulpo_pipeline.clients.pulpo import PackingBox, PackingOrder, PulpoClient, ShipmentTracking
from billbee_pulpo_pipeline.config.models import ShippingLabelsSettings
from billbee_pulpo_pipeline.defs.common import (
    Flow,
    canonical_json,
    count_metadata,
    mapping_kind,
    write_metadata,
    writer_lock,
)
from billbee_pulpo_pipeline.defs.crash import crash_point
from billbee_pulpo_pipeline.defs.packing_events import PACKING_ORDERS
from billbee_pulpo_pipeline.defs.shipping_method_filter import OTHER_METHOD, ShippingMethodFilter
from billbee_pulpo_pipeline.mapping import labels as lm
from billbee_pulpo_pipeline.state import LedgerEntry, StateStore

WRITER = "billbee_labels"
PROCESSED = "labels_processed"
WAITING = "labels_waiting"
PDFS = "label_pdfs"
PLAN_CHECK = "labels_plan_safe"
ACCOUNTED_CHECK = "boxes_accounted_for"
QUARANTINE_KIND = "box"
LOCK_WAIT_SECONDS = 600.0   # a run waits this long for another run of the flow to finish writing


class Halt(Exception):
    """Billbee or PULPO is unreachable, or a label's outcome is unknown: stop, fail the run at the end."""


# --------------------------------------------------------------------------------------------------
# What the run knows about a box and its order


@dataclass
class OrderContext:
    """The Billbee order of a packing order, read once per run and only when a box needs a label."""

    billbee_order_id: str
    order: Order | None = None
    problem: str | None = None
    shipping_method_id: int | None = None

    @property
    def shipments(self) -> list[dict[str, Any]]:
        if self.order is None:
            return []
        return [s.model_dump(mode="json") for s in self.order.ShippingIds or []]

    @property
    def highest_shipment_id(self) -> int:
        return max((int(s["BillbeeId"]) for s in self.shipments if s.get("BillbeeId") is not None), default=0)


@dataclass
class BoxWork:
    """One PULPO box on its way through label, tracking and attachment."""

    packing_order_id: int
    box: PackingBox
    boxes_in_order: int
    billbee_order_id: str
    trackings: list[ShipmentTracking] = field(default_factory=list)
    label: dict[str, Any] | None = None     # the done label: shipping_id, tracking_url, carrier_code, …
    recheck_billbee: bool = False           # the label entry is 'pending': look at Billbee first
    pending_request: dict[str, Any] = field(default_factory=dict)
    carrier: lm.Carrier | None = None
    weight: int | None = None
    dimensions: dict[str, float] | None = None
    waiting: str | None = None              # why this box waits (quarantine reason)
    complete: bool = False

    @property
    def box_id(self) -> str:
        return str(self.box.id)

    @property
    def describe(self) -> str:
        return f"box {self.box.box_number or '?'} of {self.boxes_in_order}, PULPO box {self.box_id}"

    def plan_row(self) -> dict[str, Any]:
        return {"box_id": self.box_id, "packing_order_id": self.packing_order_id,
                "billbee_order_id": self.billbee_order_id,
                "provider_id": self.carrier.provider_id if self.carrier else None,
                "product_id": self.carrier.product_id if self.carrier else None,
                "weight_grams": self.weight, "boxes_in_order": self.boxes_in_order,
                "pulpo_tracking": next((t.tracking_code for t in self.trackings if t.tracking_code), None),
                "checked_billbee": self.recheck_billbee}


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("packing_orders", "boxes", "labels_created", "labels_recovered", "trackings_written",
         "trackings_adopted", "attachments", "attachments_adopted", "not_from_billbee", OTHER_METHOD,
         "quarantined", "waiting", "attention", "failed"), 0))
    quarantine: list[dict[str, str]] = field(default_factory=list)
    attention: list[dict[str, str]] = field(default_factory=list)
    labels: list[dict[str, str]] = field(default_factory=list)
    plan: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    def metadata(self, dry_run: bool) -> dict[str, dg.MetadataValue]:
        c = self.counts
        written = c["labels_created"] + c["trackings_written"] + c["attachments"]
        return write_metadata(
            count_metadata(records_read=c["packing_orders"], records_written=written,
                           records_skipped=c["not_from_billbee"] + c[OTHER_METHOD] + c["waiting"], **c),
            dry_run=dry_run, failures=self.failures, plan=self.plan,
            labels=self.labels, quarantine=self.quarantine, attention=self.attention)


# --------------------------------------------------------------------------------------------------
# The writer


class LabelWriter:
    """Labels, trackings and attachments for the finished packing orders of one integration (plain
    code over the two clients and the store, no Dagster)."""

    def __init__(self, flow: Flow, billbee: BillbeeClient, pulpo: PulpoClient, store: StateStore, *,
                 dry_run: bool = False, retry_refused: bool = False, log: logging.Logger | Any = None,
                 now: datetime | None = None) -> None:
        self.flow = flow
        self.settings: ShippingLabelsSettings = flow.integration.settings  # type: ignore[assignment]
        self.billbee = billbee
        self.pulpo = pulpo
        self.store = store
        self.dry_run = dry_run
        self.retry_refused = retry_refused
        self.log = log or logging.getLogger(__name__)
        self.now = now or datetime.now(UTC)
        self.integration = flow.slug
        self.order_kind = mapping_kind("order", flow)
        self.label_kind = mapping_kind("label", flow)
        self.provider_map = {int(r.pulpo_shipping_method_id): (int(r.billbee_provider_id), int(r.billbee_product_id))
                             for r in self.settings.provider_map}
        self.methods = ShippingMethodFilter(self.settings.pulpo_shipping_methods, pulpo)
        self.report = Report()
        self.halted: str | None = None
        self.work: list[tuple[str, str, PackingOrder]] = []     # (packing order id, hash, order)
        self.boxes: dict[str, list[BoxWork]] = {}               # packing order id -> its boxes
        self.orders: dict[str, OrderContext] = {}               # Billbee order id -> context
        self.planned: list[dict[str, Any]] = []                 # label calls planned (the check's input)
        self.problems: list[dict[str, str]] = []                # what the blocking check found
        self.unaccounted: list[dict[str, str]] = []
        self.waiting_state: dict[str, dict[str, Any]] = {}

    # ---- the run ----------------------------------------------------------------------------------

    def key(self, step: str, box_id: str) -> str:
        """Ledger key of a box's step: the data's identity (PULPO account and box id), so a rerun, a
        crashed run and a racing run all mean the same write."""
        return f"{step}:{self.flow.source.slug}:{box_id}"

    def lock(self) -> FileLock:
        """Held while the run writes: two runs of one integration never label the same box at once."""
        return writer_lock(self.store.path, self.flow, LOCK_WAIT_SECONDS)

    def run(self) -> Report:
        """Every pending or due packing order, one at a time: plan (read PULPO's boxes and trackings,
        the Billbee order, what a lost answer made), the blocking check, then the writes. One at a
        time, so the Billbee order read of the next packing order overlaps the label calls of this one
        (each endpoint has its own pace) and a stop leaves whole packing orders behind."""
        self._select()
        for key, digest, packing in self.work:
            if self.halted or self.problems:
                self.report.counts["failed"] += 1
                continue
            try:
                self._plan_packing_order(key, packing)
            except Halt as exc:
                self._halt(key, str(exc))
                continue
            except (NotFoundError, RequestRejectedError) as exc:  # PULPO no longer shows it as it was
                reason = f"PULPO packing order {key} could not be read: {exc.reason}"
                self.report.counts["attention"] += 1
                self.report.attention.append({"billbee_order_id": "", "box_id": "", "reason": reason})
                self._execute(key, digest)
                continue
            planned = [w.plan_row() for w in self.boxes.get(key, []) if self._needs_call(w)]
            self.planned += planned
            self.problems += self.check(planned)
            if self.problems:   # the blocking check: nothing of this packing order is written
                continue
            self._execute(key, digest)
        return self.report

    def check(self, planned: list[dict[str, Any]]) -> list[dict[str, str]]:
        """The blocking check: the planned label calls against a fresh read of the ledger."""
        keys = {self.key("label", str(row["box_id"])): str(row["box_id"]) for row in planned}
        statuses = {keys[key]: entry.status for key, entry in self.store.ledger_get_many(keys).items()}
        for row in planned:  # a pending entry Billbee was asked about this run is to be sent again
            if row.get("checked_billbee") and statuses.get(str(row["box_id"])) == "pending":
                statuses.pop(str(row["box_id"]))
        return lm.plan_problems(planned, statuses)

    def _execute(self, key: str, digest: str) -> None:
        boxes = self.boxes.get(key)
        if boxes is None:   # skipped while planning (not from Billbee)
            if not self.dry_run:
                self._settle(key, digest, [])
            return
        try:
            for work in boxes:
                self._box(work)
        except Halt as exc:
            self._halt(key, str(exc))
            return
        if not self.dry_run:
            self._settle(key, digest, boxes)

    def _halt(self, key: str, reason: str) -> None:
        """Stop writing: what is done is recorded, the packing order stays pending for the next run."""
        self.halted = reason
        self.report.failures.append({"packing_order_id": key, "reason": reason})
        self.report.counts["failed"] += 1

    # ---- which packing orders -----------------------------------------------------------------------

    def _select(self) -> None:
        changed = dict(self.store.pending_changes(self.flow.dataset(PACKING_ORDERS), self.flow.dataset(PROCESSED)))
        waiting = {key: json.loads(payload) for key, payload in
                   self.store.snapshot_rows(self.flow.dataset(WAITING)).items()}
        due = {key for key, state in waiting.items()
               if self.retry_refused or _parse_time(state.get("retry_at")) <= self.now}
        self.report.counts["waiting"] += sum(len(state.get("boxes", [])) for key, state in waiting.items()
                                             if key not in due and key not in changed)
        keys = sorted(set(changed) | due, key=_numeric)
        hashes = self.store.snapshot_hashes(self.flow.dataset(PACKING_ORDERS), keys)
        payloads = self.store.snapshot_rows(self.flow.dataset(PACKING_ORDERS), keys)
        self.waiting_state = waiting
        for key in keys:
            if key in payloads:
                self.work.append((key, hashes[key], PackingOrder.model_validate(json.loads(payloads[key]))))
        self.report.counts["packing_orders"] = len(self.work)

    def _plan_packing_order(self, key: str, packing: PackingOrder) -> None:
        billbee_order_id = self._billbee_order_of(packing)
        if billbee_order_id is None:
            self.report.counts["not_from_billbee"] += 1
            self._plan_row(key, None, "skip", f"sales order {packing.sales_order_id} did not come from Billbee")
            return
        if self._left_to_other_flow(key, packing, billbee_order_id):
            return
        boxes = self._pulpo(lambda: self.pulpo.list_boxes(int(key)), "boxes")
        boxes = sorted(boxes, key=lambda b: (b.box_number or 0, b.id or 0))
        work = [BoxWork(int(key), box, len(boxes), billbee_order_id) for box in boxes if box.id is not None]
        self.report.counts["boxes"] += len(work)
        ledger = self.store.ledger_get_many([self.key(step, w.box_id) for w in work for step in ("label", "tracking")])
        for w in work:
            self._plan_box(w, ledger)
        if any(w.label is None for w in work):
            context = self._order_context(billbee_order_id, packing)
            for w in work:
                self._plan_label(w, context)
        self.boxes[key] = work
        for w in work:
            action = "label" if self._needs_call(w) else "wait" if w.waiting else "tracking/attachment" \
                if w.label else "recover"
            self._plan_row(key, w, action, w.waiting or "")

    def _left_to_other_flow(self, key: str, packing: PackingOrder, billbee_order_id: str) -> bool:
        """`pulpo_shipping_methods`: a packing order of another shipping method is skipped (counted; one
        without a shipping method is shown as needing attention)."""
        skip = self._pulpo(lambda: self.methods.skip_reason(packing.sales_order_id), "sales order")
        if skip is None:
            return False
        reason, attention = skip
        self.report.counts["attention" if attention else OTHER_METHOD] += 1
        if attention:
            self.report.attention.append({"billbee_order_id": billbee_order_id, "box_id": "", "reason": reason})
        self._plan_row(key, None, "skip", reason)
        return True

    def _billbee_order_of(self, packing: PackingOrder) -> str | None:
        if packing.sales_order_id is None:
            return None
        found = self.store.get_mappings_by_pulpo(self.order_kind, [packing.sales_order_id])
        mappings = found.get(str(packing.sales_order_id))
        return mappings[0].billbee_id if mappings else None

    def _plan_box(self, w: BoxWork, ledger: Mapping[str, LedgerEntry]) -> None:
        w.weight = lm.weight_grams(w.box.weight)
        w.dimensions = lm.dimensions_cm(w.box.length, w.box.width, w.box.height)
        label = ledger.get(self.key("label", w.box_id))
        if label is not None and label.status == "done":
            w.label = dict(label.outcome or {})
        elif label is not None and label.status == "pending":
            w.recheck_billbee = True
            w.pending_request = dict(label.request or {})
        tracking = ledger.get(self.key("tracking", w.box_id))
        if w.label is None or tracking is None or tracking.status != "done":
            w.trackings = self._pulpo(lambda: self.pulpo.list_shipment_trackings(w.packing_order_id, int(w.box_id)),
                                      "shipment trackings")

    def _order_context(self, billbee_order_id: str, packing: PackingOrder) -> OrderContext:
        context = self.orders.get(billbee_order_id)
        if context is not None:
            return context
        context = OrderContext(billbee_order_id)
        try:
            context.order = self.billbee.get_order(int(billbee_order_id))
        except NotFoundError:
            context.problem = f"Billbee order {billbee_order_id} no longer exists"
        except TransientApiError as exc:
            raise Halt(f"Billbee order {billbee_order_id} could not be read: {exc.reason}") from exc
        except RequestRejectedError as exc:
            context.problem = f"Billbee refused to show order {billbee_order_id}: {exc.reason}"
        state = context.order.State if context.order else None
        if state in lm.NO_LABEL_STATES:
            context.problem = (f"the Billbee order {billbee_order_id} is {lm.NO_LABEL_STATES[state]}: no label "
                               "is bought for it")
        if self.provider_map and packing.sales_order_id is not None:
            context.shipping_method_id = self._pulpo(
                lambda: self.methods.shipping_method(int(packing.sales_order_id)), "sales order")
        self.orders[billbee_order_id] = context
        return context

    def _plan_label(self, w: BoxWork, context: OrderContext) -> None:
        """Decide the label of a box that has none recorded: recover a lost one, or plan the call."""
        if w.label is not None:
            return
        if w.recheck_billbee and self._recover(w, context):
            return
        if context.problem:
            w.waiting = context.problem
            return
        foreign = [t for t in w.trackings if t.tracking_code]
        if foreign:
            t = foreign[0]
            w.waiting = (f"the PULPO box already has tracking {t.tracking_code} ({t.carrier_code or 'no carrier'}) "
                         "that this integration did not write (another label service?): no Billbee label was "
                         "bought; remove that tracking in PULPO to have one made")
            return
        others = lm.foreign_shipments(context.shipments, self._claims(context.shipments))
        if others:
            w.waiting = (f"the Billbee order {context.billbee_order_id} already has shipment(s) "
                         f"{', '.join(others)} that this integration did not make (a label made in Billbee?): no "
                         "second label was bought")
            return
        problem = lm.box_problem(w.weight, w.boxes_in_order)
        carrier = lm.choose_carrier(context.shipping_method_id, self.provider_map,
                                    context.order.ShippingProviderId if context.order else None,
                                    context.order.ShippingProviderProductId if context.order else None)
        if isinstance(carrier, str):
            problem = problem or carrier
        else:
            w.carrier = carrier
        if problem:
            w.waiting = problem

    def _needs_call(self, w: BoxWork) -> bool:
        return w.label is None and w.carrier is not None and not w.waiting

    def _claims(self, shipments: list[dict[str, Any]]) -> dict[str, str]:
        """ShippingId -> box id for the shipments this flow made (its label mapping)."""
        ids = [str(s.get("ShippingId")) for s in shipments if s.get("ShippingId")]
        return {key: m.pulpo_id for key, m in self.store.get_mappings(self.label_kind, ids).items()}

    # ---- recovering a label whose answer was lost ---------------------------------------------------

    def _recover(self, w: BoxWork, context: OrderContext) -> bool:
        """The label entry is 'pending': did Billbee make the label? True when it did (recorded)."""
        sent = w.pending_request
        if self.dry_run:
            w.waiting = "a label call's outcome is unknown: the run looks at Billbee's shipments first"
            return True
        try:
            shipments = [s.model_dump(mode="json") for s in self.billbee.iter_shipments(
                order_id=int(w.billbee_order_id), minimum_shipment_id=int(sent.get("after_shipment_id") or 0) + 1)]
        except (TransientApiError, RequestRejectedError, NotFoundError) as exc:  # no answer: no new call either
            raise Halt(f"Billbee shipments of order {w.billbee_order_id} could not be read: {exc.reason}") from exc
        found = lm.recognise_label(shipments, provider_id=int(sent.get("provider_id") or 0),
                                   product_id=int(sent.get("product_id") or 0),
                                   after_shipment_id=int(sent.get("after_shipment_id") or 0),
                                   claimed_by=self._claims(shipments), box_id=w.box_id)
        if found is None:
            self.log.info(f"{self.flow.name}: Billbee has no label for {w.describe}; it is requested again")
            return False
        stored = self._stored_answer(w.box_id)
        label = {"shipping_id": str(found["ShippingId"]), "tracking_url": found.get("TrackingUrl"),
                 "carrier_code": lm.carrier_code(found.get("Shipper")), "billbee_order_id": w.billbee_order_id,
                 "shipment_id": found.get("BillbeeId"), "provider_id": found.get("ShippingProviderId"),
                 "product_id": found.get("ShippingProviderProductId"), "recovered": True,
                 "pdf": bool(stored and stored.get("shipping_id") == str(found["ShippingId"]))}
        self._record_label(w, label)
        self.report.counts["labels_recovered"] += 1
        return True

    # ---- the three steps of a box -------------------------------------------------------------------

    def _box(self, w: BoxWork) -> None:
        if w.waiting:
            self._quarantine(w, w.waiting)
            return
        if w.label is None and w.carrier is not None:
            if self.dry_run:
                return
            self._make_label(w)
        if w.label is None:
            return
        if self.dry_run:
            return
        if not self._write_tracking(w):
            return
        if self.settings.label_attach and not self._attach(w):
            return
        w.complete = True

    def _make_label(self, w: BoxWork) -> None:
        context = self.orders[w.billbee_order_id]
        assert w.carrier is not None
        last = all(o.label is not None or o is w or o.waiting for o in self.boxes[str(w.packing_order_id)])
        request = ShipWithLabelRequest(
            OrderId=int(w.billbee_order_id), ProviderId=w.carrier.provider_id, ProductId=w.carrier.product_id,
            ChangeStateToSend=self.settings.change_state_to_send and last, WeightInGram=w.weight,
            ClientReference=lm.client_reference(context.order.OrderNumber if context.order else None,
                                                w.box.box_number, w.boxes_in_order),
            Dimension=Dimensions(**w.dimensions) if w.dimensions else None)
        key = self.key("label", w.box_id)
        self.store.ledger_begin(key, self.integration, "shipwithlabel", {
            "billbee_order_id": w.billbee_order_id, "packing_order_id": w.packing_order_id,
            "provider_id": w.carrier.provider_id, "product_id": w.carrier.product_id,
            "carrier_source": w.carrier.source, "weight_grams": w.weight, "dimensions": w.dimensions,
            "after_shipment_id": context.highest_shipment_id})
        try:
            result = self.billbee.ship_with_label(request)
        except (RequestRejectedError, NotFoundError) as exc:
            reason = lm.refusal_reason(w.billbee_order_id, w.describe, exc.code, exc.reason)
            self.store.ledger_finish(key, "failed", {"code": exc.code}, message=reason)
            w.waiting = reason
            self._quarantine(w, reason)
            return
        except TransientApiError as exc:   # the entry stays 'pending': the next run asks Billbee first
            raise Halt(f"Billbee label call for order {w.billbee_order_id} ({w.describe}) failed: {exc.reason}; "
                       "the next run looks at the order's shipments before calling again") from exc
        crash_point("label_call")
        label = self._label_from(w, result)
        self._store_answer(w.box_id, label, result)
        crash_point("label")
        self._record_label(w, label)
        self.report.counts["labels_created"] += 1

    def _label_from(self, w: BoxWork, result: ShipWithLabelResult) -> dict[str, Any]:
        if not result.ShippingId:
            raise Halt(f"Billbee answered the label call for order {w.billbee_order_id} without a tracking number")
        assert w.carrier is not None
        return {"shipping_id": str(result.ShippingId), "tracking_url": result.TrackingUrl,
                "carrier_code": lm.carrier_code(result.Carrier), "billbee_order_id": w.billbee_order_id,
                "provider_id": w.carrier.provider_id, "product_id": w.carrier.product_id,
                "pdf": lm.pdf_from_base64(result.LabelDataPdf) is not None}

    def _store_answer(self, box_id: str, label: dict[str, Any], result: ShipWithLabelResult) -> None:
        """Write Billbee's answer ahead of the ledger: the PDF exists only in this answer (kept only until
        it is attached, and not at all without `label_attach`: it carries the buyer's address)."""
        if not self.settings.label_attach:
            return
        payload = {"shipping_id": label["shipping_id"], "pdf": result.LabelDataPdf or None}
        self.store.upsert_snapshot(self.flow.dataset(PDFS),
                                   [(box_id, label["shipping_id"], canonical_json(payload))])

    def _stored_answer(self, box_id: str) -> dict[str, Any] | None:
        payload = self.store.snapshot_rows(self.flow.dataset(PDFS), [box_id]).get(box_id)
        return json.loads(payload) if payload else None

    def _record_label(self, w: BoxWork, label: dict[str, Any]) -> None:
        """Claim the tracking number for the box, then mark the label done (a crash in between leaves
        'pending' with the claim, and the recovery finds its own shipment)."""
        self.store.put_mappings(self.label_kind, [(label["shipping_id"], w.box_id, {
            "billbee_order_id": w.billbee_order_id, "packing_order_id": w.packing_order_id})])
        self.store.ledger_finish(self.key("label", w.box_id), "done", label, label["shipping_id"])
        w.label = label
        w.recheck_billbee = False
        self.report.labels.append({"billbee_order_id": w.billbee_order_id, "box": w.describe,
                                   "tracking": label["shipping_id"], "carrier": label.get("carrier_code") or ""})

    def _write_tracking(self, w: BoxWork) -> bool:
        assert w.label is not None
        key = self.key("tracking", w.box_id)
        entry = self.store.ledger_get(key)
        if entry is not None and entry.status == "done":
            return True
        code = w.label["shipping_id"]
        existing = next((t for t in w.trackings if t.tracking_code == code), None)
        if existing is not None:   # written by a run that died before its record
            self.store.ledger_begin(key, self.integration, "shipment_tracking", {"tracking_code": code})
            self.store.ledger_finish(key, "done", {"id": existing.id, "adopted": True}, existing.id)
            self.report.counts["trackings_adopted"] += 1
            return True
        payload = {"carrier_code": w.label.get("carrier_code"), "tracking_code": code,
                   "tracking_url": w.label.get("tracking_url")}
        self.store.ledger_begin(key, self.integration, "shipment_tracking", payload)
        try:
            tracking = self.pulpo.create_shipment_tracking(w.packing_order_id, int(w.box_id), payload)
        except (RequestRejectedError, NotFoundError) as exc:
            reason = f"PULPO refused the tracking {code} for {w.describe}: {exc.reason}"
            self.store.ledger_finish(key, "failed", message=reason)
            self._quarantine(w, reason)
            return False
        except TransientApiError as exc:
            raise Halt(f"PULPO tracking for {w.describe} failed: {exc.reason}") from exc
        crash_point("tracking")
        self.store.ledger_finish(key, "done", {"id": tracking.id}, tracking.id)
        self.report.counts["trackings_written"] += 1
        return True

    def _attach(self, w: BoxWork) -> bool:
        assert w.label is not None
        key = self.key("attach", w.box_id)
        entry = self.store.ledger_get(key)
        if entry is not None and entry.status in ("done", "attention"):
            return True
        filename = lm.label_filename(w.label["shipping_id"])
        if entry is not None and entry.status == "pending" and self._attached(w, filename):
            self.store.ledger_finish(key, "done", {"filename": filename, "adopted": True})
            self.report.counts["attachments_adopted"] += 1
            self._forget_answer(w.box_id)
            return True
        stored = self._stored_answer(w.box_id)
        pdf = lm.pdf_from_base64(stored.get("pdf")) if stored and stored.get("shipping_id") == \
            w.label["shipping_id"] else None
        self.store.ledger_begin(key, self.integration, "attach", {"filename": filename})
        if pdf is None:
            reason = (f"the label PDF of {w.describe} (tracking {w.label['shipping_id']}) was lost with Billbee's "
                      "answer and Billbee's API cannot send it again: print the label from the order in Billbee")
            self.store.ledger_finish(key, "attention", message=reason)
            self.report.counts["attention"] += 1
            self.report.attention.append({"billbee_order_id": w.billbee_order_id, "box_id": w.box_id,
                                          "reason": reason})
            return True
        try:
            self.pulpo.attach_to_box(w.packing_order_id, int(w.box_id), filename, content=pdf,
                                     content_type="application/pdf", type="label")
        except (RequestRejectedError, NotFoundError) as exc:
            reason = f"PULPO refused the label PDF for {w.describe}: {exc.reason}"
            self.store.ledger_finish(key, "failed", message=reason)
            self._quarantine(w, reason)
            return False
        except TransientApiError as exc:
            raise Halt(f"PULPO attachment for {w.describe} failed: {exc.reason}") from exc
        crash_point("attach")
        self.store.ledger_finish(key, "done", {"filename": filename, "bytes": len(pdf)})
        self.report.counts["attachments"] += 1
        self._forget_answer(w.box_id)
        return True

    def _attached(self, w: BoxWork, filename: str) -> bool:
        try:
            found = self.pulpo.box_attachments([int(w.box_id)])
        except TransientApiError as exc:
            raise Halt(f"PULPO attachments of {w.describe} could not be read: {exc.reason}") from exc
        # The spec's BasicAttachment has only `type` and `url`: a label on a box we were attaching to is ours
        # (a box with another service's label has its tracking too, and then no Billbee label is bought).
        return any(a.get("type") == "label" or filename in (str(a.get("url")), a.get("filename"), a.get("name"))
                   for a in found.get(int(w.box_id), []))

    def _forget_answer(self, box_id: str) -> None:
        """The label is in PULPO now: keep no copy of a document with the buyer's address."""
        self.store.delete_snapshot_rows(self.flow.dataset(PDFS), [box_id])

    # ---- outcomes -----------------------------------------------------------------------------------

    def _quarantine(self, w: BoxWork, reason: str) -> None:
        w.waiting = reason
        self.report.counts["quarantined"] += 1
        self.report.quarantine.append({"billbee_order_id": w.billbee_order_id,
                                       "packing_order_id": str(w.packing_order_id), "box_id": w.box_id,
                                       "reason": reason})

    def _settle(self, key: str, digest: str, boxes: list[BoxWork]) -> None:
        """Record a packing order: processed (its hash), and waiting with a retry time while a box waits."""
        waiting = [w for w in boxes if w.waiting]
        if waiting:
            self.store.quarantine_put_many(self.integration, QUARANTINE_KIND, {
                w.box_id: (w.waiting, {"billbee_order_id": w.billbee_order_id, "packing_order_id": key,
                                       "box_number": w.box.box_number}) for w in waiting})
            attempts = int(self.waiting_state.get(key, {}).get("attempts", 0)) + 1
            retry_at = lm.next_retry(attempts, self.now).isoformat()
            state = {"retry_at": retry_at, "attempts": attempts, "boxes": [w.box_id for w in waiting]}
            self.store.upsert_snapshot(self.flow.dataset(WAITING), [(key, retry_at, canonical_json(state))])
        elif key in self.waiting_state:
            self.store.delete_snapshot_rows(self.flow.dataset(WAITING), [key])
        done = [w.box_id for w in boxes if not w.waiting]
        if done:
            self.store.quarantine_resolve_many(self.integration, done, kind=QUARANTINE_KIND)
        incomplete = [w for w in boxes if not w.complete and not w.waiting]
        if incomplete:   # neither done nor waiting (should not happen): leave it pending for the next run
            self.unaccounted += [{"box_id": w.box_id, "packing_order_id": key} for w in incomplete]
            return
        self.store.upsert_snapshot(self.flow.dataset(PROCESSED), [(key, digest, canonical_json(
            {"boxes": len(boxes), "waiting": len(waiting)}))])

    def _plan_row(self, key: str, w: BoxWork | None, action: str, detail: str) -> None:
        if not self.dry_run:
            return
        self.report.plan.append({
            "packing_order_id": key, "box_id": w.box_id if w else "", "billbee_order_id": w.billbee_order_id if w
            else "", "action": action, "provider/product": f"{w.carrier.provider_id}/{w.carrier.product_id}"
            if w and w.carrier else "", "weight_g": (w.weight or "") if w else "", "detail": detail})

    def _pulpo(self, call: Any, what: str) -> Any:
        try:
            return call()
        except TransientApiError as exc:
            raise Halt(f"PULPO {what} could not be read: {exc.reason}") from exc


def _parse_time(text: Any) -> datetime:
    try:
        value = datetime.fromisoformat(str(text))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _numeric(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (0, key)

