"""Benchmark `stock_sync_200k_1pct`: the stock flow (PULPO → Billbee) over 200,000 SKUs, 1 % changed.

Setup (not measured): both sandboxes with the same 200,000-article catalogue, PULPO stocked; a first
stock sync with throttling off (the full reconcile reads Billbee's stock and writes what differs).
Then PULPO's sandbox changes the storage stock of 1 % of the SKUs (`/__sandbox/stock/shuffle`),
Billbee's throttling is switched on and one sync of the `lagerbestand` group is measured in a child
process (Dagster `materialize`, as `billbee-pulpo sync` runs it), followed by a no-op rerun.

Figures:
- `write_calls_ratio`: Billbee `updatestockmultiple` calls ÷ the minimum ceil(rows written ÷ batch size);
  target 1.0 (full batches only, the last one of the run excepted).
- `wall_ratio`: the measured sync's wall time ÷ the rate-limit bound, i.e. the time Billbee's limits alone
  force on its Billbee calls (the busiest endpoint's calls ÷ 2/s, or all calls ÷ 10/s); target ≤ 1.15.
- `peak_rss_mb` of the measured sync's process, `throttled_429` (target 0), the no-op rerun's writes (0).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

SKUS = 200_000
FRACTION = 0.01
BATCH_SIZE = 100  # the setting's default
GROUP = "lagerbestand"
WRITE = "POST /api/v1/products/updatestockmultiple"

STOCK_CONFIG = f"""
credentials:
  - {{name: shop, type: billbee, base_url: "${{BILLBEE_BASE_URL}}", username: "${{BILLBEE_USERNAME}}",
     api_password: "${{BILLBEE_API_PASSWORD}}", api_key: "${{BILLBEE_API_KEY}}",
     rate_limit_per_endpoint: "${{BENCH_RATE:-2.0}}", rate_limit_per_user: "${{BENCH_USER_RATE:-10.0}}"}}
  - {{name: wms, type: pulpo, base_url: "${{PULPO_BASE_URL}}", username: "${{PULPO_USERNAME}}",
     password: "${{PULPO_PASSWORD}}", warehouse_id: 1}}
integrations:
  - {{name: Lagerbestand, type: stock, source: wms, target: shop, batch_size: {BATCH_SIZE}}}
"""


def rate_limit_bound(requests_by_endpoint: dict[str, int]) -> float:
    """Seconds Billbee's documented limits (2/s per endpoint, 10/s per user) force on these calls."""
    if not requests_by_endpoint:
        return 0.0
    return max(max(requests_by_endpoint.values()) / 2.0, sum(requests_by_endpoint.values()) / 10.0)


def fig_stock_sync_200k_1pct() -> dict[str, Any]:
    from run import flow_sync  # benchmarks/run.py (imported lazily: it registers this figure)

    from billbee_pulpo_pipeline.sandboxes.runner import SandboxProcess

    with SandboxProcess(products=SKUS, orders=10, throttle=False) as sandbox, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "flows.yaml").write_text(STOCK_CONFIG)  # `flow_sync` keeps a config it finds there
        sandbox.reset("pulpo", products=SKUS, stock=True)
        setup = flow_sync(sandbox, home, GROUP, throttled=False)
        shuffled = sandbox.control("POST", "pulpo", "stock/shuffle", {"fraction": FRACTION, "warehouse_id": 1})
        sandbox.set_throttle("billbee", True)
        sandbox.reset_stats("billbee")
        sandbox.reset_stats("pulpo")

        run = flow_sync(sandbox, home, GROUP, throttled=True)
        billbee, pulpo = sandbox.stats("billbee"), sandbox.stats("pulpo")
        sandbox.reset_stats("billbee")
        rerun = flow_sync(sandbox, home, GROUP, throttled=True)
        rerun_writes = sandbox.stats("billbee")["requests"].get(WRITE, 0)

    writer = run.get("assets", {}).get("billbee_stock", {})
    rows = sum(int(writer.get(key, 0)) for key in ("records_written", "refused", "not_confirmed"))  # rows sent
    calls = billbee["requests"].get(WRITE, 0)
    minimum = math.ceil(rows / BATCH_SIZE)
    bound = rate_limit_bound(billbee["requests"])
    return {
        "ok": bool(setup.get("ok") and run.get("ok") and rerun.get("ok")),
        "skus": SKUS, "pulpo_changed": shuffled["changed"], "rows_sent": rows,
        "write_calls": calls, "write_calls_minimum": minimum,
        "write_calls_ratio": round(calls / minimum, 3) if minimum else None,
        "billbee_calls": billbee["requests"], "pulpo_calls": sum(pulpo["requests"].values()),
        "throttled_429": billbee["throttled_429"],
        "wall_s": run.get("wall_s"), "bound_s": round(bound, 2),
        "wall_ratio": round(run["wall_s"] / bound, 3) if bound and run.get("wall_s") else None,
        "cpu_s": run.get("cpu_s"), "peak_rss_mb": run.get("peak_rss_mb"),
        "rerun_write_calls": rerun_writes, "rerun_wall_s": rerun.get("wall_s"),
        "setup_wall_s": setup.get("wall_s"),
    }
