"""The live sandbox world: the simulated shop, warehouse and label service stepping on a clock (demo mode).

Both simulators act through the systems' real endpoints, so the product sees exactly what a shop
and a warehouse would produce. Tests step them directly instead of using this loop.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("billbee_pulpo_pipeline.sandbox.world")


def run_world(billbee_url: str, pulpo_url: str, options: Any, stop: threading.Event) -> None:
    """Step shop and warehouse every `options.tick_seconds` until `stop` is set; errors are logged."""
    from billbee_pulpo_pipeline.sandboxes.billbee.shop import ShopSimulator
    from billbee_pulpo_pipeline.sandboxes.pulpo.label_service import LIVE_WORLD_METHODS, LabelService
    from billbee_pulpo_pipeline.sandboxes.pulpo.warehouse import WarehouseSimulator

    shop = ShopSimulator(billbee_url, seed=options.seed)
    warehouse = WarehouseSimulator(pulpo_url, seed=options.seed)
    labels = LabelService(warehouse, LIVE_WORLD_METHODS, carriers=("dpd",), seed=options.seed)
    while not stop.wait(options.tick_seconds):
        for name, actor in (("shop", shop), ("warehouse", warehouse), ("label service", labels)):
            try:
                actor.step()
            except Exception as exc:  # the demo world must keep running whatever one step hit
                log.warning("simulated %s step failed: %s", name, exc)
