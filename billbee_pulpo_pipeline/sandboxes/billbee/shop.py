"""A simulated shop that keeps the Billbee sandbox alive: new orders, payments, cancellations, new and
renamed products. It acts only through the public API (with the sandbox credentials and the simulator
header), so everything it does is what a real shop connection would make the pipeline see.

`step()` is deterministic from the seed: the same seed against the same world does the same things.
Tests call it step by step; the lead's world runner calls it on a clock.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import requests

from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.sandboxes.catalog import (
    BUNDLE_STRIDE,
    billbee_product_id,
    catalog_item,
    ean13,
    sku_for,
)

_CUSTOMERS = [
    ("Jürgen", "Müller", "Königstraße", "12", "80331", "München", "DE"),
    ("Zoë", "Weiß", "Mariahilfer Straße", "7a", "1070", "Wien", "AT"),
    ("Björn", "Groß", "Schloßallee", "3", "50667", "Köln", "DE"),
    ("Anaïs", "Léger", "Rue du Rhône", "44", "1204", "Genève", "CH"),
    ("Lena 🌸", "Schröder", "Über den Höfen", "9", "23552", "Lübeck", "DE"),
    ("Özlem", "Öztürk", "Bahnhofstrasse", "101", "8001", "Zürich", "CH"),
    ("Søren", "Bäcker", "Mühlweg", "2", "02826", "Görlitz", "DE"),
]
_COUNTRIES = {"DE": "Deutschland", "AT": "Österreich", "CH": "Schweiz"}
SHOP_ID = 20000000000000711  # the sandbox's Shopify connection
# Shipping (provider, product) a shop's shipping rules give new orders, in turn: DHL Paket three times
# in four, then DPD Classic (ids of the sandbox's providers). Chosen by count, not by the random
# generator, so the shop's other choices stay as they were for a seed.
_SHIPPING = (
    (20000000000012101, 20000000000083771),
    (20000000000012101, 20000000000083771),
    (20000000000012101, 20000000000083771),
    (20000000000012105, 20000000000083781),
)


class ShopSimulator:
    """Drives the shop via POST /orders, PUT /orders/{id}/orderstate, POST and PATCH /products."""

    def __init__(self, billbee_url: str, seed: int = 1, timeout: float = 10.0) -> None:
        self.base_url = billbee_url.rstrip("/")
        self.seed = seed
        self.timeout = timeout
        self.rng = random.Random(f"shop-simulator:{seed}")
        self.session = requests.Session()
        self.session.auth = (credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD)
        self.session.headers.update(
            {
                "X-Billbee-Api-Key": credentials.BILLBEE_API_KEY,
                "Accept": "application/json",
                **credentials.SIMULATOR_HEADERS,
            }
        )
        self.unpaid: list[int] = []  # created, not yet paid or canceled
        self.created_skus: list[str] = []
        self.steps = 0
        self._orders_created = 0
        self._products_created = 0
        self._catalog_size: int | None = None

    def __repr__(self) -> str:  # the session holds credentials: keep them out of reprs
        return f"ShopSimulator({self.base_url!r}, seed={self.seed})"

    # ---- HTTP ------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(
                f"shop simulator: {method} {path} answered {response.status_code}: {response.text[:300]}"
            )
        return response

    def catalog_size(self) -> int:
        """Products in the shop when the simulator first looked (Paging.TotalRows of GET /products)."""
        if self._catalog_size is None:
            paging = self._call("GET", "/products", params={"page": 1, "pageSize": 1}).json()["Paging"]
            self._catalog_size = int(paging["TotalRows"])
        return self._catalog_size

    # ---- one simulation step -------------------------------------------------------------------

    def step(
        self,
        new_orders: int = 5,
        pay_ratio: float = 0.8,
        cancel_ratio: float = 0.05,
        new_products: int = 0,
        changed_products: int = 0,
    ) -> dict[str, list[int]]:
        """Settle earlier unpaid orders (pay or cancel some), then create new ones and products."""
        self.steps += 1
        paid, canceled, still_unpaid = [], [], []
        for order_id in self.unpaid:
            draw = self.rng.random()
            if draw < cancel_ratio:
                self._set_state(order_id, 8)
                canceled.append(order_id)
            elif draw < cancel_ratio + pay_ratio:
                self._set_state(order_id, 3)
                paid.append(order_id)
            else:
                still_unpaid.append(order_id)
        created_products = [self._create_product() for _ in range(new_products)]
        changed = [self._change_product() for _ in range(changed_products)]
        changed = [product_id for product_id in changed if product_id is not None]
        created = [self._create_order() for _ in range(new_orders)]
        self.unpaid = still_unpaid + created
        return {
            "created": created,
            "paid": paid,
            "canceled": canceled,
            "products_created": created_products,
            "products_changed": changed,
        }

    def _set_state(self, order_id: int, state: int) -> None:
        self._call("PUT", f"/orders/{order_id}/orderstate", json={"NewStateId": state})

    def _pick_sku(self) -> tuple[str, str, float]:
        """(SKU, title, unit price) of an existing article with a SKU, bundles included."""
        size = self.catalog_size()
        if self.created_skus and self.rng.random() < 0.2:
            sku = self.rng.choice(self.created_skus)
            return sku, f"Neuheit {sku}", 12.5
        for _ in range(50):
            index = self.rng.randrange(size) if size else 0
            if self.rng.random() < 0.05 and size > BUNDLE_STRIDE:
                index = BUNDLE_STRIDE - 1 + BUNDLE_STRIDE * self.rng.randrange(size // BUNDLE_STRIDE)
            sku = sku_for(index)
            if sku is not None and index < size:
                item = catalog_item(self.seed, index)
                return sku, item.title_de, item.price
        raise RuntimeError("shop simulator: the catalogue has no article with a SKU")

    def _address(self) -> dict[str, Any]:
        first, last, street, number, zip_code, city, country = self.rng.choice(_CUSTOMERS)
        return {
            "FirstName": first,
            "LastName": last,
            "Street": street,
            "HouseNumber": number,
            "Zip": zip_code,
            "City": city,
            "CountryISO2": country,
            "Country": _COUNTRIES[country],
            "Email": f"{last.lower()}.{self.rng.randrange(10**6)}@example.com",
            "Company": "",
            "Line2": "c/o Packstation 🎁" if self.rng.random() < 0.1 else "",
        }

    def _create_order(self) -> int:
        self._orders_created += 1
        number = f"SIM{self.seed}-{self._orders_created:06d}"
        items = []
        for _ in range(1 + self.rng.randrange(3)):
            sku, title, price = self._pick_sku()
            quantity = float(1 + self.rng.randrange(3))
            items.append(
                {
                    "Product": {"SKU": sku, "Title": title, "Id": f"shopify-{sku}"},
                    "Quantity": quantity,
                    "TotalPrice": round(price * quantity, 2),
                    "TaxIndex": 1,
                }
            )
        address = self._address()
        body = {
            "Id": f"sim-{self.seed}-{self._orders_created}",
            "OrderNumber": number,
            "State": 1,
            "CreatedAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "Currency": "EUR",
            "ApiAccountId": SHOP_ID,
            "ShippingProviderId": _SHIPPING[self._orders_created % len(_SHIPPING)][0],
            "ShippingProviderProductId": _SHIPPING[self._orders_created % len(_SHIPPING)][1],
            "ShippingCost": 4.9,
            "InvoiceAddress": address,
            "ShippingAddress": address,
            "OrderItems": items,
        }
        response = self._call("POST", "/orders", json=body)
        return int(response.json()["Data"]["BillBeeOrderId"])

    def _create_product(self) -> int:
        self._products_created += 1
        sku = f"SIM{self.seed}-P{self._products_created:05d}"
        body = {
            "SKU": sku,
            "EAN": ean13(10**9 * self.seed + self._products_created),
            "Title": [{"Text": f"Neuheit ✨ Frühstücksset {self._products_created}", "LanguageCode": "DE"}],
            "Type": 1,
            "VatIndex": 1,
            "Price": 12.5,
            "Vat1Rate": 19.0,
            "Vat2Rate": 7.0,
            "IsDigital": False,
            "IsCustomizable": False,
            "Weight": 350,
            "StockCurrent": 0,
        }
        product_id = int(self._call("POST", "/products", json=body).json()["Data"]["Id"])
        self.created_skus.append(sku)
        return product_id

    def _change_product(self) -> int | None:
        """Rename a catalogue article and, now and then, give it a new EAN (merchants do both)."""
        size = self.catalog_size()
        if not size:
            return None
        index = self.rng.randrange(size)
        changes: dict[str, Any] = {
            "Title": [
                {
                    "Text": f"{catalog_item(self.seed, index).title_de} (überarbeitet {self.steps})",
                    "LanguageCode": "DE",
                }
            ]
        }
        if self.rng.random() < 0.3:
            changes["EAN"] = ean13(7 * 10**9 + index * 1000 + self.steps)
        product_id = billbee_product_id(index)
        self._call("PATCH", f"/products/{product_id}", json=changes)
        return product_id
