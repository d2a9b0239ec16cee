"""The PULPO sandbox over real HTTP: auth, paging, validation, order flow, stock, and the spec contract."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from billbee_pulpo_pipeline.sandboxes.catalog import sku_for
from billbee_pulpo_pipeline.sandboxes.credentials import PULPO_PASSWORD, PULPO_USERNAME, SIMULATOR_HEADERS
from billbee_pulpo_pipeline.sandboxes.pulpo import PulpoSandbox, WarehouseSimulator
from billbee_pulpo_pipeline.sandboxes.runner import serve_in_thread
from billbee_pulpo_pipeline_tests import spec_support

AUTH_BODY = {
    "grant_type": "password",
    "username": PULPO_USERNAME,
    "password": PULPO_PASSWORD,
    "scope": "general",
}
SHIP_TO = {
    "name": "Erika Mustermann",
    "address": {
        "street": "Hauptstraße",
        "house_nr": "5",
        "zip": "10115",
        "city": "Berlin",
        "country_alpha2": "DE",
    },
}


class Api:
    """A bare HTTP client for the sandbox (the product's client is tested elsewhere)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.url = root + "/api/v1"
        self.session = requests.Session()
        self.token = self.login()

    def login(self, **overrides: Any) -> str:
        response = self.session.post(self.url + "/auth", json={**AUTH_BODY, **overrides}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def call(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.token}", **kwargs.pop("headers", {})}
        return self.session.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("PUT", path, **kwargs)

    def control(self, method: str, path: str, payload: Any = None) -> Any:
        response = self.session.request(method, f"{self.root}/__sandbox/{path}", json=payload, timeout=60)
        response.raise_for_status()
        return response.json()

    def order(self, order_num: str, items: list[dict[str, Any]], warehouse_id: int = 1, **extra: Any) -> dict:
        body = {
            "order_num": order_num,
            "warehouse_id": warehouse_id,
            "ship_to": SHIP_TO,
            "items": items,
            **extra,
        }
        response = self.post("/sales/orders", json=body)
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture(scope="module")
def server() -> Iterator[SimpleNamespace]:
    sandbox = PulpoSandbox(seed=3)
    root, stop = serve_in_thread(sandbox.build())
    yield SimpleNamespace(root=root, sandbox=sandbox)
    stop.set()


@pytest.fixture
def api(server: SimpleNamespace) -> Api:
    """A fresh tenant with 300 catalogue entries (products and stock) and a logged-in client."""
    requests.post(
        server.root + "/__sandbox/reset", json={"seed": 3, "products": 300}, timeout=30
    ).raise_for_status()
    requests.post(server.root + "/__sandbox/auth/unban", timeout=10).raise_for_status()
    return Api(server.root)


def field_errors(response: requests.Response) -> dict[str, str]:
    return {k: v for entry in response.json()["errors"] for k, v in entry.items()}


def summary(api: Api, product_id: int, warehouse_ids: list[int] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"product_id[]": [product_id]}
    if warehouse_ids is not None:
        params["warehouse_id[]"] = warehouse_ids
    rows = api.get("/inventory/stocks/summary", params=params).json()
    assert len(rows) == 1, rows
    return rows[0]


# ---- auth ------------------------------------------------------------------------------------------


def test_token_from_json_and_form_grants_access(api: Api) -> None:
    form = api.session.post(api.url + "/auth", data=AUTH_BODY, timeout=10)
    assert form.status_code == 200
    body = form.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600 and body["scope"] == "general"
    assert body["access_token"].count(".") == 2 and body["access_token"] != api.token
    me = api.get("/iam/users/me", token=body["access_token"])
    assert me.status_code == 200 and me.json()["username"] == PULPO_USERNAME
    assert {w["name"] for w in me.json()["warehouses"]} == {"Hauptlager", "Außenlager"}
    assert "password" not in me.json()


def test_missing_unknown_and_wrong_credentials_get_401(api: Api) -> None:
    no_header = api.session.get(api.url + "/inventory/products", timeout=10)
    unknown = api.get("/inventory/products", token="eyJ.invalid.token")
    for response in (no_header, unknown):
        assert response.status_code == 401
        assert response.json() == {"errors": {"message": "unauthorized"}}
    wrong = api.session.post(api.url + "/auth", json={**AUTH_BODY, "password": "nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json() == {"errors": {"message": "unauthorized"}}
    assert api.control("GET", "stats")["unauthorized"] == 2


def test_token_expires_after_token_ttl_seconds(api: Api) -> None:
    api.control("PUT", "faults", {"token_ttl_seconds": 1})
    short = api.session.post(api.url + "/auth", json=AUTH_BODY, timeout=10).json()
    assert short["expires_in"] == 1
    assert api.get("/iam/users/me", token=short["access_token"]).status_code == 200
    time.sleep(1.2)
    assert api.get("/iam/users/me", token=short["access_token"]).status_code == 401
    assert api.get("/iam/users/me").status_code == 200  # issued before the knob changed


def test_refresh_token_grant_swaps_the_token(api: Api) -> None:
    response = api.session.post(
        api.url + "/auth",
        json={"grant_type": "refresh_token", "refresh_token": api.token, "scope": "general"},
        timeout=10,
    )
    assert response.status_code == 200
    assert api.get("/iam/users/me").status_code == 401
    assert api.get("/iam/users/me", token=response.json()["access_token"]).status_code == 200


def test_token_storm_is_banned_but_simulator_and_existing_tokens_are_not(api: Api) -> None:
    api.control("POST", "auth/unban")  # forget the fixture's login
    api.control("POST", "stats/reset")
    statuses = [
        api.session.post(api.url + "/auth", json=AUTH_BODY, timeout=10).status_code for _ in range(12)
    ]
    assert statuses[:10] == [200] * 10 and statuses[10:] == [429, 429]
    banned = api.session.post(api.url + "/auth", json=AUTH_BODY, timeout=10)
    assert banned.status_code == 429 and int(banned.headers["Retry-After"]) > 50
    assert "banned" in banned.json()["errors"]["message"]
    simulator = api.session.post(api.url + "/auth", json=AUTH_BODY, headers=SIMULATOR_HEADERS, timeout=10)
    assert simulator.status_code == 200
    assert api.get("/iam/users/me").status_code == 200
    assert api.control("GET", "stats")["token_requests"] == 13


# ---- lists -----------------------------------------------------------------------------------------


def test_limit_is_capped_and_offset_pages_through_everything(api: Api) -> None:
    first = api.get("/inventory/products", params={"limit": 500}).json()
    assert len(first["products"]) == 100
    total = first["total_results"]
    expected = sum(1 for i in range(300) if sku_for(i) and i % 50 != 49)
    assert total == expected
    assert len(api.get("/inventory/products").json()["products"]) == 10  # the documented default
    seen: list[int] = []
    while len(seen) < total:
        page = api.get("/inventory/products", params={"limit": 100, "offset": len(seen)}).json()["products"]
        assert page
        seen += [p["id"] for p in page]
    assert seen == sorted(set(seen)) and len(seen) == total


def test_filters_by_sku_id_list_and_updated_at(api: Api) -> None:
    sku = sku_for(10)
    found = api.get("/inventory/products", params={"sku": sku}).json()
    assert found["total_results"] == 1 and found["products"][0]["sku"] == sku
    by_ids = api.get("/inventory/products", params={"id[]": [3, 5, 999_999]}).json()
    assert [p["id"] for p in by_ids["products"]] == [3, 5]
    cursor = found["products"][0]["updated_at"].replace("T", " ")
    time.sleep(1.05)  # timestamps have second precision
    api.put(f"/inventory/products/{by_ids['products'][0]['id']}", json={"description": "neu"})
    changed = api.get("/inventory/products", params={"updated_at": f"gt:{cursor}"}).json()
    assert [p["id"] for p in changed["products"]] == [3]
    bad = api.get("/inventory/products", params={"updated_at": "gte:yesterday"})
    assert bad.status_code == 422 and field_errors(bad) == {"updated_at": "is invalid"}


# ---- validation ------------------------------------------------------------------------------------


def test_product_rules(api: Api) -> None:
    ok = api.post(
        "/inventory/products",
        json={
            "sku": "NEW-1",
            "name": "Neu",
            "attributes": '{"billbee_id": 1}',
            "barcodes": ["4000000000001"],
            "weight": 0.25,
        },
    )
    assert ok.status_code == 201 and ok.json()["attributes"] == '{"billbee_id": 1}'
    as_object = api.post("/inventory/products", json={"sku": "NEW-2", "name": "Neu", "attributes": {"a": 1}})
    assert as_object.status_code == 422 and field_errors(as_object) == {"attributes": "is invalid"}
    duplicate = api.post("/inventory/products", json={"sku": "NEW-1", "name": "Doppelt"})
    assert field_errors(duplicate) == {"sku": "has already been taken"}
    blank = api.post("/inventory/products", json={"barcodes": "4000000000001"})
    assert field_errors(blank) == {
        "sku": "can't be blank",
        "name": "can't be blank",
        "barcodes": "is invalid",
    }
    assert api.get("/inventory/products/999999").status_code == 404


def test_bulk_products_continue_past_failures(api: Api) -> None:
    rows = [
        {"sku": "B-1", "name": "eins"},
        {"sku": sku_for(0), "name": "schon da"},
        {"sku": "B-2", "name": "zwei"},
    ]
    response = api.post("/inventory/bulk/products", json=rows)
    assert response.status_code == 400
    body = response.json()
    assert [c["sku"] for c in body["created"]] == ["B-1", "B-2"]
    assert body["errors"] == [{"errors": [{"sku": "has already been taken"}], "sku": sku_for(0)}]
    update = api.put("/inventory/bulk/products", json=[{"id": body["created"][0]["id"], "name": "EINS"}])
    assert update.status_code == 201 and update.json()["updated"] == [
        {"id": body["created"][0]["id"], "sku": "B-1"}
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"attributes": {"billbee_id": 1}}, {"attributes": "is invalid"}),
        ({"items": [{"product_id": 1, "quantity": 1.5}]}, {"quantity": "is invalid"}),
        ({"items": [{"product_id": 1, "quantity": "2"}]}, {"quantity": "is invalid"}),
        ({"items": [{"product_id": 999_999, "quantity": 1}]}, {"product_id": "does not exist"}),
        ({"external_order_num": 4711}, {"external_order_num": "is invalid"}),
        ({"ship_to": {"name": "X", "address": {"zip": "10115"}}}, {"street": "can't be blank"}),
        ({"warehouse_id": 9}, {"warehouse_id": "does not exist"}),
        ({"items": []}, {"items": "can't be blank"}),
    ],
)
def test_sales_order_rejections(api: Api, change: dict[str, Any], expected: dict[str, str]) -> None:
    body = {
        "order_num": "V-1",
        "warehouse_id": 1,
        "ship_to": SHIP_TO,
        "items": [{"product_id": 1, "quantity": 1}],
    }
    response = api.post("/sales/orders", json={**body, **change})
    assert response.status_code == 422
    assert field_errors(response) == expected


def test_duplicate_order_num_is_rejected(api: Api) -> None:
    api.order("D-1", [{"product_id": 1, "quantity": 1}])
    again = api.post(
        "/sales/orders",
        json={
            "order_num": "D-1",
            "warehouse_id": 1,
            "ship_to": SHIP_TO,
            "items": [{"product_id": 2, "quantity": 1}],
        },
    )
    assert again.status_code == 422 and field_errors(again) == {"order_num": "has already been taken"}
    assert api.get("/sales/orders", params={"order_num": "D-1"}).json()["total_results"] == 1
    projected = api.get("/sales/orders", params={"order_num": "D-1", "view_attributes": "id,state"}).json()
    assert [set(o) for o in projected["sales_orders"]] == [{"id", "state"}]


# ---- order life cycle ------------------------------------------------------------------------------


def test_put_only_in_queue_and_cancel_rules(api: Api) -> None:
    order = api.order("L-1", [{"product_id": 1, "quantity": 2}])
    updated = api.put(f"/sales/orders/{order['id']}", json={"notes": "bitte klingeln"})
    assert updated.status_code == 201 and updated.json()["notes"] == "bitte klingeln"
    WarehouseSimulator(api.url, seed=1, correction_probability=0).step()  # queue -> picking
    refused = api.put(f"/sales/orders/{order['id']}", json={"notes": "zu spät"})
    assert refused.status_code == 403 and "picking" in field_errors(refused)["state"]
    WarehouseSimulator(api.url, seed=1, correction_probability=0).ship_all()
    ended = api.post(f"/sales/orders/{order['id']}/cancel")
    assert ended.status_code == 422
    assert field_errors(ended) == {"state": "Orders in state ended can not be cancelled"}


def test_cancel_releases_the_reservation(api: Api) -> None:
    before = summary(api, 4, [1])
    order = api.order("C-1", [{"product_id": 4, "quantity": 3}])
    reserved = summary(api, 4, [1])
    assert (
        reserved["available"] == before["available"] - 3
        and reserved["unavailable"] == before["unavailable"] + 3
    )
    assert reserved["total"] == before["total"]
    assert api.post(f"/sales/orders/{order['id']}/pause").json()["state"] == "paused"
    assert summary(api, 4, [1])["available"] == before["available"]  # paused orders reserve nothing
    assert api.post(f"/sales/orders/{order['id']}/resume").json()["state"] == "queue"
    assert summary(api, 4, [1])["available"] == before["available"] - 3
    cancelled = api.post(f"/sales/orders/{order['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert summary(api, 4, [1])["available"] == before["available"]


def test_warehouse_simulator_packs_and_ships_visible_to_an_updated_at_poller(api: Api) -> None:
    order = api.order("S-1", [{"product_id": 1, "quantity": 400}, {"product_id": 2, "quantity": 1}])
    total_before = summary(api, 2, [1])["total"]
    simulator = WarehouseSimulator(api.url, seed=5, correction_probability=0)
    cursor = order["updated_at"]
    states = []
    for _ in range(3):
        time.sleep(1.05)  # let each transition land in a later second than the cursor
        simulator.step()
        seen = api.get("/sales/orders", params={"updated_at": "gt:" + cursor.replace("T", " ")}).json()
        assert [o["id"] for o in seen["sales_orders"]] == [order["id"]]
        cursor = seen["sales_orders"][0]["updated_at"]
        states.append(seen["sales_orders"][0]["state"])
    assert states == ["picking", "packing", "shipping"]

    packing = api.get("/packing/orders", params={"sales_order_id": order["id"]}).json()["packing_orders"]
    assert len(packing) == 1 and packing[0]["state"] == "closed"
    assert all(i["packed_quantity"] == i["requested_quantity"] for i in packing[0]["items"])
    boxes = api.get(f"/packing/orders/{packing[0]['id']}/boxes").json()["packing_boxes"]
    assert boxes and all(b["state"] == "closed" and b["weight"] > 0 and b["length"] > 0 for b in boxes)
    assert sum(i["quantity"] for b in boxes for i in b["items"]) == 401
    stock_adds = [
        r for r in api.control("GET", "requests") if r["endpoint"].endswith("/inventory/stocks/add")
    ]
    assert stock_adds and all(r["simulator"] for r in stock_adds)  # 400 units had to be received first

    simulator.ship_all()
    ended = api.get(f"/sales/orders/{order['id']}").json()
    assert ended["state"] == "ended" and all(i["fulfilled_quantity"] == i["quantity"] for i in ended["items"])
    assert summary(api, 2, [1])["total"] == total_before - 1
    assert api.control("GET", "stats")["total_requests"] > 0
    assert "POST /api/v1/picking/orders" not in api.control("GET", "stats")["requests"]


def test_simulator_is_deterministic(server: SimpleNamespace) -> None:
    def run() -> list[Any]:
        requests.post(server.root + "/__sandbox/reset", json={"seed": 9, "products": 60}, timeout=30)
        client = Api(server.root)
        for n in range(6):
            client.order(
                f"R-{n}", [{"product_id": 1 + n, "quantity": 1 + n % 3}, {"product_id": 7, "quantity": 2}]
            )
        sim = WarehouseSimulator(client.url, seed=42, correction_probability=0.5)
        steps = [sim.step() for _ in range(4)]
        boxes = client.get("/packing/orders/boxes/search", params={"limit": 100}).json()["packing_boxes"]
        return [
            steps,
            [(b["box_number"], b["length"], b["weight"], b["items"][0]["quantity"]) for b in boxes],
        ]

    assert run() == run()


# ---- stock -----------------------------------------------------------------------------------------


def test_summary_per_warehouse_excludes_the_other_warehouse(api: Api) -> None:
    both = summary(api, 5)  # product 5 is stocked in both warehouses (every 5th product)
    main, outer = summary(api, 5, [1]), summary(api, 5, [2])
    assert (
        outer["total"] > 0
        and main["product_id"] == "5"
        and main["sku"] == api.get("/inventory/products/5").json()["sku"]
    )
    assert both["total"] == main["total"] + outer["total"]
    api.post("/inventory/stocks/add", data={"product_id": 5, "location_id": 201, "quantity": 50})
    assert summary(api, 5, [1]) == main
    assert summary(api, 5, [2])["available"] == outer["available"] + 50
    only_second = api.get("/inventory/stocks/summary", params={"warehouse_id[]": [2], "limit": 100}).json()
    assert only_second and all(int(r["product_id"]) % 5 == 0 for r in only_second)


def test_availability_and_stock_adjustments(api: Api) -> None:
    api.order("A-1", [{"product_id": 6, "quantity": 2}])
    storage = api.get("/inventory/stocks", params={"product_id": 6, "location_id": 101}).json()["stocks"]
    quantity = storage[0]["quantity"] if storage else 0
    rows = api.get("/inventory/stocks/availability", params={"id[]": [6], "warehouse_id[]": [1]}).json()
    assert rows == [
        {"product_id": "6", "available_quantity": quantity - 2, "reception_quantity": 0, "return_quantity": 0}
    ]
    corrected = api.post(
        "/inventory/stocks/correct",
        json={"warehouse_id": 1, "items": [{"product_id": 6, "location_id": 101, "quantity": quantity + 7}]},
    )
    assert corrected.status_code == 201 and corrected.json()["items"][0]["quantity"] == quantity + 7
    assert summary(api, 6, [1])["available"] == quantity + 5
    too_much = api.post(
        "/inventory/stocks/remove", data={"product_id": 6, "location_id": 101, "quantity": quantity + 8}
    )
    assert too_much.status_code == 400
    wrong_warehouse = api.post(
        "/inventory/stocks/correct",
        json={"warehouse_id": 1, "items": [{"product_id": 6, "location_id": 201, "quantity": 1}]},
    )
    assert wrong_warehouse.status_code == 422


def test_shuffle_changes_a_deterministic_fraction(api: Api) -> None:
    before = {
        r["product_id"]: r["total"]
        for r in api.get("/inventory/stocks/summary", params={"warehouse_id[]": [1]}).json()
    }
    result = api.control("POST", "stock/shuffle", {"fraction": 0.1})
    after = {
        r["product_id"]: r["total"]
        for r in api.get("/inventory/stocks/summary", params={"warehouse_id[]": [1]}).json()
    }
    changed = sorted(int(k) for k in before if before[k] != after[k])
    assert changed == result["product_ids"] and len(changed) == round(len(before) * 0.1)


def test_200k_products_seed_fast_and_summary_pages_stay_fast(api: Api) -> None:
    started = time.perf_counter()
    result = api.control("POST", "reset", {"seed": 3, "products": 200_000, "stock": True})
    assert time.perf_counter() - started < 5
    assert result["products"] == sum(1 for i in range(200_000) if sku_for(i) and i % 50 != 49)
    started = time.perf_counter()
    rows = api.get(
        "/inventory/stocks/summary", params={"warehouse_id[]": [1], "limit": 100, "offset": 150_000}
    ).json()
    assert time.perf_counter() - started < 0.5
    assert len(rows) == 100 and rows[0]["product_id"] == "150001"
    last = api.get("/inventory/products", params={"limit": 100, "offset": result["products"] - 1}).json()
    assert last["total_results"] == result["products"] and len(last["products"]) == 1


# ---- boxes: tracking and labels --------------------------------------------------------------------


def packed_box(api: Api) -> tuple[int, int]:
    order = api.order("P-1", [{"product_id": 8, "quantity": 1}])
    WarehouseSimulator(api.url, seed=2, correction_probability=0).pack_all()
    packing = api.get("/packing/orders", params={"sales_order_id": order["id"]}).json()["packing_orders"][0]
    box = api.get(f"/packing/orders/{packing['id']}/boxes").json()["packing_boxes"][0]
    return packing["id"], box["id"]


def test_shipment_tracking_and_label_attachment(api: Api) -> None:
    po, box = packed_box(api)
    path = f"/packing/orders/{po}/boxes/{box}"
    created = api.post(
        path + "/shipment_tracking",
        json={
            "carrier_code": "dhl",
            "tracking_code": "00340434",
            "tracking_url": "https://dhl.example/00340434",
        },
    )
    assert created.status_code == 201 and created.json()["packing_box_id"] == box
    tracking_id = created.json()["id"]
    updated = api.put(
        f"{path}/shipment_tracking/{tracking_id}", json={"status": "generated", "printed": True}
    )
    assert updated.status_code == 200 and updated.json()["tracking_code"] == "00340434"
    assert api.get(path + "/shipment_tracking").json()["shipment_trackings"][0]["status"] == "generated"
    bad = api.post(path + "/shipment_tracking", json={"tracking_code": 340434})
    assert bad.status_code == 422 and field_errors(bad) == {"tracking_code": "is invalid"}
    found = api.get("/packing/orders/boxes/search", params={"tracking_code": "00340434"}).json()
    assert [b["id"] for b in found["packing_boxes"]] == [box]

    attached = api.post(
        path + "/attach",
        json={
            "filename": "label.pdf",
            "path": "labels/00340434.pdf",
            "content_type": "application/pdf",
            "type": "label",
        },
    )
    assert attached.status_code == 200 and attached.json()["packing_boxes"][0]["id"] == box
    missing = api.post(path + "/attach", json={"filename": "label.pdf"})
    assert field_errors(missing) == {"path": "can't be blank", "content_type": "can't be blank"}
    read_back = api.post("/packing/boxes/attachments", json=[box]).json()
    assert read_back[0]["packing_box_id"] == box
    attachment = read_back[0]["attachments"][0]
    assert attachment["type"] == "label" and attachment["url"].startswith(api.url + "/attachment/")
    assert (
        api.session.get(
            attachment["url"], headers={"Authorization": f"Bearer {api.token}"}, timeout=10
        ).json()["name"]
        == "label.pdf"
    )
    assert api.get(f"/packing/orders/{po}/boxes/999").status_code == 404


def test_kits(api: Api) -> None:
    kit = api.post(
        "/inventory/kits",
        json={
            "product_id": 10,
            "name": "Set",
            "items": [{"product_id": 8, "quantity": 1}, {"product_id": 9, "quantity": 2}],
        },
    )
    assert kit.status_code == 201 and [i["quantity"] for i in kit.json()["items"]] == [1, 2]
    again = api.post("/inventory/kits", json={"product_id": 10, "items": [{"product_id": 8, "quantity": 1}]})
    assert field_errors(again) == {"product_id": "has already been taken"}
    assert api.post(f"/inventory/kits/{kit.json()['id']}/deactivate").json()["active"] is False
    assert api.get("/inventory/kits", params={"product_id": 10}).json()["total_results"] == 1


# ---- contract: responses validate against the spec's schemas ---------------------------------------


def checked(
    response: requests.Response, method: str, path: str, status: int, definition: str | None = None
) -> Any:
    """Assert the status and validate the body against the spec's schema (or a named definition)."""
    assert response.status_code == status, response.text
    body = response.json()
    schema = (
        {"$ref": f"#/definitions/{definition}"}
        if definition
        else spec_support.response_schema("pulpo", method, path, status)
    )
    spec_support.validate("pulpo", body, schema)
    return body


def test_responses_follow_the_spec(api: Api) -> None:
    spec_support.load_spec("pulpo")
    checked(api.session.post(api.url + "/auth", json=AUTH_BODY, timeout=10), "POST", "/auth", 200)
    checked(api.get("/iam/users/me", token="nope"), "GET", "/iam/users/me", 401)
    checked(api.get("/iam/users/me"), "GET", "/iam/users/me", 200)
    checked(api.get("/warehouses/"), "GET", "/warehouses/", 200)
    checked(
        api.get("/shipping/shipping_methods"),
        "GET",
        "/shipping/shipping_methods",
        200,
        "ResponseList_ShippingMethod",
    )
    checked(api.get("/inventory/products", params={"limit": 3}), "GET", "/inventory/products", 200)
    product = checked(
        api.post("/inventory/products", json={"sku": "C-1", "name": "Vertrag"}),
        "POST",
        "/inventory/products",
        201,
    )
    checked(
        api.put(f"/inventory/products/{product['id']}", json={"weight": 1.5}),
        "PUT",
        "/inventory/products/{id}",
        200,
    )
    checked(api.post("/inventory/products", json={"sku": "C-1"}), "POST", "/inventory/products", 422)
    checked(
        api.post("/inventory/bulk/products", json=[{"sku": "C-2", "name": "x"}]),
        "POST",
        "/inventory/bulk/products",
        201,
    )
    checked(
        api.post("/inventory/bulk/products", json=[{"sku": "C-2", "name": "x"}]),
        "POST",
        "/inventory/bulk/products",
        400,
    )
    checked(
        api.put("/inventory/bulk/products", json=[{"id": 1, "name": "y"}]),
        "PUT",
        "/inventory/bulk/products",
        201,
    )
    order = checked(
        api.post(
            "/sales/orders",
            json={
                "order_num": "K-1",
                "warehouse_id": 1,
                "ship_to": SHIP_TO,
                "attributes": '{"billbee_order_id": 1}',
                "items": [{"product_id": 1, "quantity": 1}],
            },
        ),
        "POST",
        "/sales/orders",
        201,
    )
    checked(api.get("/sales/orders", params={"order_num": "K-1"}), "GET", "/sales/orders", 200)
    checked(api.get(f"/sales/orders/{order['id']}"), "GET", "/sales/orders/{id}", 200, "SalesOrder")
    checked(api.post("/sales/orders", json={"order_num": "K-1"}), "POST", "/sales/orders", 422)
    bulk = api.post(
        "/sales/bulk/orders",
        json=[
            {
                "order_num": "K-2",
                "warehouse_id": 1,
                "ship_to": SHIP_TO,
                "items": [{"product_id": 2, "quantity": 1}],
            },
            {
                "order_num": "K-1",
                "warehouse_id": 1,
                "ship_to": SHIP_TO,
                "items": [{"product_id": 2, "quantity": 1}],
            },
        ],
    )
    assert bulk.status_code == 400
    body = bulk.json()
    spec_support.validate(
        "pulpo",
        {"created": body["created"]},
        spec_support.response_schema("pulpo", "POST", "/sales/bulk/orders", 400),
    )
    assert body["errors"] == {"K-1": {"order_num": "has already been taken"}}
    for errors in body["errors"].values():
        spec_support.validate("pulpo", errors, {"$ref": "#/definitions/Error"})

    rows = checked(
        api.get("/inventory/stocks/summary", params={"limit": 5}), "GET", "/inventory/stocks/summary", 200
    )
    assert len(rows) == 5
    for row in api.get("/inventory/stocks/availability", params={"id[]": [1, 2]}).json():
        spec_support.validate(
            "pulpo", row, spec_support.response_schema("pulpo", "GET", "/inventory/stocks/availability", 200)
        )
    checked(api.get("/inventory/stocks", params={"product_id": 1}), "GET", "/inventory/stocks", 200)
    checked(
        api.post(
            "/inventory/stocks/correct",
            json={"warehouse_id": 1, "items": [{"product_id": 3, "location_id": 101, "quantity": 9}]},
        ),
        "POST",
        "/inventory/stocks/correct",
        201,
    )

    po, box = packed_box(api)
    checked(api.get("/packing/orders", params={"state": "closed"}), "GET", "/packing/orders", 200)
    checked(api.get(f"/packing/orders/{po}"), "GET", "/packing/orders/{id}", 200)
    checked(api.get(f"/packing/orders/{po}/boxes"), "GET", "/packing/orders/{packing_order_id}/boxes", 200)
    checked(
        api.get(f"/packing/orders/{po}/boxes/{box}"),
        "GET",
        "/packing/orders/{packing_order_id}/boxes/{box_id}",
        200,
        "PackingBox",
    )
    checked(api.get("/packing/orders/boxes/search"), "GET", "/packing/orders/boxes/search", 200)
    box_path = "/packing/orders/{packing_order_id}/boxes/{box_id}"
    tracking = checked(
        api.post(
            f"/packing/orders/{po}/boxes/{box}/shipment_tracking",
            json={"carrier_code": "dpd", "tracking_code": "1"},
        ),
        "POST",
        box_path + "/shipment_tracking",
        201,
    )
    checked(
        api.get(f"/packing/orders/{po}/boxes/{box}/shipment_tracking"),
        "GET",
        box_path + "/shipment_tracking",
        200,
    )
    checked(
        api.put(
            f"/packing/orders/{po}/boxes/{box}/shipment_tracking/{tracking['id']}", json={"status": "created"}
        ),
        "PUT",
        box_path + "/shipment_tracking/{tracking_id}",
        200,
    )
    checked(
        api.post(
            f"/packing/orders/{po}/boxes/{box}/attach",
            json={
                "filename": "l.pdf",
                "path": "https://s3.example/l.pdf",
                "content_type": "application/pdf",
                "type": "label",
            },
        ),
        "POST",
        box_path + "/attach",
        200,
    )
    checked(api.post("/packing/boxes/attachments", json=[box]), "POST", "/packing/boxes/attachments", 200)
    checked(api.post(f"/sales/orders/{order['id']}/cancel"), "POST", "/sales/orders/{id}/cancel", 200)
    kit = checked(
        api.post("/inventory/kits", json={"product_id": 20, "items": [{"product_id": 21, "quantity": 1}]}),
        "POST",
        "/inventory/kits",
        201,
        "Kit",
    )
    checked(api.get("/inventory/kits"), "GET", "/inventory/kits", 200, "ResponseList_Kit")
    assert kit["items"][0]["kit_id"] == kit["id"]
    checked(api.get("/shipping/orders"), "GET", "/shipping/orders", 200, "ResponseList_ShippingOrder")
    checked(api.get("/picking/orders"), "GET", "/picking/orders", 200)


def test_simulator_stocks_products_created_after_it_started(api: Api) -> None:
    simulator = WarehouseSimulator(api.url, seed=11, correction_probability=0)
    time.sleep(1.05)  # the simulator treats products of its own start second as old
    created = [
        api.post("/inventory/products", json={"sku": f"NEU-{n}", "name": "Neu"}).json()["id"]
        for n in range(12)
    ]
    assert api.get("/inventory/stocks/summary", params={"product_id[]": created}).json() == []

    done = simulator.step()
    stock_adds = [
        r for r in api.control("GET", "requests") if r["endpoint"].endswith("/inventory/stocks/add")
    ]
    assert done["received"] == len(stock_adds) > 0
    rows = api.get("/inventory/stocks/summary", params={"product_id[]": created}).json()
    assert {int(r["product_id"]) for r in rows} <= set(created) and any(r["total"] > 0 for r in rows)
    assert summary(api, 1)["last_movement"] < rows[0]["last_movement"]  # seeded products got nothing
    assert simulator.step()["received"] == 0  # a first delivery happens once
