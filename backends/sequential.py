"""The ``sequential`` backend: runs each task inline, in submission order.

Deterministic and dependency-free: ``submit`` runs the callable before returning and
hands back a finished future. Useful for debugging (breakpoints and tracebacks work
as in plain Python) and as the reference every other backend is compared with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from flowcore.backend import Backend, BackendKind, BackendSpec, Capabilities
from flowcore.errors import BackendShutdownError
from flowcore.hookspecs import hookimpl

T = TypeVar("T")


class SequentialBackend(Backend):
    """Runs every submitted callable immediately, in the calling thread."""

    name = "sequential"
    kind = BackendKind.INLINE
    capabilities = Capabilities(in_process=True, inline=True, interrupts_blocking=True)
    max_workers = 1

    def __init__(self) -> None:
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if self._closed:
            raise BackendShutdownError(
                "backend 'sequential' has been shut down; create a new one with "
                "flowcore.get_backend('sequential')"
            )
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True


def create(**options: Any) -> SequentialBackend:
    """Factory: ``sequential`` takes no options."""
    if options:
        raise TypeError(f"the sequential backend takes no options, got {sorted(options)}")
    return SequentialBackend()


@hookimpl
def flowcore_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name="sequential",
            factory=create,
            description="runs tasks one at a time in the calling thread (deterministic, for debugging)",
            kind=BackendKind.INLINE,
            capabilities=SequentialBackend.capabilities,
        )
    ]
