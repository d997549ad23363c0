"""Hard timeouts on process backends: end the worker when the timer signal cannot.

Inside a worker, a task's ``timeout_seconds`` is enforced by a timer signal, which
stops Python code and blocking calls. Code that holds the interpreter inside a long C
call (a regular expression backtracking, a C extension loop) never lets the signal
handler run. For those, the parent watches the runs it sent to process workers: the
worker journal says which run each worker is executing and since when, and a worker
still on the same attempt a grace period past its timeout is killed. The pool reports
the loss, the journal pins it on that run, and the run ends ``TimedOut`` (retried if
its retries allow); the other runs lost with the pool are resubmitted.
"""

from __future__ import annotations

import threading
import time

from .journal import journal_directory, kill_worker, pid_alive, read_journal_entries

POLL_SECONDS = 0.2


def grace_seconds(timeout: float) -> float:
    """How long past its timeout a run may go on before its worker is killed."""
    return 1.0 + 0.1 * timeout


class HardTimeouts:
    """The parent's watch over runs with a timeout on journaled worker processes."""

    def __init__(self) -> None:
        #: task run id -> (timeout seconds, the journal directories of its workers; empty:
        #: this process's own journal directory)
        self._watched: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._killed: dict[str, float] = {}  # task run id -> the timeout it outlived
        self._ended: set[tuple[int, float]] = set()  # (pid, attempt start) of workers killed
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, task_run_id: str, timeout: float, directories: tuple[str, ...] = ()) -> None:
        """Kill the worker running ``task_run_id`` once an attempt is past ``timeout``
        and the grace period. Its worker journals in one of ``directories`` (default:
        this process's journal directory, where pool workers journal)."""
        with self._cond:
            self._watched[task_run_id] = (timeout, directories)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="flowcore-hard-timeouts", daemon=True)
                self._thread.start()
            self._cond.notify()

    def unwatch(self, task_run_id: str) -> None:
        with self._cond:
            self._watched.pop(task_run_id, None)

    def killed_timeout(self, task_run_id: str) -> float | None:
        """The timeout of ``task_run_id`` if this watchdog killed the worker running it
        (answered once), else None."""
        with self._cond:
            return self._killed.pop(task_run_id, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._watched:
                    self._cond.wait()
                watched = dict(self._watched)
            directories = {d for _, named in watched.values() for d in named or (journal_directory(),)}
            for directory in directories:
                self._kill_overdue(directory, watched)
            time.sleep(POLL_SECONDS)

    def _kill_overdue(self, directory: str, watched: dict[str, tuple[float, tuple[str, ...]]]) -> None:
        now = time.time()
        for pid, (run_id, started) in read_journal_entries(directory).items():
            entry = watched.get(run_id)
            if entry is None or not started or now < started + entry[0] + grace_seconds(entry[0]):
                continue
            if not pid_alive(pid) or (pid, started) in self._ended:
                continue  # the journal of a worker that is already gone (or a zombie)
            with self._cond:
                if run_id not in self._watched:
                    continue  # finished meanwhile
                self._killed[run_id] = entry[0]  # before the pool can report the loss
            # Only if the worker is still on that attempt (checked under the
            # journal's lock): never one that has just finished it.
            # Still watched after a kill: a Dask scheduler with allowed-failures above 0
            # re-runs the lost task itself, and that attempt has a deadline too.
            if kill_worker(pid, run_id, started, directory):
                if len(self._ended) > 1024:
                    self._ended.clear()
                self._ended.add((pid, started))
            else:
                with self._cond:
                    self._killed.pop(run_id, None)


hard_timeouts = HardTimeouts()

__all__ = ["HardTimeouts", "grace_seconds", "hard_timeouts"]
