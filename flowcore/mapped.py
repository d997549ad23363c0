"""Maps on process backends, kept in columns: the cost of a tiny run paid in C.

``t.map(xs)`` of many runs on a process or cluster backend is the place where the
per-run bookkeeping of a separate call, future and state would cost many times the
work itself. A :class:`MapBlock` instead holds every run of one map call together:

* the runs take consecutive run numbers and name numbers (one reservation each), so
  ids, names and the worker journal entries are computed, not stored;
* a batch travels as slices of the argument columns (:class:`~flowcore.mapping.RowLayout`)
  and comes back as a column of values, a column of finish times and full states only
  for the runs that did not simply complete in one attempt;
* results land in the block with slice assignments, and the futures handed to the
  caller are :class:`MappedFuture` views (a block and an index) that build a
  ``State`` only when asked.

Semantics are those of every other run: results, exceptions, retries and log records
per run; ``Running`` while a batch holding the run is out; a worker crash is pinned on
the run it was executing (the journal records the batch as a range of run ids) and the
runs of a lost batch are settled one by one by the ordinary recovery of
:mod:`flowcore.dispatch`. A batch travels to the engine's rows entry point
(:func:`flowcore.engine.run_rows`). Hooks, observers, per-run timeouts and run-name
templates work inside blocks; a task that names its runs with a callable, or a map
whose arguments hold futures, takes the per-run path instead.
"""

from __future__ import annotations

import functools
import gc
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from flowcore import registry, states
from flowcore.calls import UNSCOPED_RUN_NUMBERS, TaskCall, reserve_run_numbers, run_id_prefix
from flowcore.dispatch import BatchSender, dispatcher_of, refused
from flowcore.engine import BatchResult, run_name_of, run_rows
from flowcore.futures import RunFuture, TaskFuture, call_back
from flowcore.log_relay import replay as replay_logs
from flowcore.states import State, StateType, completed_run
from flowcore.timeouts import wake_for_deadlines

if TYPE_CHECKING:

    from flowcore.backend import Backend
    from flowcore.context import RunScope
    from flowcore.events import EventKind, RunColumns, TaskRunEvent, Worker
    from flowcore.mapping import MapArguments
    from flowcore.tasks import Task

R = TypeVar("R")

#: the most runs of an async task that one batch awaits at once in a worker thread
_MAX_AWAITED_BATCH = 1024

_PENDING, _COMPLETED, _ENDED = 0, 1, 2  # per-run status; _ENDED: any other final state

def eligible(task: Task[..., Any]) -> bool:
    """Whether the runs of ``task`` can be kept in columns: nothing in the parent needs
    to see a run on its own before it is final. Observers do not count: the block
    reports its runs' events in batches (:class:`~flowcore.events.LazyTaskEvents`);
    nor do timeouts: each run's attempts are timed in the worker, and on a backend
    with ``hard_timeouts`` the parent watches every run of a batch while it is out."""
    return not callable(task.options.task_run_name)  # called at submission, in the submitter's context


class MapBlock(BatchSender[tuple[int, int, frozenset[int]]]):
    """All runs of one ``map`` call on a process or cluster backend (thread-safe).

    Tracked by its scope as one item until every run has its final state. It is the
    dispatcher's column-map mode: a :class:`~flowcore.dispatch.BatchSender` whose units
    are slices ``(start, stop, skipped positions)`` of its runs.
    """

    def __init__(
        self,
        task: Task[..., Any],
        scope: RunScope,
        backend: Backend,
        arguments: MapArguments,
        log_prints: bool,
    ) -> None:
        super().__init__(backend)
        count = arguments.count
        self.task = task
        self.scope = scope
        self.backend = backend
        self.arguments = arguments
        flow_run = scope.flow_run
        self.submitted_at = time.time()
        self.prefix = run_id_prefix()
        self.first_number = reserve_run_numbers(count)
        numbers = flow_run.run_numbers if flow_run is not None else UNSCOPED_RUN_NUMBERS
        #: run i is named ``f"{task.name}-{first_name_number + i}"``
        self.first_name_number = numbers.reserve(task.name, count)
        # name_offset maps a run id number to its name number (for the workers); the
        # flow parameters' hash is there for cache policies that use it.
        name_offset = self.first_name_number - self.first_number
        parameters_key = None
        cache = task.options.cache
        if cache is not None and flow_run is not None and cache.policy.needs_flow_parameters:
            from flowcore.caching.keys import flow_parameters_key

            parameters_key = flow_parameters_key(flow_run)
        self.common: tuple[Any, ...] = (
            (flow_run.run_id, flow_run.name, flow_run.flow_name, log_prints, name_offset, parameters_key,
             flow_run, backend.name)
            if flow_run is not None
            else (None, None, None, log_prints, name_offset, None, None, backend.name)
        )
        self.count = count
        self.values: list[Any] = [None] * count
        self.ends: list[float] = [0.0] * count
        self.batch_starts: dict[int, float] = {}
        self.status = bytearray(count)
        #: full final states where a value column entry is not enough
        self.states: dict[int, State[Any]] = {}
        self.observed: set[int] = set()
        self.callbacks: dict[int, list[Callable[[TaskFuture[Any]], Any]]] = {}
        self.failed: list[int] = []
        self.remaining = count
        self.next_index = 0  # runs before it have been sent (or cancelled)
        self.cancelled: set[int] = set()  # cancelled one by one before being sent
        self.cancel_requested = False
        self.in_flight: dict[int, int] = {}  # start -> stop of each batch out
        #: runs execute in this process: no log capture, no journal
        self.in_process = backend.capabilities.in_process
        #: the runs of a batch await together on a worker thread's loop (see _await_rows):
        #: a batch takes as long as its slowest run, so it is sized by fair share, not
        #: by the time per run
        self.awaits_together = task.isasync and self.in_process
        #: the task has hooks: they run here for every run, before its state is seen
        self.hooked = bool(task.options.on_completion or task.options.on_failure or task.options.on_running)
        self.changed = threading.Condition(self.lock)
        #: each run's timeout, watched by the backend while its batch is out (None: not)
        self.deadline = (
            task.options.timeout_seconds if backend.capabilities.hard_timeouts else None
        )
        #: runs are named ``<task>-<n>`` (else by the task's template: no RunColumns)
        self.named_by_number = task.options.task_run_name is None
        if not self.named_by_number and count:
            self.run_name(0)  # a template that does not fit the arguments fails the map now

    # -- ids and calls --------------------------------------------------------
    def run_id(self, index: int) -> str:
        return f"{self.prefix}-{self.first_number + index:x}"

    def run_name(self, index: int) -> str:
        if self.task.options.task_run_name is None:
            return f"{self.task.name}-{self.first_name_number + index}"
        (args, kwargs), = self.arguments.layout(index, index + 1).rows()
        return run_name_of(self.task, self.first_name_number + index, args, kwargs)

    def call(self, index: int) -> TaskCall:
        """The run's call (built on demand: hooks, recovery, ``future.call``)."""
        (args, kwargs), = self.arguments.layout(index, index + 1).rows()
        flow_run_id, flow_run_name, flow_name, log_prints, _, parameters_key, flow_run, backend = self.common
        return TaskCall(
            self.task, args, kwargs, self.run_id(index), self.run_name(index), flow_run_id,
            flow_run_name, flow_name, self.submitted_at, log_prints, 0, parameters_key, flow_run, backend,
        )

    def futures(self) -> list[TaskFuture[Any]]:
        """One :class:`MappedFuture` per run, made with the cyclic collector paused:
        they all stay alive, so its passes over them while a 200,000-run map makes
        them would find nothing to free and double the time it takes."""
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return [MappedFuture(self, i) for i in range(self.count)]
        finally:
            if paused:
                gc.enable()

    # -- sending --------------------------------------------------------------
    def start(self) -> None:
        self.scope.track(self)
        if registry.observes_events():
            from flowcore.events import EventKind

            self._report(range(self.count), EventKind.SUBMITTED)
        self.fill()

    def take(self) -> tuple[int, int, frozenset[int]] | None:
        while self.next_index < self.count:
            start = self.next_index
            waiting = self.count - start
            if self.awaits_together:
                size = min(_MAX_AWAITED_BATCH, -(-waiting // self.sizer.workers))
            else:
                size = self.sizer.next_size(waiting)
            stop = min(self.count, start + size)
            self.next_index = stop
            skip = frozenset(i - start for i in self.cancelled if start <= i < stop)
            if len(skip) < stop - start:
                self.in_flight[start] = stop
                return start, stop, skip
        return None

    def submit(self, unit: tuple[int, int, frozenset[int]]) -> Future[Any]:
        start, stop, skip = unit
        if self.deadline is not None:  # a run blocked in C past its deadline ends with its worker
            for index in range(start, stop):
                if index - start not in skip:
                    self.backend.watch_deadline(self.run_id(index), self.deadline)
        return self.backend.submit(
            run_rows, self.task, self.common, self.run_id(start), self.arguments.layout(start, stop),
            skip, not self.in_process,
        )

    def returned(self, unit: tuple[int, int, frozenset[int]]) -> None:
        if self.deadline is not None:  # a lost run is watched again when it is sent again
            for index in range(unit[0], unit[1]):
                self.backend.unwatch_deadline(self.run_id(index))

    def settle(self, unit: tuple[int, int, frozenset[int]], outcome: Any) -> None:
        self._settle(unit[0], unit[1], outcome)

    def settle_lost(self, unit: tuple[int, int, frozenset[int]], exc: BaseException) -> None:
        self._lost(unit[0], unit[1], exc, was_refused=False)

    def settle_refused(self, unit: tuple[int, int, frozenset[int]], exc: BaseException) -> None:
        self._lost(unit[0], unit[1], exc, was_refused=True)

    def settle_failed(self, unit: tuple[int, int, frozenset[int]], exc: BaseException) -> None:
        self._end_remaining(unit[0], unit[1], states.Crashed(f"handling a batch failed: {exc!r}"))

    def _settle(self, start: int, stop: int, outcome: BatchResult) -> None:
        values, ends, started, exact, records, worker = outcome
        if records:
            replay_logs(records)
        if self.hooked:  # before the states are visible, as for a run on its own
            self._fire_hooks(start, stop, values, ends, started, exact)
        size = stop - start
        observed = registry.observes_events()
        with self.lock:
            if observed:  # the runs this batch settles (not those cancelled before)
                ran: Sequence[int] = range(start, stop)
                if self.status.count(0, start, stop) != size:
                    ran = [i for i in range(start, stop) if not self.status[i]]
            self.values[start:stop] = values
            self.ends[start:stop] = ends
            self.batch_starts[start] = started
            status = self.status
            finished = status.count(0, start, stop)  # not the runs cancelled before
            status[start:stop] = b"\x01" * size
            for i in self.cancelled.intersection(range(start, stop)):
                status[i] = _ENDED
                self.cancelled.discard(i)
            for offset, state in exact.items():
                index = start + offset
                self.states[index] = state
                if state.type is not StateType.COMPLETED:
                    status[index] = _ENDED
                    self.failed.append(index)
            del self.in_flight[start]
            callbacks = self._take_callbacks(start, stop)
            self._count_finished(finished)
        if observed:
            self._report(ran, None, worker)
        self._call_back(callbacks)

    # -- task hooks ----------------------------------------------------------------
    def _fire_hooks(
        self, start: int, stop: int, values: list[Any], ends: list[float], started: float,
        exact: dict[int, State[Any]],
    ) -> None:
        """The task's hooks for the runs of a batch that came back (not those cancelled
        before it was sent), in order, in this process."""
        from flowcore.reporting import run_task_hooks

        previous_end = started
        for offset in range(stop - start):
            index = start + offset
            if self.status[index]:
                previous_end = ends[offset]
                continue  # cancelled before the batch left: its hooks ran then
            state = exact.get(offset)
            if state is None:
                state = completed_run(values[offset], previous_end, ends[offset], 1)
            previous_end = ends[offset]
            run_task_hooks(self.call(index), state)

    def _hooks_for_ended(self, indexes: Sequence[int]) -> None:
        """The task's hooks for runs ended here without running (cancelled, or a batch
        whose handling failed)."""
        from flowcore.reporting import run_task_hooks

        for index in indexes:
            state = self.final_state(index)
            if state is not None:
                run_task_hooks(self.call(index), state)

    # -- the run-event stream -----------------------------------------------------
    def _report(self, indexes: Sequence[int], kind: EventKind | None, worker: Worker | None = None) -> None:
        """Publish one event per run in ``indexes`` (``kind`` None: STARTED and FINISHED
        of each, for runs that ran), made only if an observer reads them."""
        from flowcore.events import EventKind, LazyTaskEvents

        if kind is None:
            ran = (EventKind.STARTED, EventKind.FINISHED)  # the events of a run that ran, in order

            def make(position: int) -> TaskRunEvent:
                return self._event(indexes[position // 2], ran[position % 2], worker)

            columns = functools.partial(self._columns, indexes, ran, worker) if self.named_by_number else None
            registry.publish(LazyTaskEvents(2 * len(indexes), make, columns))
        else:
            columns = functools.partial(self._columns, indexes, (kind,), worker) if self.named_by_number else None
            registry.publish(
                LazyTaskEvents(len(indexes), lambda p: self._event(indexes[p], kind, worker), columns)
            )

    def _columns(self, indexes: Sequence[int], kinds: tuple[EventKind, ...], worker: Worker | None) -> RunColumns:
        """The runs in ``indexes`` as one :class:`~flowcore.events.RunColumns` record."""
        from flowcore.events import EventKind, RunColumns

        first, name_first = self.first_number, self.first_name_number
        if isinstance(indexes, range):
            numbers: Sequence[int] = range(first + indexes.start, first + indexes.stop)
            names: Sequence[int] = range(name_first + indexes.start, name_first + indexes.stop)
        else:
            numbers = [first + i for i in indexes]
            names = [name_first + i for i in indexes]
        starts: list[float] = []
        ends: list[float] = []
        exceptional: dict[int, State[Any]] = {}
        if EventKind.FINISHED in kinds:
            status, stored, all_ends, batch_starts = self.status, self.states, self.ends, self.batch_starts
            if (
                isinstance(indexes, range) and indexes and indexes.start in batch_starts
                and status.count(_COMPLETED, indexes.start, indexes.stop) == len(indexes)
                and (not stored or not any(i in stored for i in indexes))
            ):  # a whole batch that completed plainly, back to back: slices, no loop
                ends = all_ends[indexes.start : indexes.stop]
                starts = [batch_starts[indexes.start], *ends[:-1]]
                return RunColumns(
                    kinds, self.task, self.task.name, self.common[0], self.backend.name, worker, self.prefix,
                    numbers, names, self.submitted_at, starts, ends, {}, self.run_id(0),
                )
            for position, index in enumerate(indexes):
                state = stored.get(index)
                if state is None and status[index] == _COMPLETED:
                    started = batch_starts.get(index)
                    starts.append(all_ends[index - 1] if started is None else started)
                    ends.append(all_ends[index])
                    continue
                final = state if state is not None else self.final_state(index)
                if final is None:  # not final: never reported as FINISHED
                    final = states.Crashed("no final state when its events were read")
                exceptional[position] = final
                starts.append(final.started_at or final.timestamp)
                ends.append(final.finished_at or final.timestamp)
        return RunColumns(
            kinds, self.task, self.task.name, self.common[0], self.backend.name, worker, self.prefix,
            numbers, names, self.submitted_at, starts, ends, exceptional, self.run_id(0),
            self.executing if kinds == (EventKind.SUBMITTED,) else None,
        )

    def executing(self) -> dict[int, tuple[float | None, Worker | None]]:
        """``{index: (start, worker)}`` of the runs executing now (any thread may ask):
        in this process, what the loop of each batch out says; elsewhere, what the
        start sources say (the process workers' journals: a batch's first run's start
        is known, a later one's is None). Runs of a batch out but not begun are not
        executing: they wait in the backend's queue or behind the batch's earlier runs."""
        with self.lock:
            batches = list(self.in_flight.items())
        found: dict[int, tuple[float | None, Worker | None]] = {}
        if not batches:
            return found
        if self.in_process:
            from flowcore.engine import executing_rows

            for start, _ in batches:
                for offset, began, worker in executing_rows(self.run_id(start)):
                    found[start + offset] = (began, worker)
        else:
            from flowcore.deferred_runs import started_elsewhere

            for run_id, (began, where) in started_elsewhere().items():
                prefix, _, number = run_id.rpartition("-")
                if prefix != self.prefix:
                    continue
                try:
                    index = int(number, 16) - self.first_number
                except ValueError:
                    continue
                batch = [start for start, stop in batches if start <= index < stop]
                if batch:
                    found[index] = (began if index == batch[0] else None, where)
        status = self.status
        return {index: where for index, where in found.items() if not status[index]}

    def _event(self, index: int, kind: EventKind, worker: Worker | None) -> TaskRunEvent:
        from flowcore.events import EventKind, TaskRunEvent

        state = None if kind is EventKind.SUBMITTED else self.final_state(index)
        if state is None:
            timestamp = self.submitted_at
        elif kind is EventKind.STARTED:
            timestamp = state.started_at or state.timestamp
        else:
            timestamp = state.finished_at or state.timestamp
        return TaskRunEvent(
            kind, self.run_id(index), self.run_name(index), self.task.name, self.common[0],
            timestamp, self.backend.name, state if kind is EventKind.FINISHED else None, worker,
            self.task, functools.partial(self.call, index),
        )

    def _take_callbacks(self, start: int, stop: int) -> list[tuple[int, list[Any]]]:
        if not self.callbacks:
            return []
        taken = [i for i in self.callbacks if start <= i < stop]
        return [(i, self.callbacks.pop(i)) for i in taken]

    def _call_back(self, callbacks: list[tuple[int, list[Any]]]) -> None:
        for index, fns in callbacks:
            view: MappedFuture[Any] = MappedFuture(self, index)
            for fn in fns:
                call_back(fn, view)

    def _count_finished(self, finished: int) -> None:
        """Under the lock: ``finished`` more runs are final; wake waiters and, when all
        are, leave the scope (first: its wait then sees the failures)."""
        self.remaining -= finished
        if self.remaining == 0:
            self.scope.finished(self, [MappedFuture(self, i) for i in self.failed])
        self.changed.notify_all()

    # -- a lost batch -----------------------------------------------------------
    def _lost(self, start: int, stop: int, exc: BaseException, *, was_refused: bool) -> None:
        """The batch never came back (a dead worker, an argument or result that does not
        pickle, a refused submit): settle its runs one by one as ordinary runs."""
        with self.lock:
            self.in_flight.pop(start, None)
            indexes = [i for i in range(start, stop) if not self.status[i]]
            cancel = self.cancel_requested
        proxies: list[RunFuture[Any]] = []
        for index in indexes:
            # A stand-in that belongs to no scope: the block tracks the run.
            proxy: RunFuture[Any] = RunFuture(self.task, self.call(index))
            proxy.set_sent(self.backend)
            if cancel:
                proxy.request_cancel()
            proxy.add_done_callback(functools.partial(self._adopt, index))
            proxies.append(proxy)
        if was_refused:
            for proxy in proxies:
                refused(proxy, self.backend, exc)
            return
        dispatcher_of(self.scope).recover(proxies, exc)

    def _adopt(self, index: int, proxy: TaskFuture[Any]) -> None:
        """A run of a lost batch, settled on its own, brings its final state home."""
        self._end(index, proxy.state)  # final: this is its done-callback

    def _end(self, index: int, state: State[Any]) -> None:
        with self.lock:
            if self.status[index]:
                return
            self.states[index] = state
            if state.type is StateType.COMPLETED:
                self.values[index] = state.data
                self.status[index] = _COMPLETED
            else:
                self.status[index] = _ENDED
                self.failed.append(index)
            callbacks = self._take_callbacks(index, index + 1)
            self._count_finished(1)
        self._call_back(callbacks)

    def _end_remaining(self, start: int, stop: int, state: State[Any]) -> None:
        """End the runs of a batch whose handling failed (a bug): reported here, as
        nothing else will."""
        ended = [i for i in range(start, stop) if not self.status[i]]
        for index in ended:
            self._end(index, state)
        if ended and registry.observes_events():
            from flowcore.events import EventKind

            self._report(ended, EventKind.FINISHED)
        if ended and self.hooked:
            self._hooks_for_ended(ended)

    # -- what a scope asks of a tracked item ------------------------------------
    def done(self) -> bool:
        return self.remaining == 0

    def wait(self, timeout: float | None = None) -> None:
        with self.lock:  # woken for a deadline of this thread (issue 12.20)
            wake_for_deadlines(lambda seconds: self.changed.wait_for(lambda: self.remaining == 0, seconds), timeout)

    def cancel(self) -> bool:
        """Cancel every run not yet sent; runs out in batches end ``Cancelled`` if
        their workers are stopped. True if any run was cancelled."""
        with self.lock:
            self.cancel_requested = True
            start, self.next_index = self.next_index, self.count
            indexes = [i for i in range(start, self.count) if not self.status[i]]
            for index in indexes:
                self.status[index] = _ENDED
            self.failed.extend(indexes)
            callbacks = self._take_callbacks(start, self.count)
            self._count_finished(len(indexes))
        if indexes and registry.observes_events():
            from flowcore.events import EventKind

            self._report(indexes, EventKind.FINISHED)
        if indexes and self.hooked:
            self._hooks_for_ended(indexes)
        self._call_back(callbacks)
        return bool(indexes)

    def live_run_ids(self) -> set[str]:
        with self.lock:
            ranges = list(self.in_flight.items())
            return {
                self.run_id(i) for start, stop in ranges for i in range(start, stop) if not self.status[i]
            }

    # -- one run ------------------------------------------------------------------
    def final_state(self, index: int) -> State[Any] | None:
        status = self.status[index]
        if status == _PENDING:
            return None
        state = self.states.get(index)
        if state is not None:
            return state
        if status == _ENDED:  # cancelled (states are stored for every other ending)
            state = states.Cancelled("cancelled before it was dispatched")
            self.states[index] = state
            return state
        started = self.batch_starts.get(index)
        if started is None:
            started = self.ends[index - 1]  # the run before it in the same batch
        return completed_run(self.values[index], started, self.ends[index], 1)

    def wait_for(self, index: int, timeout: float | None) -> bool:
        if self.status[index]:
            return True
        with self.lock:  # woken for a deadline of this thread (issue 12.20)
            return wake_for_deadlines(
                lambda seconds: self.changed.wait_for(lambda: self.status[index] != _PENDING, seconds), timeout
            )

    def add_callback(self, index: int, fn: Callable[[TaskFuture[Any]], Any]) -> None:
        with self.lock:
            if not self.status[index]:
                self.callbacks.setdefault(index, []).append(fn)
                return
        call_back(fn, MappedFuture(self, index))

    def cancel_one(self, index: int) -> bool:
        with self.lock:
            if self.status[index] or index < self.next_index:
                return False  # final, or out in a batch
            self.status[index] = _ENDED
            self.cancelled.add(index)
            self.failed.append(index)
            callbacks = self._take_callbacks(index, index + 1)
            self._count_finished(1)
        if registry.observes_events():
            from flowcore.events import EventKind

            self._report([index], EventKind.FINISHED)
        if self.hooked:
            self._hooks_for_ended([index])
        self._call_back(callbacks)
        return True

    def is_out(self, index: int) -> bool:
        with self.lock:
            return any(start <= index < stop for start, stop in self.in_flight.items())


class MappedFuture(TaskFuture[R]):
    """The future of one run of a :class:`MapBlock`: a view of the block's columns."""

    __slots__ = ("_block", "_index")

    def __init__(self, block: MapBlock, index: int) -> None:
        self._block = block
        self._index = index

    @property
    def task(self) -> Task[..., R]:
        return self._block.task

    @property
    def call(self) -> TaskCall:
        return self._block.call(self._index)

    @property
    def task_run_id(self) -> str:
        return self._block.run_id(self._index)

    @property
    def name(self) -> str:
        return self._block.run_name(self._index)

    @property
    def state(self) -> State[R]:
        final = self._block.final_state(self._index)
        if final is not None:
            self._block.observed.add(self._index)
            return final
        if self._block.is_out(self._index):
            return states.Running()
        return states.Pending()

    def done(self) -> bool:
        return self._block.status[self._index] != _PENDING

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        block = self._block
        index = self._index
        if block.status[index] == _COMPLETED:
            return block.values[index]  # type: ignore[no-any-return]
        return super().result(timeout, raise_on_failure)

    def add_done_callback(self, fn: Callable[[TaskFuture[R]], Any]) -> None:
        self._block.add_callback(self._index, fn)

    def cancel(self) -> bool:
        return self._block.cancel_one(self._index)

    def _final(self) -> State[R] | None:
        return self._block.final_state(self._index)

    def _wait(self, timeout: float | None) -> bool:
        return self._block.wait_for(self._index, timeout)

    def _mark_observed(self) -> None:
        self._block.observed.add(self._index)

    def _is_observed(self) -> bool:
        return self._index in self._block.observed

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MappedFuture):
            return self._block is other._block and self._index == other._index
        return NotImplemented

    def __hash__(self) -> int:
        return hash((id(self._block), self._index))


def columnar(backend: Backend, count: int) -> bool:
    """Whether a map of ``count`` runs on ``backend`` is kept in columns: on every
    backend. In-process backends gain as much as process ones (a run record, future
    and state per tiny task cost ~20 µs); a caller waiting on a run that is queued in a
    thread pool waits for a worker (runs do not see the flow's scope, so a task cannot
    map onto the pool it runs in and wait on itself)."""
    return count >= 2


__all__ = ["MapBlock", "MappedFuture", "columnar", "eligible"]
