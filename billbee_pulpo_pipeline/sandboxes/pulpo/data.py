"""The simulated PULPO tenant: warehouses, products, stock, sales/picking/packing/shipping orders.

Records are kept in the shape the spec returns them, so reads are a dict lookup plus a copy.
Products seeded from the shared catalogue stay virtual (built from `catalog_item` when read) until
they are written, so 200,000 of them cost a second to seed and little memory.

Stock lives per warehouse in positions (storage, reception, packing, shipping, returns, blocked),
each a `product_id -> quantity` map; reservations are the quantities of sales orders in `queue` and
`picking`. `StockSummary.available = storage - reserved` exactly as the spec defines it, so it can
go negative when orders outrun stock. Products without any stock record in a warehouse do not
appear in that warehouse's summary. `last_movement` changes on physical movements only.

Order flow (each step bumps `updated_at` of what it touches):
    sales order queue --POST /picking/orders--> picking (picking order queue -> taken -> ended)
    picking finish --> sales order packing, packing order queue (stock storage -> packing position)
    packing accept -> taken; box/boxes; finish -> ended, boxes closed, sales order shipping,
        shipping order queue (stock packing -> shipping); close?shipping_location_id -> closed
    shipping order finish --> ended, sales order ended (stock leaves the warehouse)
    cancel: queue/paused/picking/packing/shipping -> cancelled, stock back to storage; ended -> 422
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import random
import secrets
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from billbee_pulpo_pipeline.sandboxes.catalog import catalog_item, is_bundle, sku_for
from billbee_pulpo_pipeline.sandboxes.pulpo.query import (
    PulpoError,
    Query,
    Record,
    blank,
    forbidden,
    int_list,
    invalid,
    not_found,
    now_stamp,
    paging,
    select,
    type_errors,
    window,
)

TENANT_ID = 1
# Merchants of the tenant (a 3PL keeps one per client). Records written without `merchant_id` belong to
# the default merchant, as the spec says of third parties; SKUs are unique per merchant, not per tenant.
DEFAULT_MERCHANT_ID = 1
MERCHANTS = {1: "Default merchant", 2: "Kunde Zwei GmbH", 3: "Kunde Drei KG"}
# Where the spec leaves it open (PUT /__sandbox/behaviour changes them; a reset restores these):
BEHAVIOUR_DEFAULTS: dict[str, str] = {
    # `barcodes` on a product update: "replace" the product's list (Ecto's cast) or "merge" into it.
    "product_barcodes_on_update": "replace",
}
BEHAVIOUR_CHOICES = {"product_barcodes_on_update": ("replace", "merge")}
API_USER_ID = 7
STATES = ("queue", "picking", "packing", "shipping", "ended", "cancelled", "paused")
RESERVING_STATES = frozenset({"queue", "picking"})
POSITIONS = ("storage", "reception", "packing", "shipping", "returns", "blocked")

# ---- fixed world: warehouses, locations, shipping methods, box templates --------------------------

WAREHOUSES: list[Record] = [
    {
        "id": 1,
        "name": "Hauptlager",
        "active": True,
        "line1": "Lagerstraße 1",
        "line2": None,
        "city": "Kassel",
        "zip_code": "34117",
        "state": "Hessen",
        "country_code": "DE",
        "company_name": "Demo Handel GmbH",
        "email": "lager@example.com",
        "phone": "+49 561 000000",
        "fax": None,
        "site": "Kassel",
        "priority": 1,
        "tenant_id": TENANT_ID,
    },
    {
        "id": 2,
        "name": "Außenlager",
        "active": True,
        "line1": "Hafenweg 7",
        "line2": "Halle 3",
        "city": "Hamburg",
        "zip_code": "20457",
        "state": "Hamburg",
        "country_code": "DE",
        "company_name": "Demo Handel GmbH",
        "email": "aussenlager@example.com",
        "phone": "+49 40 000000",
        "fax": None,
        "site": "Hamburg",
        "priority": 2,
        "tenant_id": TENANT_ID,
    },
]
LOCATION_TYPES = {1: "storage", 2: "reception", 3: "packing", 4: "shipping", 5: "returns", 6: "blocked"}
_LOCATION_CODES = {
    "storage": "A-01-01-01",
    "reception": "REC-01",
    "packing": "PACK-01",
    "shipping": "SHIP-01",
    "returns": "RET-01",
    "blocked": "QS-01",
}


def _locations() -> dict[int, Record]:
    out: dict[int, Record] = {}
    for wh in (1, 2):
        for type_id, kind in LOCATION_TYPES.items():
            loc_id = wh * 100 + type_id
            out[loc_id] = {
                "id": loc_id,
                "code": f"W{wh}-{_LOCATION_CODES[kind]}",
                "location_type_id": type_id,
                "warehouse_id": wh,
                "zone_id": wh * 10 + type_id,
                "active": True,
                "priority": type_id,
                "hallway": 1,
                "row": 1,
                "module": 1,
                "level": 1,
                "position": 1,
                "rack_id": None,
                "stock_state_id": 2 if kind == "blocked" else 1,
                "is_defined": True,
                "is_volume": False,
                "attributes": None,
                "product_categories": [],
            }
    return out


LOCATIONS = _locations()


def location_id(warehouse_id: int, kind: str) -> int:
    return warehouse_id * 100 + next(t for t, k in LOCATION_TYPES.items() if k == kind)


SHIPPING_METHODS: list[Record] = [
    {"id": 1, "name": "DHL Paket", "carrier": "dhl", "service": "paket", "fetch_label": False},
    {"id": 2, "name": "DPD Classic", "carrier": "dpd", "service": "classic", "fetch_label": False},
    {
        "id": 3,
        "name": "GLS Business Parcel",
        "carrier": "gls",
        "service": "business_parcel",
        "fetch_label": False,
    },
    {"id": 4, "name": "Sendcloud DHL", "carrier": "sendcloud", "service": "dhl", "fetch_label": True},
]
# Carton templates (`POST /packing/boxes` defines them); a box without explicit dimensions gets the
# smallest one its contents fit (by volume, cm), and its weight is the tare plus product weights (kg).
BOX_TEMPLATES: list[Record] = [
    {
        "id": 1,
        "name": "Karton S",
        "length": 30.0,
        "width": 20.0,
        "height": 10.0,
        "weight": 0.15,
        "warehouse_id": None,
    },
    {
        "id": 2,
        "name": "Karton M",
        "length": 40.0,
        "width": 30.0,
        "height": 20.0,
        "weight": 0.3,
        "warehouse_id": None,
    },
    {
        "id": 3,
        "name": "Karton L",
        "length": 60.0,
        "width": 40.0,
        "height": 40.0,
        "weight": 0.6,
        "warehouse_id": None,
    },
]

# ---- field types from the spec (Product, SalesOrderBodyRequest, ...) ------------------------------

PRODUCT_TYPES = {
    **dict.fromkeys(
        [
            "sku",
            "name",
            "description",
            "article_number",
            "attributes",
            "hs_code",
            "origin_country",
            "management_type",
            "purchase_measure_units",
            "sales_measure_units",
            "deprecated_supplier_product_id",
        ],
        "str",
    ),
    **dict.fromkeys(["active", "batch_control", "stackable", "lq_limited_quantity"], "bool"),
    **dict.fromkeys(["height", "length", "width", "volume", "weight", "cost_price"], "num"),
    **dict.fromkeys(
        [
            "merchant_id",
            "product_group_id",
            "minimum_purchase_unit",
            "minimum_sales_unit",
            "units_per_pallet",
            "units_per_purchase_package",
            "units_per_sales_package",
            "max_amount_per_autostore_bin",
        ],
        "int",
    ),
    "barcodes": "str_list",
    "product_categories": "list",
}
ORDER_TYPES = {
    **dict.fromkeys(
        [
            "address_check_status",
            "attributes",
            "channel",
            "client_id",
            "client_name",
            "criterium",
            "delivery_date",
            "external_order_num",
            "notes",
            "order_num",
            "service_point_id",
            "type",
        ],
        "str",
    ),
    **dict.fromkeys(
        [
            "custom_filter_strategy_id",
            "destination_warehouse_id",
            "merchant_channel_id",
            "merchant_id",
            "priority",
            "purchase_order_id",
            "shipping_method_id",
            "third_party_id",
            "warehouse_id",
        ],
        "int",
    ),
    **dict.fromkeys(["estimated_total_volume", "estimated_total_weight"], "num"),
    **dict.fromkeys(["is_cart", "missing_stock_items_cancelled"], "bool"),
    "items": "list",
    "reason_codes": "list",
    "return_labels": "str_list",
    "ship_to": "obj",
    "shipment_instructions": "obj",
}
ITEM_TYPES = {
    "attributes": "str",
    "line_order_id": "str",
    "notes": "str",
    "required_date": "str",
    "product_id": "int",
    "quantity": "int",
    "batches": "list",
}
ADDRESS_TYPES = {
    "name": "str",
    "name2": "str",
    "company_name": "str",
    "phone_number": "str",
    "address": "obj",
}
ADDRESS_DETAIL_TYPES = dict.fromkeys(
    [
        "additional_info",
        "city",
        "country",
        "country_alpha2",
        "country_code",
        "email",
        "house_nr",
        "post_number",
        "state",
        "street",
        "street2",
        "zip",
    ],
    "str",
)
TRACKING_TYPES = {
    **dict.fromkeys(
        [
            "attributes",
            "carrier_code",
            "error_message",
            "return_label_error_message",
            "service_point_id",
            "status",
            "tracking_code",
            "tracking_url",
        ],
        "str",
    ),
    "printed": "bool",
    "requires_attention": "bool",
    "shipment_cost": "num",
}
ORDER_RESPONSE_KEYS = [
    "address_check_status",
    "attributes",
    "channel",
    "client_id",
    "client_name",
    "criterium",
    "custom_filter_strategy_id",
    "delivery_date",
    "destination_warehouse_id",
    "estimated_total_volume",
    "estimated_total_weight",
    "external_order_num",
    "is_cart",
    "merchant_channel_id",
    "merchant_id",
    "missing_stock_items_cancelled",
    "notes",
    "order_num",
    "priority",
    "purchase_order_id",
    "service_point_id",
    "shipping_method_id",
    "third_party_id",
    "type",
    "warehouse_id",
]

PRODUCT_FILTERS = {
    "id": ("id", "int"),
    "sku": ("sku", "str"),
    "article_number": ("article_number", "str"),
    "barcode": ("barcodes", "str"),
    "name": ("name", "str"),
    "description": ("description", "str"),
    "management_type": ("management_type", "str"),
    "active": ("active", "bool"),
    "updated_at": ("updated_at", "date"),
    "inserted_at": ("inserted_at", "date"),
}
ORDER_FILTERS = {
    "id": ("id", "int"),
    "order_num": ("order_num", "str"),
    "state": ("state", "str"),
    "warehouse_id": ("warehouse_id", "int"),
    "third_party_id": ("third_party_id", "int"),
    "client_id": ("client_id", "str"),
    "channel": ("channel", "str"),
    "priority": ("priority", "int"),
    "criterium": ("criterium", "str"),
    "updated_at": ("updated_at", "date"),
    "inserted_at": ("inserted_at", "date"),
    "delivery_date": ("delivery_date", "date"),
    "external_order_num": ("external_order_num", "str"),
    "product_id": (lambda r: [i["product_id"] for i in r["items"]], "int"),
}
THIRD_PARTY_TYPES = {
    **dict.fromkeys(
        ["attributes", "email", "erp_code", "erp_id", "identifier_number", "identifier_type", "name",
         "third_type"],
        "str",
    ),
    **dict.fromkeys(["merchant_channel_id", "merchant_id", "tenant_id"], "int"),
    "active": "bool",
}
THIRD_PARTY_FILTERS = {
    "id": ("id", "int"),
    "identifier_type": ("identifier_type", "str"),
    "identifier_number": ("identifier_number", "str"),
    "name": ("name", "str"),
    "third_type": ("third_type", "str"),
    "active": ("active", "bool"),
    "attributes": ("attributes", "str"),
    "erp_code": ("erp_code", "str"),
    "erp_id": ("erp_id", "str"),
    "merchant_id": ("merchant_id", "int"),
}
PICKING_FILTERS = {
    "id": ("id", "int"),
    "state": ("state", "str"),
    "warehouse_id": ("warehouse_id", "int"),
    "owner_id": ("owner_id", "int"),
    "updated_at": ("updated_at", "date"),
    "inserted_at": ("inserted_at", "date"),
    "sales_order_id": (lambda r: [i["sales_order_id"] for i in r["items"]], "int"),
}
PACKING_FILTERS = {
    "id": ("id", "int"),
    "sales_order_id": ("sales_order_id", "int"),
    "state": ("state", "str"),
    "warehouse_id": ("warehouse_id", "int"),
    "owner_id": ("owner_id", "int"),
    "origin_location_id": ("origin_location_id", "int"),
    "destination_location_id": ("destination_location_id", "int"),
    "updated_at": ("updated_at", "date"),
    "inserted_at": ("inserted_at", "date"),
    "start_date": ("start_date", "date"),
    "end_date": ("end_date", "date"),
}
SHIPPING_FILTERS = {
    "id": ("id", "int"),
    "sales_order_id": ("sales_order_id", "int"),
    "state": ("state", "str"),
    "warehouse_id": ("warehouse_id", "int"),
    "shipping_location_id": ("shipping_location_id", "int"),
    "sequence_number": ("sequence_number", "str"),
    "updated_at": ("updated_at", "date"),
    "inserted_at": ("inserted_at", "date"),
}
KIT_FILTERS = {"id": ("id", "int"), "product_id": ("product_id", "int"), "active": ("active", "bool")}
METHOD_FILTERS = {"id": ("id", "int"), "name": ("name", "str"), "carrier": ("carrier", "str")}
LOCATION_FILTERS = {
    "id": ("id", "int"),
    "code": ("code", "str"),
    "location_type_id": ("location_type_id", "int"),
    "warehouse_id": ("warehouse_id", "int"),
    "zone_id": ("zone_id", "int"),
}


@dataclass
class WarehouseStock:
    """One warehouse's stock: quantities per position kind, reservations and movement dates."""

    positions: dict[str, dict[int, int]] = field(default_factory=lambda: {k: {} for k in POSITIONS})
    reserved: dict[int, int] = field(default_factory=dict)  # sales orders in queue and picking
    committed: dict[int, int] = field(default_factory=dict)  # sales orders in picking (stock being picked)
    last_movement: dict[int, str] = field(default_factory=dict)  # also: the products with a stock record


def _bump(counter: dict[int, int], key: int, delta: int) -> None:
    value = counter.get(key, 0) + delta
    if value:
        counter[key] = value
    else:
        counter.pop(key, None)


class World:
    """All state of one PULPO tenant; methods raise `PulpoError` with PULPO's error bodies."""

    # PULPO's words for a used order_num; the spec does not fix them (knob: PUT /__sandbox/sales/taken_message).
    order_num_taken_message: str = "has already been taken"

    def __init__(self, seed: int = 1, products: int = 0, stock: bool = True) -> None:
        self.reset(seed=seed, products=products, stock=stock)

    # ---- reset and seeding -----------------------------------------------------------------------

    def reset(self, *, seed: int, products: int = 0, stock: bool = True) -> dict[str, Any]:
        self.seed = seed
        self.seeded_at = now_stamp()
        self.stock = {wh["id"]: WarehouseStock() for wh in WAREHOUSES}
        self._stock_keys_version = 0
        self._summary_ids_cache: dict[tuple[int, ...], tuple[int, list[int]]] = {}
        self.products: dict[int, Record] = {}  # written products (created or updated)
        self.sku_index: dict[str, int] = {}  # SKUs of the default merchant (all seeded products)
        self.merchant_skus: dict[str, dict[int, int]] = {}  # SKU -> {other merchant: product id}
        self.behaviour = dict(BEHAVIOUR_DEFAULTS)
        self._barcode_index: dict[str, list[int]] | None = None
        self.kits: dict[int, Record] = {}
        self.orders: dict[int, Record] = {}
        self.order_nums: dict[str, int] = {}
        self.picking: dict[int, Record] = {}
        self.packing: dict[int, Record] = {}
        self.boxes: dict[int, Record] = {}
        self.boxes_by_packing: dict[int, list[int]] = {}
        self.box_meta: dict[int, dict[str, Any]] = {}
        self.trackings: dict[int, Record] = {}
        self.attachments: dict[str, Record] = {}
        self.shipping: dict[int, Record] = {}
        self.corrections: dict[int, Record] = {}
        self.shuffle_round = 0
        self.third_parties: dict[int, Record] = {}
        self._ids = {
            name: itertools.count(start)
            for name, start in (
                ("order", 1_000_001),
                ("order_item", 1_100_001),
                ("picking", 2_000_001),
                ("picking_item", 2_100_001),
                ("packing", 3_000_001),
                ("packing_item", 3_100_001),
                ("box", 4_000_001),
                ("box_item", 4_100_001),
                ("shipping", 5_000_001),
                ("shipping_item", 5_100_001),
                ("tracking", 6_000_001),
                ("kit", 7_000_001),
                ("kit_item", 7_100_001),
                ("correction", 8_000_001),
                ("correction_item", 8_100_001),
                ("instruction", 9_000_001),
                ("third_party", 10_001),
            )
        }
        self._seed_products(products, stock)
        self.next_product_id = len(self.seeded_index) + 1
        return {
            "seed": seed,
            "products": len(self.seeded_index),
            "stocked": {wh: len(s.last_movement) for wh, s in self.stock.items()},
        }

    def _next(self, name: str) -> int:
        return next(self._ids[name])

    def _seed_products(self, count: int, with_stock: bool) -> None:
        """Products 1..M from catalogue entries 0..count-1 that have a SKU and are no bundles."""
        index = array("i")
        sku_index = self.sku_index
        for i in range(count):
            sku = sku_for(i)
            if sku is None or is_bundle(i):
                continue
            index.append(i)
            sku_index[sku] = len(index)
        self.seeded_index = index
        if with_stock:
            self._seed_stock(len(index))

    def _seed_stock(self, count: int) -> None:
        rng = random.Random(self.seed * 7919 + 17)
        stamp = self.seeded_at
        main, outer = self.stock[1], self.stock[2]
        storage1, storage2 = main.positions["storage"], outer.positions["storage"]
        for pid in range(1, count + 1):
            bits = rng.getrandbits(24)
            storage1[pid] = 0 if bits % 13 == 0 else (bits >> 4) % 120 + 1
            if pid % 5 == 0:
                storage2[pid] = (bits >> 12) % 40 + 1
            if pid % 37 == 0:
                main.positions["returns"][pid] = 1 + bits % 3
            if pid % 53 == 0:
                main.positions["blocked"][pid] = 1 + bits % 2
        main.last_movement = dict.fromkeys(range(1, count + 1), stamp)
        outer.last_movement = dict.fromkeys(storage2, stamp)
        self._stock_keys_version += 1

    # ---- products ----------------------------------------------------------------------------------

    def product_exists(self, pid: Any) -> bool:
        return isinstance(pid, int) and (pid in self.products or 1 <= pid <= len(self.seeded_index))

    def product(self, pid: int) -> Record | None:
        record = self.products.get(pid)
        if record is not None:
            return record
        if 1 <= pid <= len(self.seeded_index):
            return self._seeded_product(pid)
        return None

    def get_product(self, pid: int) -> Record:
        record = self.product(pid)
        if record is None:
            raise not_found("product")
        return copy.deepcopy(record)

    def _seeded_product(self, pid: int) -> Record:
        item = catalog_item(self.seed, self.seeded_index[pid - 1])
        length, width, height = item.length_cm, item.width_cm, item.height_cm
        return self._product_record(
            pid,
            {
                "sku": item.sku,
                "name": item.title_de,
                "description": item.title_en,
                "article_number": item.sku,
                "barcodes": [item.ean],
                "weight": round(item.weight_g / 1000, 3),
                "length": length,
                "width": width,
                "height": height,
                "volume": round(length * width * height, 1),
                "hs_code": item.taric,
                "origin_country": item.country_of_origin,
                "cost_price": round(item.price * 0.55, 2),
            },
            self.seeded_at,
        )

    @staticmethod
    def _product_record(pid: int, values: Mapping[str, Any], stamp: str) -> Record:
        record: Record = {
            "id": pid,
            "sku": None,
            "name": None,
            "description": None,
            "article_number": None,
            "barcodes": [],
            "active": True,
            "attributes": None,
            "batch_control": False,
            "cost_price": None,
            "deleted": False,
            "deleted_at": None,
            "deleted_by": None,
            "deprecated_supplier_product_id": None,
            "height": None,
            "hs_code": None,
            "length": None,
            "lq_limited_quantity": False,
            "management_type": "none",
            "max_amount_per_autostore_bin": None,
            "merchant_id": DEFAULT_MERCHANT_ID,
            "minimum_purchase_unit": 1,
            "minimum_sales_unit": 1,
            "origin_country": None,
            "product_categories": [],
            "product_group_id": None,
            "purchase_measure_units": "unit",
            "sales_measure_units": "unit",
            "stackable": True,
            "tenant_id": TENANT_ID,
            "units_per_pallet": None,
            "units_per_purchase_package": 1,
            "units_per_sales_package": 1,
            "volume": None,
            "weight": None,
            "width": None,
            "inserted_at": stamp,
            "updated_at": stamp,
        }
        record.update({k: copy.deepcopy(v) for k, v in values.items() if k in PRODUCT_TYPES})
        return record

    def product_by_sku(self, merchant: Any, sku: str, default: int | None = None) -> int | None:
        """The product with this SKU of this merchant (SKUs are unique per merchant)."""
        if merchant == DEFAULT_MERCHANT_ID:
            return self.sku_index.get(sku, default)
        return self.merchant_skus.get(sku, {}).get(merchant, default)

    def _index_sku(self, merchant: int, sku: str, pid: int | None) -> None:
        """Point (merchant, SKU) at `pid`, or forget it when `pid` is None."""
        index = self.sku_index if merchant == DEFAULT_MERCHANT_ID else self.merchant_skus.setdefault(sku, {})
        key: Any = sku if merchant == DEFAULT_MERCHANT_ID else merchant
        if pid is None:
            index.pop(key, None)
        else:
            index[key] = pid

    def _product_errors(self, body: Any, *, pid: int | None) -> list[tuple[str, str]]:
        if not isinstance(body, dict):
            return [("product", "is invalid")]
        current = self.product(pid) if pid is not None else None
        current_merchant = current["merchant_id"] if current else DEFAULT_MERCHANT_ID
        current_sku = current["sku"] if current else None
        errors = type_errors(body, PRODUCT_TYPES)
        bad = {k for k, _ in errors}
        for key in ("sku", "name"):
            if (pid is None or key in body) and blank(body.get(key)) and key not in bad:
                errors.append((key, "can't be blank"))
        merchant = body.get("merchant_id")
        merchant = current_merchant if merchant is None else merchant
        if "merchant_id" not in bad and merchant not in MERCHANTS:
            errors.append(("merchant_id", "does not exist"))
        sku = body.get("sku", current_sku)
        if isinstance(sku, str) and sku.strip() and self.product_by_sku(merchant, sku, pid) != pid:
            errors.append(("sku", "has already been taken"))
        if "management_type" not in bad and body.get("management_type") not in (
            None,
            "serial",
            "lot",
            "none",
        ):
            errors.append(("management_type", "is invalid"))
        return errors

    def create_product(self, body: Any) -> Record:
        errors = self._product_errors(body, pid=None)
        if errors:
            raise invalid(*errors)
        pid = self.next_product_id
        self.next_product_id += 1
        record = self._product_record(pid, body, now_stamp())
        if record["article_number"] is None:
            record["article_number"] = record["sku"]
        if record["merchant_id"] is None:
            record["merchant_id"] = DEFAULT_MERCHANT_ID
        self.products[pid] = record
        self._index_sku(record["merchant_id"], record["sku"], pid)
        self._barcode_index = None
        return copy.deepcopy(record)

    def update_product(self, pid: int, body: Any) -> Record:
        current = self.product(pid)
        if current is None:
            raise not_found("product")
        errors = self._product_errors(body, pid=pid)
        if errors:
            raise invalid(*errors)
        record = self.products.setdefault(pid, current)
        old_key = (record["merchant_id"], record["sku"])
        changes = {k: copy.deepcopy(v) for k, v in body.items() if k in PRODUCT_TYPES}
        if self.behaviour["product_barcodes_on_update"] == "merge" and isinstance(changes.get("barcodes"), list):
            changes["barcodes"] = record["barcodes"] + [c for c in changes["barcodes"] if c not in record["barcodes"]]
        if changes.get("merchant_id", 0) is None:
            changes["merchant_id"] = DEFAULT_MERCHANT_ID
        record.update(changes)
        record["updated_at"] = now_stamp()
        if (record["merchant_id"], record["sku"]) != old_key:
            self._index_sku(*old_key, None)
            self._index_sku(record["merchant_id"], record["sku"], pid)
        self._barcode_index = None
        return copy.deepcopy(record)

    def bulk_products(self, rows: Any, *, update: bool) -> tuple[list[Record], list[Record]]:
        """Each row on its own ("continues with the others until the end"): (done [{id, sku}], errors)."""
        if not isinstance(rows, list):
            raise invalid(("products", "is invalid"))
        done: list[Record] = []
        failed: list[Record] = []
        for row in rows:
            try:
                if update:
                    pid = row.get("id") if isinstance(row, dict) else None
                    if not isinstance(pid, int) or isinstance(pid, bool):
                        raise invalid(("id", "can't be blank" if pid is None else "is invalid"))
                    record = self.update_product(pid, row)
                else:
                    record = self.create_product(row)
                done.append({"id": record["id"], "sku": record["sku"]})
            except PulpoError as exc:
                errors = exc.body["errors"] if isinstance(exc.body["errors"], list) else [{"id": "not found"}]
                entry = {"errors": errors, "sku": row.get("sku") if isinstance(row, dict) else None}
                if update and isinstance(row, dict):
                    entry["id"] = row.get("id")
                failed.append(entry)
        return done, failed

    def product_ids(self) -> range:
        return range(1, self.next_product_id)

    def list_products(self, query: Query) -> tuple[list[Record], int]:
        limit, offset = paging(query)
        ids = self._product_candidates(query)
        remaining = {k: v for k, v in query.items() if k in PRODUCT_FILTERS and k not in ("id", "sku")}
        if remaining and set(remaining) <= {"updated_at", "inserted_at"}:
            ids = self._changed_products(ids, remaining)
            remaining = {}
        if not remaining:
            total = len(ids)
            rows = [self.product(pid) for pid in window(ids, limit, offset)]
        else:
            matched = select(
                (r for pid in ids if (r := self.product(pid)) is not None), remaining, PRODUCT_FILTERS
            )
            total = len(matched)
            rows = window(matched, limit, offset)
        return [copy.deepcopy(r) for r in rows if r is not None], total

    def _changed_products(self, ids: list[int] | range, dates: Query) -> list[int]:
        """Date filters without building 200k records: unwritten seeded products share one timestamp."""
        seeded = {"updated_at": self.seeded_at, "inserted_at": self.seeded_at}
        seeded_match = bool(select([seeded], dates, PRODUCT_FILTERS))
        written = {r["id"] for r in select(self.products.values(), dates, PRODUCT_FILTERS)}
        return [pid for pid in ids if pid in written or (seeded_match and pid not in self.products)]

    def _product_candidates(self, query: Query) -> list[int] | range:
        ids: list[int] | range = self.product_ids()
        wanted = int_list(query, "id")
        if wanted is not None:
            ids = sorted({i for i in wanted if self.product_exists(i)})
        if query.get("sku"):
            by_sku = {self.sku_index[s] for s in query["sku"] if s in self.sku_index}
            by_sku.update(pid for s in query["sku"] for pid in self.merchant_skus.get(s, {}).values())
            ids = sorted(by_sku.intersection(ids))
        if query.get("barcode"):
            index = self._barcodes()
            by_code = {pid for code in query["barcode"] for pid in index.get(code, [])}
            ids = sorted(by_code.intersection(ids))
        return ids

    def _barcodes(self) -> dict[str, list[int]]:
        if self._barcode_index is None:
            index: dict[str, list[int]] = {}
            for pid in self.product_ids():
                record = self.product(pid)
                for code in (record or {}).get("barcodes") or []:
                    index.setdefault(code, []).append(pid)
            self._barcode_index = index
        return self._barcode_index

    def merchant_of(self, pid: Any) -> int | None:
        """The merchant a product belongs to (None for an unknown id)."""
        if not self.product_exists(pid):
            return None
        record = self.products.get(pid)
        return record["merchant_id"] if record is not None else DEFAULT_MERCHANT_ID

    def name_and_sku(self, pid: int) -> tuple[str | None, str | None]:
        record = self.products.get(pid)
        if record is not None:
            return record["name"], record["sku"]
        index = self.seeded_index[pid - 1]
        return catalog_item(self.seed, index).title_de, sku_for(index)

    # ---- kits --------------------------------------------------------------------------------------

    def create_kit(self, body: Any) -> Record:
        if not isinstance(body, dict):
            raise invalid(("kit", "is invalid"))
        errors = type_errors(body, {"product_id": "int", "name": "str", "items": "list"})
        pid = body.get("product_id")
        if pid is None:
            errors.append(("product_id", "can't be blank"))
        elif isinstance(pid, int) and not self.product_exists(pid):
            errors.append(("product_id", "does not exist"))
        elif any(k["product_id"] == pid and k["active"] for k in self.kits.values()):
            errors.append(("product_id", "has already been taken"))
        items = body.get("items")
        if blank(items):
            errors.append(("items", "can't be blank"))
        merchant = self.merchant_of(pid)
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                errors.append(("items", "is invalid"))
                continue
            errors += type_errors(item, {"product_id": "int", "quantity": "int"})
            component = item.get("product_id")
            if isinstance(component, int) and (
                not self.product_exists(component) or (merchant is not None and self.merchant_of(component) != merchant)
            ):
                errors.append(("product_id", "does not exist"))  # another merchant's product is not there for it
            if item.get("product_id") == pid:
                errors.append(("product_id", "a kit can not contain itself"))
            if isinstance(item.get("quantity"), int) and item["quantity"] <= 0:
                errors.append(("quantity", "must be greater than 0"))
        if errors:
            raise invalid(*errors)
        stamp, kit_id = now_stamp(), self._next("kit")
        kit = {
            "id": kit_id,
            "product_id": pid,
            "name": body.get("name") or self.name_and_sku(pid)[0],
            "active": True,
            "tenant_id": TENANT_ID,
            "inserted_at": stamp,
            "updated_at": stamp,
            "items": [
                {
                    "id": self._next("kit_item"),
                    "kit_id": kit_id,
                    "product_id": i["product_id"],
                    "quantity": i["quantity"],
                    "inserted_at": stamp,
                    "updated_at": stamp,
                }
                for i in items
            ],
        }
        self.kits[kit_id] = kit
        return copy.deepcopy(kit)

    def kit(self, kit_id: int) -> Record:
        if kit_id not in self.kits:
            raise not_found("kit")
        return self.kits[kit_id]

    def deactivate_kit(self, kit_id: int) -> Record:
        kit = self.kit(kit_id)
        if kit["active"]:
            kit["active"] = False
            kit["updated_at"] = now_stamp()
        return copy.deepcopy(kit)

    # ---- third parties (customers and suppliers) ---------------------------------------------------

    def create_third_party(self, body: Any) -> Record:
        """Spec `ThirdParty`: identifier_type, identifier_number, name, third_type (C or S) and
        tenant_id are required; an identifier number is unique per type (`ErrorThirdPartyResponse`
        keys bulk errors by it)."""
        if not isinstance(body, dict):
            raise invalid(("third_party", "is invalid"))
        errors = type_errors(body, THIRD_PARTY_TYPES)
        bad = {k for k, _ in errors}
        for key in ("identifier_type", "identifier_number", "name", "third_type", "tenant_id"):
            if blank(body.get(key)) and key not in bad:
                errors.append((key, "can't be blank"))
        if "third_type" not in bad and body.get("third_type") not in (None, "", "C", "S"):
            errors.append(("third_type", "is invalid"))
        if "tenant_id" not in bad and body.get("tenant_id") not in (None, TENANT_ID):
            errors.append(("tenant_id", "does not exist"))
        merchant = body.get("merchant_id")
        merchant = DEFAULT_MERCHANT_ID if merchant is None else merchant
        if "merchant_id" not in bad and merchant not in MERCHANTS:
            errors.append(("merchant_id", "does not exist"))
        number, kind = body.get("identifier_number"), body.get("third_type")
        if any(p["identifier_number"] == number and p["third_type"] == kind and p["merchant_id"] == merchant
               for p in self.third_parties.values()):
            errors.append(("identifier_number", "has already been taken"))
        if errors:
            raise invalid(*errors)
        stamp, tid = now_stamp(), self._next("third_party")
        party: Record = dict.fromkeys(THIRD_PARTY_TYPES)
        party.update({k: body.get(k) for k in THIRD_PARTY_TYPES if k in body})
        party.update({"id": tid, "active": body.get("active", True), "merchant_id": merchant,
                      "deleted_at": None, "deleted_by": None, "inserted_at": stamp, "updated_at": stamp})
        self.third_parties[tid] = party
        return copy.deepcopy(party)

    def third_party(self, tid: int) -> Record:
        if tid not in self.third_parties:
            raise not_found("third party")
        return copy.deepcopy(self.third_parties[tid])

    def list_third_parties(self, query: Query) -> tuple[list[Record], int]:
        """The spec: `merchant_id` "Filter by a given merchant else use the default merchant_id"."""
        limit, offset = paging(query)
        query = query if query.get("merchant_id") else {**query, "merchant_id": [str(DEFAULT_MERCHANT_ID)]}
        rows = select(self.third_parties.values(), query, THIRD_PARTY_FILTERS)
        return [copy.deepcopy(r) for r in window(rows, limit, offset)], len(rows)

    # ---- sales orders ------------------------------------------------------------------------------

    def _order_errors(self, body: Any, *, existing: Record | None) -> list[tuple[str, str]]:
        if not isinstance(body, dict):
            return [("sales_order", "is invalid")]
        errors = type_errors(body, ORDER_TYPES)
        bad = {k for k, _ in errors}
        for key in ("order_num", "warehouse_id", "ship_to", "items"):
            if (existing is None or key in body) and blank(body.get(key)) and key not in bad:
                errors.append((key, "can't be blank"))
        order_num = body.get("order_num")
        if (
            isinstance(order_num, str)
            and order_num in self.order_nums
            and (existing is None or self.order_nums[order_num] != existing["id"])
        ):
            errors.append(("order_num", self.order_num_taken_message))
        wh = body.get("warehouse_id")
        if "warehouse_id" not in bad and wh is not None and wh not in self.stock:
            errors.append(("warehouse_id", "does not exist"))
        party = body.get("third_party_id")
        if "third_party_id" not in bad and party is not None and party not in self.third_parties:
            errors.append(("third_party_id", "does not exist"))
        method = body.get("shipping_method_id")
        if (
            "shipping_method_id" not in bad
            and method is not None
            and method not in {m["id"] for m in SHIPPING_METHODS}
        ):
            errors.append(("shipping_method_id", "does not exist"))
        if "ship_to" not in bad and isinstance(body.get("ship_to"), dict):
            errors += self._address_errors(body["ship_to"])
        merchant = body.get("merchant_id")
        if merchant is None:
            merchant = existing["merchant_id"] if existing is not None else DEFAULT_MERCHANT_ID
        if "merchant_id" not in bad and merchant not in MERCHANTS:
            errors.append(("merchant_id", "does not exist"))
        if "items" not in bad and isinstance(body.get("items"), list):
            for item in body["items"]:
                errors += self._item_errors(item, merchant)
        return errors

    @staticmethod
    def _address_errors(ship_to: dict[str, Any]) -> list[tuple[str, str]]:
        errors = type_errors(ship_to, ADDRESS_TYPES)
        detail = ship_to.get("address")
        if detail is None:
            return [*errors, ("address", "can't be blank")]
        if not isinstance(detail, dict):
            return errors
        errors += type_errors(detail, ADDRESS_DETAIL_TYPES)
        if blank(detail.get("street")) and not any(k == "street" for k, _ in errors):
            errors.append(("street", "can't be blank"))
        return errors

    def _item_errors(self, item: Any, merchant: Any = DEFAULT_MERCHANT_ID) -> list[tuple[str, str]]:
        if not isinstance(item, dict):
            return [("items", "is invalid")]
        errors = type_errors(item, ITEM_TYPES)
        bad = {k for k, _ in errors}
        for key in ("product_id", "quantity"):
            if item.get(key) is None:
                errors.append((key, "can't be blank"))
        if "product_id" not in bad and item.get("product_id") is not None:
            owner = self.merchant_of(item["product_id"])
            if owner is None or (merchant in MERCHANTS and owner != merchant):
                errors.append(("product_id", "does not exist"))  # unknown, or another merchant's product
        if "quantity" not in bad and isinstance(item.get("quantity"), int) and item["quantity"] <= 0:
            errors.append(("quantity", "must be greater than 0"))
        return errors

    def create_order(self, body: Any) -> Record:
        errors = self._order_errors(body, existing=None)
        if errors:
            raise invalid(*errors)
        stamp, oid = now_stamp(), self._next("order")
        order: Record = dict.fromkeys(ORDER_RESPONSE_KEYS)
        order.update({k: copy.deepcopy(body.get(k)) for k in ORDER_RESPONSE_KEYS if k in body})
        order.update(
            {
                "merchant_id": body.get("merchant_id") or DEFAULT_MERCHANT_ID,
                "id": oid,
                "state": "queue",
                "creator_id": API_USER_ID,
                "packing_location_id": None,
                "process_information_id": None,
                "reason_codes": copy.deepcopy(body.get("reason_codes") or []),
                "ship_to": copy.deepcopy(body["ship_to"]),
                "inserted_at": stamp,
                "updated_at": stamp,
            }
        )
        for key, default in (
            ("priority", 0),
            ("is_cart", False),
            ("missing_stock_items_cancelled", False),
            ("type", "standard"),
        ):
            if order[key] is None:
                order[key] = default
        order["shipment_instructions"] = self._instructions(oid, body.get("shipment_instructions"), stamp)
        order["items"] = self._order_items(oid, body["items"], "queue", stamp)
        if order["estimated_total_weight"] is None:
            order["estimated_total_weight"] = self._items_weight(order["items"])
        self.orders[oid] = order
        self.order_nums[order["order_num"]] = oid
        self._reserve(order, +1)
        return copy.deepcopy(order)

    def _instructions(self, oid: int, value: Any, stamp: str) -> list[Record]:
        if not isinstance(value, dict):
            return []
        return [
            {
                **copy.deepcopy(value),
                "id": self._next("instruction"),
                "sales_order_id": oid,
                "inserted_at": stamp,
                "updated_at": stamp,
            }
        ]

    def _order_items(self, oid: int, items: list[dict[str, Any]], state: str, stamp: str) -> list[Record]:
        return [
            {
                "id": self._next("order_item"),
                "sales_order_id": oid,
                "product_id": i["product_id"],
                "quantity": i["quantity"],
                "fulfilled_quantity": 0,
                "line_order_id": i.get("line_order_id"),
                "notes": i.get("notes"),
                "attributes": i.get("attributes"),
                "required_date": i.get("required_date"),
                "batches": copy.deepcopy(i.get("batches") or []),
                "state": state,
                "inserted_at": stamp,
                "updated_at": stamp,
            }
            for i in items
        ]

    def _items_weight(self, items: list[Record]) -> float:
        total = 0.0
        for item in items:
            product = self.product(item["product_id"]) or {}
            total += (product.get("weight") or 0) * item["quantity"]
        return round(total, 3)

    def order(self, oid: int) -> Record:
        if oid not in self.orders:
            raise not_found("sales order")
        return self.orders[oid]

    def update_order(self, oid: int, body: Any) -> Record:
        order = self.order(oid)
        if order["state"] != "queue":
            raise forbidden("state", f"Sales orders in state {order['state']} can not be updated")
        errors = self._order_errors(body, existing=order)
        if errors:
            raise invalid(*errors)
        stamp = now_stamp()
        self._reserve(order, -1)
        if body.get("order_num") is not None and body["order_num"] != order["order_num"]:
            self.order_nums.pop(order["order_num"], None)
            self.order_nums[body["order_num"]] = oid
        order.update({k: copy.deepcopy(body[k]) for k in ORDER_RESPONSE_KEYS if k in body})
        if "ship_to" in body:
            order["ship_to"] = copy.deepcopy(body["ship_to"])
        if "shipment_instructions" in body:
            order["shipment_instructions"] = self._instructions(oid, body["shipment_instructions"], stamp)
        if "items" in body:
            order["items"] = self._order_items(oid, body["items"], "queue", stamp)
            if "estimated_total_weight" not in body:
                order["estimated_total_weight"] = self._items_weight(order["items"])
        order["updated_at"] = stamp
        self._reserve(order, +1)
        return copy.deepcopy(order)

    def bulk_orders(self, rows: Any) -> tuple[list[Record], dict[str, Any]]:
        """(created [{id, order_num}], errors keyed by order number: {"<order_num>": {"<field>": msg}})."""
        if not isinstance(rows, list):
            raise invalid(("sales_orders", "is invalid"))
        created: list[Record] = []
        errors: dict[str, Any] = {}
        for position, row in enumerate(rows):
            try:
                order = self.create_order(row)
                created.append({"id": order["id"], "order_num": order["order_num"]})
            except PulpoError as exc:
                key = row.get("order_num") if isinstance(row, dict) else None
                key = key if isinstance(key, str) and key not in errors else f"#{position}"
                merged: dict[str, str] = {}
                for entry in exc.body["errors"]:
                    for field_name, message in entry.items():
                        merged.setdefault(field_name, message)
                errors[key] = merged
        return created, errors

    def _set_state(self, order: Record, state: str, stamp: str) -> None:
        order["state"] = state
        order["updated_at"] = stamp
        for item in order["items"]:
            item["state"] = state
            item["updated_at"] = stamp

    def _reserve(self, order: Record, sign: int) -> None:
        """Add (+1) or remove (-1) the order's reservation if its state reserves stock."""
        stock = self.stock[order["warehouse_id"]]
        if order["state"] in RESERVING_STATES:
            for item in order["items"]:
                _bump(stock.reserved, item["product_id"], sign * item["quantity"])
        if order["state"] == "picking":
            for item in order["items"]:
                _bump(stock.committed, item["product_id"], sign * item["quantity"])

    def _change_state(self, order: Record, state: str, stamp: str) -> None:
        self._reserve(order, -1)
        self._set_state(order, state, stamp)
        self._reserve(order, +1)

    def pause_order(self, oid: int) -> Record:
        order = self.order(oid)
        if order["state"] != "queue":
            raise invalid(("state", "Just orders in state queue can be paused"), status=400)
        self._change_state(order, "paused", now_stamp())
        return copy.deepcopy(order)

    def resume_order(self, oid: int) -> Record:
        order = self.order(oid)
        if order["state"] != "paused":
            raise invalid(("state", "Just orders in state paused can be resumed"))
        self._change_state(order, "queue", now_stamp())
        return copy.deepcopy(order)

    def cancel_order(self, oid: int) -> Record:
        order = self.order(oid)
        state = order["state"]
        if state in ("ended", "cancelled"):
            raise invalid(("state", f"Orders in state {state} can not be cancelled"))
        stamp = now_stamp()
        wh = order["warehouse_id"]
        if state in ("packing", "shipping"):  # picked goods go back to storage
            for item in order["items"]:
                self._move(wh, item["product_id"], item["quantity"], state, "storage", stamp)
        for records in (self.picking, self.packing, self.shipping):
            for record in records.values():
                if self._belongs(record, oid) and record["state"] not in ("ended", "closed", "cancelled"):
                    self._cancel_task(record, oid, stamp)
        self._change_state(order, "cancelled", stamp)
        return copy.deepcopy(order)

    @staticmethod
    def _belongs(record: Record, oid: int) -> bool:
        if "sales_order_id" in record:
            return bool(record["sales_order_id"] == oid)
        return any(i.get("sales_order_id") == oid for i in record["items"])

    @staticmethod
    def _cancel_task(record: Record, oid: int, stamp: str) -> None:
        """Cancel a task of the order; a picking order shared with other orders only loses its lines."""
        others = [i for i in record["items"] if i.get("sales_order_id", oid) != oid]
        if "sales_order_id" not in record and others:
            record["items"] = others
        else:
            record["state"] = "cancelled"
        record["updated_at"] = stamp

    def list_orders(self, query: Query) -> tuple[list[Record], int]:
        limit, offset = paging(query)
        if query.get("order_num") and set(query) <= {"order_num", "limit", "offset", "view_attributes"}:
            rows = [self.orders[self.order_nums[n]] for n in query["order_num"] if n in self.order_nums]
        else:
            rows = select(self.orders.values(), query, ORDER_FILTERS)
        return [copy.deepcopy(r) for r in window(rows, limit, offset)], len(rows)

    def order_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for order in self.orders.values():
            counts[order["state"]] += 1
        return counts

    # ---- picking -----------------------------------------------------------------------------------

    def create_picking(self, sales_order_ids: Any, orders_count: Any = None) -> list[Record]:
        """Release queue orders to picking: one picking order per batch (all in one by default)."""
        if isinstance(sales_order_ids, str):
            try:
                sales_order_ids = json.loads(sales_order_ids)
            except ValueError:
                raise invalid(("sales_orders", "is invalid")) from None
        if (
            not isinstance(sales_order_ids, list)
            or not sales_order_ids
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in sales_order_ids)
        ):
            raise invalid(("sales_orders", "is invalid"))
        orders = [self.order(oid) for oid in dict.fromkeys(sales_order_ids)]
        problems = [
            (("sales_orders", f"Sales order {o['order_num']} is in state {o['state']}, not queue"))
            for o in orders
            if o["state"] != "queue"
        ]
        if len({o["warehouse_id"] for o in orders}) > 1:
            problems.append(
                ("sales_orders", "Sales orders of different warehouses can not be picked together")
            )
        problems += self._missing_stock(orders)
        if problems:
            raise invalid(*problems)
        count = orders_count if isinstance(orders_count, int) and orders_count > 0 else 1
        batches = [orders[i::count] for i in range(min(count, len(orders)))]
        stamp = now_stamp()
        created = []
        for batch in batches:
            pick_id = self._next("picking")
            items = [
                {
                    "id": self._next("picking_item"),
                    "picking_order_id": pick_id,
                    "product_id": i["product_id"],
                    "requested_quantity": i["quantity"],
                    "picked_quantity": 0,
                    "sales_order_id": o["id"],
                    "fulfillment_order_id": None,
                    "inserted_at": stamp,
                    "updated_at": stamp,
                }
                for o in batch
                for i in o["items"]
            ]
            self.picking[pick_id] = {
                "id": pick_id,
                "sequence_number": f"PI{pick_id % 1_000_000:07d}",
                "state": "queue",
                "warehouse_id": batch[0]["warehouse_id"],
                "type": "standard",
                "owner_id": None,
                "creator_id": API_USER_ID,
                "start_date": None,
                "end_date": None,
                "notes": None,
                "attributes": None,
                "from_return_locations": False,
                "turbo_label_per_order": False,
                "turbo_label_standard_pick": False,
                "items": items,
                "inserted_at": stamp,
                "updated_at": stamp,
            }
            for order in batch:
                self._change_state(order, "picking", stamp)
            created.append(copy.deepcopy(self.picking[pick_id]))
        return created

    def _missing_stock(self, orders: list[Record]) -> list[tuple[str, str]]:
        """PULPO only releases what storage can serve beyond what is already being picked."""
        needed: dict[tuple[int, int], int] = {}
        for order in orders:
            for item in order["items"]:
                key = (order["warehouse_id"], item["product_id"])
                needed[key] = needed.get(key, 0) + item["quantity"]
        problems = []
        for (wh, pid), quantity in sorted(needed.items()):
            stock = self.stock[wh]
            free = stock.positions["storage"].get(pid, 0) - stock.committed.get(pid, 0)
            if free < quantity:
                problems.append(
                    (
                        "sales_orders",
                        f"missing stock of product {pid} in warehouse {wh}: "
                        f"{quantity} needed, {max(free, 0)} pickable",
                    )
                )
        return problems

    @staticmethod
    def _task(tasks: dict[int, Record], task_id: int, label: str) -> Record:
        if task_id not in tasks:
            raise not_found(label)
        return tasks[task_id]

    @staticmethod
    def _accept(task: Record, label: str) -> Record:
        """A worker takes a queued picking or packing task (the same rule for both)."""
        if task["state"] != "queue":
            raise forbidden("state", f"{label} in state {task['state']} can not be accepted")
        stamp = now_stamp()
        task.update({"state": "taken", "owner_id": API_USER_ID, "start_date": stamp, "updated_at": stamp})
        return copy.deepcopy(task)

    def picking_order(self, pick_id: int) -> Record:
        return self._task(self.picking, pick_id, "picking order")

    def accept_picking(self, pick_id: int) -> Record:
        return self._accept(self.picking_order(pick_id), "Picking orders")

    def finish_picking(self, pick_id: int) -> Record:
        pick = self.picking_order(pick_id)
        if pick["state"] not in ("queue", "taken"):
            raise forbidden("state", f"Picking orders in state {pick['state']} can not be finished")
        stamp = now_stamp()
        for item in pick["items"]:
            item["picked_quantity"] = item["requested_quantity"]
            item["updated_at"] = stamp
        pick.update(
            {
                "state": "ended",
                "end_date": stamp,
                "updated_at": stamp,
                "owner_id": pick["owner_id"] or API_USER_ID,
                "start_date": pick["start_date"] or stamp,
            }
        )
        for oid in dict.fromkeys(i["sales_order_id"] for i in pick["items"]):
            order = self.orders[oid]
            if order["state"] != "picking":
                continue
            self._change_state(order, "packing", stamp)
            for item in order["items"]:
                self._move(
                    order["warehouse_id"], item["product_id"], item["quantity"], "storage", "packing", stamp
                )
            self._create_packing(order, stamp)
        return copy.deepcopy(pick)

    def _create_packing(self, order: Record, stamp: str) -> Record:
        pack_id = self._next("packing")
        wh = order["warehouse_id"]
        packing = {
            "id": pack_id,
            "sales_order_id": order["id"],
            "sales_order_ref": order["order_num"],
            "fulfillment_order_id": None,
            "sequence_number": f"PA{pack_id % 1_000_000:07d}",
            "state": "queue",
            "type": "standard",
            "warehouse_id": wh,
            "origin_location_id": location_id(wh, "packing"),
            "destination_location_id": None,
            "owner_id": None,
            "start_date": None,
            "end_date": None,
            "items": [
                {
                    "id": self._next("packing_item"),
                    "packing_order_id": pack_id,
                    "product_id": i["product_id"],
                    "requested_quantity": i["quantity"],
                    "packed_quantity": 0,
                    "inserted_at": stamp,
                    "updated_at": stamp,
                }
                for i in order["items"]
            ],
            "inserted_at": stamp,
            "updated_at": stamp,
        }
        self.packing[pack_id] = packing
        order["packing_location_id"] = packing["origin_location_id"]
        return packing

    # ---- packing -----------------------------------------------------------------------------------

    def packing_order(self, pack_id: int) -> Record:
        return self._task(self.packing, pack_id, "packing order")

    def accept_packing(self, pack_id: int) -> Record:
        return self._accept(self.packing_order(pack_id), "Packing orders")

    def add_to_box(self, pack_id: int, values: Mapping[str, Any]) -> Record:
        """Pack `quantity` of `product_id` into box `box_number` (a new box when it has none yet)."""
        packing = self.packing_order(pack_id)
        errors = type_errors(
            values,
            {
                "product_id": "int",
                "box_number": "int",
                "quantity": "int",
                "name": "str",
                "weight": "num",
                "length": "num",
                "width": "num",
                "height": "num",
                "attributes": "str",
            },
        )
        if packing["state"] != "taken":
            errors.append(("state", f"Packing orders in state {packing['state']} can not be packed"))
        pid, quantity = values.get("product_id"), values.get("quantity", 1)
        line = next((i for i in packing["items"] if i["product_id"] == pid), None)
        if pid is None:
            errors.append(("product_id", "can't be blank"))
        elif line is None and isinstance(pid, int):
            errors.append(("product_id", "is not part of the packing order"))
        if isinstance(quantity, int) and line is not None and not errors:
            if quantity <= 0:
                errors.append(("quantity", "must be greater than 0"))
            elif line["packed_quantity"] + quantity > line["requested_quantity"]:
                errors.append(("quantity", "exceeds the quantity pending to be packed"))
        if errors:
            raise invalid(*errors)
        assert line is not None
        stamp = now_stamp()
        box = self._box_for(packing, values.get("box_number"), stamp)
        if box["state"] != "open":
            raise invalid(("box_number", "the box is already closed"))
        entry = next((i for i in box["items"] if i["product_id"] == pid), None)
        if entry is None:
            entry = {
                "id": self._next("box_item"),
                "packing_box_id": box["id"],
                "product_id": pid,
                "quantity": 0,
                "line_order_id": None,
                "attributes": None,
                "inserted_at": stamp,
                "updated_at": stamp,
            }
            box["items"].append(entry)
        entry["quantity"] += quantity
        entry["updated_at"] = stamp
        line["packed_quantity"] += quantity
        line["updated_at"] = stamp
        self._measure_box(box, values)
        box["updated_at"] = packing["updated_at"] = stamp
        return copy.deepcopy(box)

    def _box_for(self, packing: Record, box_number: int | None, stamp: str) -> Record:
        boxes = [self.boxes[b] for b in self.box_ids(packing["id"])]
        if box_number is None:
            open_boxes = [b for b in boxes if b["state"] == "open"]
            if open_boxes:
                return open_boxes[-1]
            box_number = max((b["box_number"] for b in boxes), default=0) + 1
        for box in boxes:
            if box["box_number"] == box_number:
                return box
        box_id = self._next("box")
        box = {
            "id": box_id,
            "packing_order_id": packing["id"],
            "box_number": box_number,
            "name": f"Box {box_number}",
            "state": "open",
            "length": None,
            "width": None,
            "height": None,
            "weight": None,
            "attributes": None,
            "items": [],
            "loaded_shipping_box_id": None,
            "generate_loading_unit_labels": False,
            "inserted_at": stamp,
            "updated_at": stamp,
        }
        self.boxes[box_id] = box
        self.boxes_by_packing.setdefault(packing["id"], []).append(box_id)
        self.box_meta[box_id] = {
            "explicit": set(),
            "attachments": [],
            "trackings": [],
            "warehouse_id": packing["warehouse_id"],
        }
        return box

    def box_ids(self, pack_id: int) -> list[int]:
        return self.boxes_by_packing.get(pack_id, [])

    def _measure_box(self, box: Record, values: Mapping[str, Any]) -> None:
        """Explicit measurements win; otherwise: the smallest fitting carton and tare + product weights."""
        explicit = self.box_meta[box["id"]]["explicit"]
        for key in ("weight", "length", "width", "height", "name"):
            if values.get(key) is not None:
                box[key] = values[key]
                explicit.add(key)
        volume = weight = 0.0
        for entry in box["items"]:
            product = self.product(entry["product_id"]) or {}
            volume += (product.get("volume") or 0) * entry["quantity"]
            weight += (product.get("weight") or 0) * entry["quantity"]
        carton = next(
            (t for t in BOX_TEMPLATES if t["length"] * t["width"] * t["height"] >= volume * 1.2),
            BOX_TEMPLATES[-1],
        )
        for key in ("length", "width", "height"):
            if key not in explicit:
                box[key] = carton[key]
        if "name" not in explicit and not explicit & {"length", "width", "height"}:
            box["name"] = carton["name"]
        if "weight" not in explicit:
            box["weight"] = round(carton["weight"] + weight, 3)

    def box(self, pack_id: int, box_id: int) -> Record:
        self.packing_order(pack_id)
        box = self.boxes.get(box_id)
        if box is None or box["packing_order_id"] != pack_id:
            raise not_found("packing box")
        return box

    def update_box(self, pack_id: int, box_id: int, values: Mapping[str, Any]) -> Record:
        box = self.box(pack_id, box_id)
        errors = type_errors(values, {"attributes": "str"})
        if errors:
            raise invalid(*errors)
        if "attributes" in values:
            box["attributes"] = values["attributes"]
            box["updated_at"] = now_stamp()
        return copy.deepcopy(box)

    def finish_packing(self, pack_id: int) -> Record:
        packing = self.packing_order(pack_id)
        if packing["state"] != "taken":
            raise forbidden("state", f"Packing orders in state {packing['state']} can not be finished")
        pending = [
            i["product_id"] for i in packing["items"] if i["packed_quantity"] < i["requested_quantity"]
        ]
        if pending:
            raise forbidden("items", f"products {pending} are pending to be packed")
        stamp = now_stamp()
        packing.update({"state": "ended", "end_date": stamp, "updated_at": stamp})
        box_ids = self.box_ids(pack_id)
        for box_id in box_ids:
            self.boxes[box_id].update({"state": "closed", "updated_at": stamp})
        order = self.orders[packing["sales_order_id"]]
        if order["state"] == "packing":
            self._change_state(order, "shipping", stamp)
            for item in order["items"]:
                self._move(
                    order["warehouse_id"], item["product_id"], item["quantity"], "packing", "shipping", stamp
                )
            ship_id = self._next("shipping")
            self.shipping[ship_id] = {
                "id": ship_id,
                "sequence_number": f"SH{ship_id % 1_000_000:07d}",
                "sales_order_id": order["id"],
                "fulfillment_order_id": None,
                "warehouse_id": order["warehouse_id"],
                "shipping_location_id": None,
                "owner_id": None,
                "state": "queue",
                "inserted_at": stamp,
                "updated_at": stamp,
                "items": [
                    {"id": self._next("shipping_item"), "shipping_order_id": ship_id, "packing_box_id": b}
                    for b in box_ids
                ],
            }
        return copy.deepcopy(packing)

    def close_packing(self, pack_id: int, shipping_location_id: Any) -> Record:
        """Place the packed boxes on a shipping location (finishing the packing order first if needed)."""
        packing = self.packing_order(pack_id)
        location = LOCATIONS.get(shipping_location_id) if isinstance(shipping_location_id, int) else None
        if (
            location is None
            or location["warehouse_id"] != packing["warehouse_id"]
            or LOCATION_TYPES[location["location_type_id"]] != "shipping"
        ):
            raise invalid(("shipping_location_id", "is invalid"), status=400)
        if packing["state"] == "taken":
            self.finish_packing(pack_id)
        if packing["state"] != "ended":
            raise forbidden("state", f"Packing orders in state {packing['state']} can not be closed")
        stamp = now_stamp()
        packing.update(
            {"state": "closed", "destination_location_id": shipping_location_id, "updated_at": stamp}
        )
        for ship in self.shipping.values():
            if ship["sales_order_id"] == packing["sales_order_id"] and ship["state"] == "queue":
                ship.update({"shipping_location_id": shipping_location_id, "updated_at": stamp})
        return copy.deepcopy(packing)

    def shipping_locations(self, pack_id: int) -> list[Record]:
        wh = self.packing_order(pack_id)["warehouse_id"]
        return [copy.deepcopy(LOCATIONS[location_id(wh, "shipping")])]

    def list_packing(self, query: Query) -> tuple[list[Record], int]:
        limit, offset = paging(query)
        rows = select(self.packing.values(), query, PACKING_FILTERS)
        return [copy.deepcopy(r) for r in window(rows, limit, offset)], len(rows)

    def _box_filters(self) -> dict[str, tuple[Any, str]]:
        def trackings(box: Record) -> list[Record]:
            return [self.trackings[t] for t in self.box_meta[box["id"]]["trackings"]]

        return {
            "id": ("id", "int"),
            "box_number": ("box_number", "int"),
            "name": ("name", "str"),
            "packing_order_id": ("packing_order_id", "int"),
            "state": ("state", "str"),
            "updated_at": ("updated_at", "date"),
            "inserted_at": ("inserted_at", "date"),
            "product_id": (lambda b: [i["product_id"] for i in b["items"]], "int"),
            "warehouse_id": (lambda b: self.box_meta[b["id"]]["warehouse_id"], "int"),
            "tracking_code": (lambda b: [t["tracking_code"] for t in trackings(b)], "str"),
            "shipment_tracking_status": (lambda b: [t["status"] for t in trackings(b)], "str"),
            "has_shipment_tracking_error_message": (
                lambda b: any(t["error_message"] for t in trackings(b)),
                "bool",
            ),
            "shipment_tracking_requires_attention": (
                lambda b: any(t["requires_attention"] for t in trackings(b)),
                "bool",
            ),
        }

    def list_boxes(self, query: Query, pack_id: int | None = None) -> tuple[list[Record], int]:
        limit, offset = paging(query)
        boxes = (
            self.boxes.values()
            if pack_id is None
            else [self.boxes[b] for b in self.box_ids(self.packing_order(pack_id)["id"])]
        )
        rows = select(boxes, query, self._box_filters())
        return [copy.deepcopy(r) for r in window(rows, limit, offset)], len(rows)

    # ---- shipment trackings and attachments --------------------------------------------------------

    def create_tracking(self, pack_id: int, box_id: int, body: Any) -> Record:
        box = self.box(pack_id, box_id)
        if not isinstance(body, dict):
            raise invalid(("shipment_tracking", "is invalid"))
        errors = type_errors(body, TRACKING_TYPES)
        if errors:
            raise invalid(*errors)
        stamp, tracking_id = now_stamp(), self._next("tracking")
        tracking = {
            "id": tracking_id,
            "packing_box_id": box_id,
            **dict.fromkeys(TRACKING_TYPES),
            "printed": False,
            "requires_attention": False,
            "inserted_at": stamp,
            "updated_at": stamp,
        }
        tracking.update({k: body[k] for k in TRACKING_TYPES if body.get(k) is not None})
        self.trackings[tracking_id] = tracking
        self.box_meta[box_id]["trackings"].append(tracking_id)
        box["updated_at"] = stamp
        return copy.deepcopy(tracking)

    def tracking(self, pack_id: int, box_id: int, tracking_id: int) -> Record:
        self.box(pack_id, box_id)
        tracking = self.trackings.get(tracking_id)
        if tracking is None or tracking["packing_box_id"] != box_id:
            raise not_found("shipment tracking")
        return tracking

    def update_tracking(self, pack_id: int, box_id: int, tracking_id: int, body: Any) -> Record:
        tracking = self.tracking(pack_id, box_id, tracking_id)
        if not isinstance(body, dict):
            raise invalid(("shipment_tracking", "is invalid"))
        errors = type_errors(body, TRACKING_TYPES)
        if errors:
            raise invalid(*errors)
        tracking.update({k: body[k] for k in TRACKING_TYPES if k in body})
        tracking["updated_at"] = self.boxes[box_id]["updated_at"] = now_stamp()
        return copy.deepcopy(tracking)

    def list_trackings(self, pack_id: int, box_id: int, query: Query) -> list[Record]:
        self.box(pack_id, box_id)
        rows = [self.trackings[t] for t in self.box_meta[box_id]["trackings"]]
        rows = select(
            rows,
            query,
            {
                "requires_attention": ("requires_attention", "bool"),
                "status": ("status", "str"),
                "tracking_code": ("tracking_code", "str"),
            },
        )
        return [copy.deepcopy(r) for r in rows]

    def attach(self, pack_id: int, box_id: int, body: Any, url_base: str) -> Record:
        """Store an `AttachmentRequest` on the box. `path` is kept as an opaque storage reference:
        an http(s) URL is served back as the attachment URL, anything else via `GET /attachment/{id}`."""
        box = self.box(pack_id, box_id)
        if not isinstance(body, dict):
            raise invalid(("attachment", "is invalid"))
        errors = type_errors(body, {"filename": "str", "path": "str", "content_type": "str", "type": "str"})
        errors += [(k, "can't be blank") for k in ("content_type", "filename", "path") if blank(body.get(k))]
        if body.get("type") not in (None, "label", "photo"):
            errors.append(("type", "is invalid"))
        if not errors and str(body["path"]).startswith("data:") and data_url_bytes(body["path"]) is None:
            errors.append(("path", "is invalid"))  # a data URL must carry base64 content
        if errors:
            raise invalid(*errors)
        return self._store_attachment(
            box,
            url_base,
            filename=body["filename"],
            path=body["path"],
            content_type=body["content_type"],
            kind=body.get("type") or "label",
        )

    def register_attachment(
        self, pack_id: int, box_id: int, values: Mapping[str, Any], url_base: str
    ) -> Record:
        """`…/attachment`: metadata of a file already in PULPO's S3 (form: id, filename, file_type, type)."""
        box = self.box(pack_id, box_id)
        errors = [(k, "can't be blank") for k in ("id", "filename") if blank(values.get(k))]
        if errors:
            raise invalid(*errors, status=400)
        self._store_attachment(
            box,
            url_base,
            filename=str(values["filename"]),
            path=str(values["id"]),
            content_type=str(values.get("file_type") or "application/pdf"),
            kind=str(values.get("type") or "label"),
            attachment_id=str(values["id"]),
        )
        return copy.deepcopy(box)

    def _store_attachment(
        self,
        box: Record,
        url_base: str,
        *,
        filename: str,
        path: str,
        content_type: str,
        kind: str,
        attachment_id: str | None = None,
    ) -> Record:
        stamp = now_stamp()
        attachment_id = attachment_id or secrets.token_hex(12)
        url = path if path.startswith(("http://", "https://")) else f"{url_base}/attachment/{attachment_id}"
        extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else None
        self.attachments[attachment_id] = {
            "id": attachment_id,
            "name": filename,
            "type": kind,
            "document_type": kind,
            "file_type": content_type,
            "extension": extension,
            "container": "packing_box",
            "container_id": box["id"],
            "path": path,
            "size": len(data_url_bytes(path) or b"") if path.startswith("data:") else None,
            "url": url,
            "tenant_id": TENANT_ID,
            "merchant_id": None,
            "merchant_channel_id": None,
            "inserted_at": stamp,
            "updated_at": stamp,
        }
        self.box_meta[box["id"]]["attachments"].append(attachment_id)
        box["updated_at"] = stamp
        return copy.deepcopy(box)

    def box_attachments(self, box_ids: list[int]) -> list[Record]:
        out = []
        for box_id in box_ids:
            if box_id not in self.boxes:
                continue
            entries = [self.attachments[a] for a in self.box_meta[box_id]["attachments"]]
            out.append(
                {
                    "packing_box_id": box_id,
                    "attachments": [
                        {
                            "id": a["id"],
                            "type": a["type"],
                            "url": a["url"],
                            "filename": a["name"],
                            "content_type": a["file_type"],
                            "inserted_at": a["inserted_at"],
                        }
                        for a in entries
                    ],
                }
            )
        return out

    def attachment(self, attachment_id: str) -> Record:
        if attachment_id not in self.attachments:
            raise not_found("attachment")
        return copy.deepcopy(self.attachments[attachment_id])

    # ---- shipping orders ---------------------------------------------------------------------------

    def shipping_order(self, ship_id: int) -> Record:
        if ship_id not in self.shipping:
            raise not_found("shipping order")
        return self.shipping[ship_id]

    def finish_shipping(self, ship_id: int) -> Record:
        ship = self.shipping_order(ship_id)
        if ship["state"] != "queue":
            raise invalid(
                ("state", f"Shipping orders in state {ship['state']} can not be finished"), status=400
            )
        stamp = now_stamp()
        wh = ship["warehouse_id"]
        ship.update(
            {
                "state": "ended",
                "owner_id": API_USER_ID,
                "updated_at": stamp,
                "shipping_location_id": ship["shipping_location_id"] or location_id(wh, "shipping"),
            }
        )
        order = self.orders[ship["sales_order_id"]]
        if order["state"] == "shipping":
            for item in order["items"]:
                self._move(wh, item["product_id"], item["quantity"], "shipping", None, stamp)
                item["fulfilled_quantity"] = item["quantity"]
            self._change_state(order, "ended", stamp)
        return copy.deepcopy(ship)

    def list_shipping(self, query: Query) -> tuple[list[Record], int]:
        limit, offset = paging(query)
        rows = select(self.shipping.values(), query, SHIPPING_FILTERS)
        return [copy.deepcopy(r) for r in window(rows, limit, offset)], len(rows)

    # ---- stock -------------------------------------------------------------------------------------

    def _touch(self, wh: int, pid: int, stamp: str) -> None:
        movements = self.stock[wh].last_movement
        if pid not in movements:
            self._stock_keys_version += 1
        movements[pid] = stamp

    def _move(
        self, wh: int, pid: int, quantity: int, source: str | None, target: str | None, stamp: str
    ) -> None:
        positions = self.stock[wh].positions
        if source is not None:
            _bump(positions[source], pid, -quantity)
        if target is not None:
            _bump(positions[target], pid, quantity)
        self._touch(wh, pid, stamp)

    def _stock_values(self, body: Mapping[str, Any], *, status: int) -> tuple[int, int, int, str]:
        errors = type_errors(
            body, {"quantity": "int", "location_id": "int", "product_id": "int", "batch_id": "int"}
        )
        errors += [
            (k, "can't be blank") for k in ("quantity", "location_id", "product_id") if body.get(k) is None
        ]
        if not errors:
            if body["location_id"] not in LOCATIONS:
                errors.append(("location_id", "does not exist"))
            if not self.product_exists(body["product_id"]):
                errors.append(("product_id", "does not exist"))
            if body["quantity"] <= 0:
                errors.append(("quantity", "must be greater than 0"))
        if errors:
            raise invalid(*errors, status=status)
        location = LOCATIONS[body["location_id"]]
        return (
            location["warehouse_id"],
            body["product_id"],
            body["quantity"],
            LOCATION_TYPES[location["location_type_id"]],
        )

    def add_stock(self, body: Mapping[str, Any]) -> Record:
        wh, pid, quantity, kind = self._stock_values(body, status=400)
        self._move(wh, pid, quantity, None, kind, now_stamp())
        return self._stock_row(body["location_id"], pid)

    def remove_stock(self, body: Mapping[str, Any]) -> Record:
        wh, pid, quantity, kind = self._stock_values(body, status=400)
        stock = self.stock[wh]
        keep = stock.committed.get(pid, 0) if kind == "storage" else 0
        if stock.positions[kind].get(pid, 0) - quantity < keep:
            raise invalid(("quantity", "is greater than the removable stock in the location"), status=400)
        self._move(wh, pid, quantity, kind, None, now_stamp())
        return self._stock_row(body["location_id"], pid)

    def correct_stock(self, body: Any) -> Record:
        """Set counted quantities per location; storage may not drop below what is being picked."""
        if not isinstance(body, dict):
            raise invalid(("stock_correction", "is invalid"))
        errors = type_errors(body, {"warehouse_id": "int", "items": "list", "reason_codes": "list"})
        errors += [(k, "can't be blank") for k in ("warehouse_id", "items") if blank(body.get(k))]
        if errors:
            raise invalid(*errors)
        wh = body["warehouse_id"]
        if wh not in self.stock:
            raise invalid(("warehouse_id", "does not exist"))
        for item in body["items"]:
            errors += self._correction_errors(wh, item)
        if errors:
            raise invalid(*errors)
        stamp, correction_id = now_stamp(), self._next("correction")
        items = []
        for item in body["items"]:
            kind = LOCATION_TYPES[LOCATIONS[item["location_id"]]["location_type_id"]]
            current = self.stock[wh].positions[kind].get(item["product_id"], 0)
            self._move(wh, item["product_id"], item["quantity"] - current, None, kind, stamp)
            items.append(
                {
                    "id": self._next("correction_item"),
                    "stock_correction_id": correction_id,
                    "product_id": item["product_id"],
                    "location_id": item["location_id"],
                    "loading_unit_location_id": None,
                    "quantity": item["quantity"],
                    "inserted_at": stamp,
                    "updated_at": stamp,
                }
            )
        correction = {
            "id": correction_id,
            "sequence_number": f"SC{correction_id % 1_000_000:07d}",
            "warehouse_id": wh,
            "owner_id": API_USER_ID,
            "comment": body.get("comment"),
            "owner": {"id": API_USER_ID, "username": None, "first_name": "API", "last_name": "Integration"},
            "reason_codes": copy.deepcopy(body.get("reason_codes") or []),
            "items": items,
            "inserted_at": stamp,
        }
        self.corrections[correction_id] = correction
        return copy.deepcopy(correction)

    def _correction_errors(self, wh: int, item: Any) -> list[tuple[str, str]]:
        if not isinstance(item, dict):
            return [("items", "is invalid")]
        errors = type_errors(item, {"product_id": "int", "location_id": "int", "quantity": "int"})
        errors += [
            (k, "can't be blank") for k in ("product_id", "location_id", "quantity") if item.get(k) is None
        ]
        if errors:
            return errors
        location = LOCATIONS.get(item["location_id"])
        if location is None or location["warehouse_id"] != wh:
            return [("location_id", "does not belong to the warehouse")]
        if not self.product_exists(item["product_id"]):
            return [("product_id", "does not exist")]
        if item["quantity"] < 0:
            return [("quantity", "must be greater than or equal to 0")]
        kind = LOCATION_TYPES[location["location_type_id"]]
        if kind == "storage" and item["quantity"] < self.stock[wh].committed.get(item["product_id"], 0):
            return [("quantity", "is lower than the quantity being picked")]
        return []

    def _stock_row(self, loc_id: int, pid: int) -> Record:
        location = LOCATIONS[loc_id]
        stock = self.stock[location["warehouse_id"]]
        quantity = stock.positions[LOCATION_TYPES[location["location_type_id"]]].get(pid, 0)
        stamp = stock.last_movement.get(pid, self.seeded_at)
        return {
            "id": loc_id * 10_000_000 + pid,
            "product_id": pid,
            "location_id": loc_id,
            "quantity": quantity,
            "batch_id": None,
            "stock_state_id": location["stock_state_id"],
            "stock_loading_units": [],
            "inserted_at": stamp,
            "updated_at": stamp,
        }

    def list_stocks(self, query: Query) -> tuple[list[Record], int]:
        """Stock rows per location (quantity > 0), ordered by location then product."""
        limit, offset = paging(query)
        products = int_list(query, "product_id")
        locations = int_list(query, "location_id") or sorted(LOCATIONS)
        rows: list[tuple[int, int]] = []
        for loc_id in locations:
            location = LOCATIONS.get(loc_id)
            if location is None:
                continue
            held = self.stock[location["warehouse_id"]].positions[
                LOCATION_TYPES[location["location_type_id"]]
            ]
            pids = (
                [p for p in products if held.get(p, 0) > 0]
                if products is not None
                else sorted(p for p, q in held.items() if q > 0)
            )
            rows.extend((loc_id, p) for p in pids)
        return [self._stock_row(loc, pid) for loc, pid in window(rows, limit, offset)], len(rows)

    def _warehouses(self, wanted: list[int] | None) -> list[int]:
        if wanted is None:
            return sorted(self.stock)
        return [w for w in dict.fromkeys(wanted) if w in self.stock]

    def _stocked_ids(self, warehouses: list[int]) -> list[int]:
        key = tuple(warehouses)
        cached = self._summary_ids_cache.get(key)
        if cached is not None and cached[0] == self._stock_keys_version:
            return cached[1]
        if len(warehouses) == 1:
            ids = sorted(self.stock[warehouses[0]].last_movement)
        else:
            ids = sorted(set().union(*(self.stock[w].last_movement.keys() for w in warehouses)))
        self._summary_ids_cache[key] = (self._stock_keys_version, ids)
        return ids

    def summary_rows(
        self, product_ids: list[int] | None, warehouse_ids: list[int] | None, limit: int | None, offset: int
    ) -> list[Record]:
        """`StockSummary` per product that has stock records in the warehouses, ordered by product id."""
        warehouses = self._warehouses(warehouse_ids)
        if product_ids is not None:
            ids = sorted(
                p for p in set(product_ids) if any(p in self.stock[w].last_movement for w in warehouses)
            )
        else:
            ids = self._stocked_ids(warehouses)
        return [self._summary(pid, warehouses) for pid in window(ids, limit, offset)]

    def _summary(self, pid: int, warehouses: list[int]) -> Record:
        total = available = unavailable = rejected = 0
        last = ""
        for wh in warehouses:
            stock = self.stock[wh]
            p = stock.positions
            storage = p["storage"].get(pid, 0)
            reserved = stock.reserved.get(pid, 0)
            blocked = p["blocked"].get(pid, 0)
            total += (
                storage
                + p["reception"].get(pid, 0)
                + p["packing"].get(pid, 0)
                + p["shipping"].get(pid, 0)
                + blocked
            )
            available += storage - reserved
            unavailable += reserved + blocked
            rejected += p["returns"].get(pid, 0)
            last = max(last, stock.last_movement.get(pid, ""))
        name, sku = self.name_and_sku(pid)
        return {
            "product_id": str(pid),
            "sku": sku,
            "name": name,
            "total": total,
            "available": available,
            "unavailable": unavailable,
            "rejected": rejected,
            "last_movement": last or None,
        }

    def availability(
        self, product_ids: list[int] | None, warehouse_ids: list[int] | None, limit: int | None, offset: int
    ) -> list[Record]:
        warehouses = self._warehouses(warehouse_ids)
        if product_ids is not None:
            ids = sorted(p for p in set(product_ids) if self.product_exists(p))
        else:
            ids = self._stocked_ids(warehouses)
        out = []
        for pid in window(ids, limit, offset):
            available = reception = returns = 0
            for wh in warehouses:
                stock = self.stock[wh]
                available += stock.positions["storage"].get(pid, 0) - stock.reserved.get(pid, 0)
                reception += stock.positions["reception"].get(pid, 0)
                returns += stock.positions["returns"].get(pid, 0)
            out.append(
                {
                    "product_id": str(pid),
                    "available_quantity": available,
                    "reception_quantity": reception,
                    "return_quantity": returns,
                }
            )
        return out

    def shuffle_stock(self, fraction: float, warehouse_id: int = 1) -> dict[str, Any]:
        """Change the storage stock of a deterministic fraction of the stocked products (benchmarks)."""
        if warehouse_id not in self.stock:
            raise invalid(("warehouse_id", "does not exist"))
        self.shuffle_round += 1
        rng = random.Random(f"{self.seed}:shuffle:{warehouse_id}:{self.shuffle_round}")
        stock = self.stock[warehouse_id]
        candidates = self._stocked_ids([warehouse_id])
        count = min(len(candidates), max(1, round(len(candidates) * fraction))) if fraction > 0 else 0
        chosen = sorted(rng.sample(candidates, count))
        stamp = now_stamp()
        storage = stock.positions["storage"]
        for pid in chosen:
            old = storage.get(pid, 0)
            new = max(stock.committed.get(pid, 0), old + rng.choice([-5, -3, -2, -1, 1, 2, 4, 8, 15]))
            if new == old:
                new = old + 1
            self._move(warehouse_id, pid, new - old, None, "storage", stamp)
        return {
            "changed": len(chosen),
            "warehouse_id": warehouse_id,
            "product_ids": chosen,
            "skus": [self.name_and_sku(pid)[1] for pid in chosen],
        }

    # ---- reference data ----------------------------------------------------------------------------

    def warehouses(self) -> list[Record]:
        return [{**w, "inserted_at": self.seeded_at, "updated_at": self.seeded_at} for w in WAREHOUSES]

    def shipping_methods(self) -> list[Record]:
        return [
            {
                **m,
                "tenant_id": TENANT_ID,
                "merchant_id": None,
                "merchant_channel_id": None,
                "inserted_at": self.seeded_at,
                "updated_at": self.seeded_at,
            }
            for m in SHIPPING_METHODS
        ]

    def locations(self) -> list[Record]:
        return [
            {**loc, "inserted_at": self.seeded_at, "updated_at": self.seeded_at} for loc in LOCATIONS.values()
        ]

    def user(self, username: str) -> Record:
        return {
            "id": API_USER_ID,
            "username": username,
            "first_name": "API",
            "last_name": "Integration",
            "email": f"{username}@example.com",
            "active": True,
            "type": "api",
            "language": "de",
            "employee_id": None,
            "is_billable": False,
            "tenant_id": TENANT_ID,
            "deleted_at": None,
            "deleted_by": None,
            "inserted_at": self.seeded_at,
            "updated_at": self.seeded_at,
            "warehouses": self.warehouses(),
            "merchants": [{"id": mid, "name": name} for mid, name in MERCHANTS.items()],
            "permissions": [],
            "profiles": [],
            "product_categories": [],
            "socket_permissions": [],
            "socket_profiles": [],
        }

    def overview(self) -> dict[str, Any]:
        def states(records: dict[int, Record]) -> dict[str, int]:
            out: dict[str, int] = {}
            for record in records.values():
                out[record["state"]] = out.get(record["state"], 0) + 1
            return out

        return {
            "seed": self.seed,
            "products": self.next_product_id - 1,
            "seeded_products": len(self.seeded_index),
            "kits": len(self.kits),
            "sales_orders": states(self.orders),
            "picking_orders": states(self.picking),
            "packing_orders": states(self.packing),
            "shipping_orders": states(self.shipping),
            "packing_boxes": len(self.boxes),
            "shipment_trackings": len(self.trackings),
            "attachments": len(self.attachments),
            "third_parties": len(self.third_parties),
            "stocked_products": {wh: len(s.last_movement) for wh, s in self.stock.items()},
        }


def data_url_bytes(path: str) -> bytes | None:
    """The content of an RFC 2397 `data:<type>;base64,<data>` path, None when it is not one. How a file
    reaches PULPO before `…/attach` is not public; a data URL in `path` is the spec-only way (the client
    sends labels so), other paths stay opaque storage references."""
    head, sep, data = path.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        return None
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        return None
