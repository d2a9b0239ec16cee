"""Which packing orders a labels or shipments integration handles: `pulpo_shipping_methods`.

Merchants mix label services: DHL labels made by Billbee (`shipping_labels`), DPD labels by Sendcloud
whose tracking codes go to Billbee as shipments (`shipments`). Each of the two integrations then lists
the PULPO shipping methods it handles (the config check demands disjoint lists), and each packing
order is handled by the one whose list holds its PULPO sales order's `shipping_method_id`. The sales
order is read once per run (one PULPO call, cached); without a list every packing order is handled.
"""

from dataclasses import dataclass, field

from billbee_pulpo_pipeline.clients.pulpo import PulpoClient

OTHER_METHOD = "other_shipping_method"   # count and result name of a packing order left to the other flow


def methods_note(methods: list[int] | None) -> str:
    """A sentence for the asset description, empty without a filter."""
    if not methods:
        return ""
    return (f" Only packing orders of PULPO shipping method{'s' if len(methods) > 1 else ''} "
            f"{', '.join(map(str, methods))} (pulpo_shipping_methods); the others are left to the other "
            "integration and counted.")


@dataclass
class ShippingMethodFilter:
    """The `pulpo_shipping_methods` of one integration over the PULPO client (no Dagster)."""

    methods: list[int] | None
    pulpo: PulpoClient
    known: dict[int, int | None] = field(default_factory=dict)   # sales order id -> shipping method id

    @property
    def active(self) -> bool:
        return bool(self.methods)

    def shipping_method(self, sales_order_id: int) -> int | None:
        """The PULPO sales order's shipping method (read once per run). Raises the client's errors."""
        if sales_order_id not in self.known:
            self.known[sales_order_id] = self.pulpo.get_sales_order(sales_order_id).shipping_method_id
        return self.known[sales_order_id]

    def skip_reason(self, sales_order_id: int | None) -> tuple[str, bool] | None:
        """None when this integration handles the packing order; else (why not, needs the merchant's
        attention). A sales order without a shipping method is handled by no filtered integration,
        which the merchant must see; one of another method belongs to the other integration."""
        if not self.methods or sales_order_id is None:
            return None
        method = self.shipping_method(sales_order_id)
        listed = ", ".join(map(str, self.methods))
        if method is None:
            return (f"PULPO sales order {sales_order_id} has no shipping method, and this integration handles only "
                    f"PULPO shipping methods {listed} (pulpo_shipping_methods): no tracking is written for it; "
                    "set the order's shipping method (sales orders flow: shipping_method_map) or ship it by hand",
                    True)
        if method in self.methods:
            return None
        return (f"PULPO shipping method {method} is not in this integration's pulpo_shipping_methods ({listed}): "
                "left to the integration that handles it", False)
