"""What a person asks about a deployment, as JSON-ready dicts: shared by
``flowcore deployment ls|inspect --json``, the webhook app's read routes and the
dashboard (so all three say the same)."""

from __future__ import annotations

import time
from typing import Any

from flowcore.deployments import scheduler
from flowcore.deployments.store import (
    DeploymentRecord,
    DeploymentStore,
    ScheduleState,
    readable_schedule,
)


def describe_schedule(data: dict[str, Any]) -> str:
    """``cron '0 2 * * *' (Europe/Berlin)``, ``every 1h (UTC)``, ``rrule '...'``."""
    zone = data.get("timezone") or "UTC"
    kind = data.get("type")
    if kind == "cron":
        return f"cron {data.get('cron')!r} ({zone})"
    if kind == "interval":
        seconds = float(data.get("interval", 0))
        return f"every {_span(seconds)} ({zone})"
    if kind == "rrule":
        return f"rrule {data.get('rrule')!r} ({zone})"
    return str(data)


_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")


def _cron_in_words(expression: str) -> str | None:
    """Common five-field cron expressions in words (``daily at 02:00``); None for the rest."""
    fields = expression.split()
    if len(fields) != 5:
        return None
    minute, hour, dom, month, dow = fields
    if month != "*":
        return None
    if (minute, hour, dom, dow) == ("*", "*", "*", "*"):
        return "every minute"
    if minute.startswith("*/") and minute[2:].isdigit() and (hour, dom, dow) == ("*", "*", "*"):
        return f"every {int(minute[2:])} minutes"
    if not minute.isdigit() or int(minute) > 59:
        return None
    if (hour, dom, dow) == ("*", "*", "*"):
        return f"hourly at minute {int(minute)}"
    if hour.startswith("*/") and hour[2:].isdigit() and (dom, dow) == ("*", "*"):
        return f"every {int(hour[2:])} hours at minute {int(minute)}"
    if not hour.isdigit() or int(hour) > 23:
        return None
    clock = f"{int(hour):02d}:{int(minute):02d}"
    if (dom, dow) == ("*", "*"):
        return f"daily at {clock}"
    if dom == "*" and dow in ("1-5", "MON-FRI", "mon-fri"):
        return f"weekdays at {clock}"
    if dom == "*" and dow.isdigit() and int(dow) <= 7:
        return f"{_DAYS[int(dow) % 7]}s at {clock}"
    if dow == "*" and dom.isdigit():
        return f"monthly on day {int(dom)} at {clock}"
    return None


def schedule_in_words(data: dict[str, Any]) -> str:
    """A schedule as a person says it, with its time zone: ``daily at 02:00
    (Europe/Berlin)``, ``every 1h (UTC)``; cron expressions without a plain reading
    and rrules fall back to :func:`describe_schedule`."""
    zone = data.get("timezone") or "UTC"
    if data.get("type") == "cron":
        words = _cron_in_words(str(data.get("cron", "")))
        if words is not None:
            return f"{words} ({zone})"
    return describe_schedule(data)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def next_runs(record: DeploymentRecord, n: int = 10, now: float | None = None) -> list[tuple[float, ScheduleState]]:
    """The next ``n`` fire times over all schedules (epoch seconds), soonest first;
    none while paused."""
    if record.paused:
        return []
    moment = time.time() if now is None else now
    found: list[tuple[float, ScheduleState]] = []
    for state in record.schedules:
        schedule, _ = readable_schedule(state)
        if schedule is None:  # a newer flowcore's: no fire times here (summary says why)
            continue
        after = scheduler.to_datetime(max(moment, state.last_fire))
        found += [(t.timestamp(), state) for t in schedule.next(n, after=after)]
    found.sort(key=lambda item: item[0])
    return found[:n]


def _wall_clock(at: float, state: ScheduleState) -> str:
    """``at`` on the wall clock of its schedule's zone: ``2026-12-03 02:00 EST``."""
    import datetime

    local = datetime.datetime.fromtimestamp(at, tz=state.load().zone)
    return local.strftime("%Y-%m-%d %H:%M %Z")


def summary(store: DeploymentStore, record: DeploymentRecord, *, now: float | None = None,
            next_n: int = 10, last_n: int = 10, feed_n: int = 20) -> dict[str, Any]:
    """The deployment with its schedules (``description`` and ``words``), next fire
    times (``{time, schedule}``, epoch seconds), last runs (newest first) and trigger
    feed (newest first). ``next_n``/``last_n``/``feed_n`` bound the lists."""
    data = record.to_json()
    for item, state in zip(data["schedules"], record.schedules, strict=True):
        item["description"] = describe_schedule(state.schedule)
        item["words"] = schedule_in_words(state.schedule)
        _, problem = readable_schedule(state)
        if problem:
            item["description"] += f" (this flowcore cannot read it: {problem}; it creates no runs)"
    data["next_runs"] = [
        {"time": at, "schedule": describe_schedule(state.schedule), "wall_clock": _wall_clock(at, state)}
        for at, state in next_runs(record, next_n, now)
    ]
    data["last_runs"] = [run.to_json() for run in store.runs(record.id, limit=last_n)]
    data["feed"] = [entry.to_json() for entry in store.feed(record.id, limit=feed_n)]
    return data


__all__ = ["describe_schedule", "next_runs", "schedule_in_words", "summary"]
