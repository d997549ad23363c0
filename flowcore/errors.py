"""The one error hierarchy of flowcore.

Every error flowcore raises on its own account derives from :class:`FlowcoreError`.
Messages say what happened and what to do about it. Errors raised by a task's own
code are never wrapped: the caller gets the task's exception, with its type intact.
"""

from __future__ import annotations

from collections.abc import Iterable


class FlowcoreError(Exception):
    """Base class of every error raised by flowcore itself."""


class ConfigurationError(FlowcoreError, ValueError):
    """A setting (environment variable, pyproject.toml, backend options) is invalid."""


class ScheduleError(ConfigurationError):
    """A schedule (cron, interval, rrule) or a question put to one is invalid.

    Raised when a :mod:`flowcore.schedules` schedule is constructed from a bad cron
    field, a zero or negative interval, an unknown time zone, an unreadable or
    unreasonable rrule, or when a naive datetime is passed where an instant is needed.
    The message names the problem and the fix.
    """


class ConfigurationWarning(UserWarning):
    """A setting looks wrong but cannot stop the run (an unknown ``FLOWCORE_*`` variable)."""


class BackendNotFoundError(FlowcoreError, LookupError):
    """The requested backend name is not registered, or its dependencies are missing."""

    def __init__(self, name: str, registered: Iterable[str], *, hint: str | None = None) -> None:
        self.name = name
        self.registered = tuple(sorted(registered))
        #: what went wrong, without the list of registered names
        self.reason = hint or f"unknown backend {name!r}"
        listed = ", ".join(self.registered) or "(none)"
        super().__init__(f"{self.reason}; registered: {listed}")


class BackendRegistrationError(FlowcoreError):
    """A plugin tried to register a backend that is invalid or whose name is taken."""


class BackendShutdownError(FlowcoreError, RuntimeError):
    """Work was submitted to a backend that has already been shut down."""


class BackendConnectionError(FlowcoreError, ConnectionError):
    """A backend cannot reach (or start) the workers it runs tasks on.

    For example: no Dask scheduler answers at the configured address within the
    connect timeout, or the connection to it was lost and did not come back. The
    message names the address and the timeout. Raised by ``backend.submit``; the
    task runs it refused end ``Crashed`` with this error as the cause.
    """


class MissingContextError(FlowcoreError, RuntimeError):
    """An operation needs a flow run (or a ``use_backend`` block) and none is active."""


class UpstreamFailedError(FlowcoreError):
    """A task did not run because a task it depends on did not complete.

    This is the exception carried by a ``NotRun`` state.
    """


class TaskTimeoutError(FlowcoreError, TimeoutError):
    """A task or flow ran longer than its ``timeout_seconds``.

    This is the exception carried by a ``TimedOut`` state.
    """


class ParameterTypeError(FlowcoreError, TypeError):
    """A flow argument does not fit the type hint of its parameter (and could not be
    coerced to it): the run fails before its body starts.

    The message names the flow, the parameter, the expected type and the value.
    """


class SerializationError(FlowcoreError, TypeError):
    """An argument or result of a task cannot be pickled to cross a process boundary.

    The message names the task run and the offending argument; the task is not run
    (argument) or its value is lost (result). Not retried: it would fail again.
    """


class CrashedError(FlowcoreError):
    """The machinery running a task failed (worker died, pool broke, result lost).

    This is the exception carried by a ``Crashed`` state. The task's own code did not
    raise it.
    """


class FailedRunError(FlowcoreError):
    """The exception of a ``Failed`` state made without one (``Failed(message=...)``,
    as a flow body may return in Prefect): raised by its ``result()``, with its message.
    """


class CancelledError(FlowcoreError):
    """A task was cancelled before it finished (for example on Ctrl-C or shutdown).

    This is the exception carried by a ``Cancelled`` state.
    """


class WaitTimeoutError(FlowcoreError, TimeoutError):
    """Waiting for futures (``result``, ``wait``, ``as_completed``) ran out of time.

    The futures themselves keep running; only the wait gave up.
    """


class RemoteTraceback(Exception):
    """Holds the formatted traceback of an exception raised in another process.

    Attached as ``__cause__`` of an exception that crossed a process boundary and
    lost its traceback object on the way, so the original frames remain readable.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class CacheError(FlowcoreError):
    """Base class of the errors of result caching (keys, stores)."""


class CacheKeyError(CacheError, TypeError):
    """A cache key cannot be computed: a value has no deterministic content hash.

    The message names the path of the value inside the arguments (``argument
    'x'[2]['k']``), its type, and the ways out (``cache_key_fn``, leaving the
    argument out of the cache policy, ``__flowcore_hash__``).
    """


__all__ = [
    "BackendConnectionError",
    "BackendNotFoundError",
    "BackendRegistrationError",
    "BackendShutdownError",
    "CacheError",
    "CacheKeyError",
    "CancelledError",
    "ConfigurationError",
    "ConfigurationWarning",
    "CrashedError",
    "FlowcoreError",
    "MissingContextError",
    "RemoteTraceback",
    "ScheduleError",
    "SerializationError",
    "TaskTimeoutError",
    "UpstreamFailedError",
    "WaitTimeoutError",
]


class TerminatedWorkerError(CrashedError, RuntimeError):
    """A worker process died while running work of a joblib-style ``Parallel`` call.

    Raised by :mod:`flowcore.compat.joblib`, which raises a subclass that is also
    joblib's and loky's ``TerminatedWorkerError`` where they are installed, so code
    written against joblib catches it. The message says which worker died and how.
    """


__all__ += ["TerminatedWorkerError"]


class HistoryError(FlowcoreError):
    """The run history cannot be used: its store is corrupt, locked for too long, not
    writable, or from a newer flowcore. The message names the store (for SQLite, the
    file) and the fix. A flow never fails for this: history is off for that run."""


class RunNotFoundError(HistoryError, LookupError):
    """No recorded flow run matches the given id (or id prefix), or more than one does;
    the message lists the candidates."""


__all__ += ["HistoryError", "RunNotFoundError"]


class DeploymentError(ConfigurationError):
    """A deployment cannot be built, stored or run as asked: the flow cannot be
    imported by a worker, an option has a bad value (``catchup``, ``overlap``,
    ``concurrency_limit``, a trigger), or parameters do not fit the flow. The message
    names the problem and the fix."""


class DeploymentNotFoundError(DeploymentError, LookupError):
    """No stored deployment matches the given name (``flow/deployment`` or the
    deployment's own name), or several do; the message lists the candidates."""


__all__ += ["DeploymentError", "DeploymentNotFoundError"]


class DashboardError(FlowcoreError):
    """``flowcore dashboard`` cannot start: its dependencies are missing (the message
    names the extra to install), the port is taken, or the history store is not one
    the dashboard can read."""


class QueryError(DashboardError, ValueError):
    """A dashboard page or API call got a malformed query parameter; the message names
    the parameter and what it accepts (answered as HTTP 400)."""


class ActionRefusedError(DashboardError, PermissionError):
    """A state-changing dashboard request (pause, resume, run now) was refused: it
    came from another origin, without the page's action token, or from another
    machine; the message says which (answered as HTTP 403)."""


__all__ += ["ActionRefusedError", "DashboardError", "QueryError"]


class ConcurrencyLimitError(ConfigurationError):
    """A tag concurrency limit cannot be created, read or used as asked (a bad tag or
    number, a history store that is not the built-in SQLite one); the message says
    what to do."""


class ConcurrencyLimitNotFoundError(ConcurrencyLimitError, LookupError):
    """No concurrency limit exists for the given tag; the message lists the limits."""


class ConcurrencySlotTimeoutError(FlowcoreError, TimeoutError):
    """``concurrency(..., timeout_seconds=...)`` ran out of time waiting for slots;
    the message names the tag and why it was full."""


__all__ += ["ConcurrencyLimitError", "ConcurrencyLimitNotFoundError", "ConcurrencySlotTimeoutError"]


class ResultPersistenceError(FlowcoreError):
    """A run with ``persist_result`` could not keep its result: the value does not
    pickle, or its storage cannot be written. The run ends ``Failed`` with this error,
    whose message names the task, the run and the fix."""


class ResultNotFoundError(FlowcoreError, LookupError):
    """No kept result for this task run: it ran without ``persist_result``, it did not
    complete, or its stored entry is gone (the message says which)."""


__all__ += ["FailedRunError", "ResultNotFoundError", "ResultPersistenceError"]
