"""A stand-in for a label service (Sendcloud, VCE) in the sandbox world.

Such a service buys the label for each packed box and writes its tracking code onto the PULPO box
(`POST /packing/orders/{id}/boxes/{box}/shipment_tracking`); the `shipments` integration then carries
the code to Billbee. The stand-in acts through PULPO's API as the simulator, like the warehouse.

`shipping_methods`: only boxes whose PULPO sales order has one of these shipping methods get a code
(a merchant's DPD parcels go through Sendcloud while Billbee makes the DHL labels); None: every box.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from typing import Any

from billbee_pulpo_pipeline.sandboxes.pulpo.data import SHIPPING_METHODS
from billbee_pulpo_pipeline.sandboxes.pulpo.warehouse import WarehouseSimulator

CARRIERS = ("dhl", "ups")
# The live world's label service handles the sandbox's DPD parcels (the demo config maps the shop's DPD
# orders to this PULPO shipping method); Billbee makes the other labels.
LIVE_WORLD_METHODS = tuple(m["id"] for m in SHIPPING_METHODS if m["carrier"] == "dpd")


class LabelService:
    """A tracking code on every closed box (of the given shipping methods) that has none."""

    def __init__(self, warehouse: WarehouseSimulator, shipping_methods: Collection[int] | None = None,
                 carriers: tuple[str, ...] = CARRIERS, seed: int = 1) -> None:
        self.warehouse = warehouse
        self.shipping_methods = set(shipping_methods) if shipping_methods is not None else None
        self.carriers = carriers
        self.rng = random.Random(f"label-service:{seed}")
        self.issued = 0
        self.done: set[int] = set()                       # boxes that have a tracking code
        self.methods: dict[int, int | None] = {}          # packing order id -> its shipping method

    def step(self) -> int:
        """Write the codes of this step; returns how many were written."""
        written = 0
        for box in self.warehouse._all("/packing/orders/boxes/search", "packing_boxes", state="closed"):
            if box["id"] in self.done or not self._handles(int(box["packing_order_id"])):
                continue
            path = f"/packing/orders/{box['packing_order_id']}/boxes/{box['id']}/shipment_tracking"
            if not self.warehouse._call("GET", path).get("shipment_trackings"):
                self._write(path, int(box["id"]))
                written += 1
            self.done.add(box["id"])
        return written

    def _write(self, path: str, box_id: int) -> None:
        self.issued += 1
        code = f"SC{box_id:08d}{self.issued:05d}"
        self.warehouse._call("POST", path, json={"carrier_code": self.rng.choice(self.carriers),
                                                 "tracking_code": code, "status": "generated",
                                                 "tracking_url": f"https://track.example/{code}"})

    def _handles(self, packing_order_id: int) -> bool:
        if self.shipping_methods is None:
            return True
        if packing_order_id not in self.methods:
            self.methods[packing_order_id] = self._method_of(packing_order_id)
        return self.methods[packing_order_id] in self.shipping_methods

    def _method_of(self, packing_order_id: int) -> int | None:
        packing: dict[str, Any] = self.warehouse._call("GET", f"/packing/orders/{packing_order_id}")
        sales_order_id = packing.get("sales_order_id")
        if sales_order_id is None:
            return None
        return self.warehouse._call("GET", f"/sales/orders/{sales_order_id}").get("shipping_method_id")
