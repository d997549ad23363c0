"""flowcore: Prefect-style flows and tasks without a server, on interchangeable backends.

The public API is this module's ``__all__``; everything else is importable but not
advertised. Importing flowcore loads no backend dependency (dask, joblib, loky, numpy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowcore.annotations import allow_failure, quote
from flowcore.flows import Flow, flow
from flowcore.limits import concurrency
from flowcore.selection import get_backend, use_backend
from flowcore.states import State
from flowcore.tasks import Task, task

if TYPE_CHECKING:
    from flowcore.deployments import serve
    from flowcore.futures import TaskFuture, as_completed, wait
    from flowcore.hookspecs import hookimpl
    from flowcore.loggers import get_run_logger
    from flowcore.mapping import unmapped
    from flowcore.run_context import get_run_context

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Names whose modules import flowcore does not load until they are used (PEP 562);
    # ``from flowcore import X`` comes here too. Type checkers see the imports above.
    if name == "hookimpl":  # needs pluggy
        from flowcore.hookspecs import hookimpl

        return hookimpl
    if name == "serve":  # deployments load on first use
        from flowcore.deployments import serve

        return serve
    if name == "get_run_context":  # its snapshot classes: about 2 ms to build
        from flowcore.run_context import get_run_context

        globals()[name] = get_run_context  # later lookups are plain attribute reads
        return get_run_context
    if name == "unmapped":  # flowcore.mapping (the map path's records) loads with it
        from flowcore.mapping import unmapped

        globals()[name] = unmapped
        return unmapped
    if name in ("TaskFuture", "as_completed", "wait"):  # the submit path loads with them
        from flowcore import futures

        value = getattr(futures, name)
        globals()[name] = value
        return value
    if name == "get_run_logger":  # the run loggers, and with them logging
        from flowcore.loggers import get_run_logger

        globals()[name] = get_run_logger
        return get_run_logger
    raise AttributeError(f"module 'flowcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

__all__ = [
    "Flow",
    "State",
    "Task",
    "TaskFuture",
    "__version__",
    "allow_failure",
    "as_completed",
    "concurrency",
    "flow",
    "get_backend",
    "get_run_context",
    "get_run_logger",
    "hookimpl",
    "quote",
    "serve",
    "task",
    "unmapped",
    "use_backend",
    "wait",
]
