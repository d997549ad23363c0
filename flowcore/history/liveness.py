"""Is a flow run recorded as running still alive? How a reader finds crashed runs.

A process that dies without running its exit code (``kill -9``, the OOM killer, a
power cut) never records its runs' final states. Each running flow run therefore
records its host, pid and the process's start time (clock ticks since boot, from
``/proc/<pid>/stat``, so a reused pid is told apart), and the writer thread refreshes
its ``heartbeat`` every :data:`HEARTBEAT_SECONDS`. A reader decides:

- on the run's own host, with the process start time known: crashed when no process
  has that pid, or when the process with that pid started at another time (the pid
  was reused);
- on the run's own host without a start time (no procfs): crashed when the pid is not
  alive, or when the heartbeat is stale (the pid may have been reused);
- from another host (the pid means nothing here): crashed when the heartbeat is stale.

Stale means older than :data:`STALE_AFTER_SECONDS`. A live process whose writer is
slow (a long lock wait) is never called crashed on its own host.
"""

from __future__ import annotations

import socket
import time

from flowcore.history.records import FlowRunRecord

HEARTBEAT_SECONDS = 5.0
STALE_AFTER_SECONDS = 30.0

_host: str | None = None


def this_host() -> str:
    global _host
    if _host is None:
        _host = socket.gethostname()
    return _host


def process_start(pid: int) -> int:
    """When process ``pid`` started (clock ticks since boot), 0 where unknown."""
    from flowcore.processes import process_start as start_of

    return start_of(pid)


def crash_reason(run: FlowRunRecord, now: float | None = None) -> str | None:
    """Why ``run`` (recorded as not final) must be dead, or None while it may be alive."""
    if run.is_final():
        return None
    current = time.time() if now is None else now
    last_sign = run.heartbeat if run.heartbeat is not None else run.start
    stale = last_sign is None or current - last_sign > STALE_AFTER_SECONDS
    if run.host == this_host() and run.pid:
        from flowcore.processes import pid_alive

        where = f"pid {run.pid} on {run.host}"
        if not pid_alive(run.pid):
            return f"its process ({where}) ended without recording a final state (killed? out of memory?)"
        if run.process_start:
            started = process_start(run.pid)
            if started and started != run.process_start:
                return f"its process ({where}) ended without recording a final state; the pid now names another process"
            if started:
                return None
        if stale:
            return f"no heartbeat from its process ({where}) for {current - (last_sign or 0):.0f} s"
        return None
    if stale:
        return f"no heartbeat from its process (pid {run.pid} on {run.host}) since {_when(last_sign)}"
    return None


def mark_crashed(run: FlowRunRecord, reason: str) -> None:
    """Show ``run`` as ``Crashed`` with ``reason``; its end is its last sign of life."""
    run.state = "Crashed"
    run.state_type = "CRASHED"
    run.message = reason
    run.end = run.heartbeat if run.heartbeat is not None else run.start


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "it started"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


__all__ = ["HEARTBEAT_SECONDS", "STALE_AFTER_SECONDS", "crash_reason", "mark_crashed", "process_start", "this_host"]
