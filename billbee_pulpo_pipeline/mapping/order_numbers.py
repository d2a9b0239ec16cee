"""The PULPO `order_num` of a Billbee order: templates, collisions and the last resort (pure, no I/O).

Billbee's `OrderNumber` is unique per shop, not per account: Amazon and Shopify may both deliver
"1001". PULPO keeps `order_num` unique per tenant. So the writer tries, in order (each at most once,
never a loop):

1. `order_num_template` (default `{OrderNumber}`): what the warehouse sees for almost every order;
2. `order_num_on_collision` (default `{OrderNumber}-{BillbeeShopId}`) when PULPO says the first is
   taken by another Billbee order;
3. the collision form followed by `-{BillbeeOrderId}` when that is taken too (the Billbee id is
   unique in the account, so only a number somebody typed by hand in PULPO can still collide; then
   the order waits in quarantine naming both numbers).

Placeholders: `{OrderNumber}` (the Billbee order number, or the Billbee id when the marketplace gave
none), `{BillbeeShopId}` (`Seller.BillbeeShopId`, else the Billbee id), `{BillbeeOrderId}`.
The link to Billbee is `external_order_num` = Billbee id whatever number is used.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

PLACEHOLDERS = ("OrderNumber", "BillbeeShopId", "BillbeeOrderId")
DEFAULT_TEMPLATE = "{OrderNumber}"
DEFAULT_ON_COLLISION = "{OrderNumber}-{BillbeeShopId}"


def template_problem(template: str, *, collision: bool = False) -> str | None:
    """Why `template` cannot number orders (a message naming the fault), or None when it can."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"{template!r} is not a valid template ({exc}); write placeholders as {{OrderNumber}}"
    names = [name for _, name, _, _ in parts if name is not None]
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            return f"unknown placeholder {{{name}}} in {template!r} (known: {known})"
        if spec or conversion:
            return f"placeholder {{{name}}} in {template!r} takes no format (write it plainly)"
    if not names:
        return f"{template!r} has no placeholder: every order would get the same number"
    if collision and not {"BillbeeShopId", "BillbeeOrderId"} & set(names):
        return (f"{template!r} must contain {{BillbeeShopId}} or {{BillbeeOrderId}}, or a number taken by another "
                "shop's order would be taken again")
    return None


def placeholder_values(fields: Mapping[str, Any]) -> dict[str, str]:
    """The placeholder values of an order (`order_fields`)."""
    billbee_id = str(fields["billbee_order_id"])
    number = str(fields.get("order_number") or "").strip()
    shop = fields.get("shop_id")
    return {"OrderNumber": number or billbee_id, "BillbeeShopId": str(shop) if shop else billbee_id,
            "BillbeeOrderId": billbee_id}


def render(template: str, fields: Mapping[str, Any]) -> str:
    """`template` filled in for the order (the template was checked by `template_problem`)."""
    return template.format(**placeholder_values(fields)).strip()


def candidates(fields: Mapping[str, Any], template: str = DEFAULT_TEMPLATE,
               on_collision: str = DEFAULT_ON_COLLISION) -> list[str]:
    """The numbers to try, in order, without repeats (see the module doc)."""
    first = render(template, fields)
    second = render(on_collision, fields)
    last = f"{second}-{fields['billbee_order_id']}"
    out: list[str] = []
    for number in (first, second, last):
        if number and number not in out:
            out.append(number)
    return out
