""":class:`IntervalSchedule`: a fixed period from a fixed anchor, and :func:`parse_interval`."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flowcore.errors import ScheduleError
from flowcore.schedules.base import DEFAULT_ANCHOR, Schedule, load_zone, zone_of
from flowcore.schedules.wallclock import resolve

DAY = timedelta(days=1)


@dataclass(frozen=True)
class IntervalSchedule(Schedule):
    """Fires every ``interval``, in phase with ``anchor_date``, in ``timezone`` (default UTC).

    ``interval`` is a ``timedelta`` (a number is read as seconds), greater than zero.
    ``anchor_date`` fixes the phase: fire times are ``anchor_date + k * interval``
    for every whole ``k``, before the anchor as well as after it (the anchor is a
    reference point, not a start date). Without one the anchor is 2020-01-01 00:00
    in the schedule's zone: a constant, never "now", so re-applying a deployment does
    not shift its phase. A naive ``anchor_date`` is a wall-clock time in
    ``timezone``; an aware one is an instant, and with no ``timezone`` given its
    ``ZoneInfo`` becomes the schedule's zone (a bare fixed offset other than UTC is
    refused, since it cannot follow daylight saving).

    Daylight saving:

    * an interval **under 24 hours** keeps a fixed period in absolute time: a 1 h
      schedule fires every real hour, so the wall clock shows 01:00 twice the night
      DST ends and skips 02:00 the night it starts;
    * an interval of **24 hours or more** keeps the anchor's wall-clock time in the
      schedule's zone (a daily 09:00 run stays at 09:00 through the year): the
      period is added on the wall clock, a time that happens twice fires once, at
      its first occurrence, and a time that does not exist fires at the next valid
      instant (02:30 on spring-forward day in New York fires at 03:00 EDT).

    Raises :class:`~flowcore.errors.ScheduleError` at construction for a zero,
    negative or non-finite interval, an unknown zone, or an anchor that is not a
    datetime or carries only a fixed offset.
    """

    interval: timedelta | float
    #: naive: wall clock in ``timezone``; aware: an instant. Normalised to an aware
    #: datetime in the schedule's zone (2020-01-01 00:00 there when not given).
    anchor_date: datetime | None = None
    #: IANA zone name; ``None`` means the anchor's zone, else UTC. Normalised to the zone's name.
    timezone: str | None = None
    _period: timedelta = field(init=False, repr=False, compare=False)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _anchor_wall: datetime = field(init=False, repr=False, compare=False)
    _anchor_at: datetime = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        period = _period(self.interval)
        anchor = self.anchor_date
        if anchor is not None and not isinstance(anchor, datetime):
            raise ScheduleError(
                f"anchor_date must be a datetime, got {type(anchor).__name__} {anchor!r} "
                "(for a date d, pass datetime(d.year, d.month, d.day))"
            )
        aware = anchor is not None and anchor.utcoffset() is not None
        if self.timezone is None and anchor is not None and aware:
            zone = zone_of(anchor, "anchor_date")
        else:
            zone = load_zone(self.timezone)
        if anchor is None:
            wall = DEFAULT_ANCHOR
            at = resolve(wall, zone)
        elif aware:
            at = anchor.astimezone(UTC)
            wall = at.astimezone(zone).replace(tzinfo=None)
        else:
            wall = anchor
            at = resolve(wall, zone)
        object.__setattr__(self, "interval", period)
        object.__setattr__(self, "timezone", zone.key)
        object.__setattr__(self, "anchor_date", at.astimezone(zone))
        object.__setattr__(self, "_period", period)
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_anchor_wall", wall)
        object.__setattr__(self, "_anchor_at", at)

    @property
    def zone(self) -> ZoneInfo:
        return self._zone

    @property
    def keeps_wall_clock(self) -> bool:
        """True for intervals of 24 hours or more (wall-clock time kept across DST)."""
        return self._period >= DAY

    def _fires_after(self, after: datetime) -> Iterator[tuple[datetime, datetime]]:
        period, zone = self._period, self._zone
        if not self.keeps_wall_clock:
            k = (after - self._anchor_at) // period + 1
            while True:
                at = self._anchor_at + k * period
                yield at, at.astimezone(zone).replace(tzinfo=None)
                k += 1
        # Wall-clock steps: the local reading of `after` is off from the wall clock's
        # own count by at most one DST shift, far less than a period, so starting one
        # step early and letting the caller drop the early one is enough. (Past year
        # 9999 the arithmetic overflows; the caller ends the stream there.)
        wall_after = after.astimezone(zone).replace(tzinfo=None)
        k = (wall_after - self._anchor_wall) // period - 1
        while True:
            wall = self._anchor_wall + k * period
            yield resolve(wall, zone), wall
            k += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "interval",
            "interval": self._period.total_seconds(),
            "anchor_date": self._anchor_wall.isoformat(),
            "timezone": self.timezone,
        }


def _period(value: object) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise ScheduleError(
            f"interval must be a timedelta (or a number of seconds), got {type(value).__name__} {value!r}"
        )
    if not isinstance(value, timedelta):
        if not math.isfinite(value):
            raise ScheduleError(f"interval must be a finite number of seconds, got {value!r}")
        try:
            value = timedelta(seconds=value)
        except OverflowError:
            raise ScheduleError(f"interval of {value!r} seconds is too long (more than 999999999 days)") from None
    if value <= timedelta(0):
        raise ScheduleError(
            f"interval must be greater than zero, got {value!r}; e.g. timedelta(hours=1) for hourly runs"
        )
    return value


_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_UNIT_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.IGNORECASE)
_ISO = re.compile(
    r"P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?",
    re.IGNORECASE,
)


def parse_interval(text: str) -> timedelta:
    """A period written as seconds (``3600``), units (``1h``, ``30m``, ``1h30m``, ``2d``, ``1w``)
    or an ISO 8601 duration without years or months (``PT1H``, ``P1DT12H``).

    Raises :class:`~flowcore.errors.ScheduleError` naming the accepted forms for
    anything else, and for a period that is not greater than zero.
    """
    raw = text.strip()
    seconds: float | None = None
    with contextlib.suppress(ValueError):
        seconds = float(raw)
    if seconds is None and _UNIT_PART.sub("", raw).strip() == "" and raw:
        seconds = sum(float(n) * _UNITS[u.lower()] for n, u in _UNIT_PART.findall(raw))
    if seconds is None and raw[:1] in "pP" and len(raw) > 1:
        if re.fullmatch(r"P.*\d+(\.\d+)?[YM].*", raw.upper().split("T")[0]):
            raise ScheduleError(
                f"interval {text!r}: years and months have no fixed length; "
                "use a CronSchedule (e.g. '0 0 1 * *' monthly) or an RRuleSchedule"
            )
        match = _ISO.fullmatch(raw)
        if match and raw.upper() not in ("P", "PT") and not raw.upper().endswith("T"):
            seconds = sum(float(v) * _UNITS[k] for k, v in match.groupdict().items() if v)
    if seconds is None or not math.isfinite(seconds):
        raise ScheduleError(
            f"cannot read interval {text!r}: write seconds (3600), units (1h, 30m, 1h30m, 2d, 1w) "
            "or an ISO 8601 duration (PT1H, P1D)"
        )
    return _period(seconds)


__all__ = ["IntervalSchedule", "parse_interval"]
