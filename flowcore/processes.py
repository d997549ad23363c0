"""Facts about operating-system processes, read from ``/proc`` where there is one.

Shared by the worker supervision of the process backends (which worker runs what)
and the run history (is the process that recorded a running flow run still alive).
"""

from __future__ import annotations

import os


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (the first is the
    state), or None where there is no such process (or no procfs)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        return stat[stat.rindex(b")") + 2 :].split()
    except (OSError, ValueError):
        return None


def process_start(pid: int) -> int:
    """When process ``pid`` started (clock ticks since boot, from /proc), or 0 where
    that is unknown. With the pid it names one process, even after pid reuse."""
    fields = stat_fields(pid)
    try:
        return int(fields[19]) if fields is not None else 0
    except (ValueError, IndexError):
        return 0


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
