"""Direct task calls, observed cheaply: runs recorded as columns, reported in batches.

A plain task (no retries, timeout, cache, hooks or print capture) called directly in a
flow body, ``t(x)``, costs about a microsecond when nothing observes the run-event
stream. When only ``flowcore_run_events`` observers are registered (a run history, a
progress display), such a call still runs on the short path: it takes its run numbers,
times its body and appends four numbers to a per-thread buffer. The buffer reports its
runs as one :class:`~flowcore.events.RunColumns` batch (SUBMITTED, STARTED and
FINISHED of each run; see :func:`flowcore.events.column_events`) when it holds
:data:`MAX_RUNS` runs, when its oldest run is :data:`MAX_AGE_S` old at the next call,
and when its flow run ends (:func:`flush`). A call whose body raises leaves the short
path: the buffer is flushed first, then the run is reported on its own with its
``Failed`` (or ``Crashed``) state, as the engine reports it.

The FINISHED state of a batched run is ``Completed`` without its value (the value went
to the caller; the buffer does not keep it alive).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

from flowcore import registry
from flowcore.calls import reserve_run_numbers, run_id_prefix
from flowcore.context import TaskRunContext, _task_run

if TYPE_CHECKING:
    from flowcore.calls import FlowRun
    from flowcore.events import Worker

#: runs a buffer holds before it reports them
MAX_RUNS = 1024
#: seconds a buffered run waits at most (checked at the next direct call of its thread)
MAX_AGE_S = 0.25


class _Runs:
    """The buffered runs of one task in one flow run, in one thread."""

    __slots__ = ("ends", "flow_run_id", "names", "numbers", "starts", "task")

    def __init__(self, task: Any, flow_run_id: str) -> None:
        self.task = task
        self.flow_run_id = flow_run_id
        self.numbers: list[int] = []
        self.names: list[int] = []
        self.starts: list[float] = []
        self.ends: list[float] = []


class _Buffer:
    """One thread's buffered runs, per (task, flow run)."""

    __slots__ = ("__weakref__", "count", "oldest", "runs", "worker")

    def __init__(self, worker: Worker) -> None:
        self.runs: dict[tuple[int, str], _Runs] = {}
        self.count = 0
        self.oldest = 0.0
        self.worker = worker


_local = threading.local()
_buffers: weakref.WeakSet[_Buffer] = weakref.WeakSet()  # every live thread's, for flush()
_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child reports its own runs, never its parent's buffered ones."""
    global _local, _buffers, _lock
    _local, _buffers, _lock = threading.local(), weakref.WeakSet(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _buffer() -> _Buffer:
    buffer: _Buffer | None = getattr(_local, "buffer", None)
    if buffer is None:
        from flowcore.events import current_worker

        buffer = _local.buffer = _Buffer(current_worker())
        with _lock:
            _buffers.add(buffer)
    return buffer


def call(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], flow_run: FlowRun) -> Any:
    """Run ``task`` directly in the calling thread and record the run in the buffer.
    Raises what the body raises, after reporting the failed run."""
    name_number = flow_run.run_numbers.reserve(task.name)
    number = reserve_run_numbers(1)
    token = _task_run.set(TaskRunContext(task, None, args, kwargs, flow_run, number, name_number))
    start = time.time()
    try:
        value = task.fn(*args, **kwargs)
    except BaseException as exc:
        _task_run.reset(token)
        _failed(task, args, kwargs, flow_run, number, name_number, start, exc)
        raise
    end = time.time()
    _task_run.reset(token)
    _record(task, flow_run, number, name_number, start, end)
    return value


class AwaitedRun(TaskRunContext, Coroutine[Any, Any, Any]):
    """One direct run of a coroutine task where the caller awaits (``await t(x)``,
    ``asyncio.gather(t(1), t(2))``): the coroutine the call returns, and the run's
    task run context, in one object.

    It adds neither an asyncio Task nor a coroutine frame of its own: the body's
    steps run inline, in the steps of whoever awaits it. From its first step to its
    end the run is the task run of the awaiting context (``get_run_context()``,
    ``get_run_logger()``, nested calls, callbacks and tasks created in the body), as
    with a coroutine that sets it around ``await body``; when it ends the previous
    value is set again. With thousands of runs awaited at once each costs the body's
    coroutine, its argument tuple, this object and its entry in the context.

    ``recorded``: the run is reported through this thread's buffer (see the module
    docstring): its numbers are reserved and its start timed when its first step
    begins, and it is recorded when its body returns, or reported ``Failed`` /
    ``Crashed`` when it raises (``sys.exit()`` becomes :class:`CrashedError`, as on
    every path). Otherwise (nothing observes runs) only ``sys.exit()`` is translated.
    A run thrown into or closed before its first step never started: nothing is
    reported; a run closed while suspended is not reported either. The body's
    coroutine is made at the call, so one never awaited warns under its own name.
    """

    __slots__ = ("_body", "_previous", "_recorded", "_start")

    def __init__(
        self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], flow_run: FlowRun | None,
        recorded: bool,
    ) -> None:
        TaskRunContext.__init__(self, task, None, args, kwargs, flow_run)
        self._body: Coroutine[Any, Any, Any] = task.fn(*args, **kwargs)
        self._recorded = recorded
        #: 0.0: not started; the body's start time while it runs; -1.0: ended
        self._start = 0.0
        #: the task run set before this one's first step, set again when it ends
        self._previous: TaskRunContext | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self  # type: ignore[return-value]  # an iterator with send/throw/close

    def send(self, value: Any = None) -> Any:
        """One step of the body (``value``: what its pending await receives)."""
        if self._start <= 0.0 and self._begin():
            return self._body.send(value)  # ended: the body says it cannot be resumed
        try:
            return self._body.send(value)
        except StopIteration:  # returned: the value travels in the StopIteration
            self._end()
            raise
        except BaseException as exc:
            self._fail(exc)
            raise

    __next__ = send

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
        """Raise an exception in the body at its pending await (cancellation, a timeout)."""
        body = self._body
        if self._start <= 0.0:  # not started (the body raises at once) or ended
            self._start = -1.0
            return body.throw(typ) if val is None and tb is None else body.throw(typ, val, tb)
        try:
            return body.throw(typ) if val is None and tb is None else body.throw(typ, val, tb)
        except StopIteration:
            self._end()
            raise
        except BaseException as exc:
            self._fail(exc)
            raise

    def close(self) -> None:
        """Close the body (its ``finally`` blocks run as the run's); not reported."""
        running = self._start > 0.0
        self._start = -1.0
        try:
            self._body.close()
        finally:
            if running:
                _task_run.set(self._previous)

    def _begin(self) -> bool:
        """Start the run at its first step (True: it has ended already)."""
        if self._start < 0.0:
            return True
        self._previous = _task_run.get()
        _task_run.set(self)
        if self._recorded:
            flow_run = self.flow_run
            assert flow_run is not None
            self._name_number = flow_run.run_numbers.reserve(self.task.name)
            self._number = reserve_run_numbers(1)
        self._start = time.time()
        return False

    def _end(self) -> None:
        end = time.time()
        start = self._start
        self._start = -1.0
        _task_run.set(self._previous)
        if self._recorded:
            flow_run = self.flow_run
            assert flow_run is not None
            _record(self.task, flow_run, self._number, self._name_number, start, end)

    def _fail(self, exc: BaseException) -> None:
        start = self._start
        self._start = -1.0
        _task_run.set(self._previous)
        if self._recorded:
            flow_run = self.flow_run
            assert flow_run is not None
            _failed(
                self.task, self.args, self.kwargs or {}, flow_run, self._number, self._name_number,
                start, exc,
            )
        elif isinstance(exc, SystemExit):
            from flowcore.engine import exit_message
            from flowcore.errors import CrashedError

            raise CrashedError(f"task {self.task.name!r}: {exit_message(exc)}") from exc


def call_async(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], flow_run: FlowRun) -> AwaitedRun:
    """:func:`call` for a coroutine task, where the caller awaits: the run as an
    awaitable (see :class:`AwaitedRun`). Runs awaited at once (``asyncio.gather``) are
    each recorded when they end, in this thread's buffer (one event loop runs them all
    in this thread)."""
    return AwaitedRun(task, args, kwargs, flow_run, True)


def _record(task: Any, flow_run: FlowRun, number: int, name_number: int, start: float, end: float) -> None:
    """Add a run that completed to this thread's buffer; report the buffer when full or old."""
    buffer = _buffer()
    key = (id(task), flow_run.run_id)
    runs = buffer.runs.get(key)
    if runs is None:
        runs = buffer.runs[key] = _Runs(task, flow_run.run_id)
    runs.numbers.append(number)
    runs.names.append(name_number)
    runs.starts.append(start)
    runs.ends.append(end)
    if not buffer.count:
        buffer.oldest = end
    buffer.count += 1
    if buffer.count >= MAX_RUNS or end - buffer.oldest >= MAX_AGE_S:
        _report(buffer)


def _failed(
    task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], flow_run: FlowRun, number: int,
    name_number: int, start: float, exc: BaseException,
) -> None:
    """A direct call's body raised ``exc``: report the run; raise CrashedError for
    ``sys.exit()`` (the caller re-raises anything else)."""
    if isinstance(exc, TypeError):
        task.check_arguments(args, kwargs)  # bad arguments: no run, a clear error
    _report_failure(task, args, kwargs, flow_run, number, name_number, start, exc)
    if isinstance(exc, SystemExit):  # as on the engine's path: the run crashes, the flow goes on
        from flowcore.engine import exit_message
        from flowcore.errors import CrashedError

        raise CrashedError(f"task {task.name!r}: {exit_message(exc)}") from exc


def flush(flow_run_id: str | None = None) -> None:
    """Report the buffered runs (of ``flow_run_id``, or all) of every thread now."""
    with _lock:
        buffers = list(_buffers)
    for buffer in buffers:
        if buffer.count:
            _report(buffer, flow_run_id)


def _report(buffer: _Buffer, flow_run_id: str | None = None) -> None:
    from flowcore.events import EventKind, RunColumns, column_events

    kinds = (EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED)
    prefix = run_id_prefix()
    batches = []
    for key, runs in list(buffer.runs.items()):
        if flow_run_id is not None and runs.flow_run_id != flow_run_id:
            continue
        del buffer.runs[key]
        buffer.count -= len(runs.numbers)
        batches.append(
            RunColumns(
                kinds, runs.task, runs.task.name, runs.flow_run_id, None, buffer.worker, prefix,
                runs.numbers, runs.names, runs.starts, runs.starts, runs.ends,
            )
        )
    if not buffer.runs:
        buffer.count = 0
    for columns in batches:
        registry.publish(column_events(columns))


def _report_failure(
    task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], flow_run: FlowRun, number: int,
    name_number: int, start: float, exc: BaseException,
) -> None:
    """Report a run whose body raised, as the engine would have (after the runs before
    it). KeyboardInterrupt and the like are not reported: they end the flow run."""
    from dataclasses import replace

    from flowcore.calls import TaskCall
    from flowcore.engine import exit_state, failure_state
    from flowcore.events import submitted_event
    from flowcore.reporting import report_final_state

    if isinstance(exc, SystemExit):
        state = exit_state(exc)
    elif isinstance(exc, Exception):
        state = failure_state(exc, False)
    else:
        return
    state = replace(state, started_at=start, finished_at=time.time(), attempts=1)
    buffer = _buffer()
    if buffer.count:
        _report(buffer)
    call_record = TaskCall(
        task, args, kwargs, f"{run_id_prefix()}-{number:x}", f"{task.name}-{name_number}", flow_run.run_id,
        flow_run.name, flow_run.flow_name, start, False,
    )
    registry.publish([submitted_event(call_record, None)])
    report_final_state(call_record, state, None, buffer.worker)


__all__ = ["MAX_AGE_S", "MAX_RUNS", "AwaitedRun", "call", "call_async", "flush"]
