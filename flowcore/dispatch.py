"""The parent-side dispatcher: how task runs reach a backend and how they come home.

One :class:`Dispatcher` per run scope (a flow run, a ``use_backend`` block) sends its
runs in one of three modes and settles what comes back:

* **single run** (:meth:`Dispatcher.submit` on an in-process backend, or a run whose
  arguments hold futures): one ``backend.submit`` of the engine's one-run entry
  point; a run waiting on upstream futures is sent from a callback when the last of
  them is done, so ``.submit`` never blocks; if one of them did not complete, the run
  ends ``NotRun``;
* **coalesced batch** (process and cluster backends, capability ``batching``): rapid
  submits and maps of one task are queued in a :class:`_Lane` and leave in
  adaptively sized batches (:class:`BatchSizer`); a run is sent at once whenever
  fewer batches than the limit are in flight, so a lone task is never delayed;
* **column map** (:meth:`Dispatcher.map`): a map's runs kept in columns by a
  :class:`~flowcore.mapped.MapBlock`, which sizes its batches with the same sizer,
  hands over to the same :data:`feeder`, and gives the runs of a lost batch to
  :meth:`Dispatcher.recover` like any other.

The joblib shim's calls (``flowcore.compat._parallel``) take the same send loop,
:class:`BatchSender`, with plain callables instead of task runs, driven by the
caller's thread instead of the :data:`feeder`.

Everything that can go wrong on the way is handled here, once: a refused submit, a
value that does not pickle (named, and only its run fails), a worker that died (the
attempt is counted against the retries by :func:`flowcore.engine.lost_attempt`, or
the run is sent again when it was only lost along with the pool), a cancel request.
Futures change state only through :class:`~flowcore.futures.RunFuture`'s transition
API (``set_sent`` / ``claim`` / ``set_final``).

Batch sizing follows the idea behind joblib's ``batch_size='auto'``: the first
batches hold one item each; from the durations that workers measure, later batches
are sized to last about :data:`TARGET_BATCH_SECONDS`, never so large that a worker
would go idle. About two batches per worker are kept in flight.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from flowcore import deferred_runs, registry, states
from flowcore.annotations import allow_failure
from flowcore.engine import (
    SubmittedRuns,
    lost_attempt,
    rows_state,
    run_call,
    run_call_remote,
    run_rows,
)
from flowcore.events import current_worker
from flowcore.futures import (
    RunFuture,
    TaskFuture,
    collect_futures,
    collect_inputs,
    final_state,
    mark_observed,
    observe_final,
    resolve_futures,
    resolve_inputs,
    substitute,
)
from flowcore.log_relay import replay as replay_logs
from flowcore.serialization import explain_pickling_failure, is_pickling_error, raise_if_unsendable
from flowcore.states import DeferredResult, State

if TYPE_CHECKING:
    from flowcore.backend import Backend
    from flowcore.context import RunScope
    from flowcore.events import Worker
    from flowcore.mapping import MapArguments
    from flowcore.tasks import Task

TARGET_BATCH_SECONDS = 0.05
MIN_ITEMS_TO_BATCH = 2

#: How many times in a row a run may be resubmitted after being lost with a pool that
#: another run broke, before it ends Crashed.
MAX_POOL_LOSSES = 5

U = TypeVar("U")

logger = logging.getLogger("flowcore.dispatch")


def should_batch(backend: Backend, count: int) -> bool:
    """Batch only where a trip to a worker is expensive (capability ``batching``)."""
    return count >= MIN_ITEMS_TO_BATCH and backend.capabilities.batching


def dispatcher_of(scope: RunScope) -> Dispatcher:
    """The dispatcher of ``scope`` (made on first use)."""
    dispatcher: Dispatcher | None = scope.dispatcher
    if dispatcher is None:
        with _MAKING:
            dispatcher = scope.dispatcher
            if dispatcher is None:
                dispatcher = scope.dispatcher = Dispatcher(scope)
    return dispatcher


_MAKING = threading.Lock()

#: argument types that never hold a future or an annotation (checked by exact type)
_SCALARS = frozenset({int, float, str, bytes, bool, complex, type(None)})


def _refuse_unmapped(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], unmapped: type) -> None:
    """TypeError for an ``unmapped(x)`` among a run's arguments: only ``.map`` reads it
    (one level deep), so the task would receive the wrapper instead of ``x``."""
    for index, value in enumerate(args):
        if type(value) is unmapped:
            label = f"argument {index}"
            break
    else:
        for key, value in kwargs.items():
            if type(value) is unmapped:
                label = f"argument {key!r}"
                break
        else:
            return
    raise TypeError(
        f"task {name!r}: {label} is {value!r}; unmapped(...) means something only as an "
        f"argument of .map() (the same value for every run): pass the value itself"
    )


def new_future(task: Task[..., Any], scope: RunScope, args: tuple[Any, ...], kwargs: dict[str, Any]) -> RunFuture[Any]:
    """A tracked future for one new run of ``task`` in ``scope``, not yet dispatched (its
    SUBMITTED event published, or noted for a deferred report)."""
    log_prints = task.options.log_prints
    if log_prints is None:
        log_prints = scope.log_prints
    call = task.make_call(args, kwargs, scope.flow_run, log_prints)
    call.backend = scope.slot.name
    future: RunFuture[Any] = RunFuture(task, call, scope)
    scope.track(future)
    current = registry.built or registry.get_registry()
    if current.defers_runs:  # a run of a flow run or of a use_backend block
        deferred_runs.note(call)  # reported later
    elif current.observes_events:
        from flowcore.events import submitted_event

        registry.publish([submitted_event(call, scope.slot.name)])
    return future


def _sort_inputs(items: Sequence[Any], upstream: list[TaskFuture[Any]]) -> list[TaskFuture[Any]] | None:
    """Add the futures among ``items`` (futures and annotation wrappers, see
    :func:`flowcore.futures.collect_inputs`) to ``upstream``. Returns None when there is
    no wrapper among them, else the futures that may fail (those in allow_failure)."""
    tolerated: list[TaskFuture[Any]] | None = None
    for item in items:
        if isinstance(item, TaskFuture):
            upstream.append(item)
            continue
        if tolerated is None:
            tolerated = []
        if isinstance(item, allow_failure):
            inner = collect_futures(item.value)
            upstream.extend(inner)
            tolerated.extend(inner)
    return tolerated


class Dispatcher:
    """Sends the runs of one scope to its backend (see the module docstring)."""

    def __init__(self, scope: RunScope) -> None:
        self.scope = scope
        self.backend = scope.backend()
        #: runs are coalesced into batches (capability ``batching``)
        self.batches = should_batch(self.backend, MIN_ITEMS_TO_BATCH)
        #: runs travel as work items (capability ``queues_items``)
        self.queues = self.backend.capabilities.queues_items
        self.lanes: dict[Any, _Lane] = {}

    def lane(self, task: Task[..., Any]) -> _Lane:
        """The coalescing queue of ``task`` (one per task and scope)."""
        lane = self.lanes.get(task)
        if lane is None:
            lane = self.lanes.setdefault(task, _Lane(self.backend))
        return lane

    def submit_run(
        self,
        task: Task[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        wait_for: Sequence[Any],
        *,
        scan: bool = True,
    ) -> RunFuture[Any]:
        """Create, track and send one new run of ``task`` (``Task.submit``; a map's runs
        that wait on futures). ``wait_for``: futures and ``allow_failure(future)`` items.
        ``scan=False``: the caller knows that the arguments hold no futures (map scans
        its inputs once)."""
        if scan and not kwargs:
            for arg in args:  # plain scalars hold no futures: most arguments are looked at once
                if type(arg) not in _SCALARS:
                    break
            else:
                scan = False
        # The arguments are checked and scanned before the run's future exists (and is
        # tracked by the scope): if that raises, no future is left that the flow would
        # wait for at its end, for a run never sent.
        upstream: list[TaskFuture[Any]] = []
        tolerated: list[TaskFuture[Any]] | None = None
        if scan:
            mapping = sys.modules.get("flowcore.mapping")  # None: no unmapped(...) exists yet
            if mapping is not None:
                _refuse_unmapped(task.name, args, kwargs, mapping.unmapped)
            items: list[Any] = []
            collect_inputs(args, items)
            if kwargs:
                collect_inputs(kwargs, items)
            if items:
                tolerated = _sort_inputs(items, upstream)
        if wait_for:
            waited = _sort_inputs(wait_for, upstream)
            if waited is not None:
                tolerated = waited if tolerated is None else [*tolerated, *waited]
        future = new_future(task, self.scope, args, kwargs)
        # allow_failure / quote (``tolerated``) are resolved when the run is sent
        self.submit(future, upstream, tolerated)
        return future

    def submit(
        self,
        future: RunFuture[Any],
        upstream: list[TaskFuture[Any]],
        tolerated: list[TaskFuture[Any]] | None,
    ) -> None:
        """Send one tracked run: coalesced with rapid submits where the backend batches
        and nothing must be resolved first, else on its own once every future in
        ``upstream`` is done. ``tolerated``: None when the arguments hold no
        ``allow_failure``/``quote``; else the upstreams that may fail (possibly none)."""
        if tolerated is None and not upstream:
            if self.batches:
                self.lane(future.task).add([future])
            elif self.queues:
                enqueue(future, self.backend)
            else:
                send(future, self.backend)
        else:
            send_when_ready(future, self.backend, upstream, tolerated)

    def add(self, futures: list[RunFuture[Any]]) -> None:
        """Queue tracked runs of one task for coalesced batches."""
        self.lane(futures[0].task).add(futures)

    def map(self, task: Task[..., Any], arguments: MapArguments, log_prints: bool) -> list[TaskFuture[Any]]:
        """Start a column map of ``task`` over ``arguments``; return its futures."""
        from flowcore.mapped import MapBlock

        block = MapBlock(task, self.scope, self.backend, arguments, log_prints)
        block.start()  # workers start while the futures are made
        return block.futures()

    def recover(self, futures: list[RunFuture[Any]], exc: BaseException) -> None:
        """Settle runs lost with a batch (stand-ins of a map's runs included) one by one."""
        if futures:
            self.lane(futures[0].task).recover(futures, exc)


# -- one run on its own ---------------------------------------------------------------


class _Record:
    """What the dispatcher keeps about a run while it is out (``RunFuture.dispatch``)."""

    __slots__ = ("kept", "pool_losses", "tolerated", "upstream", "watched")

    def __init__(self) -> None:
        self.upstream: list[TaskFuture[Any]] = []
        #: None: no allow_failure/quote among the arguments; else the tolerated upstreams
        self.tolerated: list[TaskFuture[Any]] | None = None
        #: sent with Backend.submit_kept: its upstreams' kept values passed unresolved
        self.kept = False
        self.pool_losses = 0  # resubmissions in a row after losses that were not its own
        self.watched = False  # the backend watches its deadline


def _record(future: RunFuture[Any]) -> _Record:
    record: _Record | None = future.dispatch
    if record is None:
        record = future.dispatch = _Record()
    return record


def send_when_ready(
    future: RunFuture[Any],
    backend: Backend,
    upstream: list[TaskFuture[Any]],
    tolerated: list[TaskFuture[Any]] | None = None,
) -> None:
    """Send ``future``'s run to ``backend`` once every future in ``upstream`` is done."""
    if upstream or tolerated is not None:
        record = _record(future)
        record.upstream = upstream
        record.tolerated = tolerated
    pending = [f for f in upstream if not f.done()]
    if not pending:
        send(future, backend)
        return
    remaining = [len(pending)]
    lock = threading.Lock()

    def upstream_done(_: TaskFuture[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            send(future, backend)

    for up in pending:
        up.add_done_callback(upstream_done)


def send(future: RunFuture[Any], backend: Backend) -> None:
    """Send the run now (its upstreams are done). Runs in callbacks: any failure here
    ends the run ``Crashed`` instead of leaving it pending."""
    _guarded(_send, future, backend)


def _guarded(how: Callable[[RunFuture[Any], Backend], None], future: RunFuture[Any], backend: Backend) -> None:
    """``how(future, backend)``; any failure ends the run ``Crashed`` (an interrupt is
    raised again after)."""
    try:
        how(future, backend)
    except BaseException as exc:
        if not future.done():
            refused(future, backend, exc)
        if not isinstance(exc, Exception):
            raise


def _send(future: RunFuture[Any], backend: Backend) -> None:
    if future.done() or future.cancel_requested:  # cancelled meanwhile
        if not future.done():
            future.set_final(states.Cancelled("cancelled before it was dispatched"))
        return
    call = future.call
    capabilities = backend.capabilities
    record: _Record | None = future.dispatch
    if record is not None and (record.upstream or record.tolerated is not None):
        if _upstream_failed(future, record):
            return
        if record.tolerated is not None:  # allow_failure / quote among the arguments
            call.args = resolve_inputs(call.args)
            call.kwargs = resolve_inputs(call.kwargs)
        elif capabilities.remote_results and future.scope is not None:
            # Kept values stay where they are: the backend resolves them on its workers.
            call.args = substitute(call.args, TaskFuture, _kept_or_result)
            call.kwargs = substitute(call.kwargs, TaskFuture, _kept_or_result)
            record.kept = True
        else:
            call.args = resolve_futures(call.args)
            call.kwargs = resolve_futures(call.kwargs)
        record.upstream = []  # do not keep a chain of finished futures alive
        record.tolerated = None
    if capabilities.queues_items and (record is None or not record.kept):
        _queue(future, backend)
        return
    try:
        if record is not None and record.kept:
            backend_future = backend.submit_kept(run_call_remote, call)
        else:
            if not capabilities.in_process:
                backend_future = backend.submit(run_call_remote, call)
            elif registry.observes_events():  # observers are told which thread ran it
                backend_future = backend.submit(run_call_remote, call, False)
            else:
                backend_future = backend.submit(run_call, call)
    except Exception as exc:
        refused(future, backend, exc)
        return
    stealable = capabilities.in_process and not capabilities.inline
    future.set_sent(backend, backend_future, _steal if stealable else None)
    if call.task.options.timeout_seconds is not None:
        watch_timeout(future, backend)
    backend_future.add_done_callback(functools.partial(_on_done, future))


def enqueue(future: RunFuture[Any], backend: Backend) -> None:
    """:func:`send` for a run with nothing to resolve on a backend with
    ``queues_items``: the work item path of :func:`_send`, without its other cases
    (the submit path of every single run on ``threads``)."""
    _guarded(_enqueue, future, backend)


def _enqueue(future: RunFuture[Any], backend: Backend) -> None:
    if future.done() or future.cancel_requested or future.dispatch is not None:
        _send(future, backend)  # cancelled meanwhile, or a record to honour
    else:
        _queue(future, backend)


def _queue(future: RunFuture[Any], backend: Backend) -> None:
    """A work item instead of a Future: whoever claims it first (a pool thread, or a
    thread that waits for it) runs it and settles the future."""
    future.set_sent(backend, None, _run_here, queued=True)
    try:
        backend.enqueue(_QueuedRun(future))
    except Exception as exc:
        refused(future, backend, exc)


def _upstream_failed(future: RunFuture[Any], record: _Record) -> bool:
    """End the run ``NotRun`` if an upstream that is not tolerated did not complete."""
    tolerated = record.tolerated
    for upstream in record.upstream:
        up_state = observe_final(upstream)
        assert up_state is not None
        if not up_state.is_completed() and not (tolerated and any(upstream is t for t in tolerated)):
            future.set_final(
                states.NotRun(
                    f"upstream task run {upstream.name!r} ({upstream.task_run_id}) ended in "
                    f"state {up_state.name}: {up_state.message}",
                    timestamp=time.time(),
                )
            )
            return True
    return False


def _kept_or_result(upstream: TaskFuture[Any]) -> Any:
    """What stands for a finished upstream in a call sent with ``submit_kept``: its
    value, or the :class:`~flowcore.states.DeferredResult` a backend keeps it as."""
    final = final_state(upstream)
    if final is not None and final.is_completed() and isinstance(final.data, DeferredResult):
        mark_observed(upstream)
        return final.data
    return upstream.result()


def watch_timeout(future: RunFuture[Any], backend: Backend) -> None:
    """Have the backend end the worker if a timed run ignores its timer signal."""
    timeout = future.call.task.options.timeout_seconds
    if timeout is not None and backend.capabilities.hard_timeouts:
        _record(future).watched = True
        backend.watch_deadline(future.call.task_run_id, timeout)


def finish(future: RunFuture[Any], state: State[Any], worker: Worker | None = None) -> bool:
    """Give the run its final state (the backend stops watching its deadline first)."""
    record: _Record | None = future.dispatch
    if record is not None:
        if record.watched:
            record.watched = False
            backend = future.backend
            if backend is not None:
                backend.unwatch_deadline(future.call.task_run_id)
        if record.kept:  # upstream values kept on the workers are not held by this call
            record.kept = False
            call = future.call
            call.args = substitute(call.args, DeferredResult, _placeholder)
            call.kwargs = substitute(call.kwargs, DeferredResult, _placeholder)
    return future.set_final(state, worker)


def _placeholder(value: DeferredResult) -> Any:
    return value.placeholder()


def refused(future: RunFuture[Any], backend: Backend, exc: BaseException) -> None:
    """``backend.submit`` raised: the run never started; it ends ``Crashed``."""
    crashed = states.Crashed(
        f"backend {getattr(backend, 'name', '?')!r} did not accept task run "
        f"{future.call.task_run_name!r}: {type(exc).__name__}: {exc}"
    )
    if crashed.exception is not None:
        crashed.exception.__cause__ = exc
    finish(future, crashed)


def crashed(future: RunFuture[Any], exc: BaseException) -> None:
    """Handling the run failed (a bug, or the machinery): it ends ``Crashed``."""
    state = states.Crashed(f"task run {future.call.task_run_name!r} crashed: {type(exc).__name__}: {exc}")
    if state.exception is not None:
        state.exception.__cause__ = exc
    finish(future, state)


class _QueuedRun:
    """A run queued on a backend with ``queues_items`` (see :func:`_send`)."""

    __slots__ = ("future",)

    def __init__(self, future: RunFuture[Any]) -> None:
        self.future = future

    def run(self) -> None:
        future = self.future
        if not future.claim():  # cancelled, or taken by the thread that waits for it
            return
        try:
            state = run_call(future.call)
        except BaseException as exc:  # run_call raises only for an interrupt
            crashed(future, exc)
            return
        worker = current_worker() if registry.observes_events() else None
        if future.dispatch is None:  # nothing for finish() to undo: settle it directly
            future.set_final(state, worker)
        else:
            finish(future, state, worker)

    def drop(self) -> None:
        future = self.future
        if future.claim():
            finish(future, states.Cancelled("cancelled before it started: its backend was shut down"))


def _run_here(future: RunFuture[Any]) -> None:
    """Run a queued run in the thread that is about to wait for it, unless a worker
    has taken it (see :func:`_steal`)."""
    if future.claim():
        _run_claimed(future)


def _run_claimed(future: RunFuture[Any]) -> None:
    """Run a claimed run in the waiting thread and settle it."""
    try:
        # A fresh context, as on a pool thread: the waiter's flow is not the task's.
        state = contextvars.Context().run(run_call, future.call)
    except BaseException:
        future.set_final(states.Cancelled("interrupted while running in the waiting thread"))
        raise
    future.set_final(state, current_worker())


def _steal(future: RunFuture[Any]) -> None:
    """Run a queued run in the thread that waits for it (thread backends only).

    A caller blocked on a task that no worker has picked up yet would only wait for a
    hand-off; running it here saves two thread switches and cannot deadlock on a full
    pool. Runs already executing are waited for as usual.
    """
    backend_future = future.backend_future
    if backend_future is None or backend_future.done() or not future.claim():
        return
    if not backend_future.cancel():  # a worker has started it
        future.unclaim()
        return
    _run_claimed(future)


def _on_done(future: RunFuture[Any], backend_future: Future[Any]) -> None:
    try:
        _settle(future, backend_future)
    except Exception as exc:  # never leave the run pending over a bug in handling
        if not future.done():
            crashed(future, exc)


def _settle(future: RunFuture[Any], backend_future: Future[Any]) -> None:
    try:
        # A value that could not make the trip from the worker raises here (issue 12.15).
        state = raise_if_unsendable(backend_future.result())
    except CancelledError:
        if future.claimed:
            return  # the waiting thread runs it (see _steal)
        finish(future, states.Cancelled("cancelled before it started"))
        return
    except BaseException as exc:  # the machinery failed, not the task: the engine never raises
        delay = lost(future, exc)
        if delay is not None:
            resubmit(future, delay)
        return
    worker = None
    if type(state) is tuple:  # (state, log records, worker): see run_call_remote
        state, records, worker = state
        if records:
            replay_logs(records)
    finish(future, state, worker)


def lost(future: RunFuture[Any], exc: BaseException) -> float | None:
    """The backend lost the run: explain a pickling failure, count a crash (or a
    timeout enforced by killing the worker) against the retries, or end the run.
    Returns the delay before the run must be sent again, or None when it has ended."""
    call = future.call
    backend = future.backend
    if future.cancel_requested:
        finish(future, states.Cancelled("cancelled: its worker was stopped while it ran"))
        return None
    serialization = explain_pickling_failure(call, exc, getattr(backend, "name", "?"))
    if serialization is not None:
        serialization.__cause__ = exc
        finish(future, states.Failed(serialization, attempts=call.attempts_used + 1))
        return None
    explain = getattr(backend, "explain_failure", None)
    worker_lost = explain(call.task_run_id, exc) if explain is not None else None
    if worker_lost is None:
        crashed(future, exc)
        return None
    record = _record(future)
    if not worker_lost.culprit:
        # Only lost along with the pool: send it again, no attempt counted. Bounded
        # whatever the cause (issue 12.15): a run whose own value keeps breaking the
        # pool unrecognised must not rebuild pools forever.
        record.pool_losses += 1
        if record.pool_losses > MAX_POOL_LOSSES:
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            state = states.Crashed(
                f"task run {call.task_run_name!r} was lost {MAX_POOL_LOSSES + 1} times in a row "
                f"with its worker pool, although its own worker never died "
                f"(last: {type(exc).__name__}: {first_line}); "
                "giving up. If its arguments or result do not survive pickling, pass or "
                "return plain data",
                attempts=call.attempts_used,
            )
            if state.exception is not None:
                state.exception.__cause__ = exc
            finish(future, state)
            return None
        return min(0.1 * (record.pool_losses - 1), 1.0)  # a short, growing pause
    record.pool_losses = 0
    outcome = lost_attempt(
        call, exc, f"task run {call.task_run_name!r}: {worker_lost.message}", timed_out=worker_lost.timed_out
    )
    if isinstance(outcome, float):
        return outcome
    finish(future, outcome)
    return None


def resubmit(future: RunFuture[Any], delay: float) -> None:
    """Send the run again, from a fresh thread: the backend's own thread that reported
    the loss may be busy tearing the old pool down."""
    backend = future.backend
    assert backend is not None

    def again() -> None:
        if delay > 0:
            time.sleep(delay)
        future.unsend()
        send(future, backend)  # ends Cancelled if cancel() came during the delay

    threading.Thread(target=again, name="flowcore-resubmit", daemon=True).start()


# -- coalesced batches ------------------------------------------------------------------


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
        fair_share = -(-waiting // self.workers)  # ceiling division, in integers
        return max(1, min(int(by_duration), fair_share))

    def observe(self, busy_seconds: float, items: int) -> None:
        """A batch came back: ``items`` runs kept a worker busy ``busy_seconds``."""
        per_item = busy_seconds / max(1, items)
        if self.item_seconds is None:
            self.item_seconds = per_item
        else:  # smooth, but follow a change in task durations quickly
            self.item_seconds = 0.5 * self.item_seconds + 0.5 * per_item


class BatchSender(Generic[U]):
    """The one send loop of the batched modes: coalesced lanes, column maps
    (:class:`~flowcore.mapped.MapBlock`) and the joblib shim's calls
    (``flowcore.compat._parallel._Run``).

    While there is room (:meth:`next_unit`: by default while the :class:`BatchSizer`
    has room, :meth:`take` the next unit of work), :meth:`submit` it to the backend;
    when it comes back, :meth:`observe` the outcome for sizing and :meth:`settle` it
    (by default the outcome is a :data:`~flowcore.engine.BatchResult` of the engine's
    rows entry point), or :meth:`settle_lost` if it never arrived (a dead worker, a
    value that did not make the trip), :meth:`settle_refused` if the backend did not
    take it. Then :meth:`send_next`: by default the next batches leave from the
    :data:`feeder` thread, never from the backend's own callback thread; a
    caller-driven mode (the shim) sends them from its caller's thread instead.

    Every hook but :meth:`take` and :meth:`observe` runs without :attr:`lock` held,
    except :meth:`settle` and :meth:`settle_lost` when :attr:`settles_under_lock` is
    set.
    """

    #: Settle a unit under :attr:`lock`, in the same critical section that takes it
    #: out of flight: for a mode whose caller reads the count in flight and the
    #: settled units together (the shim: "nothing in flight and nothing left" must
    #: mean every value is in). False: settle without the lock (runs' callbacks fire).
    settles_under_lock: bool = False

    def __init__(self, backend: Backend, workers: int | None = None) -> None:
        """``workers``: what the sizer plans for; default the backend's worker count
        (then followed as it changes, see :meth:`next_unit`)."""
        self.backend = backend
        self.sizer = BatchSizer(backend.max_workers if workers is None else workers)
        self.lock = threading.Lock()

    def fill(self) -> None:
        """Send units while there is room for them (see :class:`Fillable`)."""
        while True:
            unit = self.next_unit()
            if unit is None:
                return
            self._send(unit)

    def next_unit(self) -> U | None:
        """The next unit to send, already counted in flight (``sizer.in_flight``), or
        None when there is no room or nothing to send.

        Default: under :attr:`lock`, while the sizer has room for another batch,
        :meth:`take`. A mode with its own room policy, or whose units must not be made
        under the lock (the shim pulls them from its caller's input), overrides this.
        """
        with self.lock:
            # Read each time: a cluster's worker count is known once connected.
            self.sizer.resize(self.backend.max_workers)
            if not self.sizer.has_room():
                return None
            unit = self.take()
            if unit is not None:
                self.sizer.in_flight += 1
            return unit

    def _send(self, unit: U) -> None:
        """Submit ``unit`` (counted in flight); if the backend refuses it,
        :meth:`settle_refused` (an interrupt is re-raised after that)."""
        try:
            backend_future = self.submit(unit)
        except BaseException as exc:
            with self.lock:
                self.sizer.in_flight -= 1
            self.settle_refused(unit, exc)
            if not isinstance(exc, Exception):
                raise
            return
        backend_future.add_done_callback(functools.partial(self._on_done, unit))

    def _on_done(self, unit: U, backend_future: Future[Any]) -> None:
        try:
            self.returned(unit)
            lost = False
            try:
                # A batch whose value could not make the trip raises: its runs are lost.
                outcome = raise_if_unsendable(backend_future.result())
            except BaseException as exc:
                outcome, lost = exc, True
            under_lock = self.settles_under_lock
            with self.lock:
                self.sizer.in_flight -= 1
                if not lost:
                    self.observe(unit, outcome)
                if under_lock:
                    self._settle_outcome(unit, outcome, lost)
            if not under_lock:
                self._settle_outcome(unit, outcome, lost)
        except Exception as exc:  # never leave runs pending over a bug in handling
            self.settle_failed(unit, exc)
        self.send_next()

    def _settle_outcome(self, unit: U, outcome: Any, lost: bool) -> None:
        if lost:
            self.settle_lost(unit, outcome)
        else:
            self.settle(unit, outcome)

    # -- what a mode may override -----------------------------------------------------
    def observe(self, unit: U, outcome: Any) -> None:
        """Under :attr:`lock`: size later batches from ``unit``'s ``outcome``.
        Default: the engine's rows (how long the batch's runs kept the worker busy)."""
        ends, started = outcome[1], outcome[2]
        self.sizer.observe(ends[-1] - started if ends else 0.0, len(ends))

    def send_next(self) -> None:
        """A unit is back and settled: have the next ones sent. Default: by the
        :data:`feeder` (this runs on the pool's own result thread), except on an inline
        backend, whose caller's loop sends on."""
        if not self.backend.capabilities.inline:
            feeder.kick(self)

    def returned(self, unit: U) -> None:
        """``unit`` is back from the backend, whatever its outcome. Default: nothing."""

    # -- what a mode defines ----------------------------------------------------------
    def take(self) -> U | None:
        """Under :attr:`lock`: the next unit to send (sized by :attr:`sizer`), or None.
        Only the default :meth:`next_unit` calls it."""
        raise NotImplementedError

    def submit(self, unit: U) -> Future[Any]:
        """Hand ``unit`` to the backend; may raise (then :meth:`settle_refused`)."""
        raise NotImplementedError

    def settle(self, unit: U, outcome: Any) -> None:
        """Give ``unit``'s runs their final states from ``outcome``."""
        raise NotImplementedError

    def settle_lost(self, unit: U, exc: BaseException) -> None:
        """``unit`` never came back (``exc``): settle its runs one by one."""
        raise NotImplementedError

    def settle_refused(self, unit: U, exc: BaseException) -> None:
        """The backend did not take ``unit``: its runs end ``Crashed``."""
        raise NotImplementedError

    def settle_failed(self, unit: U, exc: BaseException) -> None:
        """Handling ``unit``'s outcome raised (a bug): end its runs ``Crashed``."""
        raise NotImplementedError


class _Lane(BatchSender[list[RunFuture[Any]]]):
    """The queued runs of one task in one scope (its maps and its individual
    submits), fed to the backend in adaptively sized batches.

    When a batch is lost with a dead worker, its runs are handled one by one: the run
    that was executing is pinned by the worker journal (``Crashed``, retried if
    allowed), the others -- including those that had finished in the lost batch --
    are queued again. A run whose value cannot be pickled does not lose its batch:
    the worker sends the batch home with that run ``Failed``
    (:class:`~flowcore.serialization.Repairable`), so no finished run executes twice.
    """

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.pending: collections.deque[RunFuture[Any]] = collections.deque()

    def add(self, futures: list[RunFuture[Any]]) -> None:
        """Queue runs (tracked, not yet sent) and send what capacity allows now."""
        with self.lock:
            self.pending.extend(futures)
        self.fill()

    def take(self) -> list[RunFuture[Any]] | None:
        pending = self.pending
        while pending:
            size = self.sizer.next_size(len(pending))
            batch = [pending.popleft() for _ in range(min(size, len(pending)))]
            batch = [f for f in batch if not f.done()]  # cancelled meanwhile
            if batch:
                return batch
        return None

    def submit(self, unit: list[RunFuture[Any]]) -> Future[Any]:
        backend = self.backend
        for future in unit:
            future.set_sent(backend)
            watch_timeout(future, backend)
        task, batch_call, runs = SubmittedRuns.of([f.call for f in unit])
        if backend.capabilities.remote_results and all(f.scope is not None for f in unit):
            # Large results stay on the workers (the runs' values come as deferred ones).
            return backend.submit_kept(run_rows, task, batch_call, None, runs)
        return backend.submit(run_rows, task, batch_call, None, runs)

    def settle(self, unit: list[RunFuture[Any]], outcome: Any) -> None:
        values, ends, started, exact, records, worker = outcome
        results = [rows_state(values, ends, started, exact, i) for i in range(len(unit))]
        replay_logs(records)
        for future, state in zip(unit, results, strict=True):
            finish(future, state, worker)

    def settle_lost(self, unit: list[RunFuture[Any]], exc: BaseException) -> None:
        self.recover(unit, exc)

    def settle_refused(self, unit: list[RunFuture[Any]], exc: BaseException) -> None:
        for future in unit:
            refused(future, self.backend, exc)

    def settle_failed(self, unit: list[RunFuture[Any]], exc: BaseException) -> None:
        for future in unit:
            if not future.done():
                crashed(future, exc)

    def recover(self, batch: list[RunFuture[Any]], exc: BaseException) -> None:
        """A lost batch: settle each run on its own (see the class docstring)."""
        if is_pickling_error(exc):
            # Find the run at fault (and name its argument) by sending each alone.
            again = [f for f in batch if not f.done()]

            def one_by_one() -> None:
                for future in again:
                    send(future, self.backend)

            threading.Thread(target=one_by_one, name="flowcore-batch-recovery", daemon=True).start()
            feeder.kick(self)
            return
        redo: list[RunFuture[Any]] = []
        for future in batch:
            if future.done():
                continue
            delay = lost(future, exc)
            if delay is None:
                continue
            if delay > 0:
                resubmit(future, delay)
            else:
                redo.append(future)
        if redo:
            with self.lock:
                self.pending.extendleft(reversed(redo))
        feeder.kick(self)  # not from the pool's own thread: it may be tearing down


class Fillable(Protocol):
    """Something the feeder can ask to send what its capacity allows."""

    def fill(self) -> None: ...


class _Feeder:
    """One daemon thread that sends the next batches after a batch completes.

    Completion callbacks run on the backend's own threads; submitting from there can
    stall a pool (loky's manager thread would be waking itself), so they hand over.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Fillable] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def kick(self, sender: Fillable) -> None:
        """Have the feeder thread call ``sender.fill()`` soon."""
        self._queue.put(sender)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="flowcore-batch-feeder", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            sender = self._queue.get()
            try:
                sender.fill()
            except Exception:  # a sender's failure must not stop the others
                logger.exception("sending a batch failed")


#: the one feeder thread of this process
feeder = _Feeder()


__all__ = [
    "MAX_POOL_LOSSES",
    "MIN_ITEMS_TO_BATCH",
    "TARGET_BATCH_SECONDS",
    "BatchSender",
    "BatchSizer",
    "Dispatcher",
    "Fillable",
    "dispatcher_of",
    "feeder",
    "finish",
    "lost",
    "new_future",
    "refused",
    "resubmit",
    "send",
    "send_when_ready",
    "should_batch",
]
