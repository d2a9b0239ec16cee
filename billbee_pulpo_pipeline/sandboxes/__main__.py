"""`python -m billbee_pulpo_pipeline.sandboxes`: both sandboxes on loopback (see `billbee-pulpo sandbox`)."""

from __future__ import annotations

import argparse

from billbee_pulpo_pipeline.sandboxes.runner import SandboxOptions, run_forever


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="billbee-pulpo sandbox", description="Billbee and PULPO sandboxes on loopback.")
    add_sandbox_arguments(p)
    return p


def add_sandbox_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    p.add_argument("--billbee-port", type=int, default=8081, help="Billbee sandbox port (0: any free port)")
    p.add_argument("--pulpo-port", type=int, default=8082, help="PULPO sandbox port (0: any free port)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated data")
    p.add_argument("--products", type=int, default=1000, help="products in the Billbee shop")
    p.add_argument("--orders", type=int, default=2000, help="historic orders in the Billbee shop")
    p.add_argument("--no-throttle", action="store_true", help="switch Billbee's 429 throttling off")
    p.add_argument("--live", action="store_true", help="run the simulated shop and warehouse on a clock")
    p.add_argument("--tick-seconds", type=float, default=5.0, help="seconds between steps of the live world")
    p.add_argument("--history-days", type=int, default=30, help="days before the start the historic orders span")
    p.add_argument("--recent-orders", type=int, default=None,
                   help="newest historic orders with the mostly-open state mix (default: a fifth, at most 2,000)")
    p.add_argument("--only-state", type=int, default=None, help="put every historic order in this Billbee state id")
    p.add_argument("--filter-dates-as", choices=["UTC", "Europe/Berlin"], default=None,
                   help="Billbee reads GET /orders date filters as this zone's wall time, ignoring the offset")


def options_from(args: argparse.Namespace) -> SandboxOptions:
    return SandboxOptions(host=args.host, billbee_port=args.billbee_port, pulpo_port=args.pulpo_port,
                          seed=args.seed, products=args.products, orders=args.orders,
                          throttle=not args.no_throttle, live=args.live, tick_seconds=args.tick_seconds,
                          history_days=args.history_days, recent_orders=args.recent_orders,
                          only_state=args.only_state, filter_dates_as=args.filter_dates_as)


if __name__ == "__main__":
    run_forever(options_from(parser().parse_args()))
