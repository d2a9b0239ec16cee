"""The simulated warehouse: pickers, packers and the goods-in desk acting on PULPO's real endpoints.

It logs in like any API user (its own token, `X-Sandbox-Actor: simulator`, so its calls are
counted apart and never hit by faults) and moves every open sales order one state per `step()`:

    shipping -> ended      POST /shipping/orders/{id}/finish
    packing  -> shipping   POST /packing/orders/{id}/accept, …/box (per product, with carton
                           dimensions), …/finish, …/close?shipping_location_id=
    picking  -> packing    POST /picking/orders/{id}/accept, …/finish
    queue    -> picking    goods-in first when storage cannot serve the order
                           (POST /inventory/stocks/add), then POST /picking/orders

Stages run from the end of the flow backwards, so an order advances at most one state per step.
Goods-in also stocks products created since the simulator started (most of them in the main
warehouse, some also in the second one, some not at all), and now and then a stock count corrects
a product (POST /inventory/stocks/correct). Every random choice comes from `random.Random(seed)`
and orders are handled in id order: the same seed and the same orders give the same boxes,
receipts and corrections. An order that the product changes between listing and acting (say, it
cancels it) is skipped, as a real warehouse worker would put the task aside.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import requests

from billbee_pulpo_pipeline.sandboxes.credentials import PULPO_PASSWORD, PULPO_USERNAME, SIMULATOR_HEADERS

PAGE_SIZE = 100
CARTONS = ((30.0, 20.0, 10.0), (40.0, 30.0, 20.0), (60.0, 40.0, 40.0))  # length, width, height in cm
INITIAL_STOCK = (0, 2, 5, 12, 25, 40, 80, 150)  # first goods-in of a new product (0: not delivered yet)
ACTIVE_STATES = ("queue", "picking", "packing", "shipping")
SKIPPABLE = frozenset({403, 404, 422})  # the task changed under our feet: leave it for now
MAIN_WAREHOUSE, SECOND_WAREHOUSE = 1, 2


class SimulatorError(RuntimeError):
    """A call of the simulated warehouse was refused (status and a short body excerpt)."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:300]}")
        self.status = status


class WarehouseSimulator:
    """Drives PULPO's order flow through the API, deterministically from `seed`."""

    def __init__(
        self,
        pulpo_url: str,
        seed: int = 1,
        *,
        advance_probability: float = 1.0,
        correction_probability: float = 0.2,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = pulpo_url.rstrip("/")
        self.rng = random.Random(seed)
        self.advance_probability = advance_probability
        self.correction_probability = correction_probability
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update(SIMULATOR_HEADERS)
        self._token: str | None = None
        self._locations: dict[tuple[int, str], int] = {}
        # Products from before the simulator started are not new: the first look is exclusive (`gt:`).
        self._product_cursor = "gt:" + datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        self._known_products: set[int] = set()

    def __repr__(self) -> str:
        return f"WarehouseSimulator({self.base_url!r})"

    # ---- the public steps --------------------------------------------------------------------------

    def step(self) -> dict[str, int]:
        """Advance every open order by at most one state; returns what was done."""
        done = dict.fromkeys(
            ("shipped", "packed", "boxes", "picked", "released", "received", "corrected", "skipped"), 0
        )
        done["received"] = self._receive_new_products()
        for stage in (self._ship, self._pack, self._pick, self._release):
            for key, value in stage().items():
                done[key] += value
        if self.rng.random() < self.correction_probability:
            done["corrected"] = self._correct_one()
        return done

    def pack_all(self, max_steps: int = 10) -> dict[str, int]:
        """Step until no order waits in queue, picking or packing (all packed or beyond)."""
        return self._until(("queue", "picking", "packing"), max_steps)

    def ship_all(self, max_steps: int = 10) -> dict[str, int]:
        """Step until every open order is ended."""
        return self._until(ACTIVE_STATES, max_steps)

    def close(self) -> None:
        self.session.close()

    # ---- stages ------------------------------------------------------------------------------------

    def _each(
        self,
        rows: Iterator[dict[str, Any]],
        done_key: str,
        work: Callable[[dict[str, Any]], dict[str, int] | None],
    ) -> dict[str, int]:
        """Apply `work` to the rows that advance this step; refused rows are skipped, not fatal."""
        counts = {done_key: 0, "skipped": 0}
        for row in rows:
            if self.advance_probability < 1.0 and self.rng.random() >= self.advance_probability:
                continue
            try:
                extra = work(row) or {}
            except SimulatorError as exc:
                if exc.status not in SKIPPABLE:
                    raise
                counts["skipped"] += 1
                continue
            counts[done_key] += 1
            for key, value in extra.items():
                counts[key] = counts.get(key, 0) + value
        return counts

    def _ship(self) -> dict[str, int]:
        def ship(order: dict[str, Any]) -> None:
            self._call("POST", f"/shipping/orders/{order['id']}/finish")

        return self._each(self._all("/shipping/orders", "shipping_orders", state="queue"), "shipped", ship)

    def _pack(self) -> dict[str, int]:
        def pack(packing: dict[str, Any]) -> dict[str, int]:
            pid = packing["id"]
            self._call("POST", f"/packing/orders/{pid}/accept")
            boxes = self._fill_boxes(pid, packing["items"])
            self._call("POST", f"/packing/orders/{pid}/finish")
            location = self._shipping_location(pid, packing["warehouse_id"])
            self._call("POST", f"/packing/orders/{pid}/close", params={"shipping_location_id": location})
            return {"boxes": boxes}

        return self._each(self._all("/packing/orders", "packing_orders", state="queue"), "packed", pack)

    def _fill_boxes(self, packing_id: int, items: list[dict[str, Any]]) -> int:
        """One box, or two when there are several units; each box gets a carton's dimensions."""
        units = sum(i["requested_quantity"] for i in items)
        box_count = 2 if units > 1 and self.rng.random() < 0.3 else 1
        cartons = {n: self.rng.choice(CARTONS) for n in range(1, box_count + 1)}
        for position, item in enumerate(items):
            quantity = item["requested_quantity"]
            split = quantity // 2 if box_count == 2 and quantity > 1 else 0
            portions = (
                [(1, quantity - split), (2, split)] if split else [(1 + position % box_count, quantity)]
            )
            for box_number, portion in portions:
                length, width, height = cartons[box_number]
                form = {
                    "product_id": item["product_id"],
                    "box_number": box_number,
                    "quantity": portion,
                    "length": length,
                    "width": width,
                    "height": height,
                }
                self._call("POST", f"/packing/orders/{packing_id}/box", data=form)
        return box_count

    def _pick(self) -> dict[str, int]:
        def pick(picking: dict[str, Any]) -> None:
            self._call("POST", f"/picking/orders/{picking['id']}/accept")
            self._call("POST", f"/picking/orders/{picking['id']}/finish")

        return self._each(self._all("/picking/orders", "picking_orders", state="queue"), "picked", pick)

    def _release(self) -> dict[str, int]:
        def release(order: dict[str, Any]) -> dict[str, int]:
            received = self._receive_missing(order)
            self._call("POST", "/picking/orders", json={"sales_orders": [order["id"]]})
            return {"received": received}

        return self._each(self._all("/sales/orders", "sales_orders", state="queue"), "released", release)

    # ---- goods-in and counting -----------------------------------------------------------------------

    def _receive_missing(self, order: dict[str, Any]) -> int:
        """Goods-in for every product whose storage stock cannot serve all open reservations."""
        warehouse = order["warehouse_id"]
        ids = sorted({i["product_id"] for i in order["items"]})
        rows = self._call(
            "GET", "/inventory/stocks/availability", params={"id[]": ids, "warehouse_id[]": [warehouse]}
        )
        receipts = 0
        for row in rows or []:
            shortfall = -int(row["available_quantity"])
            if shortfall > 0:
                self._add_stock(int(row["product_id"]), warehouse, shortfall + self.rng.randint(5, 40))
                receipts += 1
        return receipts

    def _receive_new_products(self) -> int:
        """First delivery of products created since the last look (inserted_at cursor, de-duplicated)."""
        rows = self._all("/inventory/products", "products", inserted_at=self._product_cursor)
        receipts = 0
        for product in rows:
            if product["id"] in self._known_products:
                continue
            self._known_products.add(product["id"])
            seen = str(product["inserted_at"]).replace("T", " ")[:19]
            self._product_cursor = "gte:" + max(self._product_cursor.split(":", 1)[1], seen)
            quantity = self.rng.choice(INITIAL_STOCK)
            if quantity:
                self._add_stock(product["id"], MAIN_WAREHOUSE, quantity)
                receipts += 1
            if self.rng.random() < 0.2:
                self._add_stock(product["id"], SECOND_WAREHOUSE, self.rng.randint(1, 30))
                receipts += 1
        return receipts

    def _add_stock(self, product_id: int, warehouse_id: int, quantity: int) -> None:
        self._call(
            "POST",
            "/inventory/stocks/add",
            data={
                "product_id": product_id,
                "quantity": quantity,
                "location_id": self._location(warehouse_id, "storage"),
            },
        )

    def _correct_one(self) -> int:
        """A stock count finds a few units more (or fewer) of one stocked product in the main warehouse."""
        location = self._location(MAIN_WAREHOUSE, "storage")
        page = self._call("GET", "/inventory/stocks", params={"location_id": location, "limit": PAGE_SIZE})
        rows = page.get("stocks", []) if isinstance(page, dict) else []
        if not rows:
            return 0
        row = self.rng.choice(rows)
        counted = max(0, row["quantity"] + self.rng.choice([-2, -1, 1, 2, 3]))
        body = {
            "warehouse_id": MAIN_WAREHOUSE,
            "items": [{"product_id": row["product_id"], "location_id": location, "quantity": counted}],
        }
        try:
            self._call("POST", "/inventory/stocks/correct", json=body)
        except SimulatorError as exc:  # the count may not go below what pickers are holding
            if exc.status not in SKIPPABLE:
                raise
            return 0
        return 1

    def _until(self, states: tuple[str, ...], max_steps: int) -> dict[str, int]:
        totals: dict[str, int] = {}
        for _ in range(max_steps):
            if not any(self._count(state) for state in states):
                break
            for key, value in self.step().items():
                totals[key] = totals.get(key, 0) + value
        return totals

    # ---- lookups -----------------------------------------------------------------------------------

    def _count(self, state: str) -> int:
        body = self._call("GET", "/sales/orders", params={"state": state, "limit": 1})
        return int(body.get("total_results", 0))

    def _shipping_location(self, packing_id: int, warehouse_id: int) -> int:
        key = (warehouse_id, "shipping")
        if key not in self._locations:
            body = self._call("GET", f"/packing/orders/{packing_id}/shipping_locations")
            self._locations[key] = int(body["locations"][0]["id"])
        return self._locations[key]

    def _location(self, warehouse_id: int, type_name: str) -> int:
        key = (warehouse_id, type_name)
        if key not in self._locations:
            types = self._call("GET", "/warehouses/location_types")["location_types"]
            type_id = next(t["id"] for t in types if t["name"] == type_name)
            body = self._call("GET", f"/warehouses/{warehouse_id}/locations")
            self._locations[key] = int(
                next(loc["id"] for loc in body["locations"] if loc["location_type_id"] == type_id)
            )
        return self._locations[key]

    def _all(self, path: str, key: str, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every row of a list endpoint, read completely before the caller changes any of them."""
        rows: list[dict[str, Any]] = []
        while True:
            body = self._call("GET", path, params={**filters, "limit": PAGE_SIZE, "offset": len(rows)})
            page = body.get(key, [])
            rows.extend(page)
            if not page or len(rows) >= int(body.get("total_results", 0)):
                break
        return iter(sorted(rows, key=lambda r: r["id"]))

    # ---- HTTP ------------------------------------------------------------------------------------

    def _login(self) -> str:
        body = {
            "grant_type": "password",
            "username": PULPO_USERNAME,
            "password": PULPO_PASSWORD,
            "scope": "general",
        }
        response = self.session.post(f"{self.base_url}/auth", json=body, timeout=self.timeout)
        if response.status_code != 200:
            raise SimulatorError("POST", "/auth", response.status_code, response.text)
        self._token = str(response.json()["access_token"])
        return self._token

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call with the simulator's token; logs in again once when the token expired."""
        for attempt in (1, 2):
            token = self._token or self._login()
            response = self.session.request(
                method,
                self.base_url + path,
                timeout=self.timeout,
                headers={"Authorization": f"Bearer {token}"},
                **kwargs,
            )
            if response.status_code == 401 and attempt == 1:
                self._token = None
                continue
            if response.status_code >= 400:
                raise SimulatorError(method, path, response.status_code, response.text)
            return response.json() if response.content else None
        raise AssertionError("unreachable")
