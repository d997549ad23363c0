"""``get_run_context()``: what a task or flow body can learn about the run it is in.

Inside a task body (on any backend: a pool thread, a worker process, a Dask worker)
it gives ``ctx.task_run`` and ``ctx.flow_run``; inside a flow body, ``ctx.flow_run``
(``ctx.task_run`` is None). Outside any run it raises
:class:`~flowcore.errors.MissingContextError`. The records are snapshots, made when
asked: read them, do not keep them to watch a run.

A flow run's parameters travel to workers with each task call only when they pickle
small (see :data:`flowcore.calls.PORTABLE_PARAMETERS_LIMIT`); where they did not,
``ctx.flow_run.parameters`` is None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowcore.calls import FlowRun
from flowcore.context import current_flow_run, current_task_run
from flowcore.errors import MissingContextError


@dataclass(frozen=True)
class TaskRunInfo:
    """The task run a body executes."""

    #: the run's id (as in the run history and the run-event stream)
    id: str
    #: the run's name, ``<task name>-<n>`` unless ``task_run_name`` says otherwise
    name: str
    task_name: str
    #: the arguments bound to the task's parameters, defaults applied
    parameters: dict[str, Any]
    #: the attempt running now: 1, then 2 for the first retry, ...
    attempt: int
    #: the backend it was submitted to; None for a direct call, which runs inline
    backend: str | None
    tags: frozenset[str]
    #: the flow run it belongs to, if any
    flow_run_id: str | None


@dataclass(frozen=True)
class FlowRunInfo:
    """The flow run a body belongs to."""

    id: str
    name: str
    flow_name: str
    #: the flow's arguments (validated), defaults applied; None in a worker when they
    #: were too large or not picklable to travel with the task call
    parameters: dict[str, Any] | None
    #: the flow run's backend
    backend: str
    #: the attempt of the flow run (retries count on); None inside a task run
    attempt: int | None
    #: the flow run that called this one as a subflow, if any
    parent_run_id: str | None


@dataclass(frozen=True)
class RunContext:
    """What :func:`get_run_context` returns."""

    #: the task run (None inside a flow body, outside any task)
    task_run: TaskRunInfo | None
    #: the flow run (None for a task run outside any flow, e.g. in ``use_backend``)
    flow_run: FlowRunInfo | None


def get_run_context() -> RunContext:
    """The run the calling code belongs to: a task run (with its flow run), else a
    flow run. Raises MissingContextError outside flows and tasks."""
    task_context = current_task_run()
    if task_context is not None:
        call = task_context.call
        flow_run = call.flow_run or task_context.flow_run
        if flow_run is None and call.flow_run_id is not None:
            flow_run = FlowRun(call.flow_name or "", call.flow_run_id, call.flow_run_name or "", has_parameters=False)
        task_run = TaskRunInfo(
            id=call.task_run_id,
            name=call.task_run_name,
            task_name=call.task.name,
            parameters=call.parameters,
            attempt=task_context.attempt,
            backend=call.backend,
            tags=call.task.tags,
            flow_run_id=call.flow_run_id,
        )
        return RunContext(task_run, _flow_run_info(flow_run, None))
    scope = current_flow_run()
    if scope is not None:
        return RunContext(None, _flow_run_info(scope.flow_run, scope.attempt))
    raise MissingContextError(
        "get_run_context() was called outside any flow or task run: call it inside a "
        "@flow or @task function"
    )


def _flow_run_info(run: FlowRun | None, attempt: int | None) -> FlowRunInfo | None:
    if run is None:
        return None
    return FlowRunInfo(
        id=run.run_id,
        name=run.name,
        flow_name=run.flow_name,
        parameters=dict(run.parameters) if run.has_parameters else None,
        backend=run.backend,
        attempt=attempt,
        parent_run_id=run.parent_run_id,
    )


__all__ = ["FlowRunInfo", "RunContext", "TaskRunInfo", "get_run_context"]
