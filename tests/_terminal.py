"""Running a program on a pseudo-terminal, for the tests of what flowcore shows there
(not a test module: ``from _terminal import ...``; pytest puts this folder on
``sys.path``)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path


def plain(text: str) -> str:
    """``text`` without terminal escape sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def run_on_terminal(
    argv: list[str], env: dict[str, str], *, stdout: Path | None = None, timeout: float = 120
) -> str:
    """Run ``argv`` with stderr (and stdout, unless it goes to the file ``stdout``) on a
    pseudo-terminal, and return all it printed there (undecodable bytes replaced).
    Asserts that it exits with status 0 (the message shows what it printed)."""
    leader, follower = pty.openpty()
    out_file = stdout.open("wb") if stdout is not None else None
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=out_file if out_file is not None else follower,
        stderr=follower, env=env, close_fds=True,
    )
    if out_file is not None:
        out_file.close()
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
    finally:
        os.close(leader)
        process.wait(timeout=60)
    text = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0, text
    return text
