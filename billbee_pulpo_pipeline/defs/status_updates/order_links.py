"""What the PULPO → Billbee flows share: from a PULPO sales order to its Billbee order, setting a
Billbee order state exactly once, one writer per flow at a time, and the blocking check before the
Billbee writes.

Link: the sales-orders flow records `order:<billbee>:<pulpo>` mappings (Billbee order id ↔ PULPO sales
order id) and writes `{"billbee_order_id": …}` into the PULPO order's `attributes`. A packing order's
sales order that is mapped is linked. One that is not mapped is looked up in PULPO once per run:
- without that attribute it did not come from Billbee (another channel, a manual order): skipped
  for good and counted, not an error;
- with it, the link is not written yet (the sales-orders run that created it died before recording
  it; the next one adopts the order and writes it): it waits, re-evaluated every run with no Billbee
  call, for up to `ORDER_LINK_GRACE` after packing finished. After that it is skipped with the reason
  (typically an order of another Billbee account sharing the warehouse).
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from filelock import Timeout as LockTimeout

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient, Order
from billbee_pulpo_pipeline.clients.billbee.states import state_name
from billbee_pulpo_pipeline.clients.http import NotFoundError, RequestRejectedError, TransientApiError
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.defs.common import STATE_STORE_KEY, Flow, mapping_kind, writer_lock
from billbee_pulpo_pipeline.defs.crash import crash_point
from billbee_pulpo_pipeline.mapping.status import decide_state, status_ledger_key
from billbee_pulpo_pipeline.state import LedgerEntry, StateStore

ORDER_LINK_GRACE = timedelta(hours=2)
LINKS_CHECK = "billbee_order_links_available"
WRITER_LOCK_SECONDS = 600


class Halt(Exception):
    """Billbee or PULPO is unreachable or refuses us: stop writing, keep what is done, fail the run."""


@contextmanager
def one_writer(store: StateStore, flow: Flow, timeout: float = WRITER_LOCK_SECONDS) -> Iterator[None]:
    """One writing run per flow at a time (see `writer_lock`); a run kept waiting too long halts."""
    try:
        with writer_lock(store.path, flow, timeout):
            yield
    except LockTimeout as exc:
        raise Halt(f"another run of {flow.name} has been writing for over {int(timeout)} s") from exc


# --------------------------------------------------------------------------------------------------
# PULPO sales order → Billbee order


@dataclass(frozen=True)
class Link:
    """How a PULPO sales order relates to a Billbee order of this integration."""

    status: str                       # linked | waiting | not_from_billbee
    billbee_order_id: str | None = None
    reason: str | None = None


class OrderLinks:
    """Resolves PULPO sales order ids to Billbee order ids (see the module doc)."""

    def __init__(self, flow: Flow, pulpo: PulpoClient, store: StateStore,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.kind = mapping_kind("order", flow)
        self.pulpo = pulpo
        self.store = store
        self.now = now

    def resolve(self, finished_at: Mapping[str, datetime | None]) -> dict[str, Link]:
        """sales order id → Link, for the ids of `finished_at` (id → when its packing finished)."""
        ids = [key for key in finished_at if key]
        mapped = self.store.get_mappings_by_pulpo(self.kind, ids)
        links = {key: Link("linked", found[0].billbee_id) for key, found in mapped.items()}
        for key in ids:
            if key not in links:
                links[key] = self._unmapped(key, finished_at[key])
        return links

    def _unmapped(self, sales_order_id: str, finished_at: datetime | None) -> Link:
        try:
            order = self.pulpo.get_sales_order(int(sales_order_id))
        except NotFoundError:
            return Link("not_from_billbee", reason=f"PULPO has no sales order {sales_order_id}")
        except TransientApiError as exc:
            raise Halt(f"PULPO sales order lookup failed: {exc.reason}") from exc
        billbee_id = order.attributes_dict.get("billbee_order_id")
        if not billbee_id:
            return Link("not_from_billbee", reason=f"PULPO sales order {order.order_num or sales_order_id} "
                                                   "did not come from Billbee")
        if finished_at is None or self.now() - finished_at < ORDER_LINK_GRACE:
            return Link("waiting", str(billbee_id), reason=f"waiting for the link of Billbee order {billbee_id} "
                                                           "from the sales-orders flow")
        hours = int(ORDER_LINK_GRACE.total_seconds() // 3600)
        return Link("not_from_billbee", str(billbee_id),
                    reason=f"PULPO says it came from Billbee order {billbee_id}, but this integration's Billbee "
                           f"account has no link to it after {hours} h (another shop's order?)")


# --------------------------------------------------------------------------------------------------
# Setting a Billbee order state, exactly once


@dataclass(frozen=True)
class StateOutcome:
    result: str                # set | already | later | protected | recorded | rejected | planned
    reason: str | None = None


class StateWrites:
    """Sets states on Billbee orders under the rule of `mapping/status.py`, each (order, state) at
    most once across runs and flows: the ledger key `status:<order>:<state>` frames the PUT, and a
    decision not to write (already there, further on, protected) is recorded too, so a rerun needs no
    Billbee call at all to know it."""

    def __init__(self, integration: str, billbee: BillbeeClient, store: StateStore, *, dry_run: bool,
                 log: logging.Logger | Any = None) -> None:
        self.integration = integration
        self.billbee = billbee
        self.store = store
        self.dry_run = dry_run
        self.log = log or logging.getLogger(__name__)

    def recorded(self, pairs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], LedgerEntry]:
        """The finished ledger entries of (order, state) pairs: those need nothing more."""
        keys = {status_ledger_key(order, state): (order, state) for order, state in pairs}
        entries = self.store.ledger_get_many(keys)
        return {keys[k]: e for k, e in entries.items() if e.status != "pending"}

    def apply(self, order: Order, target: int) -> StateOutcome:
        """Set `target` on `order` (as just read from Billbee) if the rule allows; updates `order.State`."""
        decision = decide_state(order.State, target)
        if self.dry_run:
            return StateOutcome("planned" if decision.writes else decision.action, decision.reason)
        key = status_ledger_key(order.BillBeeOrderId, target)
        order_id = str(order.BillBeeOrderId)
        entry = self.store.ledger_begin(key, self.integration, "set_state",
                                        {"billbee_order_id": order_id, "state": target, "from": order.State})
        if not decision.writes:
            adopted = decision.action == "already" and entry.previous_status == "pending"
            status = "done" if adopted else ("attention" if decision.action == "protected" else "skipped")
            self.store.ledger_finish(key, status, {"adopted": True} if adopted else None, order_id,
                                     decision.reason)
            return StateOutcome(decision.action, decision.reason)
        try:
            self.billbee.set_order_state(int(order_id), target)
        except (RequestRejectedError, NotFoundError) as exc:
            reason = f"Billbee refused the state {state_name(target)}: {exc.reason}"
            self.store.ledger_finish(key, "attention", None, order_id, reason)
            return StateOutcome("rejected", reason)
        except TransientApiError as exc:   # left 'pending': the next run reads the order before a retry
            raise Halt(f"Billbee state change failed: {exc.reason}") from exc
        crash_point("status")
        self.store.ledger_finish(key, "done", {"from": order.State}, order_id)
        order.State = target
        return StateOutcome("set")


# --------------------------------------------------------------------------------------------------
# The blocking check before the Billbee writes


@dataclass(frozen=True)
class PendingSource:
    """A dataset of PULPO records whose pending rows (by content hash, against `processed`) lead to
    Billbee writes; `sales_order_id` reads the PULPO sales order id out of a row's payload."""

    dataset: str
    processed: str
    sales_order_id: Callable[[dict[str, Any]], Any]


def links_check(flow: Flow, asset: dg.AssetKey, sources: list[PendingSource]) -> dg.AssetChecksDefinition:
    """Blocks the Billbee writes when none of the pending records can be linked because this state
    store holds no order link for the Billbee account and PULPO user at all: the sales-orders flow never
    ran against it (another BPP_HOME, a fresh install). Writing then would skip every packing order as
    "not from Billbee" for good; blocking keeps them pending until the links exist."""
    kind = mapping_kind("order", flow)

    @dg.asset_check(
        asset=asset, name=LINKS_CHECK, blocking=True, required_resource_keys={STATE_STORE_KEY},
        description="Blocking: the records waiting for a Billbee write can be linked to Billbee orders, i.e. "
                    "this state store holds the sales-orders flow's order links for this Billbee account and "
                    "PULPO user. Fails (and holds back every write) when it holds none while records wait.",
    )
    def billbee_order_links_available(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        store = context.resources.state_store.store()
        sales_ids: set[str] = set()
        without_sales_order = 0
        for source in sources:
            keys = [key for key, _ in store.pending_changes(source.dataset, source.processed)]
            for payload in store.snapshot_rows(source.dataset, keys).values():
                found = source.sales_order_id(json.loads(payload))
                if found is None:
                    without_sales_order += 1
                else:
                    sales_ids.add(str(found))
        linked = store.get_mappings_by_pulpo(kind, sales_ids)
        no_links_at_all = bool(sales_ids) and not linked and not store.mappings(kind)
        metadata = {"pending_sales_orders": dg.MetadataValue.int(len(sales_ids)),
                    "linked": dg.MetadataValue.int(len(linked)),
                    "without_sales_order": dg.MetadataValue.int(without_sales_order),
                    "mapping_kind": dg.MetadataValue.text(kind)}
        if no_links_at_all:
            return dg.AssetCheckResult(
                passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
                description=f"{len(sales_ids)} PULPO sales order(s) wait for a Billbee write, but this state store "
                            f"({store.path}) holds no order link between these Billbee and PULPO accounts. Run the "
                            "sales-orders integration with the same BPP_HOME first; nothing was written.")
        return dg.AssetCheckResult(passed=True, metadata=metadata,
                                   description="the waiting records can be linked to Billbee orders")

    return billbee_order_links_available

