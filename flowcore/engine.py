"""The one function that runs a task, wherever it lands.

:func:`run_call` runs a :class:`~flowcore.calls.TaskCall` to its final state: it calls
the function, enforces ``timeout_seconds`` per attempt, applies the retry policy
(delays, jitter, ``retry_condition_fn``) and returns a :class:`~flowcore.states.State`.
It never raises for a task failure, so a backend only has to execute it: inline, in a
thread, in another process or on a Dask worker, with no round trip between retries.

:func:`report_final_state` runs in the parent once per task run, with the final state:
it calls the task's ``on_completion``/``on_failure`` hooks and the observer plugins.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from flowcore import journal, states
from flowcore.calls import TaskCall
from flowcore.context import TaskRunContext, _task_run
from flowcore.errors import TaskTimeoutError
from flowcore.registry import get_registry, is_observed, notify
from flowcore.states import State, StateType, completed_run
from flowcore.timeouts import call_with_timeout

logger = logging.getLogger("flowcore.task_runs")


def run_call(call: TaskCall) -> State[Any]:
    """Run ``call`` with retries and timeouts; return its final state. Never raises
    for an exception of the task; ``sys.exit()`` in the body ends the run ``Crashed``
    (see :func:`exit_state`); ``KeyboardInterrupt`` propagates."""
    task = call.task
    options = task.options
    if options.cache is not None:
        from flowcore.caching.runs import run_cached

        return run_cached(call, options.cache, _run_uncached)
    return _run_uncached(call)


def _run_uncached(call: TaskCall) -> State[Any]:
    task = call.task
    options = task.options
    fn = task.fn
    context = TaskRunContext(task, call)
    token = _task_run.set(context)
    journaled = journal._fd is not None  # in a process worker: crashes are traced to runs
    if task._single_attempt and not call.log_prints and not call.attempts_used:
        if journaled:
            journal.record_start(call.task_run_id)
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
            if journaled:
                journal.record_idle()
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
            if journaled:
                journal.record_start(call.task_run_id)
            try:
                if options.timeout_seconds is None:
                    value = fn(*call.args, **call.kwargs)
                else:
                    seconds = options.timeout_seconds
                    own_timeout = TaskTimeoutError(
                        f"task run {call.task_run_name!r} exceeded its timeout of {seconds:g} s"
                    )
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
                if journaled:
                    journal.record_idle()  # not running while it waits to retry
            if attempt > policy.retries or not _should_retry(call, state):
                return _with_timing(state, first_start, attempt)
            policy.wait_before_retry(attempt, state.message, _task_log(call))
    finally:
        if print_token is not None:
            from flowcore.loggers import restore_prints

            restore_prints(print_token)
        _task_run.reset(token)


def run_call_remote(call: TaskCall) -> tuple[State[Any], list[dict[str, Any]]]:
    """:func:`run_call` in a worker process: also returns the run's log records, which
    the parent replays (see :mod:`flowcore.log_relay`)."""
    from flowcore.log_relay import capture

    with capture() as records:
        state = run_call(call)
    return state, records


def failure_state(exc: Exception, timed_out: bool) -> State[Any]:
    """Failed, or TimedOut when ``exc`` is this run's own timeout (not a nested task's)."""
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
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return states.Crashed(exit_message(exc), traceback=text)


def _should_retry(call: TaskCall, state: State[Any]) -> bool:
    condition = call.task.options.retry_condition_fn
    if condition is None:
        return True
    try:
        return bool(condition(call.task, call, state))
    except Exception:
        _task_log(call).exception(
            "retry_condition_fn of task %r raised; not retrying", call.task.name
        )
        return False


def _with_timing(state: State[Any], started: float, attempts: int) -> State[Any]:
    from dataclasses import replace

    return replace(state, started_at=started, finished_at=time.time(), attempts=attempts)


def _task_log(call: TaskCall) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    from flowcore.loggers import task_logger

    return task_logger(TaskRunContext(call.task, call))


def report_final_state(call: TaskCall, state: State[Any]) -> None:
    """Fire the task's hooks and the observers for a final state (once, in the parent)."""
    task = call.task
    options = task.options
    hooks = options.on_completion if state.type is StateType.COMPLETED else options.on_failure
    if not hooks and state.type is StateType.COMPLETED and not get_registry().observes_tasks:
        return  # the common case: nothing to call
    for hook in hooks:
        try:
            hook(task, call, state)
        except Exception:
            _task_log(call).exception(
                "hook %r of task run %r raised; the run's state is unchanged",
                getattr(hook, "__name__", hook),
                call.task_run_name,
            )
    if state.type is not StateType.COMPLETED and logger.isEnabledFor(logging.DEBUG):
        _task_log(call).debug("Finished in state %r", state)
    if is_observed("flowcore_task_run_finished"):
        notify("flowcore_task_run_finished", task=task, call=call, state=state)


__all__ = ["exit_message", "exit_state", "failure_state", "report_final_state", "run_call", "run_call_remote"]
