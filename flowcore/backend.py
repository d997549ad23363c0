"""The backend protocol: what an execution backend is, and the record that registers one.

A backend is a :class:`concurrent.futures.Executor` with three more attributes:
``name``, ``kind`` and ``max_workers``. It only executes callables; retries, caching,
timeouts and states live in :mod:`flowcore.engine`, which runs the same way wherever
a backend puts it. If you can write an Executor you can write a backend.

Contract for implementers:

* ``submit(fn, /, *args, **kwargs) -> Future``: schedule ``fn(*args, **kwargs)``; never
  block until it finishes (an inline backend may run it before returning). Raises
  :class:`~flowcore.errors.BackendShutdownError` after ``shutdown``.
* ``shutdown(wait=True, *, cancel_futures=False)``: release workers; idempotent.
* Start lazily: creating a backend must not start a pool; the first ``submit`` does.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flowcore.errors import BackendShutdownError

T = TypeVar("T")


class BackendKind(str, enum.Enum):
    """Where a backend runs work; tests and the core use it to pick behaviour."""

    INLINE = "inline"
    THREADS = "threads"
    PROCESSES = "processes"
    CLUSTER = "cluster"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class WorkerLost:
    """What a backend can tell about a run whose future failed because a worker died.

    ``culprit`` is true when the run's own worker died while executing it (the run
    ends ``Crashed`` for that attempt and is retried if its retries allow); false when
    the run was only lost along with the pool (resubmitted, no attempt counted).
    ``message`` says what happened, with the exit code or signal when known.
    """

    culprit: bool
    message: str


class Backend(Executor):
    """Base class for backends: an Executor with a name, a kind and a worker count.

    Subclasses implement :meth:`submit` and :meth:`shutdown`. ``supports_native_futures``
    is reserved for a backend that accepts its own futures as arguments (Dask); the
    core does not read it yet and resolves futures in the parent for every backend.
    """

    name: str = "backend"
    kind: BackendKind = BackendKind.THREADS
    max_workers: int = 1
    supports_native_futures: bool = False

    def explain_failure(self, task_run_id: str, exc: BaseException) -> WorkerLost | None:
        """Why the future of ``task_run_id`` failed with ``exc``, if a worker was lost.

        Called in the parent for a future that raised instead of returning a state.
        Return None when ``exc`` is not a lost worker (the run then ends ``Crashed``).
        Process backends override this; the default knows nothing.
        """
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} kind={self.kind} max_workers={self.max_workers}>"


class ExecutorBackend(Backend):
    """A backend around any Executor factory, created on first submit.

    ``factory(max_workers)`` must return a :class:`concurrent.futures.Executor`. The
    executor is created under a lock the first time work is submitted, so constructing
    the backend is free, and shut down (idempotently) by :meth:`shutdown`.
    """

    def __init__(
        self,
        name: str,
        kind: BackendKind,
        max_workers: int,
        factory: Callable[[int], Executor],
    ) -> None:
        self.name = name
        self.kind = kind
        self.max_workers = max_workers
        self._factory = factory
        self._executor: Executor | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def started(self) -> bool:
        """True once the underlying executor exists (after the first submit)."""
        return self._executor is not None

    def _get_executor(self) -> Executor:
        executor = self._executor
        if executor is not None and not self._closed:
            return executor
        with self._lock:
            if self._closed:
                raise BackendShutdownError(
                    f"backend {self.name!r} has been shut down; create a new one with "
                    f"flowcore.get_backend({self.name!r})"
                )
            if self._executor is None:
                self._executor = self._factory(self.max_workers)
            return self._executor

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._get_executor().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=cancel_futures)


@dataclass(frozen=True)
class BackendSpec:
    """What a plugin's ``flowcore_backends`` hook returns for each backend it provides.

    Attributes:
        name: the name users pass to ``backend=`` / ``use_backend`` / ``FLOWCORE_BACKEND``.
        factory: ``factory(**options) -> Backend``; must not start workers.
        description: one line shown by ``flowcore backends``.
        kind: where the backend runs work.
        requires: importable module names the backend needs; when one is missing,
            asking for the backend says which extra to install instead of failing
            inside the factory.
        extra: the ``flowcore[...]`` extra that installs ``requires``.
    """

    name: str
    factory: Callable[..., Backend]
    description: str
    kind: BackendKind
    requires: tuple[str, ...] = field(default=())
    extra: str | None = None

    def missing_requirements(self) -> list[str]:
        """The modules in ``requires`` that cannot be imported here."""
        from importlib.util import find_spec

        missing = []
        for module in self.requires:
            try:
                found = find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(module)
        return missing


def usable_cpu_count() -> int:
    """CPUs this process may run on (affinity-aware where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:  # pragma: no cover - platform specific
            pass
    return max(1, os.cpu_count() or 1)


__all__ = [
    "Backend",
    "BackendKind",
    "BackendSpec",
    "ExecutorBackend",
    "WorkerLost",
    "usable_cpu_count",
]
