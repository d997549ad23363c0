"""Task futures: the handle ``.submit`` returns, and the functions that wait on many.

A :class:`TaskFuture` reaches its final :class:`~flowcore.states.State` exactly once.
Before that its ``state`` is ``Pending`` (waiting for upstream futures or a worker)
or ``Running``. A future whose arguments contain other futures is dispatched to the
backend from a callback when the last of them finishes, so ``.submit`` never blocks;
if one of them did not complete, the task is not run and ends ``NotRun``.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from flowcore import states
from flowcore.annotations import BaseAnnotation, quote
from flowcore.errors import WaitTimeoutError
from flowcore.reporting import report_final_state
from flowcore.states import State
from flowcore.timeouts import wake_for_deadlines

if TYPE_CHECKING:
    from flowcore.backend import Backend
    from flowcore.calls import TaskCall
    from flowcore.context import RunScope
    from flowcore.events import Worker
    from flowcore.tasks import Task

R = TypeVar("R")
T = TypeVar("T")

# Guards every future's final state, waiter lock and callbacks: held for a few
# instructions at a time, and cheaper than two locks per future.
_STATE_LOCK = threading.Lock()

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

    def __reduce__(self) -> tuple[Any, ...]:
        # A future lives in the process that submitted its run: it never travels. The
        # one way one reaches pickle is an argument left unresolved on purpose
        # (quote()) on its way to a worker process: say so, not "cannot pickle lock".
        try:
            name = repr(self.name)
        except Exception:
            name = "(unnamed)"
        raise TypeError(
            f"a TaskFuture {name} cannot be sent to another process (quote() leaves futures "
            "unresolved): pass it unquoted, so that the run gets its result, or pass future.result()"
        )

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

    def live_run_ids(self) -> set[str]:
        """The ids of this future's runs that may be executing in a worker now."""
        return set() if self.done() else {self.task_run_id}


class RunFuture(TaskFuture[R]):
    """The future of one run dispatched on its own (or in a batch of calls).

    The dispatcher that sends the run (:mod:`flowcore.dispatch`) moves it through its
    states with the *transition API* below, and nothing else changes a RunFuture's
    state -- as ``concurrent.futures.Future.set_running_or_notify_cancel`` /
    ``set_result`` are for Executor implementations:

    * :meth:`set_sent` -- handed to a backend (on its own, with the backend's future,
      or inside a batch); a cancel request is answered from here on;
    * :meth:`claim` / :meth:`unclaim` -- the waiting thread takes a queued run to run
      it itself (thread backends);
    * :meth:`set_final` -- the final state, exactly once: hooks and the run-event
      stream, then waiters wake and done-callbacks run.

    :attr:`dispatch` holds the sending dispatcher's own record of the run (upstreams,
    native handles, losses); no one else reads it.
    """

    __slots__ = (
        "_backend",
        "_backend_future",
        "_call",
        "_callbacks",
        "_cancel_requested",
        "_claimed",
        "_done",
        "_finishing",
        "_in_batch",
        "_observed",
        "_on_block",
        "_scope",
        "_state",
        "_task",
        "dispatch",
    )

    def __init__(self, task: Task[..., R], call: TaskCall, scope: RunScope | None = None) -> None:
        self._task = task
        self._call = call
        #: the scope that tracks the run (None: a stand-in that belongs to no scope)
        self._scope = scope
        self._state: State[R] | None = None
        # Made by the first waiter and held until the final state is set; most futures
        # of a big map are finished before anyone waits, and never need one.
        self._done: threading.Lock | None = None
        self._callbacks: list[Callable[[TaskFuture[R]], Any]] | None = None
        self._backend_future: cf.Future[Any] | None = None
        self._backend: Backend | None = None
        self._observed = False
        self._finishing = False
        self._cancel_requested = False
        self._in_batch = False  # sent inside a batch (no backend future of its own)
        self._claimed = False  # executing in the thread that waits for it
        #: called by a thread about to block on this run (see set_sent)
        self._on_block: Callable[[RunFuture[R]], None] | None = None
        #: the dispatcher's record of this run (opaque to everything else)
        self.dispatch: Any = None

    @property
    def task(self) -> Task[..., R]:
        return self._task

    @property
    def call(self) -> TaskCall:
        return self._call

    @property
    def scope(self) -> RunScope | None:
        """The scope that tracks this run; None for a stand-in of a map's lost run."""
        return self._scope

    @property
    def backend(self) -> Backend | None:
        """The backend the run was handed to (None before it was sent)."""
        return self._backend

    @property
    def backend_name(self) -> str | None:
        """The name of the backend that runs it (its scope's, before it is sent)."""
        backend = self._backend
        if backend is not None:
            return backend.name
        return self._scope.slot.name if self._scope is not None else None

    @property
    def backend_future(self) -> cf.Future[Any] | None:
        """The backend's future of a run sent on its own, until it is final."""
        return self._backend_future

    @property
    def cancel_requested(self) -> bool:
        """True once :meth:`cancel` was asked for (or :meth:`request_cancel`)."""
        return self._cancel_requested

    @property
    def state(self) -> State[R]:
        final = self._state
        if final is not None:
            self._observed = True
            return final
        backend_future = self._backend_future
        if backend_future is not None and backend_future.running():
            return states.Running()
        if self._in_batch or self._claimed:
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
        on_block = self._on_block
        if timeout is None and on_block is not None:
            on_block(self)
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
        call_back(fn, self)

    def cancel(self) -> bool:
        with _STATE_LOCK:
            if self._claimed or self._finishing or self._state is not None:
                return False
            self._cancel_requested = True
        backend_future = self._backend_future
        if backend_future is None:
            if self._in_batch:
                return False  # executing in a batch: stopped only with its worker
            return self.set_final(states.Cancelled("cancelled before it was dispatched"))
        return backend_future.cancel()  # the dispatcher's done-callback records Cancelled

    # -- the transition API (for dispatchers) ------------------------------------
    def set_sent(
        self,
        backend: Backend,
        backend_future: cf.Future[Any] | None = None,
        on_block: Callable[[RunFuture[R]], None] | None = None,
        *,
        queued: bool = False,
    ) -> None:
        r"""The run was handed to ``backend``: with ``backend_future`` when it travels
        on its own (its cancellation then cancels the run; the future is ``Running``
        once that one runs); ``queued``: as a work item that a worker (or a waiting
        thread) :meth:`claim`\ s -- cancellable until then; else inside a batch
        (``Running`` from now on, cancelled only with its worker). ``on_block(self)``
        is called by a thread about to wait for the run without a timeout (a thread
        backend runs a queued run there)."""
        self._backend = backend
        self._backend_future = backend_future
        self._in_batch = backend_future is None and not queued
        self._on_block = on_block

    def unsend(self) -> None:
        """The run came back without a final state and will be sent again."""
        self._backend_future = None
        self._in_batch = False
        self._on_block = None

    def request_cancel(self) -> None:
        """Record a cancel request without acting on it (a stand-in inherits it)."""
        self._cancel_requested = True

    def claim(self) -> bool:
        """Take the run to execute it in the calling thread: False if it was cancelled,
        finished, or taken already. The caller must then cancel its backend future and
        :meth:`unclaim` if that fails."""
        with _STATE_LOCK:  # one thief at most, and never a cancelled run
            if self._claimed or self._cancel_requested or self._state is not None:
                return False
            self._claimed = True
            return True

    def unclaim(self) -> None:
        """A worker started the run first: the claiming thread waits as usual."""
        self._claimed = False

    @property
    def claimed(self) -> bool:
        """Whether the waiting thread runs (or ran) this run itself."""
        return self._claimed

    def set_final(self, state: State[Any], worker: Worker | None = None) -> bool:
        """Set the final state once: run hooks and observers, wake waiters, callbacks.
        ``worker``: where the run executed, when known. False if it was set already."""
        with _STATE_LOCK:
            if self._state is not None or self._finishing:
                return False
            self._finishing = True
        backend = self._backend
        if backend is not None:
            backend_name: str | None = backend.name
        else:  # self.backend_name, inlined: this runs once per run
            backend_name = self._scope.slot.name if self._scope is not None else None
        try:
            report_final_state(self._call, state, backend_name, worker)
        finally:  # even if a hook is interrupted (Ctrl-C, a deadline), never leave waiters hanging
            self._publish(state)
        return True

    def _publish(self, state: State[Any]) -> None:
        with _STATE_LOCK:
            self._state = state
            callbacks, self._callbacks = self._callbacks, None
            done = self._done
        self._on_block = None
        self._backend_future = None  # no cycle through its callback: results may be large
        scope = self._scope
        if scope is not None:  # before waking waiters: wait_all() then sees it
            if state.type is states.StateType.COMPLETED:
                scope.finished(self)
            else:
                scope.finished(self, (self,))
        if done is not None:
            done.release()
        if callbacks:
            for fn in callbacks:
                call_back(fn, self)


def final_state(future: TaskFuture[R]) -> State[R] | None:
    """``future``'s final state, or None while it runs; for the runtime: unlike
    ``future.state`` it does not count as looking at the outcome."""
    return future._final()


def mark_observed(future: TaskFuture[Any]) -> None:
    """Someone looked at ``future``'s outcome (its failure is then not reported as one
    that nobody saw)."""
    future._mark_observed()


def observe_final(future: TaskFuture[R]) -> State[R] | None:
    """:func:`mark_observed`, then :func:`final_state`: how the dispatcher reads each
    upstream's outcome before it sends a downstream run (one call, not four, per
    upstream of every run that waits on futures)."""
    if type(future) is RunFuture:
        future._observed = True
        return future._state
    future._mark_observed()
    return future._final()


def is_observed(future: TaskFuture[Any]) -> bool:
    """Whether anyone looked at ``future``'s outcome (state, result, a downstream run)."""
    return future._is_observed()


def call_back(fn: Callable[[Any], Any], future: TaskFuture[Any]) -> None:
    """Call a done-callback: its exception is logged, never raised."""
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


#: from this many items on, a container's item types are checked first (one pass in C)
_TYPE_SCAN_FROM = 32


def _may_hold(items: Iterable[Any], kind: type | tuple[type, ...]) -> bool:
    """False when no item of ``items`` is a ``kind`` or a container: one pass over the
    items' types in C, so that a large column of plain values (a map's inputs, a flow
    returning 200,000 results) is not inspected item by item in Python."""
    return any(issubclass(t, kind) or issubclass(t, _CONTAINERS) for t in set(map(type, items)))


def _collect(obj: Any, kind: type | tuple[type, ...], found: list[Any]) -> None:
    if isinstance(obj, kind):
        found.append(obj)
    elif isinstance(obj, dict):
        if len(obj) >= _TYPE_SCAN_FROM and not (_may_hold(obj, kind) or _may_hold(obj.values(), kind)):
            return
        for key, value in obj.items():
            if isinstance(key, (kind, _CONTAINERS)):
                _collect(key, kind, found)
            if isinstance(value, (kind, _CONTAINERS)):
                _collect(value, kind, found)
    elif isinstance(obj, _CONTAINERS):
        if len(obj) >= _TYPE_SCAN_FROM and not _may_hold(obj, kind):
            return
        for item in obj:
            if isinstance(item, (kind, _CONTAINERS)):
                _collect(item, kind, found)


def column_holds_inputs(values: Iterable[Any]) -> bool:
    """Whether any item of ``values`` (a column of a map's arguments) holds a TaskFuture
    or an annotation wrapper (see :func:`holds_inputs`)."""
    items = values if isinstance(values, (list, tuple)) else list(values)
    if not _may_hold(items, _INPUTS):
        return False
    return any(holds_inputs(item) for item in items)


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
    if type(obj) is FutureList:  # map's futures, resolved: their values, as a plain list
        return items
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


def _futures_given(futures: Iterable[TaskFuture[R]], caller: str) -> list[TaskFuture[R]]:
    """``futures`` as a list; TypeError naming the first item that is not a TaskFuture
    (or the one future given where a list was expected)."""
    if isinstance(futures, TaskFuture):
        raise TypeError(f"{caller} takes a list of futures, got one: write {caller[:-1]}[future])")
    items: list[Any] = list(futures)  # what the caller gave, whatever the annotation says
    for index, item in enumerate(items):
        if not isinstance(item, TaskFuture):
            name = type(item).__name__
            article = "an" if name[:1] in "aeiou" else "a"
            raise TypeError(
                f"{caller}: item {index} is {article} {name} ({item!r:.60}), not a TaskFuture; "
                "pass the futures that .submit() and .map() return"
            )
    return items


def wait(
    futures: Iterable[TaskFuture[R]], timeout: float | None = None
) -> DoneAndNotDoneFutures:
    """Wait until every future is done or ``timeout`` seconds pass.

    Never raises on timeout: returns ``(done, not_done)`` sets, like
    :func:`concurrent.futures.wait`.
    """
    pending = set(_futures_given(futures, "flowcore.wait()"))
    deadline = None if timeout is None else time.monotonic() + timeout
    for future in list(pending):
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        future.wait(remaining)
    done = {f for f in pending if f.done()}
    return DoneAndNotDoneFutures(done, pending - done)


class FutureList(list[TaskFuture[R]]):
    """What ``Task.map`` returns: a plain list of its runs' futures, with the two
    methods of Prefect's ``PrefectFutureList``. Resolved (a flow returning it, an
    argument of a run), it becomes a plain list of values."""

    __slots__ = ()

    def wait(self, timeout: float | None = None) -> None:
        """Wait until every run is done or ``timeout`` seconds pass (never raises on
        timeout: look at each future's ``done()``)."""
        wait(self, timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        """The runs' values in order, waiting at most ``timeout`` seconds in all
        (:class:`~flowcore.errors.WaitTimeoutError` after that); a run that did not
        complete raises its exception, or gives it with ``raise_on_failure=False``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values: list[R] = []
        for future in self:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(future.result(remaining, raise_on_failure))
        return values


def as_completed(
    futures: Iterable[TaskFuture[R]], timeout: float | None = None
) -> Iterator[TaskFuture[R]]:
    """Yield futures as they finish (each once), finished ones first.

    Raises :class:`~flowcore.errors.WaitTimeoutError` if ``timeout`` seconds pass (from
    the call) before all are done; the unfinished futures keep running.
    """
    unique = list(dict.fromkeys(_futures_given(futures, "flowcore.as_completed()")))
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
    "FutureList",
    "RunFuture",
    "TaskFuture",
    "as_completed",
    "call_back",
    "collect_futures",
    "collect_inputs",
    "final_state",
    "holds_inputs",
    "is_observed",
    "mark_observed",
    "observe_final",
    "resolve_futures",
    "resolve_inputs",
    "substitute",
    "wait",
    "wait_async",
]
