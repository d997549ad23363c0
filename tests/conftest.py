"""Suite-wide isolation: no test writes the run history of the person running it, and
no progress display draws into what tests capture.

Every test runs with ``FLOWCORE_HOME`` set to one temporary directory of the session
(tests that look at the history set their own with ``monkeypatch``), the way the
caching tests set ``FLOWCORE_CACHE_DIR``. Subprocesses started by tests inherit it.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def _session_flowcore_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flowcore-home")


@pytest.fixture(autouse=True)
def _isolated_flowcore_home(monkeypatch: pytest.MonkeyPatch, _session_flowcore_home: Path) -> None:
    monkeypatch.setenv("FLOWCORE_HOME", str(_session_flowcore_home))
    # The progress display draws on a terminal: not in the output that tests look at
    # (pytest -s from a terminal); tests/test_progress.py starts its own processes.
    monkeypatch.setenv("FLOWCORE_PROGRESS", "0")
