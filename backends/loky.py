"""The ``loky`` backend: tasks run in a reusable pool of worker processes.

For CPU-bound pure-Python work: every worker has its own interpreter and GIL. The
pool is process-wide, as joblib's is: created on the first submit, shared by every
flow run with the same ``max_workers`` (idle workers exit after ``idle_timeout``
seconds), killed at interpreter exit, never outliving the parent. Callables and arguments travel with cloudpickle, so
functions from ``__main__``, closures and lambdas work.

Worker deaths are pinned on their task: every worker journals the run it executes
(``flowcore.backends._supervision.journal``), so when loky reports a broken pool, the run whose worker
died ends ``Crashed`` for that attempt (with the exit code or signal) and is retried
if its retries allow; the runs that were only lost with the pool are resubmitted to
a fresh one. Timeouts stop the run inside its worker with a timer signal, which also
interrupts blocking calls, so the worker stays in the pool.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from typing import Any, TypeVar

from flowcore.backend import BackendKind, BackendSpec, Capabilities, WorkerLost
from flowcore.errors import BackendShutdownError
from flowcore.hookspecs import hookimpl
from flowcore.serialization import send_back

from ._supervision.journaled import JournaledWorkers

T = TypeVar("T")

DEFAULT_IDLE_TIMEOUT = 300.0  # seconds; joblib keeps its workers this long too

# One pool per worker count for the whole process, shared by every LokyBackend and
# reused across flow runs. loky's own get_reusable_executor keeps one pool *per
# thread*, and flowcore submits from several threads (the caller, the batch feeder,
# recovery threads), which would multiply the worker processes.
_pools: dict[int, Any] = {}
_pools_lock = threading.Lock()
_exit_hook_installed = False


def shared_pool(max_workers: int, idle_timeout: float) -> Any:
    """The process-wide loky pool with ``max_workers`` workers, created on first use."""
    global _exit_hook_installed
    with _pools_lock:
        pool = _pools.get(max_workers)
        if pool is None:
            from loky import ProcessPoolExecutor

            from ._supervision.journal import journal_directory, open_pool_worker_journal

            pool = ProcessPoolExecutor(
                max_workers=max_workers,
                timeout=idle_timeout,
                initializer=open_pool_worker_journal,
                # This pid: a worker that starts after this process died ends (12.19).
                initargs=(journal_directory(), os.getpid()),
            )
            _pools[max_workers] = pool
            if not _exit_hook_installed:
                atexit.register(_kill_all_pools)
                _exit_hook_installed = True
        return pool


def discard_pool(pool: Any) -> None:
    """Forget a broken pool, so that the next request builds a fresh one, and shut it
    down: its threads, queues and semaphores are released, not left to leak."""
    with _pools_lock:
        for size, known in list(_pools.items()):
            if known is pool:
                del _pools[size]
    with contextlib.suppress(Exception):
        pool.shutdown(wait=False)


def _kill_all_pools() -> None:
    # A worker stuck in C code would not notice that its parent is gone.
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        with contextlib.suppress(Exception):
            pool.shutdown(wait=False, kill_workers=True)


class LokyBackend(JournaledWorkers):
    """Runs tasks on loky's reusable process pool."""

    name = "loky"
    kind = BackendKind.PROCESSES
    capabilities = Capabilities(
        batching=True, stops_running=True, hard_timeouts=True, interrupts_blocking=True,
        local_processes=True,
    )

    def __init__(self, max_workers: int | None = None, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        from loky import cpu_count

        if max_workers is None:
            max_workers = cpu_count()
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers for the loky backend must be a positive int, got {max_workers!r}")
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)) or idle_timeout <= 0:
            raise ValueError(f"idle_timeout for the loky backend must be a positive number of seconds, got {idle_timeout!r}")
        self.max_workers = max_workers
        self.idle_timeout = float(idle_timeout)
        self._lock = threading.Lock()
        self._closed = False
        self._executor: Any = None
        self._pending: set[Future[Any]] = set()
        from ._supervision.journal import CrashExplainer

        self._crashes = CrashExplainer()
        #: (error, pool, its workers' exit codes when it failed): see _settled
        self._failed_pool: tuple[BaseException | None, Any, dict[int, int | None]] | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        from concurrent.futures.process import BrokenProcessPool  # imports multiprocessing

        with self._lock:
            if self._closed:
                raise BackendShutdownError(
                    "backend 'loky' has been shut down; create a new one with "
                    "flowcore.get_backend('loky')"
                )
        pool = shared_pool(self.max_workers, self.idle_timeout)
        # The value comes back through send_back: one that does not pickle in the
        # worker, or not unpickle here, fails its own run instead of breaking the pool.
        try:
            future: Future[T] = pool.submit(send_back, fn, *args, **kwargs)
        except (BrokenProcessPool, RuntimeError):
            # A worker died (or the pool was shut down) since the last submit.
            discard_pool(pool)
            pool = shared_pool(self.max_workers, self.idle_timeout)
            future = pool.submit(send_back, fn, *args, **kwargs)
        self._executor = pool
        self._pending.add(future)
        future.add_done_callback(lambda done: self._settled(done, pool))
        return future

    def _settled(self, future: Future[Any], pool: Any) -> None:
        # Runs before the core's callback: remember which pool a failure came from, so
        # explain_failure reads that pool even if another thread built a new one since.
        # Its workers' exit codes are read here, once per error, in the pool's thread
        # before it kills the survivors: then only the dead workers have one (12.16).
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            exc = future.exception()
            failed = self._failed_pool
            if failed is None or failed[0] is not exc:
                from ._supervision.journal import worker_exit_codes

                codes = worker_exit_codes(getattr(pool, "_processes", None) or {})
                self._failed_pool = (exc, pool, codes)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with ``cancel_futures``, cancel this backend's queued
        runs. The shared pool stays up for the other users of it: the core stops runs
        that are executing by killing just their workers (see ``flowcore.backends._supervision``)."""
        with self._lock:
            self._closed = True
            pending = list(self._pending)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            futures_wait(pending)

    def explain_failure(self, task_run_id: str, exc: BaseException) -> WorkerLost | None:
        from ._supervision.journal import worker_exit_codes

        failed = self._failed_pool
        if failed is not None and failed[0] is exc:
            codes = failed[2]
            lost = self._crashes.explain(task_run_id, exc, lambda: codes)
        else:
            pool = self._executor
            lost = self._crashes.explain(
                task_run_id, exc, lambda: worker_exit_codes(getattr(pool, "_processes", None) or {})
            )
        return self.deadline_verdict(task_run_id) or lost


def create(max_workers: int | None = None, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> LokyBackend:
    """Factory: ``loky`` takes ``max_workers`` (default: usable CPUs) and ``idle_timeout``."""
    return LokyBackend(max_workers=max_workers, idle_timeout=idle_timeout)


@hookimpl
def flowcore_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name="loky",
            factory=create,
            description="a reusable pool of worker processes (CPU-bound Python code)",
            kind=BackendKind.PROCESSES,
            requires=("loky", "cloudpickle"),
            extra="joblib",
            capabilities=LokyBackend.capabilities,
        )
    ]


__all__ = ["LokyBackend", "create"]
