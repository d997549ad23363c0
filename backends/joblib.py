"""The ``joblib`` backend: tasks run through joblib's own parallel backends.

Whatever joblib would use here is what runs the tasks: the backend active in
``joblib.parallel_config`` (or ``parallel_backend``) when the flowcore backend is
created, or the one named by the ``backend`` option -- ``loky``, ``threading``,
``multiprocessing``, ``sequential`` or any backend registered with
``joblib.register_parallel_backend`` (Ray, Spark, Dask's joblib backend ...).
``n_jobs``: an explicit value, else the one ``joblib.parallel_config`` sets, else every
core (-1). joblib's own default (one job, in the caller's process) is not used: a user
who picks a process backend expects parallel workers. Negative values count from the
CPU count, as in joblib. The worker count is logged (INFO) when the pool starts.

The pool is started on the first submit. Futures, states, retries and timeouts are
flowcore's, as on every backend. A worker that dies is pinned on its run through the
worker journal when joblib's pool is loky-based (the default).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from flowcore.backend import BackendKind, BackendSpec, Capabilities, WorkerLost
from flowcore.errors import BackendShutdownError
from flowcore.hookspecs import hookimpl

from ._supervision.journaled import JournaledWorkers

T = TypeVar("T")

logger = logging.getLogger("flowcore.backends.joblib")

_KINDS = {
    "SequentialBackend": BackendKind.INLINE,
    "ThreadingBackend": BackendKind.THREADS,
    "LokyBackend": BackendKind.PROCESSES,
    "MultiprocessingBackend": BackendKind.PROCESSES,
}

#: on joblib's process pools (loky, multiprocessing) workers journal their runs
POOL_CAPABILITIES = Capabilities(
    batching=True, stops_running=True, hard_timeouts=True, interrupts_blocking=True,
    local_processes=True,
)


class JoblibBackend(JournaledWorkers):
    """Adapts a joblib parallel backend (and its pool) to flowcore's Executor protocol."""

    name = "joblib"

    def __init__(self, backend: str | None = None, n_jobs: int | None = None, **backend_options: Any) -> None:
        from joblib import Parallel

        if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0):
            raise ValueError(
                f"n_jobs for the joblib backend must be a non-zero int or None, got {n_jobs!r}"
            )
        if n_jobs is None and _configured_n_jobs() is None:
            n_jobs = -1  # not joblib's default of 1: every core (issue 12.2)
        # Parallel resolves the backend exactly as joblib would here (parallel_config
        # included); flowcore drives that backend object directly, through Parallel's
        # private _backend, _effective_n_jobs and _initialize_backend: joblib has no
        # public API for a backend object driven from outside a Parallel call.
        self._parallel = Parallel(n_jobs=n_jobs, backend=backend, **backend_options)
        joblib_backend = self._parallel._backend
        self.joblib_backend_name = type(joblib_backend).__name__
        self.kind = _KINDS.get(self.joblib_backend_name, BackendKind.CLUSTER)
        self.max_workers = max(1, int(self._parallel._effective_n_jobs()))
        if self.max_workers == 1 and self.kind is not BackendKind.CLUSTER:
            self.kind = BackendKind.INLINE  # joblib runs n_jobs=1 sequentially
        self.capabilities = Capabilities.for_kind(self.kind)
        if self.kind is BackendKind.PROCESSES:  # pool workers journal their runs
            self.capabilities = POOL_CAPABILITIES
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        from ._supervision.journal import CrashExplainer

        self._crashes = CrashExplainer()
        #: (error, the pool's worker exit codes when it failed): see deliver in submit
        self._failed_processes: tuple[BaseException, dict[int, int | None]] | None = None

    def _backend(self) -> Any:
        with self._lock:
            if self._closed:
                raise BackendShutdownError(
                    "backend 'joblib' has been shut down; create a new one with "
                    "flowcore.get_backend('joblib')"
                )
            if not self._started:
                if self.kind is BackendKind.PROCESSES:
                    from ._supervision.journal import export_to_workers

                    export_to_workers()  # the pool's workers journal their runs
                self._parallel._initialize_backend()
                self._started = True
                logger.info(
                    "backend 'joblib' started joblib's %s with %d worker%s (%s)",
                    self.joblib_backend_name,
                    self.max_workers,
                    "" if self.max_workers == 1 else "s",
                    self.kind,
                )
            return self._parallel._backend

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        backend = self._backend()
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        call = functools.partial(fn, *args, **kwargs)
        if self.kind is BackendKind.PROCESSES:
            # Send the call as one pickle (protocol 5). joblib's pool would memory-map
            # large arrays into a folder tied to the joblib.Parallel call in progress on
            # its shared executor, and any such call elsewhere in the process ends that
            # context under flowcore's runs (KeyError while pickling).
            import cloudpickle

            try:
                call = functools.partial(_run_pickled, cloudpickle.dumps(call, protocol=5))
            except Exception as exc:  # reported like a pool's pickling failure
                future.set_exception(exc)
                return future
        if self.kind is BackendKind.INLINE or type(backend).__name__ == "SequentialBackend":
            try:
                future.set_result(call())
            except Exception as exc:
                future.set_exception(exc)
            return future

        def deliver(out: Any) -> None:
            try:
                result = backend.retrieve_result_callback(out)
            except BaseException as exc:
                # In the pool's thread, before it kills the survivors: read its workers'
                # exit codes now, once per error, while only the dead ones have one
                # (issue 12.16), so the crash is pinned on the pool it happened in.
                failed = self._failed_processes
                if failed is None or failed[0] is not exc:
                    from ._supervision.journal import worker_exit_codes

                    workers = getattr(backend, "_workers", None)
                    codes = worker_exit_codes(getattr(workers, "_processes", None) or {})
                    self._failed_processes = (exc, codes)
                future.set_exception(exc)
            else:
                future.set_result(result)

        if getattr(backend, "supports_retrieve_callback", False):
            from concurrent.futures.process import BrokenProcessPool

            try:
                backend.submit(call, callback=deliver)
            except BrokenProcessPool:
                # A worker died and broke the pool: joblib builds a fresh one when
                # its backend is configured again.
                with self._lock:
                    self._parallel._initialize_backend()
                    backend = self._parallel._backend
                backend.submit(call, callback=deliver)
        else:  # the backend can only be asked for the result: wait for it aside
            out = backend.submit(call)

            def wait_aside() -> None:
                try:
                    future.set_result(backend.retrieve_result(out))
                except BaseException as exc:
                    future.set_exception(exc)

            threading.Thread(target=wait_aside, name="flowcore-joblib-result", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Release joblib's pool (joblib keeps its loky workers for reuse). Runs that
        are executing are stopped by the core, which kills just their workers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._started
        if not started:
            return
        self._parallel._backend.terminate()

    def explain_failure(self, task_run_id: str, exc: BaseException) -> WorkerLost | None:
        def exit_codes() -> dict[int, int | None]:
            from ._supervision.journal import worker_exit_codes

            failed = self._failed_processes
            if failed is not None and failed[0] is exc:
                return failed[1]
            workers = getattr(self._parallel._backend, "_workers", None)
            return worker_exit_codes(getattr(workers, "_processes", None) or {})

        lost = self._crashes.explain(task_run_id, exc, exit_codes)
        return self.deadline_verdict(task_run_id) or lost

    def __repr__(self) -> str:
        return (
            f"<JoblibBackend joblib={self.joblib_backend_name} kind={self.kind} "
            f"max_workers={self.max_workers}>"
        )


def _configured_n_jobs() -> int | None:
    """The ``n_jobs`` an enclosing ``joblib.parallel_config``/``parallel_backend`` sets,
    or None when none does."""
    from joblib.parallel import get_active_backend

    return get_active_backend()[1]  # type: ignore[no-any-return]


def _run_pickled(payload: bytes) -> Any:
    """Run a call sent as one pickle (see :meth:`JoblibBackend.submit`), in a worker of
    joblib's pool. Importing the journal opens it (from the variable the parent
    exported) before the run starts, so a crash is pinned on this run. Its value
    travels back as a :class:`~flowcore.serialization.SentBack`; a call that cannot
    be unpickled here fails its run, not the worker."""
    import pickle

    from flowcore.serialization import CallNotLoaded, SentBack, one_line

    from ._supervision import journal  # noqa: F401  (opens this worker's journal)

    try:
        call = pickle.loads(payload)
    except Exception as error:
        raise CallNotLoaded(f"the call could not be unpickled in the worker: {one_line(error)}") from None
    return SentBack(call())


def create(backend: str | None = None, n_jobs: int | None = None, **backend_options: Any) -> JoblibBackend:
    """Factory: ``joblib`` takes joblib's ``backend`` name, ``n_jobs`` (default: the
    configured value, else every core) and backend options."""
    return JoblibBackend(backend=backend, n_jobs=n_jobs, **backend_options)


@hookimpl
def flowcore_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name="joblib",
            factory=create,
            description="joblib's configured parallel backend (loky, threading, or any registered one)",
            kind=BackendKind.PROCESSES,
            requires=("joblib",),
            extra="joblib",
            capabilities=POOL_CAPABILITIES,  # joblib's default: a loky pool
        )
    ]


__all__ = ["JoblibBackend", "create"]
