"""Stock (PULPO → Billbee): the writer that keeps Billbee's stock at the target (see `mapping/stock.py`).

What Billbee accepted is the dataset `<slug>.billbee_stock_acknowledged`: SKU → the value and settings
of the last row Billbee confirmed inside its HTTP 200 answer (`acknowledged_signature`). A run computes
every SKU's target and writes only those whose target differs, through `updatestockmultiple` with the
absolute `NewQuantity`, in full batches of `batch_size` (only the last one of a run is shorter):

- Rows Billbee refuses (unknown SKU, a bundle, a bad stock location, ...) go to quarantine (kind
  `stock`) with Billbee's message; the rest of the batch stands. A refused row is sent again when its
  target changes or at the next full reconcile, not on every run. Rows Billbee left unanswered are
  not acknowledged and go again on the next run: nothing is silently lost.
- Every call is framed by the ledger (`<slug>:stock:<digest of the rows>`, action `update_stock`).
  A crash between Billbee's answer and the record only means the rows still differ on the next run,
  which sends them again: absolute values, so a resend changes nothing twice.
- Writes run in a worker thread while PULPO is still being read. Rows that would sell an article out
  (target 0 where Billbee has stock) and articles PULPO no longer lists wait until the whole snapshot
  passed the plausibility check: an empty or broken PULPO answer never marks the shop sold out.
- The full reconcile (every `reconcile_hours`, on the first run, or with launchpad `reconcile: true`)
  reads Billbee's current stock of every article and compares the targets with *that* instead of the
  acknowledged dataset, so a manual edit in Billbee (drift) is written over, and refused rows are
  retried. It also refreshes the bundle list and re-reads all open orders.
- Bundles get no stock row: Billbee computes their stock from the components.
"""

# No `from __future__ import annotations`: kept like the other writers Dagster code imports.
import hashlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient, StockRowResult, StockUpdate
from billbee_pulpo_pipeline.clients.billbee.states import state_name
from billbee_pulpo_pipeline.clients.http import ApiError, TransientApiError
from billbee_pulpo_pipeline.config.models import StockSettings
from billbee_pulpo_pipeline.defs.articles import ArticleCatalog
from billbee_pulpo_pipeline.defs.common import Flow, canonical_json, count_metadata, preview_table
from billbee_pulpo_pipeline.defs.crash import crash_point
from billbee_pulpo_pipeline.defs.stock.billbee_stock import BillbeeStock, Bundles, read_billbee_stock
from billbee_pulpo_pipeline.defs.stock.open_orders import OpenOrders, OpenOrdersRead
from billbee_pulpo_pipeline.defs.stock.pulpo_stock import StockRow
from billbee_pulpo_pipeline.mapping.stock import (
    FORMULA,
    OpenUnits,
    acknowledged_signature,
    implausible,
    open_units,
    pulpo_quantity,
    sellable,
    signature_quantity,
)
from billbee_pulpo_pipeline.state import StateStore

ACKNOWLEDGED = "billbee_stock_acknowledged"
RECONCILED = "stock_reconciled_at"
QUARANTINE_KIND = "stock"
WRITE_ACTION = "update_stock"
REASON = "PULPO WMS"              # Billbee shows it in the article's stock history
NO_RESULT = "Billbee returned no result for this row"
MAX_BUNDLE_LOOKUPS = 10           # `GET /products/{id}` per run for bundles seen only in orders
RECONCILE_GRACE = timedelta(hours=1)  # a due reconcile is left to its schedule for this long
RESEND_PAUSE = 2.0                # seconds before the one resend of a call whose outcome is unknown
PLAN_LIMIT = 1000                 # planned rows kept for the dry-run preview


@dataclass
class Row:
    """One article whose Billbee stock is to be set."""

    sku: str
    quantity: int              # the target
    pulpo: int | None          # Q (None: PULPO no longer lists the SKU)
    open_units: float          # O
    known: float | None        # what Billbee holds as far as the flow knows (None: nothing known)
    why: str                   # new | changed | drift | removed | sold out


class StockWriter:
    """One run of the stock writer: plain Python over the Billbee client and the state store.

    Use: `prepare()`, then `consider(rows)` for the PULPO rows (as they arrive), `consider_removed()`
    once the snapshot is complete, `problem()` for the plausibility check, `flush(release_held)`, and
    `finish()`, which waits for the worker thread.
    """

    def __init__(self, flow: Flow, client: BillbeeClient, store: StateStore, *, dry_run: bool = False,
                 reconcile: bool = False, log: logging.Logger | Any = None) -> None:
        settings = flow.integration.settings
        assert isinstance(settings, StockSettings)
        self.flow = flow
        self.client = client
        self.store = store
        self.settings = settings
        self.dry_run = dry_run
        self.force_reconcile = reconcile
        self.log = log or logging.getLogger(__name__)
        self.stock_id = settings.stock_id
        self.autosubtract = settings.autosubtract_reserved
        self.batch_size = settings.batch_size
        self.acknowledged = flow.dataset(ACKNOWLEDGED)
        self.integration = flow.slug
        self.bundles = Bundles(flow, store)
        self.catalog = ArticleCatalog(flow, store)  # lines count for their Billbee article (mapping/articles.py)
        self.open_orders = OpenOrders(flow, client, store, reserving_states=settings.reserving_state_ids,
                                      lookback_days=settings.open_orders_lookback_days, log=self.log)
        self.started_at = datetime.now(UTC)
        self.counts: Counter[str] = Counter()
        self.plan: list[dict[str, Any]] = []
        self.held: list[Row] = []
        self.pending: list[Row] = []
        self.seen: set[str] = set()
        self.renewed: list[tuple[str, str, str]] = []
        self.with_stock = 0
        self.sell_outs = 0
        self.reconcile_reason: str | None = None
        self.billbee: BillbeeStock | None = None
        self.orders_read: OpenOrdersRead | None = None
        self.units = OpenUnits()
        self.stored: dict[str, str] = {}
        self.bundle_skus: set[str] = set()
        self.parked: dict[str, dict[str, Any]] = {}
        self.sender: BatchSender | None = None
        self.released = False

    # ---- before PULPO is read ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Everything the targets need, in the order that can only undersell: Billbee's side and the
        order mappings first, PULPO's stock after (see `open_orders.py`)."""
        self.reconcile_reason = self._reconcile_reason()
        self.stored = self.store.snapshot_hashes(self.acknowledged)
        components = self.bundles.components()
        if self.reconcile_reason:
            self.billbee = read_billbee_stock(self.client, stock_id=self.stock_id, autosubtract=self.autosubtract,
                                              log=self.log, label=f"{self.flow.name}: stock reconcile")
            components = self.billbee.bundles
            if not self.dry_run:
                self.bundles.replace(components)
        self.bundle_skus = set(components) | self.bundles.kit_skus()
        self.orders_read = self.open_orders.refresh(full=self.reconcile_reason is not None)
        if not self.autosubtract:
            self.units = self._open_units(components)
        self.parked = {q.record_key: q.payload if isinstance(q.payload, dict) else {}
                       for q in self.store.quarantine_list(self.integration, kind=QUARANTINE_KIND)}
        if not self.dry_run:
            self.sender = BatchSender(self)

    def _reconcile_reason(self) -> str | None:
        if self.force_reconcile:
            return "asked for (launchpad or reconcile schedule)"
        last = self.store.get_cursor(self.flow.dataset(RECONCILED))
        if last is None:
            return "first run: Billbee's current stock is the starting point"
        age = datetime.now(UTC) - datetime.fromisoformat(last)
        if age > timedelta(hours=self.settings.reconcile_hours) + RECONCILE_GRACE:
            return f"the last full reconcile was {age.total_seconds() / 3600:.0f} h ago"
        return None

    def _open_units(self, components: dict[str, list[tuple[str, float]]]) -> OpenUnits:
        orders = self.open_orders.orders()
        in_pulpo = self.open_orders.in_pulpo([o.order_id for o in orders])
        states = set(self.settings.reserving_state_ids)
        articles = self.catalog.load(line.billbee_id for o in orders for line in o.lines)
        units = open_units(orders, states, in_pulpo, components, articles)
        if units.unresolved:
            ids = sorted({line.billbee_id for o in orders for line in o.lines
                          if line.sku in units.unresolved and line.billbee_id is not None})
            found = self.bundles.look_up(self.client, ids, MAX_BUNDLE_LOOKUPS)
            if found:
                components.update(found)
                self.bundle_skus |= set(found)
                units = open_units(orders, states, in_pulpo, components, articles)
        return units

    # ---- the targets ---------------------------------------------------------------------------------

    def signature(self, quantity: float) -> str:
        return acknowledged_signature(quantity, self.stock_id, self.autosubtract)

    def consider(self, rows: Iterable[tuple[str, StockRow]]) -> None:
        """PULPO rows (SKU → available, total, product id): queue the articles whose target differs."""
        field = self.settings.quantity
        for sku, (available, total, _) in rows:
            if sku in self.bundle_skus:
                self.counts["bundles_skipped"] += 1
                continue
            self.seen.add(sku)
            self._judge(sku, pulpo_quantity(available, total, field))

    def consider_removed(self) -> None:
        """Articles the flow wrote before that PULPO no longer lists: nothing left to sell (target 0)."""
        for sku in [s for s in self.stored if s not in self.seen and s not in self.bundle_skus]:
            self._judge(sku, None)

    def _known(self, sku: str) -> float | None:
        if self.billbee is not None:
            return self.billbee.levels.get(sku)
        return signature_quantity(self.stored.get(sku))

    def _judge(self, sku: str, pulpo: int | None) -> None:
        self.counts["considered"] += 1
        opened = 0.0 if self.autosubtract else self.units.of(sku)
        target = sellable(pulpo, opened, self.settings.safety_buffer)
        known = self._known(sku)
        if known is not None and known > 0:
            self.with_stock += 1
            self.sell_outs += target == 0
        signature = self.signature(target)
        stored = self.stored.get(sku)
        if (known == target) if self.billbee is not None else (stored == signature):
            self.counts["unchanged"] += 1
            if self.billbee is not None and stored != signature:
                self.renewed.append((sku, signature, canonical_json({"quantity": target})))
            return
        if self.billbee is None and self._still_refused(sku, target):
            return
        why = "removed" if pulpo is None else "new" if known is None else "changed"
        if self.billbee is not None and stored == signature:
            why = "drift"
        row = Row(sku, target, pulpo, opened, known, why)
        if target == 0 and (known or 0) > 0:
            self.held.append(row)  # a sell-out waits for the plausibility check
        else:
            self._queue(row)

    def _still_refused(self, sku: str, target: int) -> bool:
        """A row Billbee refused is sent again once its target changed (or by the reconcile)."""
        parked = self.parked.get(sku)
        if parked is not None and parked.get("quantity") == target:
            self.counts["still_quarantined"] += 1
            return True
        return False

    def _queue(self, row: Row) -> None:
        self.counts[f"to_write_{row.why.replace(' ', '_')}"] += 1
        if self.dry_run:
            self.counts["planned"] += 1
            if len(self.plan) < PLAN_LIMIT:
                self.plan.append(self._plan_row(row))
            return
        self.pending.append(row)
        while len(self.pending) >= self.batch_size and self.sender is not None:
            self.sender.put(self.pending[:self.batch_size])
            self.pending = self.pending[self.batch_size:]

    def _plan_row(self, row: Row) -> dict[str, Any]:
        return {"sku": row.sku, "billbee_now": "" if row.known is None else row.known,
                "pulpo": "not listed" if row.pulpo is None else row.pulpo, "open_orders": row.open_units,
                "new_quantity": row.quantity, "why": row.why}

    # ---- the check and the end of the run ------------------------------------------------------------

    def problem(self) -> str | None:
        """Why this snapshot must not sell out articles (see `implausible`), or None."""
        return implausible(len(self.seen), self.with_stock, self.sell_outs)

    def flush(self, release_held: bool) -> None:
        """Queue the sell-outs (when the check passed) and the last short batch; does not wait."""
        if release_held:
            for row in self.held:
                self._queue(row)
        else:
            self.counts["held_back"] += len(self.held)
        if self.pending and self.sender is not None:
            self.sender.put(self.pending)
            self.pending = []
        self.released = release_held

    def finish(self) -> None:
        """Wait for the worker, then the run's bookkeeping; raises the worker's failure."""
        try:
            if self.sender is not None:
                self.sender.close()
        finally:
            if self.sender is not None:
                self.counts.update(self.sender.counts)
        if self.dry_run:
            return
        if self.renewed:
            self.store.upsert_snapshot(self.acknowledged, self.renewed)
        if self.billbee is not None and self.released:
            self.store.set_cursor(self.flow.dataset(RECONCILED), datetime.now(UTC).isoformat())
        gone = [sku for sku in self.parked if sku not in self.seen and sku not in self.stored]
        if gone:  # no longer in PULPO, never written: nothing to retry
            self.store.quarantine_resolve_many(self.integration, gone, kind=QUARANTINE_KIND)
        self._close_interrupted()

    def _close_interrupted(self) -> None:
        """Close the calls an earlier, killed run left 'pending' (found by the chaos run: their keys name
        their rows, so a later batch with other values never finishes them). This complete pass compared
        every SKU again and sent what still differed; the values are absolute, so nothing is owed."""
        self.store.ledger_close_interrupted(self.integration, [WRITE_ACTION], self.started_at,
                                            "interrupted before Billbee's answer was recorded; a later complete "
                                            "run compared and sent every SKU again")

    def abort(self) -> None:
        """The run failed before `finish`: send nothing more and stop the worker."""
        if self.sender is not None:
            self.sender.stop()

    # ---- one Billbee call (in the worker thread) ----------------------------------------------------

    def send(self, rows: Sequence[Row], counts: Counter[str]) -> None:
        key = f"{self.integration}:stock:{_digest([f'{r.sku}={r.quantity}' for r in rows])}"
        entry = self.store.ledger_begin(key, self.integration, WRITE_ACTION, {
            "count": len(rows), "skus": [r.sku for r in rows[:20]], "stock_id": self.stock_id})
        if entry.previous_status == "pending":
            self.log.info(f"{self.flow.name}: sending {len(rows)} stock rows again whose earlier call ended "
                          "without a record (absolute values: a resend changes nothing twice)")
        updates = [StockUpdate(Sku=r.sku, NewQuantity=r.quantity, StockId=self.stock_id, Reason=REASON,
                               AutosubtractReservedAmount=True if self.autosubtract else None) for r in rows]
        try:
            results = self._post(updates, counts)
        except ApiError as exc:
            self.store.ledger_finish(key, "failed", {"count": len(rows)}, message=str(exc)[:500])
            raise
        crash_point("stock")
        done, refused, unconfirmed = self._sort(rows, results)
        self._record(done, refused)
        counts["written"] += len(done)
        counts["refused"] += len(refused)
        counts["unconfirmed"] += len(unconfirmed)
        message = None
        if refused or unconfirmed:
            message = f"{len(refused)} refused (see quarantine), {len(unconfirmed)} not confirmed (sent again next run)"
        self.store.ledger_finish(key, "attention" if message else "done",
                                 {"ok": len(done), "refused": len(refused), "unconfirmed": len(unconfirmed)},
                                 message=message)

    def _post(self, updates: list[StockUpdate], counts: Counter[str]) -> list[StockRowResult]:
        """One `updatestockmultiple`; a call whose outcome is unknown is sent once more, which is safe
        because the values are absolute."""
        try:
            counts["write_calls"] += 1
            return self.client.update_stock_multiple(updates)
        except TransientApiError as exc:
            self.log.warning(f"{self.flow.name}: Billbee stock call failed ({exc.reason}); sending it once more")
            time.sleep(RESEND_PAUSE)
            counts["write_calls"] += 1
            return self.client.update_stock_multiple(updates)

    def _sort(self, rows: Sequence[Row], results: list[StockRowResult],
              ) -> tuple[list[tuple[Row, StockRowResult]], dict[str, tuple[str, dict[str, Any]]], list[Row]]:
        done, refused, unconfirmed = [], {}, []
        for row, result in zip(rows, results, strict=False):
            if result.ok and (result.sku or row.sku).casefold() == row.sku.casefold():
                done.append((row, result))
            elif result.ok or result.error_message == NO_RESULT:
                unconfirmed.append(row)
            else:
                reason = (f"Billbee refused the stock of SKU '{row.sku}' ({result.error_message}); sent again when "
                          "its stock changes or at the next full reconcile")
                refused[row.sku] = (reason, {"quantity": row.quantity, "billbee_code": result.error_code,
                                             "billbee_message": result.error_message})
        unconfirmed += list(rows[len(results):])
        return done, refused, unconfirmed

    def _record(self, done: list[tuple[Row, StockRowResult]], refused: dict[str, tuple[str, dict[str, Any]]]) -> None:
        if done:
            self.store.upsert_snapshot(self.acknowledged, [
                (row.sku, self.signature(row.quantity),
                 canonical_json({"quantity": row.quantity, "billbee_current": result.current_stock}))
                for row, result in done])
            parked = [row.sku for row, _ in done if row.sku in self.parked]
            if parked:
                self.store.quarantine_resolve_many(self.integration, parked, kind=QUARANTINE_KIND)
        if refused:
            self.store.quarantine_put_many(self.integration, QUARANTINE_KIND, refused)
            self.store.delete_snapshot_rows(self.acknowledged, list(refused))

    # ---- results -------------------------------------------------------------------------------------

    def unaccounted(self) -> int:
        """Rows this run meant to write that Billbee neither confirmed nor refused (held back, not
        confirmed, or not sent after a failed call): they are written by a later run."""
        c = self.counts
        return c["held_back"] + c["unconfirmed"] + c["not_sent"]

    def metadata(self) -> dict[str, dg.MetadataValue]:
        c = self.counts
        read = self.orders_read
        written = 0 if self.dry_run else c["written"]
        quarantined = [{"sku": sku, "reason": entry.get("billbee_message") or ""}
                       for sku, entry in self._quarantine_preview().items()]
        meta = {
            **count_metadata(
                considered=c["considered"], records_written=written,
                records_skipped=c["unchanged"] + c["bundles_skipped"] + c["still_quarantined"],
                unchanged=c["unchanged"], written=written, planned=c["planned"], refused=c["refused"],
                quarantined=len(quarantined), still_quarantined=c["still_quarantined"],
                not_confirmed=c["unconfirmed"], held_back=c["held_back"], not_sent=c["not_sent"],
                bundles_skipped=c["bundles_skipped"], write_calls=c["write_calls"], batch_size=self.batch_size,
                new=c["to_write_new"], changed=c["to_write_changed"], removed=c["to_write_removed"],
                drift_repaired=c["to_write_drift"], sell_outs=self.sell_outs,
                open_orders=self.units.orders + self.units.in_pulpo, open_orders_not_in_pulpo=self.units.orders,
                open_orders_in_pulpo=self.units.in_pulpo, open_units_subtracted=round(self.units.total),
                open_bundle_units_unresolved=round(sum(self.units.unresolved.values())),
                open_orders_read=read.read if read else 0,
            ),
            "dry_run": dg.MetadataValue.bool(self.dry_run),
            "reconcile": dg.MetadataValue.text(self.reconcile_reason or "no (not due)"),
            "open_orders_read_mode": dg.MetadataValue.text(read.mode if read else ""),
            "formula": dg.MetadataValue.md(self.formula()),
            "quarantine_preview": preview_table(quarantined),
        }
        if self.billbee is not None:
            meta["billbee_articles_read"] = dg.MetadataValue.int(self.billbee.products)
        if self.dry_run:
            meta["plan_preview"] = preview_table(self.plan, limit=25)
        return meta

    def _quarantine_preview(self) -> dict[str, dict[str, Any]]:
        if self.dry_run:
            return self.parked
        return {q.record_key: q.payload if isinstance(q.payload, dict) else {}
                for q in self.store.quarantine_list(self.integration, kind=QUARANTINE_KIND)}

    def formula(self) -> str:
        s = self.settings
        states = ", ".join(state_name(i) for i in s.reserving_state_ids)
        auto = " (0 here: autosubtract_reserved lets Billbee subtract its own)" if self.autosubtract else ""
        return FORMULA.format(quantity=s.quantity, warehouse=getattr(self.flow.source, "warehouse_id", "?"),
                              states=states, auto=auto, buffer=s.safety_buffer)


class BatchSender:
    """Sends the writer's batches in a worker thread, in order, while the reader goes on. After a
    failed call nothing more is sent (counted `not_sent`); `close()` raises that failure."""

    def __init__(self, writer: StockWriter) -> None:
        self.writer = writer
        self.counts: Counter[str] = Counter()
        self.error: BaseException | None = None
        self._queue: queue.Queue[Sequence[Row] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"{writer.integration}-billbee-stock", daemon=True)
        self._thread.start()

    def put(self, rows: Sequence[Row]) -> None:
        self._queue.put(list(rows))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Drop what is queued and end the worker, without raising."""
        if self.error is None:
            self.error = RuntimeError("the run failed before its stock writes were done")
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        while True:
            rows = self._queue.get()
            if rows is None:
                return
            if self.error is not None:
                self.counts["not_sent"] += len(rows)
                continue
            try:
                self.writer.send(rows, self.counts)
            except BaseException as exc:  # handed to the reader's thread, which fails the run
                self.error = exc
                self.counts["not_sent"] += len(rows)


def _digest(parts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
