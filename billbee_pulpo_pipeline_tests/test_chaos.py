"""The chaos run at CI scale: faults, SIGKILLs and crash-hook deaths, then every invariant holds.

The same harness runs for 30 minutes or more as `python -m billbee_pulpo_pipeline.sandboxes.chaos`
(and in `benchmarks/run.py --only chaos`); here each variant gets 90 seconds of chaos.
"""

from __future__ import annotations

import pytest

from billbee_pulpo_pipeline.sandboxes.chaos import ChaosOptions, Invariant, run_chaos


def invariant(invariants: list[Invariant], prefix: str) -> Invariant:
    [found] = [i for i in invariants if i.name.startswith(prefix)]
    return found


@pytest.mark.parametrize("variant", ["labels", "shipments"])
def test_chaos_run_keeps_every_promise(variant, tmp_path):
    report = run_chaos(ChaosOptions(minutes=1.5, variant=variant, seed=3, workdir=tmp_path,
                                    hook_probability=0.15, safety_check_minutes=0.5))
    text = "\n".join(report.lines())
    # The chaos really happened: faults of every kind, and syncs died mid-flight.
    faults = report.faults
    assert faults["billbee_429"] > 0 and faults["billbee_5xx"] > 0 and faults["pulpo_5xx"] > 0, text
    assert faults["pulpo_tokens"] >= 2, text  # 30-second tokens were renewed
    assert report.syncs["killed"] + report.syncs["crashed"] >= 1, text
    assert report.world["shop_paid"] >= 10 and report.world["warehouse_packed"] >= 10, text
    # ... and afterwards every promise holds, over real data.
    assert report.ok, text
    assert len(report.safety_checks) >= 2 and all(c["ok"] for c in report.safety_checks), text
    orders = invariant(report.invariants, "orders exactly once")
    assert orders.counts["in_pulpo"] >= 20 and orders.counts["doubled"] == 0, text
    assert invariant(report.invariants, "each tracking code at most one").counts["doubled"] == 0
    stock = invariant(report.invariants, "Billbee stock equals")
    assert stock.counts["skus"] >= 100 and stock.counts["diverged"] == 0, text
    assert report.syncs["final_ok"] == 4, text  # with faults off, every final sync succeeds
    assert report.provoked_429 == 0, text        # and provokes no 429 of its own
