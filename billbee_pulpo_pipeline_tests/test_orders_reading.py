"""The read side of the sales-order flow: LastModifiedAt windows, watermarks, complete paging, the
schedule's partition choice and the gap-filling sensor.

Pure rules are tested with plain datetimes and a fake page source; the rest goes over HTTP against the
session Billbee sandbox, through `dg.materialize` on a test instance and through sensor/schedule
evaluation. Sandbox worlds are rebuilt per test with an order count that places historic orders at
exact spacings: order i was last modified at `start - 29 days + i * (29 days / n)`, so n = 696 gives one
order per hour and n = 13,920 one every 3 minutes (the newest an hour/3 minutes before the reset).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from billbee_pulpo_pipeline.clients.billbee import BillbeeClient, Order, Paging, ResultPage
from billbee_pulpo_pipeline.config import load_config
from billbee_pulpo_pipeline.defs import sales_orders
from billbee_pulpo_pipeline.defs.common import flow_for
from billbee_pulpo_pipeline.defs.factory import build_resources
from billbee_pulpo_pipeline.defs.sales_orders.assets import (
    OrdersSyncConfig,
    order_row,
    read_until_cursor,
    without_stale,
)
from billbee_pulpo_pipeline.defs.sales_orders.automation import gap_grace, windows_to_sync
from billbee_pulpo_pipeline.defs.sales_orders.windows import (
    OVERLAP,
    ReadRange,
    WindowReadError,
    advanced_watermark,
    ended_windows,
    floor_hour,
    format_watermark,
    is_complete,
    read_complete_window,
    read_orders,
    read_range,
    tick_windows,
)
from billbee_pulpo_pipeline.state import StateStore
from billbee_pulpo_pipeline_tests.conftest import EXAMPLE_CONFIG

ORDER_ID_BASE = 30_000_000_000_000_000  # the sandbox's first historic order id (17 digits)
HOURLY, EVERY_3_MIN = 696, 13_920
T0 = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
PAGES_ENDPOINT = "GET /api/v1/orders"


# ---- pure rules ----------------------------------------------------------------------------------


def test_windows_tile_time_and_the_watermark_only_moves_forward():
    start, end = T0, T0 + timedelta(hours=1)
    # first read of a window: (start, now]; never past the moment the read starts
    ten = start + timedelta(minutes=10)
    assert read_range(start, end, None, ten) == ReadRange(start, ten)
    # consecutive windows share their boundary: modifiedAtMin (exclusive) = the previous modifiedAtMax
    assert read_range(end, end + timedelta(hours=1), None, end + timedelta(hours=2)).low == end
    # the next tick reads from the watermark, which lags the read start by the overlap
    mark = advanced_watermark(start, end, None, start + timedelta(minutes=10))
    assert mark == start + timedelta(minutes=10) - OVERLAP
    assert read_range(start, end, mark, start + timedelta(minutes=20)).low == mark
    # a read during the overlap after the end does not complete the window; one after it does
    almost = advanced_watermark(start, end, mark, end + OVERLAP / 2)
    assert almost < end and not is_complete(almost, end)
    done = advanced_watermark(start, end, almost, end + OVERLAP)
    assert done == end and is_complete(done, end)
    assert read_range(start, end, done, end + timedelta(hours=5)) is None  # complete: no Billbee call
    assert read_range(start, end, done, end + timedelta(hours=5), reread=True) == ReadRange(start, end)
    # a late or slower concurrent run never moves a watermark back
    assert advanced_watermark(start, end, done, start + timedelta(minutes=1)) == done
    # a window that has not begun reads nothing
    assert read_range(end, end + timedelta(hours=1), None, end) is None


def _order(order_id: int, modified: datetime) -> Order:
    return Order.model_validate({"BillBeeOrderId": order_id, "CreatedAt": "2026-03-01T00:00:00Z", "State": 3,
                                 "LastModifiedAt": modified.isoformat()})


class OffsetPages:
    """Billbee's offset paging over a live list: each page is evaluated when requested, ordered by id.
    `on_page(number)` runs after a page is served (to modify orders between page reads)."""

    def __init__(self, orders: list[Order], page_size: int, on_page=None) -> None:
        self.orders = orders
        self.page_size = page_size
        self.on_page = on_page or (lambda number: None)
        self.requests = 0

    def __call__(self):
        page = 1
        while True:
            live = sorted(self.orders, key=lambda o: o.BillBeeOrderId)
            items = live[(page - 1) * self.page_size: page * self.page_size]
            self.requests += 1
            pages_total = -(-len(live) // self.page_size)
            yield ResultPage(number=page, items=items, paging=Paging(Page=page, TotalRows=len(live),
                                                                     TotalPages=pages_total))
            self.on_page(page)
            if not items or page >= pages_total:
                return
            page += 1


def test_an_order_leaving_the_window_while_paged_makes_the_reader_read_again():
    orders = [_order(ORDER_ID_BASE + i, T0) for i in range(12)]
    moved = orders[1]

    def modify_after_first_page(number):  # the order is edited: it leaves the window, later pages shift
        if number == 1 and moved in source.orders:
            source.orders.remove(moved)

    source = OffsetPages(list(orders), page_size=5, on_page=modify_after_first_page)
    result = read_complete_window(source)
    expected = {o.BillBeeOrderId for o in orders} - {moved.BillBeeOrderId}
    assert {o.BillBeeOrderId for o in result.orders} == expected  # order 5 slid onto page 1: not lost
    assert result.passes == 2 and result.rereads == 1 and result.consistent
    assert result.total_rows == 11
    assert result.pages == source.requests == 2 + 3  # the first pass stopped at the shifted page


def test_a_window_that_keeps_changing_fails_clearly_and_an_empty_one_costs_one_call():
    orders = [_order(ORDER_ID_BASE + i, T0) for i in range(30)]
    source = OffsetPages(orders, page_size=10, on_page=lambda number: orders.pop(0) if number == 1 else None)
    with pytest.raises(WindowReadError, match="kept changing"):
        read_complete_window(source, max_passes=3)
    empty = OffsetPages([], page_size=250)
    result = read_complete_window(empty)
    assert (result.orders, result.pages, result.total_rows, result.consistent) == ([], 1, 0, True)


def test_fewer_unique_ids_than_total_rows_is_a_shift_and_duplicates_keep_the_newest_version():
    older, newer = _order(ORDER_ID_BASE + 1, T0), _order(ORDER_ID_BASE + 1, T0 + timedelta(seconds=1))
    other = _order(ORDER_ID_BASE + 2, T0)
    passes = iter([
        [[older], [older]],  # a repeated row: 1 unique for TotalRows 2 -> read again
        [[newer], [other]],
    ])
    seen_passes = []

    def pages():
        pages_of_pass = next(passes)
        seen_passes.append(pages_of_pass)
        for number, items in enumerate(pages_of_pass, start=1):
            yield ResultPage(number=number, items=items, paging=Paging(Page=number, TotalRows=2, TotalPages=2))

    result = read_complete_window(pages)
    assert result.passes == 2 and "1 unique orders for TotalRows 2" in result.shifts[0]
    by_id = {o.BillBeeOrderId: o for o in result.orders}
    assert by_id[ORDER_ID_BASE + 1].LastModifiedAt == newer.LastModifiedAt

    twice = iter([[[older, newer]]])
    result = read_complete_window(lambda: (ResultPage(number=1, items=items, paging=Paging(TotalRows=1))
                                           for items in next(twice)))
    assert [o.LastModifiedAt for o in result.orders] == [newer.LastModifiedAt]


def test_an_older_version_never_replaces_a_newer_stored_one(tmp_path):
    store = StateStore(tmp_path)
    dataset = "shop.billbee_orders"
    older, newer = _order(ORDER_ID_BASE + 1, T0), _order(ORDER_ID_BASE + 1, T0 + timedelta(minutes=5))
    newer = newer.model_copy(update={"State": 8})
    store.upsert_snapshot(dataset, [order_row(newer)])
    fresh, stale = without_stale(store, dataset, [older, _order(ORDER_ID_BASE + 2, T0)])
    assert [o.BillBeeOrderId for o in fresh] == [ORDER_ID_BASE + 2] and stale == 1
    fresh, stale = without_stale(store, dataset, [newer])
    assert fresh == [newer] and stale == 0


@pytest.mark.parametrize(("interval", "tick", "expected"), [
    (10, "13:00", ["12:00", "13:00"]),   # the hour just ended is read up to its end
    (10, "13:10", ["12:00", "13:00"]),   # ... and once more after end + overlap, which completes it
    (10, "13:20", ["13:00"]),
    (10, "13:50", ["13:00"]),
    (60, "13:00", ["12:00", "13:00"]),
    (1, "13:02", ["12:00", "13:00"]),
    (1, "13:03", ["13:00"]),
])
def test_schedule_requests_the_tick_hour_and_the_previous_one_until_it_is_complete(interval, tick, expected,
                                                                                     bpp_env, tmp_path):
    flow, config = orders_flow()
    flow = flow_with(flow, interval_minutes=interval)
    schedule = flow_definitions(flow, config, tmp_path).resolve_schedule_def(f"{flow.slug}_schedule")
    day = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()  # inside the partitions' range
    at = datetime.fromisoformat(f"{day}T{tick}:00+00:00")
    result = schedule(dg.build_schedule_context(scheduled_execution_time=at))
    assert [r.partition_key for r in result] == [f"{day}-{hour}" for hour in expected]
    assert all(r.run_key.endswith(f"@{day}T{tick}") for r in result)
    assert len({r.run_key for r in result}) == len(result)


def test_schedule_skips_off_interval_minutes_and_never_asks_for_an_hour_before_the_first_partition(bpp_env,
                                                                                                    tmp_path):
    flow, config = orders_flow()
    defs = flow_definitions(flow_with(flow, interval_minutes=7), config, tmp_path)
    schedule = defs.resolve_schedule_def(f"{flow.slug}_schedule")
    hour = floor_hour(datetime.now(UTC)) - timedelta(hours=5)
    ticks = [hour + timedelta(minutes=m) for m in range(30)]
    answers = [schedule(dg.build_schedule_context(scheduled_execution_time=t)) for t in ticks]
    ran = [m for m, answer in enumerate(answers) if not isinstance(answer, dg.SkipReason)]
    assert [b - a for a, b in zip(ran, ran[1:], strict=False)] == [7] * (len(ran) - 1) and len(ran) >= 4
    # the first tick of the hour also reads the previous hour (the previous tick read it only partly), and
    # so does the second one when the first came within the overlap of the hour's start
    assert len(answers[ran[0]]) == 2
    assert [len(answers[m]) for m in ran] == [2 if m < 7 + 2 else 1 for m in ran]
    assert tick_windows(T0 + timedelta(minutes=5), 7, T0 - timedelta(days=1)) == [T0 - timedelta(hours=1), T0]
    assert tick_windows(T0, 10, first_start=T0) == [T0]  # no hour before the first partition


def test_ended_windows_respect_lookback_grace_and_first_partition():
    now = T0 + timedelta(minutes=20)
    grace = gap_grace(10)  # 13 minutes
    assert ended_windows(now, 4, T0 - timedelta(days=30), grace) == [T0 - timedelta(hours=h) for h in (4, 3, 2, 1)]
    assert ended_windows(T0 + timedelta(minutes=5), 4, T0 - timedelta(days=30), grace)[-1] == T0 - timedelta(hours=2)
    assert ended_windows(now, 4, T0 - timedelta(hours=2), grace) == [T0 - timedelta(hours=2), T0 - timedelta(hours=1)]


def test_a_one_off_sync_reads_every_ended_window_not_read_to_its_end_then_the_current_one(bpp_env, tmp_path):
    """`billbee-pulpo sync` from cron: a window last read at 10:55 still has its last minutes to read
    when the next sync runs at 11:05, and a never-read window in the lookback is read too."""
    flow, _ = orders_flow()
    flow = flow_with(flow, lookback_hours=3)
    store, now = StateStore(tmp_path), datetime.now(UTC).replace(minute=5, second=0, microsecond=0)
    hour = floor_hour(now)
    keys = {h: (hour - timedelta(hours=h)).strftime("%Y-%m-%d-%H:%M") for h in range(4)}
    store.set_cursor(read_until_cursor(flow, keys[3]), format_watermark(hour - timedelta(hours=2)))  # complete
    store.set_cursor(read_until_cursor(flow, keys[1]), format_watermark(hour - timedelta(minutes=5)))  # 10:55
    assert windows_to_sync(flow, store, now) == [keys[2], keys[1], keys[0]]
    store.set_cursor(read_until_cursor(flow, keys[1]), format_watermark(hour))
    store.set_cursor(read_until_cursor(flow, keys[2]), format_watermark(hour))
    assert windows_to_sync(flow, store, now) == [keys[0]]


# ---- helpers over the sandbox --------------------------------------------------------------------


def orders_flow():
    config = load_config(EXAMPLE_CONFIG)
    integration = next(i for i in config.integrations if i.type == "sales_orders")
    return flow_for(integration, config), config


def flow_with(flow, interval_minutes: int | None = None, **settings):
    integration = flow.integration
    update = {}
    if interval_minutes is not None:
        update["interval_minutes"] = interval_minutes
    if settings:
        update["settings"] = integration.settings.model_copy(update=settings)
    return type(flow)(integration.model_copy(update=update), flow.source, flow.target)


def flow_definitions(flow, config, home: Path) -> dg.Definitions:
    return dg.Definitions.merge(sales_orders.build(flow), dg.Definitions(resources=build_resources(config, home)))


class Reader:
    """The `billbee_orders` asset of one flow on one Dagster instance, and the state it leaves."""

    def __init__(self, flow, config, home: Path, instance: dg.DagsterInstance) -> None:
        self.flow, self.home, self.instance = flow, home, instance
        self.resources = build_resources(config, home)
        self.defs = flow_definitions(flow, config, home)
        self.asset = next(a for a in sales_orders.build(flow).assets if flow.key("billbee_orders") in a.keys)
        self.store = StateStore(home)

    def read(self, partition_key: str, **config) -> dict[str, object]:
        run_config = dg.RunConfig(ops={self.asset.op.name: OrdersSyncConfig(**config)}) if config else None
        result = dg.materialize([self.asset], partition_key=partition_key, instance=self.instance,
                                resources=self.resources, run_config=run_config,
                                selection=[self.flow.key("billbee_orders")])
        assert result.success
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert set(checks) == {"window_read_consistent", "billbee_date_filter_matches"}
        assert all(c.passed for c in checks.values())  # consistent, and every order inside its range
        [event] = result.get_asset_materialization_events()
        return {k: v.value for k, v in event.materialization.metadata.items()}

    def stored(self) -> dict[str, dict]:
        rows = self.store.snapshot_rows(self.flow.dataset("billbee_orders"))
        return {key: json.loads(payload) for key, payload in rows.items()}


def billbee_client(bpp_env) -> BillbeeClient:
    return BillbeeClient(bpp_env["BILLBEE_BASE_URL"], bpp_env["BILLBEE_USERNAME"], bpp_env["BILLBEE_API_PASSWORD"],
                         bpp_env["BILLBEE_API_KEY"], pacer_dir=Path(bpp_env["BPP_HOME"]) / "pacing")


def key_of(moment: datetime) -> str:
    return floor_hour(moment).strftime("%Y-%m-%d-%H:%M")


def away_from_hour_end(margin_seconds: float = 45) -> datetime:
    """Now, after waiting out the end of the hour when it is close (a test reading the current hour twice
    must not see the hour change in between)."""
    now = datetime.now(UTC)
    left = (floor_hour(now) + timedelta(hours=1) - now).total_seconds()
    if left < margin_seconds:
        time.sleep(left + 1)
    return datetime.now(UTC)


def touch(sandbox, order_id: int) -> datetime:
    answer = sandbox.control("POST", "billbee", f"orders/{order_id}/touch")
    return datetime.fromisoformat(answer["LastModifiedAt"])


def calls_without_throttling(meta) -> int:
    """Billbee requests the read chose to make (a 429 retry, possible right after another test, is not)."""
    return meta["billbee_calls"] - meta["billbee_429"]


# ---- over HTTP -----------------------------------------------------------------------------------


def test_an_order_modified_exactly_at_a_boundary_belongs_to_one_window(sandbox, bpp_env):
    sandbox.reset("billbee", orders=HOURLY)  # one historic order per hour, an hour apart to the millisecond
    client = billbee_client(bpp_env)
    i = HOURLY - 10
    marks = [client.get_order(ORDER_ID_BASE + j).LastModifiedAt for j in (i - 1, i, i + 1)]
    assert marks[1] - marks[0] == marks[2] - marks[1] == timedelta(hours=1)
    # windows whose boundaries fall exactly on the orders' modification times
    first = read_orders(client, ReadRange(marks[0], marks[1]))
    second = read_orders(client, ReadRange(marks[1], marks[2]))
    assert [o.BillBeeOrderId for o in first.orders] == [ORDER_ID_BASE + i]  # max inclusive, min exclusive
    assert [o.BillBeeOrderId for o in second.orders] == [ORDER_ID_BASE + i + 1]


def test_second_tick_in_the_hour_reads_only_what_changed(sandbox, bpp_env):
    sandbox.reset("billbee", orders=HOURLY)  # the newest historic order lies an hour back: this hour is empty
    flow, config = orders_flow()
    home = Path(bpp_env["BPP_HOME"])
    now = away_from_hour_end()
    partition = key_of(now)
    with dg.instance_for_test() as instance:
        reader = Reader(flow, config, home, instance)
        first = reader.read(partition)
        assert first["records_read"] == 0 and first["pages"] == 1 and calls_without_throttling(first) == 1
        assert first["complete"] is False

        touched = [ORDER_ID_BASE + n for n in range(100, 110)]
        for order_id in touched:
            touch(sandbox, order_id)
        second = reader.read(partition)
        assert (second["records_read"], second["new"], second["changed"]) == (10, 10, 0)
        assert second["pages"] == 1 and calls_without_throttling(second) == 1 and second["rereads"] == 0

        third = reader.read(partition)  # no change: the overlap re-reads the 10, none is stored as a change
        assert third["pages"] == 1 and calls_without_throttling(third) == 1
        assert third["new"] == third["changed"] == 0 and third["unchanged"] == third["records_read"]

        forced = reader.read(partition, reread=True)  # launchpad `reread: true`: the whole window, no change
        assert (forced["records_read"], forced["new"], forced["changed"]) == (10, 0, 0)

        mark = reader.store.get_cursor(read_until_cursor(flow, partition))
        assert mark == forced["read_until"] and datetime.fromisoformat(mark) < datetime.now(UTC)

        # 17-digit ids and unicode addresses survive storage exactly as Billbee sent them
        stored = reader.stored()
        assert set(stored) == {str(i) for i in touched}
        client = billbee_client(bpp_env)
        for order_id in touched[:3]:
            raw = client.call("GET", f"orders/{order_id}")
            payload = stored[str(order_id)]
            assert payload["BillBeeOrderId"] == raw["BillBeeOrderId"] == order_id
            assert {k: payload["ShippingAddress"][k] for k in raw["ShippingAddress"]} == raw["ShippingAddress"]
            assert [i["BillbeeId"] for i in payload["OrderItems"]] == [i["BillbeeId"] for i in raw["OrderItems"]]
            assert [i["Product"]["Title"] for i in payload["OrderItems"]] == [
                i["Product"]["Title"] for i in raw["OrderItems"]]
        assert any(not name.isascii() for p in stored.values() for name in
                   (p["ShippingAddress"]["FirstName"], p["ShippingAddress"]["LastName"],
                    p["ShippingAddress"]["City"], p["ShippingAddress"]["Street"]))


def test_orders_modified_while_their_window_is_paged_are_not_lost(sandbox, bpp_env):
    sandbox.reset("billbee", orders=EVERY_3_MIN)  # 20 orders per hour
    flow, config = orders_flow()
    home = Path(bpp_env["BPP_HOME"])
    window_start = floor_hour(away_from_hour_end()) - timedelta(hours=3)
    client = billbee_client(bpp_env)
    before = read_orders(client, ReadRange(window_start, window_start + timedelta(hours=1)))
    ids = sorted(o.BillBeeOrderId for o in before.orders)
    assert len(ids) == 20
    moved = ids[1:3]  # on page 1 (5 per page): editing them shifts every later page by two

    baseline = sandbox.stats("billbee")["requests"].get(PAGES_ENDPOINT, 0)
    done = threading.Event()

    def edit_after_first_page():  # paging is paced at 2 requests/s: there is time between pages
        deadline = time.time() + 30
        while time.time() < deadline:
            if sandbox.stats("billbee")["requests"].get(PAGES_ENDPOINT, 0) > baseline:
                for order_id in moved:
                    touch(sandbox, order_id)
                break
            time.sleep(0.01)
        done.set()

    editor = threading.Thread(target=edit_after_first_page, daemon=True)
    with dg.instance_for_test() as instance:
        reader = Reader(flow, config, home, instance)
        editor.start()
        meta = reader.read(key_of(window_start), page_size=5)
        assert done.wait(30)
        assert meta["rereads"] >= 1 and meta["complete"] is True
        assert meta["records_read"] == 18  # the two edited orders left this window for the current hour
        current = reader.read(key_of(datetime.now(UTC)))
        assert current["records_read"] >= 2
        stored = reader.stored()
    assert {str(i) for i in ids} <= set(stored)  # every order of the window is stored: none was lost
    for order_id in moved:  # ... and the edited ones in their latest version
        assert datetime.fromisoformat(stored[str(order_id)]["LastModifiedAt"]) > window_start + timedelta(hours=1)


def test_gap_filler_fills_a_three_hour_outage(sandbox, bpp_env):
    sandbox.reset("billbee", orders=HOURLY * 3)  # three orders per hour
    flow, config = orders_flow()
    flow = flow_with(flow, lookback_hours=4)
    home = Path(bpp_env["BPP_HOME"])
    grace = gap_grace(flow.integration.interval_minutes)
    now = away_from_hour_end()
    hour = floor_hour(now)
    if timedelta(0) <= hour + grace - now < timedelta(seconds=20):  # the sensor's view must not change meanwhile
        time.sleep((hour + grace - now).total_seconds() + 1)
        now = datetime.now(UTC)
    last_read, outage = hour - timedelta(hours=4), [hour - timedelta(hours=h) for h in (3, 2, 1)]
    # windows the schedule may still finish are left to it: the last one when it ended moments ago
    missed = [h for h in outage if h + timedelta(hours=1) + grace <= now]
    with dg.instance_for_test() as instance:
        reader = Reader(flow, config, home, instance)
        assert reader.read(key_of(last_read))["complete"] is True  # the last tick before the outage
        sensor = reader.defs.resolve_sensor_def(f"{flow.slug}_gap_filler")
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING

        # a run of the first missed window is already running: the sensor leaves that window alone
        job_name = f"{flow.slug}_job"
        queued = dg.DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED,
                               tags={"dagster/partition": key_of(missed[0])})
        instance.add_run(queued)
        requests = evaluate(sensor, instance, reader.defs)
        assert [r.partition_key for r in requests] == [key_of(h) for h in missed[1:]]
        instance.delete_run(queued.run_id)

        # a window read only partly before the outage (its latest materialization says complete: false)
        partly = key_of(missed[-1])
        instance.report_runless_asset_event(dg.AssetMaterialization(
            flow.key("billbee_orders"), partition=partly,
            metadata={"complete": False, "read_until": "2000-01-01T00:10:00.000+00:00"}))
        requests = evaluate(sensor, instance, reader.defs)
        assert [r.partition_key for r in requests] == [key_of(h) for h in missed]  # oldest first, exactly these
        assert len({r.run_key for r in requests}) == len(requests)
        keys = {r.partition_key: r.run_key for r in requests}
        assert keys.pop(partly).startswith(f"gap:{partly}:2000-01-01T00:10:00.000+00:00:")  # data, not a counter
        assert all(run_key.startswith(f"gap:{partition}:unread:") for partition, run_key in keys.items())
        assert all(r.tags["integration"] == flow.slug for r in requests)
        for request in requests:
            assert reader.read(request.partition_key)["complete"] is True
        assert evaluate(sensor, instance, reader.defs) == []  # filled: nothing more to run

    expected = read_orders(billbee_client(bpp_env), ReadRange(last_read, missed[-1] + timedelta(hours=1)))
    assert len(expected.orders) == 3 * (len(missed) + 1)
    assert {str(o.BillBeeOrderId) for o in expected.orders} <= set(reader.stored())


def evaluate(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, defs: dg.Definitions) -> list[dg.RunRequest]:
    context = dg.build_sensor_context(instance=instance, definitions=defs)
    data = sensor.evaluate_tick(context)
    return list(data.run_requests or [])
