"""Options and fixtures for the flowcore benchmark suite.

The suite is only collected when named (``pytest benchmarks``): ``testpaths`` in
pyproject.toml points at ``tests``. ``--quick`` shrinks every size so the whole suite
runs in a few seconds; CI runs ``pytest benchmarks --quick --benchmark-disable`` so the
benchmarks keep working even though nobody reads their timings there.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flowcore benchmarks")
    group.addoption(
        "--quick",
        action="store_true",
        default=False,
        help="flowcore benchmarks: small sizes and few rounds (a smoke run, not a measurement)",
    )


@pytest.fixture(scope="session")
def quick(request: pytest.FixtureRequest) -> bool:
    """True when the suite runs with ``--quick``."""
    return bool(request.config.getoption("--quick"))
