"""Direct task calls, observed cheaply: runs recorded as columns, reported in batches.

A plain task (no retries, timeout, cache, hooks or print capture) called directly in a
flow body, ``t(x)``, costs about a microsecond when nothing observes the run-event
stream. When only ``flowcore_run_events`` observers are registered (a run history, a
progress display), such a call still runs on the short path: it takes its name number
(``t-0``, ``t-1`` in call order), times its body and appends four numbers to a
per-thread buffer. Its run number (the counter in its run id) is reserved when its
body first asks for its run (``get_run_context``), else, with those of the other runs
of the batch, in one block when the buffer reports. The buffer reports its runs as one :class:`~flowcore.events.RunColumns` batch (SUBMITTED, STARTED and
FINISHED of each run; see :func:`flowcore.events.column_events`) when it holds
:data:`MAX_RUNS` runs of one task, when its oldest run is :data:`MAX_AGE_S` old at the
next call, when its flow run ends (:func:`flush`), and, while its thread makes no more
calls (a flow body that sleeps or waits), when the run history's writer asks for the
runs older than that (``flush(older_than=...)``, from the writer's thread). A run is
four items added to its list in one step (atomic under the GIL); a report takes the
runs present when it starts and deletes that prefix of the list, so a run appended
meanwhile by the owning thread stays for the next report; reports are serialised. A call whose body raises leaves the short
path: the buffer is flushed first, then the run is reported on its own with its
``Failed`` (or ``Crashed``) state, as the engine reports it.

The FINISHED state of a batched run is ``Completed`` without its value (the value went
to the caller; the buffer does not keep it alive).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from types import FrameType
from typing import TYPE_CHECKING, Any

from flowcore import deferred_runs, registry
from flowcore.calls import number_of, reserve_run_numbers, run_id_prefix
from flowcore.context import TaskRunContext, _task_run, awaiting, awaiting_codes

if TYPE_CHECKING:
    from flowcore.calls import FlowRun
    from flowcore.events import Worker

#: runs a buffer holds before it reports them
MAX_RUNS = 1024
#: seconds a buffered run waits at most (checked at the next direct call of its thread)
MAX_AGE_S = 0.25
_MAX_ITEMS = 4 * MAX_RUNS  # a run is four items of its list

_now = time.time
_getframe = sys._getframe


class _Runs:
    """The buffered runs of one task in one flow run, in one thread."""

    __slots__ = ("flow_run_id", "rows", "task")

    def __init__(self, task: Any, flow_run_id: str) -> None:
        self.task = task
        self.flow_run_id = flow_run_id
        #: run number, name number, start and end of each run, four items a run (flat:
        #: the tuple a run is added from is recycled at once, no object is kept per
        #: run), in the order they ended; extended by the owning thread only, a prefix
        #: taken by a report
        self.rows: list[Any] = []


class _Buffer:
    """One thread's buffered runs, per (task, flow run). It outlives its thread (a flow
    run's pool threads end before the flow run reports) until a flush has emptied it."""

    __slots__ = ("last", "owner", "runs", "worker")

    def __init__(self, worker: Worker) -> None:
        self.runs: dict[tuple[int, str], _Runs] = {}
        #: the runs ``_record`` added to last (while still in ``runs``), else None
        self.last: _Runs | None = None
        self.worker = worker
        self.owner = weakref.ref(threading.current_thread())


_local = threading.local()
_buffers: set[_Buffer] = set()  # every thread's, for flush(); a dead thread's until emptied
_lock = threading.Lock()
#: held by a report while it takes and publishes runs (reports from several threads)
_reporting = threading.RLock()
#: (flow run id, id(task), name number) -> run number of the running direct calls
#: whose SUBMITTED and STARTED :func:`announce` reported: their end reports FINISHED only
_announced: dict[tuple[str, int, int], int] = {}
#: id of the frame of :func:`call_async` (or :func:`await_unobserved`) -> context of its
#: run, for the awaited runs in flight whose body asked for its run (see
#: _awaited_context): one context per run, wherever the body asks (its own context, or
#: a copy of it where the run is not set yet), dropped when the run ends
_materialized: dict[int, TaskRunContext] = {}
#: ids of the asyncio tasks that awaited runs at announce()'s last call
_awaiting_before: set[int] = set()


def _forget_after_fork() -> None:
    """A forked child reports its own runs, never its parent's buffered ones."""
    global _local, _buffers, _lock, _reporting, _announced, _materialized
    _local, _buffers, _lock, _reporting = threading.local(), set(), threading.Lock(), threading.RLock()
    _announced, _materialized = {}, {}


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
    name_number = flow_run.run_numbers.reserve(task.options.name)
    context = TaskRunContext(task, None, args, kwargs, flow_run, -1, name_number)
    token = _task_run.set(context)
    start = _now()
    try:
        value = task.fn(*args, **kwargs)
    except BaseException as exc:
        _task_run.reset(token)
        _failed(task, args, kwargs, flow_run, context._number, name_number, start, exc)
        raise
    end = _now()
    _task_run.reset(token)
    try:
        buffer: _Buffer = _local.buffer
    except AttributeError:  # this thread's first
        buffer = _buffer()
    _record(buffer, task, flow_run, context._number, name_number, start, end)
    return value


_CALL_CODE = call.__code__  # how announce() finds running direct calls on a stack


async def call_async(
    task: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None, flow_run: FlowRun, loop: Any = None
) -> Any:
    """:func:`call` for a coroutine task, where the caller awaits: its body is awaited
    here, inline in the awaiting asyncio task (no task of its own). Runs awaited at
    once (``asyncio.gather``) are each recorded when they end, in this thread's buffer
    (one event loop runs them all in this thread). ``kwargs``: None for none;
    ``loop``: the running loop, when the caller knows it (else it is looked up).

    The run is not set in the task-run context variable when it starts: code on its
    body's stack finds it there the first time it asks (``get_run_context``,
    ``get_run_logger``: :func:`flowcore.context.current_task_run` walks up to this
    coroutine's frame and makes its context from the locals below), and it is then
    set in the asyncio task's context (one context per run, however often and wherever
    its body asks: see ``_awaited_context``). A task or a thread (``asyncio.to_thread``) the
    body starts before it asked gets the run set in its context by flowcore's loops
    (:mod:`flowcore.coroutines`), which look at the stack only in the asyncio tasks
    that :data:`flowcore.context.awaiting` names. Each of thousands of runs in flight
    so costs this coroutine and its argument tuple beside the body's own coroutine: no
    context object, and none of the two objects that setting a context variable makes
    (every live object makes the cyclic GC run more often and take longer). A context set
    around the call (a task body that asked for its run) is hidden from the body and
    set again after; the run's number is the one its context reserved, if the body
    asked for its id."""
    name_number = flow_run.run_numbers.reserve(task.options.name)
    running = _enter(loop)
    outer = _task_run.get()
    if outer is not None:  # the body must not take an enclosing run for its own
        _task_run.set(None)
    start = _now()
    try:
        value = await (task.fn(*args, **kwargs) if kwargs else task.fn(*args))
    except BaseException as exc:
        _leave(running)
        asked = _restore(outer)
        _failed(task, args, kwargs or {}, flow_run, -1 if asked is None else number_of(asked), name_number, start, exc)
        raise
    end = _now()
    depth = awaiting.get(running, 1) - 1  # _leave(running), inlined
    if depth:
        awaiting[running] = depth
    else:
        awaiting.pop(running, None)
    if outer is not None or _task_run.get() is not None:
        _task_run.set(outer)
    # this run's context, if its body asked for it (in its own context or in a copy)
    asked = _materialized.pop(id(_getframe()), None) if _materialized else None
    try:
        buffer = _local.buffer
    except AttributeError:  # this thread's first
        buffer = _buffer()
    _record(buffer, task, flow_run, -1 if asked is None else number_of(asked), name_number, start, end)
    return value


async def await_unobserved(
    task: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None, flow_run: FlowRun | None, loop: Any = None
) -> Any:
    """:func:`call_async` when nothing observes runs: nothing is recorded; a body's
    ``sys.exit()`` ends the run as :class:`~flowcore.errors.CrashedError`. Its run is
    found on the stack when asked for, as :func:`call_async`'s is."""
    running = _enter(loop)
    outer = _task_run.get()
    if outer is not None:
        _task_run.set(None)
    try:
        value = await (task.fn(*args, **kwargs) if kwargs else task.fn(*args))
    except SystemExit as exc:
        _leave(running)
        _restore(outer)
        from flowcore.engine import exit_message
        from flowcore.errors import CrashedError

        raise CrashedError(f"task {task.name!r}: {exit_message(exc)}") from exc
    except BaseException:
        _leave(running)
        _restore(outer)
        raise
    _leave(running)
    if outer is not None or _task_run.get() is not None:
        _task_run.set(outer)
    if _materialized:
        _materialized.pop(id(_getframe()), None)
    return value


_current_task: Any = None  # asyncio.current_task, looked up by the first awaited run


def _enter(loop: Any) -> Any:
    """An awaited run starts in the asyncio task running now (of ``loop``, or of the
    running loop; None when no loop runs: a coroutine driven by hand): count it in
    :data:`~flowcore.context.awaiting`; returns that task."""
    global _current_task
    if _current_task is None:
        from asyncio import current_task

        _current_task = current_task
    try:
        running = _current_task(loop)
    except RuntimeError:  # no running loop
        running = None
    awaiting[running] = awaiting.get(running, 0) + 1
    return running


def _leave(running: Any) -> None:
    """An awaited run that :func:`_enter` counted ends."""
    depth = awaiting.get(running, 1) - 1
    if depth:
        awaiting[running] = depth
    else:
        awaiting.pop(running, None)


def _restore(outer: TaskRunContext | None) -> TaskRunContext | None:
    """An awaited run ends (its body raised): set the context variable back to
    ``outer`` (what it was around the call); returns the run's own context if its body
    asked for it (in its own context or in a copy), and forgets it."""
    if outer is not None or _task_run.get() is not None:
        _task_run.set(outer)
    # the frame of the call_async / await_unobserved that called this one
    return _materialized.pop(id(_getframe(1)), None) if _materialized else None


def _awaited_context(frame: FrameType) -> TaskRunContext:
    """The context of the run that ``frame`` (of :func:`call_async`) awaits, made from its
    locals the first time its body asks (wherever it asks: its own context, a copy of
    it, a task or thread started before), the same one after: with the run number
    :func:`announce` gave it if it was announced already, and kept in ``_materialized``
    until the run ends, so that an announcement after takes the number the body may
    have taken, and its end records it."""
    key = id(frame)
    with _reporting:
        context = _materialized.get(key)
        if context is None:
            local = frame.f_locals
            task, flow_run, name_number = local["task"], local["flow_run"], local["name_number"]
            context = TaskRunContext(task, None, local["args"], local["kwargs"], flow_run, -1, name_number)
            number = _announced.get((flow_run.run_id, id(task), name_number))
            if number is not None:
                context._number = number
            _materialized[key] = context
    return context


def _unobserved_context(frame: FrameType) -> TaskRunContext:
    """The context of the run that ``frame`` (of :func:`await_unobserved`) awaits: made
    the first time its body asks, the same one after (kept in ``_materialized`` until
    the run ends)."""
    key = id(frame)
    context = _materialized.get(key)  # only the loop's thread runs this frame's body
    if context is None:
        local = frame.f_locals
        context = _materialized[key] = TaskRunContext(
            local["task"], None, local["args"], local["kwargs"], local["flow_run"]
        )
    return context


_CALL_ASYNC_CODE = call_async.__code__  # how announce() finds awaited runs in flight
awaiting_codes[_CALL_ASYNC_CODE] = _awaited_context
awaiting_codes[await_unobserved.__code__] = _unobserved_context


def _record(
    buffer: _Buffer, task: Any, flow_run: FlowRun, number: int, name_number: int, start: float, end: float
) -> None:
    """Add a run that completed to ``buffer`` (this thread's); report the buffer when
    full or old. ``number``: -1 when the run has none yet (the report reserves its runs'
    in one block)."""
    runs = buffer.last
    run_id = flow_run.run_id
    if runs is None or runs.task is not task or runs.flow_run_id != run_id:
        key = (id(task), run_id)
        runs = buffer.runs.get(key)
        if runs is None:
            runs = buffer.runs[key] = _Runs(task, run_id)
        buffer.last = runs
    rows = runs.rows
    rows += (number, name_number, start, end)  # one step (atomic under the GIL)
    if len(rows) >= _MAX_ITEMS or end - rows[3] >= MAX_AGE_S:
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


def flush(flow_run_id: str | None = None, *, older_than: float | None = None) -> None:
    """Report the buffered runs of every thread now: those of ``flow_run_id`` (its
    flow run ends: its entries are dropped too), or all; ``older_than``: only the
    buffers of a task whose oldest run ended at least that many seconds ago (the
    history writer's call for threads that make no more calls)."""
    with _lock:
        buffers = list(_buffers)
    for buffer in buffers:
        _report(buffer, flow_run_id, older_than)
        owner = buffer.owner()
        if (owner is None or not owner.is_alive()) and not any(runs.rows for runs in buffer.runs.values()):
            with _lock:  # its thread ended and nothing is left in it: nobody appends any more
                _buffers.discard(buffer)


def _report(buffer: _Buffer, flow_run_id: str | None = None, older_than: float | None = None) -> None:
    from flowcore.events import EventKind, column_events

    kinds = (EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED)
    cutoff = None if older_than is None else _now() - older_than
    with _reporting:  # one report at a time: each run is taken once, batches in order
        batches = []
        for key, runs in list(buffer.runs.items()):
            if flow_run_id is not None:
                if runs.flow_run_id != flow_run_id:
                    continue
                del buffer.runs[key]  # its flow run ends: no more runs come for it
                if buffer.last is runs:
                    buffer.last = None
            rows = runs.rows
            count = len(rows)  # the runs present now (the owner may add more meanwhile)
            if not count or (cutoff is not None and rows[3] > cutoff):
                continue
            taken = rows[:count]
            del rows[:count]
            numbers, names, starts, ends = taken[0::4], taken[1::4], taken[2::4], taken[3::4]
            if _announced:  # runs reported running by announce(): their end only
                task_id, run_id = id(runs.task), runs.flow_run_id
                ended = [
                    (position, number) for position, name in enumerate(names)
                    if (number := _announced.pop((run_id, task_id, name), -1)) >= 0
                ]
                if ended:
                    batches.append(_columns(
                        (EventKind.FINISHED,), runs, buffer.worker, [number for _, number in ended],
                        *([column[p] for p, _ in ended] for column in (names, starts, ends)),
                    ))
                    kept = sorted(set(range(len(names))) - {p for p, _ in ended})
                    numbers, names, starts, ends = ([column[p] for p in kept] for column in (numbers, names, starts, ends))
                if not names:
                    continue
            _number_runs(numbers)
            batches.append(_columns(kinds, runs, buffer.worker, numbers, names, starts, ends))
        for columns in batches:
            registry.publish(column_events(columns))


def _columns(
    kinds: tuple[Any, ...], runs: _Runs, worker: Worker, numbers: list[int], names: list[int],
    starts: list[float], ends: list[float],
) -> Any:
    from flowcore.events import RunColumns

    return RunColumns(
        kinds, runs.task, runs.task.name, runs.flow_run_id, None, worker, run_id_prefix(), numbers, names,
        starts, starts, ends,
    )


def announce(min_age: float) -> None:
    """Report the SUBMITTED and STARTED of the direct calls (of every thread) that
    have run for at least ``min_age`` seconds and are still running, once each: a live
    reader (the history, a dashboard) sees them Running, with their start and worker,
    before they end. The history writer calls it at each drain.

    It finds synchronous calls on the threads' stacks (``sys._current_frames``: frames
    of :func:`call` whose body has started and neither returned nor raised), and awaited
    runs (:func:`call_async`) in the coroutines of the asyncio tasks that await them
    (:data:`flowcore.context.awaiting`: a suspended coroutine is on no stack), so that a
    direct call pays nothing for it. Their end then reports FINISHED only, under the
    number given here (see ``_announced``); a body that asks for its id gets it too
    (an awaited run's context, made when its body first asks, takes it: ``_materialized``)."""
    from flowcore.events import EventKind, TaskRunEvent, thread_worker

    latest = _now() - min_age
    with _reporting:  # before the frames are read: a run that ends meanwhile waits to report
        # (thread ident, task, flow run, name number, start, its context or None)
        found: list[tuple[int | None, Any, FlowRun, int, float, TaskRunContext | None]] = []
        for ident, frame in sys._current_frames().items():
            current: Any = frame
            while current is not None:
                if current.f_code is _CALL_CODE:
                    local = current.f_locals
                    start = local.get("start")
                    if start is not None and start <= latest and "end" not in local and "exc" not in local:
                        context = local["context"]
                        found.append((ident, context.task, context.flow_run, context._name_number, start, context))
                current = current.f_back
        if awaiting:
            found.extend(_awaited_in_flight(latest))
        if not found:
            return
        threads = {thread.ident: thread.name for thread in threading.enumerate()}
        events: list[Any] = []
        for thread_ident, task, flow_run, name_number, start, context in found:
            key = (flow_run.run_id, id(task), name_number)
            if key in _announced:
                continue
            number = _announced[key] = reserve_run_numbers(1) if context is None else number_of(context)
            worker = None if thread_ident is None else thread_worker(threads.get(thread_ident, str(thread_ident)))
            common = (f"{run_id_prefix()}-{number:x}", f"{task.name}-{name_number}", task.name, flow_run.run_id)
            events.append(TaskRunEvent(EventKind.SUBMITTED, *common, start, None, None, None, task, None))
            events.append(TaskRunEvent(EventKind.STARTED, *common, start, None, None, worker, task, None))
        registry.publish(events)


def _awaited_in_flight(
    latest: float,
) -> list[tuple[int | None, Any, FlowRun, int, float, TaskRunContext | None]]:
    """The awaited runs (:func:`call_async`) that started at or before ``latest`` and
    have not ended, found along the awaited coroutines of the asyncio tasks that
    :data:`~flowcore.context.awaiting` names and named at the call before too (a run
    that lasts less than the time between two calls is never looked at: with 10,000
    short runs in flight, each call costs a few C-level set operations, not a walk of
    each; a task running at this moment shows no awaited coroutine: its runs are found
    at a later call)."""
    global _awaiting_before
    found: list[tuple[int | None, Any, FlowRun, int, float, TaskRunContext | None]] = []
    tasks = list(awaiting)
    by_id = dict(zip(map(id, tasks), tasks, strict=True))
    before, _awaiting_before = _awaiting_before, set(by_id)
    for key in by_id.keys() & before:
        running = by_id[key]
        get_coro = getattr(running, "get_coro", None)
        if get_coro is None:
            continue
        try:
            ident = running.get_loop()._thread_id
        except AttributeError:
            ident = None
        coroutine = get_coro()
        while coroutine is not None:
            frame = getattr(coroutine, "cr_frame", None)
            if frame is None:
                break
            if frame.f_code is _CALL_ASYNC_CODE:
                local = frame.f_locals
                start = local.get("start")
                if start is not None and start <= latest and "end" not in local and "exc" not in local:
                    found.append((
                        ident, local["task"], local["flow_run"], local["name_number"], start,
                        _materialized.get(id(frame)),  # its context, if its body asked
                    ))
            coroutine = getattr(coroutine, "cr_await", None)
    return found


def _number_runs(numbers: list[int]) -> None:
    """Give the runs of ``numbers`` that have no run number yet (-1) theirs, from one
    reserved block (consecutive when none asked for its id during its run)."""
    missing = numbers.count(-1)
    if not missing:
        return
    first = reserve_run_numbers(missing)
    if missing == len(numbers):
        numbers[:] = range(first, first + missing)
        return
    for position, number in enumerate(numbers):
        if number < 0:
            numbers[position] = first
            first += 1


def cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` cancels an asyncio task (``asyncio.CancelledError``): a run that
    it stops while it runs ends ``Cancelled``."""
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def _report_failure(
    task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], flow_run: FlowRun, number: int,
    name_number: int, start: float, exc: BaseException,
) -> None:
    """Report a run whose body raised, as the engine would have (after the runs before
    it); one cancelled while it ran (``asyncio.CancelledError``) ends ``Cancelled``.
    KeyboardInterrupt and the like end the flow run: such a run is reported (``Crashed``)
    only if it was reported running already (:func:`announce`), so that it does not
    read Running for ever."""
    from dataclasses import replace

    from flowcore.calls import TaskCall
    from flowcore.engine import exit_state, failure_state
    from flowcore.events import submitted_event
    from flowcore.reporting import report_final_state

    if isinstance(exc, SystemExit):
        state = exit_state(exc)
    elif isinstance(exc, Exception):
        state = failure_state(exc, False)
    elif cancelled(exc):  # an awaited run cancelled while it ran (task.cancel(), wait_for)
        from flowcore.states import Cancelled

        state = Cancelled("the task run was cancelled while it ran")
    elif _announced and (flow_run.run_id, id(task), name_number) in _announced:
        from flowcore.states import Crashed

        state = Crashed(f"the task run was interrupted by {type(exc).__name__} while it ran")
    else:
        return
    state = replace(state, started_at=start, finished_at=time.time(), attempts=1)
    buffer = _buffer()
    with _reporting:
        _report(buffer)  # the runs before it first
        # reported running by announce(): its number, and its end only
        announced = _announced.pop((flow_run.run_id, id(task), name_number), -1) if _announced else -1
        if announced >= 0:
            number = announced
        elif number < 0:
            number = reserve_run_numbers(1)
        call_record = TaskCall(
            task, args, kwargs, f"{run_id_prefix()}-{number:x}", f"{task.name}-{name_number}", flow_run.run_id,
            flow_run.name, flow_run.flow_name, start, False,
        )
        if announced < 0:
            registry.publish([submitted_event(call_record, None)])
        else:
            deferred_runs.mark_started(call_record.task_run_id)
    report_final_state(call_record, state, None, buffer.worker)


__all__ = ["MAX_AGE_S", "MAX_RUNS", "announce", "await_unobserved", "call", "call_async", "flush"]
