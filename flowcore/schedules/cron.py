""":class:`CronSchedule`: a five-field cron expression evaluated in a time zone.

The expression is parsed and stepped by cronsim; this module decides what the times
mean around daylight saving changes (see :class:`CronSchedule`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from flowcore.errors import ScheduleError
from flowcore.schedules.base import DEFAULT_ANCHOR, Schedule, load_zone
from flowcore.schedules.wallclock import resolve

NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

#: The five fields, with what each accepts (cronsim's error names a field, not a value).
FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31, L or LW"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT (0 and 7 are Sunday), also 5L or MON#2"),
)

_EXAMPLE = "e.g. '0 2 * * *' is 02:00 every day, '*/15 * * * MON-FRI' every 15 minutes on weekdays"


@dataclass(frozen=True)
class CronSchedule(Schedule):
    """Fires when the wall clock of ``timezone`` (default UTC) matches ``cron``.

    ``cron`` has five fields, ``minute hour day-of-month month day-of-week``, with
    lists, ranges, steps, names (``MON``, ``JAN``), ``L``, ``LW`` and ``MON#2``; or
    a nickname (``@hourly``, ``@daily``/``@midnight``, ``@weekly``, ``@monthly``,
    ``@yearly``/``@annually``). A seconds field is refused: use an
    :class:`IntervalSchedule` for sub-minute periods.

    ``day_or`` (default ``True``) is cron's classic rule: when both day fields are
    restricted, a day matches if either does (``0 0 1,15 * MON`` fires on the 1st,
    the 15th and every Monday); when either field starts with ``*`` (``*/2``
    included, as in Vixie and Debian cron) both must match. ``day_or=False``
    requires both always (``0 0 13 * FRI`` fires on Friday the 13th only).

    Daylight saving, for an expression that names particular times (neither the
    minute nor the hour field starts with ``*``, e.g. ``30 2 * * *``):

    * a wall-clock time that happens twice when DST ends fires **once**, at its
      first occurrence;
    * a wall-clock time that does not exist when DST starts fires at the **next
      valid instant**: ``30 2 * * *`` in America/New_York fires at 03:00 EDT on
      spring-forward day. Several such times that land on one instant fire once.

    An expression with ``*`` at the start of the minute or hour field (``*/15 * *
    * *``, ``0 * * * *``, ``@hourly``) is periodic and follows the clock as it
    goes: it fires at every real instant whose local time matches, so an hourly
    job still runs every real hour, including both 01:00s the night DST ends, and
    does not run at times the clock skips. This is Debian cron's rule as well.

    Raises :class:`~flowcore.errors.ScheduleError` at construction for a bad field,
    a wrong number of fields, an unknown time zone, or (``day_or=False``) an
    expression that never fires.
    """

    cron: str
    #: IANA zone name; ``None`` means UTC. Normalised to the zone's name.
    timezone: str | None = None
    day_or: bool = True
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _expression: str = field(init=False, repr=False, compare=False)
    _periodic: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        zone = load_zone(self.timezone)
        object.__setattr__(self, "timezone", zone.key)
        object.__setattr__(self, "_zone", zone)
        if not isinstance(self.day_or, bool):
            raise ScheduleError(f"day_or must be True or False, got {self.day_or!r}")
        expression = _expression(self.cron)
        object.__setattr__(self, "_expression", expression)
        minute, hour = expression.split()[:2]
        object.__setattr__(self, "_periodic", minute.startswith("*") or hour.startswith("*"))
        if not self.day_or:
            try:
                next(self._steps(DEFAULT_ANCHOR))
            except StopIteration:
                raise ScheduleError(
                    f"cron expression {self.cron!r} with day_or=False never fires: no day matches "
                    "both the day-of-month and the day-of-week field within 50 years; "
                    "use day_or=True (either field matches) or change a day field"
                ) from None

    @property
    def zone(self) -> ZoneInfo:
        return self._zone

    def _steps(self, start: datetime) -> Iterator[datetime]:
        """cronsim's matches after ``start`` (naive: wall clock; aware: real time)."""
        from cronsim import CronSim

        steps = CronSim(self._expression, start)
        if not self.day_or:
            steps.day_and = True  # cronsim's switch between the two day rules
        return steps

    def _fires_after(self, after: datetime) -> Iterator[tuple[datetime, datetime]]:
        zone = self._zone
        if self._periodic:
            # Step through real time: cronsim carries an aware datetime across
            # transitions through UTC (and does no gap or fold fix-ups for it).
            start = after if zone.key == "UTC" else after.astimezone(zone)
            for local in self._steps(start):
                yield local.astimezone(UTC), local.astimezone(zone).replace(tzinfo=None)
            return
        # A fixed-time expression: step through naive wall-clock times, then map
        # each to its instant (first occurrence; a gap moves it to the jump).
        for wall in self._steps(after.astimezone(zone).replace(tzinfo=None)):
            yield resolve(wall, zone), wall

    def to_dict(self) -> dict[str, Any]:
        return {"type": "cron", "cron": self.cron, "timezone": self.timezone, "day_or": self.day_or}


def _expression(cron: object) -> str:
    """The five-field form of ``cron``; ScheduleError naming the bad part otherwise."""
    if not isinstance(cron, str):
        raise ScheduleError(f"cron must be a string such as '0 2 * * *', got {type(cron).__name__} {cron!r}")
    text = cron.strip()
    if text.startswith("@"):
        try:
            text = NICKNAMES[text.lower()]
        except KeyError:
            names = ", ".join(sorted(NICKNAMES))
            raise ScheduleError(f"unknown cron nickname {cron!r}; known: {names}") from None
    fields = text.split()
    if len(fields) != 5:
        extra = (
            "; a seconds field is not supported, use IntervalSchedule for sub-minute periods"
            if len(fields) == 6
            else ""
        )
        raise ScheduleError(
            f"cron expression {cron!r} has {len(fields)} field(s), expected 5 "
            f"(minute hour day-of-month month day-of-week){extra}; {_EXAMPLE}"
        )
    from cronsim import CronSim, CronSimError

    try:
        CronSim(text, DEFAULT_ANCHOR)
    except CronSimError as exc:
        raise ScheduleError(_explain(cron, fields, str(exc))) from None
    return text


def _explain(cron: str, fields: list[str], message: str) -> str:
    """A cronsim error ("Bad minute") as: which field, its value, what it accepts."""
    for index, (name, allowed) in enumerate(FIELDS):
        if message.lower().endswith(name):
            hint = ""
            if name == "day-of-month":
                hint = ", or a day that never occurs in the months given (e.g. 30 in February)"
            return (
                f"invalid cron expression {cron!r}: the {name} field {fields[index]!r} is not valid "
                f"(allowed: {allowed}, with lists, ranges and steps such as 1,15 or 1-5 or */10){hint}"
            )
    return f"invalid cron expression {cron!r}: {message}; {_EXAMPLE}"


__all__ = ["CronSchedule"]
