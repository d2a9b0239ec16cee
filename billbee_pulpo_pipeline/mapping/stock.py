"""PULPO stock → Billbee: the formula of the stock flow, as pure functions (no I/O, no Dagster).

What Billbee shows per SKU after a sync (the *target*) is what can still be sold:

    billbee_stock = max(0, floor(Q − O − B))

- **Q**: PULPO's quantity of the SKU in the configured warehouse only (`warehouse_id` of the PULPO
  credential; other warehouses never count). `quantity: available` (default) is PULPO's sellable
  stock: storage minus what PULPO's sales orders already reserve. `quantity: total` is physical on
  hand. A SKU PULPO no longer lists has Q = 0: nothing left to sell.
- **O**: units of Billbee orders in a reserving state (setting `reserving_states`; by default
  Bestellt, Bestätigt, Bezahlt, Angemahnt, 2. Mahnung, Zahlungserinnerung, Gepackt, Im Fulfillment)
  that PULPO does not have yet: no `order:` mapping of the same Billbee/PULPO pair, or a PULPO order
  that was cancelled. Billbee took those units when the order came in (Bestellt), PULPO does not
  know them, so an absolute write without them would sell them a second time. An order that *is* in
  PULPO is inside Q already (PULPO reserves it, or has shipped it), so it is not subtracted twice.
  A line counts against the SKU of the Billbee article it is linked to (`Product.BillbeeId`), not
  the marketplace SKU on the line, the same resolution the sales-orders flow uses
  (`mapping/articles.py`); a bundle line counts for its components (amount × quantity); coupon
  lines, lines Billbee keeps out of stock (`DontAdjustStock`) and non-positive quantities count nothing.
  With `autosubtract_reserved: true`, O = 0: Billbee subtracts its own unfulfilled amount from the
  value written (`AutosubtractReservedAmount`), which is meant for `quantity: total`.
- **B**: `safety_buffer`, units held back per article.

Never below 0, and fractions (Billbee quantities are decimals) round down: rounding never sells a
unit that is not there.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from billbee_pulpo_pipeline.mapping.articles import BUNDLE_TYPE, MAX_DEPTH, Article, LineRef, resolve_line

MAX_BUNDLE_DEPTH = MAX_DEPTH  # bundles of bundles are resolved this deep
SELL_OUT_FLOOR = 20       # fewer sell-outs than this in one run are never judged implausible

FORMULA = ("Billbee stock = max(0, floor(Q − O − B)); Q = PULPO {quantity} in warehouse {warehouse} (other "
           "warehouses never count), O = units of Billbee orders in {states} that PULPO does not have yet{auto}, "
           "B = safety_buffer {buffer}.")


def pulpo_quantity(available: int | None, total: int | None, quantity: str = "available") -> int:
    """The PULPO quantity the setting `quantity` names (`available` or `total`); missing counts 0."""
    if quantity not in ("available", "total"):
        raise ValueError(f"quantity must be 'available' or 'total', not {quantity!r}")
    value = total if quantity == "total" else available
    return int(value or 0)


def sellable(quantity: float | None, open_units: float = 0.0, safety_buffer: int = 0) -> int:
    """max(0, floor(Q − O − B)). `quantity` None means PULPO does not list the SKU (nothing to sell);
    a negative Q (PULPO's orders outran its stock) and a buffer larger than the stock give 0."""
    if open_units < 0 or safety_buffer < 0:
        raise ValueError("open units and the safety buffer cannot be negative")
    value = (quantity or 0) - open_units - safety_buffer
    return max(0, math.floor(round(value, 6)))  # round first: 2.9999999 from float sums is 3


# --------------------------------------------------------------------------------------------------
# What Billbee acknowledged


def acknowledged_signature(quantity: float, stock_id: int | None, autosubtract: bool) -> str:
    """What one stock row set in Billbee, as text: the value and the settings it was written with, so
    a changed `stock_id` or `autosubtract_reserved` rewrites every article once."""
    return f"q={_number(quantity)};stock={stock_id or ''};auto={int(autosubtract)}"


def signature_quantity(signature: str | None) -> float | None:
    """The quantity of an `acknowledged_signature` (None for none or an unreadable one)."""
    if not signature or not signature.startswith("q="):
        return None
    try:
        return float(signature[2:].split(";", 1)[0])
    except ValueError:
        return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --------------------------------------------------------------------------------------------------
# Open Billbee orders


@dataclass(frozen=True)
class OrderLine:
    """A line of an open order as far as stock is concerned."""

    sku: str | None
    quantity: float
    billbee_id: int | None = None  # Billbee product id (SoldProduct.BillbeeId): finds a bundle's parts
    bundle: bool = False


@dataclass(frozen=True)
class OpenOrder:
    order_id: str
    state: int
    lines: tuple[OrderLine, ...]


def _get(record: Any, name: str) -> Any:
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def stock_lines(order: Any) -> list[OrderLine]:
    """The lines of a Billbee order (model or JSON) that take stock: no coupons, no lines Billbee keeps
    out of stock (`DontAdjustStock`), no quantity of 0 or less."""
    lines = []
    for item in _get(order, "OrderItems") or []:
        quantity = _get(item, "Quantity")
        if _get(item, "IsCoupon") or _get(item, "DontAdjustStock") or not quantity or quantity <= 0:
            continue
        product = _get(item, "Product")
        sku = (_get(product, "SKU") or "").strip() or None
        billbee_id = _get(product, "BillbeeId")
        lines.append(OrderLine(sku, float(quantity), int(billbee_id) if billbee_id is not None else None,
                               _get(product, "Type") == BUNDLE_TYPE))
    return lines


def order_record(order: Any) -> dict[str, Any]:
    """What the flow keeps of an open order (stored as JSON): state and stock lines."""
    return {"state": _get(order, "State"),
            "lines": [[line.sku, line.quantity, line.billbee_id, line.bundle] for line in stock_lines(order)]}


def open_order(order_id: str, record: Mapping[str, Any]) -> OpenOrder:
    lines = tuple(OrderLine(sku, float(qty), billbee_id, bool(bundle))
                  for sku, qty, billbee_id, bundle in record.get("lines") or [])
    return OpenOrder(str(order_id), int(record.get("state") or 0), lines)


@dataclass
class OpenUnits:
    """Units per SKU of the open Billbee orders that PULPO does not have yet (O in the formula)."""

    units: dict[str, float] = field(default_factory=dict)
    orders: int = 0            # open orders counted (not in PULPO)
    in_pulpo: int = 0          # open orders left out because PULPO has them (they are in Q)
    unresolved: dict[str, float] = field(default_factory=dict)  # bundle SKU → units without known parts
    lines_without_sku: int = 0

    def of(self, sku: str) -> float:
        return self.units.get(sku, 0.0)

    @property
    def total(self) -> float:
        return sum(self.units.values())


def open_units(orders: Iterable[OpenOrder], reserving_states: Collection[int], in_pulpo: Collection[str],
               components: Mapping[str, Sequence[tuple[str, float]]],
               articles: Mapping[str, Article] | None = None) -> OpenUnits:
    """O per SKU: the lines of orders in `reserving_states` whose id is not in `in_pulpo`.

    A line counts for the article Billbee linked it to (`articles`, by Billbee id, see
    `mapping/articles.py`): a marketplace SKU on the line counts against the article's SKU, a bundle
    article for its components. Lines whose article is not in `articles` count by their SKU, where
    `components` maps a bundle SKU to its (component SKU, amount) pairs; such a line is a bundle when
    Billbee marks it (Type 2) or its SKU has components. A bundle whose parts are unknown counts in
    `unresolved` and subtracts nothing (it cannot be placed on any article)."""
    articles = articles or {}
    result = OpenUnits()
    for order in orders:
        if order.state not in reserving_states:
            continue
        if order.order_id in in_pulpo:
            result.in_pulpo += 1
            continue
        result.orders += 1
        for line in order.lines:
            article_id = str(line.billbee_id) if line.billbee_id is not None else None
            if article_id not in articles:  # by the line's SKU, as Billbee sold it
                if line.sku is None:
                    result.lines_without_sku += 1
                    continue
                _add_line(result, line.sku, line.quantity, line.bundle, components, 0)
                continue
            for part in resolve_line(LineRef(article_id, line.sku, line.quantity, line.bundle), articles).parts:
                if part.sku is None:
                    result.lines_without_sku += 1
                else:  # a component known only by its BOM SKU may itself be a bundle known by SKU
                    _add_line(result, part.sku, part.quantity, part.bundle, components, len(part.path))
    return result


def _add_line(result: OpenUnits, sku: str, quantity: float, bundle: bool,
              components: Mapping[str, Sequence[tuple[str, float]]], depth: int) -> None:
    parts = components.get(sku)
    if parts and depth < MAX_BUNDLE_DEPTH:
        for part_sku, amount in parts:
            _add_line(result, part_sku, quantity * float(amount), False, components, depth + 1)
    elif bundle:
        result.unresolved[sku] = result.unresolved.get(sku, 0.0) + quantity
    else:
        result.units[sku] = result.units.get(sku, 0.0) + quantity


# --------------------------------------------------------------------------------------------------
# Plausibility of a PULPO snapshot


def implausible(listed: int, with_stock: int, sell_outs: int) -> str | None:
    """Why writing a snapshot would look like a PULPO incident, or None.

    `listed`: SKUs PULPO listed; `with_stock`: SKUs Billbee has stock for from this integration;
    `sell_outs`: of those, how many the snapshot would set to 0 (missing from it, or nothing left).
    A whole catalogue selling out between two runs is what an empty or broken answer looks like."""
    if listed == 0 and with_stock:
        return (f"PULPO listed no stock at all, while Billbee shows stock from this integration for "
                f"{with_stock:,} articles; writing it would mark them all sold out")
    if sell_outs >= SELL_OUT_FLOOR and sell_outs * 2 > with_stock:
        return (f"{sell_outs:,} of the {with_stock:,} articles with stock in Billbee would be set to 0 in one "
                "run; writing it would mark most of the shop sold out")
    return None
