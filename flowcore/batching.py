"""Auto-batching: many small task runs on process and cluster backends.

One trip to a worker process costs far more than a tiny task (~0.2 ms on loky), so
runs are sent in batches: one backend call runs a list of task calls with the
ordinary engine and returns their states. Every run keeps its own future and state;
results and exceptions are exactly those of unbatched runs. A dispatcher serves one
task within one flow run (or ``use_backend`` block): ``map`` adds all its items, and
rapid individual ``.submit`` calls are coalesced the same way -- a run is sent at once
whenever fewer batches than the limit are in flight, so a lone task is never delayed;
runs submitted while the workers are busy wait and leave together.

Sizing follows the idea behind joblib's ``batch_size='auto'``: the first batches hold
one item each; from the durations that workers measure, later batches are sized to
last about :data:`TARGET_BATCH_SECONDS`, never so large that a worker would go idle
(at most the remaining items divided by the workers). About two batches per worker
are kept in flight.

When a batch is lost with a dead worker, its items are handled one by one: the item
that was running is pinned by the worker journal (``Crashed``, retried if allowed),
the others -- including those that had finished in the lost batch -- are dispatched
again. A run whose value cannot be pickled does not lose its batch: the worker sends
the batch home with that run ``Failed`` (:class:`~flowcore.serialization.Repairable`),
so no finished run executes twice (issue 12.22).
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

from flowcore.engine import run_call
from flowcore.log_relay import replay as replay_logs
from flowcore.serialization import (
    Repairable,
    is_pickling_error,
    pickling_error,
    raise_if_unsendable,
    unsendable_error,
)
from flowcore.states import Failed, State, completed_run

if TYPE_CHECKING:
    from flowcore.backend import Backend, NativeHandle
    from flowcore.calls import TaskCall
    from flowcore.events import Worker
    from flowcore.futures import RunFuture

TARGET_BATCH_SECONDS = 0.05
MIN_ITEMS_TO_BATCH = 2


# The wire format is lean because it is paid per item: the task and the fields that
# all items share travel once per batch; a plain success comes back as a tuple.
BatchItem = tuple[tuple[Any, ...], dict[str, Any], str, str, int]
Outcome = Any  # tuple[value, started_at, finished_at, attempts] | State


def encode_batch(calls: list[TaskCall]) -> tuple[Any, tuple[Any, ...], list[BatchItem]]:
    first = calls[0]
    common = (
        first.flow_run_id, first.flow_run_name, first.flow_name, first.log_prints,
        first.flow_parameters_key, first.flow_run, first.backend,
    )
    items = [(c.args, c.kwargs, c.task_run_id, c.task_run_name, c.attempts_used) for c in calls]
    return first.task, common, items


def run_batch(
    task: Any, common: tuple[Any, ...], items: list[BatchItem]
) -> tuple[list[Outcome], list[dict[str, Any]], Worker]:
    """Run a batch's items one after the other in this worker: one outcome per item,
    the log records of the runs (replayed in the parent) and where they ran."""
    from flowcore.events import current_worker
    from flowcore.log_relay import capture

    with capture() as records:
        outcomes = _run_items(task, common, items)
    worker = current_worker()

    def repair() -> tuple[Any, ...]:  # issue 12.22: only the culprits fail, nothing reruns
        names = [item[3] for item in items]
        return [sendable_outcome(o, name) for o, name in zip(outcomes, names, strict=True)], records, worker

    return Repairable((outcomes, records, worker), repair)


def _run_items(task: Any, common: tuple[Any, ...], items: list[BatchItem]) -> list[Outcome]:
    from flowcore.calls import TaskCall

    flow_run_id, flow_run_name, flow_name, log_prints, flow_parameters_key, flow_run, backend = common
    outcomes: list[Outcome] = []
    for args, kwargs, run_id, run_name, attempts_used in items:
        call = TaskCall(
            task, args, kwargs, run_id, run_name, flow_run_id, flow_run_name, flow_name, 0.0,
            log_prints, attempts_used, flow_parameters_key, flow_run, backend,
        )
        state = run_call(call)
        if state.name == "Completed" and state.result_location is None:
            outcomes.append((state.data, state.started_at, state.finished_at, state.attempts))
        else:
            outcomes.append(state)
    return outcomes


def sendable_outcome(outcome: Outcome, task_run_name: str) -> Outcome:
    """``outcome`` of run ``task_run_name`` if it pickles; else a ``Failed`` state with
    the :class:`~flowcore.errors.SerializationError` that names the run and the type of
    the value (or raised exception) at fault. In the worker, on the failure path only:
    a batch whose outcome does not pickle still sends its other runs' results home."""
    error = pickling_error(outcome)
    if error is None:
        return outcome
    if type(outcome) is tuple:  # a plain success: (value, started, finished, attempts)
        value, started_at, finished_at, attempts = outcome
        return Failed(
            unsendable_error(task_run_name, value, error),
            started_at=started_at, finished_at=finished_at, attempts=attempts,
        )
    state: State[Any] = outcome
    raised = state.exception is not None and pickling_error(state.exception) is not None
    culprit = state.exception if raised else state.data
    return Failed(
        unsendable_error(task_run_name, culprit, error, exception=raised),
        traceback=state.traceback if raised else None,
        started_at=state.started_at, finished_at=state.finished_at, attempts=state.attempts,
    )


def decode_outcome(outcome: Outcome) -> State[Any]:
    if type(outcome) is tuple:
        return completed_run(*outcome)
    return outcome  # type: ignore[no-any-return]


class BatchSizer:
    """How many runs the next batch holds, and whether another may leave now.

    Not thread-safe on its own: callers hold their lock around every method.
    """

    def __init__(self, max_workers: int) -> None:
        self.workers = max(1, max_workers)
        self.in_flight = 0
        self.max_in_flight = max(2, 2 * max_workers)
        self.item_seconds: float | None = None

    def resize(self, max_workers: int) -> None:
        """Follow the backend's worker count, which may change (a cluster is connected,
        or scales)."""
        if max_workers != self.workers:
            self.workers = max(1, max_workers)
            self.max_in_flight = max(2, 2 * max_workers)

    def has_room(self) -> bool:
        return self.in_flight < self.max_in_flight

    def next_size(self, waiting: int) -> int:
        """The size of the next batch when ``waiting`` runs wait to be sent."""
        if self.item_seconds is None:
            return 1  # probe: learn how long an item takes
        by_duration = TARGET_BATCH_SECONDS / max(self.item_seconds, 1e-7)
        fair_share = math.ceil(waiting / self.workers)
        return max(1, min(int(by_duration), fair_share))

    def observe(self, busy_seconds: float, items: int) -> None:
        """A batch came back: ``items`` runs kept a worker busy ``busy_seconds``."""
        per_item = busy_seconds / max(1, items)
        if self.item_seconds is None:
            self.item_seconds = per_item
        else:  # smooth, but follow a change in task durations quickly
            self.item_seconds = 0.5 * self.item_seconds + 0.5 * per_item


class BatchDispatcher:
    """Feeds the runs of one task in one scope (its maps and its individual submits)
    to a backend, in adaptively sized batches."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.pending: collections.deque[RunFuture[Any]] = collections.deque()
        self.sizer = BatchSizer(backend.max_workers)
        self.lock = threading.Lock()

    def add(self, futures: list[RunFuture[Any]]) -> None:
        """Queue runs (tracked, not yet dispatched) and send what capacity allows now."""
        with self.lock:
            self.pending.extend(futures)
        self._fill()

    def _fill(self) -> None:
        while True:
            with self.lock:
                # Read each time: a cluster's worker count is known once connected.
                self.sizer.resize(self.backend.max_workers)
                if not self.pending or not self.sizer.has_room():
                    return
                size = self.sizer.next_size(len(self.pending))
                batch = [self.pending.popleft() for _ in range(min(size, len(self.pending)))]
                batch = [f for f in batch if not f.done()]  # cancelled meanwhile
                if not batch:
                    continue
                self.sizer.in_flight += 1
            self._send(batch)

    def _send(self, batch: list[RunFuture[Any]]) -> None:
        for future in batch:
            future._backend = self.backend
            future._in_batch = True
            future._watch_timeout(self.backend)
        backend = self.backend
        handle: NativeHandle | None = None
        try:
            if backend.capabilities.remote_results and all(f._keeps_results_remote() for f in batch):
                # Results stay on the workers; one handle serves the batch's runs.
                backend_future, handle = backend.submit_native(run_batch, *encode_batch([f.call for f in batch]))
            else:
                backend_future = backend.submit(run_batch, *encode_batch([f.call for f in batch]))
        except Exception as exc:
            with self.lock:
                self.sizer.in_flight -= 1
            for future in batch:
                future._backend_refused(exc)
            return
        backend_future.add_done_callback(lambda done: self._on_done(batch, done, handle))

    def _on_done(
        self, batch: list[RunFuture[Any]], backend_future: Future[Any], handle: NativeHandle | None = None
    ) -> None:
        try:
            self._settle(batch, backend_future, handle)
        except Exception as exc:  # never leave runs pending over a bug in handling
            for future in batch:
                if not future.done():
                    future._crashed(exc)
            _feeder.kick(self)

    def _settle(
        self, batch: list[RunFuture[Any]], backend_future: Future[Any], handle: NativeHandle | None = None
    ) -> None:
        try:
            # A batch whose value could not make the trip raises: recovered item by item.
            outcomes, records, worker = raise_if_unsendable(backend_future.result())
            results = [decode_outcome(o) for o in outcomes]
            if handle is not None:  # a light copy: large values stayed on the workers
                from flowcore.native import adopt

                results = [
                    adopt(state, handle, index, future.call.task_run_name)
                    for index, (future, state) in enumerate(zip(batch, results, strict=True))
                ]
        except BaseException as exc:
            with self.lock:
                self.sizer.in_flight -= 1
            self._recover(batch, exc)
            return
        busy = sum((s.duration or 0.0) for s in results)
        with self.lock:
            self.sizer.in_flight -= 1
            self.sizer.observe(busy, len(results))
        replay_logs(records)
        for future, state in zip(batch, results, strict=True):
            future._finish(state, worker)
        _feeder.kick(self)  # not from here: this is the pool's own result thread

    def _recover(self, batch: list[RunFuture[Any]], exc: BaseException) -> None:
        """A lost batch: settle each item on its own (see the module docstring)."""
        if is_pickling_error(exc):
            # Find the item at fault (and name its argument) by sending each alone.
            again: list[RunFuture[Any]] = [f for f in batch if not f.done()]

            def one_by_one() -> None:
                for future in again:
                    future._run_on(self.backend)

            _later(one_by_one)
            _feeder.kick(self)
            return
        redo: list[RunFuture[Any]] = []
        for future in batch:
            if future.done():
                continue
            delay = future._failed_in_backend(exc)
            if delay is None:
                continue
            if delay > 0:
                future._resubmit(delay)
            else:
                redo.append(future)
        if redo:
            with self.lock:
                self.pending.extendleft(reversed(redo))
        _feeder.kick(self)  # not from the pool's own thread: it may be tearing down


class Fillable(Protocol):
    """Something the feeder can ask to send what its capacity allows."""

    def _fill(self) -> None: ...


class _Feeder:
    """One daemon thread that sends the next batches after a batch completes.

    Completion callbacks run on the backend's own threads; submitting from there can
    stall a pool (loky's manager thread would be waking itself), so they hand over.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Fillable] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def kick(self, dispatcher: Fillable) -> None:
        self._queue.put(dispatcher)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="flowcore-batch-feeder", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            dispatcher = self._queue.get()
            try:
                dispatcher._fill()
            except Exception:  # a dispatcher's failure must not stop the others
                logging.getLogger("flowcore.batching").exception("sending a batch failed")


_feeder = _Feeder()


def _later(action: Callable[[], Any]) -> None:
    thread = threading.Thread(target=action, name="flowcore-batch-recovery", daemon=True)
    thread.start()


def should_batch(backend: Backend, count: int) -> bool:
    """Batch only where a trip to a worker is expensive (capability ``batching``)."""
    return count >= MIN_ITEMS_TO_BATCH and backend.capabilities.batching


__all__ = ["TARGET_BATCH_SECONDS", "BatchDispatcher", "BatchSizer", "run_batch", "should_batch"]
