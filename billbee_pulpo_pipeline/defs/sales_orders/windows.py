"""`LastModifiedAt` windows of the sales-order flow: pure window/watermark logic and the paged reader.

No Dagster here, so every rule is unit-testable with plain datetimes and a fake page source.

Windows. Partition [start, end) is read as `modifiedAtMin=start` (exclusive) .. `modifiedAtMax=end`
(inclusive), i.e. (start, end]: consecutive windows tile time with no gap and no double count, and an
order modified exactly at a boundary belongs to the earlier window only.

Watermark ("read_until", one per window, kept in the state store): every order of the window modified at
or before it has been read. A run reads (max(start, read_until), min(end, now)] and never asks for a
`modifiedAtMax` later than the moment the read starts, so no order can enter the window while it is paged.
A read that started at `t` vouches only for `t - overlap`: an order modified just before `t` may become
visible late (replication lag, clock skew), so the next run re-reads that overlap. A window is complete
once its watermark reached its end, i.e. after a read that started at `end + overlap` or later; the
re-read orders whose content did not change are not stored as changes (their hash is unchanged).

Paging. Billbee pages by offset. An order of the window modified while we page leaves the window and
shifts every later page by one, so an unmodified order slides onto a page already read and would be
missed. `read_complete_window` notices it (TotalRows changes between pages, or the pass saw fewer unique
ids than TotalRows) and reads the window again, a bounded number of times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from billbee_pulpo_pipeline.clients.billbee import MAX_PAGE_SIZE, BillbeeClient, Order, ResultPage

OVERLAP = timedelta(minutes=2)
"""Re-read at every tick: covers Billbee's late visibility and clock skew up to this much."""

MAX_PASSES = 4
"""Reads of one window before giving up when orders keep changing while it is paged."""

HOUR = timedelta(hours=1)

PageSource = Callable[[], Iterator[ResultPage[Order]]]
"""Starts a fresh pass over the window's pages (page 1, 2, ... with their `Paging`)."""


class WindowReadError(RuntimeError):
    """The window kept changing while it was paged, so no consistent result could be read."""


# ---- time and watermarks ---------------------------------------------------------------------------


def utc_now() -> datetime:
    """Now in UTC, truncated to milliseconds (the precision Billbee's timestamps compare at)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def parse_watermark(value: str | None) -> datetime | None:
    """A stored watermark (ISO-8601 in UTC) as an aware datetime; None before the first read."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_watermark(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class ReadRange:
    """One `GET /orders` range: `modifiedAtMin=low` (exclusive) .. `modifiedAtMax=high` (inclusive)."""

    low: datetime
    high: datetime

    def __str__(self) -> str:
        return f"({format_watermark(self.low)}, {format_watermark(self.high)}]"


def read_range(start: datetime, end: datetime, read_until: datetime | None, now: datetime, *,
               reread: bool = False) -> ReadRange | None:
    """What a run of window [start, end) asks Billbee for; None when there is nothing to read (the window
    is complete, or has not begun). `reread` ignores the watermark and reads the whole window so far."""
    low = start if reread or read_until is None else max(start, read_until)
    high = min(end, now)
    return ReadRange(low, high) if low < high else None


def advanced_watermark(start: datetime, end: datetime, previous: datetime | None, read_started_at: datetime,
                       overlap: timedelta = OVERLAP) -> datetime:
    """The watermark after a read that started at `read_started_at`: it vouches for `overlap` less than
    it read, and a watermark never moves back (concurrent runs of one window keep the later one)."""
    settled = min(end, max(start, read_started_at - overlap))
    return settled if previous is None else max(previous, settled)


def is_complete(read_until: datetime | None, end: datetime) -> bool:
    return read_until is not None and read_until >= end


# ---- which windows run when -------------------------------------------------------------------------


def tick_windows(tick: datetime, interval_minutes: int, first_start: datetime,
                 overlap: timedelta = OVERLAP) -> list[datetime]:
    """Starts of the hourly windows a schedule tick at `tick` reads: the hour it falls in, and the previous
    hour while the previous tick may have read it only up to `tick - interval` (or within the overlap of
    its end). So the first tick at or after `end + overlap` completes the previous window, unless that tick
    falls in the next hour already (intervals of 59-60 minutes): then the gap filler completes it."""
    current = floor_hour(tick)
    windows = [current]
    previous = current - HOUR
    if tick - current < timedelta(minutes=interval_minutes) + overlap and previous >= first_start:
        windows.insert(0, previous)
    return windows


def ended_windows(now: datetime, lookback_hours: int, first_start: datetime, grace: timedelta) -> list[datetime]:
    """Starts of the hourly windows, oldest first, that ended at least `grace` ago and began within the
    `lookback_hours` before the current hour (never before the first partition)."""
    current = floor_hour(now)
    start = max(current - timedelta(hours=lookback_hours), floor_hour(first_start))
    out: list[datetime] = []
    hour = start
    while hour + HOUR + grace <= now:
        out.append(hour)
        hour += HOUR
    return out


# ---- the complete-window reader ----------------------------------------------------------------------


@dataclass(frozen=True)
class WindowRead:
    """The orders of one range, read consistently, de-duplicated by id (the newest `LastModifiedAt` wins)."""

    orders: list[Order]
    total_rows: int | None  # TotalRows of the final pass; None when Billbee sent no paging
    pages: int  # page requests over all passes (each is one Billbee call)
    passes: int
    shifts: list[str] = field(default_factory=list)  # why earlier passes were discarded

    @property
    def rereads(self) -> int:
        return self.passes - 1

    @property
    def consistent(self) -> bool:
        return self.total_rows is None or len(self.orders) == self.total_rows

    @classmethod
    def nothing(cls) -> WindowRead:
        return cls(orders=[], total_rows=0, pages=0, passes=0)


@dataclass
class _Pass:
    orders: dict[int, Order] = field(default_factory=dict)
    totals: list[int] = field(default_factory=list)
    pages: int = 0
    shifted: str | None = None


def newer(candidate: Order, current: Order | None) -> bool:
    """Whether `candidate` is a later version of the same order than `current`."""
    if current is None:
        return True
    if candidate.LastModifiedAt is None:
        return current.LastModifiedAt is None
    return current.LastModifiedAt is None or candidate.LastModifiedAt >= current.LastModifiedAt


def _one_pass(pages: Iterator[ResultPage[Order]]) -> _Pass:
    result = _Pass()
    try:
        for page in pages:
            result.pages += 1
            total = page.paging.TotalRows if page.paging is not None else None
            if total is not None:
                if result.totals and total != result.totals[0]:
                    result.shifted = f"TotalRows changed from {result.totals[0]} to {total} on page {page.number}"
                    return result  # later pages are shifted too: stop paying for them
                result.totals.append(total)
            for order in page.items:
                if newer(order, result.orders.get(order.BillBeeOrderId)):
                    result.orders[order.BillBeeOrderId] = order
    finally:
        close = getattr(pages, "close", None)
        if close is not None:
            close()
    if result.totals and len(result.orders) != result.totals[0]:
        result.shifted = f"{len(result.orders)} unique orders for TotalRows {result.totals[0]}"
    return result


def read_complete_window(pages: PageSource, *, max_passes: int = MAX_PASSES,
                         on_shift: Callable[[str], None] | None = None) -> WindowRead:
    """Page through a window until one pass is consistent: TotalRows the same on every page and equal
    to the unique ids seen. Raises `WindowReadError` after `max_passes` inconsistent passes."""
    if max_passes < 1:
        raise ValueError("max_passes must be at least 1")
    shifts: list[str] = []
    pages_read = 0
    for attempt in range(1, max_passes + 1):
        current = _one_pass(pages())
        pages_read += current.pages
        if current.shifted is None:
            return WindowRead(orders=list(current.orders.values()),
                              total_rows=current.totals[0] if current.totals else None,
                              pages=pages_read, passes=attempt, shifts=shifts)
        shifts.append(current.shifted)
        if on_shift is not None:
            on_shift(f"pass {attempt}: {current.shifted}; reading the window again")
    raise WindowReadError(f"orders kept changing while the window was paged ({max_passes} passes: "
                          f"{'; '.join(shifts)}); the watermark was not advanced, the next run reads it again")


def read_orders(client: BillbeeClient, window: ReadRange, *, page_size: int = MAX_PAGE_SIZE,
                max_passes: int = MAX_PASSES, on_shift: Callable[[str], None] | None = None,
                on_page: Callable[[ResultPage[Order]], None] | None = None) -> WindowRead:
    """All orders with `window.low < LastModifiedAt <= window.high`, complete even if some change meanwhile.
    `on_page` sees each page as it arrives: work done there overlaps the pacing wait for the next page."""

    def pages() -> Iterator[ResultPage[Order]]:
        for page in client.iter_order_pages(modified_at_min=window.low, modified_at_max=window.high,
                                            page_size=page_size):
            if on_page is not None:
                on_page(page)
            yield page

    return read_complete_window(pages, max_passes=max_passes, on_shift=on_shift)
