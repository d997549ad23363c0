"""Compatibility layers that move code written for other libraries onto flowcore.

* :mod:`flowcore.compat.joblib` -- a drop-in ``joblib.Parallel`` / ``delayed`` /
  ``parallel_config`` on flowcore's backends, and flowcore as a joblib backend
  (:func:`flowcore.compat.joblib.register`).

The joblib drop-in's public names are also reachable from this package
(``from flowcore.compat import Parallel, delayed``): they are the objects of
:mod:`flowcore.compat.joblib`, which is imported on the first such lookup.

Nothing here is imported by ``import flowcore``; each layer is imported on first use.
"""

from __future__ import annotations

from typing import Any

#: names looked up in :mod:`flowcore.compat.joblib` on first access
_JOBLIB_NAMES = frozenset(
    {
        "Parallel",
        "TerminatedWorkerError",
        "cpu_count",
        "delayed",
        "effective_n_jobs",
        "parallel_backend",
        "parallel_config",
        "register",
        "register_parallel_backend",
    }
)


def __getattr__(name: str) -> Any:
    """Hand out the joblib drop-in's names, importing it only when one is asked for."""
    if name in _JOBLIB_NAMES:
        from flowcore.compat import joblib

        return getattr(joblib, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_JOBLIB_NAMES)
