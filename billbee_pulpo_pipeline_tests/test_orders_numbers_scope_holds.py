"""Sales orders as real merchants' accounts have them (issue 11, points 5, 6, 7, 9), end to end over HTTP
against the session sandboxes, through `dg.materialize` of the integration group and the CLI:

- order numbers are unique per Billbee shop, not per account: collisions are numbered apart;
- an imported order that goes back to an unpaid state (charge-back) needs attention, Gelöscht cancels;
- a crash between a PULPO create and its ledger record is recovered by the number sent, even when the
  Billbee number changed meanwhile, and by external_order_num;
- shop and tag filters keep other warehouses' orders out of PULPO, with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests

from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.common import flow_for, mapping_kind
from billbee_pulpo_pipeline.defs.crash import CRASH_ENV
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG, PROJECT_ROOT
from billbee_pulpo_pipeline_tests.test_orders_writing import (
    GROUP,
    KNOWN,
    PAID,
    SECOND_SHOP,
    WRITER_OP,
    Shop,
    by_external,
    fresh_world,
    hour_key,
    ledger,
    not_at_the_end_of_an_hour,
    pulpo_client,
    pulpo_orders,
    pulpo_writes,
    sync,
)

FIRST_SHOP = 20_000_000_000_000_711
ORDERED, DELETED, PACKED, SHIPPED = 1, 6, 13, 4
SALES_ORDERS_LINE = "    cancel_states: [Storniert, Gelöscht] # Billbee states that cancel the PULPO order\n"


def config_with(tmp_path: Path, extra: str) -> Path:
    """The example config with `extra` settings (YAML lines) on the sales-orders integration."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    assert SALES_ORDERS_LINE in text
    path = tmp_path / "integrations.yaml"
    path.write_text(text.replace(SALES_ORDERS_LINE, SALES_ORDERS_LINE + extra), encoding="utf-8")
    return path


def sync_with(config_path: Path, home: Path, shop: Shop, *, dry_run: bool = False) -> dict[str, Any]:
    """`test_orders_writing.sync` for another config file."""
    config = load_config(config_path)
    defs = build_definitions(config, home)
    metadata: dict[str, Any] = {}
    for partition in sorted(shop.touched or {hour_key()}):
        result = dg.materialize(list(defs.assets), selection=dg.AssetSelection.groups(GROUP),
                                resources=build_resources(config, home), partition_key=partition,
                                run_config={"ops": {WRITER_OP: {"config": {"dry_run": dry_run}}}})
        assert result.success
        [event] = [e for e in result.get_asset_materialization_events()
                   if e.asset_key == dg.AssetKey([GROUP, "pulpo_sales_orders"])]
        metadata = {k: v.value for k, v in event.materialization.metadata.items()}
        checks = [e.asset_check_evaluation_data for e in result.all_events
                  if e.event_type_value == "ASSET_CHECK_EVALUATION"
                  and e.asset_check_evaluation_data.check_name == "importable_orders_accounted_for"]
        metadata["check_passed"] = checks[-1].passed
    shop.touched = set()
    return metadata


def order_mapping(home: Path, order_id: str):
    config = load_config(EXAMPLE_CONFIG)
    flow = flow_for(config.integration(GROUP), config)
    return StateStore(home).get_mapping(mapping_kind("order", flow), order_id)


def status_json(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "status", "--json"], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    return {i["slug"]: i for i in json.loads(done.stdout)["integrations"]}[GROUP]


def pulpo_post(sandbox, path: str) -> None:
    """A click in PULPO's UI (as the simulator, so it is not counted as the product's write)."""
    session = requests.Session()
    session.headers.update(credentials.SIMULATOR_HEADERS)
    token = session.post(f"{sandbox.pulpo_url}/auth", json={
        "grant_type": "password", "username": credentials.PULPO_USERNAME,
        "password": credentials.PULPO_PASSWORD, "scope": "general"}, timeout=30).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    session.post(f"{sandbox.pulpo_url}{path}", timeout=30).raise_for_status()


def renumber(sandbox, order_id: str, number: str) -> None:
    """An order number edited in Billbee (the sandbox's control route; the id stays)."""
    answer = sandbox.control("PUT", "billbee", f"orders/{order_id}/ordernumber", {"OrderNumber": number})
    assert answer["OrderNumber"] == number


# ---- point 5: order numbers ------------------------------------------------------------------------


@pytest.fixture(params=["has already been taken", "must be unique"])
def taken_message(request, sandbox):
    """PULPO's words for a used order_num (the spec leaves them open): both must lead to a number apart."""
    sandbox.control("PUT", "pulpo", "sales/taken_message", {"message": request.param})
    yield request.param
    sandbox.control("PUT", "pulpo", "sales/taken_message", {"message": None})


def test_same_number_in_three_places_each_order_lands_once_under_its_own_number(sandbox, bpp_env, taken_message):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop = Shop(sandbox)
    client = pulpo_client(home, sandbox)
    product = next(p for p in client.iter_products(sku=KNOWN[0]) if p.sku == KNOWN[0])
    # Somebody typed the collision number by hand in PULPO: the third candidate is used.
    manual = client.create_sales_order({"order_num": f"N-1-{SECOND_SHOP}", "external_order_num": "by hand",
                                        "warehouse_id": 1, "items": [{"product_id": product.id, "quantity": 1}],
                                        "ship_to": {"name": "Lager", "address": {"street": "Hofweg", "zip": "1",
                                                                                 "city": "X", "country_alpha2": "DE"}}})
    first = shop.order([(KNOWN[0], 1)], number="N-1")                             # Shopify
    second = shop.order([(KNOWN[1], 1)], number="N-1", ApiAccountId=SECOND_SHOP)   # Amazon, the same number
    result = sync(home, shop)
    assert result["created"] == 2 and result["quarantined"] == 0 and result["check_passed"] is True
    orders = by_external(pulpo_orders(sandbox))
    assert orders[first][0]["order_num"] == "N-1"
    assert orders[second][0]["order_num"] == f"N-1-{SECOND_SHOP}-{second}"
    assert orders["by hand"][0]["id"] == manual.id and len(orders) == 3           # nothing else, nothing twice
    assert order_mapping(home, second).extra["order_num"] == f"N-1-{SECOND_SHOP}-{second}"
    assert ledger(home)[f"order:create:{second}"][0] == "done"

    sandbox.reset_stats("pulpo")
    again = sync(home, shop)                                                      # nothing changed: no write
    assert again["records_written"] == 0 and pulpo_writes(sandbox) == []


# ---- point 6: deleted and charged-back orders ------------------------------------------------------


def test_charged_back_order_needs_attention_once_and_deleted_order_is_cancelled(sandbox, bpp_env):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    shop = Shop(sandbox)
    charged_back, deleted, packed, shipped, paused = (shop.order([(KNOWN[i % 3], 1)], number=f"CB-{i}")
                                                      for i in range(5))
    assert sync(home, shop)["created"] == 5

    shop.set_state(charged_back, ORDERED)          # payment charge-back: Billbee sets the order back
    shop.set_state(paused, ORDERED)
    shop.set_state(deleted, DELETED)               # Gelöscht: a cancel state by default
    shop.set_state(packed, PACKED)                 # our own status flow's write-back: no attention
    shop.set_state(shipped, SHIPPED)
    plan = sync(home, shop, dry_run=True)
    assert "went back to 'Bestellt' (payment charge-back?)" in plan["plan"] and "would cancel" in plan["plan"]
    sandbox.reset_stats("pulpo")
    result = sync(home, shop)
    assert result["attention"] == 2 and result["cancelled"] == 1 and result["skipped"] == 2
    reason = (f"Billbee order CB-0 (id {charged_back}) went back to 'Bestellt' (payment charge-back?) after it was "
              "sent to PULPO as order CB-0 (state queue): pause or cancel it in PULPO if it must not ship")
    assert "| CB-0 | " in result["attention_preview"]                            # the preview cuts at 80
    assert "went back to 'Bestellt' (payment charge-back?) after it was sent to PULPO" in result["attention_preview"]
    assert ledger(home)[f"order:hold:{charged_back}"] == ("attention", reason)
    states = {k: v[0]["state"] for k, v in by_external(pulpo_orders(sandbox)).items()}
    assert states == {charged_back: "queue", deleted: "cancelled", packed: "queue", shipped: "queue",
                      paused: "queue"}
    assert pulpo_writes(sandbox) == [f"POST /api/v1/sales/orders/{by_external(pulpo_orders(sandbox))[deleted][0]['id']}"
                                     "/cancel"]                                   # the hold wrote nothing
    holds = {f"order:hold:{charged_back}", f"order:hold:{paused}"}
    assert {k for k in ledger(home) if k.startswith("order:hold:")} == holds     # not Gepackt, not Versendet
    assert {w["key"] for w in status_json(bpp_env)["attention_writes"]} == holds

    assert sync(home, shop)["attention"] == 0                                     # once per change, no noise
    pulpo_post(sandbox, f"/sales/orders/{by_external(pulpo_orders(sandbox))[paused][0]['id']}/pause")  # merchant
    shop.set_state(charged_back, PAID)                                            # paid again: attention over ...
    shop.set_state(paused, PAID)                                                  # ... unless PULPO's is paused
    back = sync(home, shop)
    assert back["attention"] == 0 and back["records_written"] == 0
    assert ledger(home)[f"order:hold:{charged_back}"][0] == "done"
    assert ledger(home)[f"order:hold:{paused}"] == (
        "attention", f"Billbee order CB-4 (id {paused}) is 'Bezahlt' again, but PULPO order CB-4 is paused: resume it "
                     "in PULPO so it ships")
    assert [w["key"] for w in status_json(bpp_env)["attention_writes"]] == [f"order:hold:{paused}"]


# ---- point 7: crash recovery -----------------------------------------------------------------------


def test_crash_after_create_then_billbee_renumbers_the_order_no_duplicate(sandbox, bpp_env):
    fresh_world(sandbox)
    not_at_the_end_of_an_hour()
    home = Path(bpp_env["BPP_HOME"])
    command = [sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "Verkaufsaufträge", "--json"]
    history = subprocess.run(command, env=bpp_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert history.returncode == 0, history.stderr[-2000:]
    shop = Shop(sandbox)
    renumbered, lost_number = shop.order([(KNOWN[0], 1)], number="R-1"), shop.order([(KNOWN[1], 1)], number="R-2")
    killed = subprocess.run(command, env={**bpp_env, CRASH_ENV: "create"}, cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=180)
    assert killed.returncode == 137, killed.stderr[-2000:]
    created = {k: v[0] for k, v in by_external(pulpo_orders(sandbox)).items()}
    assert {created[renumbered]["order_num"], created[lost_number]["order_num"]} == {"R-1", "R-2"}
    assert {ledger(home)[f"order:create:{i}"][0] for i in (renumbered, lost_number)} == {"pending"}

    renumber(sandbox, renumbered, "R-1-neu")        # the Billbee number changes before the rerun
    # The second order's ledger names a number PULPO does not have (as if PULPO had normalised it):
    # only the look-up by external_order_num can find it.
    store = StateStore(home)
    entry = store.ledger_get(f"order:create:{lost_number}")
    store.ledger_begin(entry.key, GROUP, "create", {**entry.request, "order_num": "r-2 "})

    sandbox.reset_stats("pulpo")
    rerun = subprocess.run(command, env=bpp_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    orders = by_external(pulpo_orders(sandbox))
    assert all(len(v) == 1 for v in orders.values()) and len(orders[renumbered]) == 1   # no duplicate
    assert pulpo_writes(sandbox) == []                                            # adopted, not re-sent
    lookups = [r["query"] for r in sandbox.requests("pulpo") if r["endpoint"] == "GET /api/v1/sales/orders"]
    assert not any("R-1-neu" in json.dumps(q) for q in lookups)                   # never the current number
    for order_id in (renumbered, lost_number):
        mapping = order_mapping(home, order_id)
        assert mapping.pulpo_id == str(orders[order_id][0]["id"])
        assert mapping.extra["order_num"] == created[order_id]["order_num"]
        assert ledger(home)[f"order:create:{order_id}"][0] == "done"
    assert orders[renumbered][0]["order_num"] == "R-1"                            # PULPO's number is kept
    [summary] = json.loads(rerun.stdout)["integrations"]
    assert summary["status"] == "success" and summary["written"] == 0


# ---- point 9: shops and tags -----------------------------------------------------------------------


def test_shop_and_tag_filters_skip_with_reasons_and_a_later_excluded_tag_needs_attention(sandbox, bpp_env,
                                                                                          tmp_path):
    fresh_world(sandbox)
    home = Path(bpp_env["BPP_HOME"])
    config = config_with(tmp_path, f"    shop_ids: [{FIRST_SHOP}]\n    exclude_tags: [FBA]\n"
                                   "    require_tags: [Lager Berlin]\n")
    shop = Shop(sandbox)
    ours = shop.order([(KNOWN[0], 1)], number="T-1", Tags=["lager berlin"])
    other_shop = shop.order([(KNOWN[0], 1)], number="T-2", Tags=["Lager Berlin"], ApiAccountId=SECOND_SHOP)
    fba = shop.order([(KNOWN[1], 1)], number="T-3", Tags=["Lager Berlin", "FBA"])
    untagged = shop.order([(KNOWN[2], 1)], number="T-4")

    plan = sync_with(config, home, shop, dry_run=True)
    assert plan["plan"].count("would create") == 1 and plan["filtered"] == 3 and pulpo_orders(sandbox) == []
    for reason in (f"shop {SECOND_SHOP} is not in shop_ids", "tag 'FBA' is in exclude_tags",
                   "none of the require_tags (Lager Berlin) is on the order"):
        assert reason in plan["plan"]

    result = sync_with(config, home, shop)
    assert result["created"] == 1 and result["filtered"] == 3 and result["quarantined"] == 0
    assert result["check_passed"] is True
    assert sorted(by_external(pulpo_orders(sandbox))) == [ours]
    for order_id in (other_shop, fba, untagged):
        assert order_mapping(home, order_id) is None and f"order:create:{order_id}" not in ledger(home)

    # Imported, then tagged for Amazon's warehouse: attention, no write (cancelling is the merchant's call).
    shop._changed(lambda: shop.session.post(f"{shop.url}/orders/{ours}/tags", json={"Tags": ["fba"]}, timeout=30))
    sandbox.reset_stats("pulpo")
    later = sync_with(config, home, shop)
    assert later["attention"] == 1 and pulpo_writes(sandbox) == []
    status, message = ledger(home)[f"order:hold:{ours}"]
    assert message == (f"Billbee order T-1 (id {ours}) is no longer for this warehouse (tag 'fba' is in exclude_tags) "
                       "after it was sent to PULPO as order T-1 (state queue): cancel it in PULPO if this warehouse "
                       "must not ship it")
    assert status == "attention"
    assert by_external(pulpo_orders(sandbox))[ours][0]["state"] == "queue"
