"""Pure helpers of the sales-order writer: order-number templates, their checks and the collision candidates,
which order_num refusals are looked up, and which Billbee states make an imported order need attention."""

from __future__ import annotations

import pytest

from billbee_pulpo_pipeline.clients.billbee.states import ORDER_STATES
from billbee_pulpo_pipeline.defs.sales_orders import writer
from billbee_pulpo_pipeline.mapping import order_numbers as on
from billbee_pulpo_pipeline.mapping.orders import order_fields

FIELDS = {"billbee_order_id": "20000000000001234", "order_number": "1001", "shop_id": "20000000000000712"}


def test_default_templates_give_the_number_then_number_and_shop_then_the_billbee_id():
    assert on.candidates(FIELDS) == ["1001", "1001-20000000000000712", "1001-20000000000000712-20000000000001234"]


def test_missing_number_or_shop_fall_back_to_the_billbee_id():
    fields = {"billbee_order_id": "7", "order_number": "  ", "shop_id": None}
    assert on.render("{OrderNumber}", fields) == "7"
    assert on.candidates(fields) == ["7", "7-7", "7-7-7"]


def test_custom_templates_render_every_placeholder():
    assert on.render("BB-{BillbeeShopId}/{OrderNumber}", FIELDS) == "BB-20000000000000712/1001"
    assert on.candidates(FIELDS, "{OrderNumber}", "{OrderNumber}-{BillbeeOrderId}")[1] == "1001-20000000000001234"


@pytest.mark.parametrize(("template", "collision", "problem"), [
    ("{OrderNumber}", False, None),
    ("{OrderNumber}-{BillbeeShopId}", True, None),
    ("BB-{BillbeeOrderId}", True, None),
    ("{Nummer}", False, "unknown placeholder {Nummer}"),
    ("{OrderNumber", False, "is not a valid template"),
    ("{OrderNumber:>10}", False, "takes no format"),
    ("{OrderNumber!r}", False, "takes no format"),
    ("fixed", False, "has no placeholder"),
    ("{OrderNumber}-x", True, "must contain {BillbeeShopId} or {BillbeeOrderId}"),
])
def test_template_problems_name_the_fault(template, collision, problem):
    found = on.template_problem(template, collision=collision)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_order_fields_carry_shop_id_and_sorted_tags():
    fields = order_fields({"BillBeeOrderId": 5, "OrderNumber": "A", "State": 3, "Tags": ["FBA", "B2B", "FBA"],
                           "Seller": {"BillbeeShopId": 20000000000000712, "BillbeeShopName": "Amazon DE"}})
    assert fields["shop_id"] == "20000000000000712" and fields["tags"] == ["B2B", "FBA"]
    assert order_fields({"BillBeeOrderId": 5, "State": 3})["shop_id"] is None


@pytest.mark.parametrize(("message", "looked_up"), [
    ("has already been taken", True), ("must be unique", True), ("ya está en uso", True),
    ("can't be blank", False), ("is invalid", False), (None, False), ("", False),
])
def test_an_order_num_refusal_is_looked_up_unless_it_says_the_number_is_missing_or_malformed(message, looked_up):
    assert writer._number_refused(message) is looked_up


@pytest.mark.parametrize(("state", "cancel_ids", "event"), [
    (1, {8, 6}, "went back to 'Bestellt' (payment charge-back?)"),
    (11, {8, 6}, "went back to 'Angemahnt' (not paid?)"),
    (14, {8, 6}, "went back to 'Angeboten' (not paid?)"),
    (6, {8}, "is 'Gelöscht' (not in cancel_states)"),
])
def test_hold_reasons_say_what_happened_and_what_to_do(state, cancel_ids, event):
    what, advice = writer._hold_reason(state, cancel_ids)
    assert what == event and "in PULPO" in advice


def test_the_normal_lifecycle_never_needs_attention():
    lifecycle = {name for state, name in ORDER_STATES.items() if state in writer.LIFECYCLE_STATES}
    assert lifecycle == {"Versendet", "Reklamation", "Abgeschlossen", "Archiviert", "Bewertet", "Gepackt",
                         "Im Fulfillment", "Retoure"}
    assert not writer.LIFECYCLE_STATES & writer.UNPAID_STATES
