"""The one function that runs a task, wherever it lands.

:func:`run_call` runs a :class:`~flowcore.calls.TaskCall` to its final state: it calls
the function, enforces ``timeout_seconds`` per attempt, applies the retry policy
(delays, jitter, ``retry_condition_fn``) and returns a :class:`~flowcore.states.State`.
It never raises for a task failure, so a backend only has to execute it: inline, in a
thread, in another process or on a Dask worker, with no round trip between retries.

The engine imports nothing of the parent-side runtime: what happens in the submitting
process once a run has ended (hooks, the run-event stream) is
:mod:`flowcore.reporting`'s.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from threading import get_ident as _get_ident
from typing import TYPE_CHECKING, Any, Protocol

from flowcore import states
from flowcore.calls import TaskCall
from flowcore.context import TaskRunContext, _task_run
from flowcore.errors import TaskTimeoutError
from flowcore.events import current_worker
from flowcore.limits import limited_tags, task_slots
from flowcore.states import State, completed_run
from flowcore.timeouts import call_with_timeout, interrupts_blocking_calls

if TYPE_CHECKING:
    from flowcore.events import Worker

logger = logging.getLogger("flowcore.task_runs")


class RunTracker(Protocol):
    """Notes which task run this worker process executes, so that its backend can pin
    a crash on that run (the worker journal of the process backends implements it)."""

    POSITION_SLOT: int

    def record_start(self, task_run_id: str) -> None:
        """An attempt of ``task_run_id`` starts now."""

    def record_range(self, first_run_id: str) -> None:
        """The consecutive runs from ``first_run_id`` start; the position of the one
        running is stored at ``position_slots()[POSITION_SLOT]``."""

    def position_slots(self) -> memoryview | None:
        """Where the position within a range is stored (None: not tracking)."""

    def record_idle(self) -> None:
        """The attempt ended (blocks while the backend is ending this worker)."""


#: installed in a worker process by its backend's supervision; None elsewhere
_tracker: RunTracker | None = None


def install_run_tracker(tracker: RunTracker) -> None:
    """Have the engine report each run to ``tracker`` in this process (called by a
    worker's journal when it opens)."""
    global _tracker
    _tracker = tracker


def run_tracker() -> RunTracker | None:
    """The tracker of this process, if one is installed."""
    return _tracker


#: the batches of a map executing in this process now, by the id of their first run
#: (see :func:`executing_rows`)
_executing: dict[str, _RowContext] = {}


def executing_rows(first_run_id: str) -> list[tuple[int, float, Worker]]:
    """``[(position, start, worker)]`` of the runs executing now in the batch of a map
    that starts with run ``first_run_id``, when that batch runs in this process (an
    in-process backend); ``[]`` when it does not, or is between two runs. Any thread
    may ask: it reads what the batch's loop leaves in its context."""
    context = _executing.get(first_run_id)
    if context is None or context.ends is None:
        return []
    worker = context.worker
    assert worker is not None
    if context.index < 0:  # the runs of an async task, awaited together since the start
        return [(i, context.started, worker) for i in range(len(context._rows))]
    index, ends = context.index, context.ends
    if len(ends) > index:  # that run has ended, the next one has not begun
        return []
    return [(index, ends[index - 1] if index else context.started, worker)]


def run_call(call: TaskCall) -> State[Any]:
    """Run ``call`` with retries and timeouts; return its final state. Never raises
    for an exception of the task; ``sys.exit()`` in the body ends the run ``Crashed``
    (see :func:`exit_state`); ``KeyboardInterrupt`` propagates."""
    task = call.task
    if task.isasync:
        from flowcore.coroutines import run_sync

        return run_sync(run_call_async(call))
    if task.keeps_results or (call.flow_run is not None and call.flow_run.results is not None):
        from flowcore.results import run_with_results

        return run_with_results(call, _run_call_sync)
    return _run_call_sync(call)


def _run_call_sync(call: TaskCall) -> State[Any]:
    cache = call.task.options.cache
    try:
        if cache is not None:
            from flowcore.caching.runs import run_cached

            return run_cached(call, cache, _run_uncached)
        return _run_uncached(call)
    except SystemExit as exc:
        return _exit_outside_body(call, exc)


def _exit_outside_body(call: TaskCall, exc: SystemExit) -> State[Any]:
    """``sys.exit()`` raised outside the body (a cache store's code): still this run's
    end only. Escaping would kill a Dask worker (restarted, the task re-run)."""
    return replace(exit_state(exc), finished_at=time.time(), attempts=call.attempts_used + 1)


def _run_uncached(call: TaskCall) -> State[Any]:
    task = call.task
    options = task.options
    fn = task.fn
    context = TaskRunContext(task, call)
    token = _task_run.set(context)
    tracker = _tracker  # in a journaled process worker: crashes are traced to runs
    limited = limited_tags(options.tags) if options.tags else None
    if task.single_attempt and not call.log_prints and not call.attempts_used and not limited:
        if tracker is not None:
            tracker.record_start(call.task_run_id)
        # The common case (no retries, no timeout, no print capture), kept short.
        started = call.started_at = time.time()
        call.started_in = _get_ident()
        try:
            value = fn(*call.args, **call.kwargs)
        except Exception as exc:
            return _with_timing(failure_state(exc, False), started, 1)
        except SystemExit as exc:  # ends this run only (issue 12.3); KeyboardInterrupt propagates
            return _with_timing(exit_state(exc), started, 1)
        finally:
            _task_run.reset(token)
            if tracker is not None:
                tracker.record_idle()
        return completed_run(value, started, time.time(), 1)
    policy = options.retry_policy
    print_token = None
    if call.log_prints:
        from flowcore.loggers import redirect_prints, task_logger

        print_token = redirect_prints(task_logger(context))
    first_start = call.started_at = time.time()
    call.started_in = _get_ident()
    attempt = call.attempts_used  # attempts lost with crashed workers count too
    own_timeout: TaskTimeoutError | None = None
    try:
        while True:
            attempt += 1
            context.attempt = attempt
            # Slots are taken before the attempt counts as running (its deadline, the
            # journal) and given back before a retry's delay.
            lease = task_slots(limited, call.task_run_name, task_run_logger(call)) if limited else None
            if tracker is not None:
                tracker.record_start(call.task_run_id)
            try:
                if options.timeout_seconds is None:
                    value = fn(*call.args, **call.kwargs)
                else:
                    seconds = options.timeout_seconds
                    own_timeout = TaskTimeoutError(
                        f"task run {call.task_run_name!r} exceeded its timeout of {seconds:g} s"
                    )
                    if tracker is None and not interrupts_blocking_calls():
                        value = _call_abandoning(call, seconds, own_timeout, attempt)
                    else:
                        value = call_with_timeout(
                            seconds, "", fn, call.args, call.kwargs, error=own_timeout
                        )
            except Exception as exc:
                state = failure_state(exc, exc is own_timeout)
            except SystemExit as exc:
                # sys.exit() asks to stop, not to try again: Crashed, never retried.
                return _with_timing(exit_state(exc), first_start, attempt)
            else:
                return completed_run(value, first_start, time.time(), attempt)
            finally:
                if lease is not None:
                    lease.release()
                if tracker is not None:
                    tracker.record_idle()  # not running while it waits to retry
            if attempt > policy.retries or not _should_retry(call, state):
                return _with_timing(state, first_start, attempt)
            policy.wait_before_retry(attempt, state.message, task_run_logger(call))
    finally:
        if print_token is not None:
            from flowcore.loggers import restore_prints

            restore_prints(print_token)
        _task_run.reset(token)


async def run_call_async(call: TaskCall) -> State[Any]:
    """:func:`run_call` for a task whose body is a coroutine function, awaited on the
    running event loop: the same cache, retries, states and timings. A timeout cancels
    the attempt's coroutine (``asyncio.timeout``) and ends it ``TimedOut``; a body that
    blocks the loop without awaiting is stopped only when it next awaits (on a process
    backend its worker is ended at the deadline, as for a synchronous body). Never
    raises for an exception of the task; cancellation of the awaiting task propagates."""
    task = call.task
    if task.keeps_results or (call.flow_run is not None and call.flow_run.results is not None):
        from flowcore.results import run_with_results_async

        return await run_with_results_async(call, _run_call_async_body)
    return await _run_call_async_body(call)


async def _run_call_async_body(call: TaskCall) -> State[Any]:
    options = call.task.options
    try:
        if options.cache is not None:
            from flowcore.caching.runs import run_cached_async

            return await run_cached_async(call, options.cache, _run_uncached_async)
        return await _run_uncached_async(call)
    except SystemExit as exc:
        return replace(exit_state(exc), finished_at=time.time(), attempts=call.attempts_used + 1)


async def _run_uncached_async(call: TaskCall) -> State[Any]:
    import asyncio

    task = call.task
    options = task.options
    fn = task.fn
    context = TaskRunContext(task, call)
    token = _task_run.set(context)
    tracker = _tracker
    policy = options.retry_policy
    seconds = options.timeout_seconds
    print_token = None
    if call.log_prints:
        from flowcore.loggers import redirect_prints, task_logger

        print_token = redirect_prints(task_logger(context))
    first_start = call.started_at = time.time()
    call.started_in = _get_ident()
    attempt = call.attempts_used
    limited = limited_tags(options.tags) if options.tags else None
    try:
        while True:
            attempt += 1
            context.attempt = attempt
            lease = None
            if limited:  # waiting for slots happens in a thread: the loop runs on
                lease = await asyncio.to_thread(
                    task_slots, limited, call.task_run_name, task_run_logger(call)
                )
            if tracker is not None:
                tracker.record_start(call.task_run_id)
            timer = None
            try:
                if seconds is None:
                    value = await fn(*call.args, **call.kwargs)
                else:
                    timer = asyncio.timeout(seconds)
                    async with timer:
                        value = await fn(*call.args, **call.kwargs)
            except Exception as exc:
                if timer is not None and timer.expired() and isinstance(exc, TimeoutError):
                    own = TaskTimeoutError(
                        f"task run {call.task_run_name!r} exceeded its timeout of {seconds:g} s"
                    )
                    own.__traceback__ = exc.__traceback__
                    state = failure_state(own, True)
                else:
                    state = failure_state(exc, False)
            except SystemExit as exc:
                return _with_timing(exit_state(exc), first_start, attempt)
            else:
                return completed_run(value, first_start, time.time(), attempt)
            finally:
                if lease is not None:
                    lease.release()
                if tracker is not None:
                    tracker.record_idle()
            if attempt > policy.retries or not _should_retry(call, state):
                return _with_timing(state, first_start, attempt)
            await policy.wait_before_retry_async(attempt, state.message, task_run_logger(call))
    finally:
        if print_token is not None:
            from flowcore.loggers import restore_prints

            restore_prints(print_token)
        _task_run.reset(token)


def _call_abandoning(call: TaskCall, seconds: float, error: TaskTimeoutError, attempt: int) -> Any:
    """One attempt of a timed run in a thread whose timer cannot interrupt blocking calls
    (a thread of the flow's own process): the body runs in a helper thread (whose timer
    still stops Python code), and this thread waits at most ``seconds``. A body still
    blocked then is abandoned -- it runs on until its call returns, and what it returns
    is discarded -- so the run ends ``TimedOut`` at its deadline and neither its retry
    nor the end of the flow waits for it. (In a worker process the backend ends the
    worker instead: see ``Backend.watch_deadline``.)"""
    context = contextvars.copy_context()  # the run's context: its logger, print capture
    finished = threading.Event()
    outcome: list[tuple[bool, Any]] = []

    def attempt_body() -> None:
        try:
            value = context.run(
                call_with_timeout, seconds, "", call.task.fn, call.args, call.kwargs, error=error
            )
            outcome.append((True, value))
        except BaseException as exc:  # handed to the waiting thread
            outcome.append((False, exc))
        finally:
            finished.set()

    helper = threading.Thread(
        target=attempt_body, name=f"flowcore-timed-{call.task_run_name}", daemon=True
    )
    helper.start()
    if not finished.wait(seconds):
        task_run_logger(call).warning(
            "attempt %d exceeded its timeout of %g s inside a call that cannot be interrupted "
            "in a thread (%s); it is abandoned: it runs on until that call returns, and its "
            "result will be discarded",
            attempt,
            seconds,
            helper.name,
        )
        raise error
    ok, payload = outcome[0]
    if ok:
        return payload
    raise payload


def run_call_remote(
    call: TaskCall, collect_logs: bool = True
) -> tuple[State[Any], Sequence[dict[str, Any]], Worker]:
    """The one-run entry point that backends execute: :func:`run_call`, plus the run's
    log records (collected for the parent to replay, see :mod:`flowcore.log_relay`;
    with ``collect_logs=False``, in a thread of the submitting process, they are
    emitted as the run makes them and none are returned) and where it ran."""
    if not collect_logs:
        return run_call(call), (), current_worker()
    from flowcore.log_relay import capture

    with capture() as records:
        state = run_call(call)
    return state, records, current_worker()


def lost_attempt(
    call: TaskCall, cause: BaseException, message: str, *, timed_out: bool
) -> State[Any] | float:
    """An attempt of ``call`` died with its worker (or its worker was ended at the
    run's deadline): count it against the task's retry policy, as the attempts that
    fail in :func:`run_call` are. Returns the run's final state (``TimedOut`` or
    ``Crashed``, caused by ``cause``) when no retry is left, else the delay in seconds
    before the run is sent again (``call.attempts_used`` then counts the lost one)."""
    call.attempts_used += 1
    policy = call.task.options.retry_policy
    if call.attempts_used > policy.retries:
        final = (states.TimedOut if timed_out else states.Crashed)(message, attempts=call.attempts_used)
        if final.exception is not None:
            final.exception.__cause__ = cause
        return final
    delay = policy.delay(call.attempts_used - 1)
    logger.warning("%s; retry %d/%d in %.3g s", message, call.attempts_used, policy.retries, delay)
    return delay


def failure_state(exc: Exception, timed_out: bool) -> State[Any]:
    """Failed, or TimedOut when ``exc`` is this run's own timeout (not a nested task's)."""
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if timed_out:
        return State(
            states.StateType.FAILED, "TimedOut", str(exc), exception=exc, traceback=text
        )
    return states.Failed(exc, traceback=text)


def exit_message(exc: SystemExit) -> str:
    """How a task's ``sys.exit()`` is reported: "the task called sys.exit(3)"."""
    code = "" if exc.code is None else repr(exc.code)
    return (
        f"the task called sys.exit({code}); a task cannot end the process it runs in: "
        "raise an exception to fail the run"
    )


def exit_state(exc: SystemExit) -> State[Any]:
    """The state of a run whose body called ``sys.exit()``: Crashed, on every backend.

    Caught where the body runs (here, and in :mod:`flowcore.mapped`), so the flow and
    the process go on, and a worker process or thread is not lost with it."""
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return states.Crashed(exit_message(exc), traceback=text)


def _should_retry(call: TaskCall, state: State[Any]) -> bool:
    condition = call.task.options.retry_condition_fn
    if condition is None:
        return True
    try:
        return bool(condition(call.task, call, state))
    except Exception:
        task_run_logger(call).exception(
            "retry_condition_fn of task %r raised; not retrying", call.task.name
        )
        return False


def _with_timing(state: State[Any], started: float, attempts: int) -> State[Any]:
    from dataclasses import replace

    return replace(state, started_at=started, finished_at=time.time(), attempts=attempts)


def task_run_logger(call: TaskCall) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """The run logger of ``call``'s task run (its records carry the run's fields)."""
    from flowcore.loggers import task_logger

    return task_logger(TaskRunContext(call.task, call))


# -- many runs in one trip: the rows entry point -----------------------------------------

#: What a batch of rows sends back: values, finish times, when the batch started, the
#: full states of runs that did not simply complete in one attempt (by position), log
#: records, and where the batch ran.
BatchResult = tuple[list[Any], list[float], float, dict[int, State[Any]], list[dict[str, Any]], "Worker"]


def run_name_of(task: Any, number: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The name of a map's run: ``<task>-<number>``, or the task's ``task_run_name``
    template filled with the run's arguments (the same in the parent and the worker)."""
    template = task.options.task_run_name
    if template is None:
        return f"{task.name}-{number}"
    assert isinstance(template, str)  # callables never reach a column map
    return template.format(**task.bind(args, kwargs))


class Rows(Protocol):
    """The arguments of a batch's runs, one row per run."""

    @property
    def count(self) -> int: ...

    def arg_rows(self) -> list[tuple[Any, ...]]: ...

    def kwarg_rows(self) -> list[dict[str, Any]] | None: ...


@dataclass(slots=True)
class SubmittedRuns:
    """The rows of runs submitted one by one and sent together (a coalesced batch):
    arguments, run ids, names and the attempts each has used so far, in order."""

    args: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]]
    run_ids: list[str]
    names: list[str]
    attempts: list[int]

    @property
    def count(self) -> int:
        return len(self.args)

    def arg_rows(self) -> list[tuple[Any, ...]]:
        return self.args

    def kwarg_rows(self) -> list[dict[str, Any]] | None:
        return self.kwargs if any(self.kwargs) else None

    @classmethod
    def of(cls, calls: list[TaskCall]) -> tuple[Any, tuple[Any, ...], SubmittedRuns]:
        """``(task, batch_call, runs)`` for :func:`run_rows` from calls of one task in
        one flow run."""
        first = calls[0]
        batch_call = (
            first.flow_run_id, first.flow_run_name, first.flow_name, first.log_prints, 0,
            first.flow_parameters_key, first.flow_run, first.backend,
        )
        runs = cls(
            [c.args for c in calls], [c.kwargs for c in calls], [c.task_run_id for c in calls],
            [c.task_run_name for c in calls], [c.attempts_used for c in calls],
        )
        return first.task, batch_call, runs


class _RowContext(TaskRunContext):
    """The task run context of the runs of one batch: the loop moves ``index``; the
    call and the logger of the current run are made only if the task asks."""

    __slots__ = (
        "_batch_call", "_call_index", "_first", "_kw_rows", "_prefix", "_rows", "_submitted", "ends", "index",
        "started", "worker",
    )

    def __init__(
        self,
        task: Any,
        batch_call: tuple[Any, ...],
        first_run_id: str | None,
        rows: Rows,
    ) -> None:
        super().__init__(task, None)
        if first_run_id is None:
            assert isinstance(rows, SubmittedRuns)
            self._submitted: SubmittedRuns | None = rows
            self._prefix, self._first = "", 0
        else:
            self._submitted = None
            prefix, _, number = first_run_id.rpartition("-")
            self._prefix, self._first = prefix, int(number, 16)
        self._batch_call = batch_call
        self._rows = rows.arg_rows()
        self._kw_rows = rows.kwarg_rows()
        self._call_index = -1
        self.index = 0
        #: set by the loop of a batch that runs in this process (see executing_rows):
        #: when it started, the ends of its runs so far, and where
        self.ends: list[float] | None = None
        self.started = 0.0
        self.worker: Worker | None = None

    def run_name(self, index: int) -> str:
        if self._submitted is not None:
            return self._submitted.names[index]
        args, kwargs = self._rows[index], self._kw_rows[index] if self._kw_rows else {}
        return run_name_of(self.task, self._first + index + self._batch_call[4], args, kwargs)

    def call_at(self, index: int) -> TaskCall:
        (flow_run_id, flow_run_name, flow_name, log_prints, _, parameters_key, flow_run,
         backend) = self._batch_call
        args, kwargs = self._rows[index], self._kw_rows[index] if self._kw_rows else {}
        submitted = self._submitted
        if submitted is not None:
            run_id, attempts = submitted.run_ids[index], submitted.attempts[index]
        else:
            run_id, attempts = f"{self._prefix}-{self._first + index:x}", 0
        return TaskCall(
            self.task, args, kwargs, run_id, self.run_name(index), flow_run_id, flow_run_name,
            flow_name, 0.0, log_prints, attempts, parameters_key, flow_run, backend,
        )

    @property
    def call(self) -> TaskCall:
        call = self._call
        if call is None or self._call_index != self.index:
            call = self._call = self.call_at(self.index)
            self._call_index = self.index
            self.logger = None
        return call

    def cached_logger(self) -> logging.LoggerAdapter[logging.Logger] | None:
        return self.logger if self._call_index == self.index else None


def run_rows(
    task: Any,
    batch_call: tuple[Any, ...],
    first_run_id: str | None,
    rows: Rows,
    skip: frozenset[int] = frozenset(),
    collect_logs: bool = True,
) -> BatchResult:
    """The many-runs entry point that backends execute: run a batch's rows one after
    the other (the runs of an async task awaited together) where the backend put it.

    ``batch_call``: what the runs share (flow run id, name, flow name, log_prints, the
    offset from a run's id number to its name number, the flow parameters' key, the
    flow run, the backend's name). ``first_run_id``: the id of the first run of a
    map's consecutive runs (ids and names are computed), or None when ``rows`` is a
    :class:`SubmittedRuns` that names them. Runs whose position is in ``skip`` are not
    run (cancelled before the batch left). In a worker process the run loggers'
    records are collected and returned for the parent to replay; on an in-process
    backend (``collect_logs=False``) they are emitted here, as the runs make them.
    """
    context = _RowContext(task, batch_call, first_run_id, rows)
    if not collect_logs:
        worker = context.worker = current_worker()
        if first_run_id is None:
            return (*_run_rows(context, first_run_id, skip), [], worker)
        _executing[first_run_id] = context  # its runs read Running in the history
        try:
            return (*_run_rows(context, first_run_id, skip), [], worker)
        finally:
            del _executing[first_run_id]
    from flowcore.log_relay import capture
    from flowcore.serialization import Repairable

    with capture() as records:
        values, ends, started, exact = _run_rows(context, first_run_id, skip)
    worker = current_worker()

    def repair() -> tuple[Any, ...]:  # issue 12.22: only the culprits fail, nothing reruns
        return _sendable_rows(context, (values, ends, started, exact, records, worker))

    return Repairable((values, ends, started, exact, records, worker), repair)


def _sendable_rows(context: _RowContext, outcome: BatchResult) -> BatchResult:
    """A batch's outcome (in the worker, when it failed to pickle) in which each run
    whose value or state does not pickle has a ``Failed`` state naming it and the type
    at fault instead (its value: None); every other run's result is kept (issue 12.22)."""
    from flowcore.serialization import pickling_error, unsendable_error

    values, ends, started, exact, records, worker = outcome
    values, exact = list(values), dict(exact)
    for index, value in enumerate(values):
        state = exact.get(index)
        error = pickling_error(value if state is None else (value, state))
        if error is None:
            continue
        name = context.run_name(index)
        began = ends[index - 1] if index else started
        values[index] = None
        if state is None:
            exact[index] = states.Failed(
                unsendable_error(name, value, error), started_at=began, finished_at=ends[index], attempts=1
            )
            continue
        raised = state.exception is not None and pickling_error(state.exception) is not None
        exact[index] = states.Failed(
            unsendable_error(name, state.exception if raised else state.data, error, exception=raised),
            traceback=state.traceback if raised else None,
            started_at=state.started_at, finished_at=state.finished_at, attempts=state.attempts,
        )
    return values, ends, started, exact, records, worker


def _run_rows(
    context: _RowContext, first_run_id: str | None, skip: frozenset[int]
) -> tuple[list[Any], list[float], float, dict[int, State[Any]]]:
    task = context.task
    rows = context._rows
    kw_rows = context._kw_rows
    values: list[Any] = []
    ends: list[float] = []
    exact: dict[int, State[Any]] = {}
    append = values.append
    finished = ends.append
    now = time.time
    started = context.started = now()
    context.ends = ends
    flow_run = context._batch_call[6]
    kept = task.keeps_results or (flow_run is not None and flow_run.results is not None)
    if task.isasync and _tracker is None:
        # Coroutine bodies wait together on this thread's loop. Not in a journaled
        # worker process: there a crash is pinned on the one run executing.
        context.index = -1
        return _await_rows(context, len(rows), skip, started)
    if (
        first_run_id is None or kept or not task.single_attempt or context._batch_call[3]
        or task.isasync or limited_tags(task.options.tags)
    ):
        # Runs submitted one by one, retries, print capture, a coroutine body or results
        # kept (or resumed): each run goes through the engine; a run with a kept result
        # is reported exactly.
        for index in range(len(rows)):
            context.index = index
            if index in skip:
                append(None)
                finished(now())
                continue
            state = run_call(context.call_at(index))
            append(state.data)
            finished(now())
            if (
                state.name != "Completed" or state.attempts != 1 or state.result_location is not None
                or state.cache_key is not None
            ):
                exact[index] = state
        return values, ends, started, exact
    fn = task.fn
    tracker = _tracker
    slots = tracker.position_slots() if tracker is not None else None
    position = tracker.POSITION_SLOT if tracker is not None else 0
    token = _task_run.set(context)
    if tracker is not None:
        tracker.record_range(first_run_id)
    try:
        for index, args in enumerate(rows):
            context.index = index
            if slots is not None:
                slots[position] = index
            if skip and index in skip:
                append(None)
            else:
                try:
                    append(fn(*args, **kw_rows[index]) if kw_rows else fn(*args))
                except Exception as exc:
                    append(None)
                    exact[index] = _timed(failure_state(exc, False), ends[-1] if ends else started, now())
                except SystemExit as exc:  # this run ends Crashed, as in the engine
                    append(None)
                    exact[index] = _timed(exit_state(exc), ends[-1] if ends else started, now())
            finished(now())
    finally:
        _task_run.reset(token)
        if tracker is not None:
            tracker.record_idle()
    return values, ends, started, exact


def _await_rows(
    context: _RowContext, count: int, skip: frozenset[int], started: float
) -> tuple[list[Any], list[float], float, dict[int, State[Any]]]:
    """The runs of a batch of an async task, awaited at once (``asyncio.gather`` of
    :func:`run_call_async`) on this thread's event loop: a batch of I/O-bound runs
    takes about as long as its slowest run."""
    from flowcore.coroutines import run_sync

    indexes = [index for index in range(count) if not (skip and index in skip)]
    ended = run_sync(_gather_runs([context.call_at(index) for index in indexes]))
    values: list[Any] = [None] * count
    ends: list[float] = [started] * count
    exact: dict[int, State[Any]] = {}
    for index, state in zip(indexes, ended, strict=True):
        values[index] = state.data
        ends[index] = state.finished_at or time.time()
        if (
                state.name != "Completed" or state.attempts != 1 or state.result_location is not None
                or state.cache_key is not None
            ):
            exact[index] = state
    return values, ends, started, exact


async def _gather_runs(calls: list[TaskCall]) -> list[State[Any]]:
    import asyncio

    return list(await asyncio.gather(*(run_call_async(call) for call in calls)))


def _timed(state: State[Any], started: float, finished: float) -> State[Any]:
    return replace(state, started_at=started, finished_at=finished, attempts=1)


def rows_state(values: list[Any], ends: list[float], started: float, exact: dict[int, State[Any]], index: int) -> State[Any]:
    """The final state of run ``index`` of a batch's outcome (see :data:`BatchResult`):
    its exact state, or a completed one that began when the run before it ended."""
    state = exact.get(index)
    if state is not None:
        return state
    return completed_run(values[index], ends[index - 1] if index else started, ends[index], 1)


__all__ = [
    "BatchResult",
    "Rows",
    "RunTracker",
    "SubmittedRuns",
    "exit_message",
    "exit_state",
    "failure_state",
    "install_run_tracker",
    "rows_state",
    "run_call",
    "run_call_async",
    "run_call_remote",
    "run_name_of",
    "run_rows",
    "run_tracker",
    "task_run_logger",
]
