"""Which task run each worker process is executing: how a crash is pinned on its task.

A process backend gives every worker a journal file (named by its pid) in a directory
it owns. The engine writes the task run id into it as each run starts: a store into a
shared memory map of the file (no system call), and nothing at all outside such
workers. The page cache keeps what a killed process wrote. When a worker dies, the
backend reads the journal of the dead pid and knows which run it was executing; the
other runs lost with the pool are innocent and are resubmitted.

A batch of a map's runs, whose ids are consecutive run numbers, is journaled once as a
range (``@<first run id>``) and then only the position of the current run within it is
updated per run: an integer store.

Killing the worker that runs a given run (a stopped flow, an aborted ``Parallel``) is
safe only while the run is executing: a worker killed half way through writing its
result back to the parent leaves the pool's result reader waiting forever for the
rest of the message. So the end of a run and a kill exclude each other through a lock
on the journal file: the worker takes it to record itself idle, and the killer holds
it from reading the entry until the worker is dead.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from flowcore.processes import pid_alive, stat_fields
from flowcore.processes import process_start as start_of

# Imported first: its fork hook must run before this module's (see the end of the file).
from .lifeline import watch_parent

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no journal locks
    fcntl = None  # type: ignore[assignment]
_LOCKING: bool = fcntl is not None

if TYPE_CHECKING:
    from flowcore.backend import WorkerLost

_ENTRY_SIZE = 128
#: after the entry: when the journaling process started (see :func:`flowcore.processes.process_start`), so
#: a pid reused by another process after the worker died is never mistaken for it
_FILE_SIZE = _ENTRY_SIZE + 8
_TEXT_SIZE = 120  # the entry's text; the last 8 bytes hold the position within a range
#: index of the position within a range in :func:`position_slots`
POSITION_SLOT = _TEXT_SIZE // 8
_BLANK = b" " * _TEXT_SIZE
_fd: int | None = None
_map: mmap.mmap | None = None
_slots: memoryview | None = None  # the entry as 64-bit integers (the last one: position)

#: ``<directory>:<pid of the parent>``; worker processes that inherit it (pools we do not
#: start ourselves, such as joblib's) journal into that directory.
ENV_VAR = "FLOWCORE_WORKER_JOURNAL"


def open_journal_from_environment() -> None:
    """Open the journal named by :data:`ENV_VAR`, in a child of the process that set it."""
    value = os.environ.get(ENV_VAR, "")
    directory, _, parent = value.rpartition(":")
    if directory and parent.isdigit() and int(parent) != os.getpid() and _fd is None:
        if _in_a_pool_worker():
            if os.getppid() == int(parent):
                watch_parent()  # a pool worker of that process: it ends with it
            elif _died_before_us(int(parent)):
                # Started by that process, which died before this worker got here: its
                # PPid is 1 now, and it must not live on as an orphan (issue 12.19). (A
                # grandchild, whose parent is a worker of that live process, is spared.)
                watch_parent(expected_parent=int(parent))
        # Without a journal, a crash is blamed on every run that was in the pool.
        with contextlib.suppress(OSError):
            open_journal(directory)


def _died_before_us(pid: int) -> bool:
    """Whether process ``pid``, which started this one's lineage, is gone: no such
    process, a zombie, or the pid now names a process younger than this one (pids
    wrap; see :func:`flowcore.processes.process_start`)."""
    fields = stat_fields(pid)
    if fields is None:
        return not pid_alive(pid)
    if fields[0] in (b"Z", b"X"):
        return True
    mine = start_of(os.getpid())
    try:
        return bool(mine) and int(fields[19]) > mine
    except (ValueError, IndexError):
        return False


def _in_a_pool_worker() -> bool:
    """Whether this process is a worker started by a multiprocessing-style pool (loky,
    multiprocessing), not some other child that happens to import flowcore."""
    import sys

    multiprocessing = sys.modules.get("multiprocessing")
    return multiprocessing is not None and multiprocessing.current_process().name != "MainProcess"


_directory: str | None = None
_directory_lock = threading.Lock()


_DIRECTORY_PREFIX = "flowcore-journal-"


def journal_directory() -> str:
    """This parent's journal directory, created on first use and removed at exit.

    One per process, shared by every process backend: loky reuses its executor only
    while the initializer arguments stay equal, so they must not change per run. Its
    name carries this process's pid, so that a later process removes the directories
    of parents that died without running their exit code (see :func:`_sweep`).
    """
    import atexit
    import shutil
    import tempfile

    global _directory
    with _directory_lock:
        if _directory is None:
            _sweep(tempfile.gettempdir())
            _directory = tempfile.mkdtemp(prefix=f"{_DIRECTORY_PREFIX}{os.getpid()}-")
            _hold(_directory)
            atexit.register(shutil.rmtree, _directory, True)
            from flowcore import deferred_runs

            deferred_runs.add_start_source(_journaled_starts)  # long runs read Running
        return _directory


def _journaled_starts() -> dict[str, tuple[float, Any]]:
    """``{task run id: (attempt start, worker)}`` of the runs this process's pool workers
    execute now (their journals): what :mod:`flowcore.deferred_runs` reports as running.
    A pool worker runs its tasks in its main thread."""
    import socket

    from flowcore.events import Worker

    if _directory is None:
        return {}
    host = socket.gethostname()
    return {
        run_id: (started or time.time(), Worker(host, pid, "MainThread"))
        for pid, (run_id, started) in read_journal_entries(_directory).items()
    }


_OWNER_FILE = "owner"  # not a pid: readers of the journal skip it
_owner_fd: int | None = None


def _hold(directory: str) -> None:
    """Lock the owner file of ``directory`` for the rest of this process's life: the
    kernel releases it when the process dies, however it dies."""
    global _owner_fd
    if not _LOCKING:
        return
    with contextlib.suppress(OSError):
        fd = os.open(os.path.join(directory, _OWNER_FILE), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _owner_fd = fd


def _sweep(parent: str) -> None:
    """Remove the journal directories in ``parent`` left by processes that died without
    running their exit code: the pid in the name names no live process, and the owner
    file's lock is free (which also holds across pid namespaces sharing ``/tmp``).
    Other users' directories, and names without a pid, are left alone."""
    import shutil

    if not _LOCKING:
        return
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(_DIRECTORY_PREFIX):
            continue
        pid, _, rest = name[len(_DIRECTORY_PREFIX) :].partition("-")
        if not (pid.isdigit() and rest) or pid_alive(int(pid)):
            continue
        path = os.path.join(parent, name)
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(path, _OWNER_FILE), os.O_RDONLY)
        except (OSError, AttributeError):
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner lives
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


def export_to_workers() -> None:
    """Let worker processes started from now on by third-party pools journal too."""
    os.environ[ENV_VAR] = f"{journal_directory()}:{os.getpid()}"


def open_pool_worker_journal(directory: str, parent: int | None = None) -> None:
    """Initializer of the pool workers this process starts: journal their runs into
    ``directory``, and end each worker when this process dies
    (:func:`.lifeline.watch_parent`). ``parent`` is the pid of the process that starts
    the pool (``os.getpid()`` there): a worker that starts after it died ends at once
    instead of living on as an orphan (issue 12.19)."""
    watch_parent(expected_parent=parent)
    # Best effort: without its journal a worker still runs tasks (a crash in it is then
    # blamed on every run the pool lost), where a failing initializer breaks the pool.
    with contextlib.suppress(OSError):
        open_journal(directory)


def open_journal(directory: str) -> None:
    """Start journaling this process's runs into ``directory``.

    Only the journal: a worker that outlives the process that started it by design
    (a Dask worker) uses this; pool workers use :func:`open_pool_worker_journal`.
    """
    global _fd, _map, _slots
    path = os.path.join(directory, str(os.getpid()))
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
    os.ftruncate(fd, _FILE_SIZE)
    _map = mmap.mmap(fd, _FILE_SIZE)  # MAP_SHARED: readers of the file see each store
    _map[:_TEXT_SIZE] = _BLANK
    _map[_ENTRY_SIZE:_FILE_SIZE] = start_of(os.getpid()).to_bytes(8, "little")
    _slots = memoryview(_map).cast("q")
    _fd = fd
    from flowcore.engine import RunTracker, install_run_tracker

    install_run_tracker(cast("RunTracker", sys.modules[__name__]))  # this module is the tracker


def record_start(task_run_id: str) -> None:
    """Note that this process starts an attempt of ``task_run_id`` now (no-op outside
    journaled workers). The entry is ``<task run id> <start time>``."""
    if _map is not None:
        entry = f"{task_run_id} {time.time():.3f}".encode()
        _map[:_TEXT_SIZE] = entry[:_TEXT_SIZE].ljust(_TEXT_SIZE)


def record_range(first_run_id: str) -> None:
    """Note that this process starts running the consecutive runs from ``first_run_id``
    (same prefix, increasing run numbers); :func:`record_position` says which one."""
    if _map is not None and _slots is not None:
        _slots[POSITION_SLOT] = 0
        entry = f"@{first_run_id} {time.time():.3f}".encode()
        _map[:_TEXT_SIZE] = entry[:_TEXT_SIZE].ljust(_TEXT_SIZE)


def position_slots() -> memoryview | None:
    """The journal entry as 64-bit integers, or None outside journaled workers. Store the
    position of the run now starting within the range at index :data:`POSITION_SLOT`
    (cheaper than a call per run)."""
    return _slots


def record_idle() -> None:
    """Note that this process finished its attempt (a dead idle worker blames nobody,
    and a run sleeping before its retry is not mistaken for one still running).

    Waits while :func:`kill_workers_running` is killing this process for the run it
    just finished, so that it dies here rather than while sending its result.
    """
    if _map is not None:
        if fcntl is not None and _fd is not None:
            fcntl.flock(_fd, fcntl.LOCK_EX)
            _map[:_TEXT_SIZE] = _BLANK
            fcntl.flock(_fd, fcntl.LOCK_UN)
        else:
            _map[:_TEXT_SIZE] = _BLANK


def kill_workers_running(task_run_ids: set[str]) -> int:
    """SIGKILL the worker processes executing any of ``task_run_ids``; returns how many.

    Precise where a pool-wide stop would hurt other flows sharing the pool: the pool
    reports the loss, the killed runs end ``Cancelled`` (their futures were cancelled
    first) and any other run lost with the pool is resubmitted. A worker is killed only
    while its journal names one of the runs (checked under the journal's lock, which
    is held until the worker is dead), never after it has finished the run.
    """
    killed = 0
    if not task_run_ids:
        return killed
    directory = journal_directory()
    for pid, (run_id, started, process_start) in _journal_records(directory).items():
        if run_id not in task_run_ids or not started or not pid_alive(pid):
            continue
        if process_start and start_of(pid) != process_start:
            continue  # the worker is gone and its pid now names another process
        if _kill_while_running(os.path.join(directory, str(pid)), pid, task_run_ids):
            killed += 1
    return killed


def kill_worker(
    pid: int, task_run_id: str, attempt_started: float | None = None, directory: str | None = None
) -> bool:
    """SIGKILL worker ``pid`` if its journal still names ``task_run_id`` (and, given
    ``attempt_started``, that attempt); True if it was killed. The journal is in
    ``directory`` (default: this process's journal directory; a Dask worker reached by
    address journals elsewhere).

    The check and the kill happen under the journal's lock, held until the worker is
    dead: a worker that has just finished the run is never killed while it sends its
    result back.
    """
    path = os.path.join(directory or journal_directory(), str(pid))
    return _kill_while_running(path, pid, {task_run_id}, attempt_started)


def _kill_while_running(
    path: str, pid: int, task_run_ids: set[str], attempt_started: float | None = None
) -> bool:
    """Kill ``pid`` if its journal at ``path`` still names one of ``task_run_ids`` (and
    the attempt that started at ``attempt_started``, if given), holding the journal's
    lock from that check until the process is dead."""
    import signal

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if fcntl is not None and not _lock_within(fd, 1.0):
            return False  # held for longer than a store takes: the worker is not running a run
        record = _parse_record(os.pread(fd, _FILE_SIZE, 0))
        if record is None or record[0] not in task_run_ids:
            return False  # it finished that run meanwhile
        if attempt_started is not None and record[1] != attempt_started:
            return False  # a later attempt of the run
        process_start = record[2]
        if process_start and start_of(pid) != process_start:
            return False  # the worker is gone and its pid now names another process
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
        _wait_until_dead(pid, process_start, 2.0)
        return True
    finally:
        os.close(fd)  # releases the lock


def _lock_within(fd: int, seconds: float) -> bool:
    """Take the exclusive lock of the file ``fd``, waiting at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0005)


def _wait_until_dead(pid: int, process_start: int, seconds: float) -> None:
    """Return once process ``pid`` has died (a zombie counts), or after ``seconds``."""
    deadline = time.monotonic() + seconds
    procfs = os.path.isdir("/proc/self")
    while time.monotonic() < deadline:
        if not procfs:  # ask the kernel instead (a zombie still counts as alive there)
            if not pid_alive(pid):
                return
        else:
            fields = stat_fields(pid)
            if fields is None or fields[0] in (b"Z", b"X"):
                return  # gone, or dead and not yet reaped
            if process_start and fields[19:20] != [str(process_start).encode()]:
                return  # gone, and the pid already names another process
        time.sleep(0.0005)


def read_journal(directory: str | os.PathLike[str]) -> dict[int, str]:
    """``{worker pid: the task run id it started last}`` for every journal in ``directory``."""
    return {pid: run_id for pid, (run_id, _) in read_journal_entries(directory).items()}


def read_journal_entries(directory: str | os.PathLike[str]) -> dict[int, tuple[str, float]]:
    """``{worker pid: (task run id, when its current attempt started)}``."""
    return {pid: (run_id, started) for pid, (run_id, started, _) in _journal_records(directory).items()}


def _journal_records(directory: str | os.PathLike[str]) -> dict[int, tuple[str, float, int]]:
    """``{pid: (task run id, attempt start, process start)}`` of the journals in ``directory``."""
    entries: dict[int, tuple[str, float, int]] = {}
    try:
        files = list(Path(directory).iterdir())
    except OSError:
        return entries
    for path in files:
        if not path.name.isdigit():
            continue
        try:
            record = _parse_record(path.read_bytes()[:_FILE_SIZE])
        except OSError:
            continue
        if record is not None:
            entries[int(path.name)] = record
    return entries


def _parse_record(raw: bytes) -> tuple[str, float, int] | None:
    """``(task run id, attempt start, process start)`` from a journal file's bytes, or
    None when it names no run."""
    text = raw[:_TEXT_SIZE].decode(errors="replace").strip()
    run_id, _, started = text.partition(" ")
    if run_id.startswith("@"):  # a range: add the position of the current run
        position = int.from_bytes(raw[_TEXT_SIZE:_ENTRY_SIZE], "little", signed=True)
        run_id = _offset_run_id(run_id[1:], position)
    process_start = int.from_bytes(raw[_ENTRY_SIZE:_FILE_SIZE], "little") if len(raw) == _FILE_SIZE else 0
    if not run_id:
        return None
    try:
        return run_id, float(started or 0.0), process_start
    except ValueError:
        return None


def _offset_run_id(first_run_id: str, position: int) -> str:
    prefix, _, number = first_run_id.rpartition("-")
    try:
        return f"{prefix}-{int(number, 16) + position:x}"
    except ValueError:
        return ""


def describe_exit(code: int) -> str:
    """``"SIGKILL (-9)"`` for a signal, ``"exit code 3"`` otherwise."""
    import signal

    if code < 0:
        try:
            return f"{signal.Signals(-code).name} ({code})"
        except ValueError:
            return f"signal {-code} ({code})"
    return f"exit code {code}"


def worker_exit_codes(processes: Mapping[int, Any]) -> dict[int, int | None]:
    """``{pid: exit code}`` of a pool's worker processes (objects with an ``exitcode``,
    as loky's and multiprocessing's), None for a worker that is still running.

    Read it at the moment the pool reports a crash (in the callback of a future it
    fails): pools fail their futures before they kill the surviving workers, so then
    only the dead workers have an exit code. Read later, every worker has one.
    """
    return {pid: getattr(process, "exitcode", None) for pid, process in list(processes.items())}


def _gone(pid: int, process_start: int) -> bool:
    """Whether the process that journaled as ``pid`` (started at ``process_start``) has
    died: no such process, a zombie, or the pid now names a later process."""
    fields = stat_fields(pid)
    if fields is None:
        return not os.path.isdir("/proc/self") and not pid_alive(pid)
    if fields[0] in (b"Z", b"X"):
        return True
    return bool(process_start) and fields[19:20] != [str(process_start).encode()]


def pin_crash(directory: str, exit_codes: Mapping[int, int | None], reason: str = "") -> dict[str, str]:
    """``{task run id: what happened}`` for the runs whose worker process died.

    ``exit_codes`` is :func:`worker_exit_codes` of the pool, read when it reported the
    crash: the workers with an exit code are the dead ones. A worker of the pool that
    has no exit code there but whose journaled process is gone (see :func:`_gone`)
    is dead too. Only a dead worker whose journal names a run blames that run (issue
    12.16): a worker that died idle (its journal blank, or none) blames nobody, and a
    run executing in a live worker is never a culprit -- it was only lost with the
    pool, and the caller sends it again without counting an attempt. ``reason`` (the
    pool's error) is kept for the message when the exit code is unknown.
    """
    culprits: dict[str, str] = {}
    for pid, (run_id, _, process_start) in _journal_records(directory).items():
        if pid not in exit_codes:
            continue  # not a worker of this pool (another pool's, or a stale file)
        code = exit_codes[pid]
        if code is not None:
            culprits[run_id] = f"worker process {pid} died with {describe_exit(code)} while running it"
        elif _gone(pid, process_start):
            detail = f" ({reason.splitlines()[0]})" if reason.strip() else ""
            culprits[run_id] = f"worker process {pid} died while running it{detail}"
    return culprits


class CrashExplainer:
    """What a process backend's ``explain_failure`` needs: pins each crash once.

    ``explain(task_run_id, exc, exit_codes)`` answers for every future the broken pool
    failed; the journal is read at the first of them (``exit_codes`` gives the pool's
    :func:`worker_exit_codes`, read when the pool reported the crash). Runs executing
    in a dead worker are culprits; the rest were lost with it.
    """

    def __init__(self) -> None:
        # Its own lock: it is called from the pool's manager thread, which a thread
        # rebuilding the pool may be joining while holding the backend's lock.
        self._lock = threading.Lock()
        self._last: tuple[BaseException, dict[str, str]] | None = None

    def explain(
        self, task_run_id: str, exc: BaseException, exit_codes: Callable[[], Mapping[int, int | None]]
    ) -> WorkerLost | None:
        from concurrent.futures.process import BrokenProcessPool

        from flowcore.backend import WorkerLost

        if not isinstance(exc, BrokenProcessPool):
            return None
        with self._lock:
            if self._last is None or self._last[0] is not exc:
                self._last = (exc, pin_crash(journal_directory(), exit_codes(), str(exc)))
            culprits = self._last[1]
        message = culprits.get(task_run_id)
        if message is not None:
            return WorkerLost(culprit=True, message=message)
        return WorkerLost(culprit=False, message="lost with the pool after another worker died")


__all__ = [
    "ENV_VAR",
    "POSITION_SLOT",
    "CrashExplainer",
    "describe_exit",
    "export_to_workers",
    "journal_directory",
    "kill_worker",
    "kill_workers_running",
    "open_journal",
    "open_journal_from_environment",
    "open_pool_worker_journal",
    "pid_alive",
    "pin_crash",
    "position_slots",
    "read_journal",
    "read_journal_entries",
    "record_idle",
    "record_range",
    "record_start",
    "worker_exit_codes",
]

# A worker process imports this module when it unpickles its first task run; a
# forked worker inherits it already imported.
open_journal_from_environment()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=open_journal_from_environment)
