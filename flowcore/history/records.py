"""What the run history holds: plain records, the same for every store.

Reading: :class:`FlowRunRecord`, :class:`TaskRunRecord`, :class:`StateRecord` and
:class:`LogRecord` are what a :class:`~flowcore.history.store.HistoryStore` returns.
Writing: a :class:`HistoryBatch` is what the background writer hands a store in one
transaction (upserts of flow and task runs, state changes, log records, heartbeats).

Times are seconds since the epoch (floats, UTC). A field that is ``None`` on a
record being written means "unknown here, keep what the store has".
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: state names whose type is final (a run in one of them can no longer change)
FINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """Where a task run executed: host, process, thread, and a Dask worker's address."""

    host: str | None
    pid: int | None
    thread: str | None = None
    address: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "thread": self.thread, "address": self.address}

    def __str__(self) -> str:
        where = f"{self.host}:{self.pid}" + (f"/{self.thread}" if self.thread else "")
        return f"{self.address} ({where})" if self.address else where


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One entry of a flow run's state history."""

    timestamp: float
    type: str
    name: str
    message: str = ""
    attempt: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "timestamp": iso_time(self.timestamp), "type": self.type, "name": self.name,
            "message": self.message, "attempt": self.attempt,
        }


@dataclass(slots=True)
class FlowRunRecord:
    """One flow run.

    ``state``/``state_type``: the last recorded state, except that a run recorded as
    running whose process is gone reads as ``Crashed`` (see
    :mod:`flowcore.history.liveness`). ``task_counts`` (state name -> number of task
    runs) and ``states`` are filled by the store's queries where they say so.
    """

    id: str
    flow: str
    name: str
    state: str
    state_type: str
    message: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    parent_id: str | None = None
    start: float | None = None
    end: float | None = None
    attempts: int = 0
    host: str | None = None
    pid: int | None = None
    #: when process ``pid`` started (clock ticks since boot, from /proc), 0 if unknown
    process_start: int = 0
    #: last sign of life written by the run's process while it was running
    heartbeat: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    task_counts: dict[str, int] = field(default_factory=dict)
    states: list[StateRecord] = field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end; None while running or when unknown."""
        if self.start is None or self.end is None:
            return None
        return max(0.0, self.end - self.start)

    def is_final(self) -> bool:
        return self.state_type in FINAL_STATE_TYPES

    def to_json(self) -> dict[str, Any]:
        """The stable JSON shape of ``flowcore runs ls --json`` (one object per run)."""
        return {
            "id": self.id,
            "flow": self.flow,
            "name": self.name,
            "state": self.state,
            "state_type": self.state_type,
            "message": self.message,
            "start": iso_time(self.start),
            "end": iso_time(self.end),
            "duration_s": _round(self.duration_s),
            "backend": self.backend,
            "task_counts": dict(self.task_counts),
            "parent_id": self.parent_id,
            "attempts": self.attempts,
            "host": self.host,
            "pid": self.pid,
            "tags": list(self.tags),
        }


@dataclass(slots=True)
class TaskRunRecord:
    """One task run (``state`` is its final state once it ended).

    Its state history is in its columns: ``Pending`` at ``submitted``, ``Running`` at
    ``start``, the final state at ``end``.
    """

    id: str
    flow_run_id: str | None
    task: str
    name: str
    state: str
    state_type: str
    message: str = ""
    attempts: int = 0
    submitted: float | None = None
    start: float | None = None
    end: float | None = None
    backend: str | None = None
    worker: WorkerRecord | None = None
    cache_hit: bool | None = None
    cache_key: str | None = None
    tags: list[str] = field(default_factory=list)
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    #: ``{"storage": ..., "key": ...}`` when the run kept its result, else None
    result: dict[str, str] | None = None

    @property
    def duration_s(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return max(0.0, self.end - self.start)

    def is_final(self) -> bool:
        return self.state_type in FINAL_STATE_TYPES

    def to_json(self) -> dict[str, Any]:
        """The stable JSON shape of a task run in ``flowcore runs show --json``."""
        error = None
        if self.error_type is not None or self.error_message is not None:
            error = {"type": self.error_type, "message": self.error_message, "traceback": self.traceback}
        return {
            "id": self.id,
            "task": self.task,
            "name": self.name,
            "state": self.state,
            "state_type": self.state_type,
            "message": self.message,
            "attempts": self.attempts,
            "submitted": iso_time(self.submitted),
            "start": iso_time(self.start),
            "end": iso_time(self.end),
            "duration_s": _round(self.duration_s),
            "backend": self.backend,
            "worker": self.worker.to_json() if self.worker is not None else None,
            "cache_hit": self.cache_hit,
            "cache_key": self.cache_key,
            "tags": list(self.tags),
            "error": error,
            "result": dict(self.result) if self.result is not None else None,
        }


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log record of a run (``get_run_logger()``, ``log_prints``, flowcore's own)."""

    id: int
    flow_run_id: str | None
    task_run_id: str | None
    timestamp: float
    level: int
    level_name: str
    logger: str
    message: str
    task_name: str | None = None
    task_run_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "flow_run_id": self.flow_run_id, "task_run_id": self.task_run_id,
            "timestamp": iso_time(self.timestamp), "level": self.level_name,
            "logger": self.logger, "message": self.message, "task": self.task_name,
            "task_run_name": self.task_run_name,
        }


# -- writing -------------------------------------------------------------------------


@dataclass(slots=True)
class FlowRunWrite:
    """An upsert of one flow run: ``None`` fields keep the stored value. ``state`` is
    always given; ``state_entry`` (if any) is appended to its state history."""

    id: str
    flow: str
    name: str
    state: str
    state_type: str
    message: str = ""
    parameters: str | None = None  # JSON text
    backend: str | None = None
    backend_options: str | None = None  # JSON text
    tags: str | None = None  # JSON text
    parent_id: str | None = None
    start: float | None = None
    end: float | None = None
    attempts: int | None = None
    host: str | None = None
    pid: int | None = None
    process_start: int | None = None
    heartbeat: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    state_entry: StateRecord | None = None


@dataclass(slots=True)
class TaskRunWrite:
    """An upsert of one task run: ``None`` fields keep the stored value."""

    id: str
    flow_run_id: str | None
    task: str
    name: str
    state: str
    state_type: str
    message: str | None = None
    attempts: int | None = None
    submitted: float | None = None
    start: float | None = None
    end: float | None = None
    backend: str | None = None
    worker_host: str | None = None
    worker_pid: int | None = None
    worker_thread: str | None = None
    worker_address: str | None = None
    cache_hit: bool | None = None
    cache_key: str | None = None
    tags: str | None = None  # JSON text
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    #: where the run's result was kept (``persist_result``): storage label and key
    result_storage: str | None = None
    result_key: str | None = None

    def update(self, later: TaskRunWrite) -> None:
        """Fold a later write of the same run into this one (its known fields win)."""
        for name in TaskRunWrite.__slots__:
            value = getattr(later, name)
            if value is not None:
                setattr(self, name, value)


@dataclass(frozen=True, slots=True)
class TaskRunBlockWrite:
    """Many task runs of one task in one flow run, stored as one row: every one of them
    ``Completed`` after one attempt, not from the cache, on one worker, named
    ``<task>-<number>``. The columns hold what differs from run to run, encoded (see
    :func:`encode_block`); :meth:`expand` gives the runs back as records."""

    flow_run_id: str | None
    task: str
    id_prefix: str
    backend: str | None
    worker_host: str | None
    worker_pid: int | None
    worker_thread: str | None
    worker_address: str | None
    tags: str | None  # JSON text
    count: int
    first_number: int
    #: JSON int array: run i's id number is first_number + numbers[i]; None: + i
    numbers: str | None
    name_first: int
    #: JSON int array: run i's name number is name_first + names[i]; None: + i
    names: str | None
    #: the earliest start; offsets below are in microseconds from it
    time0: float
    end_time: float
    #: when every run was submitted (None when they differ: see ``submitted``)
    submitted_time: float | None
    #: JSON int array of submission offsets, or None (all at ``submitted_time``)
    submitted: str | None
    #: JSON int array of start offsets, or None: back to back (run 0 at ``time0``,
    #: run i when run i - 1 ended)
    starts: str | None
    #: JSON int array of end offsets
    ends: str

    def times(self) -> tuple[list[float], list[float]]:
        """When each run this row holds started and ended (seconds since the epoch)."""
        time0 = self.time0
        ends = [time0 + e / 1e6 for e in json.loads(self.ends)]
        if self.starts:
            starts = [time0 + s / 1e6 for s in json.loads(self.starts)]
        else:
            starts = [time0, *ends[:-1]]
        return starts, ends

    def expand(self) -> list[TaskRunRecord]:
        """The runs this row holds, in order."""
        count, time0 = self.count, self.time0
        numbers = json.loads(self.numbers) if self.numbers else range(count)
        names = json.loads(self.names) if self.names else range(count)
        starts, ends = self.times()
        if self.submitted:
            submitted: list[float | None] = [time0 + s / 1e6 for s in json.loads(self.submitted)]
        else:
            submitted = [self.submitted_time] * count
        worker = None
        if self.worker_host is not None or self.worker_pid is not None:
            worker = WorkerRecord(self.worker_host, self.worker_pid, self.worker_thread, self.worker_address)
        tags = json.loads(self.tags) if self.tags else []
        prefix, first, name_first, task = self.id_prefix, self.first_number, self.name_first, self.task
        return [
            TaskRunRecord(
                f"{prefix}-{first + numbers[i]:x}", self.flow_run_id, task, f"{task}-{name_first + names[i]}",
                "Completed", "COMPLETED", "", 1, submitted[i], starts[i], ends[i], self.backend, worker,
                False, None, tags,
            )
            for i in range(count)
        ]


    def writes(self) -> list[TaskRunWrite]:
        """The runs this row holds as one write each (for a store that keeps a row per run)."""
        return [
            TaskRunWrite(
                r.id, r.flow_run_id, r.task, r.name, r.state, r.state_type, "", 1, r.submitted, r.start,
                r.end, r.backend, self.worker_host, self.worker_pid, self.worker_thread, self.worker_address,
                False, None, self.tags,
            )
            for r in self.expand()
        ]


def encode_block(
    *,
    flow_run_id: str | None,
    task: str,
    id_prefix: str,
    backend: str | None,
    worker: Any,
    tags: str | None,
    numbers: Sequence[int],
    names: Sequence[int],
    submitted: Sequence[float] | float,
    starts: Sequence[float],
    ends: Sequence[float],
) -> TaskRunBlockWrite:
    """One :class:`TaskRunBlockWrite` for runs given as columns (``worker``: a
    :class:`flowcore.events.Worker` or None). Ranges (consecutive numbers, one
    submission time, runs back to back) are stored as NULL columns.

    The writer calls this for every run it stores in a block, so each column is read
    as few times as it can be: a column equal to one already encoded (names numbered
    like the ids, submissions at the starts) reuses its text, and the range checks
    look at the first runs before they compare whole columns."""
    count = len(ends)
    starts = starts if type(starts) is list else list(starts)
    ends = ends if type(ends) is list else list(ends)
    # runs one after another, in time order (a map's batch): the first start is the
    # earliest and the last end the latest, seen without a min() and a max() pass
    in_a_row = count == 1 or (starts[1] == ends[0] and starts[1:] == ends[:-1])
    if in_a_row and starts[0] <= ends[0] and ends == sorted(ends):
        time0, end_time = starts[0], ends[-1]
    else:
        time0, end_time = min(starts), max(ends)
    first, name_first = numbers[0], names[0]
    numbers_text = names_text = None
    number_steps: list[int] | None = None
    if not _consecutive(numbers):
        number_steps = [n - first for n in numbers]
        numbers_text = _ints(number_steps)
    if not _consecutive(names):
        name_steps = [n - name_first for n in names]
        names_text = numbers_text if name_steps == number_steps else _ints(name_steps)
    back_to_back = in_a_row and starts[0] == time0
    starts_text = None if back_to_back else _offsets(starts, time0)
    submitted_time: float | None = None
    submitted_text: str | None = None
    if isinstance(submitted, float | int):
        submitted_time = float(submitted)
    else:
        if type(submitted) is not list:
            submitted = list(submitted)
        once = submitted[0]
        if submitted[-1] == once and submitted.count(once) == count:
            submitted_time = float(once)
        elif starts_text is not None and (submitted is starts or submitted == starts):
            submitted_text = starts_text
        else:
            submitted_text = _offsets(submitted, time0)
    return TaskRunBlockWrite(
        flow_run_id, task, id_prefix, backend,
        getattr(worker, "host", None), getattr(worker, "pid", None), getattr(worker, "thread", None),
        getattr(worker, "address", None), tags, count, first, numbers_text, name_first, names_text,
        time0, end_time, submitted_time, submitted_text, starts_text, _offsets(ends, time0),
    )


def _consecutive(numbers: Sequence[int]) -> bool:
    if isinstance(numbers, range):
        return numbers.step == 1
    first = numbers[0]
    count = len(numbers)
    return numbers[-1] - first == count - 1 and (count < 2 or numbers[1] == first + 1) and (
        list(numbers) == list(range(first, first + count))
    )


def _ints(values: Sequence[int]) -> str:
    """``values`` as a JSON array (``[1,2,3]``), formatted in one C call: on a big map
    this runs for every run, and joining ``str`` of each costs twice as much."""
    if not values:
        return "[]"
    return ("[" + "%d," * (len(values) - 1) + "%d]") % tuple(values)


def _offsets(times: Sequence[float], time0: float) -> str:
    """Microseconds from ``time0`` to each of ``times``, rounded to the nearest (half
    up, also for times before ``time0``), as a JSON array. ``math.floor`` of a float
    costs a third of ``int()`` of it, and this runs for every run of a block."""
    floor = math.floor
    return _ints([floor((t - time0) * 1e6 + 0.5) for t in times])


@dataclass(frozen=True, slots=True)
class LogWrite:
    """A log record to append."""

    flow_run_id: str | None
    task_run_id: str | None
    timestamp: float
    level: int
    level_name: str
    logger: str
    message: str
    task_name: str | None = None
    task_run_name: str | None = None


@dataclass(slots=True)
class PendingMapWrite:
    """The runs of one ``.map`` not finished yet, as one row: runs ``first_number`` ..
    ``first_number + count - 1`` (names from ``name_first``), of which ``done`` are
    stored elsewhere (finished) and those in ``running`` execute now. Written when a map
    outlives the writer's hold; ``done`` and ``running`` are updated as its runs start
    and finish, and the row goes when ``done == count``."""

    key: str  # f"{id_prefix}-{first_number:x}": the row's id
    flow_run_id: str | None
    task: str
    id_prefix: str
    first_number: int
    name_first: int
    count: int
    done: int
    submitted_time: float
    backend: str | None
    tags: str | None
    #: JSON ``[[position, start, host, pid, thread, address], ...]``: the runs of the map
    #: executing now (position: from ``first_number``); the others not ``done`` are pending
    running: str | None = None


@dataclass(slots=True)
class HistoryBatch:
    """Everything the writer hands a store in one transaction, in this order: flow
    runs, task runs, logs, then ``heartbeat`` (time) for the flow runs in
    ``heartbeat_ids``.

    ``task_runs`` are runs the writer has not written before (a store may insert them
    without looking for an existing row, but must not fail if there is one);
    ``task_run_updates`` are runs it wrote before, pending or running then.
    """

    flow_runs: list[FlowRunWrite] = field(default_factory=list)
    task_runs: list[TaskRunWrite] = field(default_factory=list)
    logs: list[LogWrite] = field(default_factory=list)
    heartbeat: float | None = None
    heartbeat_ids: list[str] = field(default_factory=list)
    task_run_updates: list[TaskRunWrite] = field(default_factory=list)
    #: runs stored as blocks (see TaskRunBlockWrite)
    task_run_blocks: list[TaskRunBlockWrite] = field(default_factory=list)
    #: maps' runs not finished yet: new pending rows, and changes to written ones
    pending_maps: list[PendingMapWrite] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.flow_runs or self.task_runs or self.task_run_updates or self.logs or self.heartbeat_ids
            or self.task_run_blocks or self.pending_maps
        )

    def size(self) -> int:
        return (
            len(self.flow_runs) + len(self.task_runs) + len(self.task_run_updates) + len(self.logs)
            + sum(block.count for block in self.task_run_blocks)
        )


# -- helpers -------------------------------------------------------------------------


def iso_time(timestamp: float | None) -> str | None:
    """``timestamp`` as ISO 8601 in UTC (``2026-12-03T00:05:14.123456+00:00``)."""
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


def _round(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, 6)


__all__ = [
    "FINAL_STATE_TYPES",
    "FlowRunRecord",
    "FlowRunWrite",
    "HistoryBatch",
    "LogRecord",
    "LogWrite",
    "PendingMapWrite",
    "StateRecord",
    "TaskRunBlockWrite",
    "TaskRunRecord",
    "TaskRunWrite",
    "WorkerRecord",
    "encode_block",
    "iso_time",
]
