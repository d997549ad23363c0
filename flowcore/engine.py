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
from dataclasses import replace
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


def run_call(call: TaskCall) -> State[Any]:
    """Run ``call`` with retries and timeouts; return its final state. Never raises
    for an exception of the task; ``sys.exit()`` in the body ends the run ``Crashed``
    (see :func:`exit_state`); ``KeyboardInterrupt`` propagates."""
    task = call.task
    if task.isasync:
        from flowcore.coroutines import run_sync

        return run_sync(run_call_async(call))
    if task._keeps_results or (call.flow_run is not None and call.flow_run.results is not None):
        from flowcore.results import run_with_results

        return run_with_results(call, _run_call_sync)
    return _run_call_sync(call)


def _run_call_sync(call: TaskCall) -> State[Any]:
    options = call.task.options
    try:
        if options.cache is not None:
            from flowcore.caching.runs import run_cached

            return run_cached(call, options.cache, _run_uncached)
        return _run_uncached(call)
    except SystemExit as exc:
        # Raised outside the body (a cache store's code): still this run's end only.
        # Escaping here would kill a Dask worker (restarted, the task re-run).
        return replace(exit_state(exc), finished_at=time.time(), attempts=call.attempts_used + 1)


def _run_uncached(call: TaskCall) -> State[Any]:
    task = call.task
    options = task.options
    fn = task.fn
    context = TaskRunContext(task, call)
    token = _task_run.set(context)
    tracker = _tracker  # in a journaled process worker: crashes are traced to runs
    limited = limited_tags(options.tags) if options.tags else None
    if task._single_attempt and not call.log_prints and not call.attempts_used and not limited:
        if tracker is not None:
            tracker.record_start(call.task_run_id)
        # The common case (no retries, no timeout, no print capture), kept short.
        started = time.time()
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
    first_start = time.time()
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
    if task._keeps_results or (call.flow_run is not None and call.flow_run.results is not None):
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
    first_start = time.time()
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


def run_call_remote(call: TaskCall) -> tuple[State[Any], list[dict[str, Any]], Worker]:
    """:func:`run_call` in a worker process: also returns the run's log records, which
    the parent replays (see :mod:`flowcore.log_relay`), and where it ran."""
    from flowcore.log_relay import capture

    with capture() as records:
        state = run_call(call)
    return state, records, current_worker()


def run_call_located(call: TaskCall) -> tuple[State[Any], tuple[()], Worker]:
    """:func:`run_call` in a thread of this process, saying where it ran (its log
    records are already here: none to replay): the shape of :func:`run_call_remote`.
    The result lives as long as the run's future: no list of its own."""
    return run_call(call), (), current_worker()


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


__all__ = [
    "RunTracker",
    "exit_message",
    "exit_state",
    "failure_state",
    "install_run_tracker",
    "run_call",
    "run_call_async",
    "run_call_located",
    "run_call_remote",
    "run_tracker",
    "task_run_logger",
]
