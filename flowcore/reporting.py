"""What the submitting process does once a task run has ended: the task's hooks,
then the run-event stream.

Called exactly once per task run, on whichever thread settled it, by the future that
holds the run (:mod:`flowcore.futures`) or by a direct call (:mod:`flowcore.tasks`).
The runs of a column map report in blocks instead (:mod:`flowcore.mapped`): their
tasks have no hooks, and their events travel as one lazy sequence per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flowcore import deferred_runs, registry
from flowcore.calls import TaskCall
from flowcore.coroutines import call_hook
from flowcore.engine import task_run_logger
from flowcore.states import State, StateType

if TYPE_CHECKING:
    from flowcore.events import Worker

logger = logging.getLogger("flowcore.task_runs")


def run_task_hooks(call: TaskCall, state: State[Any]) -> None:
    """Call the task's hooks for a run that has ended in ``state``: first its
    ``on_running`` hooks with a ``Running`` state (dated when the body started) if the
    body ran at least once (``state.attempts``: not for a cache hit, nor for a run
    that never started), then ``on_completion`` (or, for any other final state,
    ``on_failure``), each with ``(task, call, state)`` (an async hook is run to
    completion). Called once per run, in the
    submitting process, when the run's outcome arrives there. A hook's exception is
    logged, never raised."""
    task = call.task
    options = task.options
    final_hooks = options.on_completion if state.type is StateType.COMPLETED else options.on_failure
    calls: list[tuple[Callable[..., Any], State[Any]]] = []
    if options.on_running and state.attempts >= 1:
        running: State[Any] = State(
            StateType.RUNNING, "Running", timestamp=state.started_at or state.timestamp,
            started_at=state.started_at,
        )
        calls.extend((hook, running) for hook in options.on_running)
    calls.extend((hook, state) for hook in final_hooks)
    for hook, given in calls:
        try:
            call_hook(hook, task, call, given)
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
    """Fire the task's hooks (see :func:`run_task_hooks`), then publish the run's
    STARTED (if it started) and FINISHED events. ``backend``: the name of the backend
    that ran it (None for a direct call); ``worker``: where it ran, when known.

    While only observers that accept deferred reports watch, a run of a flow run, or a
    submitted run, goes to this thread's buffer instead (:mod:`flowcore.deferred_runs`: its events are
    published with the buffer); otherwise a run whose SUBMITTED was deferred and not
    reported yet reports it here first."""
    options = call.task.options
    hooks = options.on_completion if state.type is StateType.COMPLETED else options.on_failure
    current = registry.built or registry.get_registry()
    if hooks or options.on_running or state.type is not StateType.COMPLETED:
        run_task_hooks(call, state)
    if current.defers_runs and (call.flow_run_id is not None or backend is not None):
        # a run of a flow run, or one submitted outside any (noted by Task._new_future)
        deferred_runs.ended(call, state, worker, backend)
        return
    if not current.observes_events:
        if deferred_runs.pending():
            deferred_runs.take_noted(call)  # noted while observed: forget it
        return
    from flowcore.events import submitted_event, task_events

    events = task_events(call, backend, state, worker)
    if deferred_runs.pending() and deferred_runs.take_noted(call):
        events.insert(0, submitted_event(call, backend))
    registry.publish(events)


__all__ = ["report_final_state", "run_task_hooks"]
