"""How the date filters of `GET /orders` are sent, and how to tell from an answer how Billbee read them.

Billbee does not document how it reads the offset in `modifiedAtMin`/`modifiedAtMax` (the official C#
SDK sends local time without an offset). Three readings are plausible: it honours the offset, or it
takes the wall time and ignores the offset, as UTC or as Europe/Berlin local time. A bound sent as the
wall time of zone Z *with Z's real offset* is read correctly both by a server that honours offsets and
by one that reads wall time as Z. So the only choice is the zone the bounds are written in (`UTC` or
`Europe/Berlin`), and a window read tells which one is right: every order it returns must lie in the
range asked for; when some do not, the zone whose wall-time reading explains all of them is the one
Billbee applied (`infer_zone`).

Daylight saving: UTC instants always have a Berlin wall time (the spring gap is never produced), but
in the autumn hour that occurs twice a wall-time reader may pick either occurrence. `send_low` and
`send_high` move such a bound out of the repeated hour (an hour earlier / later), so the range Billbee
applies always covers the range asked for; the reader de-duplicates what comes twice.

Pure functions, no network.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

FILTER_ZONES: tuple[str, ...] = ("UTC", "Europe/Berlin")
DEFAULT_ZONE = "UTC"
TOLERANCE = timedelta(seconds=1)
HOUR = timedelta(hours=1)


def zone(name: str) -> tzinfo:
    if name not in FILTER_ZONES:
        raise ValueError(f"unknown filter time zone {name!r}; expected one of {', '.join(FILTER_ZONES)}")
    return UTC if name == "UTC" else ZoneInfo(name)


def wall_readings(moment: datetime, zone_name: str) -> tuple[datetime, datetime]:
    """The instants (UTC) a server that reads `moment`'s wall time (offset ignored) as `zone_name` may
    take: two different ones only in the repeated autumn hour."""
    naive = moment.replace(tzinfo=None)
    tz = zone(zone_name)
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return (first, second) if first <= second else (second, first)


def _local(moment: datetime, zone_name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()} has no time zone; pass an aware datetime")
    return moment.astimezone(zone(zone_name))


def send_low(moment: datetime, zone_name: str) -> datetime:
    """`moment` as a lower bound written in `zone_name` (with its offset), never read later than `moment`."""
    return _send(moment, zone_name, -HOUR)


def send_high(moment: datetime, zone_name: str) -> datetime:
    """`moment` as an upper bound written in `zone_name`, never read earlier than `moment`."""
    return _send(moment, zone_name, HOUR)


def _send(moment: datetime, zone_name: str, step: timedelta) -> datetime:
    """The first of `moment`, `moment + step`, ... whose every wall-time reading lies on the `step` side of
    `moment` (only the repeated autumn hour needs a step)."""
    candidate = moment
    for _ in range(3):
        local = _local(candidate, zone_name)
        readings = wall_readings(local, zone_name)
        if (readings[1] <= moment) if step < timedelta(0) else (readings[0] >= moment):
            return local
        candidate += step
    return _local(candidate, zone_name)


@dataclass(frozen=True)
class SentRange:
    """The bounds a window read sends for the range (low, high] asked for, in one zone."""

    low: datetime
    high: datetime
    zone: str

    @classmethod
    def of(cls, low: datetime, high: datetime, zone_name: str) -> SentRange:
        return cls(send_low(low, zone_name), send_high(high, zone_name), zone_name)

    def read_as(self, zone_name: str) -> tuple[datetime, datetime]:
        """The widest UTC range a server reading the sent wall times as `zone_name` may apply."""
        return wall_readings(self.low, zone_name)[0], wall_readings(self.high, zone_name)[1]

    def honoured(self) -> tuple[datetime, datetime]:
        """The UTC range a server that honours the offset applies (= read as the zone the bounds are in)."""
        return self.low.astimezone(UTC), self.high.astimezone(UTC)


@dataclass(frozen=True)
class GuardResult:
    """A window read checked against the range it asked for."""

    sent: SentRange
    checked: int
    outside: list[tuple[str, datetime]] = field(default_factory=list)  # (order id, LastModifiedAt UTC)
    detected_zone: str | None = None  # the zone whose reading explains every order, when `sent.zone` does not

    @property
    def ok(self) -> bool:
        return not self.outside

    @property
    def offset_observed(self) -> str:
        """How far the range Billbee applied lay from the one asked for, e.g. '-01:00' (an hour earlier);
        '' when the read matched, 'unknown' when no zone explains it."""
        if self.ok:
            return ""
        if self.detected_zone is None:
            return "unknown"
        applied = self.sent.read_as(self.detected_zone)[0]
        return format_offset(applied - self.sent.honoured()[0])


def format_offset(delta: timedelta) -> str:
    sign = "-" if delta < timedelta(0) else "+"
    minutes = int(abs(delta).total_seconds() // 60)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _inside(moment: datetime, low: datetime, high: datetime) -> bool:
    return low - TOLERANCE < moment <= high + TOLERANCE


def check_range(sent: SentRange, orders: Iterable[tuple[str, datetime | None]]) -> GuardResult:
    """Which orders lie outside the range the sent bounds ask for (± 1 s), and which zone Billbee then
    applied: the one zone whose wall-time reading of the sent bounds explains every order, else None."""
    stamps = [(key, moment.astimezone(UTC)) for key, moment in orders if moment is not None]
    low, high = sent.honoured()
    outside = [(key, moment) for key, moment in stamps if not _inside(moment, low, high)]
    if not outside:
        return GuardResult(sent, len(stamps))
    return GuardResult(sent, len(stamps), outside, infer_zone(sent, [moment for _, moment in stamps]))


def infer_zone(sent: SentRange, stamps: list[datetime]) -> str | None:
    explaining = [name for name in FILTER_ZONES if name != sent.zone
                  and all(_inside(moment, *sent.read_as(name)) for moment in stamps)]
    return explaining[0] if len(explaining) == 1 else None
