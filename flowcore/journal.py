"""Which task run each worker process is executing: how a crash is pinned on its task.

A process backend gives every worker a journal file (named by its pid) in a directory
it owns. The engine writes the task run id into it as each run starts: one ``pwrite``
on an open descriptor, and nothing at all outside such workers. When a worker dies,
the backend reads the journal of the dead pid and knows which run it was executing;
the other runs lost with the pool are innocent and are resubmitted.
"""

from __future__ import annotations

import os
from pathlib import Path

_ENTRY_SIZE = 128
_fd: int | None = None


def open_journal(directory: str) -> None:
    """Start journaling this process's runs into ``directory`` (a worker initializer)."""
    global _fd
    path = os.path.join(directory, str(os.getpid()))
    _fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)


def record_start(task_run_id: str) -> None:
    """Note that this process now runs ``task_run_id`` (no-op outside journaled workers)."""
    if _fd is not None:
        os.pwrite(_fd, task_run_id.encode()[:_ENTRY_SIZE].ljust(_ENTRY_SIZE), 0)


def is_active() -> bool:
    return _fd is not None


def read_journal(directory: str | os.PathLike[str]) -> dict[int, str]:
    """``{worker pid: the task run id it started last}`` for every journal in ``directory``."""
    entries: dict[int, str] = {}
    try:
        files = list(Path(directory).iterdir())
    except OSError:
        return entries
    for path in files:
        if not path.name.isdigit():
            continue
        try:
            text = path.read_bytes()[:_ENTRY_SIZE].decode(errors="replace").strip()
        except OSError:
            continue
        if text:
            entries[int(path.name)] = text
    return entries


__all__ = ["is_active", "open_journal", "read_journal", "record_start"]
