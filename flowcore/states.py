"""Run states: what happened to a task or flow run, as an immutable record.

A :class:`State` has a *type* (the coarse outcome the engine acts on) and a *name*
(what users read). Several names share a type, as in Prefect:

========== ============ ==================================================
name        type         meaning
========== ============ ==================================================
Pending     PENDING      created, waiting for upstream futures or a worker
Running     RUNNING      the function is executing
Completed   COMPLETED    returned a value
Cached      COMPLETED    the value came from the cache; the body did not run
Failed      FAILED       raised an exception (after its retries)
TimedOut    FAILED       ran past ``timeout_seconds``
NotRun      FAILED       never ran because an upstream task did not complete
Crashed     CRASHED      the run did not end on its own terms: its worker died, its
                         pool broke, or Ctrl-C / ``sys.exit()`` aborted it
Cancelled   CANCELLED    cancelled before finishing (a future cancelled, a backend
                         shut down with pending runs, an awaited coroutine cancelled)
========== ============ ==================================================
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from flowcore.errors import (
    CancelledError,
    CrashedError,
    FailedRunError,
    RemoteTraceback,
    TaskTimeoutError,
    UpstreamFailedError,
)

R = TypeVar("R")


class StateType(enum.StrEnum):
    """The coarse outcome of a run; several state names map to one type."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"


_FINAL_TYPES = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
)


class DeferredResult:
    """A completed run's value kept elsewhere (a cache store): ``State.result()`` loads
    it. Subclasses implement :meth:`load`."""

    __slots__ = ()

    def load(self) -> Any:
        raise NotImplementedError

    def placeholder(self) -> Any:
        """What stays in the arguments of a downstream call that took this value once
        that run has ended (a light stand-in that need not keep the value alive).
        Default: the value itself."""
        return self


@dataclass(frozen=True, repr=False)  # its own __repr__ below: none generated
class State(Generic[R]):
    """An immutable snapshot of a run's outcome.

    Attributes:
        type: the coarse outcome (see :class:`StateType`).
        name: the user-facing name (``"Completed"``, ``"Cached"``, ``"TimedOut"`` ...).
        message: a human-readable explanation, empty when there is nothing to say.
        data: the return value, for completed states; ``None`` otherwise. A run with
            ``cache_result_in_memory=False`` holds a :class:`DeferredResult` here,
            which :meth:`result` reads back.
        exception: the exception, for every non-successful final state.
        traceback: the formatted traceback of ``exception`` as text. It survives
            pickling, so an exception raised in another process stays readable.
        timestamp: when the run entered this state (seconds since the epoch).
        started_at / finished_at: when the body started and the run finished, if known.
        attempts: how many times the body was started (1 + retries used).
        result_location: ``(storage, key)`` where the run's result was kept
            (``persist_result``; see :mod:`flowcore.results`), else None.
        cache_key: the cache key the run's value was found under (a hit) or stored
            under (a miss), for a task with a cache policy; else None.
    """

    type: StateType
    name: str
    message: str = ""
    data: Any = None
    exception: BaseException | None = None
    traceback: str | None = None
    timestamp: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    result_location: tuple[str, str] | None = None
    cache_key: str | None = None

    # -- predicates ---------------------------------------------------------
    def is_pending(self) -> bool:
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_completed(self) -> bool:
        """True for ``Completed`` and ``Cached``."""
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        """True for ``Failed``, ``TimedOut`` and ``NotRun`` (type FAILED)."""
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED

    def is_final(self) -> bool:
        """True once the run can no longer change: completed, failed, crashed or cancelled."""
        return self.type in _FINAL_TYPES

    @property
    def duration(self) -> float | None:
        """Seconds between ``started_at`` and ``finished_at``, when both are known."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    # -- result -------------------------------------------------------------
    def result(self, raise_on_failure: bool = True) -> Any:
        """Return the run's value.

        For a completed state, returns ``data``. For any other final state, raises the
        state's exception (the task's own exception type) when ``raise_on_failure`` is
        true, else returns the exception object. A state that is not final raises
        :class:`ValueError`: there is no result yet.
        """
        if self.type is StateType.COMPLETED:
            data = self.data
            if isinstance(data, DeferredResult):
                return data.load()
            return data
        if not self.is_final():
            raise ValueError(f"state {self!r} is not final: there is no result yet")
        exc = self.exception
        if exc is None:  # defensive: a failed state should always carry one
            exc = CrashedError(self.message or f"run ended in state {self.name}")
        if not raise_on_failure:
            return exc
        if exc.__traceback__ is None and self.traceback and exc.__cause__ is None:
            # The exception crossed a process boundary: keep the remote frames readable.
            exc.__cause__ = RemoteTraceback(self.traceback)
        raise exc

    def __repr__(self) -> str:
        if self.message:
            return f"{self.name}({self.message!r})"
        return f"{self.name}()"


# -- constructors -------------------------------------------------------------

_new_object = object.__new__


def completed_run(data: Any, started_at: float, finished_at: float, attempts: int) -> State[Any]:
    """A ``Completed`` state for a finished run, built for the engine's hot path.

    Equal to ``State(COMPLETED, "Completed", data=..., timestamp=finished_at, ...)``;
    it fills the instance dict directly because the frozen dataclass ``__init__``
    (one ``object.__setattr__`` per field) costs more than the task it reports on.
    """
    state = _new_object(State)
    fields = state.__dict__
    fields["type"] = StateType.COMPLETED
    fields["name"] = "Completed"
    fields["message"] = ""
    fields["data"] = data
    fields["exception"] = None
    fields["traceback"] = None
    fields["timestamp"] = finished_at
    fields["started_at"] = started_at
    fields["finished_at"] = finished_at
    fields["attempts"] = attempts
    return state



def Pending(message: str = "") -> State[Any]:
    return State(StateType.PENDING, "Pending", message)


def Running(message: str = "") -> State[Any]:
    return State(StateType.RUNNING, "Running", message)


def Completed(data: Any = None, message: str = "", **fields: Any) -> State[Any]:
    return State(StateType.COMPLETED, "Completed", message, data=data, **fields)


def Cached(data: Any = None, message: str = "", **fields: Any) -> State[Any]:
    return State(StateType.COMPLETED, "Cached", message, data=data, **fields)


def Failed(exception: BaseException | None = None, message: str = "", **fields: Any) -> State[Any]:
    """A failed state. Without ``exception`` (``Failed(message="no rows")``, as Prefect
    writes it) its exception is a :class:`~flowcore.errors.FailedRunError` with the message."""
    if exception is None:
        exception = FailedRunError(message or "the run ended Failed")
    return State(
        StateType.FAILED,
        "Failed",
        message or _describe(exception),
        exception=exception,
        **fields,
    )


def TimedOut(message: str, **fields: Any) -> State[Any]:
    return State(
        StateType.FAILED, "TimedOut", message, exception=TaskTimeoutError(message), **fields
    )


def NotRun(message: str, **fields: Any) -> State[Any]:
    return State(
        StateType.FAILED, "NotRun", message, exception=UpstreamFailedError(message), **fields
    )


def Crashed(message: str, exception: BaseException | None = None, **fields: Any) -> State[Any]:
    return State(
        StateType.CRASHED,
        "Crashed",
        message,
        exception=exception if exception is not None else CrashedError(message),
        **fields,
    )


def Cancelled(message: str = "cancelled", **fields: Any) -> State[Any]:
    return State(
        StateType.CANCELLED, "Cancelled", message, exception=CancelledError(message), **fields
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = [
    "Cached",
    "Cancelled",
    "Completed",
    "Crashed",
    "DeferredResult",
    "Failed",
    "NotRun",
    "Pending",
    "Running",
    "State",
    "StateType",
    "TimedOut",
]
