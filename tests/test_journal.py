"""The worker journal's directory housekeeping (the journal's crash pinning and kills
are tested through the process backends: test_loky_backend.py, test_mapped.py)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from flowcore.backends._supervision import journal


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_sweep_removes_only_the_directories_of_dead_processes(tmp_path: Path) -> None:
    dead_pid = _dead_pid()
    dead = tmp_path / f"flowcore-journal-{dead_pid}-abc123"
    # a pid dead here, but the owner lock held (a live process in another pid namespace)
    held = tmp_path / f"flowcore-journal-{dead_pid}-held00"
    live = tmp_path / f"flowcore-journal-{os.getpid()}-def456"
    unnamed = tmp_path / "flowcore-journal-ghi789"  # no pid in the name: not ours to judge
    other = tmp_path / "something-else"
    for directory in (dead, held, live, unnamed, other):
        directory.mkdir()
        (directory / "123").write_bytes(b"x")
        (directory / "owner").write_bytes(b"")
    holder = os.open(held / "owner", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        journal._sweep(str(tmp_path))
    finally:
        os.close(holder)
    assert not dead.exists()
    assert held.exists() and live.exists() and unnamed.exists() and other.exists()


def test_a_killed_parents_journal_directory_is_removed_by_the_next_process(tmp_path: Path) -> None:
    """A parent SIGKILLed runs no exit code, so its journal directory stays behind;
    the next process that journals removes it."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal
            from flowcore.backends._supervision import journal

            print(journal.journal_directory(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    with open(tmp_path / "out", "w") as out:
        killed = subprocess.run([sys.executable, str(script)], stdout=out, env=env, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    left = Path((tmp_path / "out").read_text().strip())
    assert left.is_dir() and left.parent == tmp_path
    code = "from flowcore.backends._supervision import journal; print(journal.journal_directory())"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert not left.exists()
    assert Path(fresh.stdout.strip()).parent == tmp_path


def test_a_plain_child_that_imports_flowcore_is_not_ended_with_its_parent(tmp_path: Path) -> None:
    """Pool workers inherit the journal through the environment and end with their
    parent; any other child of that parent (a daemon started with ``subprocess``) that
    imports flowcore gets the same environment, and must not be ended."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, subprocess, sys
            from flowcore.backends._supervision import journal

            journal.export_to_workers()  # what the joblib backend does
            child = subprocess.Popen(
                [sys.executable, "-c", "import flowcore.backends._supervision.journal, time; print('in', flush=True); time.sleep(60)"],
                stdout=subprocess.PIPE, text=True,
            )
            assert child.stdout.readline().strip() == "in"  # flowcore imported while we live
            print(child.pid, flush=True)
            os._exit(0)
            """
        )
    )
    with open(tmp_path / "out", "w") as out:
        subprocess.run([sys.executable, str(script)], stdout=out, timeout=60, check=True)
    child = int((tmp_path / "out").read_text())
    try:
        deadline = time.monotonic() + 2.5  # the watch would end it within a second
        while time.monotonic() < deadline:
            assert _alive(child), "the child was ended with its parent"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
