"""``get_run_context()``: outside runs, without a flow, in async bodies, and flow
parameters that stay home (too large or unpicklable for the trip to a worker).
(Every backend runs ``test_run_context_in_flows_and_tasks`` of the conformance suite.)"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

from flowcore import flow, get_run_context, task, use_backend
from flowcore.calls import PORTABLE_PARAMETERS_LIMIT, FlowRun
from flowcore.errors import MissingContextError
from flowcore.testing import workloads as w


def test_outside_any_run_it_raises() -> None:
    with pytest.raises(MissingContextError, match="outside any flow or task run"):
        get_run_context()


def test_a_task_outside_any_flow_has_no_flow_run() -> None:
    direct = w.run_context_of(1)
    assert direct.flow_run is None and direct.task_run.flow_run_id is None
    with use_backend("threads"):
        submitted = w.run_context_of.submit(2).result()
    assert submitted.flow_run is None and submitted.task_run.backend == "threads"


def test_async_flow_and_task_bodies() -> None:
    @task
    async def inner() -> Any:
        return get_run_context()

    @flow
    async def outer(n: int) -> tuple[Any, Any]:
        return get_run_context(), await inner()

    flow_ctx, task_ctx = outer(4)
    assert flow_ctx.task_run is None and flow_ctx.flow_run.parameters == {"n": 4}
    assert task_ctx.task_run.name == "inner-0" and task_ctx.flow_run.id == flow_ctx.flow_run.id


def test_flow_attempts_are_counted() -> None:
    attempts: list[int | None] = []

    @flow(retries=1)
    def flaky() -> None:
        attempts.append(get_run_context().flow_run.attempt)  # type: ignore[union-attr]
        if len(attempts) == 1:
            raise ValueError("again")

    flaky()
    assert attempts == [1, 2]


def test_large_or_unpicklable_flow_parameters_stay_home() -> None:
    """On a process backend the flow's parameters travel with the task calls only when
    small and picklable: the tasks still run, and see ``parameters`` None."""
    lock = threading.Lock()
    big = b"x" * (PORTABLE_PARAMETERS_LIMIT + 1)

    @flow(backend="loky")
    def on_processes(handle: Any, payload: bytes) -> Any:
        return w.run_context_of.submit(1).result(), get_run_context()

    remote, here = on_processes(lock, b"small")
    assert remote.flow_run.parameters is None and remote.task_run.parameters == {"x": 1}
    assert here.flow_run.parameters == {"handle": lock, "payload": b"small"}
    remote, _ = on_processes(None, big)
    assert remote.flow_run.parameters is None
    remote, _ = on_processes(None, b"small")
    assert remote.flow_run.parameters == {"handle": None, "payload": b"small"}

    @flow(backend="threads")
    def in_process(handle: Any) -> Any:
        return w.run_context_of.submit(1).result()

    assert in_process(lock).flow_run.parameters == {"handle": lock}  # never pickled


def test_flow_run_pickles_without_parameters_that_cannot_travel() -> None:
    run = FlowRun("f", "id", "f-id", {"lock": threading.Lock()}, "loky")
    copy = pickle.loads(pickle.dumps(run))
    assert copy.run_id == "id" and copy.parameters == {} and not copy.has_parameters
    small = pickle.loads(pickle.dumps(FlowRun("f", "id", "f-id", {"n": 1}, "loky")))
    assert small.parameters == {"n": 1} and small.has_parameters


# -- a flow called inside a task body ---------------------------------------------------------


@flow(log_prints=False)
def _quiet_child(tag: str) -> tuple[Any, Any]:
    """A subflow run inside a task: what it sees, and what its logger is."""
    from flowcore import get_run_logger

    print(f"child print {tag}")  # its own log_prints=False: not a log record
    get_run_logger().info("child logger %s", tag)
    return get_run_context(), get_run_logger().extra


@task
def _calls_child(tag: str) -> tuple[Any, Any, Any]:
    inside = _quiet_child(tag)
    return (*inside, get_run_context())  # the task's own context again after the subflow


@flow(log_prints=True)
def _parent_of_child_in_task(submit: bool) -> tuple[Any, Any, Any]:
    return _calls_child.submit("s").result() if submit else _calls_child("d")


@pytest.mark.parametrize("submit", [False, True], ids=["called", "submitted"])
def test_a_flow_called_inside_a_task_sees_its_own_run(submit: bool, capsys: pytest.CaptureFixture[str],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Prefect 3 (PrefectHQ/prefect#19449): a subflow run in a task body is a flow run of
    its own: get_run_context() gives its flow run and no task run, get_run_logger() its
    logger, and its own log_prints applies. It saw the enclosing task run and the
    parent flow run, logged as the task run, and had its prints logged."""
    import logging

    caplog.set_level(logging.INFO, logger="flowcore")
    child_ctx, child_logger, task_ctx = _parent_of_child_in_task(submit)
    assert child_ctx.task_run is None
    assert child_ctx.flow_run.flow_name == "_quiet_child"
    assert child_ctx.flow_run.parent_run_id == task_ctx.flow_run.id
    assert child_logger["flow_run_id"] == child_ctx.flow_run.id and child_logger["task_run_id"] is None
    assert task_ctx.task_run.task_name == "_calls_child"  # the task's context is back
    assert task_ctx.flow_run.flow_name == "_parent_of_child_in_task"
    tag = "s" if submit else "d"
    assert f"child print {tag}" in capsys.readouterr().out
    assert not any("child print" in r.getMessage() for r in caplog.records)
    [record] = [r for r in caplog.records if r.getMessage() == f"child logger {tag}"]
    assert record.flow_run_id == child_ctx.flow_run.id and record.task_run_id is None  # type: ignore[attr-defined]


def test_an_async_flow_awaited_inside_an_async_task_sees_its_own_run() -> None:
    @flow
    async def child() -> Any:
        return get_run_context()

    @task
    async def runs_child() -> tuple[Any, Any]:
        inside = await child()
        return inside, get_run_context()

    @flow
    async def parent() -> tuple[Any, Any]:
        return await runs_child()

    child_ctx, task_ctx = parent()
    assert child_ctx.task_run is None and child_ctx.flow_run.flow_name == "child"
    assert task_ctx.task_run.task_name == "runs_child" and task_ctx.flow_run.flow_name == "parent"
