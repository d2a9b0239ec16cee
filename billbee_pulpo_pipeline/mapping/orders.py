"""Billbee orders → PULPO sales orders: the fields the flow transfers (their hash decides 'changed')
and the pure mapping to PULPO's `SalesOrderBodyRequest` (no I/O, no Dagster).

Linkage: `external_order_num` = str(BillBeeOrderId), which never changes; `order_num` = Billbee's
`OrderNumber` (what the warehouse sees on its screens), or the Billbee id when the marketplace gave
no number; the writer renders it from `order_num_template` and, when another shop's order already
has it, `order_num_on_collision` (`order_numbers.py`), and keeps the number sent for good. PULPO keeps
`order_num` unique, which is what makes a retried create safe.

Lines: each to the PULPO `product_id` of the Billbee article it is linked to (`Product.BillbeeId`),
by SKU only when it has no linked article; bundle lines ship as their components (setting `bundles`).
The resolution is `mapping/articles.py`, applied by the writer (`defs/sales_orders/lines.py`). Left out:
- coupon lines (`IsCoupon`, with `skip_coupon_lines`, the default): vouchers are money, not goods;
- digital lines (`Product.IsDigital`): nothing to pick, whatever their SKU;
- lines without SKU that weigh nothing (0 g or unknown): shipping fees, gift wrapping, services;
- lines with a quantity of 0 or less (positions removed in Billbee).
A line without SKU that weighs something and is linked to no Billbee article is a physical article
the warehouse cannot identify: the order waits in quarantine until the article gets a SKU (a linked
one goes by its article's SKU). A fractional quantity (1.5 m of fabric)
cannot be picked as PULPO units (integers): quarantine too. An order with no line left (a voucher
or download only) is not sent at all.

Customer (setting `customer`), what merchants should pick:
- `none` (default): only the delivery address travels. Right for B2C shops where the warehouse
  ships to an address and nobody reports per customer in PULPO.
- `fallback`: every order names one PULPO customer (`fallback_customer_id`), as PULPO's own
  Shopify integration does. Pick it when the PULPO tenant requires a third party on orders.
- `per_customer`: one PULPO customer (third party, `third_type` C) per Billbee customer, found by
  `erp_id` = Billbee customer id or created once. Pick it for B2B or 3PL setups that report,
  invoice or apply rules per customer in PULPO. Orders without a Billbee customer fall back to
  `fallback_customer_id` when set, else go without.

Shipping method: `shipping_method_map` rows match the Billbee provider and product by id or by name
(case-insensitive; a product name also matches without its provider prefix, so `Paket` matches
`DHL Paket`). The first row whose provider and product match wins; a row without provider and
product is the default, used when no other row matches wherever it stands. No match: no method.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Protocol

from billbee_pulpo_pipeline.clients.billbee.models import Order, parse_billbee_datetime
from billbee_pulpo_pipeline.mapping.articles import BUNDLE_TYPE

ADDRESS_KEYS = ("FirstName", "LastName", "Company", "NameAddition", "Street", "HouseNumber", "Line2", "Zip",
                "City", "State", "CountryISO2", "Email", "Phone")


def _get(record: Any, name: str) -> Any:
    """A field of a Billbee record, given as its model or as its JSON (the stored snapshot payload)."""
    if type(record) is dict or isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def _str_id(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _address(order: Order | Mapping[str, Any]) -> dict[str, Any] | None:
    address = _get(order, "ShippingAddress") or _get(order, "InvoiceAddress")
    if address is None:
        return None
    return {k: _get(address, k) for k in ADDRESS_KEYS}


def _modified(order: Order | Mapping[str, Any], field: str = "LastModifiedAt") -> str | None:
    value = _get(order, field)
    if not value:
        return None
    # In UTC: one text whether it came as a datetime (with Billbee's offset) or as the stored JSON (UTC).
    return str(parse_billbee_datetime(value).astimezone(UTC))


def _lines(order: Order | Mapping[str, Any]) -> list[dict[str, Any]]:
    lines = []
    for item in _get(order, "OrderItems") or []:
        product = _get(item, "Product")
        lines.append({
            "position": _str_id(_get(item, "BillbeeId")),
            "sku": _get(product, "SKU"),
            "billbee_product_id": _str_id(_get(product, "BillbeeId")),
            "quantity": _get(item, "Quantity"),
            "is_coupon": bool(_get(item, "IsCoupon")),
            "is_digital": bool(_get(product, "IsDigital")),
            "weight_g": _get(product, "Weight"),
            # Only on bundle lines, so the content hash of every other stored order stays as it was.
            **({"bundle": True} if _get(product, "Type") == BUNDLE_TYPE else {}),
        })
    return lines


def _customer(order: Order | Mapping[str, Any]) -> dict[str, Any] | None:
    customer = _get(order, "Customer")
    if customer is None or _get(customer, "Id") is None:
        return None
    return {"id": _str_id(_get(customer, "Id")), "name": _get(customer, "Name"),
            "email": _get(customer, "Email"), "number": _str_id(_get(customer, "Number")),
            "vat_id": _get(customer, "VatId")}


def order_fields(order: Order | Mapping[str, Any]) -> dict[str, Any]:
    """What PULPO needs of an order: identity, state, shop, customer, address, lines, shipping choice.

    Takes the `Order` model or its JSON dump (`model_dump(mode="json", by_alias=True)`, as the
    snapshot stores it); both give the same fields, so the writer needs no model validation."""
    seller = _get(order, "Seller")
    return {
        "billbee_order_id": str(_get(order, "BillBeeOrderId")),
        "order_number": _get(order, "OrderNumber"),
        "state": _get(order, "State"),
        "last_modified_at": _modified(order),
        "created_at": _modified(order, "CreatedAt"),
        "shop": _get(order, "ApiAccountName") or _get(seller, "BillbeeShopName"),
        "shop_id": _str_id(_get(seller, "BillbeeShopId")) if seller is not None else None,
        "tags": sorted({str(t) for t in _get(order, "Tags") or [] if t is not None}),
        "customer": _customer(order),
        "shipping_address": _address(order),
        "lines": _lines(order),
        "shipping_provider_id": _str_id(_get(order, "ShippingProviderId")),
        "shipping_provider_product_id": _str_id(_get(order, "ShippingProviderProductId")),
        "shipping_provider_name": _get(order, "ShippingProviderName"),
        "shipping_provider_product_name": _get(order, "ShippingProviderProductName"),
    }


TIMESTAMPS = frozenset({"last_modified_at", "created_at"})  # neither changes what PULPO gets


def content_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The part of `order_fields` whose change matters (the modification time alone does not)."""
    return {k: v for k, v in fields.items() if k not in TIMESTAMPS}


def fields_from_payload(payload: str | Mapping[str, Any]) -> dict[str, Any]:
    """`order_fields` of a stored snapshot payload: the full order JSON, or already its fields."""
    data = json.loads(payload) if isinstance(payload, str) else payload
    if "BillBeeOrderId" in data:
        return order_fields(data)
    if "billbee_order_id" in data:
        return dict(data)
    raise ValueError("payload is neither a Billbee order nor its order_fields")


# --------------------------------------------------------------------------------------------------
# Lines


@dataclass(frozen=True)
class Line:
    """One line PULPO gets: the SKU (resolved to a product id later), a whole quantity, the position
    (PULPO's `line_order_id`). `product_id` is set once the line is resolved to its PULPO product."""

    sku: str
    quantity: int
    position: str | None
    billbee_product_id: str | None
    bundle: bool = False
    product_id: int | None = None


@dataclass(frozen=True)
class LineSelection:
    lines: list[Line] = field(default_factory=list)
    skipped: int = 0               # coupon, digital, service and empty lines left out
    problem: str | None = None     # why the order cannot go to PULPO as it is (quarantine reason)


def _whole(quantity: Any) -> int | None:
    """The quantity as an int when it is whole (Billbee sends doubles: 2.0), else None."""
    if isinstance(quantity, bool) or not isinstance(quantity, int | float):
        return None
    if isinstance(quantity, float) and not quantity.is_integer():
        return None
    return int(quantity)


def _position_label(line: Mapping[str, Any]) -> str:
    """How the merchant finds a position in Billbee: its id, else its weight (the article has no SKU)."""
    if line.get("position"):
        return f"position {line['position']}"
    return f"a position of {line.get('weight_g')} g"


def select_lines(fields: Mapping[str, Any], skip_coupon_lines: bool = True) -> LineSelection:
    """The physical lines of an order (see the module docstring for what is left out and why)."""
    lines: list[Line] = []
    skipped = 0
    for line in fields.get("lines") or []:
        sku = (line.get("sku") or "").strip()
        quantity = line.get("quantity")
        if (line.get("is_coupon") and skip_coupon_lines) or line.get("is_digital"):
            skipped += 1
            continue
        article = line.get("billbee_product_id")
        if not sku:
            if not line.get("weight_g"):
                skipped += 1
                continue
            if not article:  # linked to an article: it goes by the article's SKU (mapping/articles.py)
                return LineSelection(problem=f"{_position_label(line)} has no SKU: the warehouse cannot "
                                     "tell which article to pick; give the article a SKU in Billbee")
        if quantity is None or quantity <= 0:
            skipped += 1
            continue
        whole = _whole(quantity)
        if whole is None:
            name = f"SKU {sku}" if sku else f"Billbee article {article}"
            return LineSelection(problem=f"quantity {quantity} of {name} is not a whole number; PULPO "
                                 "counts units")
        lines.append(Line(sku, whole, line.get("position"), line.get("billbee_product_id"), bool(line.get("bundle"))))
    return LineSelection(lines=lines, skipped=skipped)


# --------------------------------------------------------------------------------------------------
# Shipping method, address, order


class ShippingRule(Protocol):
    """A row of `shipping_method_map` (config `ShippingMethodRule`)."""

    @property
    def billbee_provider(self) -> int | str | None: ...
    @property
    def billbee_product(self) -> int | str | None: ...
    @property
    def pulpo_shipping_method_id(self) -> int: ...


def _norm(text: Any) -> str:
    return " ".join(str(text).casefold().split())


def _matches(wanted: int | str | None, ident: str | None, names: Iterable[str | None]) -> bool:
    if wanted is None:
        return True
    if isinstance(wanted, int):
        return ident is not None and ident == str(wanted)
    return _norm(wanted) in {_norm(n) for n in names if n}


def shipping_method_id(fields: Mapping[str, Any], rules: Sequence[ShippingRule]) -> int | None:
    """The PULPO shipping method for the order's Billbee provider/product, or None (see module doc)."""
    provider = fields.get("shipping_provider_name")
    product = fields.get("shipping_provider_product_name")
    product_names = [product]
    if product and provider and _norm(product).startswith(_norm(provider) + " "):
        product_names.append(_norm(product)[len(_norm(provider)) + 1:])
    default = None
    for rule in rules:
        if rule.billbee_provider is None and rule.billbee_product is None:
            default = default if default is not None else rule.pulpo_shipping_method_id
            continue
        if (_matches(rule.billbee_provider, fields.get("shipping_provider_id"), [provider])
                and _matches(rule.billbee_product, fields.get("shipping_provider_product_id"), product_names)):
            return rule.pulpo_shipping_method_id
    return default


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def ship_to(fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """PULPO `Address` from the Billbee shipping address (empty values left out, not sent as "")."""
    a = fields.get("shipping_address")
    if not a:
        return None
    name = " ".join(p for p in (_text(a.get("FirstName")), _text(a.get("LastName"))) if p)
    detail = {
        "street": _text(a.get("Street")), "house_nr": _text(a.get("HouseNumber")),
        "street2": _text(a.get("Line2")), "zip": _text(a.get("Zip")), "city": _text(a.get("City")),
        "state": _text(a.get("State")), "country_alpha2": _text(a.get("CountryISO2")),
        "email": _text(a.get("Email")),
    }
    address = {
        "name": name or None, "company_name": _text(a.get("Company")), "name2": _text(a.get("NameAddition")),
        "phone_number": _text(a.get("Phone")),
        "address": {k: v for k, v in detail.items() if v is not None},
    }
    return {k: v for k, v in address.items() if v is not None}


def order_num(fields: Mapping[str, Any]) -> str:
    """Billbee's order number, or the Billbee id when the marketplace delivered none. The writer may send
    another number (templates, collisions: `order_numbers.py`); the one sent is in the order mapping."""
    return _text(fields.get("order_number")) or str(fields["billbee_order_id"])


def address_problem(fields: Mapping[str, Any]) -> str | None:
    """Why PULPO would refuse the delivery address (it requires a street), or None."""
    address = ship_to(fields)
    if address is None:
        return "the order has no shipping address"
    if not address["address"].get("street"):
        return "the shipping address has no street"
    return None


def sales_order_payload(
    fields: Mapping[str, Any],
    lines: Sequence[Line],
    product_ids: Mapping[str, int],
    *,
    warehouse_id: int,
    shipping_method: int | None = None,
    third_party_id: int | None = None,
) -> dict[str, Any]:
    """PULPO `SalesOrderBodyRequest` (lines without a resolved `product_id` must have their SKU in `product_ids`)."""
    payload: dict[str, Any] = {
        "order_num": order_num(fields),
        "external_order_num": str(fields["billbee_order_id"]),
        "warehouse_id": warehouse_id,
        "ship_to": ship_to(fields),
        "items": [{"product_id": line.product_id if line.product_id is not None else product_ids[line.sku],
                   "quantity": line.quantity,
                   **({"line_order_id": line.position} if line.position else {})} for line in lines],
        "attributes": json.dumps({"billbee_order_id": str(fields["billbee_order_id"]),
                                  "billbee_shop": fields.get("shop")}, ensure_ascii=False, sort_keys=True),
    }
    if shipping_method is not None:
        payload["shipping_method_id"] = shipping_method
    if third_party_id is not None:
        payload["third_party_id"] = third_party_id
    return payload


def customer_payload(customer: Mapping[str, Any], tenant_id: int | None) -> dict[str, Any]:
    """PULPO `ThirdParty` (customer) for a Billbee customer. The spec requires an identifier type and
    number; a Billbee customer has no tax id in general, so the Billbee customer id serves as both
    identifier and `erp_id` (the key we find it by), the customer number as `erp_code`."""
    payload: dict[str, Any] = {
        "third_type": "C",
        "identifier_type": "billbee_customer",
        "identifier_number": str(customer["id"]),
        "erp_id": str(customer["id"]),
        "name": _text(customer.get("name")) or f"Billbee customer {customer['id']}",
        "active": True,
    }
    optional = {"erp_code": _text(customer.get("number")), "email": _text(customer.get("email")),
                "tenant_id": tenant_id}
    payload.update({k: v for k, v in optional.items() if v is not None})
    return payload
