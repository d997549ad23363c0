"""Validated, immutable options of tasks and flows.

Everything here runs at decoration time (``@task(...)``, ``@flow(...)``,
``with_options``): a wrong option fails where it is written, with a message that
names the option, never later inside a worker.
"""

from __future__ import annotations

import math
import string
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

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
        delay = self.delay(attempt - 1)
        logger.warning(
            "Failed (%s); retry %d/%d in %.3g s", reason, attempt, self.retries, delay
        )
        if delay > 0:
            time.sleep(delay)


@dataclass(frozen=True)
class TaskOptions:
    """The options of a :class:`flowcore.Task`, validated."""

    name: str
    retries: int = 0
    retry_delay_seconds: RetryDelay | None = None
    retry_jitter_factor: float | None = None
    retry_condition_fn: Callable[..., bool] | None = None
    timeout_seconds: float | None = None
    tags: frozenset[str] = field(default_factory=frozenset)
    task_run_name: str | Callable[[], str] | None = None
    log_prints: bool | None = None
    on_completion: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    # caching, as given (see flowcore.caching.settings for what they mean) ...
    cache_policy: Any = None
    cache_key_fn: Callable[..., str | None] | None = None
    cache_expiration: Any = None
    refresh_cache: bool = False
    cache_result_in_memory: bool = True
    cache_storage: Any = None
    cache_key_errors: str = "raise"
    #: ... and validated: None when the task's runs are not cached
    cache: Any = None


@dataclass(frozen=True)
class FlowOptions:
    """The options of a :class:`flowcore.Flow`, validated."""

    name: str
    description: str | None = None
    backend: Any = None  # a backend name (str) or a Backend instance the caller owns
    retries: int = 0
    retry_delay_seconds: RetryDelay | None = None
    timeout_seconds: float | None = None
    log_prints: bool | None = None
    on_completion: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)


# -- validators ----------------------------------------------------------------


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


def check_log_prints(value: object, owner: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{owner}: 'log_prints' must be True, False or None, got {value!r}")
    return value


def check_run_name(
    value: object, parameters: Iterable[str], has_var_keyword: bool, owner: str
) -> str | Callable[[], str] | None:
    """A ``str.format`` template over the call's parameters, or a callable returning a str."""
    if value is None or callable(value):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{owner}: 'task_run_name' must be a string template or a callable, got {value!r}")
    known = set(parameters)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        raise ValueError(f"{owner}: 'task_run_name' {value!r} is not a valid template: {exc}") from None
    for name in fields:
        root = name.split(".", 1)[0].split("[", 1)[0]
        if root == "" or root.isdigit():
            raise ValueError(
                f"{owner}: 'task_run_name' {value!r} uses a positional field; name the parameter, "
                "e.g. 'load-{path}'"
            )
        if root not in known and not has_var_keyword:
            raise ValueError(
                f"{owner}: 'task_run_name' {value!r} refers to {root!r}, which is not a "
                f"parameter; parameters are: {', '.join(sorted(known)) or '(none)'}"
            )
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


__all__ = ["FlowOptions", "RetryPolicy", "TaskOptions", "exponential_backoff"]
