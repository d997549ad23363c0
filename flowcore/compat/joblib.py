"""A drop-in for joblib's parallel API on flowcore's backends, and flowcore as a joblib backend.

Change one import::

    from joblib import Parallel, delayed                       # before
    from flowcore.compat.joblib import Parallel, delayed       # after

and the same code runs on flowcore's backends with joblib's behaviour: results in
order, the original exception type with the worker traceback, ``n_jobs`` / ``backend``
/ ``return_as`` / ``timeout`` / ``pre_dispatch`` / ``batch_size`` / ``verbose`` as in
joblib 1.6, ``parallel_config`` to configure it from the outside -- including
``parallel_config(backend="dask")`` or any other flowcore backend name.

The other direction: :func:`register` makes ``flowcore`` a joblib backend, so that
libraries that call joblib themselves (scikit-learn's ``n_jobs``) run on a flowcore
backend inside ``with joblib.parallel_config("flowcore", flowcore_backend="loky"):``.

``Parallel`` and its configuration do not need joblib (only loky, for the ``loky``
backend); :func:`register` and joblib's own custom backends do.
"""

from __future__ import annotations

from typing import Any

from flowcore.compat._config import (
    cpu_count,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from flowcore.compat._errors import _terminated_worker_class
from flowcore.compat._parallel import Parallel, delayed


def register(name: str = "flowcore") -> None:
    """Register flowcore as a joblib parallel backend named ``name`` (needs joblib).

    Then ``with joblib.parallel_config(name, flowcore_backend="threads", n_jobs=4):``
    runs every ``joblib.Parallel`` in the block -- those inside libraries too -- on that
    flowcore backend (default ``loky``), each joblib batch as a flowcore task run:
    ``retries=`` applies per batch and observers see the runs.
    """
    from flowcore.compat._backend import register as _register

    _register(name)


def __getattr__(name: str) -> Any:
    if name == "TerminatedWorkerError":
        return _terminated_worker_class()
    if name == "FlowcoreBackend":
        from flowcore.compat._backend import FlowcoreBackend

        return FlowcoreBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Parallel",
    "TerminatedWorkerError",  # noqa: F822 - made on first access (module __getattr__)
    "cpu_count",
    "delayed",
    "effective_n_jobs",
    "parallel_backend",
    "parallel_config",
    "register",
    "register_parallel_backend",
]
