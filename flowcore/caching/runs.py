"""A cached task run, as the engine executes it (in the process that runs the task).

The key is computed and the store consulted where the run executes, whatever the
backend: a hit returns a ``Cached`` state without running the body; a miss runs it
(with its retries and timeouts) and stores a completed result. The store never fails
a run: an unreadable entry is a miss, a failed write a warning.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from flowcore import states
from flowcore.errors import CacheKeyError
from flowcore.states import DeferredResult, State, StateType

if TYPE_CHECKING:
    from flowcore.caching.settings import CacheSettings
    from flowcore.caching.store import CacheStore
    from flowcore.calls import TaskCall

logger = logging.getLogger("flowcore.caching")

_warned: set[str] = set()
_warned_lock = threading.Lock()


def run_cached(call: TaskCall, settings: CacheSettings, run: Callable[[TaskCall], State[Any]]) -> State[Any]:
    """Run ``call`` through the cache; ``run`` executes it uncached (with retries)."""
    ended, key, store = _look_up(call, settings)
    if ended is not None:
        return ended
    state = run(call)
    return state if key is None or store is None else _save(call, settings, key, store, state)


async def run_cached_async(
    call: TaskCall, settings: CacheSettings, run: Callable[[TaskCall], Awaitable[State[Any]]]
) -> State[Any]:
    """:func:`run_cached` for a coroutine task: ``run`` is awaited on a miss."""
    ended, key, store = _look_up(call, settings)
    if ended is not None:
        return ended
    state = await run(call)
    return state if key is None or store is None else _save(call, settings, key, store, state)


def _look_up(
    call: TaskCall, settings: CacheSettings
) -> tuple[State[Any] | None, str | None, CacheStore | None]:
    """What the cache says about ``call``: ``(final state, None, None)`` when the run
    ends here (a hit, or no key and ``cache_key_errors="raise"``), ``(None, None,
    None)`` to run it uncached, ``(None, key, store)`` to run it and store the result."""
    from flowcore.caching.keys import run_key
    from flowcore.caching.storage import resolve_store

    started = time.time()
    try:
        key = run_key(call, settings)
    except CacheKeyError as exc:
        named = CacheKeyError(f"task {call.task.name!r}: {exc}")
        named.__cause__ = exc.__cause__
        return _uncacheable(call, settings, named, started), None, None
    except Exception as exc:  # a user's cache_key_fn failed
        return _uncacheable(call, settings, exc, started), None, None
    if key is None:
        return None, None, None
    store = resolve_store(settings.storage)
    if not settings.refresh:
        found, value = store.load(key)
        if found:
            data = value if settings.in_memory else StoredResult(store, key, call.task_run_name)
            hit = states.Cached(
                data,
                message=f"cache hit {key[:12]}",
                started_at=started,
                finished_at=time.time(),
                attempts=0,
                cache_key=key,
            )
            return hit, None, None
    return None, key, store


def _save(
    call: TaskCall, settings: CacheSettings, key: str, store: CacheStore, state: State[Any]
) -> State[Any]:
    """Store a completed run's value under ``key``; returns the state to report."""
    if state.type is StateType.COMPLETED:
        expires = None if settings.expiration is None else time.time() + settings.expiration
        stored = store.save(key, state.data, task=call.task.name, expires=expires)
        if stored:
            from dataclasses import replace

            data = state.data if settings.in_memory else StoredResult(store, key, call.task_run_name)
            state = replace(state, data=data, cache_key=key)
    return state


def _uncacheable(
    call: TaskCall, settings: CacheSettings, exc: Exception, started: float
) -> State[Any] | None:
    """No key for this run: its failed state with the reason, or None to run it
    uncached (``"warn"``)."""
    if settings.key_errors == "warn":
        _warn_once(call, exc)
        return None
    return states.Failed(
        exc,
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        started_at=started,
        finished_at=time.time(),
    )


class StoredResult(DeferredResult):
    """A completed run's value left in the cache store (``cache_result_in_memory=False``);
    ``State.result()`` reads it back."""

    __slots__ = ("key", "run_name", "store")

    def __init__(self, store: CacheStore, key: str, run_name: str) -> None:
        self.store = store
        self.key = key
        self.run_name = run_name

    def load(self) -> Any:
        from flowcore.errors import CacheError

        found, value = self.store.load(self.key)
        if not found:
            raise CacheError(
                f"the result of task run {self.run_name!r} was kept only in the cache store "
                f"(cache_result_in_memory=False) and its entry {self.key[:12]} is gone "
                "(cleared, expired or unreadable); run the task again"
            )
        return value

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the store (a store pickles by its location); a store that cannot
        be pickled is named as the culprit, not the task's return value."""
        import cloudpickle

        try:
            cloudpickle.dumps(self.store)
        except Exception as exc:
            raise TypeError(
                f"the cache store {self.store!r} that keeps the result of task run "
                f"{self.run_name!r} (cache_result_in_memory=False) cannot be pickled "
                f"({type(exc).__name__}: {exc}); a store must pickle by its location: give "
                "it __getstate__/__setstate__ or __reduce__ (see flowcore.caching.CacheStore), "
                "or keep results in memory"
            ) from exc
        return (StoredResult, (self.store, self.key, self.run_name))

    def __repr__(self) -> str:
        return f"StoredResult({self.key[:12]}, store={self.store!r})"


def _warn_once(call: TaskCall, exc: Exception) -> None:
    name = call.task.name
    with _warned_lock:
        if name in _warned:
            return
        _warned.add(name)
    logger.warning(
        "task %r runs uncached: %s (cache_key_errors='warn'; this is reported once per task)",
        name,
        exc,
    )


__all__ = ["StoredResult", "run_cached", "run_cached_async"]
