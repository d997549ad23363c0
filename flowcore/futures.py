"""Task futures: the handle ``.submit`` returns, and the functions that wait on many.

A :class:`TaskFuture` reaches its final :class:`~flowcore.states.State` exactly once.
Before that its ``state`` is ``Pending`` (waiting for upstream futures or a worker)
or ``Running``. A future whose arguments contain other futures is dispatched to the
backend from a callback when the last of them finishes, so ``.submit`` never blocks;
if one of them did not complete, the task is not run and ends ``NotRun``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import copy
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from flowcore import registry, states
from flowcore.annotations import BaseAnnotation, quote
from flowcore.engine import run_call, run_call_located, run_call_remote
from flowcore.errors import WaitTimeoutError
from flowcore.log_relay import replay as replay_logs
from flowcore.reporting import report_final_state
from flowcore.serialization import explain_pickling_failure, raise_if_unsendable
from flowcore.states import State
from flowcore.timeouts import wake_for_deadlines

if TYPE_CHECKING:
    from flowcore.backend import Backend, NativeHandle, WorkerLost
    from flowcore.calls import TaskCall
    from flowcore.context import RunScope
    from flowcore.events import Worker
    from flowcore.tasks import Task

R = TypeVar("R")
T = TypeVar("T")

# Guards every future's final state, waiter lock and callbacks: held for a few
# instructions at a time, and cheaper than two locks per future.
_STATE_LOCK = threading.Lock()

#: How many times in a row a run may be resubmitted after being lost with a pool that
#: another run broke, before it ends Crashed.
MAX_POOL_LOSSES = 5

logger = logging.getLogger("flowcore.futures")


class TaskFuture(Generic[R]):
    """The eventual outcome of one submitted task run.

    Thread-safe. A future reaches its final :class:`~flowcore.states.State` exactly
    once; callbacks added with :meth:`add_done_callback` run once it is set, in the
    thread that set it (or immediately, if already done), after the task's
    ``on_completion``/``on_failure`` hooks. ``.submit`` returns one future per run;
    ``.map`` on a process backend may return lighter futures that are views into the
    map's shared result columns -- they behave the same.
    """

    __slots__ = ("__weakref__",)

    # -- public API (subclasses implement the abstract parts) ---------------------
    @property
    def task(self) -> Task[..., R]:
        raise NotImplementedError

    @property
    def call(self) -> TaskCall:
        """The run's :class:`~flowcore.calls.TaskCall` (what hooks receive)."""
        raise NotImplementedError

    @property
    def task_run_id(self) -> str:
        return self.call.task_run_id

    @property
    def name(self) -> str:
        """The task run's name."""
        return self.call.task_run_name

    @property
    def state(self) -> State[R]:
        """The current state: final once :meth:`done`, else ``Pending`` or ``Running``."""
        raise NotImplementedError

    def done(self) -> bool:
        """True once the future has its final state. Never blocks."""
        return self._final() is not None

    def wait(self, timeout: float | None = None) -> None:
        """Block until the final state is set or ``timeout`` seconds pass.

        Returns None either way (like Prefect); check :meth:`done` after a timeout.
        """
        self._wait(timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """Block until done, then return the task's value.

        Raises :class:`~flowcore.errors.WaitTimeoutError` if ``timeout`` passes first
        (the task keeps running). For a task that did not complete, raises its
        exception (the task's own exception type; ``UpstreamFailedError`` for
        ``NotRun``, ``TaskTimeoutError`` for ``TimedOut``, ``CrashedError`` for
        ``Crashed``), or returns the exception object when ``raise_on_failure`` is False.
        """
        if not self._wait(timeout):
            raise WaitTimeoutError(
                f"task run {self.name!r} did not finish within {timeout} s; it is still "
                f"{self.state.name.lower()} (wait longer, or check future.done())"
            )
        self._mark_observed()
        final = self._final()
        assert final is not None
        return final.result(raise_on_failure=raise_on_failure)  # type: ignore[no-any-return]

    def add_done_callback(self, fn: Callable[[TaskFuture[R]], Any]) -> None:
        """Call ``fn(self)`` when the future finishes (now, if it already has)."""
        raise NotImplementedError

    def cancel(self) -> bool:
        """Cancel the run if it has not started; returns True if it is now cancelled.

        A run already executing goes on (a thread cannot be stopped), unless its
        worker is stopped as well: then it ends ``Cancelled``, not ``Crashed``.
        """
        raise NotImplementedError

    def __await__(self) -> Generator[Any, None, R]:
        """``await future``: the task's value (or its exception), as :meth:`result`
        gives it, without blocking the event loop while the run goes on."""
        return self._result_async().__await__()

    async def _result_async(self) -> R:
        if self._final() is None:
            await wait_async([self])
        return self.result()

    def __repr__(self) -> str:
        return f"TaskFuture({self.name!r}, state={self.state!r})"

    # -- what the core asks of every future ---------------------------------------
    def _final(self) -> State[R] | None:
        """The final state, or None while the run is not finished. Does not count as
        looking at the outcome (see :meth:`_mark_observed`)."""
        raise NotImplementedError

    def _wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds; True once the run is finished."""
        raise NotImplementedError

    def _mark_observed(self) -> None:
        """Someone looked at the outcome: a failure is not reported as unobserved."""
        raise NotImplementedError

    def _is_observed(self) -> bool:
        raise NotImplementedError

    def _live_run_ids(self) -> set[str]:
        """The ids of this future's runs that may be executing in a worker now."""
        return set() if self.done() else {self.task_run_id}


class RunFuture(TaskFuture[R]):
    """The future of one run dispatched on its own (or in a batch of calls)."""

    __slots__ = (
        "_backend",
        "_backend_future",
        "_call",
        "_callbacks",
        "_cancel_requested",
        "_done",
        "_finishing",
        "_hard_watched",
        "_in_batch",
        "_native",
        "_observed",
        "_pool_losses",
        "_refs",
        "_scope",
        "_state",
        "_stealable",
        "_stolen",
        "_task",
        "_tolerated",
        "_upstream",
    )

    def __init__(self, task: Task[..., R], call: TaskCall) -> None:
        self._task = task
        self._call = call
        self._state: State[R] | None = None
        # Made by the first waiter and held until the final state is set; most futures
        # of a big map are finished before anyone waits, and never need one.
        self._done: threading.Lock | None = None
        self._callbacks: list[Callable[[TaskFuture[R]], Any]] | None = None
        self._backend_future: cf.Future[Any] | None = None
        self._backend: Backend | None = None
        self._observed = False
        self._pool_losses = 0  # resubmissions in a row after losses that were not its own
        self._finishing = False
        self._hard_watched = False
        self._cancel_requested = False
        self._in_batch = False  # sent inside a batch (no backend future of its own)
        #: on a backend with native futures: the handle of this run's full result
        #: while it is in flight, and the upstream handles its arguments refer to
        self._native: NativeHandle | None = None
        self._refs: dict[str, NativeHandle] | None = None
        self._upstream: list[TaskFuture[Any]] = []
        #: None: the arguments hold no allow_failure/quote; else the upstream futures
        #: that may fail (from allow_failure), possibly none
        self._tolerated: list[TaskFuture[Any]] | None = None
        self._scope: RunScope | None = None
        self._stealable = False
        self._stolen = False

    @property
    def task(self) -> Task[..., R]:
        return self._task

    @property
    def call(self) -> TaskCall:
        return self._call

    @property
    def state(self) -> State[R]:
        final = self._state
        if final is not None:
            self._observed = True
            return final
        backend_future = self._backend_future
        if backend_future is not None and backend_future.running():
            return states.Running()
        if self._in_batch or self._stolen:
            # Out in a batch (as a column map's runs are reported), or executing in the
            # thread that waits for it.
            return states.Running()
        return states.Pending()

    def done(self) -> bool:
        return self._state is not None

    def _final(self) -> State[R] | None:
        return self._state

    def _mark_observed(self) -> None:
        self._observed = True

    def _is_observed(self) -> bool:
        return self._observed

    def _wait(self, timeout: float | None) -> bool:
        if self._state is not None:
            return True
        if timeout is None and self._stealable:
            self._steal()
        with _STATE_LOCK:
            if self.done():  # set meanwhile (a method call: mypy would narrow the attribute)
                return True
            done = self._done
            if done is None:
                done = self._done = threading.Lock()
                done.acquire()

        def acquire(seconds: float | None) -> bool:
            return done.acquire(timeout=-1 if seconds is None else max(seconds, 0.0))

        # Woken for a deadline of this thread (a flow's timeout_seconds), issue 12.20.
        if wake_for_deadlines(acquire, timeout):
            done.release()
        return self._state is not None

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        final = self._state
        if final is None:
            return super().result(timeout, raise_on_failure)
        self._observed = True
        return final.result(raise_on_failure=raise_on_failure)  # type: ignore[no-any-return]

    def add_done_callback(self, fn: Callable[[TaskFuture[R]], Any]) -> None:
        with _STATE_LOCK:
            if self._state is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        _call_back(fn, self)

    def cancel(self) -> bool:
        with _STATE_LOCK:
            if self._stolen or self._finishing or self._state is not None:
                return False
            self._cancel_requested = True
        backend_future = self._backend_future
        if backend_future is None:
            if self._in_batch:
                return False  # executing in a batch: stopped only with its worker
            return self._finish(states.Cancelled("cancelled before it was dispatched"))
        return backend_future.cancel()  # the done-callback records Cancelled

    # -- internals ----------------------------------------------------------
    def _finish(self, state: State[Any], worker: Worker | None = None) -> bool:
        """Set the final state once: run hooks and observers, wake waiters, callbacks.
        ``worker``: where the run executed, when known."""
        with _STATE_LOCK:
            if self._state is not None or self._finishing:
                return False
            self._finishing = True
        try:
            report_final_state(self.call, state, self._backend_name(), worker)
        finally:  # even if a hook is interrupted (Ctrl-C, a deadline), never leave waiters hanging
            self._publish(state)
        return True

    def _backend_name(self) -> str | None:
        backend = self._backend
        if backend is not None:
            return backend.name
        return self._scope.slot.name if self._scope is not None else None

    def _publish(self, state: State[Any]) -> None:
        if self._hard_watched and self._backend is not None:
            self._backend.unwatch_deadline(self.call.task_run_id)
        with _STATE_LOCK:
            self._state = state
            callbacks, self._callbacks = self._callbacks, None
            done = self._done
        if self._scope is not None:  # before waking waiters: wait_all() then sees it
            self._scope.finished(self, () if state.type is states.StateType.COMPLETED else (self,))
        if done is not None:
            done.release()
        if callbacks:
            for fn in callbacks:
                _call_back(fn, self)

    def _dispatch(self, backend: Backend, waits_on: list[TaskFuture[Any]]) -> None:
        """Send the call to ``backend`` once every future in ``waits_on`` is done."""
        self._upstream = waits_on
        pending = [f for f in waits_on if not f.done()]
        if not pending:
            self._run_on(backend)
            return
        remaining = [len(pending)]
        lock = threading.Lock()

        def upstream_done(_: TaskFuture[Any]) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                self._run_on(backend)

        for upstream in pending:
            upstream.add_done_callback(upstream_done)

    def _run_on(self, backend: Backend) -> None:
        """Dispatch now (upstreams are done). Runs in callbacks: any failure here ends
        the run ``Crashed`` instead of leaving it pending."""
        try:
            self._send_to(backend)
        except BaseException as exc:
            if not self.done():
                self._backend = backend
                self._backend_refused(exc)
            if not isinstance(exc, Exception):
                raise

    def _send_to(self, backend: Backend) -> None:
        if self._state is not None or self._cancel_requested:  # cancelled meanwhile
            if self._state is None:
                self._finish(states.Cancelled("cancelled before it was dispatched"))
            return
        tolerated = self._tolerated
        for upstream in self._upstream:
            upstream._mark_observed()
            up_state = upstream._final()
            assert up_state is not None
            if not up_state.is_completed() and not (tolerated and any(upstream is t for t in tolerated)):
                self._finish(
                    states.NotRun(
                        f"upstream task run {upstream.name!r} ({upstream.task_run_id}) ended in "
                        f"state {up_state.name}: {up_state.message}",
                        timestamp=time.time(),
                    )
                )
                return
        call = self.call
        capabilities = backend.capabilities
        if tolerated is not None:  # allow_failure / quote among the arguments
            call.args = resolve_inputs(call.args)
            call.kwargs = resolve_inputs(call.kwargs)
            self._upstream = self._tolerated = []
        elif self._upstream:
            if capabilities.remote_results and self._keeps_results_remote():
                self._refs = self._refer_to_upstreams(backend)
            else:
                call.args = resolve_futures(call.args)
                call.kwargs = resolve_futures(call.kwargs)
            self._upstream = []  # do not keep a chain of finished futures alive
        try:
            if self._refs is not None:
                from flowcore.native import run_call_native

                backend_future, self._native = backend.submit_native(run_call_native, call, refs=self._refs)
            else:
                if not capabilities.in_process:
                    runner: Callable[[TaskCall], Any] = run_call_remote
                elif registry.observes_events():
                    runner = run_call_located  # observers are told which thread ran it
                else:
                    runner = run_call
                backend_future = backend.submit(runner, call)
        except Exception as exc:
            self._backend = backend
            self._backend_refused(exc)
            return
        self._stealable = capabilities.in_process and not capabilities.inline
        self._backend = backend
        self._watch_timeout(backend)
        self._backend_future = backend_future
        backend_future.add_done_callback(self._on_backend_done)

    def _keeps_results_remote(self) -> bool:
        """Whether this run's result may stay on a native backend's workers: not for
        the stand-ins that a map's lost batch settles one by one (they belong to no
        scope; the map reads their values from their states)."""
        return self._scope is not None

    def _refer_to_upstreams(self, backend: Backend) -> dict[str, NativeHandle]:
        """Replace each upstream future in the call's arguments by a
        :class:`~flowcore.native.NativeRef` when its value is kept by ``backend``'s
        workers, else by its result; return the handles the refs name."""
        from flowcore.native import NativeValue

        refs: dict[str, NativeHandle] = {}

        def swap(upstream: TaskFuture[Any]) -> Any:
            final = upstream._final()
            data = final.data if final is not None else None
            if isinstance(data, NativeValue) and data.handle.backend is backend and data.handle.native is not None:
                refs[data.handle.key] = data.handle
                return data.ref()
            return upstream.result()

        call = self.call
        call.args = substitute(call.args, TaskFuture, swap)
        call.kwargs = substitute(call.kwargs, TaskFuture, swap)
        return refs

    def _watch_timeout(self, backend: Backend) -> None:
        """Have the backend end the worker if a timed run ignores its timer signal."""
        timeout = self.call.task.options.timeout_seconds
        if timeout is not None and backend.capabilities.hard_timeouts:
            self._hard_watched = True
            backend.watch_deadline(self.call.task_run_id, timeout)

    def _backend_refused(self, exc: BaseException) -> None:
        """``backend.submit`` raised: the run never started; it ends ``Crashed``."""
        crashed = states.Crashed(
            f"backend {getattr(self._backend, 'name', '?')!r} did not accept task run "
            f"{self.call.task_run_name!r}: {type(exc).__name__}: {exc}"
        )
        if crashed.exception is not None:
            crashed.exception.__cause__ = exc
        self._finish(crashed)

    def _steal(self) -> None:
        """Run a queued task in the thread that waits for it (thread backends only).

        A caller blocked on a task that no worker has picked up yet would only wait
        for a hand-off; running it here saves two thread switches and cannot
        deadlock on a full pool. Tasks already running are waited for as usual.
        """
        backend_future = self._backend_future
        if backend_future is None or backend_future.done():
            return
        with _STATE_LOCK:  # one thief at most, and never a cancelled run
            if self._stolen or self._cancel_requested or self._state is not None:
                return
            self._stolen = True
        if not backend_future.cancel():  # a worker has started it
            self._stolen = False
            return
        try:
            # A fresh context, as on a pool thread: the waiter's flow is not the task's.
            state = contextvars.Context().run(run_call, self.call)
        except BaseException:
            self._finish(states.Cancelled("interrupted while running in the waiting thread"))
            raise
        from flowcore.events import current_worker

        self._finish(state, current_worker())

    def _on_backend_done(self, backend_future: cf.Future[Any]) -> None:
        try:
            self._settle(backend_future)
        except Exception as exc:  # never leave the run pending over a bug in handling
            if not self.done():
                self._crashed(exc)

    def _settle(self, backend_future: cf.Future[Any]) -> None:
        try:
            # A value that could not make the trip from the worker raises here (issue 12.15).
            state = raise_if_unsendable(backend_future.result())
        except cf.CancelledError:
            if self._stolen:
                return  # the waiting thread runs it (see _steal)
            self._finish(states.Cancelled("cancelled before it started"))
            return
        except BaseException as exc:  # the machinery failed, not the task: the engine never raises
            delay = self._failed_in_backend(exc)
            if delay is not None:
                self._resubmit(delay)
            elif self._native is not None:
                self._native = self._refs = None  # ended: let the upstream data go
            return
        worker = None
        if type(state) is tuple:  # (state, log records, worker): see run_call_remote
            state, records, worker = state
            if records:
                replay_logs(records)
        handle = self._native
        if handle is not None:  # a light copy: large values stayed on the workers
            from flowcore.native import adopt

            self._native = self._refs = None
            self._finish(adopt(state, handle, None, self.call.task_run_name), worker)
            self._backend_future = None  # no cycle through its callback: the data goes with us
            return
        self._finish(state, worker)

    def _failed_in_backend(self, exc: BaseException) -> float | None:
        """The backend lost the run: explain a pickling failure, count a crash (or a
        timeout enforced by killing the worker) against the retries, or end the run.
        Returns the delay before the run must be dispatched again, or None when the
        run has ended."""
        call = self.call
        backend = self._backend
        if self._cancel_requested:
            self._finish(states.Cancelled("cancelled: its worker was stopped while it ran"))
            return None
        serialization = explain_pickling_failure(call, exc, getattr(backend, "name", "?"))
        if serialization is not None:
            serialization.__cause__ = exc
            self._finish(states.Failed(serialization, attempts=call.attempts_used + 1))
            return None
        explain = getattr(backend, "explain_failure", None)
        lost: WorkerLost | None = explain(call.task_run_id, exc) if explain is not None else None
        if lost is None:
            self._crashed(exc)
            return None
        if not lost.culprit:
            # Only lost along with the pool: send it again, no attempt counted. Bounded
            # whatever the cause (issue 12.15): a run whose own value keeps breaking the
            # pool unrecognised must not rebuild pools forever.
            self._pool_losses += 1
            if self._pool_losses > MAX_POOL_LOSSES:
                crashed = states.Crashed(
                    f"task run {call.task_run_name!r} was lost {MAX_POOL_LOSSES + 1} times in a row "
                    f"with its worker pool, although its own worker never died "
                    f"(last: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    "giving up. If its arguments or result do not survive pickling, pass or "
                    "return plain data",
                    attempts=call.attempts_used,
                )
                if crashed.exception is not None:
                    crashed.exception.__cause__ = exc
                self._finish(crashed)
                return None
            return min(0.1 * (self._pool_losses - 1), 1.0)  # a short, growing pause
        self._pool_losses = 0
        return self._lost_attempt(
            exc, f"task run {call.task_run_name!r}: {lost.message}", timed_out=lost.timed_out
        )

    def _lost_attempt(self, exc: BaseException, message: str, *, timed_out: bool) -> float | None:
        """Count an attempt that died with its worker; end the run or return the retry delay."""
        call = self.call
        call.attempts_used += 1
        policy = call.task.options.retry_policy
        if call.attempts_used > policy.retries:
            if timed_out:
                final = states.TimedOut(message, attempts=call.attempts_used)
            else:
                final = states.Crashed(message, attempts=call.attempts_used)
            if final.exception is not None:
                final.exception.__cause__ = exc
            self._finish(final)
            return None
        delay = policy.delay(call.attempts_used - 1)
        logger.warning(
            "%s; retry %d/%d in %.3g s", message, call.attempts_used, policy.retries, delay
        )
        return delay

    def _resubmit(self, delay: float) -> None:
        """Dispatch the run again, from a fresh thread: the backend's own thread that
        reported the loss may be busy tearing the old pool down."""
        backend = self._backend
        assert backend is not None

        def again() -> None:
            if delay > 0:
                time.sleep(delay)
            self._backend_future = None
            self._run_on(backend)  # ends Cancelled if cancel() came during the delay

        threading.Thread(target=again, name="flowcore-resubmit", daemon=True).start()

    def _crashed(self, exc: BaseException) -> None:
        crashed = states.Crashed(
            f"task run {self.call.task_run_name!r} crashed: {type(exc).__name__}: {exc}"
        )
        if crashed.exception is not None:
            crashed.exception.__cause__ = exc
        self._finish(crashed)


def _call_back(fn: Callable[[Any], Any], future: TaskFuture[Any]) -> None:
    try:
        fn(future)
    except Exception:
        logger.exception("done-callback %r of %r raised; ignored", fn, future)


# -- futures inside arguments --------------------------------------------------

_CONTAINERS = (list, tuple, dict, set, frozenset)
_INPUTS = (TaskFuture, BaseAnnotation)


def collect_futures(obj: Any, found: list[TaskFuture[Any]] | None = None) -> list[TaskFuture[Any]]:
    """Every TaskFuture in ``obj``, looking inside lists, tuples, dicts and sets."""
    if found is None:
        found = []
    _collect(obj, TaskFuture, found)
    return found


def _collect(obj: Any, kind: type | tuple[type, ...], found: list[Any]) -> None:
    if isinstance(obj, kind):
        found.append(obj)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, (kind, _CONTAINERS)):
                _collect(key, kind, found)
            if isinstance(value, (kind, _CONTAINERS)):
                _collect(value, kind, found)
    elif isinstance(obj, _CONTAINERS):
        for item in obj:
            if isinstance(item, (kind, _CONTAINERS)):
                _collect(item, kind, found)


def resolve_futures(obj: Any) -> Any:
    """``obj`` with every (finished) TaskFuture replaced by its result.

    Containers holding futures are rebuilt as the same type: dicts (``defaultdict``
    and ``Counter`` included) as a copy refilled with the resolved items; sequences
    and sets through their constructor, or as the built-in base type when a subclass
    constructor does not take an iterable. Containers without futures are returned
    unchanged (not copied).
    """
    return substitute(obj, TaskFuture, _result_of)


def substitute(obj: Any, kind: type[T], replace: Callable[[T], Any]) -> Any:
    """``obj`` with every instance of ``kind`` replaced by ``replace(instance)``, looking
    inside containers exactly as :func:`resolve_futures` does (which is this function
    for TaskFutures and their results)."""
    if isinstance(obj, kind):
        return replace(obj)
    if not isinstance(obj, _CONTAINERS):
        return obj
    found: list[Any] = []
    _collect(obj, kind, found)
    if not found:
        return obj
    return _rebuild(obj, kind, replace)


def _result_of(future: TaskFuture[Any]) -> Any:
    return future.result()


def collect_inputs(obj: Any, found: list[Any]) -> None:
    """Append to ``found`` every TaskFuture and every :mod:`~flowcore.annotations`
    wrapper in ``obj`` (looking inside containers as :func:`collect_futures` does, never
    inside a wrapper)."""
    _collect(obj, _INPUTS, found)


def holds_inputs(obj: Any) -> bool:
    """Whether ``obj`` holds a TaskFuture or an annotation wrapper."""
    if isinstance(obj, _INPUTS):
        return True
    if not isinstance(obj, _CONTAINERS):
        return False
    found: list[Any] = []
    _collect(obj, _INPUTS, found)
    return bool(found)


def resolve_inputs(obj: Any) -> Any:
    """``obj`` with its (finished) futures replaced by their results, ``quote(x)`` by
    ``x`` and ``allow_failure(x)`` by ``x`` with its futures replaced by their results,
    or by their exceptions where they did not complete."""
    return substitute(obj, _INPUTS, _resolve_input)  # type: ignore[arg-type]


def _resolve_input(item: Any) -> Any:
    if isinstance(item, TaskFuture):
        return item.result()
    if isinstance(item, quote):
        return item.value
    return substitute(item.value, TaskFuture, _outcome_of)


def _outcome_of(future: TaskFuture[Any]) -> Any:
    return future.result(raise_on_failure=False)


def _substitute_in(obj: Any, kind: type, replace: Callable[[Any], Any]) -> Any:
    if isinstance(obj, kind):
        return replace(obj)
    if isinstance(obj, _CONTAINERS):
        return _rebuild(obj, kind, replace)
    return obj


def _rebuild(obj: Any, kind: type, replace: Callable[[Any], Any]) -> Any:
    if isinstance(obj, dict):
        resolved = [(_substitute_in(k, kind, replace), _substitute_in(v, kind, replace)) for k, v in obj.items()]
        if type(obj) is dict:
            return dict(resolved)
        new = copy.copy(obj)  # keeps what the subclass carries (a default_factory ...)
        new.clear()
        for key, value in resolved:
            new[key] = value
        return new
    items = [_substitute_in(item, kind, replace) for item in obj]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*items)
    try:
        return type(obj)(items)
    except TypeError:
        base = next(b for b in (list, tuple, set, frozenset) if isinstance(obj, b))
        return base(items)


# -- waiting on many -------------------------------------------------------------


class DoneAndNotDoneFutures(NamedTuple):
    """What :func:`wait` returns: the futures that finished and those that did not."""

    done: set[TaskFuture[Any]]
    not_done: set[TaskFuture[Any]]


def wait(
    futures: Iterable[TaskFuture[R]], timeout: float | None = None
) -> DoneAndNotDoneFutures:
    """Wait until every future is done or ``timeout`` seconds pass.

    Never raises on timeout: returns ``(done, not_done)`` sets, like
    :func:`concurrent.futures.wait`.
    """
    pending = set(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    for future in list(pending):
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        future.wait(remaining)
    done = {f for f in pending if f.done()}
    return DoneAndNotDoneFutures(done, pending - done)


def as_completed(
    futures: Iterable[TaskFuture[R]], timeout: float | None = None
) -> Iterator[TaskFuture[R]]:
    """Yield futures as they finish (each once), finished ones first.

    Raises :class:`~flowcore.errors.WaitTimeoutError` if ``timeout`` seconds pass (from
    the call) before all are done; the unfinished futures keep running.
    """
    unique = list(dict.fromkeys(futures))
    deadline = None if timeout is None else time.monotonic() + timeout
    finished: queue.SimpleQueue[TaskFuture[R]] = queue.SimpleQueue()
    for future in unique:
        future.add_done_callback(finished.put)
    for yielded in range(len(unique)):
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            if remaining is not None and remaining <= 0:
                yield finished.get_nowait()
            else:
                yield _get_woken_for_deadlines(finished, remaining)
        except queue.Empty:
            raise WaitTimeoutError(
                f"{len(unique) - yielded} of {len(unique)} futures were not done within "
                f"{timeout} s"
            ) from None


async def wait_async(futures: Iterable[TaskFuture[Any]]) -> None:
    """Wait, in a coroutine, until every future in ``futures`` is done; the event loop
    runs on meanwhile (each future wakes it from whichever thread finishes it)."""
    import asyncio

    loop = asyncio.get_running_loop()
    for future in futures:
        if future.done():
            continue
        woken: asyncio.Future[None] = loop.create_future()

        def wake(_: TaskFuture[Any], woken: asyncio.Future[None] = woken) -> None:
            loop.call_soon_threadsafe(_set_once, woken)

        future.add_done_callback(wake)
        await woken


def _set_once(woken: Any) -> None:
    if not woken.done():  # cancelled meanwhile: the waiter has gone
        woken.set_result(None)


def _get_woken_for_deadlines(source: queue.SimpleQueue[T], timeout: float | None) -> T:
    """``source.get(timeout=timeout)``, woken for this thread's deadlines (see
    :func:`flowcore.timeouts.wake_for_deadlines`)."""
    got: list[T] = []

    def get(seconds: float | None) -> bool:
        try:
            got.append(source.get(timeout=seconds))
        except queue.Empty:
            return False
        return True

    if not wake_for_deadlines(get, timeout):
        raise queue.Empty
    return got[0]


__all__ = [
    "DoneAndNotDoneFutures",
    "RunFuture",
    "TaskFuture",
    "as_completed",
    "collect_futures",
    "collect_inputs",
    "holds_inputs",
    "resolve_futures",
    "resolve_inputs",
    "substitute",
    "wait",
    "wait_async",
]
