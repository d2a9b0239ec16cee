"""The 'stock' integration: PULPO stock of the configured warehouse → Billbee.

This version snapshots PULPO's stock; the Billbee writer is the next step of this flow.
"""

from __future__ import annotations

import dagster as dg

from billbee_pulpo_pipeline.defs.common import Flow, flow_definitions
from billbee_pulpo_pipeline.defs.pulpo_reads import stock_asset


def build(flow: Flow) -> dg.Definitions:
    return flow_definitions(flow, [stock_asset(flow)], "PULPO stock → Billbee.")
