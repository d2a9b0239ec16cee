"""Mixing label services: `shipping_labels` and `shipments` for the same two systems, split by PULPO
shipping method (`pulpo_shipping_methods`).

The config check allows both for one pair only with disjoint, non-empty lists (pure, no network). End to
end over HTTP against the session sandboxes: the sales-orders flow sets each PULPO sales order's shipping
method from the Billbee order's provider (DHL → 1, DPD → 2, GLS unmapped), the warehouse packs, the
sandbox's label-service stand-in writes a tracking code onto the DPD box only, and then, through
`dg.materialize` of each group, Billbee labels only the DHL box while the shipments flow carries only the
DPD box's code to Billbee. The GLS order (no shipping method) is handled by neither and shown as needing
attention in both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from billbee_pulpo_pipeline.config import ConfigError, load_config
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
from billbee_pulpo_pipeline.sandboxes import credentials
from billbee_pulpo_pipeline.sandboxes.pulpo.label_service import LIVE_WORLD_METHODS, LabelService
from billbee_pulpo_pipeline.sandboxes.pulpo.warehouse import WarehouseSimulator
from billbee_pulpo_pipeline_tests.test_orders_writing import KNOWN, Shop, fresh_world
from billbee_pulpo_pipeline_tests.test_shipments_flow import billbee_shipments
from billbee_pulpo_pipeline_tests.test_shipping_labels import (
    LABEL_CALL,
    boxes_of,
    label_calls,
    pack,
    paid_order,
    pulpo,
)
from billbee_pulpo_pipeline_tests.test_status_updates import config_with, materialize, metadata

DPD, DPD_CLASSIC = 20_000_000_000_012_105, 20_000_000_000_083_781
GLS, GLS_PARCEL = 20_000_000_000_012_107, 20_000_000_000_083_791
DHL_METHOD, DPD_METHOD = 1, 2   # the PULPO sandbox's shipping methods "DHL Paket" and "DPD Classic"
ORDERS = "verkaufsauftraege"
LABELS, SHIPMENTS = "versandetiketten", "sendungen"

SPLIT = f"""\
  - name: Verkaufsaufträge
    type: sales_orders
    source: billbee-shop
    target: pulpo-wms
    shipping_method_map:
      - {{billbee_provider: DHL, pulpo_shipping_method_id: {DHL_METHOD}}}
      - {{billbee_provider: DPD, pulpo_shipping_method_id: {DPD_METHOD}}}
  - {{name: Versandetiketten, type: shipping_labels, source: pulpo-wms, target: billbee-shop,
     pulpo_shipping_methods: [{DHL_METHOD}]}}
  - {{name: Sendungen, type: shipments, source: pulpo-wms, target: billbee-shop,
     pulpo_shipping_methods: [{DPD_METHOD}]}}
"""

ENV = {"BILLBEE_USERNAME": credentials.BILLBEE_USERNAME, "BILLBEE_API_PASSWORD": credentials.BILLBEE_API_PASSWORD,
       "BILLBEE_API_KEY": credentials.BILLBEE_API_KEY, "PULPO_USERNAME": credentials.PULPO_USERNAME,
       "PULPO_PASSWORD": credentials.PULPO_PASSWORD}


def pair(tmp_path: Path, labels: str, shipments: str) -> Path:
    """A config with a labels and a shipments integration for the same pair, with these extra settings."""
    return config_with(tmp_path, "  - {name: Etiketten, type: shipping_labels, source: pulpo-wms, target: "
                                 f"billbee-shop{labels}}}\n  - {{name: Sendungen, type: shipments, source: "
                                 f"pulpo-wms, target: billbee-shop{shipments}}}\n")


# ---- the config check (no network) --------------------------------------------------------------


def test_disjoint_lists_let_labels_and_shipments_run_for_one_pair(tmp_path):
    config = load_config(pair(tmp_path, ", pulpo_shipping_methods: [1, 3]", ", pulpo_shipping_methods: [2]"), ENV)
    assert config.integration("Etiketten").settings.pulpo_shipping_methods == [1, 3]
    assert config.integration("Sendungen").settings.pulpo_shipping_methods == [2]


@pytest.mark.parametrize(("labels", "shipments", "expected"), [
    ("", "", r'integrations\[1\] "Sendungen": type: shipping_labels and shipments cannot both run for pulpo-wms '
             r'-> billbee-shop .*or give both a pulpo_shipping_methods list with no method in both'),
    (", pulpo_shipping_methods: [1]", "", r'integrations\[1\] "Sendungen": type: shipping_labels and shipments '
                                          r"cannot both run"),
    (", pulpo_shipping_methods: [1, 2]", ", pulpo_shipping_methods: [2, 3]",
     r'integrations\[1\] "Sendungen": pulpo_shipping_methods: shipping method 2 is also in integrations\[0\] '
     r'"Etiketten"'),
    (", pulpo_shipping_methods: []", ", pulpo_shipping_methods: [2]",
     r'integrations\[0\] "Etiketten": pulpo_shipping_methods: .*at least 1 item'),
    (", pulpo_shipping_methods: [1, 1]", ", pulpo_shipping_methods: [2]",
     r'integrations\[0\] "Etiketten": pulpo_shipping_methods: shipping method 1 appears more than once'),
])
def test_overlapping_or_missing_lists_are_refused_naming_the_entry_and_field(tmp_path, labels, shipments, expected):
    with pytest.raises(ConfigError) as refused:
        load_config(pair(tmp_path, labels, shipments), ENV)
    assert len(str(refused.value).strip().splitlines()) == 1, str(refused.value)   # one problem, not noise
    assert re.search(expected, str(refused.value)), str(refused.value)


def test_the_demo_config_runs_all_six_types_and_splits_by_shipping_method():
    from billbee_pulpo_pipeline.cli import DEMO_CONFIG

    config = load_config(DEMO_CONFIG, {**ENV, "BILLBEE_BASE_URL": "http://127.0.0.1:1/api/v1",
                                       "PULPO_BASE_URL": "http://127.0.0.1:2/api/v1"})
    assert sorted(i.type for i in config.integrations) == sorted(
        ["products", "sales_orders", "status_updates", "stock", "shipping_labels", "shipments"])
    [shipments] = config.integrations_of_type("shipments")
    assert shipments.settings.pulpo_shipping_methods == list(LIVE_WORLD_METHODS)   # the world's label service


# ---- end to end over HTTP --------------------------------------------------------------------------


def import_orders(home: Path, config_path: Path, shop: Shop) -> None:
    """The sales-orders flow of `config_path` for every hour the shop changed orders in."""
    config = load_config(config_path)
    defs = build_definitions(config, home)
    for partition in sorted(shop.touched):
        assert dg.materialize(list(defs.assets), selection=dg.AssetSelection.groups(ORDERS), partition_key=partition,
                              resources=build_resources(config, home)).success


def shipment_posts(sandbox, order_id: str) -> int:
    return sum(1 for r in sandbox.requests("billbee", limit=5000)
               if f"{r['method']} {r['path']}" == f"POST /api/v1/orders/{order_id}/shipment" and not r["simulator"])


def sales_order_methods(sandbox, packing: dict[str, int]) -> dict[str, Any]:
    warehouse = WarehouseSimulator(sandbox.pulpo_url)
    try:
        out = {}
        for billbee_id, packing_id in packing.items():
            sales_id = warehouse._call("GET", f"/packing/orders/{packing_id}")["sales_order_id"]
            out[billbee_id] = warehouse._call("GET", f"/sales/orders/{sales_id}").get("shipping_method_id")
        return out
    finally:
        warehouse.close()


def test_each_flow_handles_only_its_shipping_methods_boxes(sandbox, bpp_env, tmp_path):
    home = Path(bpp_env["BPP_HOME"])
    fresh_world(sandbox)
    shop = Shop(sandbox)
    dhl = paid_order(shop, "MIX-DHL", 1)
    dpd = paid_order(shop, "MIX-DPD", 1, provider=DPD, product=DPD_CLASSIC, sku=KNOWN[1])
    gls = paid_order(shop, "MIX-GLS", 1, provider=GLS, product=GLS_PARCEL, sku=KNOWN[2])
    config = config_with(tmp_path, SPLIT)
    import_orders(home, config, shop)
    packing = pack(sandbox, {dhl: [0.5], dpd: [0.6], gls: [0.7]})
    assert sales_order_methods(sandbox, packing) == {dhl: DHL_METHOD, dpd: DPD_METHOD, gls: None}

    # The label service (Sendcloud's stand-in, as in the demo world) handles the DPD parcels only.
    service = LabelService(WarehouseSimulator(sandbox.pulpo_url), [DPD_METHOD], carriers=("dpd",))
    assert service.step() == 1 and service.step() == 0
    client = pulpo(home, sandbox)
    [[dpd_tracking]] = [box["trackings"] for box in boxes_of(client, packing[dpd])]
    assert all(not box["trackings"] for order in (dhl, gls) for box in boxes_of(client, packing[order]))

    sandbox.reset_stats("billbee")
    labels = metadata(materialize(home, LABELS, config, writer="billbee_labels"), "billbee_labels")
    assert (labels["labels_created"], labels["other_shipping_method"], labels["attention"]) == (1, 1, 1), labels
    assert labels["quarantined"] == 0   # the DPD box's foreign tracking is not mistaken for a problem
    assert [str(call["OrderId"]) for call in label_calls(sandbox)] == [dhl]
    assert "PULPO sales order" in labels["attention_preview"] and "has no shipping method" in \
        labels["attention_preview"], labels["attention_preview"]

    shipments = metadata(materialize(home, SHIPMENTS, config, writer="billbee_shipments"), "billbee_shipments")
    assert (shipments["shipments_added"], shipments["other_shipping_method"], shipments["no_shipping_method"]) \
        == (1, 1, 1), shipments
    assert shipment_posts(sandbox, dpd) == 1 and shipment_posts(sandbox, dhl) == 0
    assert [s["ShippingId"] for s in billbee_shipments(sandbox, dpd)] == [dpd_tracking.tracking_code]
    assert len(billbee_shipments(sandbox, dhl)) == 1   # only Billbee's own label, not a second shipment
    assert billbee_shipments(sandbox, gls) == []

    sandbox.reset_stats("billbee")   # a second round: every packing order is settled, nothing is written
    again_labels = metadata(materialize(home, LABELS, config, writer="billbee_labels"), "billbee_labels")
    again_shipments = metadata(materialize(home, SHIPMENTS, config, writer="billbee_shipments"), "billbee_shipments")
    assert again_labels["records_written"] == 0 and again_shipments["records_written"] == 0
    assert not [r for r in sandbox.requests("billbee", limit=5000)
                if not r["simulator"] and (f"{r['method']} {r['path']}" == LABEL_CALL or r["method"] == "POST")]
