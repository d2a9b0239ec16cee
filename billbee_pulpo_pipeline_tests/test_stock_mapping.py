"""The stock formula (`mapping/stock.py`) as pure functions: no network, no Dagster."""

from __future__ import annotations

import pytest

from billbee_pulpo_pipeline.clients.billbee import Order
from billbee_pulpo_pipeline.mapping.stock import (
    SELL_OUT_FLOOR,
    OpenOrder,
    OrderLine,
    acknowledged_signature,
    implausible,
    open_order,
    open_units,
    order_record,
    pulpo_quantity,
    sellable,
    signature_quantity,
    stock_lines,
)

BESTELLT, BEZAHLT, VERSENDET, STORNIERT, GEPACKT = 1, 3, 4, 8, 13
RESERVING = {1, 2, 3, 11, 12, 13, 15, 16}


# ---- Q − O − B, never below 0 ------------------------------------------------------------------------


@pytest.mark.parametrize(("quantity", "opened", "buffer", "expected"), [
    (10, 0, 0, 10),
    (10, 3, 0, 7),
    (10, 3, 2, 5),
    (-4, 0, 0, 0),         # PULPO's orders outran its stock: negative available
    (-4, 2, 1, 0),
    (3, 0, 5, 0),          # buffer larger than the stock
    (5, 0, 5, 0),
    (None, 0, 0, 0),       # SKU missing from PULPO: nothing to sell
    (None, 2, 3, 0),
    (10, 1.5, 0, 8),       # fractional order units round the result down
    (10, 0.1 + 0.2, 0, 9),
    (4, 0.1 + 0.2 + 0.7, 0, 3),  # float fuzz (4 - 1.0000000000000002) does not lose a unit
])
def test_sellable(quantity, opened, buffer, expected):
    assert sellable(quantity, opened, buffer) == expected


def test_sellable_refuses_negative_inputs():
    with pytest.raises(ValueError):
        sellable(5, -1, 0)
    with pytest.raises(ValueError):
        sellable(5, 0, -1)


def test_pulpo_quantity_picks_the_configured_field():
    assert pulpo_quantity(4, 9, "available") == 4
    assert pulpo_quantity(4, 9, "total") == 9
    assert pulpo_quantity(None, None, "available") == 0
    with pytest.raises(ValueError):
        pulpo_quantity(1, 2, "physical")


# ---- open orders (O) ---------------------------------------------------------------------------------


def order(order_id: str, state: int, *lines: tuple[str | None, float], bundle: str | None = None) -> OpenOrder:
    return OpenOrder(order_id, state, tuple(OrderLine(sku, qty, None, sku == bundle) for sku, qty in lines))


def test_only_reserving_orders_not_in_pulpo_count():
    orders = [
        order("1", BESTELLT, ("A", 2)),
        order("2", BEZAHLT, ("A", 1), ("B", 4)),
        order("3", GEPACKT, ("B", 1)),
        order("4", VERSENDET, ("A", 7)),      # shipped: Billbee no longer reserves it
        order("5", STORNIERT, ("B", 9)),      # cancelled
        order("6", BEZAHLT, ("A", 5)),        # in PULPO: inside PULPO's available already
    ]
    units = open_units(orders, RESERVING, in_pulpo={"6"}, components={})
    assert units.units == {"A": 3.0, "B": 5.0}
    assert (units.orders, units.in_pulpo) == (3, 1)
    assert units.total == 8.0 and units.of("C") == 0.0


def test_bundles_count_for_their_components():
    components = {"SET": [("A", 1.0), ("B", 2.0)], "BIG": [("SET", 2.0), ("C", 1.0)]}
    orders = [order("1", BEZAHLT, ("SET", 3), bundle="SET"), order("2", BESTELLT, ("BIG", 1))]
    units = open_units(orders, RESERVING, in_pulpo=set(), components=components)
    assert units.units == {"A": 3.0 + 2.0, "B": 6.0 + 4.0, "C": 1.0}
    assert "SET" not in units.units and not units.unresolved


def test_bundle_without_known_parts_is_reported_not_subtracted():
    units = open_units([order("1", BEZAHLT, ("X", 2), ("A", 1), bundle="X")], RESERVING, set(), {})
    assert units.units == {"A": 1.0}
    assert units.unresolved == {"X": 2.0}


def test_lines_without_sku_are_counted_apart():
    units = open_units([order("1", BEZAHLT, (None, 1), ("A", 1))], RESERVING, set(), {})
    assert units.units == {"A": 1.0} and units.lines_without_sku == 1


def test_stock_lines_leave_out_coupons_untracked_and_empty_lines():
    raw = {"BillBeeOrderId": 20000000000000123, "State": BEZAHLT, "CreatedAt": "2026-01-01T10:00:00Z",
           "OrderItems": [
               {"Product": {"SKU": " A ", "BillbeeId": 20000000000001001, "Type": 1}, "Quantity": 2},
               {"Product": {"SKU": "SET", "BillbeeId": 20000000000001049, "Type": 2}, "Quantity": 1},
               {"Product": {"SKU": "GUTSCHEIN"}, "Quantity": 1, "IsCoupon": True},
               {"Product": {"SKU": "B"}, "Quantity": 1, "DontAdjustStock": True},
               {"Product": {"SKU": "C"}, "Quantity": 0},
           ]}
    lines = stock_lines(Order.model_validate(raw))
    assert [(line.sku, line.quantity, line.bundle) for line in lines] == [("A", 2.0, False), ("SET", 1.0, True)]
    assert lines[0].billbee_id == 20000000000001001  # 17 digits survive
    again = open_order("20000000000000123", order_record(raw))
    assert again.lines == tuple(lines) and again.state == BEZAHLT


# ---- what Billbee acknowledged ----------------------------------------------------------------------


def test_signature_names_value_and_settings():
    assert acknowledged_signature(12, None, False) == "q=12;stock=;auto=0"
    assert acknowledged_signature(12.0, 7, True) == "q=12;stock=7;auto=1"
    assert acknowledged_signature(3.5, None, False) != acknowledged_signature(3, None, False)
    assert acknowledged_signature(5, 1, False) != acknowledged_signature(5, None, False)
    assert signature_quantity("q=12;stock=7;auto=1") == 12.0
    assert signature_quantity(acknowledged_signature(3.5, None, False)) == 3.5
    assert signature_quantity(None) is None and signature_quantity("garbage") is None


# ---- plausibility --------------------------------------------------------------------------------------


def test_empty_snapshot_with_stock_in_billbee_is_implausible():
    assert "no stock at all" in implausible(listed=0, with_stock=3, sell_outs=3)
    assert implausible(listed=0, with_stock=0, sell_outs=0) is None  # a new, empty warehouse


def test_mass_sell_out_is_implausible_but_small_ones_are_not():
    assert "sold out" in implausible(listed=500, with_stock=400, sell_outs=201)
    assert implausible(listed=500, with_stock=400, sell_outs=200) is None
    small = SELL_OUT_FLOOR - 1
    assert implausible(listed=small, with_stock=small, sell_outs=small) is None  # a tiny shop selling out
