"""Billbee order states set from PULPO: when a state may be set, and the ledger key of the write
(pure functions, no I/O).

The rule (decided here, used by the status-updates and shipments flows alike): Billbee order states
are ordered by how far an order has come, and a flow only moves an order forward.

- open (Bestellt, Bestätigt, Bezahlt, Angeboten, the reminders, Im Fulfillment) < Gepackt <
  Versendet < done (Abgeschlossen, Bewertet);
- the target is set when the order is in an earlier step or in another state of the same step
  (Bezahlt → Im Fulfillment is allowed, Versendet → Gepackt is not);
- an order already in the target state needs no call (a second PUT changes nothing but is billed);
- protected states are never overwritten, whatever the target: Storniert, Gelöscht, Reklamation,
  Retoure and Archiviert are the merchant's decisions. A warehouse that packs or ships such an order
  is something the merchant must hear about, so these come back as 'attention', not as a skip.
"""

from __future__ import annotations

from dataclasses import dataclass

from billbee_pulpo_pipeline.clients.billbee.states import state_name

OPEN_STATES = frozenset({1, 2, 3, 11, 12, 14, 15, 16})
PACKED, SHIPPED = 13, 4
DONE_STATES = frozenset({7, 10})
PROTECTED_STATES = frozenset({5, 6, 8, 9, 17})

_STEP = {**dict.fromkeys(OPEN_STATES, 0), PACKED: 1, SHIPPED: 2, **dict.fromkeys(DONE_STATES, 3),
         **dict.fromkeys(PROTECTED_STATES, 4)}


@dataclass(frozen=True)
class StateDecision:
    """What to do about one Billbee order and one target state."""

    action: str          # "set" | "already" | "later" | "protected"
    reason: str | None = None

    @property
    def writes(self) -> bool:
        return self.action == "set"


def step_of(state: int) -> int:
    """How far an order in `state` has come (0 open … 3 done; 4 for the protected states)."""
    return _STEP.get(state, 0)


def decide_state(current: int | None, target: int) -> StateDecision:
    """Whether to set `target` on an order now in `current` (None: Billbee did not say; set it)."""
    if current == target:
        return StateDecision("already", f"already {state_name(target)}")
    if current is None:
        return StateDecision("set")
    if current in PROTECTED_STATES:
        return StateDecision("protected", f"the Billbee order is {state_name(current)}: not changed to "
                                          f"{state_name(target)}; check the order in Billbee")
    if step_of(current) > step_of(target):
        return StateDecision("later", f"already {state_name(current)}, further than {state_name(target)}")
    return StateDecision("set")


def status_ledger_key(billbee_order_id: str | int, state: int) -> str:
    """Idempotency key of setting `state` on an order: shared by every flow, so no flow sets it twice."""
    return f"status:{billbee_order_id}:{state}"
