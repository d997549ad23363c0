"""Flows: values and states, retries, timeouts, subflows, backend ownership, hooks, and
the report of failures nobody looked at."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

import flowcore
from flowcore import flow, task
from flowcore import states as st
from flowcore.calls import FlowRun
from flowcore.context import current_scope
from flowcore.errors import BackendShutdownError, TaskTimeoutError
from flowcore.states import State

# Generous upper bound that only proves "did not hang" (2 noisy shared cores).
NO_HANG = 15.0


class Boom(Exception):
    """A task's or flow's own exception type."""


@task
def double(x: int) -> int:
    return x * 2


@task
def wait_on(event: threading.Event, seconds: float) -> bool:
    return event.wait(seconds)


@task(name="failing-task")
def failing(message: str) -> None:
    raise Boom(message)


def _backend() -> Any:
    scope = current_scope()
    assert scope is not None
    return scope.backend()


# -- values and states ------------------------------------------------------------------


def test_flow_returns_its_value() -> None:
    @flow
    def pipeline(x: int, y: int = 1) -> int:
        return double.submit(x).result() + double(y)

    assert pipeline(3) == 8
    assert pipeline(3, y=2) == 10


def test_flow_that_raises_is_failed_and_the_call_raises_the_original_exception() -> None:
    @flow
    def pipeline() -> None:
        raise Boom("flow body failed")

    with pytest.raises(Boom, match="flow body failed"):
        pipeline()
    state = pipeline(return_state=True)
    assert isinstance(state, State)
    assert state.is_failed() and state.name == "Failed"
    assert isinstance(state.exception, Boom)


def test_flow_return_state_of_a_completed_run() -> None:
    @flow
    def pipeline() -> str:
        return "done"

    state = pipeline(return_state=True)
    assert isinstance(state, State)
    assert state.is_completed() and state.result() == "done"


def test_flow_with_bad_arguments_raises_before_the_body_runs() -> None:
    ran = []

    @flow(name="strict-flow")
    def pipeline(x: int) -> None:
        ran.append(x)

    with pytest.raises(TypeError, match="strict-flow"):
        pipeline(1, 2)  # type: ignore[call-arg]
    assert ran == []


def test_flow_returning_a_failed_future_is_failed() -> None:
    @flow
    def pipeline() -> Any:
        return failing.submit("returned future failed")

    state = pipeline(return_state=True)
    assert state.is_failed()
    with pytest.raises(Boom, match="returned future failed"):
        pipeline()


def test_flow_returning_a_failed_state_is_failed() -> None:
    @flow
    def pipeline() -> Any:
        return failing("returned state failed", return_state=True)

    state = pipeline(return_state=True)
    assert state.is_failed()
    with pytest.raises(Boom, match="returned state failed"):
        pipeline()


def test_flow_returning_a_completed_future_or_state_returns_its_value() -> None:
    @flow
    def via_future() -> Any:
        return double.submit(4)

    @flow
    def via_state() -> Any:
        return st.Completed("x")

    assert via_future() == 8
    assert via_state() == "x"


def test_flow_returning_futures_in_containers_returns_their_values() -> None:
    @flow
    def pipeline() -> Any:
        return double.map([1, 2, 3])

    @flow
    def nested() -> Any:
        return {"a": double.submit(1), "b": [double.submit(2), 5]}

    assert pipeline() == [2, 4, 6]
    assert nested() == {"a": 2, "b": [4, 5]}


def test_futures_deep_in_large_containers_are_found_and_resolved() -> None:
    """Large containers are checked by their items' types first: a future at the end of
    a long list, in a value or key of a large dict, or inside a container among many
    plain values is still found (by the flow's return and by a submitted run's
    arguments; direct calls do not resolve futures)."""

    @task
    def total(values: Any) -> int:
        flat: list[int] = []
        for value in values:
            flat.extend(value if isinstance(value, list) else [value])
        return sum(flat)

    @flow
    def returns() -> Any:
        many = list(range(100))
        return {
            "tail": [*many, double.submit(1)],
            "nested": [*many, [double.submit(2)]],
            "values": {i: (double.submit(3) if i == 99 else i) for i in range(100)},
            "tuple": (*many, double.submit(4)),
        }

    @flow
    def passes() -> int:
        nested = total.submit([*range(100), [double.submit(5)]])
        return nested.result() + total.submit([*range(50), double.submit(6)]).result()

    out = returns()
    assert out["tail"][-1] == 2 and out["tail"][:100] == list(range(100))
    assert out["nested"][-1] == [4]
    assert out["values"][99] == 6 and out["values"][98] == 98
    assert out["tuple"][-1] == 8
    assert passes() == sum(range(100)) + 10 + sum(range(50)) + 12


def test_a_map_over_a_long_column_with_one_future_waits_for_it() -> None:
    @flow
    def pipeline() -> list[int]:
        column: list[Any] = list(range(99))
        column.append(double.submit(50))
        return [f.result() for f in double.map(column)]

    assert pipeline() == [2 * i for i in range(99)] + [200]


def test_flow_returning_a_list_with_a_failed_future_is_failed() -> None:
    @flow
    def pipeline() -> Any:
        return [double.submit(1), failing.submit("one of many")]

    state = pipeline(return_state=True)
    assert state.is_failed()
    with pytest.raises(Boom, match="one of many"):
        state.result()


# -- retries ---------------------------------------------------------------------------


def test_flow_retries_rerun_the_body() -> None:
    attempts = []

    @flow(retries=2)
    def pipeline() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise Boom(f"attempt {len(attempts)}")
        return double.submit(len(attempts)).result()

    state = pipeline(return_state=True)
    assert state.is_completed() and state.result() == 6
    assert len(attempts) == 3
    assert state.attempts == 3


def test_flow_retries_exhausted_raise_the_last_error() -> None:
    attempts = []

    @flow(retries=1)
    def pipeline() -> None:
        attempts.append(1)
        raise Boom(f"attempt {len(attempts)}")

    with pytest.raises(Boom, match="attempt 2"):
        pipeline()
    assert len(attempts) == 2


# -- timeouts ---------------------------------------------------------------------------


def test_flow_timeout_stops_a_body_sleeping_in_small_steps() -> None:
    reached_end = []

    @flow(timeout_seconds=0.3)
    def pipeline() -> None:
        for _ in range(400):
            time.sleep(0.025)
        reached_end.append(True)

    started = time.monotonic()
    state = pipeline(return_state=True)
    assert time.monotonic() - started < NO_HANG
    assert state.name == "TimedOut" and state.is_failed()
    assert reached_end == []
    with pytest.raises(TaskTimeoutError):
        state.result()


def test_flow_timeout_interrupts_one_long_sleep_in_the_main_thread() -> None:
    assert threading.current_thread() is threading.main_thread()

    @flow(timeout_seconds=0.3)
    def pipeline() -> None:
        time.sleep(60)

    started = time.monotonic()
    with pytest.raises(TaskTimeoutError, match="timeout"):
        pipeline()
    assert time.monotonic() - started < NO_HANG


def test_flow_timeout_interrupts_a_body_waiting_on_a_task() -> None:
    release = threading.Event()

    @task
    def stuck() -> None:
        release.wait(NO_HANG * 2)

    @flow(timeout_seconds=0.3, backend="threads")
    def pipeline() -> None:
        stuck.submit().result()

    started = time.monotonic()
    try:
        state = pipeline(return_state=True)
    finally:
        release.set()
    assert time.monotonic() - started < NO_HANG
    assert state.name == "TimedOut"


def test_flow_timeout_in_a_worker_thread() -> None:
    @flow(timeout_seconds=0.3)
    def pipeline() -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            pass

    outcome: list[State[Any]] = []
    worker = threading.Thread(target=lambda: outcome.append(pipeline(return_state=True)))
    worker.start()
    worker.join(NO_HANG)
    assert not worker.is_alive()
    assert outcome and outcome[0].name == "TimedOut"


@pytest.mark.parametrize("how", ["submit", "map"])
def test_flow_timeout_in_a_worker_thread_while_waiting_on_a_future(how: str) -> None:
    """The flow's deadline fires while its (non-main) thread is blocked waiting on a
    future: the wait wakes for it instead of holding the flow until the task ends."""
    release = threading.Event()

    @task
    def stuck(_: int = 0) -> None:
        end = time.monotonic() + NO_HANG * 2  # small steps: done at once if stolen to the waiter
        while not release.is_set() and time.monotonic() < end:
            time.sleep(0.01)

    @flow(timeout_seconds=0.3, backend="threads")
    def pipeline() -> None:
        if how == "submit":
            stuck.submit().result()
        else:
            [f.result() for f in stuck.map(range(2))]

    outcome: list[State[Any]] = []
    worker = threading.Thread(target=lambda: outcome.append(pipeline(return_state=True)))
    worker.start()
    try:
        worker.join(NO_HANG)
        assert not worker.is_alive(), "the flow's timeout did not interrupt its wait on the future"
    finally:
        release.set()
        worker.join(NO_HANG)
    assert outcome and outcome[0].name == "TimedOut"


def test_task_timeout_raised_in_the_body_fails_the_flow_like_any_error() -> None:
    """A task's TaskTimeoutError raised in the body is not the flow timing out: the flow
    (without timeout_seconds) is Failed, like after any other exception of its body."""
    @task(timeout_seconds=0.2)
    def too_slow() -> None:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            time.sleep(0.01)

    @task
    def steady(i: int) -> int:
        time.sleep(0.2)
        return i

    others: list[Any] = []
    backend = flowcore.get_backend("threads", max_workers=2)

    @flow(backend=backend)
    def pipeline() -> None:
        slow = too_slow.submit()
        others.extend(steady.submit(i) for i in range(4))
        slow.result()  # raises TaskTimeoutError, like any task error would raise its own

    try:
        state = pipeline(return_state=True)
    finally:
        backend.shutdown(wait=True)
    assert isinstance(state.exception, TaskTimeoutError)
    assert state.name == "Failed", f"the flow has no timeout but ended {state!r}"
    # Like after any other exception of the body: what had not started is cancelled,
    # what was running on the threads finished; nothing is left pending.
    assert {f.state.name for f in others} <= {"Completed", "Cancelled"}
    assert all(f.done() for f in others)


def test_flow_that_finishes_in_time_is_not_timed_out() -> None:
    @flow(timeout_seconds=30)
    def pipeline() -> int:
        return double.submit(2).result()

    assert pipeline() == 4
    # The deadline is gone after the run: sleeping afterwards raises nothing.
    time.sleep(0.05)


# -- subflows and backends ----------------------------------------------------------------


def test_subflow_uses_the_parents_backend_instance() -> None:
    seen: dict[str, Any] = {}

    @flow
    def child() -> int:
        seen["child"] = _backend()
        return double.submit(1).result()

    @flow
    def parent() -> int:
        seen["parent"] = _backend()
        first = child()
        # The subflow did not shut the parent's backend down.
        return first + double.submit(2).result()

    assert parent() == 6
    assert seen["child"] is seen["parent"]


def test_subflow_naming_its_own_backend_gets_its_own() -> None:
    seen: dict[str, Any] = {}

    @flow(backend="sequential")
    def child() -> int:
        seen["child"] = _backend()
        return double.submit(1).result()

    @flow(backend="threads")
    def parent() -> int:
        seen["parent"] = _backend()
        first = child()
        return first + double.submit(2).result()

    assert parent() == 6
    assert seen["child"] is not seen["parent"]
    assert seen["child"].name == "sequential"
    assert seen["parent"].name == "threads"


def test_flow_shuts_down_the_backend_it_created() -> None:
    seen: dict[str, Any] = {}

    @flow(backend="threads")
    def pipeline() -> int:
        seen["backend"] = _backend()
        return double.submit(1).result()

    assert pipeline() == 2
    with pytest.raises(BackendShutdownError):
        seen["backend"].submit(int, "1")


def test_flow_shuts_down_its_backend_after_a_failure_too() -> None:
    seen: dict[str, Any] = {}

    @flow(backend="threads")
    def pipeline() -> None:
        seen["backend"] = _backend()
        raise Boom("x")

    with pytest.raises(Boom):
        pipeline()
    with pytest.raises(BackendShutdownError):
        seen["backend"].submit(int, "1")


def test_backend_options_create_the_named_backend_with_them_for_each_run() -> None:
    """``@flow(backend="dask", backend_options={"address": ...})``: what the environment
    and ``[tool.flowcore]`` offer, in code; the run owns the backend (shut down at its end)."""
    seen: list[Any] = []

    @flow(backend="threads", backend_options={"max_workers": 3})
    def pipeline() -> int:
        seen.append(_backend())
        return double.submit(2).result()

    assert pipeline() == 4
    assert seen[0].name == "threads" and seen[0].max_workers == 3
    with pytest.raises(BackendShutdownError):
        seen[0].submit(int, "1")
    assert pipeline.options.backend_options == {"max_workers": 3}

    wider = pipeline.with_options(backend_options={"max_workers": 5})  # keeps the backend
    assert wider() == 4 and seen[-1].name == "threads" and seen[-1].max_workers == 5
    other = pipeline.with_options(backend="sequential")  # another backend: not its options
    assert other.options.backend_options is None
    assert other() == 4 and seen[-1].name == "sequential"


def test_backend_options_that_the_backend_refuses_fail_the_call_before_the_body() -> None:
    ran: list[int] = []

    @flow(backend="threads", backend_options={"max_worker": 3})
    def pipeline() -> None:
        ran.append(1)

    with pytest.raises(TypeError, match="unexpected keyword argument 'max_worker'; it accepts: max_workers"):
        pipeline()
    assert ran == []


def test_bad_backend_options_fail_at_the_decorator() -> None:
    with pytest.raises(TypeError, match="'backend_options' must be a dict of option names"):
        flow(backend="threads", backend_options=[("max_workers", 2)])  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="'backend_options' must be a dict of option names"):
        flow(backend="threads", backend_options={2: 2})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="'backend_options' needs 'backend' to name a backend"):
        flow(backend_options={"max_workers": 2})
    backend = flowcore.get_backend("threads", max_workers=2)
    try:
        with pytest.raises(TypeError, match=r"pass them to flowcore.get_backend\(name, \*\*options\)"):
            flow(backend=backend, backend_options={"max_workers": 2})
    finally:
        backend.shutdown()


def test_flow_never_shuts_down_a_backend_instance_it_was_given() -> None:
    backend = flowcore.get_backend("threads", max_workers=2)
    seen: dict[str, Any] = {}

    @flow(backend=backend)
    def pipeline() -> int:
        seen["backend"] = _backend()
        return double.submit(5).result()

    try:
        assert pipeline() == 10
        assert pipeline() == 10  # usable by a second run too
        assert seen["backend"] is backend
        assert backend.submit(int, "3").result(timeout=30) == 3
    finally:
        backend.shutdown()


def test_flow_inside_use_backend_borrows_that_backend() -> None:
    seen: dict[str, Any] = {}

    @flow
    def pipeline() -> int:
        seen["flow"] = _backend()
        return double.submit(3).result()

    with flowcore.use_backend("threads") as backend:
        assert pipeline() == 6
        assert seen["flow"] is backend
        # The flow did not shut the block's backend down.
        assert double.submit(4).result() == 8


def test_timed_out_flow_shuts_down_its_backend_and_calls_on_failure_once() -> None:
    seen: dict[str, Any] = {}
    failures: list[tuple[Any, ...]] = []
    completions: list[tuple[Any, ...]] = []

    @flow(
        backend="threads",
        timeout_seconds=0.2,
        on_failure=[lambda *a: failures.append(a)],
        on_completion=[lambda *a: completions.append(a)],
    )
    def pipeline() -> None:
        seen["backend"] = _backend()
        time.sleep(60)

    state = pipeline(return_state=True)
    assert state.name == "TimedOut"
    assert completions == []
    assert len(failures) == 1 and failures[0][2].name == "TimedOut"
    with pytest.raises(BackendShutdownError):
        seen["backend"].submit(int, "1")


def test_flow_with_options_returns_a_changed_copy() -> None:
    @flow(name="original")
    def pipeline() -> str:
        return _backend().name

    copy = pipeline.with_options(name="copy", backend="sequential", retries=2)
    assert copy is not pipeline
    assert (copy.name, copy.options.backend, copy.options.retries) == ("copy", "sequential", 2)
    assert (pipeline.name, pipeline.options.backend, pipeline.options.retries) == ("original", None, 0)
    assert copy() == "sequential"


def test_flow_with_options_timeout_applies_to_the_copy_only() -> None:
    @flow
    def pipeline(seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    limited = pipeline.with_options(timeout_seconds=0.2)
    assert limited(5, return_state=True).name == "TimedOut"
    assert pipeline(0.3) == "slept"


# -- hooks ------------------------------------------------------------------------------


def test_flow_on_completion_hook_is_called_once_with_flow_run_and_state() -> None:
    calls: list[tuple[Any, ...]] = []
    failures: list[tuple[Any, ...]] = []

    @flow(on_completion=[lambda *a: calls.append(a)], on_failure=[lambda *a: failures.append(a)])
    def pipeline(x: int) -> int:
        return double.submit(x).result()

    assert pipeline(4) == 8
    assert len(calls) == 1 and failures == []
    hooked_flow, run, state = calls[0]
    assert hooked_flow is pipeline
    assert isinstance(run, FlowRun)
    assert run.flow_name == "pipeline" and run.parameters == {"x": 4}
    assert state.is_completed() and state.result() == 8


def test_flow_on_failure_hook_is_called_once_after_retries() -> None:
    calls: list[tuple[Any, ...]] = []
    failures: list[tuple[Any, ...]] = []

    @flow(retries=2, on_completion=[lambda *a: calls.append(a)], on_failure=[lambda *a: failures.append(a)])
    def pipeline() -> None:
        raise Boom("always")

    with pytest.raises(Boom):
        pipeline()
    assert calls == []
    assert len(failures) == 1
    hooked_flow, run, state = failures[0]
    assert hooked_flow is pipeline
    assert isinstance(run, FlowRun) and run.flow_name == "pipeline"
    assert state.is_failed() and isinstance(state.exception, Boom)


def test_a_failing_flow_hook_does_not_change_the_outcome() -> None:
    def broken_hook(*args: Any) -> None:
        raise RuntimeError("hook bug")

    @flow(on_completion=[broken_hook])
    def pipeline() -> int:
        return 1

    assert pipeline() == 1


# -- unobserved failures ----------------------------------------------------------------


def _unobserved_reports(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and name in r.getMessage() and "Finished in state" not in r.getMessage()
    ]


def test_unobserved_failed_futures_are_logged_at_flow_exit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flowcore")
    names: list[str] = []

    @flow
    def pipeline() -> str:
        future = failing.submit("nobody looked")
        names.append(future.name)
        return "completed anyway"

    assert pipeline() == "completed anyway"
    reports = _unobserved_reports(caplog, names[0])
    assert len(reports) == 1
    assert "nobody looked" in reports[0].getMessage()


def test_unobserved_failure_reports_end_without_a_blank_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flowcore")

    @flow
    def pipeline() -> None:
        failing.submit("nobody looked")

    pipeline()
    (report,) = [r for r in caplog.records if "nothing retrieved" in r.getMessage()]
    message = report.getMessage()
    assert "Traceback" in message and "nobody looked" in message
    assert not message.endswith("\n") and "\n\n" not in message


@pytest.mark.parametrize("observe", ["result", "state", "wait_for_state"])
def test_observed_failed_futures_are_not_reported_as_unobserved(caplog: pytest.LogCaptureFixture, observe: str) -> None:
    caplog.set_level(logging.INFO, logger="flowcore")
    names: list[str] = []

    @flow
    def pipeline() -> str:
        future = failing.submit("looked at")
        names.append(future.name)
        if observe == "result":
            future.result(raise_on_failure=False)
        elif observe == "state":
            future.wait(NO_HANG)
            assert future.state.is_failed()
        else:
            flowcore.wait([future])
            assert not future.state.is_completed()
        return "fine"

    assert pipeline() == "fine"
    assert _unobserved_reports(caplog, names[0]) == []


def test_runs_cancelled_by_a_failed_body_are_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flowcore")
    held: list[Any] = []

    @flow(backend=flowcore.get_backend("threads", max_workers=1))
    def pipeline() -> None:
        blocker = threading.Event()
        first = wait_on.submit(blocker, 5.0)  # the only worker is busy until released
        held.extend(double.submit(i) for i in range(5))  # queued behind the first
        held.append(first)
        threading.Timer(0.5, blocker.set).start()
        raise RuntimeError("the body gives up")

    with pytest.raises(RuntimeError, match="gives up"):
        pipeline()
    assert [f.state.name for f in held[:5]] == ["Cancelled"] * 5
    assert held[5].state.name == "Completed"
    assert [r for r in caplog.records if "nothing retrieved" in r.getMessage()] == []


def test_completed_futures_are_never_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flowcore")

    @flow
    def pipeline() -> None:
        double.map([1, 2, 3])

    pipeline()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []



def _final_state_reports(caplog: pytest.LogCaptureFixture, run_name: str) -> list[logging.LogRecord]:
    """ERROR records of a task run's own logger saying how it finished."""
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR
        and getattr(r, "task_run_name", None) == run_name
        and r.getMessage().startswith("Finished in state")
    ]


@pytest.mark.parametrize("backend", ["sequential", "threads"])
def test_each_failed_task_run_is_logged_once_at_error(
    caplog: pytest.LogCaptureFixture, backend: str
) -> None:
    """Prefect logs every task run's final state: a failure the flow looked at (and
    handled) is logged too, once; an unobserved one only by its unobserved report."""
    caplog.set_level(logging.INFO, logger="flowcore")
    names: dict[str, str] = {}

    @flow(backend=backend)
    def pipeline() -> str:
        looked_at = failing.submit("looked at")
        ignored = failing.submit("ignored")
        mapped = failing.map(["mapped 0", "mapped 1"])
        names.update(looked_at=looked_at.name, ignored=ignored.name, mapped=mapped[0].name)
        looked_at.wait(NO_HANG)
        assert looked_at.state.is_failed()
        flowcore.wait(mapped)
        assert [m.state.is_failed() for m in mapped] == [True, True]
        return "handled"

    assert pipeline() == "handled"
    (looked_at,) = _final_state_reports(caplog, names["looked_at"])
    assert "looked at" in looked_at.getMessage()
    assert len(_final_state_reports(caplog, names["mapped"])) == 1
    # The unobserved run is reported once, by the report that says nobody looked.
    assert _final_state_reports(caplog, names["ignored"]) == []
    assert len([r for r in caplog.records if names["ignored"] in r.getMessage()]) == 1


def test_a_flow_returning_prefect_style_states_ends_in_them() -> None:
    # Prefect 3 documents `return Failed(message=...)` / `return Completed(message=...)`
    # from a flow body: the flow ends in that state, message included.
    from flowcore.errors import FailedRunError

    @flow
    def refuses() -> Any:
        return st.Failed(message="no rows today")

    @flow
    def agrees() -> Any:
        return st.Completed(message="all good")

    state = refuses(return_state=True)
    assert state.is_failed() and "no rows today" in state.message
    with pytest.raises(FailedRunError, match="no rows today"):
        refuses()
    done = agrees(return_state=True)
    assert done.is_completed() and done.message == "all good" and done.result() is None


def test_a_subflow_given_futures_gets_their_results() -> None:
    # Prefect 3 resolves futures (in containers too) among a flow's arguments before
    # its body runs: a subflow given a task's future gets the task's result, checked
    # against its type hints; a failed upstream fails the subflow before its body.
    @task
    def one() -> int:
        return 1

    @task
    def broken() -> int:
        raise ValueError("no data")

    body_ran: list[Any] = []

    @flow
    def typed(x: int, rest: list[int]) -> int:
        body_ran.append(x)
        return x + sum(rest)

    @flow
    def untyped(x: Any) -> Any:
        return x

    @flow(backend="threads")
    def parent() -> tuple[int, State[Any], Any]:
        first = one.submit()
        return (typed(first, [first, one.submit()]), typed(broken.submit(), [], return_state=True),
                untyped(x={"k": first}))

    total, failed, plain = parent()
    assert total == 3 and plain == {"k": 1}
    assert failed.is_failed() and "broken-0" in failed.message and "no data" in failed.message
    assert body_ran == [1]
