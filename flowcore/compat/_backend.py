"""flowcore as a joblib parallel backend: ``joblib.parallel_config("flowcore")``.

Libraries that call ``joblib.Parallel`` themselves (scikit-learn's ``n_jobs``) then run
on a flowcore backend. Each batch joblib hands over runs as one flowcore task run
(task ``joblib-batch``), so it gets flowcore's retries (``retries=`` as a backend
option), crash handling and observers, in a scope of its own per ``Parallel`` call.

This module imports joblib: it is loaded by :func:`flowcore.compat.joblib.register`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flowcore.compat._errors import require_joblib

joblib = require_joblib("flowcore.compat.joblib.register()")

from joblib._parallel_backends import (  # noqa: E402 - after the friendly import error
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from flowcore import task  # noqa: E402
from flowcore.backend import Backend, Capabilities  # noqa: E402
from flowcore.futures import TaskFuture  # noqa: E402


@task(name="joblib-batch")
def run_joblib_batch(batch: Callable[[], Any]) -> Any:
    """One joblib batch (a ``BatchedCalls``), run as a flowcore task."""
    return batch()


class FlowcoreBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's backend contract, fulfilled by a flowcore backend.

    Options (``joblib.parallel_config("flowcore", **options)``): ``flowcore_backend``
    (a flowcore backend name or instance, default ``loky``), ``retries`` (per batch),
    and the chosen backend's own options. ``n_jobs`` follows joblib's rules.
    """

    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    default_n_jobs = 1

    def __init__(
        self,
        flowcore_backend: str | Backend = "loky",
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        retries: int = 0,
        **backend_options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.flowcore_backend = flowcore_backend
        self.flowcore_backend_name = (
            flowcore_backend if isinstance(flowcore_backend, str) else flowcore_backend.name
        )
        self.retries = retries
        self.backend_options = backend_options
        self._capabilities = self._probe_capabilities()
        self._backend: Backend | None = None
        self._owned = False
        self._scope: Any = None
        self._futures: set[TaskFuture[Any]] = set()
        self._lock = threading.Lock()
        self.parallel: Any = None
        self._task = run_joblib_batch.with_options(retries=retries) if retries else run_joblib_batch

    def _probe_capabilities(self) -> Capabilities:
        """The chosen backend's capabilities: the instance's, or the registered ones."""
        if isinstance(self.flowcore_backend, Backend):
            return self.flowcore_backend.capabilities
        from flowcore.registry import get_registry

        return get_registry().spec(self.flowcore_backend).declared_capabilities()

    @property
    def uses_threads(self) -> bool:
        return self._capabilities.in_process

    @property
    def supports_sharedmem(self) -> bool:
        return self.uses_threads

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or self._capabilities.inline:
            return 1
        if self._capabilities.local_processes and not (
            self.in_main_thread() or self.nesting_level == 0
        ):
            return 1  # no process pools below threads, as joblib's loky backend
        if n_jobs < 0:
            from flowcore.compat._config import cpu_count

            return max(cpu_count() + 1 + n_jobs, 1)
        return n_jobs

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: Any = None,
        require: Any = None,
        **kwargs: Any,
    ) -> int:
        """Create the flowcore backend (workers start on the first batch)."""
        n = self.effective_n_jobs(n_jobs)
        if n == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        from flowcore.backend import Backend as _Backend
        from flowcore.context import BackendSlot, RunScope

        if isinstance(self.flowcore_backend, _Backend):
            self._backend, self._owned = self.flowcore_backend, False
        else:
            from flowcore.compat._config import sized_by_n_jobs
            from flowcore.selection import get_backend

            options = dict(self.backend_options)
            if sized_by_n_jobs(self._capabilities):
                options.setdefault("max_workers", n)
            self._backend, self._owned = get_backend(self.flowcore_backend, **options), True
        self._scope = RunScope(BackendSlot(self._backend, owned=False))
        self.parallel = parallel
        return n

    def submit(
        self, func: Callable[[], Any], callback: Callable[[Any], Any] | None = None
    ) -> TaskFuture[Any]:
        """Run one joblib batch as a flowcore task run; ``callback(future)`` when done."""
        from flowcore.context import _scope

        token = _scope.set(self._scope)
        try:
            future = self._task.submit(func)
        finally:
            _scope.reset(token)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _forget(self, future: TaskFuture[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def retrieve_result_callback(self, out: TaskFuture[Any]) -> Any:
        """The batch's values, or its exception: the task's own (type and traceback
        intact), or TerminatedWorkerError when a worker died running it."""
        from flowcore.states import StateType

        state = out.state
        if state.type is StateType.CRASHED:
            from flowcore.compat._errors import terminated_worker_error

            raise terminated_worker_error(state.message or "a worker process died", state.exception)
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel the batches not started; stop the workers running the others."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.cancel()
        if not ensure_ready:
            self.terminate()

    def terminate(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None and self._owned:
            backend.shutdown(wait=False, cancel_futures=True)
        self.reset_batch_stats()

    def compute_batch_size(self) -> int:
        if self.uses_threads:
            return 1
        return int(super().compute_batch_size())


def register(name: str = "flowcore") -> None:
    """Register :class:`FlowcoreBackend` with joblib under ``name``."""
    joblib.register_parallel_backend(name, FlowcoreBackend)


__all__ = ["FlowcoreBackend", "register", "run_joblib_batch"]
