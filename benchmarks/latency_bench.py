"""Latency of the PULPO → Billbee flows in the demo world, with the sensors' default intervals.

Starts `billbee-pulpo demo` (sandboxes with the live shop and warehouse, one products sync, then
`dagster dev`: webserver and daemon, schedules and sensors on) with a config whose integrations run
at their defaults, except sales orders every minute so that orders reach the warehouse quickly.
For `minutes` it collects the sandboxes' request logs, then measures per packing order:

- `status_latency_p95_s`: from the warehouse's `POST /packing/orders/{id}/finish` (or `close`) to
  the product's `PUT /orders/{billbee id}/orderstate` in Billbee;
- `label_latency_p95_s`: from the same moment to the product's `POST /shipment/shipwithlabel` for it.

Packing orders finished in the last `grace` seconds of the run are left out (their write may
simply not have happened yet); the counts of measured and still pending orders are reported.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
credentials:
  - {name: shop, type: billbee, base_url: "http://127.0.0.1:%(billbee)d/api/v1", username: "${BILLBEE_USERNAME}",
     api_password: "${BILLBEE_API_PASSWORD}", api_key: "${BILLBEE_API_KEY}"}
  - {name: wms, type: pulpo, base_url: "http://127.0.0.1:%(pulpo)d/api/v1", username: "${PULPO_USERNAME}",
     password: "${PULPO_PASSWORD}", warehouse_id: 1}
integrations:
  - {name: Produkte, type: products, source: shop, target: wms}
  - {name: Auftraege, type: sales_orders, source: shop, target: wms, interval_minutes: 1, import_states: [Bezahlt]}
  - {name: Status, type: status_updates, source: wms, target: shop}
  - {name: Etiketten, type: shipping_labels, source: wms, target: shop}
"""

FINISH = re.compile(r"/packing/orders/(\d+)/(finish|close)$")
ORDER_STATE = re.compile(r"/orders/(\d+)/orderstate$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)


class Sandbox:
    """The demo's sandboxes, seen from outside through their control API."""

    def __init__(self, billbee_port: int, pulpo_port: int) -> None:
        self.roots = {"billbee": f"http://127.0.0.1:{billbee_port}", "pulpo": f"http://127.0.0.1:{pulpo_port}"}
        self.seen: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {"billbee": {}, "pulpo": {}}

    def up(self) -> bool:
        try:
            return all(requests.get(f"{r}/__sandbox/stats", timeout=2).ok for r in self.roots.values())
        except requests.RequestException:
            return False

    def collect(self) -> None:
        """Merge the recent request logs (they are bounded, so this runs every few seconds)."""
        for system, root in self.roots.items():
            for entry in requests.get(f"{root}/__sandbox/requests?limit=5000", timeout=30).json():
                key = (entry.get("at"), entry["method"], entry["path"], json.dumps(entry.get("body"), sort_keys=True))
                self.seen[system][key] = entry

    def entries(self, system: str) -> list[dict[str, Any]]:
        return sorted(self.seen[system].values(), key=lambda e: e.get("at") or 0)


def billbee_order_of(pulpo_root: str, packing_ids: set[int]) -> dict[int, str]:
    """Packing order id → Billbee order id, read as the simulator (not counted as the product's calls)."""
    from billbee_pulpo_pipeline.sandboxes import credentials

    session = requests.Session()
    session.headers.update(credentials.SIMULATOR_HEADERS)
    token = session.post(f"{pulpo_root}/api/v1/auth", json={
        "grant_type": "password", "username": credentials.PULPO_USERNAME, "password": credentials.PULPO_PASSWORD,
        "scope": "general"}, timeout=30).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    out = {}
    for packing_id in packing_ids:
        packing = session.get(f"{pulpo_root}/api/v1/packing/orders/{packing_id}", timeout=30).json()
        sales_id = packing.get("sales_order_id")
        if sales_id:
            sales = session.get(f"{pulpo_root}/api/v1/sales/orders/{sales_id}", timeout=30).json()
            if sales.get("external_order_num"):
                out[packing_id] = str(sales["external_order_num"])
    return out


def measure(sandbox: Sandbox, started: float, ended: float, grace: float) -> dict[str, Any]:
    finished: dict[int, float] = {}
    for entry in sandbox.entries("pulpo"):
        match = FINISH.search(entry["path"])
        if match and entry.get("simulator") and entry["status"] < 300 and entry["at"] >= started:
            finished.setdefault(int(match.group(1)), entry["at"])
    states: dict[str, float] = {}
    labels: dict[str, float] = {}
    for entry in sandbox.entries("billbee"):
        if entry.get("simulator") or entry["status"] >= 300:
            continue
        if entry["method"] == "PUT" and (match := ORDER_STATE.search(entry["path"])):
            states.setdefault(match.group(1), entry["at"])
        elif entry["path"].endswith("/shipment/shipwithlabel") and isinstance(entry.get("body"), dict):
            labels.setdefault(str(entry["body"].get("OrderId")), entry["at"])
    orders = billbee_order_of(sandbox.roots["pulpo"], {p for p, at in finished.items() if at <= ended - grace})
    result: dict[str, Any] = {"packing_orders_finished": len(finished), "measured_orders": len(orders)}
    for name, written in (("status", states), ("label", labels)):
        latencies = [written[b] - finished[p] for p, b in orders.items() if b in written and written[b] >= finished[p]]
        result[f"{name}_latency_p95_s"] = p95(latencies)
        result[f"{name}_latency_median_s"] = round(sorted(latencies)[len(latencies) // 2], 1) if latencies else None
        result[f"{name}_samples"] = len(latencies)
        result[f"{name}_pending"] = len(orders) - len(latencies)
    return result


def fig_demo_latency(minutes: float = 6.0, grace: float = 90.0, tick_seconds: float = 15.0) -> dict[str, Any]:
    """`tick_seconds` sets the world's pace: the shop creates 5 orders per tick (15 s, the demo's
    default: 20 a minute; 5 s: 60 a minute, as fast as Billbee's 2 requests/s on `GET /orders/{id}` let
    the status and label flows each read every order, so writes queue)."""
    billbee_port, pulpo_port, ui_port = free_port(), free_port(), free_port()
    sandbox = Sandbox(billbee_port, pulpo_port)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "demo.yaml"
        config.write_text(CONFIG % {"billbee": billbee_port, "pulpo": pulpo_port})
        env = {**os.environ, "BPP_HOME": str(Path(tmp) / "home"), "DAGSTER_HOME": str(Path(tmp) / "dagster")}
        demo = subprocess.Popen(
            [sys.executable, "-m", "billbee_pulpo_pipeline.cli", "demo", "--config", str(config),
             "--billbee-port", str(billbee_port), "--pulpo-port", str(pulpo_port), "--port", str(ui_port),
             "--tick-seconds", str(tick_seconds)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "demo.log", "w"),  # noqa: SIM115
            start_new_session=True)
        try:
            deadline = time.time() + 120
            while not sandbox.up():
                if time.time() > deadline or demo.poll() is not None:
                    return {"error": "the demo did not start: " + (Path(tmp) / "demo.log").read_text()[-300:]}
                time.sleep(1)
            started = time.time()
            end = started + minutes * 60
            while time.time() < end and demo.poll() is None:
                time.sleep(10)
                sandbox.collect()
            ended = time.time()
            return {"minutes": minutes, "orders_per_minute": round(5 * 60 / tick_seconds, 1),
                    **measure(sandbox, started, ended, grace)}
        finally:
            os.killpg(demo.pid, signal.SIGTERM)
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)


if __name__ == "__main__":
    print(json.dumps(fig_demo_latency(*(float(a) for a in sys.argv[1:]))))
