"""Billbee orders: the fields the sales-order flow transfers (their hash decides 'changed')."""

from __future__ import annotations

from typing import Any

from billbee_pulpo_pipeline.clients.billbee.models import Order


def _address(order: Order) -> dict[str, Any] | None:
    a = order.ShippingAddress
    if a is None:
        return None
    keys = ("FirstName", "LastName", "Company", "NameAddition", "Street", "HouseNumber", "Line2", "Zip", "City",
            "State", "CountryISO2", "Email", "Phone")
    return {k: getattr(a, k, None) for k in keys}


def order_fields(order: Order) -> dict[str, Any]:
    """What PULPO needs of an order: identity, state, address, physical lines and shipping choice."""
    lines = []
    for item in order.OrderItems or []:
        product = item.Product
        lines.append({
            "position": str(item.BillbeeId) if item.BillbeeId is not None else None,
            "sku": getattr(product, "SKU", None),
            "billbee_product_id": str(product.BillbeeId) if product and product.BillbeeId is not None else None,
            "quantity": item.Quantity,
            "is_coupon": bool(item.IsCoupon),
        })
    return {
        "billbee_order_id": str(order.BillBeeOrderId),
        "order_number": order.OrderNumber,
        "state": order.State,
        "last_modified_at": str(order.LastModifiedAt) if order.LastModifiedAt else None,
        "shipping_address": _address(order),
        "lines": lines,
        "shipping_provider_id": str(order.ShippingProviderId) if order.ShippingProviderId is not None else None,
        "shipping_provider_product_id": (str(order.ShippingProviderProductId)
                                         if order.ShippingProviderProductId is not None else None),
    }


def content_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The part of `order_fields` whose change matters (the modification time alone does not)."""
    return {k: v for k, v in fields.items() if k != "last_modified_at"}
