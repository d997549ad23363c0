"""Records that describe one run: :class:`TaskCall` (a task run) and :class:`FlowRun`.

A ``TaskCall`` is everything a worker needs to run one task: it is picklable (the
task pickles by reference when it is importable) and carries no backend state.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowcore.tasks import Task

# Task run ids are cheap: a random per-process prefix and a counter (a uuid4 costs
# more than the whole direct-call fast path).
_PREFIX = os.urandom(6).hex()
_next_number = 1
_number_lock = threading.Lock()


def _reseed_after_fork() -> None:
    global _PREFIX
    _PREFIX = os.urandom(6).hex()  # a forked child must not repeat the parent's ids


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)


def new_task_run_id() -> str:
    """A run id unique across processes and runs: ``<random prefix>-<hex counter>``."""
    return f"{_PREFIX}-{reserve_run_numbers(1):x}"


def reserve_run_numbers(count: int) -> int:
    """Reserve ``count`` consecutive run numbers; returns the first. A map's runs take
    one block, so their ids are known without making them one by one."""
    global _next_number
    # acquire/release rather than ``with``: no bound methods made, once per task run
    _number_lock.acquire()
    try:
        first = _next_number
        _next_number = first + count
    finally:
        _number_lock.release()
    return first


def number_of(context: Any) -> int:
    """The run number of ``context`` (a direct run's :class:`~flowcore.context.TaskRunContext`),
    reserved now if it has none yet (``_number`` -1). Atomic: its body asking for its
    id and a history writer reporting it running get the same number."""
    global _next_number
    _number_lock.acquire()
    try:
        number: int = context._number
        if number < 0:
            number = context._number = _next_number
            _next_number = number + 1
    finally:
        _number_lock.release()
    return number


def run_id_prefix() -> str:
    """This process's run id prefix: run number ``n`` has the id ``f"{prefix}-{n:x}"``."""
    return _PREFIX


class RunNumbers:
    """Task run name numbers of one flow run: per task name, counting from 0 in
    submission order (``fetch-0``, ``fetch-1``, ...). Thread-safe; a map reserves a
    consecutive block so that its run ``i`` is ``first + i``."""

    __slots__ = ("_lock", "_next")

    def __init__(self) -> None:
        # The run numbers' lock: held for a few instructions at a time, and shared so
        # that a new run reserves both its numbers at once (see reserve_run).
        self._lock = _number_lock
        self._next: dict[str, int] = {}

    def reserve(self, task_name: str, count: int = 1) -> int:
        """Reserve ``count`` consecutive numbers for ``task_name``; returns the first."""
        lock = self._lock
        lock.acquire()  # not ``with``: see reserve_run_numbers
        try:
            first = self._next.get(task_name, 0)
            self._next[task_name] = first + count
        finally:
            lock.release()
        return first

    def __reduce__(self) -> tuple[type[RunNumbers], tuple[()]]:
        return RunNumbers, ()  # numbers are handed out where the flow runs, never elsewhere


#: Numbers of task runs outside any flow run (``use_backend`` blocks, direct calls).
UNSCOPED_RUN_NUMBERS = RunNumbers()


def reserve_run(numbers: RunNumbers, task_name: str) -> tuple[str, int, int]:
    """A new run of ``task_name``: its run id, run number and name number (from
    ``numbers``, its flow run's), reserved under one lock; what
    :func:`reserve_run_numbers` and :meth:`RunNumbers.reserve` give, in one step."""
    global _next_number
    _number_lock.acquire()  # not ``with``: see reserve_run_numbers
    try:
        number = _next_number
        _next_number = number + 1
        counts = numbers._next
        name_number = counts.get(task_name, 0)
        counts[task_name] = name_number + 1
    finally:
        _number_lock.release()
    return f"{_PREFIX}-{number:x}", number, name_number


def new_flow_run_id() -> str:
    return os.urandom(16).hex()


@dataclass(slots=True, repr=False)  # its own __repr__ below: none generated
class TaskCall:
    """One task run: the task, its (resolved) arguments and where it belongs.

    ``args``/``kwargs`` hold plain values by the time the task body runs: futures are
    replaced by their results before dispatch, or, on a backend that keeps results on
    its workers (capability ``remote_results``), by the
    :class:`~flowcore.states.DeferredResult` values that stand for them, which the
    backend resolves on the worker (hooks in the parent then see those). ``log_prints``
    is resolved (task option, else the flow's).
    """

    task: Task[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    task_run_id: str
    task_run_name: str
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    flow_name: str | None = None
    submitted_at: float = 0.0
    log_prints: bool = False
    #: attempts already spent on this run before this dispatch (lost with crashed workers)
    attempts_used: int = 0
    #: hash of the flow run's parameters, for cache policies that use them (else None)
    flow_parameters_key: str | None = None
    #: the flow run it belongs to (for ``get_run_context``; pickles lightly, see FlowRun)
    flow_run: FlowRun | None = None
    #: the name of the backend it was submitted to; None for a direct call (run inline)
    backend: str | None = None
    #: the run's number (its id is ``f"{run_id_prefix()}-{number:x}"`` where it was
    #: made) and, for a run named ``<task>-<n>``, ``n``; -1 where not known (calls made
    #: elsewhere than ``Task.make_call``, names from a ``task_run_name`` template)
    number: int = -1
    name_number: int = -1
    #: when its body first started, where it runs in the submitting process (inline,
    #: threads); 0.0 until then, and where it runs in another process (a watcher such
    #: as :mod:`flowcore.deferred_runs` reads it to report a long run as running)
    started_at: float = 0.0
    #: the ident of the thread that started its body (with ``started_at``), else 0
    started_in: int = 0

    @property
    def parameters(self) -> dict[str, Any]:
        """The arguments bound to the task's parameters, defaults applied."""
        return self.task.bind(self.args, self.kwargs)

    # Prefect's names for what a hook's ``task_run`` argument tells.
    @property
    def id(self) -> str:
        """The task run's id (``task_run_id``)."""
        return self.task_run_id

    @property
    def name(self) -> str:
        """The task run's name (``task_run_name``)."""
        return self.task_run_name

    def __repr__(self) -> str:
        return f"TaskCall({self.task_run_name!r}, id={self.task_run_id!r})"


@dataclass(frozen=True)
class FlowRun:
    """One flow run, as observers and loggers see it."""

    flow_name: str
    run_id: str
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    backend: str = ""
    parent_run_id: str | None = None
    started_at: float = 0.0
    #: the numbers in its task run names (``double-0``, ``double-1``, ...)
    run_numbers: RunNumbers = field(default_factory=RunNumbers, compare=False, repr=False)
    #: False in a copy that was pickled without its parameters (see ``__reduce__``)
    has_parameters: bool = field(default=True, compare=False, repr=False)
    _portable: Any = field(default=None, compare=False, repr=False)
    #: what the flow run asks about its task runs' results (``flowcore.results.ResultPlan``):
    #: None unless it keeps results or resumes a run; travels with its calls
    results: Any = field(default=None, compare=False, repr=False)
    #: the options its backend was made with, when known (``registry.options_of``);
    #: recorded in the run history, not sent to workers
    backend_options: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def id(self) -> str:
        """The flow run's id (``run_id``), under Prefect's name for it."""
        return self.run_id

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (a copy travels with each task call to a worker) with the parameters
        only when they pickle to at most :data:`PORTABLE_PARAMETERS_LIMIT` bytes: a
        flow given a large array or an open connection must not send it with every
        task run, nor fail its runs. The copy has ``has_parameters`` False then, and
        empty parameters. The decision is taken once per flow run."""
        portable = self._portable
        if portable is None:
            portable = (self.parameters,) if _pickles_small(self.parameters) else ()
            object.__setattr__(self, "_portable", portable)
        parameters = portable[0] if portable else {}
        return (
            _restore_flow_run,
            (self.flow_name, self.run_id, self.name, parameters, self.backend, self.parent_run_id,
             self.started_at, bool(portable), self.results),
        )


#: the largest pickled size of a flow run's parameters sent to workers with its calls
PORTABLE_PARAMETERS_LIMIT = 64 * 1024


def _pickles_small(parameters: dict[str, Any]) -> bool:
    if not parameters:
        return True
    try:
        import cloudpickle

        return len(cloudpickle.dumps(parameters)) <= PORTABLE_PARAMETERS_LIMIT
    except Exception:  # unpicklable: stays home
        return False


def _restore_flow_run(
    flow_name: str, run_id: str, name: str, parameters: dict[str, Any], backend: str,
    parent_run_id: str | None, started_at: float, has_parameters: bool, results: Any = None,
) -> FlowRun:
    return FlowRun(
        flow_name, run_id, name, parameters, backend, parent_run_id, started_at,
        has_parameters=has_parameters, results=results,
    )


__all__ = [
    "PORTABLE_PARAMETERS_LIMIT",
    "UNSCOPED_RUN_NUMBERS",
    "FlowRun",
    "RunNumbers",
    "TaskCall",
    "new_flow_run_id",
    "new_task_run_id",
    "reserve_run",
    "reserve_run_numbers",
    "run_id_prefix",
]
