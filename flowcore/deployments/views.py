"""What a person asks about a deployment, as JSON-ready dicts: shared by
``flowcore deployment ls|inspect --json``, the webhook app's read routes and the
dashboard (so all three say the same)."""

from __future__ import annotations

import time
from typing import Any

from flowcore.deployments import scheduler
from flowcore.deployments.store import DeploymentRecord, DeploymentStore, ScheduleState


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
        after = scheduler.to_datetime(max(moment, state.last_fire))
        found += [(t.timestamp(), state) for t in state.load().next(n, after=after)]
    found.sort(key=lambda item: item[0])
    return found[:n]


def _wall_clock(at: float, state: ScheduleState) -> str:
    """``at`` on the wall clock of its schedule's zone: ``2026-12-03 02:00 EST``."""
    import datetime

    local = datetime.datetime.fromtimestamp(at, tz=state.load().zone)
    return local.strftime("%Y-%m-%d %H:%M %Z")


def summary(store: DeploymentStore, record: DeploymentRecord, *, now: float | None = None,
            next_n: int = 10, last_n: int = 10, feed_n: int = 20) -> dict[str, Any]:
    """The deployment with its schedules (described), next fire times, last runs and
    trigger feed."""
    data = record.to_json()
    for item, state in zip(data["schedules"], record.schedules, strict=True):
        item["description"] = describe_schedule(state.schedule)
    data["next_runs"] = [
        {"time": at, "schedule": describe_schedule(state.schedule), "wall_clock": _wall_clock(at, state)}
        for at, state in next_runs(record, next_n, now)
    ]
    data["last_runs"] = [run.to_json() for run in store.runs(record.id, limit=last_n)]
    data["feed"] = [entry.to_json() for entry in store.feed(record.id, limit=feed_n)]
    return data


__all__ = ["describe_schedule", "next_runs", "summary"]
