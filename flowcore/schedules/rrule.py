""":class:`RRuleSchedule`: an RFC 5545 recurrence rule (parsed by python-dateutil) in a time zone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flowcore.errors import ScheduleError
from flowcore.schedules.base import DEFAULT_ANCHOR, DEFAULT_TIMEZONE, Schedule, load_zone
from flowcore.schedules.wallclock import resolve

#: The longest rule text accepted (the limit Prefect's server applies too).
MAX_RRULE_LENGTH = 6500
#: The largest COUNT accepted: more runs than this is a mistake, or an open-ended rule.
MAX_RRULE_COUNT = 10_000

_EXAMPLE = "e.g. 'DTSTART:20260105T090000\\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR'"
_DTSTART = re.compile(r"^[ \t]*DTSTART(?P<params>;[^:\r\n]*)?:(?P<value>[^\r\n]*?)[ \t]*$", re.I | re.M)
_DTSTART_VALUE = re.compile(r"(?P<date>\d{8})(?:T(?P<time>\d{6})(?P<utc>Z)?)?", re.I)
_COUNT = re.compile(r"\bCOUNT=(\d+)", re.I)
_UTC_UNTIL = re.compile(r"\bUNTIL=\d{8}T\d{6}Z", re.I)
_FREQ = re.compile(r"\bFREQ=(\w+)", re.I)
#: Frequencies whose rules are re-anchored near the asked time before stepping, because
#: dateutil steps from DTSTART one period at a time (minutely from 2020 takes seconds).
_STEPS = {"HOURLY": timedelta(hours=1), "MINUTELY": timedelta(minutes=1), "SECONDLY": timedelta(seconds=1)}
_UTC_NAMES = {"UTC", "Etc/UTC", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"}


@dataclass(frozen=True)
class RRuleSchedule(Schedule):
    """Fires at the occurrences of an RFC 5545 recurrence rule, evaluated on the wall clock of its zone.

    ``rrule`` is iCalendar text: one or more ``RRULE:``/``RDATE:``/``EXRULE:``/
    ``EXDATE:`` lines, optionally with a ``DTSTART`` line, e.g.
    ``"DTSTART:20260105T090000\\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR"``. ``DTSTART``
    is floating (``20260105T090000``: a wall-clock time in ``timezone``), zoned
    (``DTSTART;TZID=Europe/Berlin:...``: that zone becomes the schedule's) or UTC
    (``...Z``). Without ``DTSTART`` the rule starts at 2020-01-01 00:00 in the
    schedule's zone: a constant, never "now", so its phase never moves.
    ``timezone`` defaults to the DTSTART's zone, else UTC; naming a different zone
    than a zoned or UTC DTSTART is an error (one of them is a mistake).

    Occurrences are wall-clock times in the zone, with the rules every wall-clock
    schedule here follows: a time that happens twice when DST ends fires once, at
    its first occurrence; a time that does not exist when DST starts fires at the
    next valid instant (dateutil itself would return the nonexistent time); times
    that land on one instant fire once. For a fixed period in absolute time use an
    :class:`IntervalSchedule`. A rule with COUNT or UNTIL ends: ``next`` then
    returns fewer times than asked.

    Raises :class:`~flowcore.errors.ScheduleError` at construction for text dateutil
    cannot read, a malformed DTSTART, an unknown zone, a conflicting ``timezone``,
    COUNT above 10,000 or text longer than 6,500 characters.
    """

    rrule: str
    #: IANA zone name; ``None`` means DTSTART's zone, else UTC. Normalised to the zone's name.
    timezone: str | None = None
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _body: str = field(init=False, repr=False, compare=False)
    _dtstart: datetime = field(init=False, repr=False, compare=False)
    _step: timedelta | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = self.rrule
        if not isinstance(text, str) or not text.strip():
            raise ScheduleError(f"rrule must be non-empty RFC 5545 text, {_EXAMPLE}; got {text!r}")
        if len(text) > MAX_RRULE_LENGTH:
            raise ScheduleError(
                f"rrule is {len(text)} characters long, more than {MAX_RRULE_LENGTH}; "
                "split it into several schedules"
            )
        for count in _COUNT.findall(text):
            if int(count) > MAX_RRULE_COUNT:
                raise ScheduleError(
                    f"rrule COUNT={count} asks for more than {MAX_RRULE_COUNT} runs; "
                    "leave COUNT out for an open-ended schedule, or bound it with UNTIL"
                )
        starts = list(_DTSTART.finditer(text))
        if len(starts) > 1:
            raise ScheduleError(f"rrule has {len(starts)} DTSTART lines, expected at most one")
        body = _DTSTART.sub("", text).strip()
        if not body:
            raise ScheduleError(f"rrule has no RRULE or RDATE line; {_EXAMPLE}")
        zone, dtstart = self._start(starts[0] if starts else None, body)
        object.__setattr__(self, "timezone", zone.key)
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_body", body)
        object.__setattr__(self, "_dtstart", dtstart)
        object.__setattr__(self, "_step", _rebase_step(body))
        self._parse(dtstart)  # fail now, not at the first question

    def _start(self, match: re.Match[str] | None, body: str) -> tuple[ZoneInfo, datetime]:
        """The schedule's zone and the rule's DTSTART (naive when floating, else aware in that zone)."""
        given = None if self.timezone is None else load_zone(self.timezone)
        if match is None:
            zone = given or load_zone(DEFAULT_TIMEZONE)
            # RFC 5545: UNTIL in UTC goes with a zoned DTSTART, a floating UNTIL with a floating one.
            aware = _UTC_UNTIL.search(body) is not None
            return zone, DEFAULT_ANCHOR.replace(tzinfo=zone) if aware else DEFAULT_ANCHOR
        raw = match.group("value")
        value = _DTSTART_VALUE.fullmatch(raw)
        if value is None:
            raise ScheduleError(
                f"rrule DTSTART {raw!r} is not a date-time like 20260105T090000 (floating), "
                "20260105T090000Z (UTC) or DTSTART;TZID=Europe/Berlin:20260105T090000"
            )
        wall = datetime.strptime(value.group("date") + (value.group("time") or "000000"), "%Y%m%d%H%M%S")
        tzid = None
        for param in filter(None, (match.group("params") or "").split(";")):
            name, _, setting = param.partition("=")
            if name.upper() == "TZID":
                tzid = setting
            elif param.upper() not in ("VALUE=DATE", "VALUE=DATE-TIME"):
                raise ScheduleError(f"rrule DTSTART has an unsupported parameter {param!r}; only TZID is understood")
        if tzid is not None and value.group("utc"):
            raise ScheduleError(f"rrule DTSTART names both TZID={tzid} and UTC (a trailing Z); keep one")
        if tzid is None and not value.group("utc"):
            return given or load_zone(DEFAULT_TIMEZONE), wall
        own = load_zone(tzid, what="rrule TZID") if tzid is not None else load_zone(DEFAULT_TIMEZONE)
        if given is not None and given.key != own.key and not (
            own.key == DEFAULT_TIMEZONE and given.key in _UTC_NAMES
        ):
            where = f"TZID={tzid}" if tzid is not None else "UTC (a trailing Z)"
            raise ScheduleError(
                f"rrule DTSTART is in {where} but timezone={given.key!r}; drop timezone=, "
                "or write the DTSTART floating (no TZID, no Z) to have it read in timezone"
            )
        return own, wall.replace(tzinfo=own)

    @property
    def zone(self) -> ZoneInfo:
        return self._zone

    def _parse(self, dtstart: datetime) -> Any:
        from dateutil.rrule import rrulestr

        def zone_for(name: str) -> ZoneInfo:
            return load_zone(name, what="rrule TZID")

        try:
            return rrulestr(
                self._body, dtstart=dtstart, forceset=True, unfold=True, tzids=zone_for, cache=False
            )
        except ScheduleError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise ScheduleError(f"invalid rrule {self.rrule!r}: {exc}; {_EXAMPLE}") from None

    def _fires_after(self, after: datetime) -> Iterator[tuple[datetime, datetime]]:
        zone, dtstart = self._zone, self._dtstart
        wall_after = after.astimezone(zone).replace(tzinfo=None)
        if self._step is not None:
            # Same rule, same lattice of periods, a DTSTART just before the asked time.
            naive_start = dtstart.replace(tzinfo=None)
            skip = (wall_after - naive_start) // self._step - 1
            if skip > 0:
                dtstart = (naive_start + skip * self._step).replace(tzinfo=dtstart.tzinfo)
        start = wall_after if dtstart.tzinfo is None else wall_after.replace(tzinfo=zone)
        try:
            for value in self._parse(dtstart).xafter(start, inc=False):
                if value.tzinfo is None:
                    wall = value
                elif value.tzinfo is zone:
                    wall = value.replace(tzinfo=None)  # may be nonexistent: resolve() fixes that
                else:
                    wall = value.astimezone(zone).replace(tzinfo=None)
                yield resolve(wall, zone), wall
        except TypeError as exc:
            raise ScheduleError(
                f"rrule {self.rrule!r} mixes floating and zoned date-times ({exc}); give every "
                "RDATE/EXDATE the same form as DTSTART"
            ) from None
        except (OverflowError, ValueError):  # stepped past year 9999
            return

    def to_dict(self) -> dict[str, Any]:
        return {"type": "rrule", "rrule": self.rrule, "timezone": self.timezone}


def _rebase_step(body: str) -> timedelta | None:
    """The period of a rule that may be re-anchored; None when its phase needs its DTSTART.

    Re-anchoring moves DTSTART forward by whole periods: the same occurrences follow
    for an HOURLY, MINUTELY or SECONDLY rule, unless it counts (COUNT), picks by
    position (BYSETPOS), excludes by rule (EXRULE) or combines several rules.
    """
    rules = re.findall(r"^\s*RRULE:", body, re.I | re.M) or ([body] if ":" not in body else [])
    if len(rules) != 1 or re.search(r"\b(COUNT|BYSETPOS)=|^\s*EXRULE", body, re.I | re.M):
        return None
    freq = _FREQ.search(body)
    step = _STEPS.get(freq.group(1).upper()) if freq else None
    if step is None:
        return None
    interval = re.search(r"\bINTERVAL=(\d+)", body, re.I)
    count = int(interval.group(1)) if interval else 1
    return step * count if count > 0 else None


__all__ = ["MAX_RRULE_COUNT", "MAX_RRULE_LENGTH", "RRuleSchedule"]
