"""Progress lines for long reads and writes: records done of total, rate, time left.

A reader calls `Progress.update(done, total)` after each page; a line goes to `log` at most every
`every` seconds, and `finish()` logs the last one. The assets pass `context.log.info`, so the lines
land in the Dagster event log (the run's page in the UI); `billbee-pulpo sync` runs the same assets
in process, where Dagster's console logger prints them on stderr: one implementation for both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

PROGRESS_ENV = "BPP_PROGRESS_SECONDS"


def progress_every(env: Mapping[str, str] | None = None) -> float:
    """Seconds between progress lines: $BPP_PROGRESS_SECONDS, default 10."""
    value = (os.environ if env is None else env).get(PROGRESS_ENV, "")
    try:
        return max(float(value), 0.0) if value else 10.0
    except ValueError:
        return 10.0


def _duration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_line(label: str, unit: str, done: int, total: int | None, elapsed: float, *,
                  finished: bool = False) -> str:
    """e.g. `Produkte: 12,000 of 20,000 products (60 %), 498/s, about 16 s left`."""
    rate = done / elapsed if elapsed > 0 else 0.0
    rate_text = f"{rate:,.0f}/s" if rate >= 10 else f"{rate:,.1f}/s"
    if total is None or total <= 0:
        text = f"{label}: {done:,} {unit}, {rate_text}"
        return f"{text}, done in {_duration(elapsed)}" if finished else text
    text = f"{label}: {done:,} of {total:,} {unit} ({min(done * 100 // total, 100)} %), {rate_text}"
    if finished:
        return f"{text}, done in {_duration(elapsed)}"
    if rate > 0:
        return f"{text}, about {_duration(max(total - done, 0) / rate)} left"
    return text


class Progress:
    """Throttled progress lines of one read or write (not thread-safe: one caller updates it)."""

    def __init__(self, label: str, unit: str, log: Callable[[str], None], *,
                 every: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.unit = unit
        self.log = log
        self.every = progress_every() if every is None else every
        self.clock = clock
        self.started = self.last = clock()
        self.done = 0
        self.total: int | None = None
        self.lines = 0

    def update(self, done: int, total: int | None = None) -> None:
        """Records done so far (and the total, when known); logs when `every` seconds have passed."""
        self.done = done
        if total is not None:
            self.total = total
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._emit(now, finished=False)

    def add(self, count: int, total: int | None = None) -> None:
        self.update(self.done + count, total)

    def finish(self) -> None:
        """The closing line (records done, average rate, duration)."""
        self._emit(self.clock(), finished=True)

    def _emit(self, now: float, *, finished: bool) -> None:
        self.lines += 1
        self.log(progress_line(self.label, self.unit, self.done, self.total, now - self.started, finished=finished))
