"""The products flow (Billbee → PULPO) end to end over HTTP against the sandboxes, through Dagster's
`materialize` and through `billbee-pulpo sync` in a subprocess.

Each test starts from its own small world: 120 Billbee products (index 96 has no SKU; 49 and 99 are
bundles of the two products before them) and an empty PULPO tenant.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dagster as dg
import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient
from billbee_pulpo_pipeline.clients.billbee.models import LeanProduct
from billbee_pulpo_pipeline.clients.http import ApiError, RequestRejectedError, TransientApiError
from billbee_pulpo_pipeline.clients.pulpo import PulpoClient
from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.mapping.products import (
    kit_quantity,
    product_fields,
    pulpo_fingerprint,
    pulpo_product_payload,
)
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.sandboxes.catalog import billbee_product_id, catalog_item, ean13, sku_for
from billbee_pulpo_pipeline.sandboxes.runner import serve_in_thread
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT, SANDBOX_ORDERS, SANDBOX_PRODUCTS

PRODUCTS = 120
LINKABLE = PRODUCTS - 1          # index 96 has no SKU
BUNDLES = (49, 99)
GROUP = "produkte"
PRODUCT_KIND = "product:billbee_shop:pulpo_wms"
WRITES = ("POST", "PUT", "DELETE", "PATCH")


@pytest.fixture
def world(sandbox):
    sandbox.reset("billbee", products=PRODUCTS, orders=20)
    sandbox.reset("pulpo", products=0)
    yield sandbox
    sandbox.reset("billbee", products=SANDBOX_PRODUCTS, orders=SANDBOX_ORDERS)
    sandbox.reset("pulpo", products=0)


def materialize(home: Path, config_path: Path = EXAMPLE_CONFIG, selection: dg.AssetSelection | None = None,
                **kwargs) -> dg.ExecuteInProcessResult:
    config = load_config(config_path)
    defs = build_definitions(config, home)
    return dg.materialize(list(defs.assets), selection=selection or dg.AssetSelection.groups(GROUP),
                          resources=build_resources(config, home), raise_on_error=False, **kwargs)


def meta(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    return {e.event_specific_data.check_name: e.event_specific_data for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def sync_cli(env: dict[str, str], *names: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", *names, "--json"],
                            env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pulpo_writes(sandbox) -> dict[str, int]:
    """Requests that changed PULPO's inventory (products, kits) since the last stats reset."""
    return {label: n for label, n in sandbox.stats("pulpo")["requests"].items()
            if label.split(" ")[0] in WRITES and "/inventory/" in label}


def pulpo_client(sandbox, tmp_path: Path) -> PulpoClient:
    return PulpoClient(sandbox.pulpo_url, credentials.PULPO_USERNAME, credentials.PULPO_PASSWORD,
                       warehouse_id=1, token_dir=tmp_path / "test-tokens")


def pulpo_by_sku(client: PulpoClient) -> dict[str, list]:
    found: dict[str, list] = {}
    for product in client.iter_products():
        found.setdefault(product.sku, []).append(product)
    return found


def patch_billbee(sandbox, index: int, body: dict) -> None:
    response = requests.patch(f"{sandbox.billbee_url}/products/{billbee_product_id(index)}", json=body,
                              auth=(credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD),
                              headers={"X-Billbee-Api-Key": credentials.BILLBEE_API_KEY,
                                       **credentials.SIMULATOR_HEADERS}, timeout=10)
    response.raise_for_status()


def titles(de: str, en: str) -> dict:
    return {"Title": [{"Text": de, "LanguageCode": "DE"}, {"Text": en, "LanguageCode": "EN"}]}


def test_initial_import_then_noop_resync(world, bpp_env, tmp_path):
    home = Path(bpp_env["BPP_HOME"])
    first = materialize(home)
    assert first.success
    snapshot, written = meta(first, "billbee_products"), meta(first, "pulpo_products")
    assert snapshot["total"] == PRODUCTS and snapshot["quarantined"] == 1 and snapshot["new"] == LINKABLE
    assert written["created"] == LINKABLE and written["kits_created"] == len(BUNDLES)
    assert written["quarantined"] == 0 and written["records_written"] == LINKABLE + len(BUNDLES)
    assert checks(first)["snapshot_plausible"].passed and checks(first)["all_products_accounted_for"].passed

    client = pulpo_client(world, tmp_path)
    by_sku = pulpo_by_sku(client)
    assert len(by_sku) == LINKABLE and all(len(found) == 1 for found in by_sku.values())
    assert sku_for(96) is None
    item, [product] = catalog_item(1, 7), by_sku[sku_for(7)]
    assert product.name == item.title_de  # German title (with its emoji), not the English one
    assert product.barcodes == [item.ean]
    assert product.weight == pytest.approx(item.weight_g / 1000)  # Billbee grams → PULPO kg
    assert (product.length, product.width, product.height) == (item.length_cm, item.width_cm, item.height_cm)
    assert (product.hs_code, product.origin_country, product.active) == (item.taric, item.country_of_origin, True)
    assert product.attributes_dict == {"billbee_id": str(billbee_product_id(7))}  # 17 digits, as text

    store = StateStore(home)
    mapping = store.mappings(PRODUCT_KIND)
    assert len(mapping) == LINKABLE and mapping[str(billbee_product_id(7))] == str(product.id)
    assert store.get_mapping(PRODUCT_KIND, billbee_product_id(7)).extra == {"sku": sku_for(7)}
    [unlinkable] = store.quarantine_list(GROUP, kind="product")
    assert unlinkable.record_key == str(billbee_product_id(96)) and "no SKU" in unlinkable.reason

    kits = {k.product_id: k for k in client.iter_kits(active=True)}
    bundle = kits[by_sku[sku_for(49)][0].id]
    assert sorted((i.product_id, i.quantity) for i in bundle.items) == sorted(
        [(by_sku[sku_for(47)][0].id, 1), (by_sku[sku_for(48)][0].id, 2)])

    world.reset_stats("pulpo")
    second = materialize(home)
    assert second.success
    assert pulpo_writes(world) == {}
    assert world.stats("pulpo")["total_requests"] == 0  # nothing changed: PULPO is not even asked
    again = meta(second, "pulpo_products")
    assert again["unchanged"] == LINKABLE and again["records_written"] == 0 and again["pulpo_calls"] == 0


def test_title_and_ean_change_update_each_product_once(world, bpp_env, tmp_path):
    home = Path(bpp_env["BPP_HOME"])
    assert materialize(home).success
    new_ean = ean13(987654321)
    patch_billbee(world, 10, titles("Teekanne neu ✨ Größe L", catalog_item(1, 10).title_en))
    patch_billbee(world, 20, {"EAN": new_ean})
    patch_billbee(world, 30, titles(catalog_item(1, 30).title_de, "English only"))  # not sent to PULPO
    world.reset_stats("pulpo")

    result = materialize(home)
    assert result.success
    assert meta(result, "billbee_products")["changed"] == 3
    assert meta(result, "pulpo_products")["updated"] == 2
    assert pulpo_writes(world) == {"PUT /api/v1/inventory/bulk/products": 1}
    [put] = [r for r in world.requests("pulpo") if r["endpoint"] == "PUT /api/v1/inventory/bulk/products"]
    assert sorted(row["sku"] for row in put["body"]) == [sku_for(10), sku_for(20)]

    by_sku = pulpo_by_sku(pulpo_client(world, tmp_path))
    assert by_sku[sku_for(10)][0].name == "Teekanne neu ✨ Größe L"
    assert by_sku[sku_for(20)][0].barcodes == [new_ean]
    assert by_sku[sku_for(30)][0].name == catalog_item(1, 30).title_de


def test_refused_product_quarantined_rest_written_and_bundle_waits_for_component(world, bpp_env, tmp_path):
    """Through `billbee-pulpo sync`: PULPO refuses a product without any title ("name can't be
    blank"); the bundle built from it waits, and both recover by themselves once Billbee is fixed."""
    home = Path(bpp_env["BPP_HOME"])
    patch_billbee(world, 48, titles("", ""))
    done = sync_cli(bpp_env, "Produkte")
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err[-2000:]
    [summary] = json.loads(out)["integrations"]
    assert summary["status"] == "success" and summary["quarantined"] == 3  # no SKU, no name, waiting bundle

    client = pulpo_client(world, tmp_path)
    by_sku = pulpo_by_sku(client)
    assert len(by_sku) == LINKABLE - 1 and sku_for(48) not in by_sku and sku_for(49) in by_sku
    store = StateStore(home)
    parked = {q.record_key: q for q in store.quarantine_list(GROUP, kind="product_pulpo")}
    assert "name: can't be blank" in parked[str(billbee_product_id(48))].reason
    assert f"waiting for component SKU {sku_for(48)}" in parked[str(billbee_product_id(49))].reason
    assert [k.product_id for k in client.iter_kits(active=True)] == [by_sku[sku_for(99)][0].id]

    world.reset_stats("pulpo")
    unchanged = materialize(home)
    assert unchanged.success and checks(unchanged)["all_products_accounted_for"].passed  # quarantined counts
    assert pulpo_writes(world) == {}  # the refused product is not sent again while it is unchanged

    patch_billbee(world, 48, titles("Schürze repariert", "Apron"))
    fixed = materialize(home)
    assert fixed.success
    assert meta(fixed, "pulpo_products")["created"] == 1 and meta(fixed, "pulpo_products")["kits_created"] == 1
    assert meta(fixed, "pulpo_products")["quarantined"] == 0
    assert len(list(client.iter_kits(active=True))) == 2
    assert store.quarantine_list(GROUP, kind="product_pulpo") == []


def test_lost_records_are_matched_by_sku_not_created_twice(world, bpp_env, tmp_path):
    """Products in PULPO whose mapping and acknowledgement were lost (a crash after the write):
    a few are looked up by `?sku=`, many by one listing; none is created again or rewritten."""
    home = Path(bpp_env["BPP_HOME"])
    assert materialize(home).success
    store = StateStore(home)
    few = [str(billbee_product_id(i)) for i in (1, 2, 3, 49)]
    for key in few:
        store.delete_mapping(PRODUCT_KIND, key)
    store.delete_snapshot_rows(f"{GROUP}.pulpo_products_acknowledged", few)
    world.reset_stats("pulpo")
    result = materialize(home)
    assert result.success and meta(result, "pulpo_products")["adopted"] == len(few)
    assert pulpo_writes(world) == {}  # PULPO already holds exactly this content, kit included
    assert world.stats("pulpo")["requests"]["GET /api/v1/inventory/products"] == len(few)

    store.delete_snapshot(f"{GROUP}.pulpo_products_acknowledged")
    for key in list(store.mappings(PRODUCT_KIND)):
        store.delete_mapping(PRODUCT_KIND, key)
    world.reset_stats("pulpo")
    result = materialize(home)
    assert result.success and meta(result, "pulpo_products")["adopted"] == LINKABLE
    assert checks(result)["all_products_accounted_for"].passed
    assert pulpo_writes(world) == {}
    assert world.stats("pulpo")["requests"]["GET /api/v1/inventory/products"] == 2  # 119 rows, 100 a page
    by_sku = pulpo_by_sku(pulpo_client(world, tmp_path))
    assert len(by_sku) == LINKABLE and all(len(found) == 1 for found in by_sku.values())
    assert len(store.mappings(PRODUCT_KIND)) == LINKABLE


def test_sync_killed_between_write_and_record_leaves_no_duplicate(world, bpp_env, tmp_path):
    """SIGKILL a `billbee-pulpo sync` after PULPO executed its first bulk create and before the run
    recorded anything (records are written per group of bulk calls): the next run creates no duplicate."""
    home = Path(bpp_env["BPP_HOME"])
    world.set_faults("pulpo", slow_rate=1.0, slow_seconds=1.0)  # PULPO answers late: time to aim the kill
    process = sync_cli(bpp_env, "Produkte")
    deadline = time.time() + 60
    while world.stats("pulpo")["requests"].get("POST /api/v1/inventory/bulk/products", 0) < 2:
        assert process.poll() is None and time.time() < deadline, "the sync never sent a second bulk create"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # the first create is done, the second in flight, nothing recorded
    process.communicate(timeout=30)
    world.set_faults("pulpo", slow_rate=0.0)
    time.sleep(1.5)  # let PULPO finish what it received
    client = pulpo_client(world, tmp_path)
    created_before = len(pulpo_by_sku(client))
    assert created_before in (100, LINKABLE)  # the first call surely ran; the second, if PULPO read it
    store = StateStore(home)
    assert store.mappings(PRODUCT_KIND) == {}
    assert [e.action for e in store.ledger_entries(GROUP, status="pending")] == ["create_products"]

    world.reset_stats("pulpo")
    rerun = sync_cli(bpp_env, "Produkte")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err[-2000:]
    by_sku = pulpo_by_sku(client)
    assert len(by_sku) == LINKABLE and all(len(found) == 1 for found in by_sku.values())
    creates = [r for r in world.requests("pulpo") if r["endpoint"] == "POST /api/v1/inventory/bulk/products"]
    assert sum(len(r["body"]) for r in creates) == LINKABLE - created_before  # only what never ran
    assert len(store.mappings(PRODUCT_KIND)) == LINKABLE
    # The complete pass closed the killed run's entry (found by the chaos run: it stayed 'pending' for 15 min).
    assert store.ledger_entries(GROUP, status="pending") == []
    [closed] = [e for e in store.ledger_entries(GROUP, status="failed") if e.action == "create_products"]
    assert "interrupted" in (closed.message or "")


def test_dry_run_previews_and_writes_nothing(world, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    result = materialize(home, run_config={"ops": {f"{GROUP}__products": {"config": {"dry_run": True}}}})
    assert result.success
    planned = meta(result, "pulpo_products")
    assert planned["dry_run"] is True and planned["created"] == LINKABLE and planned["records_written"] == 0
    assert planned["kits_created"] == len(BUNDLES)
    assert not checks(result)["all_products_accounted_for"].passed  # honest: nothing is in PULPO yet
    assert sku_for(5) in planned["plan_preview"]
    assert pulpo_writes(world) == {}
    assert world.control("GET", "pulpo", "world")["products"] == 0
    store = StateStore(home)
    assert store.mappings(PRODUCT_KIND) == {} and store.ledger_entries(GROUP) == []
    assert store.snapshot_keys(f"{GROUP}.pulpo_products_acknowledged") == set()


def test_blocking_check_stops_mass_deactivation_and_removed_products_are_deactivated(world, bpp_env, tmp_path):
    home = Path(bpp_env["BPP_HOME"])
    assert materialize(home).success

    world.reset("billbee", products=40, orders=20)  # Billbee "forgets" two thirds of the catalogue
    world.reset_stats("pulpo")
    blocked = materialize(home)
    assert not blocked.success
    check = checks(blocked)["snapshot_plausible"]
    assert not check.passed and "deactivate more than half" in check.description
    assert "pulpo_products" not in {e.asset_key.path[-1] for e in blocked.get_asset_materialization_events()}
    assert world.stats("pulpo")["total_requests"] == 0

    world.reset("billbee", products=PRODUCTS - 5, orders=20)  # five products really deleted
    result = materialize(home)
    assert result.success and meta(result, "pulpo_products")["deactivated"] == 5
    by_sku = pulpo_by_sku(pulpo_client(world, tmp_path))
    removed = {sku_for(i) for i in range(PRODUCTS - 5, PRODUCTS)}
    assert {sku for sku, [p] in by_sku.items() if not p.active} == removed
    acknowledged = StateStore(home).snapshot_keys(f"{GROUP}.pulpo_products_acknowledged")
    assert len(acknowledged) == LINKABLE - 5


def test_changed_bill_of_material_replaces_the_kit(world, bpp_env, tmp_path):
    """PULPO kits cannot be updated: a changed bill of material deactivates the kit and creates a new
    one (the change is made in the stored snapshot; the sandbox cannot edit a bill of material)."""
    home = Path(bpp_env["BPP_HOME"])
    assert materialize(home).success
    client = pulpo_client(world, tmp_path)
    [old_kit] = [k for k in client.iter_kits(active=True) if k.product_id == pulpo_by_sku(client)[sku_for(49)][0].id]
    store, dataset, key = StateStore(home), f"{GROUP}.billbee_products", str(billbee_product_id(49))
    fields = json.loads(store.snapshot_rows(dataset, [key])[key])
    fields["bill_of_material"][1]["amount"] = 3.0
    store.upsert_snapshot(dataset, [(key, "bill-of-material-changed", json.dumps(fields))])
    world.reset_stats("pulpo")

    writer_only = dg.AssetSelection.assets(dg.AssetKey([GROUP, "pulpo_products"]))
    result = materialize(home, selection=writer_only)
    assert result.success
    written = meta(result, "pulpo_products")
    assert (written["updated"], written["kits_deactivated"], written["kits_created"]) == (0, 1, 1)
    by_sku = pulpo_by_sku(client)
    [new_kit] = [k for k in client.iter_kits(active=True) if k.product_id == by_sku[sku_for(49)][0].id]
    assert new_kit.id != old_kit.id
    assert [k.active for k in client.iter_kits(id=old_kit.id)] == [False]
    assert sorted((i.product_id, i.quantity) for i in new_kit.items) == sorted(
        [(by_sku[sku_for(47)][0].id, 1), (by_sku[sku_for(48)][0].id, 3)])


def test_settings_skip_bundles_and_leave_removed_products(world, bpp_env, tmp_path):
    config = tmp_path / "integrations.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text(encoding="utf-8").replace(
        "# deactivate_removed: true", "deactivate_removed: false").replace("# bundles: kit", "bundles: skip"),
        encoding="utf-8")
    home = Path(bpp_env["BPP_HOME"])
    first = materialize(home, config)
    assert first.success
    written = meta(first, "pulpo_products")
    assert (written["created"], written["kits_created"], written["records_skipped"]) == (LINKABLE - 2, 0, 2)
    assert checks(first)["all_products_accounted_for"].passed  # skipped bundles are accounted for
    client = pulpo_client(world, tmp_path)
    assert not {sku_for(i) for i in BUNDLES} & set(pulpo_by_sku(client))

    world.reset("billbee", products=PRODUCTS - 5, orders=20)
    world.reset_stats("pulpo")
    second = materialize(home, config)
    assert second.success and meta(second, "pulpo_products")["left_removed"] == 5
    assert pulpo_writes(world) == {}
    assert all(p.active for found in pulpo_by_sku(client).values() for p in found)
    [left] = StateStore(home).ledger_entries(GROUP, status="skipped")
    assert left.action == "leave_removed" and left.outcome == {"count": 5}


def billbee_client(url: str, rate: float = 0, retries: int = 0) -> BillbeeClient:
    return BillbeeClient(url, credentials.BILLBEE_USERNAME, credentials.BILLBEE_API_PASSWORD,
                         credentials.BILLBEE_API_KEY, rate_per_endpoint=rate, rate_per_user=rate,
                         max_retries=retries)


def test_lean_product_pages_match_the_full_models(world):
    client = billbee_client(world.billbee_url, rate=2)  # the session sandbox throttles like Billbee
    full = [p for page in client.iter_product_pages(page_size=60) for p in page.items]
    lean = [p for page in client.iter_product_pages_lean(page_size=60) for p in page.items]
    assert len(lean) == len(full) == PRODUCTS
    for a, b in zip(full, lean, strict=True):
        assert (a.Id, a.SKU, a.EAN, a.Weight, a.TaricNumber) == (b.Id, b.SKU, b.EAN, b.Weight, b.TaricNumber)
        assert [(t.Text, t.LanguageCode) for t in a.Title] == [(t.Text, t.LanguageCode) for t in b.Title]
        assert [(m.ArticleId, m.Amount) for m in a.BillOfMaterial or []] == [
            (m.ArticleId, m.Amount) for m in b.BillOfMaterial or []]


@pytest.mark.parametrize(("body", "content_type", "error"), [
    (b'{"ErrorCode": 1, "ErrorMessage": "API not activated", "Data": null}', "application/json",
     RequestRejectedError),
    (b"<html><title>Maintenance</title></html>", "text/html", TransientApiError),
    (b'{"Data": [{"Id": 2.0000000000001e16, "SKU": "A"}], "Paging": {"TotalPages": 1}}', "application/json",
     ApiError),  # a float id has lost digits: refused (naming the field), never rounded
    (b'{"Data": {"Id": 1}}', "application/json", TransientApiError),
])
def test_lean_product_pages_keep_the_envelope_checks(body, content_type, error):
    async def products(_: Request) -> Response:
        return Response(body, media_type=content_type)

    url, stop = serve_in_thread(Starlette(routes=[Route("/api/v1/products", products)]))
    try:
        with pytest.raises(error):
            list(billbee_client(url + "/api/v1").iter_product_pages_lean())
    finally:
        stop.set()


def test_lean_product_pages_read_a_bare_list_and_string_ids():
    async def products(_: Request) -> Response:
        return Response(b'[{"Id": "20000000000001234", "SKU": 42, "Title": [{"Text": "x"}]}]',
                        media_type="application/json")

    url, stop = serve_in_thread(Starlette(routes=[Route("/api/v1/products", products)]))
    try:
        [page] = list(billbee_client(url + "/api/v1").iter_product_pages_lean())
    finally:
        stop.set()
    [product] = page.items
    assert (str(product.Id), product.SKU) == ("20000000000001234", "42")


def test_lean_product_pages_read_a_cut_off_page_again():
    calls = []
    page = b'{"ErrorCode": 0, "Data": [{"Id": 20000000000001000, "SKU": "A"}], "Paging": {"TotalPages": 1}}'

    async def broken() -> AsyncIterator[bytes]:
        yield page[:40]
        raise ConnectionResetError("the connection ends mid-body")

    async def products(_: Request) -> Response:
        calls.append(1)
        if len(calls) == 1:
            return StreamingResponse(broken(), media_type="application/json")
        return Response(page, media_type="application/json")

    url, stop = serve_in_thread(Starlette(routes=[Route("/api/v1/products", products)]))
    try:
        client = billbee_client(url + "/api/v1", retries=2)
        [result] = list(client.iter_product_pages_lean())
    finally:
        stop.set()
    assert [p.SKU for p in result.items] == ["A"] and len(calls) == 2
    assert client.stats.snapshot()["calls"] == 2


def test_payload_mapping_falls_back_and_leaves_unknown_values_out():
    product = LeanProduct.model_validate({
        "Id": 20000000000009999, "SKU": " X-1 ", "EAN": "", "Weight": 0, "LengthCm": 12.5, "WidthCm": 0,
        "Title": [{"Text": "", "LanguageCode": "DE"}, {"Text": "Apron", "LanguageCode": "EN"}],
        "CountryOfOrigin": "de", "IsDeactivated": True})
    payload = pulpo_product_payload(product_fields(product, "de"))
    assert payload == {"sku": "X-1", "name": "Apron", "barcodes": [], "length": 12.5, "origin_country": "DE",
                       "attributes": '{"billbee_id":"20000000000009999"}', "active": False}
    pulpo_record = {**payload, "id": 7, "barcodes": [], "attributes": '{ "billbee_id": "20000000000009999" }',
                    "weight": None, "length": 12.50, "description": "kept by PULPO"}
    assert pulpo_fingerprint(pulpo_record) == pulpo_fingerprint(payload)  # no write needed
    assert pulpo_fingerprint({**pulpo_record, "name": "Schürze"}) != pulpo_fingerprint(payload)
    assert [kit_quantity(a) for a in (1.0, 2, 1.5, 0, None)] == [1, 2, None, None, None]


def test_products_reach_pulpo_while_later_pages_are_still_being_read(world, bpp_env, tmp_path):
    """Write-behind: the snapshot waits for Billbee's 2 requests/s between its 250-product pages and
    the writer uses that time: the first bulk create comes before the last page, and no SKU twice."""
    world.reset("billbee", products=700, orders=20)  # three pages
    assert materialize(Path(bpp_env["BPP_HOME"])).success
    pages = [r["at"] for r in world.requests("billbee") if r["endpoint"] == "GET /api/v1/products"
             and not r["simulator"]]
    creates = [r["at"] for r in world.requests("pulpo") if r["endpoint"] == "POST /api/v1/inventory/bulk/products"]
    assert len(pages) == 3 and creates
    assert min(creates) < max(pages)
    by_sku = pulpo_by_sku(pulpo_client(world, tmp_path))
    assert len(by_sku) > 600 and all(len(found) == 1 for found in by_sku.values())
