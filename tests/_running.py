"""Watching a run history while a flow runs, for the tests of runs reported running
(not a test module: ``from _running import RunningWatch``; pytest puts this folder on
``sys.path``)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class RunningWatch:
    """A thread that polls the history database until a run of ``task`` reads Running
    with a start time, keeps the ``columns`` of its row in :attr:`rows`, then calls
    ``release`` (which lets the run end). After ``timeout`` seconds it releases anyway,
    with :attr:`rows` empty."""

    def __init__(
        self, database: Path, task: str, columns: str, release: Callable[[], None], timeout: float = 20.0
    ) -> None:
        self.database, self.task, self.columns = database, task, columns
        self.release, self.timeout = release, timeout
        self.rows: list[tuple[Any, ...]] = []
        self._thread = threading.Thread(target=self._watch, name=f"watch-{task}")

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout
        sql = (
            f"SELECT {self.columns} FROM task_runs_all "
            "WHERE task = ? AND state = 'Running' AND start_time IS NOT NULL"
        )
        while time.monotonic() < deadline and not self.rows:
            with contextlib.suppress(sqlite3.Error):  # not created yet, or being written
                connection = sqlite3.connect(self.database)
                try:
                    self.rows.extend(connection.execute(sql, (self.task,)).fetchall())
                finally:
                    connection.close()
            time.sleep(0.05)
        self.release()
