"""The backend protocol: what an execution backend is, and the record that registers one.

A backend is a :class:`concurrent.futures.Executor` with a ``name``, a ``max_workers``
count and :class:`Capabilities`: one frozen record of what it can do, which is all the
core ever asks about it (``kind`` is a label for people, shown by ``flowcore
backends``, and the source of default capabilities). It only executes callables;
retries, caching, timeouts and states live in :mod:`flowcore.engine`, which runs the
same way wherever a backend puts it. If you can write an Executor you can write a
backend.

Contract for implementers:

* ``submit(fn, /, *args, **kwargs) -> Future``: schedule ``fn(*args, **kwargs)``; never
  block until it finishes (an inline backend may run it before returning). Raises
  :class:`~flowcore.errors.BackendShutdownError` after ``shutdown``.
* ``shutdown(wait=True, *, cancel_futures=False)``: release workers; idempotent.
* Start lazily: creating a backend must not start a pool; the first ``submit`` does.
* Optional methods, called only when the matching capability is declared:
  :meth:`Backend.stop_runs` (``stops_running``), :meth:`Backend.watch_deadline` and
  :meth:`Backend.unwatch_deadline` (``hard_timeouts``), :meth:`Backend.submit_kept`
  (``remote_results``). :meth:`Backend.explain_failure` is always optional.

A backend that can keep results on its workers and pass them to later tasks there
(Dask) declares ``remote_results`` and implements :meth:`Backend.submit_kept`: the
core then receives :class:`~flowcore.states.DeferredResult` values in place of large
results, and hands them back unresolved in the arguments of downstream runs; how they
are kept and referred to is the backend's own business (``backends/_native.py``).
"""

from __future__ import annotations

import enum
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from flowcore.errors import BackendShutdownError

T = TypeVar("T")


class BackendKind(enum.StrEnum):
    """Where a backend runs work: a label for people (``flowcore backends``) and the
    source of a backend's default :class:`Capabilities`. The core never branches on it."""

    INLINE = "inline"
    THREADS = "threads"
    PROCESSES = "processes"
    CLUSTER = "cluster"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do. The core reads these, never the backend's kind.

    Attributes:
        in_process: tasks run in this process: arguments and results are not
            pickled, and the runs' log records are already here.
        inline: ``submit`` runs the call in the caller's thread before it returns.
        batching: a trip to a worker costs far more than a tiny task, so runs are sent
            in adaptively sized batches.
        stops_running: :meth:`Backend.stop_runs` ends runs that are executing (by
            ending their workers); a flow that fails or is interrupted uses it.
        hard_timeouts: :meth:`Backend.watch_deadline` ends a worker whose run ignores
            its timer signal; the run then ends ``TimedOut`` (see
            :attr:`WorkerLost.timed_out`).
        remote_results: :meth:`Backend.submit_kept` keeps results on the workers and
            passes them to downstream runs there.
        interrupts_blocking: a timed-out run ends at its deadline even inside a call
            that blocks in C: a timer signal interrupts it (the main thread of a
            worker process), the engine abandons it (a thread of this process), or
            the backend ends its worker (``hard_timeouts``).
        queues_items: :meth:`Backend.enqueue` runs :class:`WorkItem` objects on its
            workers without a Future each (an in-process pool; the cheapest way to
            send a single run).
        local_processes: runs execute in a pool of worker processes on this machine
            that the backend starts and sizes itself (``max_workers``), not on a
            cluster it connects to. The joblib shim then follows joblib's rules for
            process pools (no process pool nested below threads; a nested call in a
            worker knows it runs in a pool process) and, with ``stops_running``,
            tags its batches so that an abort stops just its own workers.
        connects_to_cluster: the workers belong to a cluster the backend connects to
            (or starts): how many there are is known only once connected
            (:meth:`Backend.worker_count`), and connecting is costly, so callers
            share one instance rather than make one per call, and do not size it
            from their own worker count.
    """

    in_process: bool = False
    inline: bool = False
    batching: bool = False
    stops_running: bool = False
    hard_timeouts: bool = False
    remote_results: bool = False
    interrupts_blocking: bool = False
    queues_items: bool = False
    local_processes: bool = False
    connects_to_cluster: bool = False

    @classmethod
    def for_kind(cls, kind: BackendKind) -> Capabilities:
        """Safe defaults for a backend that declares only its kind: nothing that needs
        an optional method (stopping runs, hard timeouts, remote results).

        A backend that declares its own :class:`Capabilities` gets False for every
        field it leaves out: for ``local_processes`` and ``connects_to_cluster`` that
        means its batches are not tagged for stopping and a caller sizes it from its
        own worker count, which is always safe."""
        if kind is BackendKind.INLINE:
            return cls(in_process=True, inline=True, interrupts_blocking=True)
        if kind is BackendKind.THREADS:
            return cls(in_process=True, interrupts_blocking=True)
        if kind is BackendKind.PROCESSES:
            return cls(batching=True, interrupts_blocking=True, local_processes=True)
        return cls(batching=True, connects_to_cluster=True)


@dataclass(frozen=True)
class WorkerLost:
    """What a backend can tell about a run whose future failed because a worker died.

    ``culprit`` is true when the run's own worker died while executing it (the run
    ends ``Crashed`` for that attempt and is retried if its retries allow); false when
    the run was only lost along with the pool (resubmitted, no attempt counted).
    ``message`` says what happened, with the exit code or signal when known.
    ``timed_out`` is true when the backend ended the worker itself because the run
    outlived its timeout (see :meth:`Backend.watch_deadline`): the attempt then ends
    ``TimedOut`` rather than ``Crashed``.
    """

    culprit: bool
    message: str
    timed_out: bool = False


class WorkItem(Protocol):
    """Work for :meth:`Backend.enqueue`: it settles its own outcome."""

    def run(self) -> None:
        """Execute on a worker. Never raises (the item records its own outcome)."""

    def drop(self) -> None:
        """Called instead of :meth:`run` when the backend shuts down with
        ``cancel_futures=True`` before a worker took the item."""


class Backend(Executor):
    """Base class for backends: an Executor with a name, capabilities and a worker count.

    Subclasses implement :meth:`submit` and :meth:`shutdown`, and declare
    :attr:`capabilities` (a class attribute, or an instance attribute set in
    ``__init__``); without one, the defaults for :attr:`kind` apply
    (:meth:`Capabilities.for_kind`). Each optional method is called only when its
    capability is declared, so other backends pay nothing for it.
    """

    name: str = "backend"
    kind: BackendKind = BackendKind.THREADS
    max_workers: int = 1

    @functools.cached_property
    def capabilities(self) -> Capabilities:
        """What this backend can do (default: :meth:`Capabilities.for_kind` of its kind)."""
        return Capabilities.for_kind(self.kind)

    def stop_runs(self, task_run_ids: set[str], *, closing: bool = False) -> None:
        """End the given runs that are executing now, by ending their workers.

        Called (capability ``stops_running``) when a flow run fails, times out or is
        interrupted, after its queued runs were cancelled. ``closing``: the caller
        shuts this backend down right after (a backend that then takes its workers
        down whole may do nothing here). Runs of other flows lost with a worker are
        resubmitted by the core. Default: nothing.
        """

    def watch_deadline(self, task_run_id: str, timeout: float) -> None:
        """Watch a run sent with ``timeout`` seconds: if its worker is still executing
        it a grace period past that, end the worker; :meth:`explain_failure` then
        returns ``WorkerLost(culprit=True, timed_out=True)`` for it. Called
        (capability ``hard_timeouts``) when the run is sent; default: nothing."""

    def unwatch_deadline(self, task_run_id: str) -> None:
        """Stop watching a run (it finished). Default: nothing."""

    def submit_kept(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` -- the engine's one-run entry point
        (:func:`flowcore.engine.run_call_remote`) or a batch of calls
        (:func:`flowcore.engine.run_rows`) -- keeping large results on the workers.

        Only called when ``capabilities.remote_results`` is true. The future resolves
        with what ``fn`` returns, except that each value kept on the workers is a
        :class:`~flowcore.states.DeferredResult` that loads it on demand. A run's
        arguments may hold such deferred values of upstream runs (the core passes them
        unresolved to this backend): the backend resolves its own where the run
        executes, without moving the data through this process, and loads any other.
        Failures are reported like :meth:`submit`'s.
        """
        raise NotImplementedError(f"backend {self.name!r} does not keep results on its workers")

    def enqueue(self, item: WorkItem) -> None:
        """Have a worker call ``item.run()`` (capability ``queues_items``): no Future,
        no result; FIFO. Raises :class:`~flowcore.errors.BackendShutdownError` after
        ``shutdown``; a shutdown with ``cancel_futures=True`` calls ``item.drop()``
        for the items no worker has taken."""
        raise NotImplementedError(f"backend {self.name!r} does not queue work items")

    def worker_count(self) -> int:
        """How many tasks the backend runs at once, connecting to it first where only
        that tells (a cluster reached by address counts its worker threads then).
        Default: ``max_workers``. May raise the backend's connection error."""
        return self.max_workers

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

    ``capabilities`` defaults to those of ``kind`` (:meth:`Capabilities.for_kind`).
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
        capabilities: Capabilities | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        if capabilities is not None:
            self.capabilities = capabilities
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
        capabilities: what an instance made with the default options can do, known
            before one is made (the joblib shim decides from it how to make one);
            None: the defaults of ``kind`` (:meth:`Capabilities.for_kind`). See
            :meth:`declared_capabilities`.
    """

    name: str
    factory: Callable[..., Backend]
    description: str
    kind: BackendKind
    requires: tuple[str, ...] = field(default=())
    extra: str | None = None
    capabilities: Capabilities | None = None

    def declared_capabilities(self) -> Capabilities:
        """:attr:`capabilities`, else the defaults of :attr:`kind`."""
        if self.capabilities is not None:
            return self.capabilities
        return Capabilities.for_kind(self.kind)

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
    "Capabilities",
    "ExecutorBackend",
    "WorkItem",
    "WorkerLost",
    "usable_cpu_count",
]
