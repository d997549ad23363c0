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
        self._watched: dict[str, float] = {}  # task run id -> timeout seconds
        self._killed: dict[str, float] = {}  # task run id -> the timeout it outlived
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, task_run_id: str, timeout: float) -> None:
        with self._cond:
            self._watched[task_run_id] = timeout
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
            now = time.time()
            for pid, (run_id, started) in read_journal_entries(journal_directory()).items():
                timeout = watched.get(run_id)
                if timeout is None or not started or now < started + timeout + grace_seconds(timeout):
                    continue
                if not pid_alive(pid):
                    continue  # the journal of a worker that is already gone
                with self._cond:
                    if run_id not in self._watched:
                        continue  # finished meanwhile
                    self._killed[run_id] = timeout  # before the pool can report the loss
                # Only if the worker is still on that attempt (checked under the
                # journal's lock): never one that has just finished it.
                killed = kill_worker(pid, run_id, started)
                with self._cond:
                    if killed:
                        self._watched.pop(run_id, None)
                    else:
                        self._killed.pop(run_id, None)
            time.sleep(POLL_SECONDS)


hard_timeouts = HardTimeouts()

__all__ = ["HardTimeouts", "grace_seconds", "hard_timeouts"]
