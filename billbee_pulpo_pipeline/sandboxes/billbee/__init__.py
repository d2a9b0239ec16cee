"""The Billbee API sandbox (`BillbeeSandbox`) and the simulated shop that drives it (`ShopSimulator`)."""

from billbee_pulpo_pipeline.sandboxes.billbee.app import BillbeeSandbox
from billbee_pulpo_pipeline.sandboxes.billbee.shop import ShopSimulator

__all__ = ["BillbeeSandbox", "ShopSimulator"]
