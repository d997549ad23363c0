"""Worker processes end when the process that started them dies.

A pool's workers are killed when their parent exits normally (each process backend
sees to it at exit), but a parent that is SIGKILLed, OOM-killed or ends through
``os._exit`` runs no exit code: its loky or joblib workers would sit idle, orphaned,
until their idle timeout (300 s), holding their memory. :func:`watch_parent` starts a
small daemon thread in the worker that checks once per ``interval`` whether its parent
is still the process that started it, and ends the worker when it is not (the kernel
gives an orphan a new parent). Nothing it was running can still be delivered.
"""

from __future__ import annotations

import os
import threading
import time

#: the exit status of a worker that ended because its parent died
ORPHAN_EXIT_CODE = 70

_watching = False
_lock = threading.Lock()


def watch_parent(interval: float = 1.0, expected_parent: int | None = None) -> None:
    """End this process (``os._exit``) within ``interval`` seconds of its parent's death.

    ``expected_parent``: the pid of the process that started this one, as that process
    passed it (initializer arguments, environment). Given, a parent that has already
    died ends this process at once: a worker that starts up after its parent was killed
    sees PPid 1 (or a subreaper) and must not take itself for a daemon that was always
    an orphan (issue 12.19). Without it, a PPid of 1 is taken as "nothing to watch".

    Idempotent; a forked child starts its own watch when it calls this again.
    """
    global _watching
    with _lock:
        if _watching:
            return
        parent = os.getppid()
        if expected_parent is not None and parent != expected_parent:
            os._exit(ORPHAN_EXIT_CODE)  # the process that started us is gone already
        if parent <= 1:  # already an orphan, or a daemon: nothing to watch
            return
        _watching = True
    thread = threading.Thread(
        target=_watch, args=(parent, interval), name="flowcore-parent-watch", daemon=True
    )
    thread.start()


def _watch(parent: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(ORPHAN_EXIT_CODE)


def _forget_watch_in_child() -> None:
    # The watching thread does not survive a fork; the child watches its own parent
    # when it next asks for it.
    global _watching, _lock
    _watching = False
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_watch_in_child)

__all__ = ["ORPHAN_EXIT_CODE", "watch_parent"]
