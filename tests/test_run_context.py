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
