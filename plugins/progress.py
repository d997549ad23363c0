"""A live progress display of a running flow on a terminal (rich), as a plugin.

One line per task name: runs done of runs submitted, failed, rate and time left. On
when stderr is a terminal and rich is installed (``pip install "flowcore[progress]"``);
``FLOWCORE_PROGRESS=0`` turns it off, ``FLOWCORE_PROGRESS=1`` (``flowcore run
--progress``) forces it. Decided when flowcore loads its plugins: off, nothing observes
the run-event stream on its account.

The hook only appends each batch of events to a queue; a display thread counts them and
redraws at most :data:`REFRESH_PER_SECOND` times a second, from the start of a
top-level flow run to its end. A map's batches are counted from their columns
(:meth:`flowcore.events.LazyTaskEvents.columns`), without an object per run. Log lines
printed meanwhile by flowcore's console handler go above the display (the handler
writes through rich's console while the display is up).
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flowcore.hookspecs import hookimpl

ENV_PROGRESS = "FLOWCORE_PROGRESS"
REFRESH_PER_SECOND = 10
_FAILED_TYPES = frozenset({"FAILED", "CRASHED", "CANCELLED"})


def progress_wanted() -> bool:
    """Whether the display is on here (see the module docstring)."""
    value = os.environ.get(ENV_PROGRESS, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value not in ("1", "true", "yes", "on"):
        stream = sys.stderr
        if stream is None or not hasattr(stream, "isatty") or not stream.isatty():
            return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class TaskCounts:
    """Runs of one task name in the current top-level flow run."""

    submitted: int = 0
    done: int = 0
    failed: int = 0
    #: when the first run was submitted (seconds since the epoch): rates count from it
    first_seen: float = 0.0


class ProgressDisplay:
    """Counts run events and draws them (see the module docstring)."""

    def __init__(self) -> None:
        self._queue: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._top_run: str | None = None
        self._stop = False

    # -- the caller's side ------------------------------------------------------------
    def accept(self, events: Sequence[Any]) -> None:
        from flowcore.events import EventKind, FlowRunEvent

        if type(events) is list and len(events) == 1 and type(events[0]) is FlowRunEvent:
            event = events[0]
            if event.run.parent_run_id is not None:
                return
            if event.kind is EventKind.STARTED and event.attempt == 1:
                self._begin(event.run.run_id, event.run.name)
            elif event.kind is EventKind.FINISHED and event.run.run_id == self._top_run:
                self._end()
            return
        if self._top_run is not None:
            self._queue.append(events)

    def _begin(self, run_id: str, name: str) -> None:
        with self._lock:
            if self._thread is not None:  # another top-level run is shown already
                return
            self._top_run = run_id
            self._stop = False
            self._thread = threading.Thread(
                target=self._show, args=(name,), name="flowcore-progress", daemon=True
            )
            self._thread.start()

    def _end(self) -> None:
        with self._lock:
            thread = self._thread
            self._stop = True
            self._wake.set()
        if thread is not None:
            thread.join(5.0)
        with self._lock:
            self._thread = None
            self._top_run = None
            self._queue.clear()

    # -- the display thread -----------------------------------------------------------
    def _show(self, name: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        console = Console(file=sys.stderr)
        counts: dict[str, TaskCounts] = {}
        rows: dict[str, Any] = {}
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[failed]}"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            console=console, refresh_per_second=REFRESH_PER_SECOND, auto_refresh=False,
        )
        handlers = _route_console_handlers(console)
        try:
            self._draw(progress, counts, rows)
        except Exception:  # the display must never break the run it shows
            logging.getLogger("flowcore.progress").exception("flowcore: the progress display failed")
        finally:
            _restore_console_handlers(handlers)

    def _draw(self, progress: Any, counts: dict[str, TaskCounts], rows: dict[str, Any]) -> None:
        """Redraw at most REFRESH_PER_SECOND times a second until the run ends."""
        with progress:
            while True:
                self._wake.wait(1.0 / REFRESH_PER_SECOND)
                self._wake.clear()
                self._count(counts)
                now = time.time()
                for task_name, c in counts.items():
                    row = rows.get(task_name)
                    if row is None:
                        row = rows[task_name] = progress.add_task(task_name, total=None, failed="", rate="")
                    rate = c.done / max(now - c.first_seen, 1e-9)
                    progress.update(
                        row, total=c.submitted, completed=c.done + c.failed,
                        failed=f"[red]{c.failed} failed[/red]" if c.failed else "",
                        rate=f"{rate:,.0f}/s" if c.done else "",
                    )
                progress.refresh()
                if self._stop:
                    return

    def _count(self, counts: dict[str, TaskCounts]) -> None:
        from flowcore.events import EventKind

        queue = self._queue
        while queue:
            events = queue.popleft()
            columns_of = getattr(events, "columns", None)
            columns = columns_of() if callable(columns_of) else None
            if columns is not None:
                c = counts.get(columns.task_name)
                if c is None:
                    c = counts[columns.task_name] = TaskCounts(first_seen=columns.submitted_at)
                if EventKind.SUBMITTED in columns.kinds:
                    c.submitted += len(columns)
                if EventKind.FINISHED in columns.kinds:
                    failed = sum(1 for s in columns.states.values() if str(s.type) in _FAILED_TYPES)
                    c.failed += failed
                    c.done += len(columns) - failed
                continue
            for event in events:
                c = counts.get(event.task_name)
                if c is None:
                    c = counts[event.task_name] = TaskCounts(first_seen=event.timestamp)
                if event.kind is EventKind.SUBMITTED:
                    c.submitted += 1
                elif event.kind is EventKind.FINISHED:
                    if event.state is not None and str(event.state.type) in _FAILED_TYPES:
                        c.failed += 1
                    else:
                        c.done += 1


def _route_console_handlers(console: Any) -> list[tuple[logging.StreamHandler[Any], Any]]:
    """Send flowcore's console handler through rich's console while the display is up,
    so that log lines print above it instead of through it."""
    routed: list[tuple[logging.StreamHandler[Any], Any]] = []
    for name in ("flowcore", ""):
        for handler in logging.getLogger(name or None).handlers:
            if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.__stderr__):
                routed.append((handler, handler.stream))
                handler.setStream(_ConsoleWriter(console))
    return routed


def _restore_console_handlers(routed: list[tuple[logging.StreamHandler[Any], Any]]) -> None:
    for handler, stream in routed:
        handler.setStream(stream)


class _ConsoleWriter:
    """A file-like object that prints whole lines through a rich console."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.console.print(self.pending, markup=False, highlight=False, soft_wrap=True)
            self.pending = ""


display = ProgressDisplay()

if progress_wanted():
    _accept = display.accept

    @hookimpl
    def flowcore_run_events(events: Sequence[Any]) -> None:
        _accept(events)


__all__ = ["ENV_PROGRESS", "ProgressDisplay", "display", "progress_wanted"]
