"""Shipping labels (PULPO box -> Billbee `shipwithlabel`): the pure decisions of the labels flow.

Which Billbee provider/product makes a box's label, the box's weight and dimensions as Billbee wants
them, how a label made by a call whose answer was lost is recognised among the order's shipments,
when a refused label is tried again, and the merchant-readable texts. No I/O here.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

# Refused labels are tried again after these pauses (by attempts so far), then once a day: a refusal
# usually needs the merchant (package type, address) and every call counts against the API budget.
RETRY_DELAYS = (timedelta(minutes=15), timedelta(hours=1), timedelta(hours=4), timedelta(hours=24))
CLIENT_REFERENCE_MAX = 35   # a reference line fits on every carrier's label at this length

# Hints per Billbee ErrorCode (names from the official SDK; 22 observed in a real answer).
REFUSAL_HINTS: dict[int, str] = {
    2: "the order no longer exists in Billbee",
    5: "the order is cancelled in Billbee; no label is needed unless it is reactivated",
    6: "the order is deleted in Billbee",
    11: "Billbee considers the label data invalid: check the shipping product and the box weight",
    22: "assign a package type (Verpackungstyp) to the order in Billbee, or choose a shipping product "
        "that needs none",
}
# Billbee order states in which no label is bought (Storniert, Gelöscht).
NO_LABEL_STATES = {8: "cancelled (Storniert)", 6: "deleted (Gelöscht)"}


@dataclass(frozen=True)
class Carrier:
    """The Billbee provider and product that make a label, and where the choice came from."""

    provider_id: int
    product_id: int
    source: str  # "provider_map" | "order"


def choose_carrier(shipping_method_id: int | None, provider_map: Mapping[int, tuple[int, int]],
                   order_provider_id: int | None, order_product_id: int | None) -> Carrier | str:
    """The carrier for a box, or the merchant-readable reason there is none.

    A `provider_map` row for the PULPO shipping method wins (the warehouse may have changed the
    method); otherwise the Billbee order's own provider and product."""
    if shipping_method_id is not None and int(shipping_method_id) in provider_map:
        provider, product = provider_map[int(shipping_method_id)]
        return Carrier(int(provider), int(product), "provider_map")
    if order_provider_id and order_product_id:
        return Carrier(int(order_provider_id), int(order_product_id), "order")
    method = f"PULPO shipping method {shipping_method_id}" if shipping_method_id is not None else \
        "no PULPO shipping method"
    return ("the Billbee order has no shipping provider and product, and there is no provider_map row for "
            f"{method}: set the shipping product on the order in Billbee or add a provider_map row")


def weight_grams(weight_kg: float | None) -> int | None:
    """PULPO box weight (kg) as Billbee's `WeightInGram`; None when PULPO has none. The spec gives no unit:
    kg is what the sandbox (and the carton tares of `GET /packing/boxes`) use; verify on a live tenant."""
    if weight_kg is None or weight_kg <= 0:
        return None
    return max(1, round(float(weight_kg) * 1000))


def dimensions_cm(length: float | None, width: float | None, height: float | None) -> dict[str, float] | None:
    """PULPO box dimensions (cm) as Billbee's `Dimension` (lower-case keys); None unless all three are set."""
    sides = {"length": length, "width": width, "height": height}
    if any(value is None or value <= 0 for value in sides.values()):
        return None
    return {name: float(value) for name, value in sides.items()}  # type: ignore[arg-type]


def box_problem(weight: int | None, boxes_in_order: int) -> str | None:
    """Why a box cannot get a label as PULPO describes it (None when it can). Billbee computes the
    weight of an order from its articles, which is right for one box and wrong for each of several."""
    if weight is None and boxes_in_order > 1:
        return (f"the box has no weight in PULPO and the packing order has {boxes_in_order} boxes (Billbee "
                "would charge each box with the weight of the whole order): weigh the box in PULPO")
    return None


def client_reference(order_number: str | None, box_number: int | None, boxes_in_order: int) -> str | None:
    """Text printed on the label (where the carrier allows): order number and box n/m, so the packer
    sticks the right label on the right box."""
    parts = [str(order_number).strip()] if order_number and str(order_number).strip() else []
    if boxes_in_order > 1 and box_number is not None:
        parts.append(f"{box_number}/{boxes_in_order}")
    text = " ".join(parts)
    return text[:CLIENT_REFERENCE_MAX] or None


def carrier_code(name: str | None) -> str | None:
    """PULPO `carrier_code` from Billbee's carrier or provider name: 'DHL Express' -> 'dhl_express'."""
    if not name or not name.strip():
        return None
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_") or None


def recognise_label(shipments: Iterable[Mapping[str, Any]], *, provider_id: int, product_id: int,
                    after_shipment_id: int, claimed_by: Mapping[str, str], box_id: str) -> Mapping[str, Any] | None:
    """The shipment a `shipwithlabel` call for `box_id` made, when its answer was lost.

    Candidates are shipments of the order (ShipmentType 0) with a BillbeeId above the highest one the
    order had before the call ("new shipments have a greater id", says the spec of `minimumShipmentId`),
    made with the provider and product that were sent, and not recorded for another box
    (`claimed_by`: ShippingId -> box id). Boxes of one order are labelled one at a time, so the first
    such shipment is this box's label; one already recorded for this box wins. None: Billbee made none.
    """
    candidates = []
    for shipment in shipments:
        if shipment.get("ShipmentType") not in (None, 0):
            continue
        billbee_id = _int(shipment.get("BillbeeId"))
        if billbee_id is None or billbee_id <= after_shipment_id:
            continue
        if (_int(shipment.get("ShippingProviderId")), _int(shipment.get("ShippingProviderProductId"))) != \
                (int(provider_id), int(product_id)):
            continue
        owner = claimed_by.get(str(shipment.get("ShippingId")))
        if owner == str(box_id):
            return shipment
        if owner is None:
            candidates.append((billbee_id, shipment))
    return min(candidates, key=lambda c: c[0])[1] if candidates else None


def foreign_shipments(shipments: Iterable[Mapping[str, Any]], claimed_by: Mapping[str, str]) -> list[str]:
    """Tracking numbers of the order's outgoing shipments that this flow did not make."""
    return [str(s.get("ShippingId")) for s in shipments
            if s.get("ShipmentType") in (None, 0) and str(s.get("ShippingId")) not in claimed_by]


def refusal_reason(order_id: str, box_label: str, code: Any, message: str) -> str:
    """What the merchant reads when Billbee refuses a label: Billbee's own words and what to do."""
    hint = REFUSAL_HINTS.get(code) if isinstance(code, int) else None
    text = f"Billbee refused the label: {message} (order {order_id}, {box_label})"
    return f"{text}. To fix: {hint}" if hint else text


def next_retry(attempts: int, refused_at: datetime) -> datetime:
    """When a refused label is tried again: 15 min, 1 h, 4 h after the first refusals, then daily."""
    delay = RETRY_DELAYS[min(max(attempts, 1), len(RETRY_DELAYS)) - 1]
    return refused_at + delay


def label_filename(tracking_code: str) -> str:
    return f"label-{re.sub(r'[^A-Za-z0-9_-]+', '_', tracking_code)}.pdf"


def pdf_from_base64(data: str | None) -> bytes | None:
    """The label bytes of Billbee's `LabelDataPdf` (None when it sent none or it is not a PDF)."""
    if not data:
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        return None
    return raw if raw.startswith(b"%PDF") else None


def plan_problems(planned: Sequence[Mapping[str, Any]], finished_labels: Mapping[str, str]) -> list[dict[str, str]]:
    """The blocking check before any label is bought: every planned call has a mapped Billbee order,
    a provider and product, a weight when its order has several boxes, a box with no tracking in
    PULPO, no label recorded or under way in the ledger (`finished_labels`: box id -> status), and no
    box is planned twice. Returns the violations (empty: safe to write)."""
    problems: list[dict[str, str]] = []
    seen: set[str] = set()

    def problem(row: Mapping[str, Any], text: str) -> None:
        problems.append({"box_id": str(row.get("box_id")), "problem": text})

    for row in planned:
        box = str(row.get("box_id"))
        if box in seen:
            problem(row, "planned twice")
        seen.add(box)
        if not row.get("billbee_order_id"):
            problem(row, "no Billbee order")
        if not row.get("provider_id") or not row.get("product_id"):
            problem(row, "no provider/product")
        if not row.get("weight_grams") and int(row.get("boxes_in_order") or 1) > 1:
            problem(row, "no weight in a packing order of several boxes")
        if row.get("pulpo_tracking"):
            problem(row, f"PULPO box already has tracking {row.get('pulpo_tracking')}")
        status = finished_labels.get(box)
        if status in ("done", "pending"):
            problem(row, f"label already {status} in the ledger")
    return problems


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
