"""Validated, immutable options of tasks and flows.

Everything here runs at decoration time (``@task(...)``, ``@flow(...)``,
``with_options``): a wrong option fails where it is written, with a message that
names the option, never later inside a worker.
"""

from __future__ import annotations

import math
import string
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import inspect

    # re-exported: flowcore.options has offered both names since they were declared here
    from flowcore.option_inputs import FlowOptionInputs as FlowOptionInputs
    from flowcore.option_inputs import TaskOptionInputs as TaskOptionInputs
else:

    def __getattr__(name: str) -> Any:
        # The keyword-argument TypedDicts live in flowcore.option_inputs: building them
        # costs about a millisecond (typing compiles every annotation), which only code
        # that inspects them at run time pays. Type checkers see the import above.
        if name in ("TaskOptionInputs", "FlowOptionInputs"):
            from flowcore import option_inputs

            value = getattr(option_inputs, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

RetryDelay = Union[float, int, Sequence[Union[float, int]], Callable[[int], Sequence[float]]]  # noqa: UP007 - a runtime alias must work on 3.10
Hook = Callable[..., Any]


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry and how long to wait before each retry."""

    retries: int = 0
    delays: tuple[float, ...] = ()
    jitter_factor: float | None = None

    def delay(self, retry_index: int) -> float:
        """Seconds to wait before retry number ``retry_index`` (0-based).

        Retry ``i`` waits ``delays[i]``; past the end of the list the last value
        repeats. With a jitter factor ``j``, the wait is drawn uniformly from
        ``[max(0, d * (1 - j)), d * (1 + j)]``: its mean stays ``d`` for ``j <= 1``.
        """
        if not self.delays:
            return 0.0
        base = self.delays[min(retry_index, len(self.delays) - 1)]
        if self.jitter_factor:
            low = max(0.0, base * (1.0 - self.jitter_factor))
            import random

            return random.uniform(low, base * (1.0 + self.jitter_factor))
        return base

    def wait_before_retry(self, attempt: int, reason: str, logger: Any) -> None:
        """Log that attempt number ``attempt`` failed, then sleep the retry's delay."""
        delay = self._announce_retry(attempt, reason, logger)
        if delay > 0:
            time.sleep(delay)

    async def wait_before_retry_async(self, attempt: int, reason: str, logger: Any) -> None:
        """:meth:`wait_before_retry` for a coroutine: the event loop runs on meanwhile."""
        delay = self._announce_retry(attempt, reason, logger)
        if delay > 0:
            import asyncio

            await asyncio.sleep(delay)

    def _announce_retry(self, attempt: int, reason: str, logger: Any) -> float:
        delay = self.delay(attempt - 1)
        logger.warning(
            "Failed (%s); retry %d/%d in %.3g s", reason, attempt, self.retries, delay
        )
        return delay


_DERIVED = {"derived": True}  # field metadata: computed by the builder, not an input


@dataclass(frozen=True)
class TaskOptions:
    """The options of a :class:`flowcore.Task`, validated: the one declaration of them.

    Build with :func:`task_options` (what ``@task`` and ``with_options`` do); every
    field but the derived ones at the end is an option of that name.
    """

    name: str
    retries: int = 0
    retry_delay_seconds: RetryDelay | None = None
    retry_jitter_factor: float | None = None
    retry_condition_fn: Callable[..., bool] | None = None
    timeout_seconds: float | None = None
    tags: frozenset[str] = field(default_factory=frozenset)
    task_run_name: str | Callable[..., str] | None = None
    log_prints: bool | None = None
    on_completion: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()
    on_running: tuple[Hook, ...] = ()
    # caching, as given (see flowcore.caching.settings for what they mean) ...
    cache_policy: Any = None
    cache_key_fn: Callable[..., str | None] | None = None
    cache_expiration: Any = None
    refresh_cache: bool = False
    cache_result_in_memory: bool = True
    cache_storage: Any = None
    cache_key_errors: str = "raise"
    #: keep each completed run's result in ``result_storage`` (None: as the flow says;
    #: see :mod:`flowcore.results`)
    persist_result: bool | None = None
    #: where kept results go: a directory, a registered cache store's name, or a
    #: ``FileStore`` (None: the flow's, else the default results directory)
    result_storage: Any = None
    # -- derived -----------------------------------------------------------------
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy, metadata=_DERIVED)
    #: validated caching settings: None when the task's runs are not cached
    cache: Any = field(default=None, metadata=_DERIVED)

    def inputs(self) -> dict[str, Any]:
        """The options as ``@task`` takes them (to change some: ``with_options``)."""
        return {name: getattr(self, name) for name in input_names(TaskOptions)}


@dataclass(frozen=True)
class FlowOptions:
    """The options of a :class:`flowcore.Flow`, validated (build with :func:`flow_options`)."""

    name: str
    description: str | None = None
    backend: Any = None  # a backend name (str) or a Backend instance the caller owns
    #: options for the backend that ``backend`` names, created for each run (None: none)
    backend_options: dict[str, Any] | None = None
    retries: int = 0
    retry_delay_seconds: RetryDelay | None = None
    timeout_seconds: float | None = None
    log_prints: bool | None = None
    on_completion: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()
    on_running: tuple[Hook, ...] = ()
    on_crashed: tuple[Hook, ...] = ()
    on_cancellation: tuple[Hook, ...] = ()
    #: check and coerce arguments against the function's type hints (pydantic)
    validate_parameters: bool = True
    #: the run's name: a ``str.format`` template over the parameters, or a callable
    #: returning a str (None: ``<flow>-<id prefix>``)
    flow_run_name: str | Callable[[], str] | None = None
    #: the default of ``persist_result`` for the flow's task runs (None: off)
    persist_result: bool | None = None
    #: the default of ``result_storage`` for the flow's task runs
    result_storage: Any = None
    # -- derived -----------------------------------------------------------------
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy, metadata=_DERIVED)

    def inputs(self) -> dict[str, Any]:
        """The options as ``@flow`` takes them (to change some: ``with_options``)."""
        return {name: getattr(self, name) for name in input_names(FlowOptions)}


def input_names(options: type[TaskOptions] | type[FlowOptions]) -> tuple[str, ...]:
    """The option names of ``TaskOptions`` or ``FlowOptions``, in declaration order."""
    return tuple(f.name for f in fields(options) if not f.metadata.get("derived"))


def _defaults(options: type[TaskOptions] | type[FlowOptions]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in fields(options):
        if f.metadata.get("derived"):
            continue
        if f.default is not MISSING:
            values[f.name] = f.default
        elif f.default_factory is not MISSING:
            values[f.name] = f.default_factory()
        else:
            values[f.name] = None  # the name: the function's own by default
    return values


#: Prefect options that flowcore has under another name or not at all: what to say.
_PREFECT_OPTIONS = {
    "task_runner": (
        "Prefect's task runners are flowcore's backends: @flow(backend='threads'), 'loky' "
        "(processes), 'dask' (a local Dask cluster, or a scheduler's: "
        "backend_options={'address': 'tcp://host:8786'}), 'sequential'"
    ),
    "result_serializer": "not supported: kept results are always cloudpickled (see persist_result)",
}


def check_option_names(
    given: Mapping[str, Any], options: type[TaskOptions] | type[FlowOptions], owner: str
) -> None:
    """TypeError naming an unknown option and the nearest known one (for a Prefect
    option flowcore has no equivalent of under that name, what to use instead)."""
    known = input_names(options)
    for name in given:
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            if name in _PREFECT_OPTIONS:
                hint = f"{_PREFECT_OPTIONS[name]}; "
            raise TypeError(f"{owner}: unknown option {name!r}; {hint}options are: {', '.join(known)}")


def _owner_name(fn: Callable[..., Any], name: object) -> str:
    return name if isinstance(name, str) else getattr(fn, "__name__", type(fn).__name__)


def _merged(
    fn: Callable[..., Any],
    given: Mapping[str, Any],
    options: type[TaskOptions] | type[FlowOptions],
    base: TaskOptions | FlowOptions | None,
    decorator: str,
) -> tuple[dict[str, Any], str, str, int]:
    """``given`` over ``base``'s options (or the defaults), with the name and retries
    checked: ``(values, name, owner for messages, retries)``."""
    check_option_names(given, options, decorator)
    values = base.inputs() if base is not None else _defaults(options)
    values.update(given)
    name = check_name(_owner_name(fn, values["name"]), decorator)
    owner = f"{decorator} {name!r}"
    return values, name, owner, check_retries(values["retries"], owner)


def signature_of(fn: Callable[..., Any], decorator: str) -> Any:
    """``inspect.signature(fn)``, or a TypeError that says how to decorate a callable
    whose signature Python cannot read (a builtin such as ``math.hypot``)."""
    import inspect

    try:
        return inspect.signature(fn)
    except (ValueError, TypeError) as exc:
        name = getattr(fn, "__name__", repr(fn))
        raise TypeError(
            f"{decorator} cannot read the signature of {name!r} ({exc}); wrap it in a "
            f"function of your own, e.g. def {name}_task(*args): return {name}(*args)"
        ) from None


def task_options(fn: Callable[..., Any], given: Mapping[str, Any], *, base: TaskOptions | None = None) -> TaskOptions:
    """Validate the options ``given`` for the task function ``fn`` (over ``base``'s, or
    the defaults) into :class:`TaskOptions`. Raises TypeError/ValueError naming the
    option; runs at decoration time."""

    if not callable(fn):
        raise TypeError(f"@task must decorate a function, got {type(fn).__name__} {fn!r}")
    _refuse_generators(fn, "@task")
    values, name, owner, retries = _merged(fn, given, TaskOptions, base, "@task")
    signature = signature_of(fn, "@task")
    var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    validated = dict(
        values,
        name=name,
        retries=retries,
        retry_condition_fn=check_callable(values["retry_condition_fn"], "retry_condition_fn", owner),
        timeout_seconds=check_timeout(values["timeout_seconds"], owner),
        tags=check_tags(values["tags"], owner),
        task_run_name=check_run_name(values["task_run_name"], signature.parameters, var_kw, owner),
        log_prints=check_log_prints(values["log_prints"], owner),
        on_completion=check_hooks(values["on_completion"], "on_completion", owner),
        on_failure=check_hooks(values["on_failure"], "on_failure", owner),
        on_running=check_hooks(values["on_running"], "on_running", owner),
        persist_result=check_optional_flag(values["persist_result"], "persist_result", owner),
        result_storage=check_result_storage(values["result_storage"], owner),
    )
    policy = retry_policy(retries, values["retry_delay_seconds"], values["retry_jitter_factor"], owner)
    return TaskOptions(**validated, retry_policy=policy, cache=_cache_settings(name, signature, values))


_CACHE_OPTIONS = (
    "cache_policy", "cache_key_fn", "cache_expiration", "refresh_cache",
    "cache_result_in_memory", "cache_storage", "cache_key_errors",
)


def _cache_settings(task_name: str, signature: inspect.Signature, values: Mapping[str, Any]) -> Any:
    """Validated caching settings, or None when every caching option has its default;
    flowcore.caching is imported only when one is given."""
    defaults = _defaults(TaskOptions)
    given = {name: values[name] for name in _CACHE_OPTIONS}
    if all(given[k] is defaults[k] or given[k] == defaults[k] for k in _CACHE_OPTIONS):
        return None
    from flowcore.caching.settings import cache_settings

    return cache_settings(task_name, list(signature.parameters), **given)


def precheck_task_options(given: Mapping[str, Any]) -> None:
    """What ``@task(...)`` can check before it has the function: unknown names, the
    name, retries and their delays, the timeout (so a mistake fails at that line)."""
    check_option_names(given, TaskOptions, "@task")
    name = given.get("name")
    if name is not None:
        check_name(name, "@task")
    owner = f"@task {name!r}" if name else "@task"
    retries = check_retries(given.get("retries", 0), owner)
    retry_policy(retries, given.get("retry_delay_seconds"), given.get("retry_jitter_factor"), owner)
    check_timeout(given.get("timeout_seconds"), owner)


def flow_options(
    fn: Callable[..., Any], given: Mapping[str, Any], *, base: FlowOptions | None = None,
    check_backend: Callable[[object, str], Any],
) -> FlowOptions:
    """Validate the options ``given`` for the flow function ``fn`` (over ``base``'s, or
    the defaults) into :class:`FlowOptions`."""
    import inspect

    if not callable(fn):
        raise TypeError(f"@flow must decorate a function, got {type(fn).__name__} {fn!r}")
    _refuse_generators(fn, "@flow")
    values, name, owner, retries = _merged(fn, given, FlowOptions, base, "@flow")
    if "backend" in given and "backend_options" not in given:
        values["backend_options"] = None  # another backend: the old one's options do not apply
    description = values["description"]
    if description is None:
        description = inspect.getdoc(fn)
    signature = signature_of(fn, "@flow")
    var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return FlowOptions(
        **dict(
            values,
            name=name,
            description=description,
            backend=check_backend(values["backend"], owner),
            backend_options=check_backend_options(values["backend_options"], values["backend"], owner),
            retries=retries,
            timeout_seconds=check_timeout(values["timeout_seconds"], owner),
            log_prints=check_log_prints(values["log_prints"], owner),
            on_completion=check_hooks(values["on_completion"], "on_completion", owner),
            on_failure=check_hooks(values["on_failure"], "on_failure", owner),
            on_running=check_hooks(values["on_running"], "on_running", owner),
            on_crashed=check_hooks(values["on_crashed"], "on_crashed", owner),
            on_cancellation=check_hooks(values["on_cancellation"], "on_cancellation", owner),
            validate_parameters=check_flag(values["validate_parameters"], "validate_parameters", owner),
            flow_run_name=check_run_name(
                values["flow_run_name"], signature.parameters, var_kw, owner, option="flow_run_name"
            ),
            persist_result=check_optional_flag(values["persist_result"], "persist_result", owner),
            result_storage=check_result_storage(values["result_storage"], owner),
        ),
        retry_policy=retry_policy(retries, values["retry_delay_seconds"], None, owner),
    )


# -- validators ----------------------------------------------------------------


def check_backend_options(value: object, backend: object, owner: str) -> dict[str, Any] | None:
    """A copy of ``backend_options`` (a dict of option names), or None; TypeError when it
    is not one, or when ``backend`` does not name the backend they are for. The backend
    itself checks the names and values when a run creates it (before the body)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise TypeError(
            f"{owner}: 'backend_options' must be a dict of option names to values, such as "
            f"{{'max_workers': 4}}, got {type(value).__name__} {value!r}"
        )
    if backend is None:
        raise TypeError(
            f"{owner}: 'backend_options' needs 'backend' to name a backend, e.g. "
            "@flow(backend='dask', backend_options={'address': 'tcp://host:8786'})"
        )
    if not isinstance(backend, str):
        raise TypeError(
            f"{owner}: 'backend_options' go with a backend name, not an instance: pass them "
            "to flowcore.get_backend(name, **options), which made the instance"
        )
    return dict(value)



def _refuse_generators(fn: Callable[..., Any], decorator: str) -> None:
    """TypeError for an async generator function: its runs would have no one value
    (``async def`` functions are taken: they run on an event loop)."""
    import inspect

    if inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{decorator}: {getattr(fn, '__qualname__', fn)!r} is an async generator function; "
            "a run must return one value: collect the items and return a list"
        )


def check_name(value: object, owner: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{owner}: 'name' must be a non-empty string, got {value!r}")
    return value


def check_retries(value: object, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: 'retries' must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{owner}: 'retries' must be >= 0, got {value}")
    return value


def _check_seconds(value: object, option: str, owner: str, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{owner}: {option!r} must be a number of seconds, got {type(value).__name__} {value!r}"
        )
    number = float(value)
    if math.isnan(number) or number < 0 or (number == 0 and not allow_zero) or math.isinf(number):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {option!r} must be a finite number {bound}, got {value!r}")
    return number


def check_timeout(value: object, owner: str) -> float | None:
    if value is None:
        return None
    return _check_seconds(value, "timeout_seconds", owner, allow_zero=False)


def retry_policy(
    retries: int, delay: object, jitter: object, owner: str
) -> RetryPolicy:
    """Validate ``retry_delay_seconds`` and ``retry_jitter_factor`` into a RetryPolicy.

    ``delay`` is a number, a sequence of numbers (retry i waits item i, the last
    repeats), or a callable ``f(retries) -> sequence`` evaluated here, once.
    """
    option = "retry_delay_seconds"
    if delay is None:
        delays: tuple[float, ...] = ()
    elif callable(delay):
        try:
            produced = delay(retries)
        except Exception as exc:
            raise ValueError(f"{owner}: {option} callable failed for retries={retries}: {exc!r}") from exc
        delays = _delay_sequence(produced, owner, f"{option} (from {getattr(delay, '__name__', delay)!r})")
    elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
        delays = (_check_seconds(delay, option, owner, allow_zero=True),)
    elif isinstance(delay, (list, tuple)):
        delays = _delay_sequence(delay, owner, option)
    else:
        raise TypeError(
            f"{owner}: {option!r} must be a number, a list of numbers or a callable "
            f"f(retries) -> list (e.g. exponential_backoff(2)), got {type(delay).__name__} {delay!r}"
        )
    jitter_factor: float | None = None
    if jitter is not None:
        jitter_factor = _check_seconds(jitter, "retry_jitter_factor", owner, allow_zero=True)
    return RetryPolicy(retries, delays, jitter_factor)


def _delay_sequence(values: object, owner: str, option: str) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{owner}: {option} must give a list of numbers, got {values!r}")
    return tuple(_check_seconds(v, option, owner, allow_zero=True) for v in values)


def check_callable(value: object, option: str, owner: str) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{owner}: {option!r} must be callable, got {type(value).__name__} {value!r}")
    return value


def check_hooks(value: object, option: str, owner: str) -> tuple[Hook, ...]:
    if value is None:
        return ()
    if callable(value):
        raise TypeError(f"{owner}: {option!r} must be a list of callables; wrap it: [{getattr(value, '__name__', 'hook')}]")
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{owner}: {option!r} must be a list of callables, got {value!r}")
    for hook in value:
        if not callable(hook):
            raise TypeError(f"{owner}: every item of {option!r} must be callable, got {hook!r}")
    return tuple(value)


def check_tags(value: object, owner: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{owner}: 'tags' must be a collection of strings, got {value!r}")
    tags = frozenset(value)
    bad = [t for t in tags if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{owner}: 'tags' must contain only strings, got {bad[0]!r}")
    return tags


def check_flag(value: object, option: str, owner: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {option!r} must be True or False, got {value!r}")
    return value


def check_optional_flag(value: object, option: str, owner: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{owner}: {option!r} must be True, False or None, got {value!r}")
    return value


def check_result_storage(value: object, owner: str) -> Any:
    """``result_storage``: None, a directory (str or path; a ``file://`` URL is its
    directory), a registered cache store's name (checked when a run first uses it), or
    a cache store object. Any other URL (``s3://...``) is refused: it is no directory."""
    import os

    if value is None or isinstance(value, (str, os.PathLike)):
        if isinstance(value, str):
            if not value.strip():
                raise ValueError(f"{owner}: 'result_storage' must not be empty")
            scheme, separator, _ = value.partition("://")
            if separator and scheme.isascii() and scheme[:1].isalpha() and scheme.replace("+", "").replace(
                "-", ""
            ).replace(".", "").isalnum():
                if scheme.lower() == "file":
                    from urllib.parse import unquote, urlparse

                    return unquote(urlparse(value).path)
                raise ValueError(
                    f"{owner}: 'result_storage' {value!r} is a {scheme}:// URL, and results are kept in "
                    "a local directory, a registered cache store (by its name) or a cache store object: "
                    f"register a store that writes to {scheme} through the flowcore_cache_stores hook and "
                    "give its name, or give a directory"
                )
        return value
    if callable(getattr(value, "read", None)) and callable(getattr(value, "write", None)):
        return value
    raise TypeError(
        f"{owner}: 'result_storage' must be a directory, a registered cache store's name "
        f"or a cache store object, got {type(value).__name__} {value!r}"
    )


def check_log_prints(value: object, owner: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{owner}: 'log_prints' must be True, False or None, got {value!r}")
    return value


def check_run_name(
    value: object, parameters: Iterable[str], has_var_keyword: bool, owner: str,
    *, option: str = "task_run_name",
) -> str | Callable[..., str] | None:
    """A ``str.format`` template over the call's parameters, or a callable returning a
    str (``option``: ``task_run_name`` or ``flow_run_name``, for the messages). A
    callable is called with no arguments; a ``task_run_name`` callable that takes a
    ``parameters`` argument (as in Prefect 3) comes back as :class:`NameFromParameters`.
    A callable that can be called neither way is refused here."""
    if value is None:
        return value
    if callable(value):
        return _check_name_callable(value, owner, option)
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {option!r} must be a string template or a callable, got {value!r}")
    known = set(parameters)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        raise ValueError(f"{owner}: {option!r} {value!r} is not a valid template: {exc}") from None
    for name in fields:
        root = name.split(".", 1)[0].split("[", 1)[0]
        if root == "" or root.isdigit():
            raise ValueError(
                f"{owner}: {option!r} {value!r} uses a positional field; name the parameter, "
                "e.g. 'load-{path}'"
            )
        if root not in known and not has_var_keyword:
            raise ValueError(
                f"{owner}: {option!r} {value!r} refers to {root!r}, which is not a "
                f"parameter; parameters are: {', '.join(sorted(known)) or '(none)'}"
            )
    return value


@dataclass(frozen=True, slots=True)
class NameFromParameters:
    """A ``task_run_name`` callable that takes the run's parameters, as in Prefect 3:
    called as ``fn(parameters={name: value, ...})`` (the call's arguments bound to the
    task's signature, defaults applied)."""

    fn: Callable[..., str]

    def __call__(self, parameters: dict[str, Any]) -> str:
        return self.fn(parameters=parameters)


def _check_name_callable(value: Callable[..., Any], owner: str, option: str) -> Callable[..., str]:
    import inspect

    if isinstance(value, NameFromParameters):
        return value
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # a builtin Python cannot read: called as given
        return value
    if option == "task_run_name" and "parameters" in signature.parameters:
        try:
            signature.bind(parameters={})
        except TypeError:
            pass
        else:
            return NameFromParameters(value)
    try:
        signature.bind()
    except TypeError:
        label = f"{owner}: {option!r} callable {getattr(value, '__name__', value)!r}{signature}"
        if option == "task_run_name":
            raise TypeError(
                f"{label} cannot be called: give a callable that takes no arguments or a 'parameters' "
                "argument (a dict of the run's parameters, as in Prefect), or a template such as 'load-{path}'"
            ) from None
        raise TypeError(
            f"{label} is called with no arguments (get_run_context().flow_run.parameters has the "
            "run's parameters), or give a template such as 'etl-{day}'"
        ) from None
    return value


def exponential_backoff(backoff_factor: float) -> Callable[[int], list[float]]:
    """A ``retry_delay_seconds`` value whose retry i waits ``backoff_factor * 2**i`` seconds.

    >>> exponential_backoff(10)(4)
    [10.0, 20.0, 40.0, 80.0]
    """
    factor = _check_seconds(backoff_factor, "backoff_factor", "exponential_backoff", allow_zero=True)

    def delays(retries: int) -> list[float]:
        return [factor * 2.0**i for i in range(retries)]

    delays.__name__ = f"exponential_backoff({backoff_factor!r})"
    return delays


__all__ = ["FlowOptions", "RetryPolicy", "TaskOptions", "exponential_backoff", "signature_of"]
