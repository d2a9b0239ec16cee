"""The 'shipping_labels' integration: Billbee labels for PULPO's packed boxes.

This version reads the finished packing orders; the Billbee writer is the next step of this flow.
"""

from __future__ import annotations

import dagster as dg

from billbee_pulpo_pipeline.defs.common import Flow, flow_definitions
from billbee_pulpo_pipeline.defs.packing_events import packing_orders_asset, packing_sensor


def build(flow: Flow) -> dg.Definitions:
    return flow_definitions(flow, [packing_orders_asset(flow)], "Billbee labels for PULPO's packed boxes.",
                            sensors=lambda job: [packing_sensor(flow, job)])
