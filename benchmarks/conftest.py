"""Options and fixtures for the flowcore benchmark suite.

The suite is only collected when named (``pytest benchmarks``): ``testpaths`` in
pyproject.toml points at ``tests``. ``--quick`` shrinks every size so the whole suite
runs in a few seconds; CI runs ``pytest benchmarks --quick --benchmark-disable`` so the
benchmarks keep working even though nobody reads their timings there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flowcore benchmarks")
    group.addoption(
        "--quick",
        action="store_true",
        default=False,
        help="flowcore benchmarks: small sizes and few rounds (a smoke run, not a measurement)",
    )


@pytest.fixture(scope="session", autouse=True)
def _isolated_flowcore_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The run history of every benchmark goes to a temporary FLOWCORE_HOME, never to
    the home of whoever runs the suite (subprocesses inherit it); no progress display."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FLOWCORE_HOME", str(tmp_path_factory.mktemp("flowcore-home")))
    mp.setenv("FLOWCORE_PROGRESS", "0")  # no live display in measurements (pytest -s on a terminal)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def quick(request: pytest.FixtureRequest) -> bool:
    """True when the suite runs with ``--quick``."""
    return bool(request.config.getoption("--quick"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A ``distributed.LocalCluster`` of 2 worker processes (1 thread each) on 127.0.0.1,
    for the Dask benchmarks (skipped without ``flowcore[dask]``)."""
    distributed = pytest.importorskip("distributed")
    local = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    )
    try:
        yield local
    finally:
        local.close()
