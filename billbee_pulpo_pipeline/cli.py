"""`billbee-pulpo`: check connections, run integrations once, start the sandboxes or the demo.

A thin layer: every command calls the functions the Dagster assets use. Logs go to stderr;
`--json` prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from billbee_pulpo_pipeline.config import ConfigError, load_config, resolve_config_path
from billbee_pulpo_pipeline.state import bpp_home

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
# The demo's six integrations: the example config with the sandbox's shipping method ids (see the file).
DEMO_CONFIG = Path(__file__).resolve().parent / "sandboxes" / "demo.yaml"


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="integration config (default: $BPP_CONFIG, else ./integrations.yaml)")


def build_parser() -> argparse.ArgumentParser:
    from billbee_pulpo_pipeline.sandboxes.__main__ import add_sandbox_arguments

    parser = argparse.ArgumentParser(prog="billbee-pulpo", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate the config and test every credential's connection")
    _config_arg(check)

    sync = sub.add_parser("sync", help="run integrations once (all, in dependency order, when none is named)")
    _config_arg(sync)
    sync.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    sync.add_argument("names", nargs="*", metavar="NAME", help="integration names as in the config")

    status = sub.add_parser("status", help="per integration: last success, lag, pending, quarantine, writes "
                                           "needing attention; Billbee calls this month (no API call)")
    _config_arg(status)
    status.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    sandbox = sub.add_parser("sandbox", help="serve the Billbee and PULPO sandboxes on loopback")
    add_sandbox_arguments(sandbox)

    demo = sub.add_parser("demo", help="sandboxes with a live shop and warehouse, plus the Dagster UI")
    demo.add_argument("--config", help="integration config (default: the six integrations of sandboxes/demo.yaml)")
    demo.add_argument("--port", type=int, default=3000, help="Dagster UI port (default 3000)")
    demo.add_argument("--billbee-port", type=int, default=8081)
    demo.add_argument("--pulpo-port", type=int, default=8082)
    demo.add_argument("--products", type=int, default=500)
    demo.add_argument("--orders", type=int, default=1000)
    demo.add_argument("--tick-seconds", type=float, default=15.0,
                      help="seconds between simulation steps; the shop sells 5 orders a step (default 15: 20 a "
                           "minute, busy for a Billbee shop; 5 gives 60 a minute, as many as Billbee's 2 "
                           "requests/s per endpoint let the label and status flows write back)")
    demo.add_argument("--once", action="store_true",
                      help="run one sync of every integration against the sandboxes and exit (no UI)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = {"check": cmd_check, "sync": cmd_sync, "status": cmd_status, "sandbox": cmd_sandbox, "demo": cmd_demo}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _use_config(path: str | None) -> Path:
    """Resolve the config path once and export it, so Dagster code loaded later sees the same file."""
    resolved = resolve_config_path(path)
    os.environ["BPP_CONFIG"] = str(resolved)
    return resolved


def cmd_check(args: argparse.Namespace) -> int:
    from billbee_pulpo_pipeline.operations import check_connections

    config = load_config(_use_config(args.config))
    print(f"config {config.source_path}: {len(config.credentials)} credentials, "
          f"{len(config.integrations)} integrations: OK")
    results = check_connections(config, bpp_home())
    for r in results:
        print(f"{'OK  ' if r.ok else 'FAIL'} {r.credential} ({r.type}): {r.message}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def cmd_sync(args: argparse.Namespace) -> int:
    from billbee_pulpo_pipeline.operations import run_sync

    config = load_config(_use_config(args.config))
    try:
        summaries = run_sync(config, bpp_home(), args.names)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    ok = all(s.status == "success" for s in summaries)
    if args.json:
        print(json.dumps({"ok": ok, "integrations": [s.as_dict() for s in summaries]}, ensure_ascii=False, indent=2))
    else:
        for s in summaries:
            calls = ", ".join(f"{k} {v}" for k, v in s.api_calls.items()) or "none"
            warn = f", {s.quarantined} quarantined (reasons on the asset page)" if s.quarantined else ""
            print(f"{s.status.upper():8} {s.name} ({s.type}): read {s.records_read}, written {s.written}, "
                  f"skipped {s.skipped}{warn}; API calls: {calls}")
            for error in s.errors:
                print(f"         error: {error}")
    return EXIT_OK if ok else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when all is well, 1 when something needs attention (late, quarantined, attention writes)."""
    from billbee_pulpo_pipeline.status import collect_status, render_text

    # Unset variables are fine here: status reads local records only and never connects.
    report = collect_status(load_config(_use_config(args.config), require_env=False), bpp_home())
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(render_text(report))
    return EXIT_FAILED if report.needs_attention else EXIT_OK


def cmd_sandbox(args: argparse.Namespace) -> int:
    from billbee_pulpo_pipeline.sandboxes.__main__ import options_from
    from billbee_pulpo_pipeline.sandboxes.runner import run_forever

    options = options_from(args)
    print(f"Billbee sandbox on http://{options.host}:{options.billbee_port}/api/v1, PULPO sandbox on "
          f"http://{options.host}:{options.pulpo_port}/api/v1 (Ctrl-C stops)", file=sys.stderr)
    run_forever(options)
    return EXIT_OK


def _demo_home() -> tuple[Path, Path]:
    """BPP_HOME and a persistent DAGSTER_HOME inside it, seeded with the repo's dagster.yaml."""
    home = bpp_home()
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster_home").resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    source = PROJECT_ROOT / "dagster.yaml"
    if source.exists() and not (dagster_home / "dagster.yaml").exists():
        shutil.copy(source, dagster_home / "dagster.yaml")
    return home, dagster_home


def cmd_demo(args: argparse.Namespace) -> int:
    from billbee_pulpo_pipeline.sandboxes.credentials import sandbox_env
    from billbee_pulpo_pipeline.sandboxes.runner import SandboxProcess

    config_path = Path(args.config or DEMO_CONFIG).resolve()
    home, dagster_home = _demo_home()
    with SandboxProcess(billbee_port=args.billbee_port, pulpo_port=args.pulpo_port, products=args.products,
                        orders=args.orders, live=True, tick_seconds=args.tick_seconds) as sandbox:
        env = {**sandbox_env(sandbox.billbee_url, sandbox.pulpo_url), "BPP_CONFIG": str(config_path),
               "BPP_HOME": str(home.resolve()), "DAGSTER_HOME": str(dagster_home)}
        os.environ.update(env)
        print(f"sandboxes: Billbee {sandbox.billbee_url}, PULPO {sandbox.pulpo_url}; config {config_path}",
              file=sys.stderr)
        if args.once:
            return cmd_sync(argparse.Namespace(config=str(config_path), names=[], json=False))
        # Products first, so the orders the live shop sells are importable from the first order tick on
        # instead of waiting in quarantine for the hourly products schedule.
        products = [i.name for i in load_config(config_path).integrations if i.type == "products"]
        if products:
            cmd_sync(argparse.Namespace(config=str(config_path), names=products, json=False))
        print(f"Dagster UI: http://127.0.0.1:{args.port} (schedules and sensors are on; Ctrl-C stops)",
              file=sys.stderr)
        dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
        return subprocess.call([dagster, "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1",
                                "-p", str(args.port)], cwd=PROJECT_ROOT, env={**os.environ})


if __name__ == "__main__":
    sys.exit(main())
