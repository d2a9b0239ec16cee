"""PULPO WMS sandbox (`PulpoSandbox`) and the simulated warehouse that works in it (`WarehouseSimulator`)."""

from billbee_pulpo_pipeline.sandboxes.pulpo.app import PulpoSandbox
from billbee_pulpo_pipeline.sandboxes.pulpo.warehouse import WarehouseSimulator

__all__ = ["PulpoSandbox", "WarehouseSimulator"]
