"""Run contexts (contextvars): which backend ``.submit`` uses and what a run owns.

* :class:`RunScope` is opened by ``use_backend`` and by every flow run: it holds the
  backend (created on first submit) and the futures submitted inside it, which are
  awaited when the scope closes.
* :class:`FlowRunContext` is a RunScope that also knows its flow run.
* :class:`TaskRunContext` is set while a task body runs (for ``get_run_logger``).
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable, Iterable
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Protocol

from flowcore.calls import FlowRun, TaskCall

if TYPE_CHECKING:
    import logging

    from flowcore.backend import Backend
    from flowcore.flows import Flow
    from flowcore.futures import TaskFuture
    from flowcore.results import _Resume


class BackendSlot:
    """The backend of a scope, and whether the scope must shut it down.

    Backend objects are cheap to create (no workers before the first submit), so a
    run creates its backend up front: bad options fail before the flow body runs.
    """

    def __init__(self, instance: Backend, *, owned: bool) -> None:
        self.instance = instance
        self.owned = owned

    @property
    def name(self) -> str:
        return self.instance.name

    def get(self) -> Backend:
        return self.instance

    def close(self, *, wait: bool = True, cancel_futures: bool = False) -> None:
        """Shut the backend down if this slot owns it; otherwise do nothing."""
        if self.owned:
            self.instance.shutdown(wait=wait, cancel_futures=cancel_futures)

    def close_may_block(self) -> bool:
        """Whether :meth:`close` may wait for workers: this slot owns a backend that
        has started some (one that does not say, ``started``, is taken to have)."""
        return self.owned and bool(getattr(self.instance, "started", True))

    def borrow(self) -> BackendSlot:
        """A slot that uses this one's backend and never shuts it down (for subflows)."""
        return BackendSlot(self.instance, owned=False)


class Tracked(Protocol):
    """What a scope tracks until it finishes: a task future, or a map's block of runs."""

    def wait(self, timeout: float | None = None) -> None: ...

    def done(self) -> bool: ...

    def cancel(self) -> bool: ...

    def live_run_ids(self) -> set[str]: ...


class RunScope:
    """A scope in which tasks may be submitted: a backend plus the futures it ran.

    Memory stays bounded by the work in flight: a future leaves the scope when it
    finishes; only failed ones are kept (to report failures nobody looked at).
    """

    def __init__(self, slot: BackendSlot, parent: RunScope | None = None) -> None:
        self.slot = slot
        self.parent = parent
        self._pending: set[Tracked] = set()
        #: the scope's :class:`flowcore.dispatch.Dispatcher`, made on first submit
        self.dispatcher: Any = None
        self.failed: list[TaskFuture[Any]] = []
        # A use_backend block inside a flow still belongs to that flow run.
        self.flow_run: FlowRun | None = parent.flow_run if parent is not None else None
        self.log_prints: bool = parent.log_prints if parent is not None else False

    def backend(self) -> Backend:
        return self.slot.get()

    def track(self, item: Tracked) -> None:
        """Count ``item`` (a future, or a map's block of runs) as this scope's until it
        finishes; called before it is dispatched."""
        self._pending.add(item)  # set.add/discard/list() are atomic under the GIL

    def finished(self, item: Tracked, failed: Iterable[TaskFuture[Any]] = ()) -> None:
        """Called by a tracked item when all its runs have reached their final state;
        ``failed`` are the futures of its runs that did not complete."""
        if failed:
            self.failed.extend(failed)  # before leaving _pending: wait_all() then sees them
        self._pending.discard(item)

    def outstanding(self) -> list[Tracked]:
        """The tracked items that have not finished yet."""
        return list(self._pending)

    def wait_all(self) -> None:
        """Block until every tracked future has finished (including ones added meanwhile)."""
        while True:
            outstanding = self.outstanding()
            if not outstanding:
                return
            for future in outstanding:
                future.wait()


class FlowRunContext(RunScope):
    """The scope of one flow run."""

    def __init__(
        self,
        flow: Flow[..., Any],
        run: FlowRun,
        slot: BackendSlot,
        *,
        log_prints: bool,
        parent: RunScope | None,
    ) -> None:
        super().__init__(slot, parent)
        self.flow = flow
        self.flow_run = run
        self.log_prints = log_prints
        #: the attempt of the flow run this scope belongs to (1 for the first)
        self.attempt = 1
        self.logger: logging.LoggerAdapter[logging.Logger] | None = None
        #: an async flow's attempt whose body is awaited on the running loop of the
        #: thread with this ident, keeping no results and capturing no prints: direct
        #: calls of plain async tasks made in that thread, outside any task run, may
        #: take the short awaited path (flowcore.direct_runs.call_async); else 0
        self.awaits_plain_in = 0
        #: the loop of that thread, while ``awaits_plain_in`` is set
        self.awaiting_loop: Any = None


class TaskRunContext:
    """Set while a task body runs. ``call`` is None on the direct-call fast path,
    where the run id is made only if something asks for it."""

    __slots__ = (
        "_call", "_name_number", "_nested", "_number", "args", "attempt", "flow_run", "kwargs", "logger", "task",
    )

    def __init__(
        self,
        task: Any,
        call: TaskCall | None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        flow_run: FlowRun | None = None,
        number: int = -1,
        name_number: int = -1,
    ) -> None:
        self.task = task
        self._call = call
        self.args = args
        self.kwargs = kwargs
        self.flow_run = flow_run
        #: the run number and name number of this run (batched direct calls, see
        #: flowcore.direct_runs), -1 when none is reserved: two ints rather than a
        #: tuple, one object less per awaited run in flight. A batched run has its
        #: name number from its start; its run number may be -1 until ``call`` is
        #: first asked for (then reserved), else its buffer reserves it in bulk.
        self._number = number
        self._name_number = name_number
        self.logger: logging.LoggerAdapter[logging.Logger] | None = None
        self._nested: RunScope | None = None
        #: the attempt running now (1 for the first; retries count on)
        self.attempt = 1

    def nested_scope(self) -> RunScope:
        """The scope of task runs submitted from this run's body where its flow's scope
        is out of reach (a pool thread, a worker process): they run inline, here, one
        after the other. Made on first use."""
        scope = self._nested
        if scope is None:
            from flowcore.selection import get_backend

            scope = RunScope(BackendSlot(get_backend("sequential"), owned=True))
            call = self.call
            flow_run = self.flow_run or call.flow_run
            if flow_run is None and call.flow_run_id is not None:
                flow_run = FlowRun(call.flow_name or "", call.flow_run_id, call.flow_run_name or "")
            scope.flow_run = flow_run
            scope.log_prints = call.log_prints
            self._nested = scope
        return scope

    def cached_logger(self) -> logging.LoggerAdapter[logging.Logger] | None:
        """The run logger made for this run so far, if any."""
        return self.logger

    @property
    def call(self) -> TaskCall:
        if self._call is None:
            if self._name_number < 0:
                self._call = self.task.make_call(self.args, self.kwargs or {}, self.flow_run, False)
            else:  # the ids its run is reported under (flowcore.direct_runs)
                from flowcore.calls import number_of, run_id_prefix

                if self._number < 0:  # taken now, the first time it is asked for
                    number_of(self)
                flow_run = self.flow_run
                task = self.task
                if task.options.task_run_name is None:
                    name = f"{task.name}-{self._name_number}"
                else:
                    name = task.run_name_for(self.args, self.kwargs or {}, flow_run)
                self._call = TaskCall(
                    task, self.args, self.kwargs or {}, f"{run_id_prefix()}-{self._number:x}",
                    name, flow_run.run_id if flow_run else None,
                    flow_run.name if flow_run else None, flow_run.flow_name if flow_run else None,
                    0.0, False, 0, None, flow_run,
                )
        return self._call


_scope: contextvars.ContextVar[RunScope | None] = contextvars.ContextVar(
    "flowcore_scope", default=None
)
_task_run: contextvars.ContextVar[TaskRunContext | None] = contextvars.ContextVar(
    "flowcore_task_run", default=None
)


#: set by :func:`flowcore.results.resume` around a flow call: the next top-level flow
#: run resumes that run. Kept here, not in flowcore.results, so that a flow run asks
#: :func:`resuming` without loading the results machinery.
_resuming: contextvars.ContextVar[_Resume | None] = contextvars.ContextVar(
    "flowcore_resuming", default=None
)


def resuming() -> bool:
    """Whether the next top-level flow run started here resumes an earlier run."""
    return _resuming.get() is not None


def current_scope() -> RunScope | None:
    """The innermost flow run or ``use_backend`` block, or None."""
    return _scope.get()


def submission_scope() -> RunScope | None:
    """Where ``.submit`` and ``.map`` send runs: the innermost scope; inside a task body
    that cannot see one (it runs on a pool thread or in a worker process), that task
    run's inline :meth:`~TaskRunContext.nested_scope`; else None."""
    scope = _scope.get()
    if scope is not None:
        return scope
    task_run = current_task_run()
    return task_run.nested_scope() if task_run is not None else None


def current_flow_run() -> FlowRunContext | None:
    """The innermost flow run context, or None outside flows."""
    scope = _scope.get()
    while scope is not None and not isinstance(scope, FlowRunContext):
        scope = scope.parent
    return scope


#: the coroutines that await a run's body without setting ``_task_run`` (each set of a
#: context variable makes two objects, and thousands of awaited runs in flight make
#: the cyclic GC run more often: see :func:`flowcore.direct_runs.call_async`): their
#: code object -> what gives that run's TaskRunContext from their frame (made when
#: first asked for, then the same one until the run ends). Registered by
#: :mod:`flowcore.direct_runs`; a flow's attempts are registered too, giving None: a
#: flow run's body (a subflow awaited in a task) belongs to no task run.
awaiting_codes: dict[CodeType, Callable[[FrameType], TaskRunContext | None]] = {}
#: asyncio task -> how many runs awaited on the short path are in progress in it (their
#: bodies run inline in it, found on its stack): flowcore's loops look at the stack of
#: a task that starts a task or a thread only when it is named here (see
#: :mod:`flowcore.coroutines`). Kept by :mod:`flowcore.direct_runs`.
awaiting: dict[Any, int] = {}


def current_task_run() -> TaskRunContext | None:
    """The task run whose body is executing here, or None.

    A run awaited on the short path (:func:`flowcore.direct_runs.call_async`) is not
    set in the context variable when it starts: it is found the first time its body
    (or any code on the body's stack) asks, by walking this thread's stack up to the
    coroutine that awaits the body, and is then set in the current context, so that
    later questions get it at once and the tasks, callbacks and threads the body
    starts from then on (which copy the context) see it too."""
    task_run = _task_run.get()
    if task_run is None and awaiting_codes:
        return awaited_run(sys._getframe(1))
    return task_run


def awaited_run(frame: FrameType | None, stop: CodeType | None = None) -> TaskRunContext | None:
    """The innermost run awaited on the short path whose coroutine is on the stack at
    or below ``frame`` (see :func:`current_task_run`), set in the current context; or
    None when there is none (looking no further down than a frame of code ``stop``)."""
    codes = awaiting_codes
    while frame is not None:
        code = frame.f_code
        make = codes.get(code)
        if make is not None:
            context = make(frame)  # the same context each time for one run
            _task_run.set(context)
            return context
        if code is stop:
            return None
        frame = frame.f_back
    return None


__all__ = [
    "BackendSlot",
    "FlowRunContext",
    "RunScope",
    "TaskRunContext",
    "awaited_run",
    "awaiting",
    "awaiting_codes",
    "current_flow_run",
    "current_scope",
    "current_task_run",
    "resuming",
    "submission_scope",
]
