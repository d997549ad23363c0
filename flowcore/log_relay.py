"""Run logs from worker processes, replayed in the parent.

A task on a process backend logs in its worker, where nobody is listening. While a
run executes there, :func:`capture` collects the records of the run loggers
(``flowcore.task_runs``: ``get_run_logger()``, ``log_prints``, retry messages) instead
of emitting them; they travel back with the result as plain dicts, and
:func:`replay` hands them to the parent's logging, which filters and formats them as
if the task had run in the parent. Records from other loggers stay in the worker.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from flowcore.loggers import TASK_LOGGER

LogEntry = dict[str, Any]


class _Collector(logging.Handler):
    def __init__(self, entries: list[LogEntry]) -> None:
        super().__init__(logging.DEBUG)
        self.entries = entries

    def emit(self, record: logging.LogRecord) -> None:
        entry = dict(record.__dict__)
        entry["msg"] = record.getMessage()  # arguments may not pickle: send the text
        entry["args"] = None
        if record.exc_info:
            entry["exc_text"] = logging.Formatter().formatException(record.exc_info)
        entry["exc_info"] = None
        self.entries.append(entry)


@contextlib.contextmanager
def capture() -> Iterator[list[LogEntry]]:
    """Collect the run loggers' records (INFO and up) instead of emitting them here."""
    entries: list[LogEntry] = []
    logger = logging.getLogger(TASK_LOGGER)
    collector = _Collector(entries)
    saved = (logger.level, logger.propagate)
    logger.addHandler(collector)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)  # the parent filters again on replay
    logger.propagate = False
    try:
        yield entries
    finally:
        logger.removeHandler(collector)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def replay(entries: list[LogEntry]) -> None:
    """Emit records collected in a worker through this process's loggers."""
    for entry in entries:
        logger = logging.getLogger(entry.get("name") or TASK_LOGGER)
        if logger.isEnabledFor(entry.get("levelno", logging.INFO)):
            logger.handle(logging.makeLogRecord(entry))


__all__ = ["capture", "replay"]
