"""What the submitting process does once a task run has ended: the task's hooks,
then the run-event stream.

Called exactly once per task run, on whichever thread settled it, by the future that
holds the run (:mod:`flowcore.futures`) or by a direct call (:mod:`flowcore.tasks`).
The runs of a column map report in blocks instead (:mod:`flowcore.mapped`): their
tasks have no hooks, and their events travel as one lazy sequence per batch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flowcore import registry
from flowcore.calls import TaskCall
from flowcore.engine import task_run_logger
from flowcore.states import State, StateType

if TYPE_CHECKING:
    from flowcore.events import Worker

logger = logging.getLogger("flowcore.task_runs")


def run_task_hooks(call: TaskCall, state: State[Any]) -> None:
    """Call the task's ``on_completion`` (or, for any other final state, ``on_failure``)
    hooks with ``(task, call, state)``; a hook's exception is logged, never raised."""
    task = call.task
    options = task.options
    hooks = options.on_completion if state.type is StateType.COMPLETED else options.on_failure
    for hook in hooks:
        try:
            hook(task, call, state)
        except Exception:
            task_run_logger(call).exception(
                "hook %r of task run %r raised; the run's state is unchanged",
                getattr(hook, "__name__", hook),
                call.task_run_name,
            )
    if state.type is not StateType.COMPLETED and logger.isEnabledFor(logging.DEBUG):
        task_run_logger(call).debug("Finished in state %r", state)


def report_final_state(
    call: TaskCall, state: State[Any], backend: str | None, worker: Worker | None = None
) -> None:
    """Fire the task's ``on_completion``/``on_failure`` hooks, then publish the run's
    STARTED (if it started) and FINISHED events. ``backend``: the name of the backend
    that ran it (None for a direct call); ``worker``: where it ran, when known."""
    options = call.task.options
    hooks = options.on_completion if state.type is StateType.COMPLETED else options.on_failure
    observed = registry.observes_events()
    if not hooks and state.type is StateType.COMPLETED and not observed:
        return  # the common case: nothing to call
    run_task_hooks(call, state)
    if observed:
        from flowcore.events import task_events

        registry.publish(task_events(call, backend, state, worker))


__all__ = ["report_final_state", "run_task_hooks"]
