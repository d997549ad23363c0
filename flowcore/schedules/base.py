"""What every schedule offers: :class:`Schedule`, its fire times and :class:`FireTime`.

A schedule answers one question, "when does it fire after this instant?", through
:meth:`Schedule.next`, :meth:`Schedule.fire_times` and :meth:`Schedule.preview`. It
holds no clock: every answer is computed from an instant the caller passes (or, for
``next`` without ``after``, the current time), so schedules are tested for years of
wall time in milliseconds.
"""

from __future__ import annotations

import abc
import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from flowcore.errors import ScheduleError
from flowcore.schedules.wallclock import WallTime, classify

#: The wall-clock time (in the schedule's zone) that fixes the phase of intervals and
#: of rrules without DTSTART when none is given: a constant, never "now", so applying
#: the same schedule again (a redeploy) keeps its fire times where they were.
DEFAULT_ANCHOR = datetime(2020, 1, 1)

#: The zone of a schedule that names none.
DEFAULT_TIMEZONE = "UTC"


@dataclass(frozen=True)
class FireTime:
    """One fire time of a schedule, with what daylight saving did to it.

    ``at`` is the instant (aware, UTC); ``local`` the same instant in the schedule's
    zone (``fold=1`` for the second pass of a repeated hour); ``nominal`` the naive
    wall-clock time the schedule asked for. They differ only when ``skipped``.
    """

    at: datetime
    local: datetime
    nominal: datetime
    #: the nominal wall-clock time does not exist (DST starts): fires at the next valid instant
    skipped: bool
    #: the local wall-clock time happens twice that day (DST ends)
    repeated: bool

    @property
    def occurrence(self) -> int:
        """1 or 2: which pass of a repeated wall-clock time this is (1 when not repeated)."""
        return 2 if self.repeated and self.local.fold == 1 else 1

    @property
    def note(self) -> str:
        """A short human explanation of ``skipped`` / ``repeated``; empty when neither."""
        if self.skipped:
            return (
                f"skipped: {self.nominal:%H:%M} does not exist (clocks go forward); "
                f"fires at {self.local:%H:%M %Z}, the next valid time"
            )
        if self.repeated:
            which = "first" if self.occurrence == 1 else "second"
            return f"repeated: {self.local:%H:%M} happens twice (clocks go back); this is the {which} ({self.local:%Z})"
        return ""


def load_zone(name: object, *, what: str = "timezone") -> ZoneInfo:
    """The IANA zone ``name`` (``None``: UTC); ScheduleError naming close matches otherwise."""
    if name is None:
        return ZoneInfo(DEFAULT_TIMEZONE)
    if isinstance(name, ZoneInfo):
        return name
    if not isinstance(name, str) or not name.strip():
        raise ScheduleError(
            f"{what} must be an IANA time zone name such as 'Europe/Berlin' or 'UTC', got {name!r}"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    known = available_timezones()
    same_case = [z for z in known if z.lower() == name.lower()]
    close = same_case or difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(z) for z in close)}?" if close else ""
    raise ScheduleError(
        f"unknown {what} {name!r}: not an IANA time zone name{hint} "
        "(names look like 'America/New_York', 'Europe/London', 'UTC')"
    )


def zone_of(value: datetime, what: str) -> ZoneInfo:
    """The named zone an aware ``value`` carries; ScheduleError for a bare fixed offset."""
    tzinfo = value.tzinfo
    if isinstance(tzinfo, ZoneInfo):
        return tzinfo
    offset = value.utcoffset()
    if offset is not None and not offset:
        return ZoneInfo(DEFAULT_TIMEZONE)
    raise ScheduleError(
        f"{what} {value.isoformat()} carries a fixed UTC offset, not a time zone, so daylight "
        "saving cannot be followed; pass timezone='Area/City' (e.g. 'Europe/Berlin') as well, "
        "or give the datetime a ZoneInfo"
    )


def instant(value: object, name: str) -> datetime:
    """``value`` as an aware UTC datetime; ScheduleError when it is not an aware datetime.

    Naive datetimes are rejected, not guessed at: "02:30" names no instant until a
    zone is attached, and guessing the machine's zone (or the schedule's) would make
    a worker's answer depend on where it runs.
    """
    if not isinstance(value, datetime):
        raise ScheduleError(f"{name} must be a datetime, got {type(value).__name__} {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(
            f"{name}={value.isoformat()} is naive (it has no time zone), so it names no instant; "
            f"pass an aware datetime, e.g. {name}=datetime(..., tzinfo=ZoneInfo('Europe/Berlin')) "
            "or datetime.now(timezone.utc)"
        )
    return value.astimezone(UTC)


class Schedule(abc.ABC):
    """Base of :class:`CronSchedule`, :class:`IntervalSchedule` and :class:`RRuleSchedule`.

    Concrete schedules are frozen dataclasses: equal when they fire at the same
    times by construction, hashable, and validated when built (a bad one raises
    :class:`~flowcore.errors.ScheduleError`). Every fire time they return is an
    aware datetime **in UTC**: UTC datetimes compare, subtract and hash as instants,
    whereas Python compares two datetimes of the same ``ZoneInfo`` by their wall
    clock and ignores ``fold``, which would make the two 01:30s of the night DST
    ends equal. ``t.astimezone(schedule.zone)`` shows a fire time in the
    schedule's zone; :meth:`preview` does that and explains DST effects.
    """

    @property
    @abc.abstractmethod
    def zone(self) -> ZoneInfo:
        """The time zone the schedule is evaluated in (UTC unless one was given)."""

    @abc.abstractmethod
    def _fires_after(self, after: datetime) -> Iterator[tuple[datetime, datetime]]:
        """(instant in UTC, nominal naive wall time) pairs, instants in increasing order.

        Every instant is later than ``after`` (aware, UTC) or the caller drops it;
        duplicates are dropped by the caller too. The iterator ends only when the
        schedule does (an rrule's COUNT or UNTIL) or the calendar does (year 9999).
        """

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description that :func:`schedule_from_dict` turns back into an equal schedule."""

    def _stream(self, after: datetime) -> Iterator[FireTime]:
        zone = self.zone
        last = after
        fires = self._fires_after(after)
        while True:
            try:
                at, nominal = next(fires)
                if at <= last:
                    continue  # before `after`, or a second name for an instant already given
                local = at.astimezone(zone)
            except (StopIteration, OverflowError):  # the schedule, or the calendar (year 9999), ends
                return
            last = at
            wall = local.replace(tzinfo=None, fold=0)
            yield FireTime(
                at=at,
                local=local,
                nominal=nominal,
                skipped=classify(nominal, zone) is WallTime.NONEXISTENT,
                repeated=classify(wall, zone) is WallTime.AMBIGUOUS,
            )

    def next(self, n: int = 1, after: datetime | None = None) -> list[datetime]:
        """The next ``n`` fire times strictly after ``after``, as aware UTC datetimes, oldest first.

        ``after`` must be an aware datetime (any zone); a naive one raises
        :class:`~flowcore.errors.ScheduleError` rather than being guessed at. It
        defaults to the current time. Returns fewer than ``n`` times only when the
        schedule ends (an rrule with COUNT or UNTIL). ``n`` must be >= 0.
        """
        return [fire.at for fire in self.preview(n, after)]

    def preview(self, n: int = 10, after: datetime | None = None) -> list[FireTime]:
        """Like :meth:`next`, with each time in the schedule's zone and its DST flags."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ScheduleError(f"n must be a whole number >= 0, got {n!r}")
        start = datetime.now(UTC) if after is None else instant(after, "after")
        fires: list[FireTime] = []
        if n == 0:
            return fires
        for fire in self._stream(start):
            fires.append(fire)
            if len(fires) == n:
                break
        return fires

    def fire_times(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Every fire time ``t`` with ``after < t <= until``, oldest first, as aware UTC datetimes.

        A lazy iterator, for catch-up after an outage: with ``after`` the last time
        the schedule was looked at and ``until`` now, it yields the runs that were
        missed, each exactly once; a following call with ``after=until`` picks up
        where this one stopped without repeating or losing a time. Both bounds must
        be aware (ScheduleError otherwise); ``until`` before ``after`` yields nothing.
        """
        start = instant(after, "after")
        end = instant(until, "until")
        return self._until(start, end)

    def _until(self, start: datetime, end: datetime) -> Iterator[datetime]:
        if end <= start:
            return
        for fire in self._stream(start):
            if fire.at > end:
                return
            yield fire.at


__all__ = ["DEFAULT_ANCHOR", "DEFAULT_TIMEZONE", "FireTime", "Schedule", "instant", "load_zone", "zone_of"]
