"""Which scheduled runs to create now: the catch-up policy, without a clock or a store.

:func:`plan` looks at one schedule between the last fire time already dealt with
and ``until`` (usually now) and splits its fire times into runs to create and fire
times skipped. A fire time is *missed* when it is older than ``now - late_after``
(no worker was running then); younger ones are simply due and always run. Missed
ones follow the deployment's ``catchup``:

* ``"skip"``: none run; they are counted in the trigger feed;
* ``"latest"``: the most recent missed one runs once, marked late, unless a due
  one runs anyway (it is the catch-up);
* ``"all"``: every missed one runs, oldest first, marked late, up to
  :data:`CATCHUP_CAP`; the rest are counted as skipped.

Everything is computed from the instants passed in, so tests cover years of a
schedule in milliseconds. Fire times come from :mod:`flowcore.schedules` as aware UTC
datetimes (daylight saving is resolved there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowcore.schedules import Schedule

#: ``catchup="all"`` creates at most this many missed runs per schedule at once
CATCHUP_CAP = 100
#: a fire time older than this (seconds) when it is first looked at was missed
LATE_AFTER_S = 60.0
#: fire times examined one by one before the planner jumps ahead (a 1 s schedule
#: after a month off is 2.6 million fire times)
SCAN_LIMIT = 20_000


@dataclass
class Plan:
    """What to do about one schedule now."""

    #: (fire time, late) of the runs to create, oldest first
    create: list[tuple[datetime, bool]] = field(default_factory=list)
    #: missed fire times not run (``more_skipped``: at least this many; the scan jumped)
    skipped: int = 0
    more_skipped: bool = False
    first_skipped: datetime | None = None
    last_skipped: datetime | None = None


def to_datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def plan(
    schedule: Schedule,
    last_fire: datetime,
    until: datetime,
    now: datetime,
    catchup: str,
    *,
    late_after: float = LATE_AFTER_S,
    cap: int = CATCHUP_CAP,
) -> Plan:
    """The runs to create for fire times ``t`` with ``last_fire < t <= until``.

    ``now`` decides what was missed (``t < now - late_after``); ``until`` is ``now``
    for a worker's tick and the moment of pausing when a deployment is resumed.
    """
    result = Plan()
    cut = now - timedelta(seconds=late_after)
    missed: list[datetime] = []
    due: list[datetime] = []
    count_missed = 0
    start = last_fire
    stream = schedule.fire_times(start, until)
    for at in stream:
        if at >= cut:
            due.append(at)
            continue
        count_missed += 1
        if catchup == "all":
            if len(missed) < cap:
                missed.append(at)
            else:
                _skip(result, at)
        elif catchup == "latest":
            if missed:
                _skip(result, missed[0])
            missed[:] = [at]
        else:
            _skip(result, at)
        if count_missed >= SCAN_LIMIT:
            # Jump ahead: find the latest missed fire time near the cut, count the rest as skipped.
            result.more_skipped = True
            tail = _latest_before(schedule, at, min(cut, until))
            if tail is not None:
                if catchup == "latest":
                    _skip(result, missed[0])
                    missed[:] = [tail]
                else:
                    _skip(result, tail)
            edge = max(cut - timedelta(microseconds=1), at)
            due = list(schedule.fire_times(edge, until)) if until >= cut else []
            break
    if catchup == "latest" and due and missed:
        _skip(result, missed.pop())  # a due run is about to run: it is the catch-up
    result.create = [(t, True) for t in missed] + [(t, False) for t in due]
    return result


def _skip(result: Plan, at: datetime) -> None:
    result.skipped += 1
    if result.first_skipped is None or at < result.first_skipped:
        result.first_skipped = at
    if result.last_skipped is None or at > result.last_skipped:
        result.last_skipped = at


def _latest_before(schedule: Schedule, after: datetime, cut: datetime) -> datetime | None:
    """The last fire time in ``(after, cut)``, found by widening a window back from ``cut``."""
    window = timedelta(seconds=60)
    while True:
        start = max(after, cut - window)
        found = [t for t in schedule.fire_times(start, cut) if t < cut]
        if found:
            return found[-1]
        if start <= after:
            return None
        window *= 4


def next_fire(schedule: Schedule, last_fire: datetime) -> datetime | None:
    """The first fire time after ``last_fire`` (None: the schedule has ended); due
    when it is not later than now."""
    times = schedule.next(1, after=last_fire)
    return times[0] if times else None


__all__ = ["CATCHUP_CAP", "LATE_AFTER_S", "SCAN_LIMIT", "Plan", "next_fire", "plan", "to_datetime"]
