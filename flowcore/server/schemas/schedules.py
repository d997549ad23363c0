"""The migration path for Prefect code: ``prefect.server.schemas.schedules`` -> here.

``from prefect.server.schemas.schedules import CronSchedule`` becomes
``from flowcore.server.schemas.schedules import CronSchedule``; the classes are those
of :mod:`flowcore.schedules` (the home to import from in new code), with the same
names and constructor arguments: ``CronSchedule(cron, timezone=None, day_or=True)``,
``IntervalSchedule(interval, anchor_date=None, timezone=None)``,
``RRuleSchedule(rrule, timezone=None)``. What differs from Prefect: fire times come
from ``schedule.next(n, after)`` as aware UTC datetimes, the default interval anchor is
fixed (2020-01-01 in the schedule's zone) rather than the time of creation, and cron
fires once when daylight saving repeats an hour.
"""

from flowcore.schedules import CronSchedule, IntervalSchedule, RRuleSchedule

__all__ = ["CronSchedule", "IntervalSchedule", "RRuleSchedule"]
