"""The live progress display: on a terminal by itself, never in a pipe, off with
FLOWCORE_PROGRESS=0, forced by ``flowcore run --progress``; log lines stay whole.
Real processes with stderr on a pseudo-terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

pytest.importorskip("rich")
pty = pytest.importorskip("pty")

SCRIPT = """
    import time
    from flowcore import flow, task, get_run_logger

    @task
    def slow(x):
        time.sleep(0.02)
        if x == 7:
            raise ValueError("seven")
        return x

    @flow
    def progressing(n: int = 40):
        get_run_logger().info("starting the map")
        futures = slow.map(range(n))
        get_run_logger().info("submitted them all")
        return sum(f.result() for f in futures if f.wait() or f.state.is_completed())

    if __name__ == "__main__":
        progressing(return_state=True)
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def run_on_terminal(tmp_path: Path, env: dict[str, str]) -> str:
    """Run the script with stderr on a pseudo-terminal; everything it drew, ANSI removed."""
    script = tmp_path / "progressing.py"
    script.write_text(textwrap.dedent(SCRIPT))
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    process = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=slave, env=env, cwd=tmp_path)
    os.close(slave)
    process.wait(timeout=120)
    reader.join(10)
    os.close(master)
    assert process.returncode == 0
    return ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r", "\n")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCORE_")}
    return {**clean, "FLOWCORE_HOME": str(tmp_path / "home"), "TERM": "xterm"}


def test_a_terminal_gets_a_progress_display_and_whole_log_lines(tmp_path: Path, env: dict[str, str]) -> None:
    drawn = run_on_terminal(tmp_path, env)
    assert re.search(r"slow .*40/40 1 failed", drawn), drawn
    lines = drawn.splitlines()
    for message in ("starting the map", "submitted them all", "Finished in state Completed()"):
        (line,) = [line for line in lines if message in line]
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} \| INFO +\| Flow run 'progressing-[0-9a-f]{8}' - " + re.escape(message), line.strip()), line


def test_flowcore_progress_0_turns_it_off_on_a_terminal(tmp_path: Path, env: dict[str, str]) -> None:
    drawn = run_on_terminal(tmp_path, {**env, "FLOWCORE_PROGRESS": "0"})
    assert "40/40" not in drawn and "Finished in state Completed()" in drawn


def test_never_in_a_pipe_unless_forced(tmp_path: Path, env: dict[str, str]) -> None:
    script = tmp_path / "progressing.py"
    script.write_text(textwrap.dedent(SCRIPT))
    piped = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120,
                           check=False)
    assert piped.returncode == 0 and "40/40" not in piped.stderr
    forced = subprocess.run([sys.executable, "-m", "flowcore", "run", f"{script}:progressing", "--progress"],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert forced.returncode == 0, forced.stderr
    assert re.search(r"slow .*40/40 1 failed", forced.stderr), forced.stderr
    check = "from flowcore.registry import get_registry; print(get_registry().observes_events)"
    off = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=False,
                         env={**env, "FLOWCORE_HISTORY": "0"})
    assert off.stdout.strip() == "False"  # neither history nor progress observes a pipe's runs
