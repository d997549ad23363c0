"""The batch of calls: many small runs of one task in one trip to a worker.

The worker side of :mod:`flowcore.dispatch`'s coalesced batches. :func:`encode_batch`
packs a list of calls (the task and the fields the calls share travel once);
:func:`run_batch` runs them one after the other with the ordinary engine where the
backend put it and returns one outcome per call (a plain success as a tuple, anything
else as its full state), the log records of the runs and where they ran. A run whose
value cannot be pickled does not lose the batch: the worker sends it home with that
run ``Failed`` (:class:`~flowcore.serialization.Repairable`), so no finished run
executes twice (issue 12.22).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowcore.engine import run_call
from flowcore.serialization import Repairable, pickling_error, unsendable_error
from flowcore.states import Failed, State, completed_run

if TYPE_CHECKING:
    from flowcore.calls import TaskCall
    from flowcore.events import Worker


# The wire format is lean because it is paid per item: the task and the fields that
# all items share travel once per batch; a plain success comes back as a tuple.
BatchItem = tuple[tuple[Any, ...], dict[str, Any], str, str, int]
Outcome = Any  # tuple[value, started_at, finished_at, attempts] | State


def encode_batch(calls: list[TaskCall]) -> tuple[Any, tuple[Any, ...], list[BatchItem]]:
    first = calls[0]
    common = (
        first.flow_run_id, first.flow_run_name, first.flow_name, first.log_prints,
        first.flow_parameters_key, first.flow_run, first.backend,
    )
    items = [(c.args, c.kwargs, c.task_run_id, c.task_run_name, c.attempts_used) for c in calls]
    return first.task, common, items


def run_batch(
    task: Any, common: tuple[Any, ...], items: list[BatchItem]
) -> tuple[list[Outcome], list[dict[str, Any]], Worker]:
    """Run a batch's items one after the other in this worker: one outcome per item,
    the log records of the runs (replayed in the parent) and where they ran."""
    from flowcore.events import current_worker
    from flowcore.log_relay import capture

    with capture() as records:
        outcomes = _run_items(task, common, items)
    worker = current_worker()

    def repair() -> tuple[Any, ...]:  # issue 12.22: only the culprits fail, nothing reruns
        names = [item[3] for item in items]
        return [sendable_outcome(o, name) for o, name in zip(outcomes, names, strict=True)], records, worker

    return Repairable((outcomes, records, worker), repair)


def _run_items(task: Any, common: tuple[Any, ...], items: list[BatchItem]) -> list[Outcome]:
    from flowcore.calls import TaskCall

    flow_run_id, flow_run_name, flow_name, log_prints, flow_parameters_key, flow_run, backend = common
    outcomes: list[Outcome] = []
    for args, kwargs, run_id, run_name, attempts_used in items:
        call = TaskCall(
            task, args, kwargs, run_id, run_name, flow_run_id, flow_run_name, flow_name, 0.0,
            log_prints, attempts_used, flow_parameters_key, flow_run, backend,
        )
        state = run_call(call)
        if state.name == "Completed" and state.result_location is None:
            outcomes.append((state.data, state.started_at, state.finished_at, state.attempts))
        else:
            outcomes.append(state)
    return outcomes


def sendable_outcome(outcome: Outcome, task_run_name: str) -> Outcome:
    """``outcome`` of run ``task_run_name`` if it pickles; else a ``Failed`` state with
    the :class:`~flowcore.errors.SerializationError` that names the run and the type of
    the value (or raised exception) at fault. In the worker, on the failure path only:
    a batch whose outcome does not pickle still sends its other runs' results home."""
    error = pickling_error(outcome)
    if error is None:
        return outcome
    if type(outcome) is tuple:  # a plain success: (value, started, finished, attempts)
        value, started_at, finished_at, attempts = outcome
        return Failed(
            unsendable_error(task_run_name, value, error),
            started_at=started_at, finished_at=finished_at, attempts=attempts,
        )
    state: State[Any] = outcome
    raised = state.exception is not None and pickling_error(state.exception) is not None
    culprit = state.exception if raised else state.data
    return Failed(
        unsendable_error(task_run_name, culprit, error, exception=raised),
        traceback=state.traceback if raised else None,
        started_at=state.started_at, finished_at=state.finished_at, attempts=state.attempts,
    )


def decode_outcome(outcome: Outcome) -> State[Any]:
    if type(outcome) is tuple:
        return completed_run(*outcome)
    return outcome  # type: ignore[no-any-return]


__all__ = ["decode_outcome", "encode_batch", "run_batch", "sendable_outcome"]
