"""A task's caching options, validated at decoration time."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flowcore.caching.policies import DEFAULT, CachePolicy, KeyFunction, NoCache

KEY_ERROR_CHOICES = ("raise", "warn")


@dataclass(frozen=True)
class CacheSettings:
    """How the runs of one task use the cache.

    ``policy`` makes the key; ``expiration`` (seconds) bounds an entry's life;
    ``refresh`` runs the body even on a hit and overwrites the entry; ``in_memory``
    False keeps the value out of the final state (read back from the store);
    ``storage`` is a directory or a store object (None: the default store, resolved
    where the run executes); ``key_errors`` says what an unhashable argument does.
    """

    policy: CachePolicy
    expiration: float | None = None
    refresh: bool = False
    in_memory: bool = True
    storage: Any = None
    key_errors: str = "raise"


def cache_settings(
    task_name: str,
    parameters: list[str],
    *,
    cache_policy: object,
    cache_key_fn: object,
    cache_expiration: object,
    refresh_cache: object,
    cache_result_in_memory: object,
    cache_storage: object,
    cache_key_errors: object,
) -> CacheSettings | None:
    """Validate the cache options of ``@task``; None when runs are not cached."""
    owner = f"@task {task_name!r}"
    if cache_policy is not None and not isinstance(cache_policy, CachePolicy):
        raise TypeError(
            f"{owner}: 'cache_policy' must be a cache policy such as flowcore.caching.INPUTS "
            f"(combine with +), got {type(cache_policy).__name__} {cache_policy!r}"
        )
    if cache_key_fn is not None and not callable(cache_key_fn):
        raise TypeError(f"{owner}: 'cache_key_fn' must be callable f(context, arguments) -> str | None")
    if cache_key_fn is not None and cache_policy is not None:
        raise ValueError(f"{owner}: give either 'cache_policy' or 'cache_key_fn', not both")
    for option, value in (("refresh_cache", refresh_cache), ("cache_result_in_memory", cache_result_in_memory)):
        if not isinstance(value, bool):
            raise TypeError(f"{owner}: {option!r} must be True or False, got {value!r}")
    if cache_key_errors not in KEY_ERROR_CHOICES:
        raise ValueError(f"{owner}: 'cache_key_errors' must be 'raise' or 'warn', got {cache_key_errors!r}")
    expiration = _seconds(cache_expiration, owner)
    storage = _storage(cache_storage, owner)
    if isinstance(cache_policy, NoCache):
        return None
    policy: CachePolicy
    if cache_key_fn is not None:
        policy = KeyFunction(cache_key_fn)
    elif cache_policy is not None:
        policy = cache_policy
    else:
        policy = DEFAULT
    policy.check(task_name, parameters)
    return CacheSettings(
        policy=policy,
        expiration=expiration,
        refresh=bool(refresh_cache),
        in_memory=bool(cache_result_in_memory),
        storage=storage,
        key_errors=str(cache_key_errors),
    )


def _seconds(value: object, owner: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(
            f"{owner}: 'cache_expiration' must be a timedelta or a number of seconds, "
            f"got {type(value).__name__} {value!r}"
        )
    if math.isnan(seconds) or seconds <= 0 or math.isinf(seconds):
        raise ValueError(f"{owner}: 'cache_expiration' must be positive and finite, got {value!r}")
    return seconds


def _storage(value: object, owner: str) -> Any:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    needed: tuple[str, ...] = ("read", "write")
    if all(callable(getattr(value, name, None)) for name in needed):
        return value
    raise TypeError(
        f"{owner}: 'cache_storage' must be a directory (str or path) or a cache store "
        f"(an object with read() and write()), got {type(value).__name__} {value!r}"
    )

__all__ = ["CacheSettings", "cache_settings"]
