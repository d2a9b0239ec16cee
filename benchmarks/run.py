#!/usr/bin/env python3
"""Benchmarks: figures, not pass/fail. `python benchmarks/run.py --json` prints one JSON object.

    sandbox_requests_per_s        Billbee sandbox, throttling off: GET /products pages of 1 row,
                                  4 client threads, requests answered per second
    paging_200k_products          the Billbee client paging 200,000 products (pageSize 250), sandbox
                                  throttling off and client pacing off: records/s, wall, CPU, peak RSS
    throttled_paging_2000         2,000 requests of the paced client over several endpoints against the
                                  throttled sandbox: 429s provoked (target 0), wall ÷ rate-limit bound
    pulpo_token_sharing           4 processes × 50 PULPO calls with one token cache: token requests
    initial_sync_products_20k_ratio  first product sync (snapshot + PULPO writer) of 20,000 products,
                                  Billbee throttling on: wall ÷ (Billbee pages ÷ 2 req/s), 429s
    order_import_10k_ratio        the order sync (read + PULPO writer) of 10,000 paid orders, throttling
                                  on: wall ÷ (pages ÷ 2 req/s), 429s, PULPO orders created
    noop_resync_200k              second product sync of 200,000 products, throttling off: wall, CPU,
                                  peak RSS, PULPO writes (must be 0)
    billbee_calls_per_order_tick  Billbee calls of an order tick with 0, 10 and 1,000 changed orders
    golive_backlog_10k            the first run (go-live state sweep + PULPO writer) against 10,000 orders in
                                  Bezahlt last changed up to 60 days ago, throttling on: imported (distinct
                                  Billbee orders in PULPO), duplicates, ratio = wall ÷ (40 pages ÷ 2 req/s),
                                  throttled_429 (targets: 10,000, 0, <= 1.10, 0); accounted_for = imported +
                                  quarantined with a reason (the sandbox's ~6 % of orders with an article
                                  that has no SKU wait in quarantine, as on a real account)
    sweep_cost                    Billbee calls per hour the state sweep adds for a shop with 1,000 orders a
                                  day (30,000 orders over 30 days, paid ones packed within hours): GET /orders
                                  requests the sandbox served per steady-state sweep × sweeps per hour at the
                                  default sweep_minutes (calls_per_hour, target <= 2)
    extract_vs_dlt                our Billbee product snapshot (the `billbee_products` asset) against dlt's
                                  `rest_api` source configured as dlt's docs recommend (page-number
                                  paginator on Paging.TotalPages, data selector Data, DuckDB destination,
                                  parquet loader), same sandbox world: 20,000 products throttled (wall ÷
                                  rate-limit bound, 429s) and 200,000 unthrottled (wall, CPU, peak RSS).
                                  Needs the bench extra: pip install -e .[bench]
    stock_sync_200k_1pct          PULPO stock of 200,000 SKUs, 1 % changed: Billbee write calls ÷ minimum,
                                  wall with throttling on ÷ rate-limit bound, peak RSS (stock_bench.py)
    demo_latency                  6 minutes of `billbee-pulpo demo` (daemon, sensors at their defaults,
                                  sales orders every minute, the shop selling 20 orders a minute):
                                  status_latency_p95_s and label_latency_p95_s from packing finished in
                                  PULPO to the Billbee write (latency_bench.py)
    demo_latency_60_per_min       the same at 60 orders a minute: Billbee's 2 requests/s on
                                  GET /orders/{id} are then fully used by the two flows, writes queue
    chaos                         the chaos run (sandboxes/chaos.py), both variants, BPP_CHAOS_MINUTES
                                  (default 5) each: chaos_invariants_ok, faults injected, syncs killed,
                                  orders/boxes/SKUs checked, 429s provoked with faults off (target 0)

Each figure runs in its own subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from billbee_pulpo_pipeline.sandboxes import credentials as creds  # noqa: E402
from billbee_pulpo_pipeline.sandboxes.runner import SandboxProcess  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def billbee_client(url: str, *, paced: bool, pacer_dir: Path | None = None) -> Any:
    from billbee_pulpo_pipeline.clients.billbee import BillbeeClient

    rate = (2.0, 10.0) if paced else (0.0, 0.0)
    return BillbeeClient(url, creds.BILLBEE_USERNAME, creds.BILLBEE_API_PASSWORD, creds.BILLBEE_API_KEY,
                         rate_per_endpoint=rate[0], rate_per_user=rate[1], pacer_dir=pacer_dir)


# ---- figures (each runs in a child process: `run.py --figure NAME`) ---------------------------------


def fig_sandbox_requests_per_s() -> dict[str, Any]:
    import requests

    with SandboxProcess(products=1000, orders=1000, throttle=False) as sandbox:
        url = f"{sandbox.billbee_url}/products?page=1&pageSize=1"
        auth = (creds.BILLBEE_USERNAME, creds.BILLBEE_API_PASSWORD)
        headers = {"X-Billbee-Api-Key": creds.BILLBEE_API_KEY}
        duration, counts = 8.0, [0] * 4

        def worker(n: int) -> None:
            session = requests.Session()
            end = time.time() + duration
            while time.time() < end:
                session.get(url, auth=auth, headers=headers, timeout=10).raise_for_status()
                counts[n] += 1

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"requests_per_s": round(sum(counts) / duration, 1), "client_threads": 4,
                "seconds": duration}


def fig_paging_200k_products() -> dict[str, Any]:
    with SandboxProcess(products=200_000, orders=100, throttle=False) as sandbox:
        client = billbee_client(sandbox.billbee_url, paced=False)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        count = sum(1 for _ in client.iter_products(page_size=250))
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        return {"records": count, "pages": client.stats.calls, "wall_s": round(wall, 2),
                "records_per_s": round(count / wall), "client_cpu_s": round(cpu, 2),
                "peak_rss_mb": round(peak_rss_mb(), 1)}


def fig_throttled_paging_2000() -> dict[str, Any]:
    """Five workers, each with its own client (as separate runs would have) sharing one pacer file,
    page and read five endpoints of the throttled sandbox until 2,000 requests are made."""
    total = int(os.environ.get("BENCH_THROTTLED_REQUESTS", "2000"))
    with SandboxProcess(products=5000, orders=5000, throttle=True) as sandbox, \
            tempfile.TemporaryDirectory() as pacer_dir:
        def client() -> Any:
            return billbee_client(sandbox.billbee_url, paced=True, pacer_dir=Path(pacer_dir))

        clients = [client() for _ in range(5)]
        product_ids = [p.Id for p in clients[0].iter_product_pages(page_size=250).__next__().items]
        budget = threading.Semaphore(total - clients[0].stats.calls)

        def drain(calls: Any) -> None:
            for _ in calls:
                if not budget.acquire(blocking=False):
                    return

        def repeat(call: Any) -> Any:
            i = 0
            while True:
                yield call(i)
                i += 1

        workers = [
            lambda c: drain(c.iter_product_pages(page_size=1)),
            lambda c: drain(c.iter_order_pages(page_size=1)),
            lambda c: drain(repeat(lambda i: c.get_product(product_ids[i % len(product_ids)]))),
            lambda c: drain(repeat(lambda i: c.get_order_state_enum())),
            lambda c: drain(repeat(lambda i: c.get_shipping_providers())),
        ]
        t0 = time.perf_counter()
        threads = [threading.Thread(target=w, args=(c,)) for w, c in zip(workers, clients, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        served = sandbox.stats("billbee")
        requests_made = sum(c.stats.calls for c in clients)
        bound = max(requests_made / 10.0, max(served["requests"].values()) / 2.0)
        return {"requests": requests_made, "throttled_429_served": served["throttled_429"],
                "client_429": sum(c.stats.throttled for c in clients), "wall_s": round(wall, 1),
                "bound_s": round(bound, 1), "ratio": round(wall / bound, 3)}


def fig_pulpo_token_sharing() -> dict[str, Any]:
    with SandboxProcess(products=10, orders=10) as sandbox, tempfile.TemporaryDirectory() as token_dir:
        code = (
            "import sys; from pathlib import Path\n"
            "from billbee_pulpo_pipeline.clients.pulpo import PulpoClient\n"
            "from billbee_pulpo_pipeline.sandboxes import credentials as c\n"
            f"client = PulpoClient({sandbox.pulpo_url!r}, c.PULPO_USERNAME, c.PULPO_PASSWORD, "
            f"warehouse_id=1, token_dir=Path({token_dir!r}))\n"
            "for _ in range(50): client.check_connection()\n"
        )
        procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT) for _ in range(4)]
        codes = [p.wait() for p in procs]
        stats = sandbox.stats("pulpo")
        return {"processes": 4, "calls": 200, "exit_codes": codes, "token_requests": stats["token_requests"]}


PRODUCTS_ONLY_CONFIG = """
credentials:
  - {name: shop, type: billbee, base_url: "${BILLBEE_BASE_URL}", username: "${BILLBEE_USERNAME}",
     api_password: "${BILLBEE_API_PASSWORD}", api_key: "${BILLBEE_API_KEY}",
     rate_limit_per_endpoint: %(rate)s, rate_limit_per_user: %(user_rate)s}
  - {name: wms, type: pulpo, base_url: "${PULPO_BASE_URL}", username: "${PULPO_USERNAME}",
     password: "${PULPO_PASSWORD}", warehouse_id: 1}
integrations:
  - {name: Produkte, type: products, source: shop, target: wms}
"""


def ours_product_snapshot(products: int, throttled: bool) -> dict[str, Any]:
    """Materialize only the `billbee_products` snapshot asset, in this process."""
    import dagster as dg

    from billbee_pulpo_pipeline.config import load_config
    from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources

    with SandboxProcess(products=products, orders=10, throttle=throttled) as sandbox, \
            tempfile.TemporaryDirectory() as tmp:
        os.environ.update(creds.sandbox_env(sandbox.billbee_url, sandbox.pulpo_url))
        config_file = Path(tmp) / "products.yaml"
        rates = {"rate": 2.0, "user_rate": 10.0} if throttled else {"rate": 0, "user_rate": 0}
        config_file.write_text(PRODUCTS_ONLY_CONFIG % rates)
        config, home = load_config(config_file), Path(tmp) / "home"
        defs = build_definitions(config, home)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        result = dg.materialize(list(defs.assets), selection=[dg.AssetKey(["produkte", "billbee_products"])],
                                resources=build_resources(config, home), instance=dg.DagsterInstance.ephemeral())
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        stats = sandbox.stats("billbee")
        pages = stats["requests"].get("GET /api/v1/products", 0)
        return {"ok": result.success, "products": products, "pages": pages, "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
                "throttled_429": stats["throttled_429"], "ratio": round(wall / (pages / 2.0), 3) if throttled else None}


def dlt_product_extract(products: int, throttled: bool) -> dict[str, Any]:
    """dlt's rest_api source for Billbee products into DuckDB with the parquet loader."""
    import dlt
    from dlt.sources.rest_api import rest_api_source

    with SandboxProcess(products=products, orders=10, throttle=throttled) as sandbox, \
            tempfile.TemporaryDirectory() as tmp:
        source = rest_api_source({
            "client": {
                "base_url": sandbox.billbee_url + "/",
                "auth": {"type": "http_basic", "username": creds.BILLBEE_USERNAME,
                         "password": creds.BILLBEE_API_PASSWORD},
                "headers": {"X-Billbee-Api-Key": creds.BILLBEE_API_KEY},
                "paginator": {"type": "page_number", "base_page": 1, "page_param": "page",
                              "total_path": "Paging.TotalPages"},
            },
            "resources": [{"name": "products", "endpoint": {"path": "products", "params": {"pageSize": 250},
                                                             "data_selector": "Data"}}],
        })
        pipeline = dlt.pipeline(pipeline_name="billbee_products_bench", pipelines_dir=str(Path(tmp) / "pipelines"),
                                destination=dlt.destinations.duckdb(str(Path(tmp) / "dlt.duckdb")),
                                dataset_name="billbee")
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        pipeline.run(source, loader_file_format="parquet")
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        stats = sandbox.stats("billbee")
        pages = stats["requests"].get("GET /api/v1/products", 0) - stats["throttled_429"]
        return {"ok": True, "products": products, "pages": pages, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                "peak_rss_mb": round(peak_rss_mb(), 1), "throttled_429": stats["throttled_429"],
                "ratio": round(wall / (pages / 2.0), 3) if throttled else None}


def fig_extract_vs_dlt() -> dict[str, Any]:
    try:
        import dlt  # noqa: F401
    except ImportError:
        return {"error": "dlt is not installed: pip install -e .[bench]"}
    runs = {}
    for name, products, throttled in (("throttled_20k", 20_000, True), ("unthrottled_200k", 200_000, False)):
        for tool in ("ours", "dlt"):
            runs[f"{tool}_{name}"] = run_child(f"_{tool}_{products}_{int(throttled)}")
    return runs


FLOW_CONFIG = """
credentials:
  - {name: shop, type: billbee, base_url: "${BILLBEE_BASE_URL}", username: "${BILLBEE_USERNAME}",
     api_password: "${BILLBEE_API_PASSWORD}", api_key: "${BILLBEE_API_KEY}",
     rate_limit_per_endpoint: "${BENCH_RATE:-2.0}", rate_limit_per_user: "${BENCH_USER_RATE:-10.0}"}
  - {name: wms, type: pulpo, base_url: "${PULPO_BASE_URL}", username: "${PULPO_USERNAME}",
     password: "${PULPO_PASSWORD}", warehouse_id: 1}
integrations:
  - {name: Produkte, type: products, source: shop, target: wms}
  - {name: Auftraege, type: sales_orders, source: shop, target: wms, import_states: [Bezahlt]}
"""


def fig__flow_sync() -> dict[str, Any]:
    """One sync of BENCH_GROUP against running sandboxes (env from the parent); measured here."""
    import dagster as dg

    from billbee_pulpo_pipeline.config import load_config
    from billbee_pulpo_pipeline.defs.factory import build_definitions, build_resources

    home = Path(os.environ["BENCH_HOME"])
    config_file = home / "flows.yaml"
    if not config_file.exists():
        home.mkdir(parents=True, exist_ok=True)
        config_file.write_text(FLOW_CONFIG)
    config = load_config(config_file)
    defs = build_definitions(config, home)
    group = os.environ["BENCH_GROUP"]
    selection = dg.AssetSelection.groups(group)
    if os.environ.get("BENCH_ASSET"):
        selection = dg.AssetSelection.assets(dg.AssetKey([group, os.environ["BENCH_ASSET"]]))
    sweep = os.environ.get("BENCH_ASSET") == SWEEP_ASSET
    partition = time.strftime("%Y-%m-%d-%H:00", time.gmtime()) if group == "auftraege" and not sweep else None
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    result = dg.materialize(list(defs.assets), selection=selection, resources=build_resources(config, home),
                            instance=dg.DagsterInstance.ephemeral(), partition_key=partition, raise_on_error=False)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    metadata = {}
    for event in result.get_asset_materialization_events():
        metadata[event.asset_key.path[-1]] = {k: v.value for k, v in event.materialization.metadata.items()
                                              if isinstance(v.value, int | float | bool)}
    return {"ok": result.success, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1), "assets": metadata}


def flow_sync(sandbox: SandboxProcess, home: Path, group: str, *, throttled: bool, asset: str = "") -> dict[str, Any]:
    env = {**creds.sandbox_env(sandbox.billbee_url, sandbox.pulpo_url), "BENCH_HOME": str(home),
           "BENCH_GROUP": group, "BENCH_ASSET": asset, "BENCH_RATE": "2.0" if throttled else "0",
           "BENCH_USER_RATE": "10.0" if throttled else "0"}
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return run_child("_flow_sync")
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pulpo_writes(stats: dict[str, Any]) -> int:
    return sum(n for endpoint, n in stats["requests"].items()
               if endpoint.split()[0] in {"POST", "PUT", "PATCH", "DELETE"} and "/auth" not in endpoint)


def fig_initial_sync_products_20k_ratio() -> dict[str, Any]:
    with SandboxProcess(products=20_000, orders=10, throttle=True) as sandbox, tempfile.TemporaryDirectory() as tmp:
        run = flow_sync(sandbox, Path(tmp), "produkte", throttled=True)
        billbee, pulpo = sandbox.stats("billbee"), sandbox.stats("pulpo")
        pages = billbee["requests"].get("GET /api/v1/products", 0)
        return {"ratio": round(run["wall_s"] / (pages / 2.0), 3), "wall_s": run["wall_s"], "billbee_pages": pages,
                "throttled_429": billbee["throttled_429"], "pulpo_write_calls": pulpo_writes(pulpo),
                "peak_rss_mb": run["peak_rss_mb"], "ok": run.get("ok")}


def fig_order_import_10k_ratio() -> dict[str, Any]:
    from billbee_pulpo_pipeline.sandboxes.billbee.shop import ShopSimulator

    with SandboxProcess(products=2_000, orders=10, throttle=True) as sandbox, tempfile.TemporaryDirectory() as tmp:
        flow_sync(sandbox, Path(tmp), "produkte", throttled=True)  # products first, as in production
        shop = ShopSimulator(sandbox.billbee_url, seed=7)
        shop.step(new_orders=10_000, pay_ratio=1.0, cancel_ratio=0.0)
        shop.step(new_orders=0, pay_ratio=1.0, cancel_ratio=0.0)
        # The sandbox stamps changes strictly increasing by 1 ms: 20,000 changes in a few seconds run
        # ahead of the clock. Wait until "now" has passed them, or the newest ones belong to the next tick.
        time.sleep(8)
        sandbox.reset_stats("billbee")
        sandbox.reset_stats("pulpo")
        run = flow_sync(sandbox, Path(tmp), "auftraege", throttled=True)
        billbee = sandbox.stats("billbee")
        pages = billbee["requests"].get("GET /api/v1/orders", 0)
        writer = run.get("assets", {}).get("pulpo_sales_orders", {})
        return {"ratio": round(run["wall_s"] / (pages / 2.0), 3), "wall_s": run["wall_s"], "billbee_pages": pages,
                "throttled_429": billbee["throttled_429"], "orders_read": run["assets"].get("billbee_orders", {})
                .get("records_read"), "pulpo_created": writer.get("created"), "quarantined": writer.get("quarantined"),
                "pulpo_calls": writer.get("pulpo_calls"), "ok": run.get("ok")}


def fig_noop_resync_200k() -> dict[str, Any]:
    with SandboxProcess(products=200_000, orders=10, throttle=False) as sandbox, \
            tempfile.TemporaryDirectory() as tmp:
        first = flow_sync(sandbox, Path(tmp), "produkte", throttled=False)
        sandbox.reset_stats("pulpo")
        second = flow_sync(sandbox, Path(tmp), "produkte", throttled=False)
        return {"wall_s": second["wall_s"], "cpu_s": second["cpu_s"], "peak_rss_mb": second["peak_rss_mb"],
                "pulpo_writes": pulpo_writes(sandbox.stats("pulpo")), "first_sync_wall_s": first["wall_s"],
                "ok": bool(first.get("ok") and second.get("ok"))}


def fig_billbee_calls_per_order_tick() -> dict[str, Any]:
    import requests

    calls = {}
    with SandboxProcess(products=500, orders=5_000, throttle=True) as sandbox:
        listing = requests.get(f"{sandbox.billbee_url}/orders", params={"pageSize": 250, "page": 1},
                               auth=(creds.BILLBEE_USERNAME, creds.BILLBEE_API_PASSWORD),
                               headers={"X-Billbee-Api-Key": creds.BILLBEE_API_KEY, **creds.SIMULATOR_HEADERS},
                               timeout=30).json()
        total = listing["Paging"]["TotalRows"]
        base_id = listing["Data"][0]["BillBeeOrderId"]
        for changed in (0, 10, 1000):
            sandbox.reset("billbee", orders=5_000)
            with tempfile.TemporaryDirectory() as tmp:
                flow_sync(sandbox, Path(tmp), "auftraege", throttled=True, asset="billbee_orders")  # baseline tick
                for i in range(changed):
                    sandbox.control("POST", "billbee", f"orders/{base_id + (i * 7) % total}/touch")
                time.sleep(1.5)
                tick = flow_sync(sandbox, Path(tmp), "auftraege", throttled=True, asset="billbee_orders")
                calls[str(changed)] = tick["assets"]["billbee_orders"].get("billbee_calls")
    return {"calls_by_changed_orders": calls, "target": {"0": 1, "10": 1, "1000": 4}}


SWEEP_ASSET = "billbee_open_import_orders"


def pulpo_external_numbers(sandbox: SandboxProcess) -> list[str]:
    """`external_order_num` of every PULPO sales order (read as the simulator: not counted as ours)."""
    import requests

    session = requests.Session()
    session.headers.update(creds.SIMULATOR_HEADERS)
    token = session.post(f"{sandbox.pulpo_url}/auth", json={
        "grant_type": "password", "username": creds.PULPO_USERNAME, "password": creds.PULPO_PASSWORD,
        "scope": "general"}, timeout=60).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    numbers: list[str] = []
    while True:
        page = session.get(f"{sandbox.pulpo_url}/sales/orders", params={"limit": 100, "offset": len(numbers)},
                           timeout=120).json()
        numbers += [str(row.get("external_order_num")) for row in page["sales_orders"]]
        if len(numbers) >= page["total_results"] or not page["sales_orders"]:
            return numbers


def fig_golive_backlog_10k() -> dict[str, Any]:
    orders = 10_000
    with SandboxProcess(products=2_000, orders=orders, throttle=True, history_days=60, only_state=3) as sandbox, \
            tempfile.TemporaryDirectory() as tmp:
        flow_sync(sandbox, Path(tmp), "produkte", throttled=True)  # products first, as in production
        sandbox.reset_stats("billbee")
        sandbox.reset_stats("pulpo")
        run = flow_sync(sandbox, Path(tmp), "auftraege", throttled=True, asset=SWEEP_ASSET)
        billbee = sandbox.stats("billbee")
        pages = billbee["requests"].get("GET /api/v1/orders", 0)
        numbers = pulpo_external_numbers(sandbox)
        sweep = run.get("assets", {}).get(SWEEP_ASSET, {})
        bound = -(-orders // 250) / 2.0
        return {"imported": len(set(numbers)), "duplicates": len(numbers) - len(set(numbers)),
                "accounted_for": len(set(numbers)) + (sweep.get("quarantined") or 0),
                "ratio": round(run["wall_s"] / bound, 3), "throttled_429": billbee["throttled_429"],
                "orders_in_bezahlt": orders, "quarantined": sweep.get("quarantined"), "backlog": sweep.get("backlog"),
                "billbee_pages": pages, "wall_s": run["wall_s"], "bound_s": bound,
                "pulpo_calls": sweep.get("pulpo_calls"), "ok": run.get("ok")}


def fig_sweep_cost() -> dict[str, Any]:
    from billbee_pulpo_pipeline.config.models import SalesOrdersSettings

    per_hour = 60 / SalesOrdersSettings().sweep_minutes
    # 1,000 orders a day for 30 days; the newest ~4 hours (167 orders) are mostly open, older ones shipped
    with SandboxProcess(products=2_000, orders=30_000, recent_orders=167, throttle=True) as sandbox, \
            tempfile.TemporaryDirectory() as tmp:
        flow_sync(sandbox, Path(tmp), "produkte", throttled=True)
        first = flow_sync(sandbox, Path(tmp), "auftraege", throttled=True, asset=SWEEP_ASSET)  # go-live backlog
        calls = []
        for _ in range(3):  # steady state: three sweeps, each counted at the sandbox
            sandbox.reset_stats("billbee")
            run = flow_sync(sandbox, Path(tmp), "auftraege", throttled=True, asset=SWEEP_ASSET)
            calls.append(sum(sandbox.stats("billbee")["requests"].values()))
        sweep = run.get("assets", {}).get(SWEEP_ASSET, {})
        return {"calls_per_hour": round(max(calls) * per_hour, 2), "calls_per_sweep": calls,
                "sweeps_per_hour": per_hour, "orders_in_import_states": sweep.get("in_import_states"),
                "go_live_backlog": first.get("assets", {}).get(SWEEP_ASSET, {}).get("backlog"),
                "sweep_recovered": sweep.get("sweep_recovered"), "ok": bool(first.get("ok") and run.get("ok"))}


def chaos_summary(report: Any) -> dict[str, Any]:
    return {"ok": report.ok, "minutes": round(report.wall_seconds / 60, 1), "syncs": dict(report.syncs),
            "faults": report.faults, "world": dict(report.world), "provoked_429_faults_off": report.provoked_429,
            "invariants": {i.name: i.counts for i in report.invariants},
            "safety_checks": len(report.safety_checks),
            "safety_checks_ok": all(c["ok"] for c in report.safety_checks),
            "sync_errors": dict(report.errors.most_common(6)),
            "violations": [p for i in report.invariants for p in i.problems[:5]]}


def fig_chaos() -> dict[str, Any]:
    """Both variants and a quiet run (faults and kills off: the 429s the product provokes by itself, target
    0) at once, each with its own sandboxes and BPP_HOME."""
    from concurrent.futures import ThreadPoolExecutor

    from billbee_pulpo_pipeline.sandboxes.chaos import ChaosOptions, run_chaos

    minutes = float(os.environ.get("BPP_CHAOS_MINUTES", "5"))
    with tempfile.TemporaryDirectory() as tmp:
        runs = {variant: ChaosOptions(minutes=minutes, variant=variant, workdir=Path(tmp) / variant, seed=seed)
                for seed, variant in enumerate(("labels", "shipments"), 1)}
        runs["quiet"] = ChaosOptions(minutes=min(minutes, 5.0), variant="labels", workdir=Path(tmp) / "quiet",
                                     faults=False, kill_share=0.0, hook_share=0.0, seed=3)
        with ThreadPoolExecutor(len(runs)) as pool:
            reports = dict(zip(runs, pool.map(run_chaos, runs.values()), strict=True))
    for report in reports.values():
        print("\n".join(report.lines()), file=sys.stderr)
    variants = {name: chaos_summary(report) for name, report in reports.items() if name != "quiet"}
    calm = reports["quiet"]
    return {"chaos_invariants_ok": all(report.ok for report in reports.values()),
            "provoked_429_faults_off": sum(r.provoked_429 for r in reports.values()),
            "quiet_run": {"minutes": round(calm.wall_seconds / 60, 1), "ok": calm.ok, "syncs": dict(calm.syncs),
                          "billbee_requests": calm.faults.get("billbee_requests"),
                          "throttled_429": calm.faults.get("billbee_throttled_429")},
            "variants": variants}


FIGURES = {
    "sandbox_requests_per_s": fig_sandbox_requests_per_s,
    "paging_200k_products": fig_paging_200k_products,
    "throttled_paging_2000": fig_throttled_paging_2000,
    "pulpo_token_sharing": fig_pulpo_token_sharing,
    "initial_sync_products_20k_ratio": fig_initial_sync_products_20k_ratio,
    "order_import_10k_ratio": fig_order_import_10k_ratio,
    "noop_resync_200k": fig_noop_resync_200k,
    "billbee_calls_per_order_tick": fig_billbee_calls_per_order_tick,
    "golive_backlog_10k": fig_golive_backlog_10k,
    "sweep_cost": fig_sweep_cost,
    "extract_vs_dlt": fig_extract_vs_dlt,
    "stock_sync_200k_1pct": lambda: __import__("stock_bench").fig_stock_sync_200k_1pct(),  # benchmarks/stock_bench.py
    # status_latency_p95_s and label_latency_p95_s from one 6-minute demo run (benchmarks/latency_bench.py)
    "demo_latency": lambda: __import__("latency_bench").fig_demo_latency(),
    "demo_latency_60_per_min": lambda: __import__("latency_bench").fig_demo_latency(tick_seconds=5),
    "chaos": fig_chaos,
}
HIDDEN_FIGURES = {  # halves of extract_vs_dlt, each in its own process for a clean peak RSS
    f"_{tool}_{n}_{int(t)}": (lambda tool=tool, n=n, t=t: (ours_product_snapshot if tool == "ours"
                                                              else dlt_product_extract)(n, t))
    for tool in ("ours", "dlt") for n, t in ((20_000, True), (200_000, False))
}


def run_child(name: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--figure", name], capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", help="comma-separated figure names")
    parser.add_argument("--figure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.figure:
        print(json.dumps({**FIGURES, **HIDDEN_FIGURES, "_flow_sync": fig__flow_sync}[args.figure]()))
        return 0
    names = args.only.split(",") if args.only else list(FIGURES)
    results = {}
    for name in names:
        started = time.time()
        results[name] = run_child(name)
        if not args.json:
            print(f"{name}: {results[name]} ({time.time() - started:.0f} s)", file=sys.stderr)
    print(json.dumps(results, indent=2 if not args.json else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
