"""The run-event stream: one record for each step of every flow run and task run.

::

    flow run:  STARTED (once per attempt) ............................ FINISHED (once)
    task run:       SUBMITTED (once) -> STARTED (at most once) -> FINISHED (once)

Every path a run can take (a direct call, ``.submit``, a coalesced batch, a column
``.map``, a run lost with its worker and sent again, Dask's native futures) reports
through these records, which observers receive in the process that submitted the run
through the hook ``flowcore_run_events`` (see :mod:`flowcore.hookspecs`).

Where they are made: SUBMITTED in the submitting process when the run is created;
STARTED and FINISHED where the outcome comes home. The times they carry are measured
where the run ran (``TaskRunEvent.timestamp`` of STARTED is when the body first
started, of FINISHED when it last ended), and ``worker`` names the process and thread
(or Dask worker) that ran it. A run that never started (cancelled before it was sent,
``NotRun`` after a failed upstream, refused by its backend) has no STARTED event.

This module holds records only: a worker process imports it to describe itself
(:func:`current_worker`) and nothing of the parent-side runtime comes with it.
"""

from __future__ import annotations

import enum
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from flowcore.calls import FlowRun, TaskCall
    from flowcore.states import State


class EventKind(enum.StrEnum):
    """Which step of a run an event reports."""

    SUBMITTED = "submitted"
    STARTED = "started"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class Worker:
    """Where a run executed: the host, process and thread, and for a Dask worker its
    address (None elsewhere)."""

    host: str
    pid: int
    thread: str
    address: str | None = None

    def __str__(self) -> str:
        where = f"{self.host}:{self.pid}/{self.thread}"
        return f"{self.address} ({where})" if self.address else where


_local = threading.local()


def _forget_after_fork() -> None:
    """A forked child describes itself anew (its pid differs): no record is inherited."""
    global _local
    _local = threading.local()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def current_worker() -> Worker:
    """The :class:`Worker` record of the calling thread (made once per thread and
    process: a forked child makes its own, without asking each call for the pid).
    An observed run on a pool thread asks for it once per run: one attribute read."""
    try:
        worker: Worker = _local.worker
    except AttributeError:
        import socket

        pid = os.getpid()
        address = None
        if "distributed" in sys.modules:  # only a Dask worker has imported it already
            try:
                from distributed import get_worker

                address = get_worker().address
            except Exception:  # not running inside a Dask worker
                address = None
        worker = Worker(socket.gethostname(), pid, threading.current_thread().name, address)
        _local.worker = worker
    return worker


def thread_worker(thread_name: str) -> Worker:
    """The :class:`Worker` record of another thread of this process, by its name (as
    :func:`current_worker` makes it there; no Dask address)."""
    import socket

    return Worker(socket.gethostname(), os.getpid(), thread_name)


@dataclass(slots=True)
class TaskRunEvent:
    """One step of one task run (read-only by contract: an observer must not change it;
    not frozen, because a frozen dataclass costs about five times as much to make, on
    the path of every observed run).

    ``backend`` is the name of the backend that ran it, or None for a direct call
    (``t(x)``), which runs in the caller. ``state`` is the final state on FINISHED
    (None otherwise); ``worker`` is set on STARTED and FINISHED of a run that started.
    ``task`` is the :class:`~flowcore.Task`; :attr:`call` the run's
    :class:`~flowcore.calls.TaskCall` (made on first access for the runs of a column
    map, so reading only the fields above costs nothing extra).
    """

    kind: EventKind
    task_run_id: str
    task_run_name: str
    task_name: str
    flow_run_id: str | None
    timestamp: float
    backend: str | None
    state: State[Any] | None = None
    worker: Worker | None = None
    task: Any = field(default=None, repr=False, compare=False)
    source: TaskCall | Callable[[], TaskCall] | None = field(default=None, repr=False, compare=False)

    @property
    def call(self) -> TaskCall | None:
        """The run's call (its arguments, names and ids), or None when unknown."""
        source = self.source
        if source is None or not callable(source):
            return source
        return source()


@dataclass(slots=True)
class FlowRunEvent:
    """One step of one flow run: STARTED before each attempt of its body, FINISHED
    once with its final state. ``flow`` is the :class:`~flowcore.Flow`."""

    kind: EventKind
    run: FlowRun
    timestamp: float
    attempt: int = 1
    state: State[Any] | None = None
    flow: Any = field(default=None, repr=False, compare=False)


RunEvent = TaskRunEvent | FlowRunEvent


def task_events(
    call: TaskCall, backend: str | None, state: State[Any], worker: Worker | None
) -> list[TaskRunEvent]:
    """STARTED (if the run started) and FINISHED of one run that just ended."""
    common = (call.task_run_id, call.task_run_name, call.task.name, call.flow_run_id)
    finished = TaskRunEvent(
        EventKind.FINISHED, *common, state.finished_at or state.timestamp, backend,
        state, worker, call.task, call,
    )
    if state.started_at is None:
        return [finished]
    started = TaskRunEvent(
        EventKind.STARTED, *common, state.started_at, backend, None, worker, call.task, call
    )
    return [started, finished]


def submitted_event(call: TaskCall, backend: str | None) -> TaskRunEvent:
    """SUBMITTED of one run."""
    return TaskRunEvent(
        EventKind.SUBMITTED, call.task_run_id, call.task_run_name, call.task.name,
        call.flow_run_id, call.submitted_at, backend, None, None, call.task, call,
    )


@dataclass(frozen=True, slots=True)
class RunColumns:
    """Runs of one task in one flow run reported together, as columns: for observers
    that read many runs (a history, a progress display) without one object per event.

    Every run reports the events in ``kinds``, in that order (the batch's event at
    position ``p`` is ``kinds[p % len(kinds)]`` of run ``p // len(kinds)``). Run ``i``
    has the id ``f"{id_prefix}-{numbers[i]:x}"`` and the name
    ``f"{task_name}-{name_numbers[i]}"``; it was submitted at ``submitted`` (one time
    for all, or one per run) and, for STARTED and FINISHED, ran on ``worker``. When
    ``kinds`` has FINISHED, ``starts[i]`` and ``ends[i]`` time its body, and its final
    state is ``states[i]`` when ``i`` is in ``states``, else ``Completed`` after one
    attempt (its value is not given here). Made on request, in the reader's thread.
    """

    kinds: tuple[EventKind, ...]
    task: Any
    task_name: str
    flow_run_id: str | None
    backend: str | None
    worker: Worker | None
    id_prefix: str
    numbers: Sequence[int]
    name_numbers: Sequence[int]
    submitted: Sequence[float] | float
    starts: Sequence[float] = ()
    ends: Sequence[float] = ()
    states: dict[int, State[Any]] = field(default_factory=dict)
    #: the runs belong to one ``.map`` (every batch of it names the same map, by the id
    #: of its first run): its SUBMITTED columns cover all of its runs; None otherwise
    map_id: str | None = None
    #: for a map's SUBMITTED columns: what says which of its runs execute now, as
    #: ``{position: (start, worker)}`` (start None: not known to the second); any
    #: thread may call it; None: nobody can tell
    executing: Callable[[], dict[int, tuple[float | None, Worker | None]]] | None = field(
        default=None, repr=False, compare=False
    )

    def __len__(self) -> int:
        return len(self.numbers)

    def run_id(self, position: int) -> str:
        return f"{self.id_prefix}-{self.numbers[position]:x}"

    def run_name(self, position: int) -> str:
        return f"{self.task_name}-{self.name_numbers[position]}"

    def submitted_at(self, position: int) -> float:
        submitted = self.submitted
        return submitted if isinstance(submitted, float) else submitted[position]


class LazyTaskEvents(Sequence[TaskRunEvent]):
    """A read-only sequence of task run events made on access.

    The runs of a column map report in blocks: an observer that only counts them, or
    ignores them, pays for one object per batch instead of one per run.
    ``make(position)`` builds the event at ``position`` (``0 <= position < length``).
    ``columns``, when given, makes the same runs as one :class:`RunColumns` record
    (see :meth:`columns`).
    """

    __slots__ = ("_columns", "_length", "_make")

    def __init__(
        self,
        length: int,
        make: Callable[[int], TaskRunEvent],
        columns: Callable[[], RunColumns] | None = None,
    ) -> None:
        self._length = length
        self._make = make
        self._columns = columns

    def columns(self) -> RunColumns | None:
        """The batch as columns (made now), or None when its producer offers none: then
        read the events one by one."""
        return self._columns() if self._columns is not None else None

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, position: int) -> TaskRunEvent: ...

    @overload
    def __getitem__(self, position: slice) -> list[TaskRunEvent]: ...

    def __getitem__(self, position: int | slice) -> TaskRunEvent | list[TaskRunEvent]:
        if isinstance(position, slice):
            return [self._make(i) for i in range(*position.indices(self._length))]
        if position < 0:
            position += self._length
        if not 0 <= position < self._length:
            raise IndexError(position)
        return self._make(position)

    def __iter__(self) -> Iterator[TaskRunEvent]:
        make = self._make
        for position in range(self._length):
            yield make(position)

    def __repr__(self) -> str:
        return f"<LazyTaskEvents of {self._length} events>"


def column_events(columns: RunColumns) -> LazyTaskEvents:
    """The events of the runs in ``columns``, made on access (and the columns
    themselves for readers that take them)."""
    kinds = columns.kinds
    width = len(kinds)

    def make(position: int) -> TaskRunEvent:
        index, which = divmod(position, width)
        kind = kinds[which]
        state = None
        worker = None
        if kind is EventKind.SUBMITTED:
            timestamp = columns.submitted_at(index)
        elif kind is EventKind.STARTED:
            timestamp, worker = columns.starts[index], columns.worker
        else:
            from flowcore.states import completed_run

            timestamp, worker = columns.ends[index], columns.worker
            state = columns.states.get(index) or completed_run(None, columns.starts[index], timestamp, 1)
        return TaskRunEvent(
            kind, columns.run_id(index), columns.run_name(index), columns.task_name, columns.flow_run_id,
            timestamp, columns.backend, state, worker, columns.task,
        )

    return LazyTaskEvents(width * len(columns), make, lambda: columns)


__all__ = [
    "EventKind",
    "FlowRunEvent",
    "LazyTaskEvents",
    "RunColumns",
    "RunEvent",
    "TaskRunEvent",
    "Worker",
    "column_events",
    "current_worker",
    "submitted_event",
    "task_events",
]
