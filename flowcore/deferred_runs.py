"""Task runs of a flow run, reported late and in bulk to observers that accept it.

Every run of ``Task.submit`` (and of a coalesced batch) reports SUBMITTED, STARTED and
FINISHED through the run-event stream. Made and published one by one, those events
cost more than a tiny run on the threads backend, in the thread that ran it. When
every ``flowcore_run_events`` observer is marked with :func:`accepts_deferred_runs`
(the run history is) and no per-run hook is implemented (``Registry.defers_runs``),
a submitted run (of a flow run, or of a ``use_backend`` block) is reported this way
instead:

* at submission its call is only noted (``dispatch.new_future`` stores it in a dict; no
  event);
* when it ends (its hooks have run), ``report_final_state`` appends ``(call, state,
  worker, backend)`` to the ending thread's buffer (:func:`ended`) and publishes
  nothing;
* when the buffer is reported, each run that ended plainly (``Completed`` after one
  attempt, with a start time, no kept result, named ``<task>-<n>`` by
  ``Task.make_call``) or was a cache hit (``Cached``, named so) goes into one
  :class:`~flowcore.events.RunColumns` batch per task, flow run (or none), backend and
  worker (a hit's state in its ``states``): SUBMITTED, STARTED and FINISHED of each run, or
  STARTED and FINISHED when its SUBMITTED was reported earlier. Every other run
  (failed, retried, named by a template) is published with the rest of them, in one
  report, its SUBMITTED first if it was still only noted.

A buffer is reported when it holds :data:`MAX_RUNS` runs and at :func:`flush`, which
reports every thread's buffer (and waits for a report another thread is making), then
the SUBMITTED of runs noted at least ``min_age`` seconds ago (all of them, or those of
one flow run). A flow run calls it before it reports its own end; an accepting
observer promises to call it about every second while flow runs are running or runs
are deferred (:func:`outstanding`; the history writer does at each of its drains,
every half second), so that a run that waits or runs long is seen as submitted (and,
once its body has started in this process, as running: ``TaskCall.started_at``) before
it ends, and runs that ended on a thread that went idle are reported soon. Its plugin
may :func:`set_waker`: called when runs become outstanding (the first run noted, or
the first run in a thread's empty buffer), so that an observer that sleeps while no
flow run runs wakes for the runs of a ``use_backend`` block. A buffer outlives its
thread (a flow run's own pool ends before the flow run reports) until a flush has
emptied it.

What an accepting observer gets: each run's events once and in order (SUBMITTED,
STARTED, FINISHED), a flow run's STARTED before and FINISHED after its runs' events;
but a run's SUBMITTED may come as late as its FINISHED, FINISHED comes up to a flush
after the run ended, and the FINISHED state of a plainly completed run is
``Completed`` without its value. A run outside any flow run (a ``use_backend``
block) is deferred the same way: reported at a flush, by the observer's next drain.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from flowcore import registry

if TYPE_CHECKING:
    from flowcore.calls import TaskCall
    from flowcore.events import Worker
    from flowcore.states import State

#: runs a thread's buffer holds before it reports them
MAX_RUNS = 1024
#: the attribute :func:`accepts_deferred_runs` sets on an observer's function
MARKER = "flowcore_accepts_deferred_runs"

F = TypeVar("F", bound=Callable[..., Any])


def accepts_deferred_runs(function: F) -> F:
    """Mark a ``flowcore_run_events`` implementation as accepting deferred reports (see
    the module docstring): its plugin calls :func:`flush` at least about once a second
    while runs are in flight."""
    setattr(function, MARKER, True)
    return function


#: run id -> call of runs noted at submission whose SUBMITTED is not reported yet
_noted: dict[str, TaskCall] = {}
#: run id -> call of runs whose SUBMITTED a flush reported, not their STARTED yet
_announced: dict[str, TaskCall] = {}
#: runs whose STARTED a flush reported (their body started here: ``TaskCall.started_at``)
_started: set[str] = set()
#: called when runs become outstanding (see set_waker)
_waker: Callable[[], None] | None = None
#: what says which runs started in other processes (see add_start_source)
_start_sources: list[Callable[[], Mapping[str, tuple[float, Worker | None]]]] = []
#: held while :func:`flush` reports noted runs: a run that ends meanwhile waits for it
_announcing = threading.Lock()


#: a run that ended: its call, final state, worker and backend name
_Ended = tuple["TaskCall", "State[Any]", "Worker | None", "str | None"]


class _Buffer:
    """One thread's ended runs. The owner appends (no lock: a deque); any thread may
    report them, holding ``reporting`` from taking them to publishing them, so that a
    flush returns only once runs taken by another thread are published too."""

    __slots__ = ("owner", "reporting", "runs")

    def __init__(self) -> None:
        self.runs: collections.deque[_Ended] = collections.deque()
        self.reporting = threading.Lock()
        #: the thread that appends (a pool's threads end with their pool: the buffer
        #: outlives its thread until a flush has reported it)
        self.owner = weakref.ref(threading.current_thread())


class _Group:
    """Taken runs of one task in one flow run (or none), on one backend and worker, of
    which none of the events (``announced`` 0), the SUBMITTED (1) or the SUBMITTED and
    STARTED (2) were reported already: one RunColumns batch."""

    __slots__ = ("announced", "backend", "ends", "flow_run_id", "names", "numbers", "starts", "states",
                 "submitted", "task", "worker")

    def __init__(self, task: Any, flow_run_id: str | None, backend: str | None, worker: Worker | None,
                 announced: int) -> None:
        self.task, self.flow_run_id, self.backend, self.worker = task, flow_run_id, backend, worker
        self.announced = announced
        self.numbers: list[int] = []
        self.names: list[int] = []
        self.submitted: list[float] = []
        self.starts: list[float] = []
        self.ends: list[float] = []
        #: position -> final state of the runs that did not complete plainly (cache hits)
        self.states: dict[int, State[Any]] = {}


_local = threading.local()
_buffers: set[_Buffer] = set()  # every thread's, for flush(); a dead thread's goes there
_buffers_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child reports its own runs, never its parent's."""
    global _local, _buffers, _buffers_lock, _noted, _announced, _started, _announcing
    _local, _buffers, _buffers_lock = threading.local(), set(), threading.Lock()
    _noted, _announced, _started, _announcing = {}, {}, set(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def set_waker(waker: Callable[[], None] | None) -> None:
    """Have ``waker()`` called (in the thread that defers a run, so it must be quick
    and never raise) when runs become outstanding while none were: the first run
    noted, or the first run in a thread's empty buffer. An accepting observer that
    sleeps while no flow run runs sets it to wake up and :func:`flush` until
    :func:`outstanding` is False. None: no waker."""
    global _waker
    _waker = waker


def add_start_source(source: Callable[[], Mapping[str, tuple[float, Worker | None]]]) -> None:
    """Have each flush ask ``source()`` which runs have started where this process does
    not see it (the workers of a process pool, through their journals): ``{run id:
    (start, worker)}``. A run whose SUBMITTED was reported, named there, is reported
    running. ``source`` must be quick and may raise (it is then ignored for that flush)."""
    if source not in _start_sources:
        _start_sources.append(source)


def outstanding() -> bool:
    """Whether some run is deferred and not reported yet: noted, announced but not
    started, or in a buffer."""
    if _noted or _announced or _announcing.locked():
        return True
    with _buffers_lock:
        buffers = list(_buffers)
    return any(buffer.runs or buffer.reporting.locked() for buffer in buffers)


def note(call: TaskCall) -> None:
    """A run was submitted: report its SUBMITTED later (with its end, or at a flush)."""
    if not _noted and _waker is not None:
        _noted[call.task_run_id] = call
        _waker()
        return
    _noted[call.task_run_id] = call


def pending() -> bool:
    """Whether some noted run's SUBMITTED is not reported yet, or a flush is reporting
    some (then :func:`take_noted` must be asked)."""
    return bool(_noted) or _announcing.locked()


def take_noted(call: TaskCall) -> bool:
    """The run ends: True if its SUBMITTED is still to be reported (it was noted and
    not flushed; the caller reports it now), else False once any flush that is
    reporting it has finished (so that its later events come after)."""
    if not _noted:
        if _announcing.locked():
            with _announcing:
                pass
        _forget_announced(call.task_run_id)
        return False
    if _noted.pop(call.task_run_id, None) is not None:
        return True
    if _announcing.locked():
        with _announcing:
            pass
    _forget_announced(call.task_run_id)
    return False


def mark_started(run_id: str) -> None:
    """The run's SUBMITTED and STARTED were reported already (a direct call reported
    running by :func:`flowcore.direct_runs.announce`): its end reports FINISHED only."""
    with _announcing:
        _started.add(run_id)


def _forget_announced(run_id: str) -> int:
    """The run, whose SUBMITTED was reported, ends: 2 if its STARTED was reported too
    (its end reports FINISHED only), else 1. Called once any flush reporting it is done."""
    if _announced:
        _announced.pop(run_id, None)
    if _started and run_id in _started:
        _started.discard(run_id)
        return 2
    return 1


def ended(call: TaskCall, state: State[Any], worker: Worker | None, backend: str | None) -> None:
    """Buffer a submitted run that just ended (its hooks were called): its events
    are published with the buffer (see the module docstring). Kept to a few steps:
    on the threads backend this runs for every run, in the thread that ran it."""
    try:
        buffer: _Buffer = _local.buffer
    except AttributeError:
        buffer = _local.buffer = _Buffer()
        with _buffers_lock:
            _buffers.add(buffer)
    runs = buffer.runs
    runs.append((call, state, worker, backend))
    count = len(runs)
    if count == 1 and _waker is not None:  # the buffer was empty: a flush is due
        _waker()
    elif count >= MAX_RUNS:
        _report(buffer)


def flush(flow_run_id: str | None = None, min_age: float = 0.0) -> None:
    """Report every thread's buffered runs, then the SUBMITTED of noted runs (those of
    ``flow_run_id``, or all) submitted at least ``min_age`` seconds ago."""
    with _buffers_lock:
        buffers = list(_buffers)
    for buffer in buffers:
        if buffer.runs or buffer.reporting.locked():  # taken by another thread: wait for it
            _report(buffer)
        owner = buffer.owner()
        if owner is None or not owner.is_alive():  # reported: nobody appends any more
            with _buffers_lock:
                _buffers.discard(buffer)
            if buffer.runs:  # appended just before its thread ended
                _report(buffer)
    if _noted or _announced:
        _announce(flow_run_id, min_age)


def _announce(flow_run_id: str | None, min_age: float) -> None:
    """Report the SUBMITTED of noted runs submitted at least ``min_age`` seconds ago,
    and the STARTED of announced runs whose body has started in this process (a long
    run reads Running, with its start, before it ends)."""
    from flowcore.events import EventKind, TaskRunEvent, submitted_event, thread_worker

    latest = time.time() - min_age
    with _announcing:
        due: list[TaskCall] = []
        for call in list(_noted.values()):  # submission order: the oldest first
            if call.submitted_at > latest:
                if flow_run_id is None:
                    break
                continue
            if flow_run_id is not None and call.flow_run_id != flow_run_id:
                continue
            if _noted.pop(call.task_run_id, None) is not None:  # not ended meanwhile
                due.append(call)
                _announced[call.task_run_id] = call
        events = [submitted_event(call, call.backend) for call in due]
        threads: dict[int | None, str] | None = None
        elsewhere: dict[str, tuple[float, Worker | None]] | None = None
        for run_id, call in list(_announced.items()):
            if flow_run_id is not None and call.flow_run_id != flow_run_id:
                continue
            if call.started_at:  # started in this process
                if threads is None:  # the thread that runs it: its worker, as its end will say
                    threads = {thread.ident: thread.name for thread in threading.enumerate()}
                name = threads.get(call.started_in)
                start, worker = call.started_at, thread_worker(name) if name else None
            elif _start_sources:  # in a worker process, perhaps
                if elsewhere is None:
                    elsewhere = started_elsewhere()
                found = elsewhere.get(run_id)
                if found is None:
                    continue
                start, worker = found
            else:
                continue
            del _announced[run_id]
            _started.add(run_id)
            events.append(TaskRunEvent(
                EventKind.STARTED, run_id, call.task_run_name, call.task.name, call.flow_run_id,
                start, call.backend, None, worker, call.task, call,
            ))
        if events:
            registry.publish(events)


def started_elsewhere() -> dict[str, tuple[float, Worker | None]]:
    """``{run id: (start, worker)}`` of the runs executing in other processes now, as
    the start sources say (see :func:`add_start_source`; a source that raises says
    nothing)."""
    found: dict[str, tuple[float, Worker | None]] = {}
    for source in list(_start_sources):
        try:
            found.update(source())
        except Exception:  # a journal being rewritten, a pool shutting down ...
            continue
    return found


def _report(buffer: _Buffer) -> None:
    """Publish the runs in ``buffer``: those that ended plainly as one RunColumns batch
    per group, the others one by one (their SUBMITTED first, when not reported yet)."""
    with buffer.reporting:
        _publish_taken(buffer.runs)


def _publish_taken(runs: collections.deque[_Ended]) -> None:
    taken: list[_Ended] = []
    try:
        while True:
            taken.append(runs.popleft())
    except IndexError:
        pass
    if not taken:
        return
    from flowcore.calls import run_id_prefix
    from flowcore.events import EventKind, RunColumns, column_events

    noted = _noted
    pop = noted.pop
    announcing = _announcing
    groups: dict[tuple[int, str | None, int, str | None, int], _Group] = {}
    others: list[tuple[_Ended, int]] = []
    # the last run's group and what identifies it, in locals: runs come in long stretches
    group: _Group | None = None
    g_task: Any = None
    g_flow_run_id: str | None = None
    g_worker: Worker | None = None
    g_backend: str | None = None
    g_announced = 0
    for item in taken:
        call, state, worker, backend = item
        # take_noted(call), inlined: this runs once per run. announced: 0 none of its
        # events reported yet, 1 its SUBMITTED, 2 its SUBMITTED and STARTED
        if noted and pop(call.task_run_id, None) is not None:
            announced = 0
        else:
            if announcing.locked():
                with announcing:
                    pass
            announced = _forget_announced(call.task_run_id) if _announced or _started else 1
        # plain (Completed after one attempt, no cache key) or kept beside the columns (a
        # cache hit, or a miss stored under a key); the most common case tested first
        if state.attempts == 1 and state.name == "Completed" and state.cache_key is None:
            kept = False
        elif state.name == "Cached" or state.cache_key is not None:
            kept = True
        else:
            others.append((item, announced))
            continue
        number, name_number = call.number, call.name_number
        started = state.started_at
        if (number | name_number) < 0 or started is None or state.result_location is not None:
            # numbers < 0: not made by Task.make_call, or named by a template
            others.append((item, announced))
            continue
        task, flow_run_id = call.task, call.flow_run_id
        if (
            g_task is not task or g_flow_run_id is not flow_run_id or g_worker is not worker
            or g_backend is not backend or g_announced != announced or group is None
        ):  # another group than the last run's (rare)
            key = (id(task), flow_run_id, id(worker), backend, announced)
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(task, flow_run_id, backend, worker, announced)
            g_task, g_flow_run_id, g_worker, g_backend, g_announced = task, flow_run_id, worker, backend, announced
            add_number, add_name, add_submitted = group.numbers.append, group.names.append, group.submitted.append
            add_start, add_end = group.starts.append, group.ends.append
        if kept:
            group.states[len(group.numbers)] = state
        add_number(number)
        add_name(name_number)
        add_submitted(call.submitted_at)
        add_start(started)
        add_end(state.finished_at or state.timestamp)
    prefix = run_id_prefix()
    kinds_after = (  # by what was reported already (see ``announced``)
        (EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED),
        (EventKind.STARTED, EventKind.FINISHED),
        (EventKind.FINISHED,),
    )
    for gathered in groups.values():
        registry.publish(column_events(RunColumns(
            kinds_after[gathered.announced], gathered.task, gathered.task.name, gathered.flow_run_id,
            gathered.backend, gathered.worker, prefix, gathered.numbers, gathered.names, gathered.submitted,
            gathered.starts, gathered.ends, gathered.states,
        )))
    if others:
        from flowcore.events import submitted_event, task_events

        events: list[Any] = []  # one report for all (each run's events in order)
        for (call, state, worker, backend), announced in others:
            if not announced:
                events.append(submitted_event(call, backend))
            ran = task_events(call, backend, state, worker)
            events.extend(ran if announced < 2 else ran[-1:])  # FINISHED only, once started
        registry.publish(events)
