"""Suite-wide isolation: no test writes the run history of the person running it, and
no progress display draws into what tests capture.

For the whole session (an autouse session fixture, so it is in place before any other
fixture runs a flow), ``FLOWCORE_HOME`` points at a temporary directory and
``FLOWCORE_PROGRESS=0``; tests that look at the history set their own home with
``monkeypatch``, the way the caching tests set ``FLOWCORE_CACHE_DIR``. Subprocesses
started by tests inherit both (helpers that strip ``FLOWCORE_*`` keep them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_flowcore_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    patch = pytest.MonkeyPatch()
    patch.setenv("FLOWCORE_HOME", str(tmp_path_factory.mktemp("flowcore-home")))
    # The progress display draws on a terminal (pytest -s): not into captured output;
    # tests/test_progress.py starts its own processes.
    patch.setenv("FLOWCORE_PROGRESS", "0")
    yield
    patch.undo()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh FLOWCORE_HOME with the run history on and the default store (test
    modules that need more of the environment define their own ``home``)."""
    directory = tmp_path / "home"
    monkeypatch.setenv("FLOWCORE_HOME", str(directory))
    for name in ("FLOWCORE_HISTORY", "FLOWCORE_HISTORY_STORE", "FLOWCORE_HISTORY_STORE_OPTIONS"):
        monkeypatch.delenv(name, raising=False)
    return directory
