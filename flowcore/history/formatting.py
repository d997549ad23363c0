"""How times and durations of runs are shown, the same in the CLI and the dashboard."""

from __future__ import annotations

import json
import time
from typing import Any

from flowcore.history.records import FlowRunRecord, TaskRunRecord


def local_time(timestamp: float | None, *, zone: bool = False) -> str:
    """``timestamp`` on this machine's clock (``2026-12-03 04:41:58``, with the zone's
    abbreviation when ``zone``), or ``-`` when unknown."""
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z" if zone else "%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def duration(seconds: float | None, unit_gap: str = "") -> str:
    """A duration for people: ``269ms``, ``4.2s``, ``3m07s``, ``2h05m`` (``unit_gap=" "``:
    ``269 ms``, ``4.2 s``); ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}{unit_gap}ms"
    if seconds < 60:
        return f"{seconds:.1f}{unit_gap}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def run_duration(run: FlowRunRecord | TaskRunRecord, unit_gap: str = "") -> str:
    """How long ``run`` (a flow or task run) took, or has taken so far (then marked ``+``)."""
    if run.end is None and run.start is not None and not run.is_final():
        return duration(time.time() - run.start, unit_gap) + "+"
    return duration(run.duration_s, unit_gap)


def json_or(text: str | None, default: Any) -> Any:
    """The JSON document in a column, or ``default`` when it is empty or not JSON."""
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


__all__ = ["duration", "json_or", "local_time", "run_duration"]
