"""Wall-clock times in a time zone, and the instants they stand for.

Daylight saving time breaks the one-to-one map between a zone's wall clock and
absolute time in two ways:

* **nonexistent** (a gap): when DST starts the clock jumps, e.g. 02:00 -> 03:00 in
  America/New_York, so 02:30 never happens that day;
* **ambiguous** (a fold): when DST ends the clock goes back, e.g. 02:00 -> 01:00, so
  01:30 happens twice, first in summer time, then in standard time.

:func:`resolve` is flowcore's one answer to both, used by every schedule that keeps
wall-clock times (fixed-time cron, intervals of a day or more, rrules): an ambiguous
time means its **first** occurrence, and a nonexistent time means the **next valid
instant**, the moment the clock jumps (02:30 on spring-forward day in New York is
03:00 EDT). Python's own rule for a gap (``fold=0`` reads 02:30 with the old offset,
which lands on 03:30) is not used: a job asked for "at 02:30" should not run later
than the first moment after 02:30 that exists.
"""

from __future__ import annotations

import enum
import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo


class WallTime(enum.Enum):
    """How a naive wall-clock time maps onto a zone's absolute time."""

    #: happens exactly once
    NORMAL = "normal"
    #: does not happen: the clock skips it when DST starts (or the zone's offset grows)
    NONEXISTENT = "nonexistent"
    #: happens twice: the clock repeats it when DST ends (or the zone's offset shrinks)
    AMBIGUOUS = "ambiguous"


def classify(wall: datetime, zone: ZoneInfo) -> WallTime:
    """Whether the naive wall-clock time ``wall`` is normal, nonexistent or ambiguous in ``zone``."""
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return WallTime.NORMAL
    # The two offsets differ: either side of a transition. A time inside a fold
    # survives a round trip through UTC; a time inside a gap comes back moved.
    back = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    return WallTime.AMBIGUOUS if back == wall else WallTime.NONEXISTENT


def resolve(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant (aware, in UTC) at which the naive wall-clock time ``wall`` fires in ``zone``.

    A normal time is that instant; an ambiguous one its first occurrence; a
    nonexistent one the instant the clock jumps over it (the first valid instant
    after it). Never raises for a naive ``datetime``; ``wall`` must be naive.
    """
    if wall.tzinfo is not None:
        raise ValueError(f"resolve() takes a naive wall-clock time, got {wall.isoformat()}")
    kind = classify(wall, zone)
    if kind is not WallTime.NONEXISTENT:
        return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    return _transition_over(wall, zone)


def _transition_over(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant of the transition whose gap contains the nonexistent ``wall``.

    Read with the offset after the jump, ``wall`` names an instant before the
    transition; read with the offset before it, an instant at or after it. The
    transition lies between the two: bisect on whole seconds (zone transitions
    happen on whole seconds) for the first instant whose offset is no longer the
    old one.
    """
    old_offset = wall.replace(tzinfo=zone, fold=0).utcoffset()
    early = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)  # new offset: before the jump
    late = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)  # old offset: at or after it
    low = math.floor(early.timestamp())
    high = math.ceil(late.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, UTC).astimezone(zone).utcoffset() == old_offset:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)


__all__ = ["WallTime", "classify", "resolve"]
