"""The products flow respects what PULPO and the warehouse hold, over HTTP against the sandboxes:

- barcodes the warehouse added to a PULPO product survive product updates (merged with the Billbee
  EAN, never wiped), whichever way PULPO applies `barcodes` on an update (sandbox knob);
- a Billbee product deleted while the catalogue is being paged shifts the later pages; the scan notices
  and reads again, so only the deleted product is deactivated in PULPO.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.mapping.products import fingerprint_without_barcodes, holds_payload, merged_barcodes
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.sandboxes.catalog import billbee_product_id, catalog_item, ean13, sku_for
from billbee_pulpo_pipeline.sandboxes.runner import serve_in_thread
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, SANDBOX_ORDERS, SANDBOX_PRODUCTS

GROUP = "produkte"
PRODUCT_KIND = "product:billbee_shop:pulpo_wms"
ACKNOWLEDGED = f"{GROUP}.pulpo_products_acknowledged"


@pytest.fixture
def world(sandbox):
    yield sandbox
    sandbox.reset("billbee", products=SANDBOX_PRODUCTS, orders=SANDBOX_ORDERS)
    sandbox.reset("pulpo", products=0)  # also restores the behaviour knobs


def materialize(home: Path) -> dg.ExecuteInProcessResult:
    config = load_config(EXAMPLE_CONFIG)
    return dg.materialize(list(build_definitions(config, home).assets), selection=dg.AssetSelection.groups(GROUP),
                          resources=build_resources(config, home), raise_on_error=False)


def meta(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def pulpo(sandbox, tmp_path: Path) -> PulpoClient:
    return PulpoClient(sandbox.pulpo_url, credentials.PULPO_USERNAME, credentials.PULPO_PASSWORD,
                       warehouse_id=1, token_dir=tmp_path / "test-tokens")


def by_sku(client: PulpoClient) -> dict[str, Any]:
    return {p.sku: p for p in client.iter_products()}


def billbee_session() -> requests.Session:
    session = requests.Session()
    session.auth = (credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD)
    session.headers.update({"X-Billbee-Api-Key": credentials.BILLBEE_API_KEY, **credentials.SIMULATOR_HEADERS})
    return session


def warehouse_adds_barcodes(sandbox, product_id: int, codes: list[str]) -> None:
    """The warehouse scans extra barcodes onto a product in PULPO's UI (here: its API, as the simulator)."""
    session = requests.Session()
    session.headers.update(credentials.SIMULATOR_HEADERS)
    token = session.post(f"{sandbox.pulpo_url}/auth", json={
        "grant_type": "password", "username": credentials.PULPO_USERNAME,
        "password": credentials.PULPO_PASSWORD, "scope": "general"}, timeout=30).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    current = session.get(f"{sandbox.pulpo_url}/inventory/products/{product_id}", timeout=30).json()["barcodes"]
    session.put(f"{sandbox.pulpo_url}/inventory/products/{product_id}", json={"barcodes": current + codes},
                timeout=30).raise_for_status()


def test_barcode_merge_rule():
    assert merged_barcodes(["4001", "WH-1"], ["4002"], ["4001"]) == ["WH-1", "4002"]  # ours replaced
    assert merged_barcodes(["4001", "WH-1"], ["4001"], ["4001"]) == ["4001", "WH-1"]
    assert merged_barcodes(["4001", "WH-1"], ["4002"], []) == ["4001", "WH-1", "4002"]  # not known as ours: kept
    assert merged_barcodes([{"code": "WH-1"}], [], ["4001"]) == ["WH-1"]                # EAN removed in Billbee
    payload = {"sku": "A", "name": "x", "barcodes": ["4001"]}
    fingerprint = fingerprint_without_barcodes({**payload, "barcodes": ["WH-1", "4001"], "id": 3})
    assert holds_payload(fingerprint, ["WH-1", "4001"], payload)
    assert not holds_payload(fingerprint, ["WH-1"], payload)


@pytest.mark.parametrize("on_update", ["replace", "merge"])
def test_updates_keep_the_barcodes_the_warehouse_added(world, bpp_env, tmp_path, on_update):
    world.reset("billbee", products=60, orders=20)
    world.reset("pulpo", products=0)
    world.control("PUT", "pulpo", "behaviour", {"product_barcodes_on_update": on_update})
    home = Path(bpp_env["BPP_HOME"])
    assert materialize(home).success
    client = pulpo(world, tmp_path)
    before = by_sku(client)
    warehouse_adds_barcodes(world, before[sku_for(20)].id, ["WH-20-A", "WH-20-B"])
    warehouse_adds_barcodes(world, before[sku_for(21)].id, ["WH-21"])
    old_ean, new_ean = catalog_item(1, 20).ean, ean13(987654320)
    session = billbee_session()
    for index, body in ((20, {"EAN": new_ean}), (21, {"Weight": 4321})):
        session.patch(f"{world.billbee_url}/products/{billbee_product_id(index)}", json=body,
                      timeout=30).raise_for_status()
    world.reset_stats("pulpo")

    result = materialize(home)
    assert result.success and meta(result, "pulpo_products")["updated"] == 2
    [put] = [r for r in world.requests("pulpo") if r["endpoint"] == "PUT /api/v1/inventory/bulk/products"]
    rows = {row["sku"]: row for row in put["body"]}
    assert rows[sku_for(20)]["barcodes"] == ["WH-20-A", "WH-20-B", new_ean]
    assert "barcodes" not in rows[sku_for(21)]  # the EAN did not change: PULPO's list is left alone
    reads = [r for r in world.requests("pulpo") if r["endpoint"] == "GET /api/v1/inventory/products"]
    assert len(reads) == 1 and ("id[]", str(before[sku_for(20)].id)) in [tuple(q) for q in reads[0]["query"]]
    after = by_sku(client)
    expected_20 = ["WH-20-A", "WH-20-B", new_ean] if on_update == "replace" else [old_ean, "WH-20-A", "WH-20-B",
                                                                                    new_ean]
    assert after[sku_for(20)].barcodes == expected_20  # merge: PULPO itself keeps the previous EAN (README)
    assert after[sku_for(21)].barcodes == [catalog_item(1, 21).ean, "WH-21"]
    assert after[sku_for(21)].weight == pytest.approx(4.321)

    # Lost records: the product is found by SKU holding more barcodes than ours, and adopted unchanged.
    store, key = StateStore(home), str(billbee_product_id(21))
    store.delete_mapping(PRODUCT_KIND, key)
    store.delete_snapshot_rows(ACKNOWLEDGED, [key])
    world.reset_stats("pulpo")
    again = materialize(home)
    assert again.success and meta(again, "pulpo_products")["adopted"] == 1
    assert not [r for r in world.requests("pulpo") if r["method"] in ("POST", "PUT") and not r["simulator"]
                and not r["path"].endswith("/auth")]


def test_a_product_deleted_during_the_scan_deactivates_only_itself(world, bpp_env, tmp_path):
    world.reset("billbee", products=700, orders=20)  # three pages of 250
    world.reset("pulpo", products=0)
    home = Path(bpp_env["BPP_HOME"])
    first = materialize(home)
    assert first.success and meta(first, "billbee_products")["scan_rereads"] == 0
    # The merchant deletes article 100 in Billbee while the next scan is between its pages 1 and 2: every
    # later product moves up one place, so article 250 slides onto page 1, which was read already.
    world.control("PUT", "billbee", "products/delete_during_scan",
                  {"product_id": billbee_product_id(100), "after_page": 1})
    world.reset_stats("billbee")

    result = materialize(home)
    assert result.success
    snapshot = meta(result, "billbee_products")
    assert snapshot["scan_rereads"] == 1 and snapshot["removed"] == 1 and snapshot["total"] == 699
    assert meta(result, "pulpo_products")["deactivated"] == 1
    inactive = {sku for sku, product in by_sku(pulpo(world, tmp_path)).items() if not product.active}
    assert inactive == {sku_for(100)}
    pages = [r for r in world.requests("billbee") if r["endpoint"] == "GET /api/v1/products" and not r["simulator"]]
    assert len(pages) == 2 + 3  # the shifted pass stopped at page 2, the second pass read all three
    assert world.control("GET", "billbee", "summary")["deleted_products"] == 1
    gone = billbee_session().get(f"{world.billbee_url}/products/{billbee_product_id(100)}", timeout=30)
    assert gone.status_code == 404


def test_barcode_read_copes_with_a_pulpo_that_ignores_the_id_list(tmp_path):
    """`products_by_id` sends `id[]=..`; a PULPO that ignores it answers with the whole catalogue. The
    client notices the first product it did not ask for and reads the wanted ones one by one instead of
    paging through every product."""
    catalogue = [{"id": i, "sku": f"S-{i}", "barcodes": [f"B-{i}"]} for i in range(1, 251)]
    calls: list[str] = []

    async def auth(_: Request) -> Response:
        return JSONResponse({"access_token": "t", "expires_in": 3600, "token_type": "bearer"})

    async def products(request: Request) -> Response:
        calls.append("list")
        offset, limit = int(request.query_params.get("offset", 0)), int(request.query_params.get("limit", 10))
        return JSONResponse({"products": catalogue[offset:offset + limit], "total_results": len(catalogue)})

    async def product(request: Request) -> Response:
        calls.append("one")
        return JSONResponse(catalogue[int(request.path_params["id"]) - 1])

    url, stop = serve_in_thread(Starlette(routes=[
        Route("/api/v1/auth", auth, methods=["POST"]), Route("/api/v1/inventory/products", products),
        Route("/api/v1/inventory/products/{id:int}", product)]))
    try:
        client = PulpoClient(url + "/api/v1", "u", "p", token_dir=tmp_path / "tokens")
        found = client.products_by_id([120, 7])
    finally:
        stop.set()
    assert {pid: p.barcodes for pid, p in found.items()} == {7: ["B-7"], 120: ["B-120"]}
    assert calls == ["list", "one", "one"]
