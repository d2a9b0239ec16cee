"""Order lines by their Billbee article, and bundles as their parts (issue 11, points 3 and 4), end to end
over HTTP against the sandboxes through Dagster's `materialize` and `billbee-pulpo sync`.

World: 120 Billbee articles (index 96 has no SKU, so the products flow cannot link it; 49 is a bundle of
47 × 1 and 48 × 2), PULPO seeded with the same catalogue and stock. The products flow runs first; orders
are created in the Billbee sandbox with a linked article (`Product.BillbeeId`) and the SKU the
marketplace sold it under.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from billbee_pulpo_pipeline.clients.billbee.states import DEFAULT_RESERVING_STATES
from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.sandboxes.billbee.data import MARKETPLACE_SKU_PREFIX
from billbee_pulpo_pipeline.sandboxes.catalog import BILLBEE_ID_BASE, billbee_product_id, catalog_item, sku_for
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT, SANDBOX_ORDERS, SANDBOX_PRODUCTS
from billbee_pulpo_pipeline_tests.test_orders_writing import Shop, by_external, hour_key, pulpo_orders
from billbee_pulpo_pipeline_tests.test_stock_flow import Billbee, Pulpo

PRODUCTS = 120
PRODUCTS_GROUP, ORDERS_GROUP, STOCK_GROUP = "produkte", "verkaufsauftraege", "lagerbestand"
PRODUCT_KIND, KIT_KIND = "product:billbee_shop:pulpo_wms", "kit:billbee_shop:pulpo_wms"
BUNDLE, PARTS = 49, ((47, 1), (48, 2))
NO_SKU = 96
PAID, ORDERED = 3, 1


@pytest.fixture
def world(sandbox):
    sandbox.reset("billbee", products=PRODUCTS, orders=0)
    sandbox.reset("pulpo", products=PRODUCTS, stock=True)
    yield sandbox
    sandbox.reset("billbee", products=SANDBOX_PRODUCTS, orders=SANDBOX_ORDERS)
    sandbox.reset("pulpo", products=0)


def config_with(tmp_path: Path, *, orders_bundles: str | None = None, products_bundles: str | None = None) -> Path:
    """The example config with the `bundles` settings of the products and sales-orders entries set."""
    text = EXAMPLE_CONFIG.read_text()
    if products_bundles:
        text = re.sub(r"# bundles: kit .*", f"bundles: {products_bundles}", text, count=1)
    if orders_bundles:
        text = re.sub(r"# bundles: components .*", f"bundles: {orders_bundles}", text, count=1)
    path = tmp_path / "integrations.yaml"
    path.write_text(text)
    return path


def materialize(home: Path, group: str, config: Path = EXAMPLE_CONFIG, **kwargs: Any) -> dict[str, Any]:
    """One run of an integration group; the metadata of its writer."""
    loaded = load_config(config)
    result = dg.materialize(list(build_definitions(loaded, home).assets), selection=dg.AssetSelection.groups(group),
                            resources=build_resources(loaded, home), **kwargs)
    assert result.success
    writer = {PRODUCTS_GROUP: "pulpo_products", ORDERS_GROUP: "pulpo_sales_orders", STOCK_GROUP: "billbee_stock"}
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == writer[group]]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def sync_orders(home: Path, shop: Shop, config: Path = EXAMPLE_CONFIG) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for partition in sorted(shop.touched or {hour_key()}):
        metadata = materialize(home, ORDERS_GROUP, config, partition_key=partition)
    shop.touched = set()
    return metadata


def order(shop: Shop, lines: list[tuple[int, str | None, float]], *, state: int = PAID, number: str) -> str:
    """A Billbee order whose positions are linked to articles (index) and sold under the SKU given."""
    address = {"FirstName": "Erika", "LastName": "Mustermann", "Street": "Hauptstraße", "HouseNumber": "5",
               "Zip": "10115", "City": "Berlin", "CountryISO2": "DE"}
    body = {"CreatedAt": datetime.now(UTC).isoformat(), "State": state, "OrderNumber": number,
            "ShippingAddress": address, "InvoiceAddress": address,
            "OrderItems": [{"Product": {"BillbeeId": billbee_product_id(index), "SKU": sku}, "Quantity": qty}
                           for index, sku, qty in lines]}
    response = shop._changed(lambda: shop.session.post(f"{shop.url}/orders", json=body, timeout=30))
    return str(response.json()["Data"]["BillBeeOrderId"])


def items(pulpo_order: dict[str, Any]) -> list[tuple[int, int, str | None]]:
    return [(i["product_id"], i["quantity"], i["line_order_id"]) for i in pulpo_order["items"]]


def test_lines_import_with_their_articles_product_and_the_products_mapping_stays_the_products_flows(
        world, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    shop, pulpo = Shop(world), Pulpo(world)
    materialize(home, PRODUCTS_GROUP)
    store = StateStore(home)
    mapping, kits = store.mappings(PRODUCT_KIND), store.mappings(KIT_KIND)
    assert len(mapping) == PRODUCTS - 1 and kits                       # every linkable article, the bundles' kits

    listing = order(shop, [(5, "AMZ-B07-5", 2), (6, sku_for(6), 1)], number="M-1")
    other_sku = order(shop, [(7, sku_for(8), 1)], number="M-2")       # a listing SKU that is another article's
    unlinkable = order(shop, [(NO_SKU, "AMZ-96", 1)], number="M-3")   # the products flow could not link 96
    no_sku = order(shop, [(9, None, 1)], number="M-4")                 # the marketplace sent no SKU at all
    result = sync_orders(home, shop)

    orders = by_external(pulpo_orders(world))
    assert [(pid, qty) for pid, qty, _ in items(orders[listing][0])] == [
        (pulpo.product_id(sku_for(5)), 2), (pulpo.product_id(sku_for(6)), 1)]
    assert [(pid, qty) for pid, qty, _ in items(orders[other_sku][0])] == [(pulpo.product_id(sku_for(7)), 1)]
    assert [(pid, qty) for pid, qty, _ in items(orders[no_sku][0])] == [(pulpo.product_id(sku_for(9)), 1)]
    assert unlinkable not in orders and result["created"] == 3 and result["lines_by_article"] == 2
    [waiting] = store.quarantine_list(ORDERS_GROUP, kind="order")
    assert (waiting.record_key, waiting.reason) == (
        unlinkable, f"waiting for product AMZ-96 (Billbee article {billbee_product_id(NO_SKU)})")
    assert store.mappings(PRODUCT_KIND) == mapping and store.mappings(KIT_KIND) == kits


def test_an_order_sync_without_the_products_flow_writes_no_product_mapping(world, bpp_env):
    """Before issue 11, the order writer recorded its SKU look-ups in the products flow's mapping, so a
    marketplace SKU PULPO happened to have linked the wrong article for good."""
    home = Path(bpp_env["BPP_HOME"])
    shop, pulpo = Shop(world), Pulpo(world)
    plain = order(shop, [(10, sku_for(10), 1)], number="N-1")          # not yet in the products snapshot
    assert sync_orders(home, shop)["created"] == 1
    assert items(by_external(pulpo_orders(world))[plain][0])[0][0] == pulpo.product_id(sku_for(10))
    assert StateStore(home).mappings(PRODUCT_KIND) == {}


def test_a_bundle_line_ships_as_its_components(world, bpp_env):
    home = Path(bpp_env["BPP_HOME"])
    shop, pulpo = Shop(world), Pulpo(world)
    materialize(home, PRODUCTS_GROUP)                                   # products bundles: kit (default)
    bundle = order(shop, [(BUNDLE, sku_for(BUNDLE), 2), (PARTS[0][0], sku_for(PARTS[0][0]), 1)], number="B-1")
    result = sync_orders(home, shop)
    assert result["created"] == 1 and result["bundle_lines_split"] == 1 and result["quarantined"] == 0

    [pulpo_order] = by_external(pulpo_orders(world))[bundle]
    billbee = Billbee(world)
    placed = billbee.session.get(f"{billbee.url}/orders/{bundle}", timeout=30).json()["Data"]["OrderItems"]
    bundle_position, single_position = (str(i["BillbeeId"]) for i in placed)
    assert items(pulpo_order) == [
        (pulpo.product_id(sku_for(47)), 2 * 1, f"{bundle_position}-1"),
        (pulpo.product_id(sku_for(48)), 2 * 2, f"{bundle_position}-2"),
        (pulpo.product_id(sku_for(47)), 1, single_position)]            # its own line, its own position
    assert pulpo.product_id(sku_for(BUNDLE)) not in {pid for pid, _, _ in items(pulpo_order)}


def test_bundles_kit_references_the_kit_the_products_flow_made(world, bpp_env, tmp_path):
    home = Path(bpp_env["BPP_HOME"])
    shop, pulpo = Shop(world), Pulpo(world)
    config = config_with(tmp_path, orders_bundles="kit")
    materialize(home, PRODUCTS_GROUP, config)
    assert str(billbee_product_id(BUNDLE)) in StateStore(home).mappings(KIT_KIND)
    bundle = order(shop, [(BUNDLE, sku_for(BUNDLE), 3)], number="K-1")
    result = sync_orders(home, shop, config)
    assert result["created"] == 1 and result["bundle_lines_as_kit"] == 1
    [pulpo_order] = by_external(pulpo_orders(world))[bundle]
    assert [(pid, qty) for pid, qty, _ in items(pulpo_order)] == [(pulpo.product_id(sku_for(BUNDLE)), 3)]


def test_products_skipping_bundles_never_parks_a_bundle_order(world, bpp_env, tmp_path):
    """Products `bundles: skip` makes no kit: a bundle order goes as components, through the CLI."""
    home = Path(bpp_env["BPP_HOME"])
    shop, pulpo = Shop(world), Pulpo(world)
    config = config_with(tmp_path, products_bundles="skip")
    bundle = order(shop, [(BUNDLE, "AMZ-SET-49", 1)], number="S-1")    # a bundle sold under a listing SKU too
    env = {**bpp_env, "BPP_CONFIG": str(config)}
    run = subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "Produkte",
                          "Verkaufsaufträge", "--json"], env=env, cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert StateStore(home).mappings(KIT_KIND) == {}                    # skipped: no kit in PULPO
    [pulpo_order] = by_external(pulpo_orders(world))[bundle]
    assert [(pid, qty) for pid, qty, _ in items(pulpo_order)] == [
        (pulpo.product_id(sku_for(47)), 1), (pulpo.product_id(sku_for(48)), 2)]
    assert StateStore(home).quarantine_list(ORDERS_GROUP, kind="order") == []


def test_stock_counts_open_marketplace_and_bundle_units_against_the_article_skus(sandbox, bpp_env):
    """Seeded Amazon orders sold under listing SKUs (sandbox knob `marketplace_skus`) and a bundle order:
    O counts each against the SKU of the Billbee article the position is linked to."""
    sandbox.reset("billbee", products=PRODUCTS, orders=300, marketplace_skus=True)
    sandbox.reset("pulpo", products=PRODUCTS, stock=True)
    try:
        home = Path(bpp_env["BPP_HOME"])
        billbee, pulpo, shop = Billbee(sandbox), Pulpo(sandbox), Shop(sandbox)
        seeded = [i for o in billbee.orders() for i in o["OrderItems"]
                  if (i["Product"]["SKU"] or "").startswith(MARKETPLACE_SKU_PREFIX)]
        assert seeded and all(i["Product"]["SKU"] != sku_for(i["Product"]["BillbeeId"] - billbee_product_id(0))
                              for i in seeded)
        order(shop, [(5, "AMZ-B07-5", 3), (BUNDLE, sku_for(BUNDLE), 1)], state=ORDERED, number="O-1")
        for index in (5, 47, 48):                                       # enough stock that O shows in the value
            pulpo.add(sku_for(index), 50)
        materialize(home, PRODUCTS_GROUP)
        result = materialize(home, STOCK_GROUP)
        assert result["open_bundle_units_unresolved"] == 0

        stock, opened = billbee.stock(), open_units_by_article(billbee)
        assert opened[sku_for(5)] >= 3 and opened[sku_for(47)] >= 1 and opened[sku_for(48)] >= 2
        targets = {sku: max(0, math.floor(row["available"] - opened[sku]))
                   for sku, row in pulpo.summary(1).items() if not catalog_item(1, int(sku[4:])).is_bundle}
        assert {sku: stock[sku] for sku in targets} == targets
        for index in (5, 47, 48):
            assert stock[sku_for(index)] == pulpo.summary(1)[sku_for(index)]["available"] - opened[sku_for(index)] > 0
        assert not any(sku.startswith(MARKETPLACE_SKU_PREFIX) for sku in stock)
    finally:
        sandbox.reset("billbee", products=SANDBOX_PRODUCTS, orders=SANDBOX_ORDERS)
        sandbox.reset("pulpo", products=0)


def open_units_by_article(billbee: Billbee) -> Counter[str]:
    """Units of open Billbee orders (none is in PULPO here) per SKU of the article each position is linked
    to, bundles as their parts: what O must be, computed independently of the flow."""
    opened: Counter[str] = Counter()
    for o in billbee.orders():
        if o["State"] not in DEFAULT_RESERVING_STATES:
            continue
        for item in o["OrderItems"]:
            article = item["Product"]["BillbeeId"]
            if item["IsCoupon"] or item["DontAdjustStock"] or article is None:
                continue
            index = article - BILLBEE_ID_BASE - 1000
            parts = catalog_item(1, index).bom or ((index, 1),)
            for part, amount in parts:
                if sku_for(part):
                    opened[sku_for(part)] += item["Quantity"] * amount  # type: ignore[index]
    return opened


def test_marketplace_knob_is_off_by_default(sandbox):
    """Other tests rely on seeded lines carrying the article's SKU."""
    summary = sandbox.reset("billbee", products=PRODUCTS, orders=50)
    try:
        assert summary["marketplace_skus"] is False
        assert not any((i["Product"]["SKU"] or "").startswith(MARKETPLACE_SKU_PREFIX)
                       for o in Billbee(sandbox).orders() for i in o["OrderItems"])
    finally:
        sandbox.reset("billbee", products=SANDBOX_PRODUCTS, orders=SANDBOX_ORDERS)
