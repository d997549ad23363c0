"""Schedules: when a deployment runs, computed without a server and without a clock.

* :class:`CronSchedule` (``cron``, ``timezone=None``, ``day_or=True``): a five-field
  cron expression on the wall clock of a zone;
* :class:`IntervalSchedule` (``interval``, ``anchor_date=None``, ``timezone=None``):
  a fixed period in phase with a fixed anchor;
* :class:`RRuleSchedule` (``rrule``, ``timezone=None``): an RFC 5545 recurrence rule.

All three are frozen dataclasses deriving from :class:`Schedule`, validated at
construction (:class:`~flowcore.errors.ScheduleError` names the problem and the fix),
evaluated in UTC unless given a ``timezone``, and answer with aware UTC datetimes:
``schedule.next(n, after=None)``, ``schedule.fire_times(after, until)`` (catch-up
after an outage) and ``schedule.preview(n, after=None)`` (each time in the zone with
its daylight-saving flags). Daylight saving, in one place (:mod:`.wallclock`): a
wall-clock time that happens twice fires once, at its first occurrence; one that does
not exist fires at the next valid instant; intervals under 24 hours keep a fixed
period in absolute time, longer ones the wall-clock time of their anchor.

Prefect users import the same classes from ``flowcore.server.schemas.schedules``.
Importing this package loads neither cronsim nor dateutil: they load on first use.
"""

from __future__ import annotations

from typing import Any

from flowcore.errors import ScheduleError
from flowcore.schedules.base import FireTime, Schedule
from flowcore.schedules.cron import CronSchedule
from flowcore.schedules.interval import IntervalSchedule, parse_interval
from flowcore.schedules.rrule import RRuleSchedule

_KINDS: dict[str, type[Schedule]] = {
    "cron": CronSchedule,
    "interval": IntervalSchedule,
    "rrule": RRuleSchedule,
}


def schedule_from_dict(data: dict[str, Any]) -> Schedule:
    """The schedule that ``schedule.to_dict()`` described (an equal one).

    Raises :class:`~flowcore.errors.ScheduleError` for an unknown ``type`` or fields
    the schedule does not take, and whatever the schedule's own validation raises.
    """
    if not isinstance(data, dict) or "type" not in data:
        raise ScheduleError(f"a schedule description is a dict with a 'type' key, got {data!r}")
    fields = dict(data)
    kind = fields.pop("type")
    cls = _KINDS.get(kind)
    if cls is None:
        raise ScheduleError(f"unknown schedule type {kind!r}; known: {', '.join(sorted(_KINDS))}")
    if cls is IntervalSchedule and isinstance(fields.get("anchor_date"), str):
        from datetime import datetime

        fields["anchor_date"] = datetime.fromisoformat(fields["anchor_date"])
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ScheduleError(f"bad {kind} schedule description {data!r}: {exc}") from None


__all__ = [
    "CronSchedule",
    "FireTime",
    "IntervalSchedule",
    "RRuleSchedule",
    "Schedule",
    "ScheduleError",
    "parse_interval",
    "schedule_from_dict",
]
