"""Errors of the joblib shim, shaped so that joblib users' ``except`` clauses still work."""

from __future__ import annotations

import functools
from typing import Any

from flowcore.errors import TerminatedWorkerError

JOBLIB_EXTRA_HINT = 'pip install "flowcore[joblib]"'


@functools.cache
def _terminated_worker_class() -> type[TerminatedWorkerError]:
    """flowcore's TerminatedWorkerError, also an instance of joblib's and loky's classes
    of that name where they are installed (so ``except TerminatedWorkerError`` written
    for joblib catches it)."""
    bases: list[type[BaseException]] = [TerminatedWorkerError]
    for module in ("joblib.externals.loky.process_executor", "loky.process_executor"):
        try:
            imported = __import__(module, fromlist=["TerminatedWorkerError"])
        except ImportError:
            continue
        bases.append(imported.TerminatedWorkerError)
    if len(bases) == 1:
        return TerminatedWorkerError
    return type(
        "TerminatedWorkerError",
        tuple(bases),
        {"__module__": __name__, "__doc__": TerminatedWorkerError.__doc__},
    )


def terminated_worker_error(
    message: str, cause: BaseException | None = None
) -> TerminatedWorkerError:
    """The error a call raises when a worker process died while running its work."""
    error = _terminated_worker_class()(
        "A worker process managed by the executor was unexpectedly terminated. This could be "
        "caused by a segmentation fault while calling the function or by an excessive memory "
        f"usage causing the Operating System to kill the worker.\n\n{message}"
    )
    if cause is not None:
        error.__cause__ = cause
    return error


def require_joblib(feature: str) -> Any:
    """Import joblib for ``feature``, or say how to install it."""
    try:
        import joblib
    except ImportError as exc:
        raise ImportError(
            f"{feature} needs joblib, which is not installed; fix: {JOBLIB_EXTRA_HINT}"
        ) from exc
    return joblib


__all__ = ["JOBLIB_EXTRA_HINT", "require_joblib", "terminated_worker_error"]
