"""Start the sandboxes: both in one process (`billbee-pulpo sandbox`), in a subprocess for tests and
benchmarks (`SandboxProcess`), or a single app in a thread (`serve_in_thread`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import requests
import uvicorn
from starlette.applications import Starlette

READY_PREFIX = "SANDBOX_READY "


@dataclass
class SandboxOptions:
    host: str = "127.0.0.1"
    billbee_port: int = 0
    pulpo_port: int = 0
    seed: int = 1
    products: int = 1000
    orders: int = 2000
    throttle: bool = True
    live: bool = False          # run the simulated shop and warehouse on a clock
    tick_seconds: float = 5.0   # live world: seconds between simulation steps
    history_days: int = 30      # historic orders were created in these days before the start
    recent_orders: int | None = None  # newest orders with the mostly-open state mix (default: a fifth, <= 2,000)
    only_state: int | None = None     # every historic order in this Billbee state (e.g. 3 = Bezahlt)
    filter_dates_as: str | None = None  # Billbee: read GET /orders date filters as this zone's wall time


def _server(app: Starlette, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off", loop="asyncio", http="h11" if os.name == "nt" else "auto")
    return uvicorn.Server(config)


def _bound_port(server: uvicorn.Server) -> int:
    return int(server.servers[0].sockets[0].getsockname()[1])


def build_apps(options: SandboxOptions) -> tuple[Any, Any]:
    from billbee_pulpo_pipeline.sandboxes.billbee.app import BillbeeSandbox
    from billbee_pulpo_pipeline.sandboxes.pulpo.app import PulpoSandbox

    billbee = BillbeeSandbox(seed=options.seed, products=options.products, orders=options.orders,
                             throttle=options.throttle, history_days=options.history_days,
                             recent_orders=options.recent_orders, only_state=options.only_state)
    billbee.update_config({"filter_dates_as": options.filter_dates_as})
    pulpo = PulpoSandbox(seed=options.seed)
    return billbee, pulpo


async def serve_both(options: SandboxOptions, announce: bool = True) -> None:
    """Serve both sandboxes until cancelled; print one ready line with their base URLs."""
    billbee, pulpo = build_apps(options)
    servers = [_server(billbee.build(), options.host, options.billbee_port),
               _server(pulpo.build(), options.host, options.pulpo_port)]
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    while not all(s.started for s in servers):
        if any(t.done() for t in tasks):
            for t in tasks:
                if t.done() and t.exception():
                    raise t.exception()  # type: ignore[misc]
            raise RuntimeError("a sandbox server stopped during start-up")
        await asyncio.sleep(0.02)
    urls = {name: f"http://{options.host}:{_bound_port(s)}/api/v1"
            for name, s in zip(("billbee_url", "pulpo_url"), servers, strict=True)}
    world_stop = threading.Event()
    if options.live:
        from billbee_pulpo_pipeline.sandboxes.world import run_world

        threading.Thread(target=run_world, args=(urls["billbee_url"], urls["pulpo_url"], options, world_stop),
                         daemon=True, name="sandbox-world").start()
    if announce:
        print(READY_PREFIX + json.dumps(urls), flush=True)
    try:
        await asyncio.gather(*tasks)
    finally:
        world_stop.set()


def run_forever(options: SandboxOptions) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_both(options))


def serve_in_thread(app: Starlette, host: str = "127.0.0.1") -> tuple[str, threading.Event]:
    """Serve one app on a free port in a daemon thread; returns (http://host:port, stop event)."""
    server = _server(app, host, 0)
    stop = threading.Event()

    def run() -> None:
        asyncio.run(server.serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("sandbox server did not start")
        time.sleep(0.01)

    def watch() -> None:
        stop.wait()
        server.should_exit = True

    threading.Thread(target=watch, daemon=True).start()
    return f"http://{host}:{_bound_port(server)}", stop


class SandboxProcess:
    """Both sandboxes in a child process, for tests and benchmarks. Use as a context manager."""

    def __init__(self, **options: Any) -> None:
        self.options = SandboxOptions(**options)
        self.proc: subprocess.Popen[str] | None = None
        self.billbee_url = ""
        self.pulpo_url = ""
        self.session = requests.Session()

    def start(self) -> SandboxProcess:
        o = self.options
        cmd = [sys.executable, "-m", "billbee_pulpo_pipeline.sandboxes", "--host", o.host,
               "--billbee-port", str(o.billbee_port), "--pulpo-port", str(o.pulpo_port), "--seed", str(o.seed),
               "--products", str(o.products), "--orders", str(o.orders), "--tick-seconds", str(o.tick_seconds)]
        if not o.throttle:
            cmd.append("--no-throttle")
        if o.live:
            cmd.append("--live")
        if o.history_days != 30:
            cmd += ["--history-days", str(o.history_days)]
        if o.recent_orders is not None:
            cmd += ["--recent-orders", str(o.recent_orders)]
        if o.only_state is not None:
            cmd += ["--only-state", str(o.only_state)]
        if o.filter_dates_as:
            cmd += ["--filter-dates-as", o.filter_dates_as]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1)
        assert self.proc.stdout is not None
        deadline = time.time() + 60
        for line in self.proc.stdout:
            if line.startswith(READY_PREFIX):
                urls = json.loads(line[len(READY_PREFIX):])
                self.billbee_url, self.pulpo_url = urls["billbee_url"], urls["pulpo_url"]
                break
            if time.time() > deadline:
                break
        if not self.billbee_url:
            self.stop()
            raise RuntimeError("sandboxes did not start (see stderr above)")
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- control API helpers -----------------------------------------------------------------------

    def root(self, system: str) -> str:
        url = self.billbee_url if system == "billbee" else self.pulpo_url
        return url.rsplit("/api/v1", 1)[0]

    def _control(self, method: str, system: str, path: str, payload: Any = None) -> Any:
        response = self.session.request(method, f"{self.root(system)}/__sandbox/{path}", json=payload, timeout=120)
        response.raise_for_status()
        return response.json()

    def stats(self, system: str) -> dict[str, Any]:
        return self._control("GET", system, "stats")

    def reset_stats(self, system: str) -> None:
        self._control("POST", system, "stats/reset")

    def reset(self, system: str, **params: Any) -> dict[str, Any]:
        return self._control("POST", system, "reset", params)

    def set_faults(self, system: str, **knobs: Any) -> dict[str, Any]:
        return self._control("PUT", system, "faults", knobs)

    def set_throttle(self, system: str, on: bool) -> dict[str, Any]:
        return self._control("PUT", system, "config", {"throttle": on})

    def set_config(self, system: str, **knobs: Any) -> dict[str, Any]:
        return self._control("PUT", system, "config", knobs)

    def requests(self, system: str, limit: int = 1000) -> list[dict[str, Any]]:
        return self._control("GET", system, f"requests?limit={limit}")

    def control(self, method: str, system: str, path: str, payload: Any = None) -> Any:
        """Any other control endpoint (for example the simulated world's steps)."""
        return self._control(method, system, path, payload)


@contextlib.contextmanager
def running_sandboxes(**options: Any) -> Iterator[SandboxProcess]:
    with SandboxProcess(**options) as sandbox:
        yield sandbox
