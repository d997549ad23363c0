"""The dashboard's reads of the SQLite run history: every SQL statement it runs.

Contract:

- Read-only. Each thread opens its own ``mode=ro`` connection to the history file, so
  pages never wait for the writer (WAL) and never write; a run recorded as running
  whose process is gone is *shown* ``Crashed`` (:mod:`flowcore.history.liveness`),
  exactly as ``flowcore runs ls`` shows it.
- A history that does not exist yet, or whose tables are not there yet (the file is
  being created or migrated), reads as empty: pages load, they show no runs.
- Task runs live in three tables (see the README's schema): ``task_runs`` (one row per
  run that did not complete plainly, or is unfinished), ``task_run_blocks`` (many
  plainly completed runs per row) and ``pending_maps`` (a running map's unfinished
  runs). Every query here reads all three: counts as the store counts them
  (:func:`flowcore.history.sqlite.fill_task_counts`), aggregates per block without
  expanding it, durations by decoding a block's times. Run detail reads
  ``store.get_run``.
- Paginated and index-backed: the runs page reads one page of ``flow_runs`` through
  ``flow_runs_by_start`` / ``flow_runs_by_flow`` and counts it through the same index;
  the histogram is a scan of the covering index ``flow_runs_by_state`` (state,
  start_time), never of the table. No index beyond schema version 1 is needed.

Malformed inputs (an unknown state, a bad time) raise
:class:`~flowcore.errors.QueryError` naming the parameter (answered as HTTP 400).
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowcore.errors import ConfigurationError, QueryError
from flowcore.history import liveness
from flowcore.history.formatting import json_or
from flowcore.history.records import (
    FlowRunRecord,
    LogRecord,
    TaskRunBlockWrite,
    TaskRunRecord,
    WorkerRecord,
)
from flowcore.history.sqlite import BLOCK_COLUMNS, fill_task_counts, running_in_map

#: the relation every task-level statement reads (see the module docstring)
TASK_RUNS = "task_runs"
#: task runs that completed plainly, many to a row (see flowcore.history.records.TaskRunBlockWrite)
TASK_RUN_BLOCKS = "task_run_blocks"
#: maps' runs not finished yet
PENDING_MAPS = "pending_maps"

#: flow-run states by name, and the state type each one has
FLOW_STATES: dict[str, str] = {
    "Running": "RUNNING",
    "Completed": "COMPLETED",
    "Failed": "FAILED",
    "TimedOut": "FAILED",
    "Crashed": "CRASHED",
    "Cancelled": "CANCELLED",
}
#: task-run states by name, and the state type each one has
TASK_STATES: dict[str, str] = {
    "Pending": "PENDING",
    "Running": "RUNNING",
    "Completed": "COMPLETED",
    "Cached": "COMPLETED",
    "Failed": "FAILED",
    "TimedOut": "FAILED",
    "NotRun": "FAILED",
    "Crashed": "CRASHED",
    "Cancelled": "CANCELLED",
}
STATE_TYPES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED")
#: the most runs one page of the runs list holds
MAX_PER_PAGE = 500
#: the most bins a histogram has
MAX_BINS = 500

_FLOW_COLUMNS = (
    "id, flow, name, state, state_type, message, parameters, backend, backend_options, tags, "
    "parent_id, start_time, end_time, attempts, host, pid, process_start, heartbeat, "
    "error_type, error_message, traceback"
)
_LOG_COLUMNS = "id, flow_run_id, task_run_id, timestamp, level, level_name, logger, message, task_name, task_run_name"


def state_type_of(name: str) -> str:
    """The state type of a state name (flow or task run); ``PENDING`` if unknown."""
    return TASK_STATES.get(name) or FLOW_STATES.get(name) or "PENDING"


def parse_state(text: str | None) -> str | None:
    """A ``state`` query parameter: a flow-run state name or type, any case, returned as
    written in the store (``Failed``, ``FAILED``); None for empty. Raises QueryError."""
    if text is None or not text.strip():
        return None
    wanted = text.strip()
    for name in FLOW_STATES:
        if name.lower() == wanted.lower():
            return name
    if wanted.upper() in STATE_TYPES:
        return wanted.upper()
    known = ", ".join([*FLOW_STATES, *STATE_TYPES])
    raise QueryError(f"state: {text!r} is not a flow-run state; use one of {known}")


def parse_time(text: str | None, name: str, now: float | None = None) -> float | None:
    """A ``since``/``until`` query parameter: an age back from now (``2d``, ``12h``) or
    an ISO 8601 date or time; None for empty. Raises QueryError naming ``name``."""
    if text is None or not text.strip():
        return None
    from flowcore.history.settings import parse_since

    try:
        return parse_since(text, name, now=now)
    except ConfigurationError as exc:
        raise QueryError(str(exc)) from None


def parse_int(text: str | None, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter between ``low`` and ``high``. Raises QueryError."""
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        raise QueryError(f"{name}: {text!r} is not a whole number") from None
    if not low <= value <= high:
        raise QueryError(f"{name}: {value} is out of range; use {low} to {high}")
    return value


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which flow runs a list or histogram shows (every field optional). ``state`` is a
    state name or a state type as :func:`parse_state` returns it."""

    flow: str | None = None
    state: str | None = None
    since: float | None = None
    until: float | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition (``1`` for none) and its parameters."""
        clauses: list[str] = []
        parameters: list[Any] = []
        if self.flow:
            clauses.append("flow = ?")
            parameters.append(self.flow)
        if self.state:
            if self.state in STATE_TYPES:
                names = [n for n, t in FLOW_STATES.items() if t == self.state]
                clauses.append(f"state IN ({', '.join('?' * len(names))})")
                parameters += names
            else:
                clauses.append("state = ?")
                parameters.append(self.state)
        if self.since is not None:
            clauses.append("start_time >= ?")
            parameters.append(self.since)
        if self.until is not None:
            clauses.append("start_time < ?")
            parameters.append(self.until)
        return (" AND ".join(clauses) or "1"), parameters


@dataclass(slots=True)
class RunsPage:
    """One page of flow runs, newest start first, with ``task_counts`` filled."""

    runs: list[FlowRunRecord]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


@dataclass(frozen=True, slots=True)
class HistogramBin:
    """Flow runs started in ``[start, end)``, counted by state name."""

    start: float
    end: float
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(slots=True)
class Histogram:
    """Flow runs over time: equal bins from ``start`` to ``end``."""

    start: float
    end: float
    bins: list[HistogramBin]

    @property
    def highest(self) -> int:
        return max((b.total for b in self.bins), default=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start, "end": self.end,
            "bins": [{"start": b.start, "end": b.end, "counts": b.counts} for b in self.bins],
        }


@dataclass(slots=True)
class TaskSummary:
    """One task name over a set of task runs: counts by state, durations of the runs
    that ran (start and end known), cache hits, runs that took more than one attempt."""

    task: str
    counts: dict[str, int] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)
    cache_hits: int = 0
    retried: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def mean_s(self) -> float | None:
        return sum(self.durations) / len(self.durations) if self.durations else None

    @property
    def p95_s(self) -> float | None:
        return percentile(self.durations, 95.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task, "total": self.total, "counts": dict(self.counts),
            "mean_s": _round(self.mean_s), "p95_s": _round(self.p95_s),
            "cache_hits": self.cache_hits, "retried": self.retried,
        }


@dataclass(slots=True)
class FlowSummary:
    """One flow: how many runs it has, and its last runs (newest first)."""

    flow: str
    total: int
    last_start: float | None
    recent: list[FlowRunRecord]

    @property
    def finished(self) -> list[FlowRunRecord]:
        return [r for r in self.recent if r.is_final()]

    @property
    def success_rate(self) -> float | None:
        """Completed runs among the recent finished ones (None without any)."""
        done = self.finished
        if not done:
            return None
        return sum(1 for r in done if r.state_type == "COMPLETED") / len(done)

    @property
    def durations(self) -> list[float]:
        return [d for r in self.recent if (d := r.duration_s) is not None]

    @property
    def mean_s(self) -> float | None:
        values = self.durations
        return sum(values) / len(values) if values else None

    @property
    def p95_s(self) -> float | None:
        return percentile(self.durations, 95.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "flow": self.flow, "runs": self.total, "last_start": _iso(self.last_start),
            "success_rate": _round(self.success_rate), "mean_s": _round(self.mean_s),
            "p95_s": _round(self.p95_s),
            "recent": [
                {"id": r.id, "state": r.state, "state_type": r.state_type,
                 "start": _iso(r.start), "duration_s": _round(r.duration_s)}
                for r in self.recent
            ],
        }


@dataclass(slots=True)
class WorkerStatus:
    """A worker seen by a flow run's task runs: busy while one of them runs there."""

    worker: str
    running: list[str] = field(default_factory=list)
    finished: int = 0
    failed: int = 0
    last_seen: float | None = None

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def to_json(self) -> dict[str, Any]:
        return {
            "worker": self.worker, "busy": self.busy, "running": list(self.running),
            "finished": self.finished, "failed": self.failed, "last_seen": _iso(self.last_seen),
        }


@dataclass(slots=True)
class WorkersView:
    """The workers of one flow run and its queue: task runs submitted and not started
    (``pending``), running on a worker not reported yet (``running_unplaced``)."""

    run: FlowRunRecord
    workers: list[WorkerStatus]
    pending: int
    running_unplaced: int

    @property
    def busy(self) -> int:
        return sum(1 for w in self.workers if w.busy)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run.id, "flow": self.run.flow, "state": self.run.state,
            "queue_depth": self.pending, "running_unplaced": self.running_unplaced,
            "busy": self.busy, "idle": len(self.workers) - self.busy,
            "workers": [w.to_json() for w in self.workers],
        }


def _log_filters(flow_run_id: str, level: int, task: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) choosing a flow run's log records at
    ``level`` or above, of the task named ``task`` (or the run so named)."""
    where = "flow_run_id = ?"
    parameters: list[Any] = [flow_run_id]
    if level:
        where += " AND level >= ?"
        parameters.append(level)
    if task:
        where += " AND (task_name = ? OR task_run_name = ?)"
        parameters += [task, task]
    return where, parameters


def worker_label(worker: WorkerRecord | None) -> str:
    """The lane name of a worker: its Dask address, else ``host:pid/thread``."""
    return str(worker) if worker is not None else "(worker not reported)"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile of ``values`` (linear interpolation); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise_tasks(task_runs: Iterable[TaskRunRecord]) -> list[TaskSummary]:
    """Per task name (sorted), the summary of ``task_runs``."""
    table: dict[str, TaskSummary] = {}
    for run in task_runs:
        summary = table.get(run.task)
        if summary is None:
            summary = table[run.task] = TaskSummary(run.task)
        _add_task(summary, run.state, run.start, run.end, run.cache_hit, run.attempts)
    return [table[name] for name in sorted(table)]


def _add_task(summary: TaskSummary, state: str, start: float | None, end: float | None,
              cache_hit: Any, attempts: int | None) -> None:
    summary.counts[state] = summary.counts.get(state, 0) + 1
    if start is not None and end is not None and state not in ("Cached",):
        summary.durations.append(max(0.0, end - start))
    if cache_hit or state == "Cached":
        summary.cache_hits += 1
    if (attempts or 0) > 1:
        summary.retried += 1


def file_identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``, None when there is none: tells a file
    replaced at the same path (moved aside and started anew, deleted and recreated)
    from the one a connection opened."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


class HistoryQueries:
    """Read-only SQL over one history file (see the module docstring).

    Thread-safe: each thread has its own connection. ``close()`` closes them all.
    A connection follows the path: when the file there is replaced (or removed), the
    next read opens the new one (or reads as empty).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # -- connections --------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection | None:
        identity = file_identity(self.path)
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            if getattr(self._local, "identity", None) == identity:
                return connection
            self._drop(connection)  # the file it read was replaced or removed
            self._local.connection = None
        if identity is None:
            return None
        try:
            connection = sqlite3.connect(
                f"{self.path.as_uri()}?mode=ro", uri=True, timeout=5.0, isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error:
            return None
        self._local.connection = connection
        self._local.identity = identity
        with self._lock:
            self._connections.append(connection)
        return connection

    def _drop(self, connection: sqlite3.Connection) -> None:
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)
        connection.close()

    def rows(self, sql: str, parameters: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one statement; none when the history (or the table) is not
        there yet. Other database errors propagate as :class:`sqlite3.Error`."""
        connection = self._connection()
        if connection is None:
            return []
        try:
            return connection.execute(sql, tuple(parameters)).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc) or "no such column" in str(exc):
                return []
            raise

    def data_version(self) -> int:
        """A number that changes whenever another connection commits to the history
        (``PRAGMA data_version``); -1 while there is no history file."""
        connection = self._connection()
        if connection is None:
            return -1
        return int(connection.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    # -- flow runs -----------------------------------------------------------------------
    def flow_record(self, row: Sequence[Any], now: float | None = None) -> FlowRunRecord:
        """A ``flow_runs`` row (columns as in ``_FLOW_COLUMNS``) as a record, shown
        ``Crashed`` when its process is gone."""
        (run_id, flow, name, state, state_type, message, parameters, backend, backend_options,
         tags, parent_id, start, end, attempts, host, pid, process_start, heartbeat, error_type,
         error_message, traceback) = row
        record = FlowRunRecord(
            run_id, flow, name, state, state_type, message or "", json_or(parameters, {}), backend,
            json_or(backend_options, {}), json_or(tags, []), parent_id, start, end, attempts or 0,
            host, pid, process_start or 0, heartbeat, error_type, error_message, traceback,
        )
        if not record.is_final():
            reason = liveness.crash_reason(record, now)
            if reason is not None:
                liveness.mark_crashed(record, reason)
        return record

    def runs_page(self, where: RunFilter, page: int = 1, per_page: int = 50) -> RunsPage:
        """Page ``page`` (from 1) of the flow runs ``where`` selects, newest start first."""
        condition, parameters = where.where()
        counted = self.rows(f"SELECT count(*) FROM flow_runs WHERE {condition}", parameters)
        total = int(counted[0][0]) if counted else 0
        offset = (page - 1) * per_page
        rows = self.rows(
            f"SELECT {_FLOW_COLUMNS} FROM flow_runs WHERE {condition} "
            "ORDER BY start_time DESC LIMIT ? OFFSET ?",
            [*parameters, per_page, offset],
        )
        now = time.time()
        runs = [self.flow_record(row, now) for row in rows]
        self.fill_task_counts(runs)
        return RunsPage(runs, total, page, per_page)

    def fill_task_counts(self, runs: list[FlowRunRecord]) -> None:
        """Fill ``task_counts`` of ``runs`` (grouped reads, as the store counts them)."""
        fill_task_counts(self.rows, runs)

    def flow_run(self, run_id: str) -> FlowRunRecord | None:
        """The flow run whose id is ``run_id`` (no task runs, no states), or None."""
        rows = self.rows(f"SELECT {_FLOW_COLUMNS} FROM flow_runs WHERE id = ?", (run_id,))
        return self.flow_record(rows[0]) if rows else None

    def flow_names(self) -> list[str]:
        """Every flow name in the history, sorted (read from ``flow_runs_by_flow``)."""
        return [str(r[0]) for r in self.rows("SELECT DISTINCT flow FROM flow_runs ORDER BY flow")]

    def children(self, run_id: str, depth: int = 4, limit: int = 500) -> list[tuple[int, FlowRunRecord]]:
        """Subflow runs of ``run_id`` as (depth from 1, record), depth first, in start
        order, at most ``limit`` of them and ``depth`` levels down."""
        found: list[tuple[int, FlowRunRecord]] = []
        now = time.time()

        def visit(parent: str, level: int) -> None:
            if level > depth or len(found) >= limit:
                return
            rows = self.rows(
                f"SELECT {_FLOW_COLUMNS} FROM flow_runs WHERE parent_id = ? ORDER BY start_time LIMIT ?",
                (parent, limit - len(found)),
            )
            for row in rows:
                record = self.flow_record(row, now)
                found.append((level, record))
                visit(record.id, level + 1)

        visit(run_id, 1)
        self.fill_task_counts([record for _, record in found])
        return found

    def histogram(self, where: RunFilter, bins: int = 60, now: float | None = None) -> Histogram:
        """Flow runs started over time, by state name, in ``bins`` equal bins from
        ``where.since`` (else the first run ``where`` selects) to ``where.until`` (else
        now). A scan of the covering index ``flow_runs_by_state``, not of the table."""
        end = where.until if where.until is not None else (time.time() if now is None else now)
        start = where.since
        if start is None:
            condition, parameters = where.where()
            first = self.rows(f"SELECT min(start_time) FROM flow_runs WHERE {condition}", parameters)
            start = first[0][0] if first and first[0][0] is not None else end - 3600.0
        if end <= start:
            end = start + 1.0
        width = (end - start) / bins
        bounded = RunFilter(where.flow, where.state, start, end)
        condition, parameters = bounded.where()
        rows = self.rows(
            f"SELECT state, CAST((start_time - ?) / ? AS INTEGER) AS bin, count(*) FROM flow_runs "
            f"WHERE {condition} GROUP BY state, bin",
            [start, width, *parameters],
        )
        counts: list[dict[str, int]] = [{} for _ in range(bins)]
        for state, index, count in rows:
            slot = min(max(int(index), 0), bins - 1)
            counts[slot][state] = counts[slot].get(state, 0) + int(count)
        return Histogram(start, end, [
            HistogramBin(start + i * width, start + (i + 1) * width, counts[i]) for i in range(bins)
        ])

    def running_runs(self, limit: int = 50) -> list[FlowRunRecord]:
        """Flow runs recorded as running and still alive, newest first."""
        now = time.time()
        rows = self.rows(
            f"SELECT {_FLOW_COLUMNS} FROM flow_runs WHERE state = 'Running' ORDER BY start_time DESC LIMIT ?",
            (limit,),
        )
        runs = [r for r in (self.flow_record(row, now) for row in rows) if r.state_type == "RUNNING"]
        self.fill_task_counts(runs)
        return runs

    def flow_summaries(self, last: int = 20, limit: int = 200) -> list[FlowSummary]:
        """Per flow (at most ``limit``, most recently run first): its run count and its
        ``last`` runs."""
        rows = self.rows(
            "SELECT flow, count(*), max(start_time) FROM flow_runs GROUP BY flow "
            "ORDER BY max(start_time) DESC LIMIT ?",
            (limit,),
        )
        now = time.time()
        summaries: list[FlowSummary] = []
        for flow, total, last_start in rows:
            recent = [
                self.flow_record(row, now)
                for row in self.rows(
                    f"SELECT {_FLOW_COLUMNS} FROM flow_runs WHERE flow = ? ORDER BY start_time DESC LIMIT ?",
                    (flow, last),
                )
            ]
            summaries.append(FlowSummary(str(flow), int(total), last_start, recent))
        return summaries

    # -- task runs -----------------------------------------------------------------------
    def task_summaries(self, *, flow: str | None = None, since: float | None = None,
                       until: float | None = None) -> list[TaskSummary]:
        """Per task name, the summary of the task runs of the flow runs started in
        ``[since, until)`` (of flow ``flow`` when given)."""
        where = RunFilter(flow=flow, since=since, until=until)
        condition, parameters = where.where()
        runs = f"SELECT id FROM flow_runs WHERE {condition}"
        rows = self.rows(
            f"SELECT t.task, t.state, t.start_time, t.end_time, t.cache_hit, t.attempts "
            f"FROM {TASK_RUNS} AS t WHERE t.flow_run_id IN ({runs})",
            parameters,
        )
        table: dict[str, TaskSummary] = {}
        for task, state, start, end, cache_hit, attempts in rows:
            summary = table.get(task)
            if summary is None:
                summary = table[task] = TaskSummary(str(task))
            _add_task(summary, state, start, end, cache_hit, attempts)
        # runs stored as blocks: all completed in one attempt, not cached; durations decoded here
        for row in self.rows(f"SELECT {BLOCK_COLUMNS} FROM {TASK_RUN_BLOCKS} WHERE flow_run_id IN ({runs})", parameters):
            block = TaskRunBlockWrite(*row)
            summary = table.get(block.task)
            if summary is None:
                summary = table[block.task] = TaskSummary(block.task)
            summary.counts["Completed"] = summary.counts.get("Completed", 0) + block.count
            starts, ends = block.times()
            summary.durations.extend(max(0.0, end - start) for start, end in zip(starts, ends, strict=True))
        return [table[name] for name in sorted(table)]

    def workers(self, run: FlowRunRecord) -> WorkersView:
        """The workers that ``run``'s task runs have used, busy or idle, and its queue."""
        rows = self.rows(
            "SELECT worker_host, worker_pid, worker_thread, worker_address, state_type, count(*), "
            "max(coalesce(end_time, start_time, submitted_time)), "
            "group_concat(CASE WHEN state_type = 'RUNNING' THEN name END, char(31)) "
            f"FROM {TASK_RUNS} WHERE flow_run_id = ? "
            "GROUP BY worker_host, worker_pid, worker_thread, worker_address, state_type",
            (run.id,),
        )
        rows += [
            (host, pid, thread, address, "COMPLETED", count, last, None)
            for host, pid, thread, address, count, last in self.rows(
                "SELECT worker_host, worker_pid, worker_thread, worker_address, sum(count), max(end_time) "
                f"FROM {TASK_RUN_BLOCKS} WHERE flow_run_id = ? GROUP BY 1, 2, 3, 4",
                (run.id,),
            )
        ]
        for task, name_first, left, running in self.rows(
            f"SELECT task, name_first, count - done, running FROM {PENDING_MAPS} WHERE flow_run_id = ?", (run.id,)
        ):
            executing = running_in_map(running)
            for position, (_, worker) in executing.items():
                where = worker or WorkerRecord(None, None, None, None)
                rows.append((where.host, where.pid, where.thread, where.address, "RUNNING", 1, None,
                             f"{task}-{name_first + position}"))
            if left > len(executing):
                rows.append((None, None, None, None, "PENDING", left - len(executing), None, None))
        table: dict[str, WorkerStatus] = {}
        pending = unplaced = 0
        for host, pid, thread, address, state_type, count, last, running in rows:
            if host is None and pid is None:
                if state_type == "PENDING":
                    pending += int(count)
                elif state_type == "RUNNING":
                    unplaced += int(count)
                continue
            label = worker_label(WorkerRecord(host, pid, thread, address))
            status = table.get(label)
            if status is None:
                status = table[label] = WorkerStatus(label)
            if state_type == "RUNNING":
                status.running += [n for n in str(running or "").split("\x1f") if n]
            elif state_type == "PENDING":
                pending += int(count)
            else:
                status.finished += int(count)
                if state_type in ("FAILED", "CRASHED"):
                    status.failed += int(count)
            if last is not None and (status.last_seen is None or last > status.last_seen):
                status.last_seen = float(last)
        if run.state_type == "CRASHED":  # what was left open crashed with the run
            pending = unplaced = 0
            for status in table.values():
                status.running.clear()
        workers = sorted(table.values(), key=lambda w: w.worker)
        return WorkersView(run, workers, pending, unplaced)

    # -- logs ----------------------------------------------------------------------------
    def logs_tail(self, flow_run_id: str, *, after_id: int = 0, level: int = 0,
                  task: str | None = None, limit: int = 1000) -> list[LogRecord]:
        """Log records of a flow run at ``level`` or above, of the task named ``task``
        (or the run so named), oldest first: without ``after_id`` the newest ``limit``
        (what a page opens with); with it, the first ``limit`` above ``after_id``, so
        that a follower passing the last id back misses no line however many came."""
        where, parameters = _log_filters(flow_run_id, level, task)
        sql = f"SELECT {_LOG_COLUMNS} FROM logs WHERE {where} AND id > ?"
        parameters.append(after_id)
        if after_id:
            sql += " ORDER BY id LIMIT ?"
            parameters.append(limit)
            return [LogRecord(*row) for row in self.rows(sql, parameters)]
        sql += " ORDER BY id DESC LIMIT ?"
        parameters.append(limit)
        return [LogRecord(*row) for row in reversed(self.rows(sql, parameters))]

    def logs_count(self, flow_run_id: str, *, level: int = 0, task: str | None = None) -> int:
        """How many log records of a flow run :meth:`logs_tail` would choose from (same
        ``level`` and ``task`` filters, no limit)."""
        where, parameters = _log_filters(flow_run_id, level, task)
        rows = self.rows(f"SELECT count(*) FROM logs WHERE {where}", parameters)
        return int(rows[0][0]) if rows else 0

    def log_tasks(self, flow_run_id: str) -> list[str]:
        """The task names that wrote log records in a flow run."""
        rows = self.rows(
            "SELECT DISTINCT task_name FROM logs WHERE flow_run_id = ? AND task_name IS NOT NULL ORDER BY 1",
            (flow_run_id,),
        )
        return [str(r[0]) for r in rows]



def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _iso(value: float | None) -> str | None:
    from flowcore.history.records import iso_time

    return iso_time(value)


__all__ = [
    "FLOW_STATES",
    "TASK_RUNS",
    "TASK_STATES",
    "FlowSummary",
    "Histogram",
    "HistogramBin",
    "HistoryQueries",
    "RunFilter",
    "RunsPage",
    "TaskSummary",
    "WorkerStatus",
    "WorkersView",
    "parse_int",
    "parse_state",
    "parse_time",
    "percentile",
    "state_type_of",
    "summarise_tasks",
    "worker_label",
]


class ChangeWatcher:
    """Tells when another connection has committed to the history since the last look
    (``PRAGMA data_version`` on a connection of its own: the number is only comparable
    on one connection). For one server-sent event stream; ``close()`` when it ends."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self._connection: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._last: int | None = None

    def changed(self) -> bool:
        """True when the history changed (or appeared, was replaced or removed) since the
        previous call; the first call answers False."""
        identity = file_identity(self.path)
        replaced = self._connection is not None and identity != self._identity
        if replaced:
            self.close()  # another file now, or none: the pages show something else
        self._identity = identity
        if self._connection is None:
            if identity is None:
                self._last = -1  # the file appearing later counts as a change
                return replaced
            try:
                self._connection = sqlite3.connect(
                    f"{self.path.as_uri()}?mode=ro", uri=True, timeout=5.0, isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error:
                return False
        try:
            version = int(self._connection.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return replaced
        previous, self._last = self._last, version
        return replaced or (previous is not None and previous != version)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


__all__ += ["ChangeWatcher"]
