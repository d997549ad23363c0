"""Runs the conformance suite, unchanged, over every registered backend installed here."""

from __future__ import annotations

from flowcore.registry import get_registry
from flowcore.testing import BackendConformance


def _installed_backends() -> list[str]:
    backends = get_registry().backends()
    return [name for name, entry in backends.items() if not entry.spec.missing_requirements()]


#: Backends whose conformance run has its own module: dask's shares one local cluster
#: between the tests (starting one per test would cost seconds each).
RUN_ELSEWHERE = {"dask": "tests/test_dask_conformance.py"}

for _name in _installed_backends():
    if _name in RUN_ELSEWHERE:
        continue
    _class_name = "TestConformance_" + _name.replace("-", "_").replace(".", "_")
    globals()[_class_name] = type(_class_name, (BackendConformance,), {"backend_name": _name})


class TestConformanceThreadsOneWorker(BackendConformance):
    """The threads backend with a single worker: no parallelism, same contract."""

    backend_name = "threads"
    backend_options = {"max_workers": 1}  # noqa: RUF012 - class-level test configuration


class TestConformanceJoblibLoky(BackendConformance):
    """joblib's default (loky) pool with two workers."""

    backend_name = "joblib"
    backend_options = {"n_jobs": 2}  # noqa: RUF012 - class-level test configuration


class TestConformanceJoblibThreading(BackendConformance):
    backend_name = "joblib"
    backend_options = {"backend": "threading", "n_jobs": 2}  # noqa: RUF012
