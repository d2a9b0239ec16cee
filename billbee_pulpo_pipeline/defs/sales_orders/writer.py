"""Sales orders (Billbee → PULPO): the writer that converges PULPO to Billbee's orders, exactly once.

Which orders: every order in dataset `<slug>.billbee_orders` whose hash differs from the one in
`<slug>.pulpo_orders_processed` (one SQL join, never a loop over everything). An order is recorded
as processed only when it needs nothing more until Billbee changes it. Quarantined orders (waiting
for a product, rejected by PULPO, unusable lines) and orders a transient error stopped stay pending,
so every run re-evaluates them without anyone's help; their PULPO write is not repeated while the
payload PULPO refused is unchanged (the ledger remembers it), so a rerun sends no needless write.

What per order (settings `import_states`, `cancel_states`, `shop_ids`, `exclude_tags`, `require_tags`):
- not for this warehouse (another shop, an excluded tag, no required tag), not in PULPO → skipped with
  the reason (counted as 'filtered'), never created;
- import state, not in PULPO → create (`POST /sales/bulk/orders` in batches of unique order numbers,
  per-item outcomes; a single order goes to `POST /sales/orders`) under the number of
  `order_num_template`; a number PULPO says is taken by another Billbee order is retried under
  `order_num_on_collision`, then with the Billbee id appended (`mapping/order_numbers.py`);
- import state, in PULPO, PULPO payload changed → update while PULPO's order is `queue`, else the
  ledger says 'attention' ("not updatable: PULPO order is in state X");
- cancel state, in PULPO → `POST /sales/orders/{id}/cancel`; 422 (ended) → 'attention' with PULPO's
  message, the run goes on;
- in PULPO (not ended or cancelled there) and now in a state that must not ship (back to Bestellt
  after a charge-back, a dunning state, Gelöscht when it is no cancel state, ...) or newly out of this
  warehouse's scope (an excluded tag) → 'attention' (ledger `order:hold:<id>`) naming the PULPO order
  and what to do; nothing is written to PULPO. Back in an import state, the entry is closed;
- the normal lifecycle after the import (Gepackt, Versendet, Im Fulfillment, Abgeschlossen, Archiviert,
  Bewertet, Reklamation, Retoure), the states our own flows set → skipped (counted).

Exactly once: every write is framed by the ledger (`order:create:<id>`, `order:cancel:<id>`,
`order:update:<id>:<payload hash>`). A create whose ledger entry is still 'pending' (the process died
between PULPO's answer and the record) is looked up by the `order_num` it was sent with (stored in the
ledger before the call, whatever the Billbee number is now), then among the orders PULPO inserted since
by `external_order_num` = Billbee id, and adopted when found. The number sent is kept in the order
mapping and sent on every update. PULPO keeps `order_num` unique, so even two runs racing cannot create
an order twice.

Test hook: with env `BPP_TEST_CRASH_AFTER=create|cancel|update` the process exits (code 137, like
SIGKILL) right after that PULPO write and before its ledger record. Only the crash tests set it.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg

from billbee_pulpo_pipeline.clients.billbee.states import ORDER_STATES
from billbee_pulpo_pipeline.clients.http import NotFoundError, RequestRejectedError, TransientApiError
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient, SalesOrder
from billbee_pulpo_pipeline.config.models import SalesOrdersSettings
from billbee_pulpo_pipeline.defs.articles import ArticleCatalog
from billbee_pulpo_pipeline.defs.common import (
    Flow,
    canonical_json,
    count_metadata,
    fingerprint,
    mapping_kind,
    preview_table,
    write_metadata,
)
from billbee_pulpo_pipeline.defs.crash import crash_point
from billbee_pulpo_pipeline.defs.sales_orders.lines import Hit, LineResolver
from billbee_pulpo_pipeline.mapping import order_numbers
from billbee_pulpo_pipeline.mapping import orders as om
from billbee_pulpo_pipeline.state import IdMapping, LedgerEntry, LedgerFinish, StateStore

ORDERS = "billbee_orders"
# Billbee states an imported order normally reaches after the import (our status, label and shipment flows
# set Gepackt and Versendet; Billbee and the marketplaces the rest): no attention when an order gets there.
LIFECYCLE_STATES = frozenset({4, 5, 7, 9, 10, 13, 16, 17})  # Versendet .. Retoure, Gepackt, Im Fulfillment
UNPAID_STATES = frozenset({1, 2, 11, 12, 14, 15})  # Bestellt, Bestätigt, dunning, Angeboten, reminder
PULPO_DONE = frozenset({"ended", "cancelled"})
SCAN_MARGIN = timedelta(hours=3)  # PULPO's inserted_at may be local time: scan from well before the create
PROCESSED = "pulpo_orders_processed"
WRITER = "pulpo_sales_orders"
CHECK = "importable_orders_accounted_for"
QUARANTINE_KIND = "order"
CHUNK = 10_000      # orders taken from the store at a time (bounded memory at any backlog)
BULK_SIZE = 100     # sales orders per POST /sales/bulk/orders


# --------------------------------------------------------------------------------------------------
# The plan of one order and the run's report


@dataclass
class Job:
    """One changed order on its way through the run."""

    key: str
    hash: str
    fields: dict[str, Any]
    action: str = ""                  # create | update | cancel | "" (settled without a write)
    pulpo_id: str | None = None
    mapped_extra: dict[str, Any] = field(default_factory=dict)
    lines: list[om.Line] = field(default_factory=list)
    payload: dict[str, Any] | None = None
    payload_hash: str = ""            # fingerprint of `payload`: what PULPO has when the mapping says so
    order_num: str = field(init=False, default="")
    hold_event: str = ""              # what happened to an order in PULPO that must not ship (action "hold")
    hold_advice: str = ""             # what the merchant should do about it
    first_hash: str = ""              # payload hash under the first number, once a collision renumbered it
    refusal: str = ""                 # PULPO's words when it refused the order number

    def __post_init__(self) -> None:
        self.order_num = om.order_num(self.fields)

    def set_payload(self, payload: dict[str, Any]) -> None:
        # The writer chooses the number (template, collision, the one PULPO already has); stamped here.
        self.payload = {**payload, "order_num": self.order_num}
        self.payload_hash = fingerprint(self.payload)

    @property
    def ledger_key(self) -> str:
        if self.action == "update":
            return f"order:update:{self.key}:{self.payload_hash[:16]}"
        return f"order:{self.action}:{self.key}"


@dataclass
class Report:
    read: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("created", "adopted", "cancelled", "updated", "unchanged", "attention", "skipped", "filtered",
         "quarantined", "failed"), 0))
    quarantine: list[dict[str, str]] = field(default_factory=list)
    attention: list[dict[str, str]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    plan: list[dict[str, str]] = field(default_factory=list)
    importable: list[str] = field(default_factory=list)

    def metadata(self, dry_run: bool) -> dict[str, dg.MetadataValue]:
        c = self.counts
        written = c["created"] + c["cancelled"] + c["updated"]
        return write_metadata(
            count_metadata(records_read=self.read, records_written=written,
                           records_skipped=c["skipped"] + c["unchanged"] + c["filtered"], **c),
            dry_run=dry_run, failures=self.failures, plan=self.plan,
            quarantine=self.quarantine, attention=self.attention)


class Halt(Exception):
    """PULPO is unreachable or refuses us: stop writing, keep what is done, fail the run at the end."""


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------------------------------
# The writer


class OrderWriter:
    """Converges PULPO to the pending Billbee orders of one integration (plain code, no Dagster)."""

    def __init__(self, flow: Flow, client: PulpoClient, store: StateStore, *, dry_run: bool = False,
                 log: logging.Logger | Any = None) -> None:
        self.flow = flow
        self.settings: SalesOrdersSettings = flow.integration.settings  # type: ignore[assignment]
        self.client = client
        self.store = store
        self.dry_run = dry_run
        self.started_at = datetime.now(UTC)
        self.log = log or logging.getLogger(__name__)
        self.report = Report()
        self.integration = flow.slug
        self.order_kind = mapping_kind("order", flow)
        self.customer_kind = mapping_kind("customer", flow)
        self.import_ids = set(self.settings.import_state_ids)
        self.cancel_ids = set(self.settings.cancel_state_ids)
        self.shop_ids = {str(i) for i in self.settings.shop_ids}
        self.exclude_tags = {t.casefold().strip() for t in self.settings.exclude_tags}
        self.require_tags = {t.casefold().strip() for t in self.settings.require_tags}
        self.warehouse_id = int(flow.target.warehouse_id)  # type: ignore[attr-defined]
        # Lines → PULPO products by Billbee article (the products flow's data), never written back.
        self.lines = LineResolver(ArticleCatalog(flow, store), self._lookup_product, self.settings.bundles,
                                  self.report.counts)
        self._customers: dict[str, int | None] = {}
        self._tenant_id: int | None = None
        self._halted: str | None = None
        self._handled: set[tuple[str, str]] = set()
        self._reset_buffers()

    def _reset_buffers(self) -> None:
        self.order_maps: list[tuple[str, str, dict[str, Any]]] = []
        self.customer_maps: list[tuple[str, str, dict[str, Any]]] = []
        self.processed: list[tuple[str, str, str]] = []
        self.quarantined: dict[str, tuple[str, Any]] = {}
        self.settled: list[str] = []

    # ---- run ----------------------------------------------------------------------------------------

    def run(self) -> Report:
        """The complete pass: every pending order this run has not handled yet."""
        self._pass()
        if not self._halted and not self.dry_run:
            # An update a killed run left 'pending' is owed nothing once this pass has handled the order's
            # newest version (its key names the payload, so a changed order never finishes the old entry).
            # Creates stay 'pending': that is what makes the next create look the order up first.
            self.store.ledger_close_interrupted(self.integration, ["update"], self.started_at,
                                                "interrupted before PULPO's answer was recorded; a later "
                                                "complete run handled the order's newest version")
        return self.report

    def write_pass(self) -> None:
        """An early pass while Billbee is still being read (see `write_behind.py`)."""
        if not self._halted:
            self._pass()

    def _pass(self) -> None:
        # (id, hash) pairs: an order changed again during the run is pending anew and handled again.
        pending = [(key, h) for key, h in self.store.pending_changes(self.flow.dataset(ORDERS),
                                                                     self.flow.dataset(PROCESSED))
                   if (key, h) not in self._handled]
        self._handled.update(pending)
        self.report.read += len(pending)
        self.open_quarantine = self.store.quarantine_open_keys(self.integration, kind=QUARANTINE_KIND)
        for chunk in chunks(pending, CHUNK):
            if self._halted:
                self.report.counts["failed"] += len(chunk)
                continue
            try:
                self._process(chunk)
            except Halt as exc:
                self._halted = str(exc)
                done = set(self.settled) | set(self.quarantined)
                failed = [k for k, _ in chunk if k not in done]
                self.report.counts["failed"] += len(failed)
                self.report.failures += [{"billbee_order_id": k, "reason": str(exc)} for k in failed]
            finally:
                self._flush()

    @property
    def halted(self) -> str | None:
        return self._halted

    def unaccounted(self) -> list[str]:
        """The importable orders of this run that are neither in PULPO (order mapping), nor in open
        quarantine, nor processed as skipped with a reason."""
        keys = set(self.report.importable)
        keys -= set(self.store.get_mappings(self.order_kind, keys))
        keys -= self.store.quarantine_open_keys(self.integration, kind=QUARANTINE_KIND, record_keys=keys)
        processed = self.store.snapshot_rows(self.flow.dataset(PROCESSED), keys)
        return sorted(key for key in keys if not _skipped_with_reason(processed.get(key)))

    def _process(self, chunk: Sequence[tuple[str, str]]) -> None:
        payloads = self.store.snapshot_rows(self.flow.dataset(ORDERS), [k for k, _ in chunk])
        jobs = [Job(key, h, om.fields_from_payload(payloads[key])) for key, h in chunk if key in payloads]
        mapped = self.store.get_mappings(self.order_kind, [j.key for j in jobs])
        ledger = self.store.ledger_get_many([f"order:{a}:{j.key}" for j in jobs
                                             for a in ("create", "cancel", "hold")])
        jobs = [j for j in jobs if self._classify(j, mapped.get(j.key), ledger)]
        self._prepare_payloads([j for j in jobs if j.action in ("create", "update")])
        jobs = [j for j in jobs if j.action]
        if self.dry_run:
            for job in jobs:
                if job.action == "hold":
                    self._plan(job, "attention", f"{job.hold_event}: {job.hold_advice}")
                    continue
                self._plan(job, f"would {job.action}", "if PULPO still has it in queue" if job.action == "update"
                           else "")
            return
        ledger.update(self.store.ledger_get_many([j.ledger_key for j in jobs if j.action == "update"]))
        self._creates([j for j in jobs if j.action == "create"], ledger)
        for job in jobs:
            if job.action == "cancel":
                self._cancel(job, ledger)
            elif job.action == "update":
                self._update(job, ledger)
            elif job.action == "hold":
                self._hold(job, ledger)

    # ---- what to do with an order -------------------------------------------------------------------

    def _classify(self, job: Job, mapped: IdMapping | None, ledger: Mapping[str, LedgerEntry]) -> bool:
        """Set `job.action`, or settle the order here; False when settled."""
        state = job.fields.get("state")
        if mapped is not None:
            job.pulpo_id, job.mapped_extra = mapped.pulpo_id, mapped.extra or {}
        # The number PULPO has is kept for good; a new order starts with the template's.
        job.order_num = str(job.mapped_extra.get("order_num") or self._numbers(job)[0])
        pulpo_state = job.mapped_extra.get("state")
        out_of_scope = self._out_of_scope(job)
        create_pending = _ledger_view(ledger.get(f"order:create:{job.key}"))[0] == "pending"
        if out_of_scope and mapped is None and not create_pending and state not in self.cancel_ids:
            return self._skip(job, f"not for this warehouse: {out_of_scope}", count="filtered")
        if state in self.import_ids and out_of_scope:
            return self._to_hold(job, f"is no longer for this warehouse ({out_of_scope})",
                                 "cancel it in PULPO if this warehouse must not ship it")
        if state in self.import_ids:
            if mapped is None and (before := ordered_before(job.fields, self.settings.import_since)):
                return self._skip(job, before)
            self.report.importable.append(job.key)
            self._close_hold(job, ledger)
            if mapped is None:
                job.action = "create"
            elif pulpo_state == "cancelled":
                return self._attention(job, f"PULPO order {job.pulpo_id} is cancelled, but the Billbee order is "
                                            f"'{_state_name(state)}' again: create it in PULPO by hand if it "
                                            "must ship", ledger_key=None)
            else:
                job.action = "update"
            return True
        if state in self.cancel_ids:
            if mapped is None:
                if _ledger_view(ledger.get(f"order:create:{job.key}"))[0] != "pending":
                    return self._skip(job, "not in PULPO")
                job.action = "cancel"  # a crashed create may have left it in PULPO: _cancel looks
                return True
            if pulpo_state == "cancelled":
                return self._skip(job, "already cancelled in PULPO")
            job.action = "cancel"
            return True
        if state in LIFECYCLE_STATES or (mapped is None and not create_pending) or pulpo_state in PULPO_DONE:
            return self._skip(job, f"state '{_state_name(state)}' is neither an import nor a cancel state")
        return self._to_hold(job, *_hold_reason(state, self.cancel_ids))

    # ---- scope, numbers and orders that must not ship -----------------------------------------------

    def _out_of_scope(self, job: Job) -> str | None:
        """Why this warehouse does not fulfil the order (`shop_ids`, `exclude_tags`, `require_tags`), or None."""
        shop = job.fields.get("shop_id")
        if self.shop_ids and str(shop) not in self.shop_ids:
            return f"shop {shop or '(none)'} is not in shop_ids"
        tags = {str(t).casefold().strip(): str(t) for t in job.fields.get("tags") or []}
        excluded = sorted(tags[t] for t in tags.keys() & self.exclude_tags)
        if excluded:
            return f"tag '{excluded[0]}' is in exclude_tags"
        if self.require_tags and not tags.keys() & self.require_tags:
            return f"none of the require_tags ({', '.join(sorted(self.settings.require_tags))}) is on the order"
        return None

    def _numbers(self, job: Job) -> list[str]:
        return order_numbers.candidates(job.fields, self.settings.order_num_template,
                                        self.settings.order_num_on_collision)

    def _to_hold(self, job: Job, event: str, advice: str) -> bool:
        job.action, job.hold_event, job.hold_advice = "hold", event, advice
        return True

    def _close_hold(self, job: Job, ledger: Mapping[str, LedgerEntry]) -> None:
        """The order is back in an import state (and scope): its hold attention is over, unless the merchant
        paused the PULPO order meanwhile (then it must be resumed to ship)."""
        key = f"order:hold:{job.key}"
        if _ledger_view(ledger.get(key))[0] != "attention" or self.dry_run or job.pulpo_id is None:
            return
        try:
            state = self.client.get_sales_order(int(job.pulpo_id)).state
        except NotFoundError:
            state = None
        except TransientApiError as exc:
            raise Halt(f"PULPO order lookup failed: {exc.reason}") from exc
        again = f"{_billbee_name(job)} is '{_state_name(job.fields.get('state'))}' again"
        if state == "paused":
            self.store.ledger_begin(key, self.integration, "hold", {"pulpo_id": job.pulpo_id,
                                                                   "billbee_state": job.fields.get("state")})
            self.store.ledger_finish(key, "attention", None, job.pulpo_id,
                                     f"{again}, but PULPO order {job.order_num} is paused: resume it in PULPO so it "
                                     "ships")
        else:
            self.store.ledger_finish(key, "done", None, job.pulpo_id, f"{again}; PULPO order {job.order_num} is "
                                     f"{state or 'gone'}")

    def _hold(self, job: Job, ledger: Mapping[str, LedgerEntry]) -> None:
        """An order in PULPO that must not ship as it is: attention once per change, no PULPO write."""
        key = f"order:hold:{job.key}"
        if job.pulpo_id is None:   # a create crashed before its record: is it in PULPO?
            create = ledger.get(f"order:create:{job.key}")
            found = self._find_created(job, create)
            if found is None:
                self.store.ledger_finish(f"order:create:{job.key}", "skipped",
                                         message="not in PULPO; left the import states before it was created")
                self._skip(job, "not in PULPO")
                return
            self.store.ledger_finish(f"order:create:{job.key}", "done", {"id": found.id, "adopted": True},
                                     str(found.id))
            job.pulpo_id, job.order_num = str(found.id), str(found.order_num or job.order_num)
            self._map(job, found.state or "queue", (create.request or {}).get("payload_hash") if create else None)
        try:
            current = self.client.get_sales_order(int(job.pulpo_id))
        except NotFoundError:
            self._skip(job, f"PULPO has no order {job.pulpo_id} any more")
            return
        except TransientApiError as exc:
            raise Halt(f"PULPO order lookup failed: {exc.reason}") from exc
        if current.state in PULPO_DONE:
            self._map(job, current.state or "")
            self._skip(job, f"Billbee order {job.hold_event}; PULPO order {job.order_num} is already {current.state}")
            return
        previous = ledger.get(key)
        reason = (f"{job.hold_event} after it was sent to PULPO as order {job.order_num} (state {current.state}): "
                  f"{job.hold_advice}")
        message = f"{_billbee_name(job)} {reason}"   # the ledger's line names the order (status, checks)
        if previous is not None and previous.status == "attention" and previous.message == message:
            self._attention(job, reason, ledger_key=None)   # already shown for this very change
            return
        self.store.ledger_begin(key, self.integration, "hold", {"pulpo_id": job.pulpo_id,
                                                               "billbee_state": job.fields.get("state")})
        self._attention(job, reason, ledger_key=key, message=message)

    def _prepare_payloads(self, jobs: list[Job]) -> None:
        """Lines, products, customers and the PULPO payload; orders that cannot go are settled here."""
        ready = []
        for job in jobs:
            selection = om.select_lines(job.fields, self.settings.skip_coupon_lines)
            problem = selection.problem or om.address_problem(job.fields)
            if problem:
                self._quarantine(job, problem)
            elif not selection.lines:
                self._skip(job, "no physical lines (only vouchers, downloads or services)")
            else:
                job.lines = selection.lines
                ready.append(job)
        self.lines.prepare(line for j in ready for line in j.lines)
        if self.settings.customer == "per_customer":
            ids = {str(c["id"]) for j in ready if (c := j.fields.get("customer")) and c.get("id")}
            known = self.store.get_mappings(self.customer_kind, ids - set(self._customers))
            self._customers.update({k: int(m.pulpo_id) for k, m in known.items()})
        for job in ready:
            resolved = self.lines.resolve(job.lines)
            if isinstance(resolved, str):
                self._quarantine(job, resolved)
                continue
            job.lines = resolved
            job.set_payload(om.sales_order_payload(
                job.fields, job.lines, {}, warehouse_id=self.warehouse_id,
                shipping_method=om.shipping_method_id(job.fields, self.settings.shipping_method_map),
                third_party_id=self._customer_for(job)))
            if job.action == "update" and job.mapped_extra.get("payload_hash") == job.payload_hash:
                job.action = ""
                self._settle(job, "unchanged", remote=job.pulpo_id)

    # ---- products and customers ---------------------------------------------------------------------

    def _lookup_product(self, sku: str) -> Hit | None:
        """PULPO's product with this SKU (called once per SKU and run by `self.lines`)."""
        try:
            for product in self.client.iter_products(sku=sku):
                if product.sku == sku and product.id is not None:
                    owner = product.attributes_dict.get("billbee_id")  # set by the products flow
                    return Hit(product.id, str(owner) if owner not in (None, "") else None)
        except TransientApiError as exc:
            raise Halt(f"PULPO product lookup failed: {exc.reason}") from exc
        return None

    def _customer_for(self, job: Job) -> int | None:
        mode, fallback = self.settings.customer, self.settings.fallback_customer_id
        if mode == "none":
            return None
        customer = job.fields.get("customer") or {}
        if mode == "fallback" or not customer.get("id"):
            return fallback
        return self._customer(customer) or fallback

    def _customer(self, customer: Mapping[str, Any]) -> int | None:
        """The PULPO third party of a Billbee customer: mapping, else lookup by erp_id, else create."""
        billbee_id = str(customer["id"])
        if billbee_id in self._customers:   # mapped (preloaded per chunk) or resolved earlier in this run
            return self._customers[billbee_id]
        try:
            party = self.client.find_third_party(billbee_id)
            party_id = party.id if party else None
            if party_id is None and not self.dry_run:
                party_id = self._create_customer(customer)
        except TransientApiError as exc:
            raise Halt(f"PULPO customer lookup failed: {exc.reason}") from exc
        if party_id is not None and not self.dry_run:
            self.customer_maps.append((billbee_id, str(party_id), {"name": customer.get("name")}))
        self._customers[billbee_id] = party_id
        return party_id

    def _create_customer(self, customer: Mapping[str, Any]) -> int | None:
        if self._tenant_id is None:
            self._tenant_id = self.client.check_connection().tenant_id
        key = f"customer:create:{customer['id']}"
        payload = om.customer_payload(customer, self._tenant_id)
        self.store.ledger_begin(key, self.integration, "create_customer", {"erp_id": payload["erp_id"]})
        try:
            party = self.client.create_third_party(payload)
        except RequestRejectedError as exc:
            self.store.ledger_finish(key, "failed", message=exc.reason)
            self.log.warning(f"PULPO refused customer {customer['id']}: {exc.reason}")
            return None
        self.store.ledger_finish(key, "done", {"id": party.id}, str(party.id))
        return party.id

    # ---- creates ------------------------------------------------------------------------------------

    def _creates(self, jobs: list[Job], ledger: Mapping[str, LedgerEntry]) -> None:
        to_send: list[Job] = []
        pending: list[tuple[Job, LedgerEntry]] = []
        for job in jobs:
            entry = ledger.get(job.ledger_key)
            status, request, remote_id, message = _ledger_view(entry)
            if status == "done" and remote_id:  # in PULPO and the ledger; only the mapping was lost
                if request.get("order_num") and request["order_num"] != job.order_num:
                    job.order_num = str(request["order_num"])
                    job.set_payload(job.payload)  # type: ignore[arg-type]
                self._adopt(job, remote_id, "adopted", sent_hash=request.get("payload_hash"))
            elif status == "pending":
                pending.append((job, entry))  # type: ignore[arg-type]
            elif status == "failed" and job.payload_hash in (request.get("payload_hash"), request.get("first_hash")):
                self._quarantine(job, message or "PULPO rejected the order")   # same payload: same answer
            else:
                to_send.append(job)
        to_send += self._recover(pending)   # a crash between PULPO's answer and the ledger record
        # Each round: one ledger transaction for all creates before the first call (with the number sent)
        # and one after the last; a crash in between leaves them 'pending', and the next run looks each one
        # up first. Numbers another Billbee order has taken go round again under the next candidate (at
        # most `len(candidates)` rounds: never a loop).
        while to_send:
            self.store.ledger_begin_many(self.integration, [(j.ledger_key, "create", {
                "order_num": j.order_num, "payload_hash": j.payload_hash, "lines": len(j.lines),
                **({"first_hash": j.first_hash} if j.first_hash else {})}) for j in to_send])
            finished: list[LedgerFinish] = []
            taken: list[Job] = []
            try:
                for batch in _unique_batches(to_send, BULK_SIZE):
                    self._create_batch(batch, finished, taken)
            finally:
                self.store.ledger_finish_many(finished)
            to_send = [job for job in taken if self._taken(job)]

    def _taken(self, job: Job) -> bool:
        """PULPO says the job's number is taken: ours (adopt), or another order's (True: retry under the
        next number, when there is one)."""
        found = self._find(job.order_num)
        if found is None:
            self.store.ledger_finish(job.ledger_key, "failed", message="order_num refused")
            self._quarantine(job, f"PULPO refused order number {job.order_num} ({job.refusal}) but has no order "
                                  "with it: check the number in Billbee and order_num_template")
            return False
        if str(found.external_order_num or "") == job.key:   # our own earlier create (a race or a crash)
            self._found(job, found, job.payload_hash)
            return False
        numbers = self._numbers(job)
        later = numbers[numbers.index(job.order_num) + 1:] if job.order_num in numbers else []
        if not later:
            reason = (f"order numbers {', '.join(numbers)} are all used in PULPO by other orders (the last by order "
                      f"{found.id}, external_order_num {found.external_order_num}): rename one of them in PULPO")
            self.store.ledger_finish(job.ledger_key, "failed", None, str(found.id), reason)
            self._quarantine(job, reason)
            return False
        self.log.info(f"order number {job.order_num} is used in PULPO by another order ({found.id}); Billbee order "
                      f"{job.key} goes as {later[0]}")
        job.first_hash = job.first_hash or job.payload_hash   # a refusal of all numbers is not resent as is
        job.order_num = later[0]
        job.set_payload(job.payload)  # type: ignore[arg-type]
        return True

    def _recover(self, pending: list[tuple[Job, LedgerEntry]]) -> list[Job]:
        """After a crash: adopt each order PULPO has; the ones it does not have are returned (to create)."""
        if not pending:
            return []
        found = self._find_created_many([(job, entry) for job, entry in pending])
        missing = []
        for job, entry in pending:
            order = found.get(job.key)
            if order is None:
                missing.append(job)
            else:
                self._found(job, order, (entry.request or {}).get("payload_hash"))
        return missing

    def _find_created(self, job: Job, entry: LedgerEntry | None) -> SalesOrder | None:
        return self._find_created_many([(job, entry)]).get(job.key) if entry is not None else None

    def _find_created_many(self, pending: Sequence[tuple[Job, LedgerEntry]]) -> dict[str, SalesOrder]:
        """Billbee id -> the PULPO order a crashed create made: by the number it was sent with (the ledger's,
        never the current Billbee number), else among the orders PULPO inserted since by external_order_num
        (one scan for all: PULPO has no filter for it)."""
        found: dict[str, SalesOrder] = {}
        for job, entry in pending:
            sent = (entry.request or {}).get("order_num") or job.order_num
            order = self._find(str(sent))
            if order is not None and str(order.external_order_num or "") == job.key:
                found[job.key] = order
        rest = [(job, entry) for job, entry in pending if job.key not in found]
        if rest:
            since = min(entry.updated_at for _, entry in rest) - SCAN_MARGIN
            try:
                found.update(self.client.find_sales_orders_by_external_order_num([j.key for j, _ in rest], since))
            except TransientApiError as exc:
                raise Halt(f"PULPO order lookup failed: {exc.reason}") from exc
        return found

    def _find(self, order_num: str) -> SalesOrder | None:
        try:
            return self.client.find_sales_order_by_order_num(order_num)
        except TransientApiError as exc:
            raise Halt(f"PULPO order lookup failed: {exc.reason}") from exc

    def _found(self, job: Job, order: SalesOrder, sent_hash: str | None) -> None:
        """Adopt our own order found in PULPO (its number is the one PULPO has, kept from now on)."""
        if order.order_num and str(order.order_num) != job.order_num:
            job.order_num = str(order.order_num)
            if job.payload is not None:
                job.set_payload(job.payload)   # compare what PULPO got with what we would send now
        self.store.ledger_finish(job.ledger_key, "done", {"id": order.id, "adopted": True}, str(order.id))
        self._adopt(job, str(order.id), "adopted", state=order.state, sent_hash=sent_hash)

    def _create_batch(self, batch: list[Job], finished: list[LedgerFinish], taken: list[Job]) -> None:
        """Send one batch; ledger outcomes go to `finished`, number conflicts to `taken`."""
        try:
            if len(batch) == 1:
                results = self._create_one(batch[0])
            else:
                result = self.client.bulk_create_sales_orders([j.payload for j in batch])  # type: ignore[misc]
                results = {item.key: (item.id, None, {}) for item in result.ok}
                results.update({item.key: (None, item.reason, item.field_errors) for item in result.failed})
        except TransientApiError as exc:   # the outcome may be unknown: the entries stay 'pending'
            raise Halt(f"PULPO create failed: {exc.reason}") from exc
        crash_point("create")
        for job in batch:
            remote_id, reason, field_errors = results.get(job.order_num, (None, "no result from PULPO", {}))
            if remote_id is not None:
                finished.append(LedgerFinish(job.ledger_key, "done", {"id": remote_id}, str(remote_id)))
                self._adopt(job, str(remote_id), "created")
            elif _number_refused(field_errors.get("order_num")):
                job.refusal = str(field_errors.get("order_num"))
                taken.append(job)   # "has already been taken" (or PULPO's other words for it): looked up
            elif reason == "no result from PULPO":
                self._fail(job, reason)     # left 'pending': the next run looks it up before creating
            else:
                finished.append(LedgerFinish(job.ledger_key, "failed", message=reason))
                self._quarantine(job, f"PULPO rejected the order: {reason}")

    def _create_one(self, job: Job) -> dict[str, tuple[int | None, str | None, dict[str, str]]]:
        try:
            order = self.client.create_sales_order(job.payload)  # type: ignore[arg-type]
        except RequestRejectedError as exc:
            return {job.order_num: (None, exc.reason, getattr(exc, "field_errors", {}))}
        return {job.order_num: (order.id, None, {})}

    def _adopt(self, job: Job, pulpo_id: str, result: str, state: str | None = None,
               sent_hash: str | None = None) -> None:
        """Record PULPO's order. If PULPO got an older version (Billbee changed the order between a
        crashed create and now), the order stays pending and the next run updates it."""
        job.pulpo_id = pulpo_id
        sent = sent_hash or job.payload_hash
        self._map(job, state or "queue", sent)
        if sent == job.payload_hash:
            self._settle(job, result, remote=pulpo_id)
        else:
            self.report.counts[result] += 1
            self.settled.append(job.key)

    # ---- cancel and update --------------------------------------------------------------------------

    def _cancel(self, job: Job, ledger: Mapping[str, LedgerEntry]) -> None:
        status, _, _, message = _ledger_view(ledger.get(job.ledger_key))
        if job.pulpo_id is None:   # not mapped: in PULPO only if a create crashed before its record
            create_key = f"order:create:{job.key}"
            found = self._find_created(job, ledger.get(create_key))
            if found is None:
                self.store.ledger_finish(create_key, "skipped",
                                         message="not in PULPO; cancelled in Billbee before it was created")
                self._skip(job, "not in PULPO")
                return
            self.store.ledger_finish(create_key, "done", {"id": found.id, "adopted": True}, str(found.id))
            job.pulpo_id, job.order_num = str(found.id), str(found.order_num or job.order_num)
            self._map(job, found.state or "queue")
        if status == "done":
            self._map(job, "cancelled")
            self._settle(job, "cancelled", remote=job.pulpo_id)
            return
        if status == "attention":   # refused before (ended): asking again changes nothing
            self._attention(job, message or "PULPO refused the cancellation", ledger_key=None)
            return
        self.store.ledger_begin(job.ledger_key, self.integration, "cancel", {"pulpo_id": job.pulpo_id})
        try:
            order = self.client.cancel_sales_order(int(job.pulpo_id))
        except (RequestRejectedError, NotFoundError) as exc:
            order = self._already_cancelled(job)  # by us before a crash, or by hand in PULPO
            if order is None:
                self._attention(job, f"PULPO refused to cancel order {job.pulpo_id}: {exc.reason}",
                                ledger_key=job.ledger_key)
                return
        except TransientApiError as exc:
            raise Halt(f"PULPO cancel failed: {exc.reason}") from exc
        crash_point("cancel")
        self.store.ledger_finish(job.ledger_key, "done", {"state": order.state}, job.pulpo_id)
        self._map(job, order.state or "cancelled")
        self._settle(job, "cancelled", remote=job.pulpo_id)

    def _already_cancelled(self, job: Job) -> SalesOrder | None:
        try:
            order = self.client.get_sales_order(int(job.pulpo_id))  # type: ignore[arg-type]
        except NotFoundError:
            return None
        except TransientApiError as exc:
            raise Halt(f"PULPO order lookup failed: {exc.reason}") from exc
        return order if order.state == "cancelled" else None

    def _update(self, job: Job, ledger: Mapping[str, LedgerEntry]) -> None:
        status, _, _, message = _ledger_view(ledger.get(job.ledger_key))
        if status == "done":
            self._map(job, job.mapped_extra.get("state") or "queue", job.payload_hash)
            self._settle(job, "updated", remote=job.pulpo_id)
            return
        if status == "attention":
            self._attention(job, message or "not updatable", ledger_key=None)
            return
        self.store.ledger_begin(job.ledger_key, self.integration, "update",
                                {"pulpo_id": job.pulpo_id, "payload_hash": job.payload_hash})
        try:
            current = self.client.get_sales_order(int(job.pulpo_id))  # type: ignore[arg-type]
            if current.state != "queue":
                self._attention(job, f"not updatable: PULPO order is in state {current.state}",
                                ledger_key=job.ledger_key)
                return
            order = self.client.update_sales_order(int(job.pulpo_id), job.payload)  # type: ignore[arg-type]
        except (RequestRejectedError, NotFoundError) as exc:
            self._attention(job, f"not updatable: {exc.reason}", ledger_key=job.ledger_key)
            return
        except TransientApiError as exc:
            raise Halt(f"PULPO update failed: {exc.reason}") from exc
        crash_point("update")
        self.store.ledger_finish(job.ledger_key, "done", {"state": order.state}, job.pulpo_id)
        self._map(job, order.state or "queue", job.payload_hash)
        self._settle(job, "updated", remote=job.pulpo_id)

    # ---- outcomes -----------------------------------------------------------------------------------

    def _map(self, job: Job, state: str, payload_hash: str | None = None) -> None:
        extra = {**job.mapped_extra, "order_num": job.order_num, "state": state}
        if payload_hash is not None:
            extra["payload_hash"] = payload_hash
        job.mapped_extra = extra
        self.order_maps.append((job.key, str(job.pulpo_id), extra))

    def _settle(self, job: Job, result: str, *, remote: str | None = None, reason: str | None = None,
                count: str | None = None) -> bool:
        """A final outcome: processed until Billbee changes the order again (`count`: the report's counter,
        when it differs from the recorded result)."""
        self.report.counts[count or result] += 1
        self.processed.append((job.key, job.hash, canonical_json(
            {"result": result, "pulpo_id": remote, "reason": reason})))
        self.settled.append(job.key)
        return False

    def _skip(self, job: Job, reason: str, *, count: str = "skipped") -> bool:
        job.action = ""
        if self.dry_run:
            self._plan(job, "skip", reason)
        return self._settle(job, "skipped", reason=reason, count=count)

    def _attention(self, job: Job, reason: str, *, ledger_key: str | None, message: str | None = None) -> bool:
        job.action = ""
        if ledger_key is not None:
            self.store.ledger_finish(ledger_key, "attention", None, job.pulpo_id, message or reason)
        self.report.attention.append({"billbee_order_id": job.key, "order_num": job.order_num,
                                      "pulpo_id": job.pulpo_id or "", "reason": reason})
        if self.dry_run:
            self._plan(job, "attention", reason)
        return self._settle(job, "attention", remote=job.pulpo_id, reason=reason)

    def _quarantine(self, job: Job, reason: str) -> None:
        """Not processed: re-evaluated by every run until it goes through."""
        job.action = ""
        self.report.counts["quarantined"] += 1
        row = {"billbee_order_id": job.key, "order_num": job.order_num, "reason": reason}
        self.report.quarantine.append(row)
        self.quarantined[job.key] = (reason, row)
        if self.dry_run:
            self._plan(job, "quarantine", reason)

    def _fail(self, job: Job, reason: str) -> None:
        self.report.counts["failed"] += 1
        self.report.failures.append({"billbee_order_id": job.key, "order_num": job.order_num, "reason": reason})

    def _plan(self, job: Job, action: str, detail: str = "") -> None:
        self.report.plan.append({"billbee_order_id": job.key, "order_num": job.order_num, "action": action,
                                 "pulpo_id": job.pulpo_id or "", "detail": detail})

    def _flush(self) -> None:
        """Record the chunk's outcomes: mappings first, then 'processed' (so a crash in between only
        repeats the evaluation, never a write), then the quarantine."""
        if not self.dry_run:
            for kind, rows in ((self.customer_kind, self.customer_maps), (self.order_kind, self.order_maps)):
                if rows:
                    self.store.put_mappings(kind, rows)
            if self.processed:
                self.store.upsert_snapshot(self.flow.dataset(PROCESSED), self.processed)
            self.store.quarantine_put_many(self.integration, QUARANTINE_KIND, self.quarantined)
            self.store.quarantine_resolve_many(self.integration,
                                               [k for k in self.settled if k in self.open_quarantine],
                                               kind=QUARANTINE_KIND)
        self._reset_buffers()


def _number_refused(message: Any) -> bool:
    """PULPO's field error on order_num means "in use" unless it says the number is missing or malformed.
    The spec does not fix the wording ("has already been taken" in the sandbox): any other message is
    checked by a look-up, which tells ours, another order's and a real refusal apart."""
    text = str(message or "").casefold()
    return bool(text) and not any(word in text for word in ("blank", "invalid", "too long", "format"))


def _unique_batches(jobs: list[Job], size: int) -> Iterator[list[Job]]:
    """Batches without a repeated order number, so each bulk outcome belongs to one order."""
    waiting = list(jobs)
    while waiting:
        batch: list[Job] = []
        numbers: set[str] = set()
        rest: list[Job] = []
        for job in waiting:
            if len(batch) < size and job.order_num not in numbers:
                batch.append(job)
                numbers.add(job.order_num)
            else:
                rest.append(job)
        yield batch
        waiting = rest


def _ledger_view(entry: LedgerEntry | None) -> tuple[str | None, dict[str, Any], str | None, str | None]:
    """(status, request, remote_id, message) of a ledger entry; (None, {}, None, None) without one."""
    if entry is None:
        return None, {}, None, None
    return entry.status, entry.request or {}, entry.remote_id, entry.message


def _skipped_with_reason(processed_payload: str | None) -> bool:
    outcome = json.loads(processed_payload) if processed_payload else {}
    return outcome.get("result") == "skipped" and outcome.get("reason") is not None


def ordered_before(fields: Mapping[str, Any], import_since: date | None) -> str | None:
    """Why an order is left alone under `import_since` (created before it), else None. Checked here as well
    as in Billbee's minOrderDate filter, so no read (window or sweep) ever imports such an order."""
    created = fields.get("created_at")
    if import_since is None or not created:
        return None
    day = datetime.fromisoformat(created).astimezone(UTC).date()
    return f"ordered {day.isoformat()}, before import_since {import_since.isoformat()}" if day < import_since else None


def _state_name(state: Any) -> str:
    return ORDER_STATES.get(state, str(state)) if isinstance(state, int) else str(state)


def _billbee_name(job: Job) -> str:
    number = job.fields.get("order_number")
    return f"Billbee order {number} (id {job.key})" if number else f"Billbee order {job.key}"


def _hold_reason(state: Any, cancel_ids: set[int]) -> tuple[str, str]:
    """(what happened, what to do) for an order in PULPO whose Billbee state means it must not ship now."""
    name = _state_name(state)
    if state == 1:
        return f"went back to '{name}' (payment charge-back?)", "pause or cancel it in PULPO if it must not ship"
    if state in UNPAID_STATES:
        return f"went back to '{name}' (not paid?)", "pause or cancel it in PULPO if it must not ship"
    if state in (6, 8) and state not in cancel_ids:
        return (f"is '{name}' (not in cancel_states)",
                "cancel it in PULPO if it must not ship, or add the state to cancel_states")
    return f"is now '{name}', neither an import nor a cancel state", "pause or cancel it in PULPO if it must not ship"


# --------------------------------------------------------------------------------------------------
# The asset


def accounted_check(writer: OrderWriter, flow: Flow) -> dg.AssetCheckResult:
    """Every importable order this run handled is in PULPO, in quarantine or skipped with a reason."""
    report = writer.report
    missing = writer.unaccounted()
    return dg.AssetCheckResult(
        asset_key=flow.key(WRITER),
        check_name=CHECK,
        passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "importable_orders": dg.MetadataValue.int(len(report.importable)),
            "unaccounted": dg.MetadataValue.int(len(missing)),
            "unaccounted_preview": preview_table([{"billbee_order_id": k} for k in missing]),
            "dry_run": dg.MetadataValue.bool(writer.dry_run),
        },
    )
