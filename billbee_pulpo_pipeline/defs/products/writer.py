"""Products (Billbee → PULPO): the writer that converges PULPO to the Billbee snapshot.

What PULPO has accepted is the dataset `<slug>.pulpo_products_acknowledged` (Billbee id → the
snapshot hash PULPO took). A run compares it with the snapshot in DuckDB and writes only the
difference, so an unchanged catalogue costs no PULPO call, and a crash anywhere loses nothing: what
was not acknowledged is simply still different on the next run.

- New products: before creating, unmapped SKUs are looked up in PULPO (few: `?sku=` each; many:
  one paged listing of all products), so a product created by a run that crashed before recording
  it is adopted, never created twice. PULPO's "sku has already been taken" leads to the same
  lookup. Creates and updates use the bulk endpoints, 100 per call. The id mapping
  (`product:<billbee>:<pulpo>`, extra `{"sku"}`), the acknowledged hashes and one ledger entry are
  written per group of up to 5 calls (500 products): each state-store call costs ~20 ms of CPU,
  and a crash inside a group only means those products are found by SKU on the next run.
- Barcodes the warehouse added in PULPO are kept: an update whose Billbee EAN changed (or whose
  previous EAN is not recorded) reads the PULPO products' barcodes, 100 per call (adopted products
  bring theirs from the lookup), and sends their union with the Billbee EAN, minus the EAN this flow
  sent before (recorded in the acknowledged state); an update with an unchanged EAN sends no
  `barcodes`, so PULPO keeps its list untouched (`mapping.products.merged_barcodes`).
- Per-item refusals (PULPO's field messages) go to quarantine (kind `product_pulpo`) while the
  rest goes on. A refused product is sent again when it changes in Billbee, not on every run;
  products waiting for something (a kit component, a PULPO product that vanished) retry each run.
- Products deleted in Billbee are deactivated in PULPO (`active: false`) with
  `deactivate_removed: true` (default), else left as they are; both are recorded in the ledger.
- Bundles (`bundles: kit`, the default): the bundle is a PULPO product and a PULPO kit of its
  components' PULPO products. PULPO kits cannot be updated, so a changed bill of material
  deactivates the old kit and creates a new one. A component that is not in PULPO yet parks the
  bundle ("waiting for component SKU X"); the next run retries it by itself. `bundles: skip`
  leaves bundles out (counted as skipped).

Test hook: `BPP_TEST_CRASH_AFTER=products` exits (code 137, like SIGKILL) after a group's PULPO
writes and before its ledger record (`defs/crash.py`).
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import dagster as dg

from billbee_pulpo_pipeline.clients.http import ApiError, RequestRejectedError
from billbee_pulpo_pipeline.clients.pulpo import BulkResult, Kit, Product, PulpoClient
from billbee_pulpo_pipeline.defs.common import (
    Flow,
    canonical_json,
    count_metadata,
    preview_table,
)
from billbee_pulpo_pipeline.defs.crash import crash_point
from billbee_pulpo_pipeline.defs.products.state import WRITER_QUARANTINE, Comparison, ProductDatasets
from billbee_pulpo_pipeline.mapping.products import (
    barcode_list,
    component_label,
    fingerprint_without_barcodes,
    holds_payload,
    is_bundle,
    kit_amount_problem,
    kit_items,
    kit_payload,
    kit_quantity,
    kit_signature,
    merged_barcodes,
    pulpo_fingerprint,
    pulpo_product_payload,
)
from billbee_pulpo_pipeline.state import QuarantineEntry, StateStore

BATCH_SIZE = 100          # products per bulk call
CALLS_PER_RECORD = 5      # bulk calls per ledger entry and mapping/acknowledgement write
CHUNK_SIZE = 5000         # pending products held in memory at once
LOOKUP_LIMIT = 25         # up to this many unmapped SKUs are looked up one by one, beyond it PULPO is listed
WRITE_ACTIONS = frozenset({"create_products", "update_products", "deactivate_products", "converge_kits",
                           "deactivate_kit"})
RETRY_ON_CHANGE = "on_change"
RETRY_EVERY_RUN = "every_run"

T = TypeVar("T")


@dataclass(eq=False)
class Item:
    """One pending product: its snapshot record, PULPO payload and (once known) PULPO id."""

    billbee_id: str
    snapshot_hash: str
    fields: dict[str, Any]
    payload: dict[str, Any]
    product_hash: str
    acknowledged: dict[str, Any]  # what PULPO acknowledged before: sku, pulpo_id, product_hash, barcodes, kit_id
    pulpo_id: int | None = None
    acknowledged_hash: str | None = None
    pulpo_barcodes: list[str] | None = None  # the PULPO product's barcodes, when a lookup brought them

    @property
    def barcodes_changed(self) -> bool:
        """Whether the Billbee EAN differs from the one PULPO acknowledged (unknown counts as changed)."""
        sent = self.acknowledged.get("barcodes")
        return sent is None or set(barcode_list(sent)) != set(barcode_list(self.payload.get("barcodes")))

    @property
    def sku(self) -> str:
        return self.payload["sku"]

    @property
    def bundle(self) -> bool:
        return is_bundle(self.fields)


@dataclass(frozen=True)
class PulpoMatch:
    """A product found in PULPO by SKU: its id, `fingerprint_without_barcodes` and barcodes."""

    id: int
    fingerprint: str
    barcodes: tuple[str, ...]

    @classmethod
    def of(cls, product: Product) -> "PulpoMatch":
        values = product.model_dump()
        return cls(product.id or 0, fingerprint_without_barcodes(values), tuple(barcode_list(product.barcodes)))


@dataclass(eq=False)
class KitPlan:
    """The kit a bundle needs, and which of its active PULPO kits to keep or deactivate."""

    bundle: Item
    items: list[dict[str, int]]
    signature: str
    keep: Kit | None = None
    stale: list[Kit] = field(default_factory=list)

    def match(self, kits: list[Kit]) -> None:
        pid = self.bundle.pulpo_id or 0
        self.keep = next((k for k in kits if kit_signature(pid, [
            {"product_id": i.product_id or 0, "quantity": i.quantity or 0} for i in k.items]) == self.signature),
            None)
        self.stale = [k for k in kits if k is not self.keep]


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _digest(parts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _refusal(error: ApiError) -> tuple[str, dict[str, str]]:
    fields = dict(getattr(error, "field_errors", {}) or {})
    return error.reason, fields


class ProductWriter:
    """One run of the writer. Plain Python over the PULPO client and the state store."""

    def __init__(self, flow: Flow, client: PulpoClient, store: StateStore, *, dry_run: bool = False,
                 log: logging.Logger | Any = None) -> None:
        settings = flow.integration.settings
        self.flow = flow
        self.client = client
        self.store = store
        self.data = ProductDatasets(store, flow)
        self.dry_run = dry_run
        self.log = log or logging.getLogger(__name__)
        self.deactivate_removed = bool(getattr(settings, "deactivate_removed", True))
        self.make_kits = getattr(settings, "bundles", "kit") == "kit"
        self.started_at = datetime.now(UTC)
        self.counts: Counter[str] = Counter()
        self.quarantine: dict[str, tuple[str, dict[str, Any]]] = {}
        self.skipped: set[str] = set()
        self.completed: set[str] = set()  # acknowledged with the current snapshot hash in this run
        self.plan: list[dict[str, Any]] = []
        self._mapping: dict[str, str] = {}
        self._mapping_known: set[str] = set()
        self._pulpo_index: dict[str, PulpoMatch] | None = None
        self._parked: dict[str, QuarantineEntry] | None = None
        self._component_skus: dict[str, PulpoMatch] = {}

    # ---- run ---------------------------------------------------------------------------------------

    def run(self, comparison: Comparison | None = None) -> Comparison:
        """The complete pass: removals, new and changed products, kits, quarantine."""
        comparison = comparison or self.data.compare()
        # Products acknowledged by this run's early passes count as written, not as unchanged.
        self.counts["unchanged"] += max(comparison.unchanged - len(self.completed), 0)
        if comparison.removed:
            self._remove(comparison.removed)
        if comparison.pending:
            self._load_parked()
            bundles: list[Item] = []
            for keys in _chunks(comparison.pending, CHUNK_SIZE):
                bundles += self._converge(self._load(keys))
            if bundles:
                self._kits(bundles)
        if not self.dry_run:
            self.store.quarantine_sync(self.flow.slug, WRITER_QUARANTINE, self.quarantine)
            self._close_interrupted()
        return comparison

    def write_pass(self) -> None:
        """An early pass while the snapshot is still being read (see `write_behind.py`): new and
        changed products, and bundles whose components are all in PULPO already. Other bundles (their
        components may come on a later page), removals and what this run parked wait for the
        complete pass."""
        keys = [k for k in self.data.compare().pending if k not in self.quarantine and k not in self.skipped]
        self._load_parked()
        for chunk in _chunks(keys, CHUNK_SIZE):
            items = self._load(chunk)
            mapped = self.mapping(str(line["article_id"]) for i in items if i.bundle
                                  for line in i.fields.get("bill_of_material") or [] if line.get("article_id"))
            ready = [i for i in items if not i.bundle or all(
                str(line.get("article_id")) in mapped for line in i.fields.get("bill_of_material") or [])]
            bundles = self._converge(ready) if ready else []
            if bundles:
                self._kits(bundles)

    def _load_parked(self) -> None:
        if self._parked is None:
            self._parked = {q.record_key: q for q in self.store.quarantine_list(self.flow.slug,
                                                                                 kind=WRITER_QUARANTINE)}

    def _close_interrupted(self) -> None:
        """After a complete pass, the ledger entries an earlier, killed run left 'pending' are closed:
        this pass looked their products up in PULPO by SKU and converged them (nothing was written
        twice). A run still in flight beside this one records its own outcome over it when it ends."""
        self.store.ledger_close_interrupted(self.flow.slug, WRITE_ACTIONS, self.started_at,
                                            "interrupted before its result was recorded; later runs matched "
                                            "these products in PULPO by SKU")

    def mapping(self, keys: Iterable[str] = ()) -> dict[str, str]:
        """Billbee id → PULPO id, fetched from the store for `keys` not asked for before."""
        missing = [k for k in keys if k not in self._mapping_known]
        if missing:
            self._mapping.update(self.data.mappings_of(missing))
            self._mapping_known.update(missing)
        return self._mapping

    def _load(self, keys: Sequence[str]) -> list[Item]:
        snapshot = self.data.records(self.data.snapshot, list(keys))
        acknowledged = self.data.records(self.data.acknowledged, list(keys))
        mapping = self.mapping(keys)
        items, unreadable = [], []
        for key in keys:
            snapshot_hash, text = snapshot.get(key, ("", None))
            if not text:
                unreadable.append(key)
                continue
            fields = json.loads(text)
            payload = pulpo_product_payload(fields)
            pulpo_id = mapping.get(key)
            ack_hash, ack_state = acknowledged.get(key, (None, None))
            items.append(Item(key, snapshot_hash, fields, payload, pulpo_fingerprint(payload),
                              json.loads(ack_state) if ack_state else {},
                              int(pulpo_id) if pulpo_id is not None else None, ack_hash))
        if unreadable and not self.dry_run:  # a row stored without payload: the next scan reads it anew
            self.log.warning(f"{self.flow.name}: {len(unreadable)} snapshot rows without payload; re-read next run")
            self.store.delete_snapshot_rows(self.data.snapshot, unreadable)
        return items

    # ---- new and changed products --------------------------------------------------------------------

    def _converge(self, items: list[Item]) -> list[Item]:
        """Create or update the chunk's products; returns the bundles whose kit comes next."""
        creates, updates, current = [], [], []
        for item in items:
            if item.bundle and not self.make_kits:
                self.skipped.add(item.billbee_id)
                self.counts["skipped_bundles"] += 1
            elif self._still_refused(item):
                continue
            elif item.pulpo_id is None:
                creates.append(item)
            elif item.acknowledged.get("product_hash") == item.product_hash:
                current.append(item)  # the PULPO product is up to date (a bundle waiting for its kit)
            else:
                updates.append(item)
        creates = self._adopt_existing(creates, updates, current)
        self._create(creates, updates, current)
        self._update(updates, current)
        self._acknowledge(current)
        return [i for i in items if i.bundle and self.make_kits and i.billbee_id not in self.quarantine
                and i.billbee_id not in self.skipped]

    def _still_refused(self, item: Item) -> bool:
        """A product PULPO refused is sent again only once it changed in Billbee."""
        if item.billbee_id in self.quarantine:  # parked by an earlier pass of this run
            reason, payload = self.quarantine[item.billbee_id]
        else:
            parked = (self._parked or {}).get(item.billbee_id)
            reason = parked.reason if parked is not None else ""
            payload = parked.payload if parked is not None and isinstance(parked.payload, dict) else {}
        if payload.get("retry") == RETRY_ON_CHANGE and payload.get("hash") == item.snapshot_hash:
            self.quarantine[item.billbee_id] = (reason, payload)
            return True
        return False

    def _adopt_existing(self, creates: list[Item], updates: list[Item], current: list[Item]) -> list[Item]:
        """Products PULPO already has under the SKU (a crashed run, a manual import) are linked, and
        updated only when they differ; returns the products that really are new."""
        skus = [i.sku for i in creates]
        found = self._lookup_skus(skus) if len(skus) <= LOOKUP_LIMIT and self._pulpo_index is None else {
            sku: hit for sku in skus if (hit := self._index().get(sku)) is not None}
        self._adopt(creates, found, updates, current)
        return [i for i in creates if i.sku not in found]

    def _adopt(self, items: list[Item], found: dict[str, PulpoMatch], updates: list[Item],
               current: list[Item]) -> None:
        adopted = [i for i in items if i.sku in found]
        for item in adopted:
            match = found[item.sku]
            item.pulpo_id, item.pulpo_barcodes = match.id, list(match.barcodes)
            (current if holds_payload(match.fingerprint, match.barcodes, item.payload) else updates).append(item)
        if adopted:
            self.counts["adopted"] += len(adopted)
            self._record_mappings(adopted)

    def _lookup_skus(self, skus: Sequence[str]) -> dict[str, PulpoMatch]:
        """SKU → the PULPO product (of the client's merchant), one `?sku=` call per SKU."""
        found = {}
        for sku in skus:
            for product in self.client.iter_products(sku=sku):
                if product.sku == sku and not product.deleted and product.id is not None:
                    found[sku] = PulpoMatch.of(product)
                    break
        return found

    def _index(self) -> dict[str, PulpoMatch]:
        """All PULPO products (of the client's merchant) by SKU, listed once per run (when many SKUs
        need resolving)."""
        if self._pulpo_index is None:
            self._pulpo_index = {
                p.sku: PulpoMatch.of(p)
                for p in self.client.iter_products() if p.sku and p.id is not None and not p.deleted
            }
            self.log.info(f"{self.flow.name}: listed {len(self._pulpo_index):,} PULPO products to match SKUs")
        return self._pulpo_index

    def _create(self, creates: list[Item], updates: list[Item], current: list[Item]) -> None:
        for group in _chunks(creates, BATCH_SIZE * CALLS_PER_RECORD):
            if self.dry_run:
                self._preview("create", group)
                continue
            done: list[Item] = []
            unsure: list[tuple[Item, str]] = []
            try:
                with self._ledger("create_products", group) as outcome:
                    for batch in _chunks(group, BATCH_SIZE):
                        result = self.client.bulk_create_products([i.payload for i in batch])
                        self._created(batch, result, done, unsure)
                        outcome["ok"] += len(result.ok)
                        outcome["failed"] += len(result.failed)
            finally:  # what PULPO confirmed is recorded even when a later call of the group failed
                self.counts["created"] += len(done)
                self._acknowledge(done)
            self._adopt_unsure(unsure, updates, current)

    def _created(self, batch: Sequence[Item], result: BulkResult, done: list[Item],
                 unsure: list[tuple[Item, str]]) -> None:
        by_sku = {i.sku: i for i in batch}
        for ok in result.ok:
            item = by_sku.get(ok.key)
            if item is not None and ok.id is not None:
                item.pulpo_id = ok.id
                done.append(item)
            elif item is not None:
                unsure.append((item, "PULPO confirmed the create without an id"))
        for failure in result.failed:
            item = by_sku.get(failure.key)
            if item is None:
                continue
            if "taken" in failure.field_errors.get("sku", "") or not failure.field_errors:
                unsure.append((item, failure.reason))  # exists already, or the outcome is unknown
            else:
                self._park(item, f"PULPO refused the product: {failure.reason}", failure.field_errors)

    def _adopt_unsure(self, unsure: list[tuple[Item, str]], updates: list[Item], current: list[Item]) -> None:
        """Look up, one by one and fresh, products whose create PULPO refused as taken or left
        unconfirmed; adopt those found, retry the others on the next run."""
        items = [item for item, _ in unsure]
        found = self._lookup_skus([i.sku for i in items])
        self._adopt(items, found, updates, current)
        for item, reason in unsure:
            if item.sku not in found:
                self._park(item, f"PULPO did not create SKU '{item.sku}' ({reason}) and has no product with it; "
                                 "retried on the next run", {}, retry=RETRY_EVERY_RUN)

    def _update(self, updates: list[Item], current: list[Item]) -> None:
        for group in _chunks(updates, BATCH_SIZE * CALLS_PER_RECORD):
            if self.dry_run:
                self._preview("update", group)
                continue
            done: list[Item] = []
            try:
                with self._ledger("update_products", group) as outcome:
                    for batch in _chunks(group, BATCH_SIZE):
                        result = self.client.bulk_update_products(self._update_rows(batch))
                        by_key = {i.sku: i for i in batch} | {str(i.pulpo_id): i for i in batch}
                        done += [by_key[ok.key] for ok in result.ok if ok.key in by_key]
                        for failure in result.failed:
                            if failure.key in by_key:
                                self._refused_update(by_key[failure.key], failure.reason, failure.field_errors)
                        outcome["ok"] += len(result.ok)
                        outcome["failed"] += len(result.failed)
            finally:
                self.counts["updated"] += len(done)
                self._acknowledge(done)

    def _update_rows(self, batch: Sequence[Item]) -> list[dict[str, Any]]:
        """Update rows that keep PULPO's barcodes: without `barcodes` when the Billbee EAN is unchanged,
        else PULPO's current list merged with it (read for the batch in one call where not known)."""
        unknown = [i.pulpo_id for i in batch if i.barcodes_changed and i.pulpo_barcodes is None and i.pulpo_id]
        pulpo = self.client.products_by_id(unknown) if unknown else {}
        rows = []
        for item in batch:
            row = {**item.payload, "id": item.pulpo_id}
            if not item.barcodes_changed and item.pulpo_barcodes is None:
                row.pop("barcodes", None)  # PULPO keeps its list, which holds our EAN already
            else:
                found = pulpo.get(item.pulpo_id or 0)
                current = item.pulpo_barcodes if item.pulpo_barcodes is not None else (
                    found.barcodes if found is not None else [])
                row["barcodes"] = merged_barcodes(current, item.payload.get("barcodes") or [],
                                                  item.acknowledged.get("barcodes") or [])
            rows.append(row)
        return rows

    def _refused_update(self, item: Item, reason: str, field_errors: dict[str, str]) -> None:
        if not field_errors and "not confirmed" in reason:
            self._park(item, f"PULPO did not confirm the update ({reason}); retried on the next run", {},
                       retry=RETRY_EVERY_RUN)
        elif "id" in field_errors or "not found" in reason:
            # The PULPO product is gone: forget the link; the next run finds or creates it by SKU.
            self.store.delete_mapping(self.data.product_kind, item.billbee_id)
            self.mapping().pop(item.billbee_id, None)
            self._park(item, f"PULPO product {item.pulpo_id} no longer exists; it is looked up by SKU "
                             "and created again on the next run", field_errors, retry=RETRY_EVERY_RUN)
        else:
            self._park(item, f"PULPO refused the update: {reason}", field_errors)

    # ---- bookkeeping ---------------------------------------------------------------------------------

    @contextmanager
    def _ledger(self, action: str, items: Sequence[Item]) -> Iterator[dict[str, int]]:
        """Bracket PULPO writes with the ledger: 'pending' before, the outcome after. The entry covers
        one record group (up to `CALLS_PER_RECORD` bulk calls): the store costs ~20 ms per call, so
        one entry per 100 products would double a large import. A whole-call failure is recorded and
        raised: the run fails visibly, and the next one looks SKUs up in PULPO before writing again."""
        key = f"{self.flow.slug}:{action}:{_digest([f'{i.billbee_id}:{i.snapshot_hash}' for i in items])}"
        request = {"count": len(items), "skus": [i.sku for i in items[:20]]}
        entry = self.store.ledger_begin(key, self.flow.slug, action, request)
        if entry.previous_status == "pending":
            self.log.warning(f"{self.flow.name}: an earlier {action} of these products ended without a "
                             "result; their SKUs were looked up in PULPO before this write")
        outcome = {"ok": 0, "failed": 0}
        try:
            yield outcome
        except ApiError as exc:
            self.store.ledger_finish(key, "failed", outcome, message=str(exc)[:500])
            raise
        crash_point("products")
        failed = outcome["failed"]
        self.store.ledger_finish(key, "attention" if failed else "done", outcome,
                                 message=f"{failed} refused (see quarantine)" if failed else None)

    def _park(self, item: Item, reason: str, field_errors: dict[str, str], *,
              retry: str = RETRY_ON_CHANGE) -> None:
        self.quarantine[item.billbee_id] = (reason, {
            "sku": item.sku, "hash": item.snapshot_hash, "retry": retry, "field_errors": field_errors})

    def _record_mappings(self, items: Sequence[Item]) -> None:
        mapping = self.mapping()
        changed = [i for i in items if mapping.get(i.billbee_id) != str(i.pulpo_id)]
        for item in changed:
            mapping[item.billbee_id] = str(item.pulpo_id)
        if changed and not self.dry_run:
            self.store.put_mappings(self.data.product_kind,
                                    [(i.billbee_id, i.pulpo_id, {"sku": i.sku}) for i in changed])

    def _acknowledge(self, items: Sequence[Item], *, with_kit: dict[str, int] | None = None) -> None:
        """Record mapping and acknowledged hash. A bundle's hash is final only once its kit is in
        PULPO; until then a `partial:` hash keeps it pending while telling that the product is done."""
        if not items or self.dry_run:
            return
        for item in items:
            if not item.bundle and item.acknowledged.get("kit_id"):
                self._deactivate_kit(item, int(item.acknowledged["kit_id"]))  # no longer a bundle
        self._record_mappings(items)
        rows = []
        for item in items:
            complete = not (item.bundle and self.make_kits) or with_kit is not None
            state = {"sku": item.sku, "pulpo_id": str(item.pulpo_id), "product_hash": item.product_hash,
                     "barcodes": barcode_list(item.payload.get("barcodes"))}  # the EANs that are ours
            if with_kit is not None:
                state["kit_id"] = str(with_kit[item.billbee_id])
            content_hash = item.snapshot_hash if complete else f"partial:{item.product_hash}"
            if complete:
                self.completed.add(item.billbee_id)
            if (content_hash, state) != (item.acknowledged_hash, item.acknowledged):  # else already stored
                rows.append((item.billbee_id, content_hash, canonical_json(state)))
        if rows:
            self.store.upsert_snapshot(self.data.acknowledged, rows)

    def _preview(self, action: str, items: Sequence[Item]) -> None:
        self.counts[{"create": "created", "update": "updated"}[action]] += len(items)
        self.plan += [{"action": action, "billbee_id": i.billbee_id, "sku": i.sku,
                       "pulpo_id": i.pulpo_id or "", "name": i.payload.get("name") or ""} for i in items]

    # ---- kits ----------------------------------------------------------------------------------------

    def _kits(self, bundles: list[Item]) -> None:
        plans: list[KitPlan] = []
        self.mapping(str(line["article_id"]) for b in bundles for line in b.fields.get("bill_of_material") or []
                     if line.get("article_id"))
        for bundle in bundles:
            if bundle.pulpo_id is None:  # dry run: the bundle product is only planned
                self.plan.append({"action": "kit", "billbee_id": bundle.billbee_id, "sku": bundle.sku,
                                  "pulpo_id": "", "name": "after the bundle product is created"})
                self.counts["kits_created"] += 1
                continue
            items = self._kit_items(bundle)
            if items is not None:
                plans.append(KitPlan(bundle, items, kit_signature(bundle.pulpo_id, items)))
        existing = self._active_kits([p.bundle.pulpo_id or 0 for p in plans])
        for plan in plans:
            plan.match(existing.get(plan.bundle.pulpo_id or 0, []))
        if self.dry_run:
            self._preview_kits(plans)
            return
        for group in _chunks(plans, BATCH_SIZE):
            writes = [p for p in group if p.keep is None or p.stale]
            if writes:
                with self._ledger("converge_kits", [p.bundle for p in writes]) as outcome:
                    for plan in writes:
                        self._write_kit(plan)
                        outcome["ok" if plan.keep is not None else "failed"] += 1
            done = {p.bundle.billbee_id: (p, p.keep.id or 0) for p in group if p.keep is not None}
            self.store.put_mappings(self.data.kit_kind, [(key, kit_id, {"signature": plan.signature})
                                                         for key, (plan, kit_id) in done.items()])
            self._acknowledge([plan.bundle for plan, _ in done.values()],
                              with_kit={key: kit_id for key, (_, kit_id) in done.items()})

    def _preview_kits(self, plans: list[KitPlan]) -> None:
        for plan in plans:
            if plan.keep is None or plan.stale:
                self.counts["kits_created"] += plan.keep is None
                self.counts["kits_deactivated"] += len(plan.stale)
                self.plan.append({"action": "kit", "billbee_id": plan.bundle.billbee_id, "sku": plan.bundle.sku,
                                  "pulpo_id": plan.bundle.pulpo_id, "name": f"{len(plan.items)} components"})

    def _write_kit(self, plan: KitPlan) -> None:
        """Replace stale kits by one with the wanted items (PULPO kits cannot be updated)."""
        for kit in plan.stale:
            self._post_kit_deactivation(kit.id)
        if plan.keep is not None:
            return
        payload = kit_payload(plan.bundle.pulpo_id or 0, plan.bundle.payload.get("name"), plan.items)
        try:
            plan.keep = self.client.create_kit(payload)
        except RequestRejectedError as exc:
            reason, fields = _refusal(exc)
            self._park(plan.bundle, f"PULPO refused the kit: {reason}", fields)
            return
        self.counts["kits_created"] += 1

    def _kit_items(self, bundle: Item) -> list[dict[str, int]] | None:
        """The kit's items by PULPO product id, or None (and the bundle parked) when not possible yet."""
        components = []
        for line in bundle.fields.get("bill_of_material") or []:
            quantity = kit_quantity(line.get("amount"))
            if quantity is None:
                self._park(bundle, kit_amount_problem(line) or "", {})
                return None
            pulpo_id = self._component_id(line)
            if pulpo_id is None:
                self._park(bundle, f"waiting for {component_label(line)}: it is not in PULPO yet; the kit is "
                                   "created automatically once it is", {}, retry=RETRY_EVERY_RUN)
                return None
            components.append((pulpo_id, quantity))
        return kit_items(components)

    def _component_id(self, line: dict[str, Any]) -> int | None:
        article = line.get("article_id")
        mapped = self.mapping().get(str(article)) if article else None
        if mapped is not None:
            return int(mapped)
        sku = (line.get("sku") or "").strip()
        if sku and sku not in self._component_skus:
            self._component_skus.update(self._lookup_skus([sku]))
        hit = self._component_skus.get(sku)
        return hit.id if hit else None

    def _active_kits(self, product_ids: list[int]) -> dict[int, list[Kit]]:
        """Active PULPO kits of these bundle products: PULPO is the record of what a kit contains."""
        found: dict[int, list[Kit]] = {}
        if len(product_ids) <= LOOKUP_LIMIT:
            kits = (k for pid in product_ids for k in self.client.iter_kits(product_id=pid, active=True))
        else:
            wanted = set(product_ids)
            kits = (k for k in self.client.iter_kits(active=True) if k.product_id in wanted)
        for kit in kits:
            if kit.active is not False and kit.product_id is not None:
                found.setdefault(kit.product_id, []).append(kit)
        return found

    def _deactivate_kit(self, item: Item, kit_id: int) -> None:
        with self._ledger("deactivate_kit", [item]) as outcome:
            self._post_kit_deactivation(kit_id)
            outcome["ok"] += 1

    def _post_kit_deactivation(self, kit_id: int | None) -> None:
        # PulpoClient has no method for this spec endpoint yet; `_one` is its own single-record call.
        self.client.deactivate_kit(kit_id)
        self.counts["kits_deactivated"] += 1

    # ---- products deleted in Billbee -----------------------------------------------------------------

    def _remove(self, keys: list[str]) -> None:
        acknowledged = {k: json.loads(v) for k, v in self.store.snapshot_rows(self.data.acknowledged, keys).items()}
        if not self.deactivate_removed:
            self._leave_removed(keys, acknowledged)
            return
        removals = self._removals(keys, acknowledged)
        if self.dry_run:
            self.counts["deactivated"] += len(removals)
            self.plan += [{"action": "deactivate", "billbee_id": i.billbee_id, "sku": i.sku, "pulpo_id": i.pulpo_id,
                           "name": ""} for i in removals]
            return
        done = set(keys) - {i.billbee_id for i in removals}  # nothing in PULPO to deactivate
        for group in _chunks(removals, BATCH_SIZE * CALLS_PER_RECORD):
            try:
                with self._ledger("deactivate_products", group) as outcome:
                    for batch in _chunks(group, BATCH_SIZE):
                        deactivated = self._deactivate(batch)
                        done |= deactivated
                        outcome["ok"] += len(deactivated)
                        outcome["failed"] += len(batch) - len(deactivated)
            finally:
                self.store.delete_snapshot_rows(self.data.acknowledged, done)

    def _removals(self, keys: list[str], acknowledged: dict[str, dict[str, Any]]) -> list[Item]:
        """Removed products with a PULPO product to deactivate, unless another Billbee product has
        taken that PULPO product over (deleted and re-created under the same SKU)."""
        mapping = self.mapping(keys)
        targets = {key: mapping.get(key) or acknowledged.get(key, {}).get("pulpo_id") for key in keys}
        taken = self.data.pulpo_ids_owned_by_others(keys, [str(p) for p in targets.values() if p is not None])
        removals = []
        for key, pid in targets.items():
            if pid is not None and str(pid) not in taken:
                state = acknowledged.get(key, {})
                removals.append(Item(key, "", {}, {"sku": state.get("sku") or ""}, "", state, int(pid)))
        return removals

    def _deactivate(self, batch: Sequence[Item]) -> set[str]:
        """Deactivate one batch (and the kits of bundles); returns the Billbee ids that are done."""
        rows = [{"id": i.pulpo_id, "active": False, **({"sku": i.sku} if i.sku else {})} for i in batch]
        result = self.client.bulk_update_products(rows)
        by_key = {i.sku: i for i in batch if i.sku} | {str(i.pulpo_id): i for i in batch}
        done = {by_key[ok.key].billbee_id for ok in result.ok if ok.key in by_key}
        self.counts["deactivated"] += len(done)
        for failure in result.failed:
            item = by_key.get(failure.key)
            if item is not None and ("id" in failure.field_errors or "not found" in failure.reason):
                done.add(item.billbee_id)  # the PULPO product is gone: nothing left to deactivate
            elif item is not None:
                self.log.warning(f"{self.flow.name}: PULPO refused to deactivate product {item.pulpo_id}: "
                                 f"{failure.reason}; retried on the next run")
        for item in batch:
            if item.billbee_id in done and item.acknowledged.get("kit_id"):
                self._post_kit_deactivation(int(item.acknowledged["kit_id"]))
        return done

    def _leave_removed(self, keys: list[str], acknowledged: dict[str, dict[str, Any]]) -> None:
        self.counts["left_removed"] += len(keys)
        if self.dry_run:
            self.plan += [{"action": "leave (deactivate_removed: false)", "billbee_id": k,
                           "sku": acknowledged.get(k, {}).get("sku", ""), "pulpo_id": "", "name": ""} for k in keys]
            return
        key = f"{self.flow.slug}:leave_removed:{_digest(sorted(keys))}"
        self.store.ledger_begin(key, self.flow.slug, "leave_removed", {"count": len(keys), "billbee_ids": keys[:20]})
        self.store.ledger_finish(key, "skipped", {"count": len(keys)},
                                 message="deleted in Billbee; left active in PULPO (deactivate_removed: false)")
        self.store.delete_snapshot_rows(self.data.acknowledged, keys)

    # ---- results -------------------------------------------------------------------------------------

    def unaccounted(self, comparison: Comparison) -> list[str]:
        """Snapshot products that are after this run neither acknowledged by PULPO, nor in quarantine,
        nor bundles skipped by setting (a dry run judges the state before its planned writes)."""
        accounted = self.completed | set(self.quarantine) | self.skipped
        if self.dry_run:
            accounted |= set(self._parked or {})
        return [key for key in comparison.pending if key not in accounted]

    def metadata(self) -> dict[str, dg.MetadataValue]:
        c = self.counts
        written = c["created"] + c["updated"] + c["deactivated"] + c["kits_created"] + c["kits_deactivated"]
        quarantined = [{"billbee_id": k, "sku": p.get("sku", ""), "reason": r} for k, (r, p) in self.quarantine.items()]
        return {
            **count_metadata(
                created=c["created"], updated=c["updated"], deactivated=c["deactivated"],
                unchanged=c["unchanged"], adopted=c["adopted"], kits_created=c["kits_created"],
                kits_deactivated=c["kits_deactivated"], left_removed=c["left_removed"],
                skipped_bundles=c["skipped_bundles"], quarantined=len(self.quarantine),
                records_written=0 if self.dry_run else written,
                records_skipped=c["skipped_bundles"] + c["left_removed"],
            ),
            "dry_run": dg.MetadataValue.bool(self.dry_run),
            "quarantine_preview": preview_table(quarantined),
            **({"plan_preview": preview_table(self.plan, limit=25)} if self.dry_run else {}),
        }


def accounted_check(comparison: Comparison, writer: ProductWriter) -> dg.AssetCheckResult:
    missing = writer.unaccounted(comparison)
    dry = " (dry run: PULPO as it was before the planned writes)" if writer.dry_run else ""
    return dg.AssetCheckResult(
        asset_key=writer.flow.key("pulpo_products"),
        check_name="all_products_accounted_for",
        passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(missing):,} snapshot products are neither in PULPO with their current content nor in "
                    f"quarantine{dry}" if missing else "every snapshot product is in PULPO or in quarantine "
                                                       "with a reason",
        metadata={"unaccounted": dg.MetadataValue.int(len(missing)),
                  "examples": dg.MetadataValue.text(", ".join(missing[:10]) or "none")},
    )
