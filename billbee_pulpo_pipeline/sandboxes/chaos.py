"""The chaos run: the live sandbox world under faults, syncs killed at random, then the invariants.

    python -m billbee_pulpo_pipeline.sandboxes.chaos --minutes 30 [--variant labels|shipments] [--json]

While the simulated shop sells (orders, payments, cancellations, new products) and the simulated warehouse
packs, `billbee-pulpo sync` runs again and again as a separate process, with faults on: Billbee answers 20 %
of the product's requests with 429 (Retry-After), 5 % with a 500/503 HTML page and 1 % too slowly for the
client's timeout; PULPO answers 10 % with 503 and its tokens expire every 30 s. Syncs are SIGKILLed at random
moments, and others die through the crash hook (`defs/crash.py`) right after a remote write, before its ledger
record. Then the faults stop, the warehouse packs what is open, syncs run until `billbee-pulpo status` counts
nothing pending (3 to 10 of them: a backlog drains at the flows' own pace), and the run
checks what a merchant is promised (each `Invariant` counts what it checked and lists the first problems).

`variant`: `labels` runs products, sales orders, status updates, stock and shipping labels (Billbee makes the
labels); `shipments` runs shipments instead of labels, with a stand-in for Sendcloud writing tracking codes to
the packed PULPO boxes. The two cannot run on the same boxes (the config refuses it), hence two variants.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from billbee_pulpo_pipeline.clients.billbee.states import DEFAULT_RESERVING_STATES
from billbee_pulpo_pipeline.mapping.stock import BUNDLE_TYPE, open_order, open_units, order_record, sellable
from billbee_pulpo_pipeline.sandboxes.billbee.shop import ShopSimulator
from billbee_pulpo_pipeline.sandboxes.credentials import sandbox_env
from billbee_pulpo_pipeline.sandboxes.pulpo.label_service import LabelService
from billbee_pulpo_pipeline.sandboxes.pulpo.warehouse import WarehouseSimulator
from billbee_pulpo_pipeline.sandboxes.runner import SandboxProcess

PAID, PACKED, SHIPPED, CANCELLED = 3, 13, 4, 8
PULPO_CANCELLED = "cancelled"
FAULTS_BILLBEE = {"rate_429": 0.20, "retry_after_seconds": 1, "rate_5xx": 0.05, "html_bodies": True,
                  "slow_rate": 0.01}
FAULTS_PULPO = {"rate_5xx": 0.10, "html_bodies": True, "token_ttl_seconds": 30}
FAULTS_OFF = {"rate_429": 0.0, "rate_5xx": 0.0, "slow_rate": 0.0, "slow_seconds": 0.0, "token_ttl_seconds": None}
CLIENT_TIMEOUT_SECONDS = 10.0  # the config's timeout_seconds in the chaos run: slow faults answer after 12 s

CONFIG_HEAD = f"""\
credentials:
  - name: billbee-shop
    type: billbee
    base_url: ${{BILLBEE_BASE_URL}}
    username: ${{BILLBEE_USERNAME}}
    api_password: ${{BILLBEE_API_PASSWORD}}
    api_key: ${{BILLBEE_API_KEY}}
    timeout_seconds: {CLIENT_TIMEOUT_SECONDS}
  - name: pulpo-wms
    type: pulpo
    base_url: ${{PULPO_BASE_URL}}
    username: ${{PULPO_USERNAME}}
    password: ${{PULPO_PASSWORD}}
    warehouse_id: 1
    timeout_seconds: {CLIENT_TIMEOUT_SECONDS}
integrations:
  - {{name: Produkte, type: products, source: billbee-shop, target: pulpo-wms}}
  - {{name: Verkaufsaufträge, type: sales_orders, source: billbee-shop, target: pulpo-wms,
     import_states: [Bezahlt], cancel_states: [Storniert]}}
  - {{name: Status updates, type: status_updates, source: pulpo-wms, target: billbee-shop, packed_state: Gepackt}}
  - {{name: Lagerbestand, type: stock, source: pulpo-wms, target: billbee-shop}}
"""
CONFIG_TAIL = {
    "labels": "  - {name: Versandetiketten, type: shipping_labels, source: pulpo-wms, target: billbee-shop}\n",
    "shipments": "  - {name: Sendungen, type: shipments, source: pulpo-wms, target: billbee-shop}\n",
}


@dataclass
class ChaosOptions:
    minutes: float = 30.0
    variant: str = "labels"
    seed: int = 1
    products: int = 300
    orders: int = 400
    world_tick_seconds: float = 6.0
    new_orders_per_tick: int = 2
    kill_share: float = 0.4        # syncs SIGKILLed at a random moment
    hook_share: float = 0.3        # syncs that may die right after a remote write (the crash hook)
    hook_probability: float = 0.08  # per write point, in those syncs
    cancel_paid_share: float = 0.1  # paid orders the shop cancels 1-10 ticks later (mostly after import)
    faults: bool = True
    final_rounds: int = 3           # syncs after the warehouse packed what was open, at least ...
    max_final_rounds: int = 10      # ... and at most, until nothing is pending
    safety_check_minutes: float = 5.0  # the no-double invariants are checked this often during the chaos
    workdir: Path = field(default_factory=lambda: Path("chaos-run"))


@dataclass
class Invariant:
    name: str
    ok: bool
    checked: int
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class ChaosReport:
    variant: str
    wall_seconds: float = 0.0
    syncs: Counter[str] = field(default_factory=Counter)
    faults: dict[str, int] = field(default_factory=dict)
    world: Counter[str] = field(default_factory=Counter)
    provoked_429: int = 0          # 429s the sandbox's own throttling served (not injected)
    errors: Counter[str] = field(default_factory=Counter)  # what failed syncs reported, by reason
    safety_checks: list[dict[str, Any]] = field(default_factory=list)  # during the chaos, not only after
    pending_after_settle: int | None = None  # what `status` still counted as pending after the last sync
    invariants: list[Invariant] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (bool(self.invariants) and all(i.ok for i in self.invariants)
                and all(check["ok"] for check in self.safety_checks))

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "ok": self.ok, "wall_seconds": round(self.wall_seconds, 1),
                "syncs": dict(self.syncs), "faults": self.faults, "world": dict(self.world),
                "provoked_429": self.provoked_429, "pending_after_settle": self.pending_after_settle,
                "safety_checks": self.safety_checks,
                "sync_errors": dict(self.errors.most_common(20)),
                "invariants": [asdict(i) for i in self.invariants]}

    def lines(self) -> Iterator[str]:
        yield (f"chaos ({self.variant}): {self.wall_seconds / 60:.1f} min, syncs {dict(self.syncs)}, "
               f"faults {self.faults}, world {dict(self.world)}, throttled 429s {self.provoked_429}")
        for check in self.safety_checks:
            yield safety_line(check)
        for reason, count in self.errors.most_common(8):
            yield f"  sync error x{count}: {reason}"
        for inv in self.invariants:
            yield f"  {'OK  ' if inv.ok else 'FAIL'} {inv.name}: checked {inv.checked} {inv.counts}"
            yield from (f"       - {problem}" for problem in inv.problems[:10])
        yield f"chaos invariants {'hold' if self.ok else 'VIOLATED'}"


# --------------------------------------------------------------------------------------------------
# The world: shop, warehouse and (variant shipments) a label service, stepping on a clock


class World:
    """The shop, the warehouse and their history, stepped in a thread while syncs run."""

    def __init__(self, sandbox: SandboxProcess, options: ChaosOptions, report: ChaosReport) -> None:
        self.options = options
        self.report = report
        self.urls = (sandbox.billbee_url, sandbox.pulpo_url)
        self.shop = ShopSimulator(sandbox.billbee_url, seed=options.seed)
        self.warehouse = WarehouseSimulator(sandbox.pulpo_url, seed=options.seed)
        self.labels = LabelService(self.warehouse) if options.variant == "shipments" else None
        self.rng = random.Random(f"chaos:{options.seed}")
        self.paid: set[int] = set()       # every order that was ever in an import state
        self.may_import: set[int] = set()  # orders that may or may not be imported (none since the go-live sweep)
        self.cancelled: set[int] = set()
        self.cancel_at: dict[int, list[int]] = {}  # tick -> paid orders the shop cancels then
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="chaos-world")

    def remember_history(self, first_sync: datetime) -> None:
        """Historic orders the first sync imports: its go-live state sweep takes every order paid at that
        moment, however old its last change (issue 11), so each of them must reach PULPO."""
        for order in billbee_orders(self.shop, None, states=[PAID]):
            if order["State"] == PAID:
                self.paid.add(int(order["BillBeeOrderId"]))

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=120)

    def _run(self) -> None:
        while not self.stop.wait(self.options.world_tick_seconds):
            try:
                self.step()
            except Exception as exc:  # a refused simulator call must not end the world
                self.report.world["step_errors"] += 1
                print(f"chaos world: step failed: {exc}", file=sys.stderr)

    def step(self) -> None:
        n = self.report.world["ticks"] = self.report.world["ticks"] + 1
        done = self.shop.step(new_orders=self.options.new_orders_per_tick, new_products=1 if n % 10 == 0 else 0,
                              changed_products=1 if n % 5 == 0 else 0)
        self.paid.update(done["paid"])
        self.cancelled.update(done["canceled"])
        for key in ("created", "paid", "canceled", "products_created", "products_changed"):
            self.report.world[f"shop_{key}"] += len(done[key])
        for order_id in done["paid"]:  # some customers cancel within a minute or so of paying
            if self.rng.random() < self.options.cancel_paid_share:
                self.cancel_at.setdefault(n + self.rng.randint(1, 10), []).append(order_id)
        for order_id in self.cancel_at.pop(n, []):
            self.shop._set_state(order_id, CANCELLED)
            self.cancelled.add(order_id)
            self.report.world["shop_cancelled_after_payment"] += 1
        for key, value in self.warehouse.step().items():
            self.report.world[f"warehouse_{key}"] += value
        if self.labels is not None:
            self.report.world["label_service_trackings"] += self.labels.step()


# --------------------------------------------------------------------------------------------------
# Syncs: separate processes, killed at random


def run_sync_process(env: dict[str, str], mode: str, kill_after: float, timeout: float = 600.0,
                     errors: Counter[str] | None = None) -> str:
    """One `billbee-pulpo sync`; returns how it ended: ok, failed, killed, crashed (hook) or hung. The
    errors a failed sync reported (first line, ids and numbers blanked) are counted into `errors`."""
    if mode == "hook":
        env = {**env, "BPP_TEST_CRASH_AFTER": f"*@{env.get('CHAOS_HOOK_PROBABILITY', '0.08')}"}
    proc = subprocess.Popen([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "sync", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=kill_after if mode == "kill" else timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "killed" if mode == "kill" else "hung"
    if proc.returncode == 137:
        return "crashed"
    if proc.returncode != 0 and errors is not None:
        for reason in sync_errors(out):
            errors[reason] += 1
    return "ok" if proc.returncode == 0 else "failed"


def sync_errors(out: bytes) -> list[str]:
    try:
        document = json.loads(out)
    except ValueError:
        return ["no JSON report"]
    return [f"{i['name']}: {re.sub(r'[0-9]+', 'N', str(e).splitlines()[0])[:160]}"
            for i in document.get("integrations", []) for e in i.get("errors") or []]


def sync_rounds(env: dict[str, str], options: ChaosOptions, report: ChaosReport, world: World,
                deadline: float) -> None:
    rng = random.Random(f"chaos-syncs:{options.seed}")
    report_started = time.time()
    next_check = report_started + options.safety_check_minutes * 60
    typical = 20.0  # seconds a sync takes under faults; learnt from the syncs that end by themselves
    while time.time() < deadline:
        draw = rng.random()
        mode = "kill" if draw < options.kill_share else "hook" if draw < options.kill_share + options.hook_share \
            else "clean"
        started = time.time()
        outcome = run_sync_process(env, mode, kill_after=rng.uniform(0.5, 1.3 * typical), errors=report.errors)
        if outcome in ("ok", "failed"):
            typical = 0.7 * typical + 0.3 * (time.time() - started)
        report.syncs[outcome] += 1
        if time.time() >= next_check:
            check = safety_check(world, options, started_at=report_started)
            report.safety_checks.append(check)
            print(safety_line(check), file=sys.stderr, flush=True)
            next_check = time.time() + options.safety_check_minutes * 60


# --------------------------------------------------------------------------------------------------
# What is there afterwards


def billbee_orders(shop: ShopSimulator, since: datetime | None,
                   states: list[int] | None = None) -> list[dict[str, Any]]:
    orders, page = [], 1
    filters: dict[str, Any] = {"modifiedAtMin": since.isoformat()} if since is not None else {}
    if states:
        filters["orderStateId"] = states
    while True:
        body = shop._call("GET", "/orders", params={**filters, "page": page, "pageSize": 250}).json()
        orders.extend(body["Data"])
        if page >= int(body["Paging"]["TotalPages"] or 0):
            return orders
        page += 1


def billbee_order(shop: ShopSimulator, order_id: int) -> dict[str, Any]:
    return shop._call("GET", f"/orders/{order_id}").json()["Data"]


def billbee_products(shop: ShopSimulator) -> list[dict[str, Any]]:
    products, page = [], 1
    while True:
        body = shop._call("GET", "/products", params={"page": page, "pageSize": 250}).json()
        products.extend(body["Data"])
        if page >= int(body["Paging"]["TotalPages"] or 0):
            return products
        page += 1


def check_orders(world: World, pulpo_orders: list[dict[str, Any]], ledger: dict[str, dict[str, Any]],
                 billbee_now: dict[int, dict[str, Any]], quarantined: set[str]) -> Invariant:
    """Every order ever paid is in PULPO once (or held in quarantine with its reason); cancelled ones are
    cancelled there (or the cancel was refused and shows as needing attention); nothing else is there."""
    by_billbee: dict[int, list[dict[str, Any]]] = {}
    for order in pulpo_orders:
        by_billbee.setdefault(int(order["external_order_num"]), []).append(order)
    problems = [f"Billbee order {oid} is in PULPO {len(rows)} times" for oid, rows in by_billbee.items()
                if len(rows) > 1]
    doubled = len(problems)
    missing = cancel_missed = cancelled_ok = held = 0
    for oid in sorted(world.paid):
        rows = by_billbee.get(oid, [])
        cancelled = billbee_now.get(oid, {}).get("State") == CANCELLED
        if cancelled:
            refused = (ledger.get(f"order:cancel:{oid}") or {}).get("status") == "attention"
            if rows and rows[0]["state"] != PULPO_CANCELLED and not refused:
                cancel_missed += 1
                problems.append(f"Billbee order {oid} is cancelled, PULPO order {rows[0]['id']} is {rows[0]['state']}")
            else:
                cancelled_ok += 1
        elif not rows and str(oid) in quarantined:
            held += 1
        elif not rows:
            missing += 1
            problems.append(f"paid Billbee order {oid} is not in PULPO, nor in quarantine")
    never_paid = [oid for oid in by_billbee if oid not in world.paid | world.may_import]
    problems += [f"PULPO has Billbee order {oid}, which was never paid" for oid in never_paid]
    counts = {"paid_orders": len(world.paid), "in_pulpo": len(by_billbee), "doubled": doubled,
              "missing": missing, "quarantined_with_reason": held, "cancelled": cancelled_ok,
              "cancel_missed": cancel_missed, "never_paid_in_pulpo": len(never_paid)}
    ok = not (doubled or missing or cancel_missed or never_paid)
    return Invariant("orders exactly once, cancels applied", ok, len(world.paid), counts, problems)


def closed_boxes(warehouse: WarehouseSimulator) -> list[dict[str, Any]]:
    return list(warehouse._all("/packing/orders/boxes/search", "packing_boxes", state="closed"))


def box_trackings(warehouse: WarehouseSimulator, box: dict[str, Any]) -> list[str]:
    path = f"/packing/orders/{box['packing_order_id']}/boxes/{box['id']}/shipment_tracking"
    return [t["tracking_code"] for t in warehouse._call("GET", path).get("shipment_trackings", [])
            if t.get("tracking_code")]


def check_shipments(options: ChaosOptions, boxes: list[dict[str, Any]], trackings: dict[int, list[str]],
                    billbee_now: dict[int, dict[str, Any]], box_orders: dict[int, int],
                    ledger: dict[str, dict[str, Any]], quarantined: set[str]) -> list[Invariant]:
    """Each box ≤ 1 label (and a label on every box, unless refused with a reason); each tracking code ≤ 1
    Billbee shipment, and (shipments) one on its order."""
    shipments: Counter[str] = Counter()
    for order in billbee_now.values():
        for shipment in order.get("ShippingIds") or []:
            shipments[shipment["ShippingId"]] += 1
    per_code = [f"tracking code {code} has {n} Billbee shipments" for code, n in shipments.items() if n > 1]
    result = [Invariant("each tracking code at most one Billbee shipment", not per_code, len(shipments),
                        {"codes": len(shipments), "doubled": len(per_code)}, per_code)]
    ours = [b for b in boxes if b["id"] in box_orders]
    multi = [f"box {b['id']} has {len(trackings[b['id']])} trackings" for b in ours if len(trackings[b["id"]]) > 1]
    if options.variant == "labels":
        unlabelled = [f"box {b['id']} (Billbee order {box_orders[b['id']]}) has no label"
                      for b in ours if not trackings[b["id"]] and str(b["id"]) not in quarantined
                      and billbee_now.get(box_orders[b["id"]], {}).get("State") != CANCELLED]
        labels = Counter(str(e.get("remote_id")) for k, e in ledger.items() if k.startswith("label:")
                         and e["status"] == "done")
        unaccounted = [f"Billbee shipment {code} of a box is not in the ledger" for b in ours
                       for code in trackings[b["id"]] if code not in labels]
        result.append(Invariant("each box exactly one label", not (multi or unlabelled or unaccounted), len(ours),
                                {"boxes": len(ours), "labelled": sum(bool(trackings[b["id"]]) for b in ours),
                                 "multiple": len(multi), "unlabelled": len(unlabelled),
                                 "refused_with_reason": len(quarantined), "not_in_ledger": len(unaccounted)},
                                multi + unlabelled + unaccounted))
    else:
        missing = [f"tracking {code} of box {b['id']} is not on Billbee order {box_orders[b['id']]}"
                   for b in ours for code in trackings[b["id"]] if shipments[code] == 0
                   and billbee_now.get(box_orders[b["id"]], {}).get("State") != CANCELLED]
        result.append(Invariant("each tracking code on its Billbee order", not missing, len(ours),
                                {"boxes": len(ours), "codes": sum(len(trackings[b["id"]]) for b in ours),
                                 "missing": len(missing)}, missing))
    return result


def check_status(box_orders: dict[int, int], billbee_now: dict[int, dict[str, Any]]) -> Invariant:
    """Every Billbee order PULPO packed is at Gepackt or beyond (or protected: cancelled, …)."""
    orders = sorted(set(box_orders.values()))
    behind = [f"Billbee order {oid} is packed in PULPO but in Billbee state {billbee_now.get(oid, {}).get('State')}"
              for oid in orders if billbee_now.get(oid, {}).get("State") in (1, 2, PAID)]
    return Invariant("packed orders are Gepackt or later in Billbee", not behind, len(orders),
                     {"packed_orders": len(orders), "behind": len(behind)}, behind)


def check_stock(world: World, pulpo_orders: list[dict[str, Any]], billbee_now: dict[int, dict[str, Any]]) -> Invariant:
    """Billbee shows what PULPO can still sell: max(0, Q − O) with Q = PULPO's available quantity and O =
    units of open Billbee orders PULPO does not have, computed from what both systems hold now (the
    formula's own tests are in test_stock_mapping; this checks the writes converged on it)."""
    pulpo = {row["sku"]: int(row.get("available") or 0) for row in
             world.warehouse._call("GET", "/inventory/stocks/summary", params={"warehouse_id[]": [1]}) or []}
    products = billbee_products(world.shop)
    components = {p["SKU"]: [(c["SKU"], float(c.get("Amount") or 1)) for c in p.get("BillOfMaterial") or []
                             if c.get("SKU")] for p in products if p.get("SKU") and p.get("BillOfMaterial")}
    in_pulpo = {o["external_order_num"] for o in pulpo_orders if o["state"] != PULPO_CANCELLED}
    orders = [open_order(str(oid), order_record(o)) for oid, o in billbee_now.items()]
    units = open_units(orders, DEFAULT_RESERVING_STATES, in_pulpo, components)
    billbee = {p["SKU"]: float(p.get("StockCurrent") or 0) for p in products
               if p.get("SKU") and p.get("Type") != BUNDLE_TYPE and not p.get("BillOfMaterial")}
    mapped = sorted(set(billbee) & set(pulpo))
    diverged = [f"{sku}: Billbee {billbee[sku]:g}, expected {sellable(pulpo[sku], units.of(sku))} "
                f"(PULPO {pulpo[sku]}, open {units.of(sku):g})" for sku in mapped
                if billbee[sku] != sellable(pulpo[sku], units.of(sku))]
    return Invariant("Billbee stock equals what PULPO can still sell", not diverged, len(mapped),
                     {"skus": len(mapped), "diverged": len(diverged), "open_orders_not_in_pulpo": units.orders},
                     diverged)


def check_ledger(ledger: dict[str, dict[str, Any]]) -> Invariant:
    statuses = Counter(e["status"] for e in ledger.values())
    pending = [f"{key} is still pending" for key, e in ledger.items() if e["status"] == "pending"]
    return Invariant("no write left pending in the ledger", not pending, len(ledger), dict(statuses), pending)


def check_ledger_covers_orders(pulpo_orders: list[dict[str, Any]], ledger: dict[str, dict[str, Any]]) -> Invariant:
    created = {key.rsplit(":", 1)[-1] for key, e in ledger.items() if key.startswith("order:create:")
               and e["status"] in ("done", "adopted")}
    unrecorded = [f"PULPO order {o['id']} (Billbee {o['external_order_num']}) has no create in the ledger"
                  for o in pulpo_orders if o["external_order_num"] not in created]
    return Invariant("every PULPO order's create is in the ledger", not unrecorded, len(pulpo_orders),
                     {"orders": len(pulpo_orders), "unrecorded": len(unrecorded)}, unrecorded)


def read_ledger(home: Path) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
    from billbee_pulpo_pipeline.state import StateStore

    store = StateStore(home)
    entries = {e.key: {"status": e.status, "remote_id": e.remote_id} for e in store.ledger_entries()}
    quarantined = {"orders": store.quarantine_open_keys("verkaufsauftraege", kind="order"),
                   "boxes": store.quarantine_open_keys("versandetiketten", kind="box")}
    return entries, quarantined


def check_invariants(world: World, home: Path, options: ChaosOptions) -> list[Invariant]:
    warehouse = world.warehouse
    pulpo_orders = list(warehouse._all("/sales/orders", "sales_orders"))
    since = datetime.now(UTC) - timedelta(days=31)  # the stock flow's open-order lookback is 30 days
    billbee_now = {int(o["BillBeeOrderId"]): o for o in billbee_orders(world.shop, since)}
    pulpo_to_billbee = {int(o["id"]): int(o["external_order_num"]) for o in pulpo_orders}
    packing = {int(p["id"]): pulpo_to_billbee.get(int(p["sales_order_id"]))
               for p in warehouse._all("/packing/orders", "packing_orders")}
    boxes = closed_boxes(warehouse)
    box_orders = {int(b["id"]): packing[int(b["packing_order_id"])] for b in boxes
                  if packing.get(int(b["packing_order_id"])) is not None}
    trackings = {int(b["id"]): box_trackings(warehouse, b) for b in boxes}
    ledger, quarantined = read_ledger(home)
    return [check_orders(world, pulpo_orders, ledger, billbee_now, quarantined["orders"]),
            *check_shipments(options, boxes, trackings, billbee_now, box_orders, ledger, quarantined["boxes"]),
            check_status(box_orders, billbee_now), check_stock(world, pulpo_orders, billbee_now),
            check_ledger(ledger),
            check_ledger_covers_orders(pulpo_orders, ledger)]


def safety_check(world: World, options: ChaosOptions, started_at: float) -> dict[str, Any]:
    """What must hold at every moment, faults or not: no order twice in PULPO, no tracking code twice in
    Billbee, no box with two labels."""
    shop, warehouse = ShopSimulator(world.urls[0]), WarehouseSimulator(world.urls[1])  # the world's own are busy
    orders = Counter(o["external_order_num"] for o in warehouse._all("/sales/orders", "sales_orders"))
    since = datetime.now(UTC) - timedelta(days=31)
    codes = Counter(s["ShippingId"] for o in billbee_orders(shop, since) for s in o.get("ShippingIds") or [])
    boxes = closed_boxes(warehouse)
    multi = sum(len(box_trackings(warehouse, b)) > 1 for b in boxes) if options.variant == "labels" else 0
    warehouse.close()
    counts = {"orders": len(orders), "orders_doubled": sum(n > 1 for n in orders.values()),
              "tracking_codes": len(codes), "codes_doubled": sum(n > 1 for n in codes.values()),
              "boxes": len(boxes), "boxes_with_two_labels": multi}
    ok = not (counts["orders_doubled"] or counts["codes_doubled"] or multi)
    return {"minute": round((time.time() - started_at) / 60, 1), "ok": ok, **counts}


def safety_line(check: dict[str, Any]) -> str:
    counts = {k: v for k, v in check.items() if k not in ("minute", "ok")}
    return f"  {'OK  ' if check['ok'] else 'FAIL'} at minute {check['minute']}: no doubles {counts}"


# --------------------------------------------------------------------------------------------------
# The run


def config_text(variant: str) -> str:
    if variant not in CONFIG_TAIL:
        raise ValueError(f"variant must be one of {sorted(CONFIG_TAIL)}, not {variant!r}")
    return CONFIG_HEAD + CONFIG_TAIL[variant]


def set_faults(sandbox: SandboxProcess, on: bool) -> None:
    if on:
        sandbox.set_faults("billbee", **FAULTS_BILLBEE, slow_seconds=CLIENT_TIMEOUT_SECONDS + 2)
        sandbox.set_faults("pulpo", **FAULTS_PULPO)
        return
    for system in ("billbee", "pulpo"):
        sandbox.set_faults(system, **FAULTS_OFF)
    sandbox.control("POST", "pulpo", "auth/unban")  # 30-second tokens may have tripped PULPO's token ban


def fault_counts(sandbox: SandboxProcess) -> dict[str, int]:
    billbee, pulpo = sandbox.stats("billbee"), sandbox.stats("pulpo")
    return {"billbee_requests": billbee["total_requests"], "billbee_throttled_429": billbee["throttled_429"],
            "billbee_429": billbee["fault_429"],
            "billbee_5xx": billbee["fault_5xx"], "billbee_slow": billbee["fault_slow"],
            "pulpo_requests": pulpo["total_requests"], "pulpo_5xx": pulpo["fault_5xx"],
            "pulpo_tokens": pulpo["token_requests"]}


def run_chaos(options: ChaosOptions) -> ChaosReport:
    """The whole chaos run in `options.workdir` (BPP_HOME and config inside); returns the report."""
    report = ChaosReport(options.variant)
    workdir = options.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "integrations.yaml"
    config.write_text(config_text(options.variant), encoding="utf-8")
    started = time.time()
    with SandboxProcess(products=options.products, orders=options.orders, seed=options.seed) as sandbox:
        env = {**os.environ, **sandbox_env(sandbox.billbee_url, sandbox.pulpo_url), "BPP_HOME": str(workdir / "bpp"),
               "BPP_CONFIG": str(config), "CHAOS_HOOK_PROBABILITY": str(options.hook_probability)}
        env.pop("DAGSTER_HOME", None)
        world = World(sandbox, options, report)
        world.remember_history(datetime.now(UTC))
        set_faults(sandbox, options.faults)
        world.start()
        sync_rounds(env, options, report, world, deadline=started + options.minutes * 60)
        world.finish()
        report.faults = fault_counts(sandbox)
        set_faults(sandbox, False)
        for system in ("billbee", "pulpo"):
            sandbox.reset_stats(system)
        settle(world, env, options, report)
        report.provoked_429 = sandbox.stats("billbee")["throttled_429"]
        report.invariants = check_invariants(world, Path(env["BPP_HOME"]), options)
    report.wall_seconds = time.time() - started
    return report


def settle(world: World, env: dict[str, str], options: ChaosOptions, report: ChaosReport) -> None:
    """Faults off: sync, let the warehouse pack everything open, then sync until `billbee-pulpo status`
    reports nothing pending (at least `final_rounds`, at most `max_final_rounds` syncs): a backlog left by
    the chaos drains at the flows' own pace (shipments: 40 packing orders a run)."""
    report.syncs["final_" + run_sync_process(env, "clean", 0, errors=report.errors)] += 1
    for key, value in world.warehouse.pack_all(max_steps=12).items():
        report.world[f"warehouse_{key}"] += value
    if world.labels is not None:
        report.world["label_service_trackings"] += world.labels.step()
    for round_number in range(1, options.max_final_rounds + 1):
        report.syncs["final_" + run_sync_process(env, "clean", 0, errors=report.errors)] += 1
        report.pending_after_settle = pending_records(env)
        if round_number >= options.final_rounds and report.pending_after_settle == 0:
            break


def pending_records(env: dict[str, str]) -> int:
    """Records the integrations hold but have not handled yet, as `billbee-pulpo status --json` counts them."""
    out = subprocess.run([sys.executable, "-m", "billbee_pulpo_pipeline.cli", "status", "--json"], env=env,
                         capture_output=True, timeout=300).stdout
    return sum(i.get("pending") or 0 for i in json.loads(out)["integrations"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--variant", choices=sorted(CONFIG_TAIL), default="labels")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("chaos-run"))
    parser.add_argument("--no-faults", action="store_true", help="the same world without faults or kills")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    options = ChaosOptions(minutes=args.minutes, variant=args.variant, seed=args.seed, workdir=args.workdir,
                           faults=not args.no_faults)
    if args.no_faults:
        options.kill_share = options.hook_share = 0.0
    report = run_chaos(options)
    print(json.dumps(report.as_dict(), indent=2) if args.json else "\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
