"""The chaos run at CI scale: faults, SIGKILLs and crash-hook deaths, then every invariant holds.

The same harness runs for 30 minutes or more as `python -m billbee_pulpo_pipeline.sandboxes.chaos`
(and in `benchmarks/run.py --only chaos`); here each variant gets 90 seconds of chaos.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from billbee_pulpo_pipeline.sandboxes.chaos import ChaosOptions, Invariant, run_chaos
from billbee_pulpo_pipeline_tests.test_secrets import (
    duckdb_text,
    files_under,
    harvest_tokens,
    leaks_in,
    secret_needles,
    token_files,
)


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
    final = sum(n for outcome, n in report.syncs.items() if outcome.startswith("final_"))
    assert report.syncs["final_ok"] == final >= 4, text  # with faults off, every final sync succeeds
    assert report.pending_after_settle == 0, text      # ... until nothing is left pending
    assert report.provoked_429 == 0, text        # and provokes no 429 of its own
    assert_no_secret_in(tmp_path, json.dumps(report.as_dict()).encode())


def assert_no_secret_in(workdir: Path, report: bytes) -> None:
    """Nothing the chaos run left behind (state store, pacing and lock files, the syncs' reported errors)
    holds a credential or a PULPO token; the token cache is the one file meant to hold a token."""
    home = workdir / "bpp"
    tokens: set[str] = set()
    harvest_tokens(home, tokens)
    assert tokens, "the syncs cached a PULPO token"
    needles = secret_needles(tokens)
    header = next(iter(tokens)).split(".", 1)[0].encode()
    cache = set(token_files(home))
    found = {str(path): leaks_in(path.read_bytes(), needles, header) for path in files_under(home)
             if path not in cache}
    found["state store (SQL)"] = leaks_in(duckdb_text(home / "state.duckdb"), needles, header)
    found["report"] = leaks_in(report, needles, header)
    assert not {where: leaks for where, leaks in found.items() if leaks}
