#!/usr/bin/env python3
"""Benchmarks: figures, not pass/fail. `python benchmarks/run.py --json` prints one JSON object.

    sandbox_requests_per_s        Billbee sandbox, throttling off: GET /products pages of 1 row,
                                  4 client threads, requests answered per second
    paging_200k_products          the Billbee client paging 200,000 products (pageSize 250), sandbox
                                  throttling off and client pacing off: records/s, wall, CPU, peak RSS
    throttled_paging_2000         2,000 requests of the paced client over several endpoints against the
                                  throttled sandbox: 429s provoked (target 0), wall ÷ rate-limit bound
    pulpo_token_sharing           4 processes × 50 PULPO calls with one token cache: token requests

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


FIGURES = {
    "sandbox_requests_per_s": fig_sandbox_requests_per_s,
    "paging_200k_products": fig_paging_200k_products,
    "throttled_paging_2000": fig_throttled_paging_2000,
    "pulpo_token_sharing": fig_pulpo_token_sharing,
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
        print(json.dumps(FIGURES[args.figure]()))
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
