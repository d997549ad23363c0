"""The ``threads`` backend (the default): a lazily started ThreadPoolExecutor.

Good for I/O-bound tasks and for code that releases the GIL (NumPy, pandas, most
C extensions). Option ``max_workers`` defaults to ``min(32, usable CPUs + 4)``, the
standard library's default.

A thread that blocks on ``future.result()`` (no timeout) for a task no worker has
started yet runs that task itself: the caller would only wait for a hand-off, and a
pool saturated by blocked tasks cannot deadlock it (see ``TaskFuture._steal``).
"""

from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor

from flowcore.backend import BackendKind, BackendSpec, ExecutorBackend, usable_cpu_count
from flowcore.hookspecs import hookimpl


def default_max_workers() -> int:
    return min(32, usable_cpu_count() + 4)


def _thread_pool(max_workers: int) -> Executor:
    return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="flowcore-thread")


def create(max_workers: int | None = None) -> ExecutorBackend:
    """Factory: ``threads`` takes ``max_workers`` (a positive int, or None for the default)."""
    if max_workers is None:
        max_workers = default_max_workers()
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(
            f"max_workers for the threads backend must be a positive int, got {max_workers!r}"
        )
    return ExecutorBackend("threads", BackendKind.THREADS, max_workers, _thread_pool)


@hookimpl
def flowcore_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name="threads",
            factory=create,
            description="a thread pool in this process (I/O-bound work, GIL-releasing code)",
            kind=BackendKind.THREADS,
        )
    ]


__all__ = ["create", "default_max_workers"]
