"""The conformance suite, unchanged, on the dask backend.

One LocalCluster of two single-threaded worker processes serves the whole module (a
cluster per test would cost seconds each); every test gets its own backend connected to
it by address, which the test shuts down (closing its client, never the cluster).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("distributed")

from flowcore.backend import Backend
from flowcore.selection import get_backend
from flowcore.testing import BackendConformance


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[Any]:
    from distributed import LocalCluster

    cluster = LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # a free port: 8787 may be taken
        scheduler_kwargs={"allowed_failures": 0},  # as the backend's own cluster
    )
    try:
        yield cluster
    finally:
        cluster.close()


class TestDaskConformance(BackendConformance):
    """Tasks run in Dask worker threads: a timeout stops Python code at its next
    instruction; a call blocked in C ends with its worker, which the backend has
    restarted once the run is past its deadline and a grace period (``real_timeouts``:
    the workers run on this machine, where the backend reads their journals)."""

    capabilities = frozenset({"parallel", "processes", "real_timeouts"})

    @pytest.fixture
    def backend(self, local_cluster: Any) -> Iterator[Backend]:
        instance = get_backend("dask", address=local_cluster.scheduler_address)
        try:
            yield instance
        finally:
            instance.shutdown(wait=True)
