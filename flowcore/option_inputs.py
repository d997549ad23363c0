"""The keyword arguments of ``@task(...)`` / ``@flow(...)`` and ``with_options``, typed.

:class:`TaskOptionInputs` and :class:`FlowOptionInputs` are for editors and type
checkers (``**options: Unpack[TaskOptionInputs]``); at run time nothing needs them,
so ``import flowcore`` does not build them (``flowcore.options`` still offers both
names, loading this module on first access). A test keeps their keys equal to the
input fields of :class:`flowcore.options.TaskOptions` and ``FlowOptions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from datetime import timedelta

    from flowcore.backend import Backend
    from flowcore.caching.policies import CacheContext, CachePolicy
    from flowcore.caching.store import CacheStore
    from flowcore.options import Hook, RetryDelay


class TaskOptionInputs(TypedDict, total=False):
    """The keyword arguments of ``@task(...)`` and ``Task.with_options(...)``: the input
    fields of :class:`TaskOptions`, typed for editors and mypy (a test keeps the two
    lists equal). What each means: the docstring of :func:`flowcore.task`."""

    name: str | None
    retries: int
    retry_delay_seconds: RetryDelay | None
    retry_jitter_factor: float | None
    retry_condition_fn: Callable[..., bool] | None
    timeout_seconds: float | None
    tags: Iterable[str] | None
    task_run_name: str | Callable[..., str] | None
    log_prints: bool | None
    on_completion: Sequence[Hook] | None
    on_failure: Sequence[Hook] | None
    on_running: Sequence[Hook] | None
    cache_policy: CachePolicy | None
    cache_key_fn: Callable[[CacheContext, dict[str, Any]], str | None] | None
    cache_expiration: timedelta | float | None
    refresh_cache: bool
    cache_result_in_memory: bool
    cache_storage: str | os.PathLike[str] | CacheStore | None
    cache_key_errors: Literal["raise", "warn"]
    persist_result: bool | None
    result_storage: str | os.PathLike[str] | CacheStore | None


class FlowOptionInputs(TypedDict, total=False):
    """The keyword arguments of ``@flow(...)`` and ``Flow.with_options(...)``: the input
    fields of :class:`FlowOptions`, typed (a test keeps the two lists equal)."""

    name: str | None
    description: str | None
    backend: str | Backend | None
    backend_options: Mapping[str, Any] | None
    retries: int
    retry_delay_seconds: RetryDelay | None
    timeout_seconds: float | None
    log_prints: bool | None
    on_completion: Sequence[Hook] | None
    on_failure: Sequence[Hook] | None
    on_running: Sequence[Hook] | None
    on_crashed: Sequence[Hook] | None
    on_cancellation: Sequence[Hook] | None
    validate_parameters: bool
    flow_run_name: str | Callable[[], str] | None
    persist_result: bool | None
    result_storage: str | os.PathLike[str] | CacheStore | None


__all__ = ["FlowOptionInputs", "TaskOptionInputs"]
