"""All six integrations at once, with a backfill of order windows beside them: every run is its own
process on the one DuckDB state store, and none may fail on DuckDB's single-writer lock."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from billbee_pulpo_pipeline_tests.conftest import PROJECT_ROOT

# The example's five integrations, plus shipments from a second PULPO user (the same sandbox, another
# warehouse): labels and shipments for the same two systems would be refused by the config check.
CONFIG = """
credentials:
  - {name: billbee-shop, type: billbee, base_url: "${BILLBEE_BASE_URL}", username: "${BILLBEE_USERNAME}",
     api_password: "${BILLBEE_API_PASSWORD}", api_key: "${BILLBEE_API_KEY}"}
  - {name: pulpo-wms, type: pulpo, base_url: "${PULPO_BASE_URL}", username: "${PULPO_USERNAME}",
     password: "${PULPO_PASSWORD}", warehouse_id: 1}
  - {name: pulpo-wms-2, type: pulpo, base_url: "${PULPO_BASE_URL}", username: "${PULPO_USERNAME}",
     password: "${PULPO_PASSWORD}", warehouse_id: 2}
integrations:
  - {name: Produkte, type: products, source: billbee-shop, target: pulpo-wms}
  - {name: Verkaufsaufträge, type: sales_orders, source: billbee-shop, target: pulpo-wms, lookback_hours: 3}
  - {name: Status, type: status_updates, source: pulpo-wms, target: billbee-shop}
  - {name: Lagerbestand, type: stock, source: pulpo-wms, target: billbee-shop}
  - {name: Versandetiketten, type: shipping_labels, source: pulpo-wms, target: billbee-shop}
  - {name: Sendungen, type: shipments, source: pulpo-wms-2, target: billbee-shop}
"""

BACKFILL = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
import dagster as dg
from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources
config_path, home = Path(sys.argv[1]), Path(sys.argv[2])
config = load_config(config_path)
defs = build_definitions(config, home)
hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
ok = True
for back in (6, 5, 4):  # windows the syncs beside it do not read (their lookback is 3 hours)
    key = (hour - timedelta(hours=back)).strftime("%Y-%m-%d-%H:%M")
    result = dg.materialize(list(defs.assets), selection=dg.AssetSelection.groups("verkaufsauftraege"),
                            resources=build_resources(config, home), partition_key=key, raise_on_error=False)
    ok = ok and result.success
sys.exit(0 if ok else 1)
"""


def test_six_integrations_and_a_backfill_at_once_never_fail_on_the_state_store(sandbox, bpp_env, tmp_path):
    config = tmp_path / "all.yaml"
    config.write_text(CONFIG)
    env = {**bpp_env, "BPP_CONFIG": str(config)}
    # An install live for a day (partitions start at go-live, issue 11): the backfilled hours are partitions.
    went_live = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
    (Path(env["BPP_HOME"]) / "go_live").mkdir(parents=True, exist_ok=True)
    (Path(env["BPP_HOME"]) / "go_live" / "verkaufsauftraege").write_text(went_live.isoformat() + "\n")
    cli = [sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "--json"]
    first = subprocess.run([*cli, "Produkte"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]  # the products the orders need

    names = ["Produkte", "Verkaufsaufträge", "Status", "Lagerbestand", "Versandetiketten", "Sendungen"]
    running = [subprocess.Popen([*cli, name], env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for name in names]
    backfill = subprocess.Popen([sys.executable, "-c", BACKFILL, str(config), env["BPP_HOME"]], env=env,
                                cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outcomes = [(name, *process.communicate(timeout=600), process.returncode)
                for name, process in zip([*names, "backfill"], [*running, backfill], strict=True)]

    for name, stdout, stderr, code in outcomes:
        assert code == 0, f"{name} failed:\n{stderr[-3000:]}"
        assert "Could not set lock" not in stderr and "stayed busy" not in stderr, name
        if name != "backfill":
            [summary] = json.loads(stdout)["integrations"]
            assert summary["status"] == "success" and summary["errors"] == [], (name, summary)
    assert (Path(env["BPP_HOME"]) / "state.duckdb").exists()
