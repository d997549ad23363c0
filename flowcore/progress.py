"""A live progress display of a flow run on a terminal, fed by the run-event stream.

One table, refreshed at most :data:`REFRESH_PER_SECOND` times a second: per task name,
how many runs were submitted, finished, failed and are still active (queued or
running), with the rate of the last seconds and an estimate of the time left. Log
lines (and prints, when standard output is this terminal too) are printed above it,
so they stay readable: those of one refresh together, before one drawing of the table.

When: automatically for a top-level flow run when standard error is a terminal and
``rich`` is installed (``pip install "flowcore[progress]"``); never when it is not a
terminal (a pipe, a file, CI logs). ``FLOWCORE_PROGRESS=0`` turns it off,
``FLOWCORE_PROGRESS=1`` (what ``flowcore run --progress`` sets) turns it on even where
that variable said otherwise in a parent environment.

Cost: the observer counts events as they are published (a few attribute reads per
event, taken in the thread that settled the runs); the runs of a column map arrive as
one lazy batch, which the display reads in its own refresh thread.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flowcore.events import EventKind, LazyTaskEvents, TaskRunEvent
from flowcore.hookspecs import hookimpl

if TYPE_CHECKING:
    from flowcore.calls import FlowRun
    from flowcore.events import RunEvent

ENV_VAR = "FLOWCORE_PROGRESS"
REFRESH_PER_SECOND = 4  # at most 10, as promised
RATE_WINDOW_SECONDS = 5.0


@dataclass
class TaskProgress:
    """The counts of one task name within the displayed flow run."""

    submitted: int = 0
    finished: int = 0
    failed: int = 0
    #: (time, finished) samples of the last seconds, for the rate
    samples: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    @property
    def active(self) -> int:
        return max(0, self.submitted - self.finished)

    def rate(self, now: float) -> float | None:
        """Runs finished per second over the last few seconds (None: too early)."""
        samples = self.samples
        samples.append((now, self.finished))
        while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW_SECONDS:
            samples.popleft()
        elapsed = now - samples[0][0]
        if elapsed < 0.5:
            return None
        return (self.finished - samples[0][1]) / elapsed


def enabled() -> bool:
    """Whether a top-level flow run shows a progress display here."""
    setting = os.environ.get(ENV_VAR, "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if not _is_terminal(sys.stderr):
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class ProgressDisplay:
    """Observer plugin that draws the progress of one flow run (and its subflows).

    :meth:`start` registers it and opens the live display; :meth:`stop` closes both.
    Thread-safe: events arrive on whichever thread settled the runs.
    """

    def __init__(self, run: FlowRun) -> None:
        self.run = run
        self.tasks: dict[str, TaskProgress] = {}
        self.lazy: list[LazyTaskEvents] = []  # column-map batches, read when drawing
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self._live: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handler_streams: list[tuple[logging.StreamHandler[Any], Any]] = []
        self._lines: list[str] = []  # written to the terminal, not printed yet
        self._lines_lock = threading.Lock()
        self._stdout: Any = None
        self._stderr: Any = None
        self._stand_ins: dict[str, _Lines] = {}

    # -- the observer ------------------------------------------------------------
    @hookimpl
    def flowcore_run_events(self, events: Sequence[RunEvent]) -> None:
        if isinstance(events, LazyTaskEvents):
            with self.lock:
                self.lazy.append(events)
            return
        with self.lock:
            for event in events:
                if isinstance(event, TaskRunEvent):
                    self._count(event)

    def _count(self, event: TaskRunEvent) -> None:
        progress = self.tasks.get(event.task_name)
        if progress is None:
            progress = self.tasks[event.task_name] = TaskProgress()
        if event.kind is EventKind.SUBMITTED:
            progress.submitted += 1
        elif event.kind is EventKind.FINISHED:
            progress.finished += 1
            state = event.state
            if state is not None and not state.is_completed():
                progress.failed += 1

    def _drain_lazy(self) -> None:
        with self.lock:
            batches, self.lazy = self.lazy, []
        for batch in batches:  # outside the lock: reading a batch builds its events
            counted = [event for event in batch if event.kind is not EventKind.STARTED]
            with self.lock:
                for event in counted:
                    self._count(event)

    # -- the display ---------------------------------------------------------------
    def start(self) -> None:
        from rich.console import Console
        from rich.live import Live

        from flowcore.registry import get_registry

        # Only the refresh thread draws (auto_refresh off): the lines written since the
        # last refresh are printed together, above one drawing of the table, so a flow
        # that logs thousands of lines still redraws it REFRESH_PER_SECOND times a second.
        self._live = Live(
            self._table(), console=Console(file=sys.stderr), auto_refresh=False,
            transient=False, redirect_stdout=False, redirect_stderr=False,
        )
        self._live.start(refresh=True)
        # Log handlers that write to the terminal, and sys.stderr (sys.stdout too when it
        # is this terminal; redirected to a file or a pipe, what the flow prints stays
        # there), now write through the display: their lines appear above it.
        handlers = _terminal_handlers()
        self._stderr = sys.stderr
        sys.stderr = self._stand_ins["stderr"] = _Lines(self, sys.stderr)
        if _is_terminal(sys.stdout):
            self._stdout = sys.stdout
            sys.stdout = self._stand_ins["stdout"] = _Lines(self, sys.stdout)
        for handler in handlers:
            self._handler_streams.append((handler, handler.setStream(sys.stderr)))
        get_registry().register(self, name=f"flowcore-progress-{self.run.run_id}")
        self._thread = threading.Thread(target=self._refresh, name="flowcore-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        from flowcore.registry import get_registry

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        get_registry().unregister(self)  # unknown plugins are ignored
        self._drain_lazy()
        for handler, stream in self._handler_streams:
            handler.setStream(stream)
        for name in ("stdout", "stderr"):
            original = getattr(self, f"_{name}", None)
            stand_in = self._stand_ins.pop(name, None)
            if original is None or stand_in is None:
                continue
            stand_in.close_line()
            if getattr(sys, name) is stand_in:
                setattr(sys, name, original)
        if self._live is not None:
            self._live.update(self._table(), refresh=False)
            self._draw()
            self._live.stop()

    def add_lines(self, lines: list[str]) -> None:
        """Queue complete lines written to the terminal; the next refresh prints them."""
        with self._lines_lock:
            self._lines.extend(lines)

    def _draw(self) -> None:
        """Print the queued lines above the table and draw it, once."""
        with self._lines_lock:
            lines, self._lines = self._lines, []
        if lines:
            from rich.ansi import AnsiDecoder
            from rich.text import Text

            decoder = AnsiDecoder()
            console = self._live.console
            with console:  # the lines and the table in one write
                console.print(Text("\n").join(decoder.decode_line(line) for line in lines))
        else:
            self._live.refresh()

    def _refresh(self) -> None:
        while not self._stop.wait(1.0 / REFRESH_PER_SECOND):
            try:
                self._drain_lazy()
                self._live.update(self._table(), refresh=False)
                self._draw()
            except Exception:  # a display failure must never affect the flow
                logging.getLogger("flowcore.progress").debug("progress refresh failed", exc_info=True)
                return

    def _table(self) -> Any:
        from rich.table import Table

        now = time.monotonic()
        table = Table(
            title=f"flow run {self.run.name!r} · {now - self.started:.0f} s",
            title_justify="left", expand=False,
        )
        for column in ("task", "done", "failed", "active", "total", "rate", "left"):
            table.add_column(column, justify="left" if column == "task" else "right")
        with self.lock:
            rows = [(name, progress) for name, progress in self.tasks.items()]
            for name, progress in rows:
                rate = progress.rate(now)
                left = "-"
                if rate and progress.active:
                    left = _duration(progress.active / rate)
                table.add_row(
                    name,
                    f"[green]{progress.finished - progress.failed}[/]",
                    f"[red]{progress.failed}[/]" if progress.failed else "0",
                    str(progress.active),
                    str(progress.submitted),
                    f"{rate:.1f}/s" if rate is not None else "-",
                    left,
                )
        return table


class _Lines(io.TextIOBase):
    """A terminal stream while the display runs: each complete line written goes to
    the display's queue (printed above the table at its next refresh); the rest of a
    line waits for its end. Other attributes are the real stream's."""

    def __init__(self, display: ProgressDisplay, stream: Any) -> None:
        self._display = display
        self._stream = stream
        self._partial: list[str] = []
        self._lock = threading.Lock()
        self._through = False  # the display is gone: write to the real stream

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self._through:
            return int(self._stream.write(text))
        if "\n" not in text:
            with self._lock:
                self._partial.append(text)
            return len(text)
        with self._lock:
            head, *middle, tail = text.split("\n")
            lines = ["".join([*self._partial, head]), *middle]
            self._partial = [tail] if tail else []
            self._display.add_lines(lines)
        return len(text)

    def close_line(self) -> None:
        """Queue what is left of an unfinished line; from now on, write to the real
        stream (a handler made during the display keeps this stand-in)."""
        with self._lock:
            if self._partial:
                self._display.add_lines(["".join(self._partial)])
                self._partial = []
            self._through = True

    def flush(self) -> None:
        if self._through:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        # What this stand-in does not handle (``buffer``, ``line_buffering`` ...) is the
        # real stream's: bytes written to ``buffer`` reach the terminal directly.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._stream, name)

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return int(self._stream.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._stream, "encoding", "utf-8"))


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _terminal_handlers() -> list[logging.StreamHandler[Any]]:
    """flowcore's (and the root logger's) handlers that write to this terminal."""
    found = []
    for logger in (logging.getLogger("flowcore"), logging.getLogger()):
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and handler.stream in (sys.__stderr__, sys.stderr):
                found.append(handler)
    return found


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def start_for(run: FlowRun) -> ProgressDisplay | None:
    """Open a progress display for the top-level flow run ``run`` if :func:`enabled`;
    never raises (a display that cannot start is logged at DEBUG and skipped)."""
    if not enabled():
        return None
    display = ProgressDisplay(run)
    try:
        display.start()
    except Exception:
        logging.getLogger("flowcore.progress").debug("no progress display", exc_info=True)
        try:
            display.stop()
        except Exception:
            logging.getLogger("flowcore.progress").debug("closing the display failed", exc_info=True)
        return None
    return display


__all__ = ["ENV_VAR", "ProgressDisplay", "TaskProgress", "enabled", "start_for"]
