"""Run loggers (``get_run_logger``), ``log_prints``, and flowcore's console output.

Run loggers are stdlib ``logging`` adapters. Every record they emit carries the
attributes ``flow_name``, ``flow_run_id``, ``flow_run_name``, ``task_name``,
``task_run_id`` and ``task_run_name`` (``None`` where not applicable), so handlers and
formatters can route and show them.

Console output: the first flow run installs a handler on the ``flowcore`` logger
only if neither it nor the root logger has a handler yet, so an application that
configures logging itself keeps full control. ``FLOWCORE_LOGGING_LEVEL`` sets that
handler's level (default ``INFO``).
"""

from __future__ import annotations

import builtins
import contextvars
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

from flowcore.context import FlowRunContext, TaskRunContext, current_flow_run, current_task_run
from flowcore.errors import MissingContextError

FLOW_LOGGER = "flowcore.flow_runs"
TASK_LOGGER = "flowcore.task_runs"
_RUN_FIELDS = ("flow_name", "flow_run_id", "flow_run_name", "task_name", "task_run_id", "task_run_name")


class RunLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger adapter that stamps every record with the run it belongs to."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


def get_run_logger() -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """The logger of the task or flow run that is executing now.

    Raises :class:`~flowcore.errors.MissingContextError` outside a run.
    """
    task_run = current_task_run()
    if task_run is not None:
        return task_logger(task_run)
    flow_run = current_flow_run()
    if flow_run is not None:
        return flow_logger(flow_run)
    raise MissingContextError(
        "get_run_logger() was called outside a flow or task run; call it inside a "
        "@flow or @task function, or use logging.getLogger(__name__) here"
    )


def flow_logger(context: FlowRunContext) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    if context.logger is None:
        run = context.flow_run
        assert run is not None
        context.logger = RunLoggerAdapter(
            logging.getLogger(FLOW_LOGGER),
            {
                "flow_name": run.flow_name,
                "flow_run_id": run.run_id,
                "flow_run_name": run.name,
                "task_name": None,
                "task_run_id": None,
                "task_run_name": None,
            },
        )
    return context.logger


def task_logger(context: TaskRunContext) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    logger = context.cached_logger()
    if logger is None:
        call = context.call
        logger = context.logger = RunLoggerAdapter(
            logging.getLogger(TASK_LOGGER),
            {
                "flow_name": call.flow_name,
                "flow_run_id": call.flow_run_id,
                "flow_run_name": call.flow_run_name,
                "task_name": call.task.name,
                "task_run_id": call.task_run_id,
                "task_run_name": call.task_run_name,
            },
        )
    return logger


# -- log_prints ----------------------------------------------------------------

_print_target: contextvars.ContextVar[logging.LoggerAdapter | None] = contextvars.ContextVar(  # type: ignore[type-arg]
    "flowcore_print_target", default=None
)
_original_print = builtins.print


def _print(*args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:
    target = _print_target.get()
    if target is None or (file is not None and file is not sys.stdout):
        _original_print(*args, sep=sep, end=end, file=file, flush=flush)
        return
    target.info((" " if sep is None else sep).join(str(a) for a in args), extra={"from_print": True})


def redirect_prints(logger: logging.LoggerAdapter | None) -> contextvars.Token[Any]:  # type: ignore[type-arg]
    """Send ``print()`` calls of this context (to stdout) to ``logger`` at INFO.

    ``builtins.print`` is replaced once by a wrapper that checks a context variable,
    so prints of other threads and of code outside ``log_prints`` runs are untouched.
    """
    if builtins.print is not _print:
        builtins.print = _print
    return _print_target.set(logger)


def restore_prints(token: contextvars.Token[Any]) -> None:
    _print_target.reset(token)


def capturing_prints() -> bool:
    """Whether ``print()`` calls of this context go to a run logger now."""
    return _print_target.get() is not None


# -- console output ------------------------------------------------------------


class RunFormatter(logging.Formatter):
    """``HH:MM:SS.mmm | LEVEL | run name - message``; plain records show their logger."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d | %(levelname)-7s | %(origin)s - %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        name = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        if getattr(record, "task_run_name", None):
            origin = f"Task run {name!r}"
        elif name:
            origin = f"Flow run {name!r}"
        else:
            origin = record.name
        record.origin = origin
        return super().format(record)


_console_installed = False


def ensure_console_handler() -> None:
    """Install flowcore's console handler once, unless logging is already configured."""
    global _console_installed
    if _console_installed:
        return
    _console_installed = True
    package_logger = logging.getLogger("flowcore")
    if package_logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RunFormatter())
    level = os.environ.get("FLOWCORE_LOGGING_LEVEL", "INFO").upper()
    handler.setLevel(level)
    package_logger.addHandler(handler)
    if package_logger.level == logging.NOTSET:
        package_logger.setLevel(level)


__all__ = ["RunFormatter", "RunLoggerAdapter", "get_run_logger"]
