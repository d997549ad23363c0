"""Tag concurrency limits: at most N runs holding a tag run at once on this machine.

``flowcore concurrency-limit create db 2`` stores a limit in ``history.db``; every
task run with the tag ``db`` then takes a slot before each attempt of its body and
gives it back after, in whichever process it runs (see :mod:`flowcore.limits.slots`
for how slots are taken and how a dead holder's slot comes back). On a Dask worker
the slots are distributed's ``Semaphore`` leases, which bound a whole cluster.
``with concurrency("db"):`` takes slots around any block of code.

This module is imported by the engine and by ``import flowcore``: it imports only the
standard library. :func:`limited_tags` answers "which of these tags have a limit?"
from a cache refreshed at most every :data:`RECHECK_S` seconds, and only re-reads the
database when the stamp file that every change rewrites has changed, so a task whose
tags have no limit pays a set intersection.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowcore.limits.slots import Lease

#: how often (seconds) a process looks whether the limits have changed
RECHECK_S = 0.1

_EMPTY: frozenset[str] = frozenset()
_lock = threading.Lock()
_checked_at = float("-inf")
_stamp_key: tuple[str, int, int, int] | None = None
_limited: frozenset[str] = _EMPTY


def limited_tags(tags: frozenset[str]) -> frozenset[str]:
    """The tags among ``tags`` that have a concurrency limit (cheap; may lag a change
    made by another process by up to :data:`RECHECK_S` seconds)."""
    if not tags:
        return _EMPTY
    if time.monotonic() - _checked_at > RECHECK_S:
        _refresh()
    limited = _limited
    return tags & limited if limited else _EMPTY


def forget_limited_tags() -> None:
    """Have the next :func:`limited_tags` look again (after a change in this process)."""
    global _checked_at, _stamp_key
    with _lock:
        _checked_at = float("-inf")
        _stamp_key = None


def _refresh() -> None:
    global _checked_at, _stamp_key, _limited
    with _lock:
        now = time.monotonic()
        if now - _checked_at <= RECHECK_S:
            return  # another thread refreshed it meanwhile
        _limited, _stamp_key = _read_limited(_stamp_key, _limited)
        # Set last: a thread that finds the cache fresh never reads a half-made answer.
        _checked_at = now


def _read_limited(
    known: tuple[str, int, int, int] | None, limited: frozenset[str]
) -> tuple[frozenset[str], tuple[str, int, int, int] | None]:
    """The limited tags and the stamp they were read under (``limited`` again when
    the stamp is ``known``)."""
    try:
        from flowcore.limits.store import stamp_path, store_path

        database = store_path()
        stamp = os.stat(stamp_path(database))
    except Exception:  # no stamp: no limit was ever made here; another store: none
        return _EMPTY, None
    key = (str(database), stamp.st_ino, stamp.st_mtime_ns, stamp.st_size)
    if key == known:
        return limited, known
    from flowcore.limits.slots import process_store

    try:
        return process_store(database).limited_tags(), key
    except Exception:  # an unusable file: no limits (its error shows when one is made)
        return _EMPTY, None


def task_slots(tags: frozenset[str], label: str, logger: Any) -> Lease | None:
    """Take a slot of every limited tag of a task run's ``tags`` (blocking until all
    are free); None when none of them has a limit. The engine calls this before each
    attempt of a tagged task's body and releases the lease after it."""
    limited = limited_tags(tags)
    if not limited:
        return None
    from flowcore.limits.slots import acquire

    return acquire(limited, 1, label=label, logger=logger)


class concurrency:
    """Hold ``occupy`` slots of each of ``tags`` (one tag or several) for the block.

    ``with concurrency("db"):`` blocks until a slot of ``db`` is free on this machine
    (on a Dask worker: across the cluster), runs the block, and gives the slot back,
    also when the block raises. Tags without a limit are not waited for. ``async
    with`` waits in a thread, so the event loop runs on. ``timeout_seconds``: raise
    :class:`~flowcore.errors.ConcurrencySlotTimeoutError` after waiting that long
    (default: wait as long as it takes, logging why every so often). A limit of 0
    blocks until it is raised or removed. ``occupy`` above the limit waits likewise.
    """

    def __init__(self, tags: str | Iterable[str], occupy: int = 1, *, timeout_seconds: float | None = None) -> None:
        names = frozenset([tags] if isinstance(tags, str) else tags)
        if not names or not all(isinstance(t, str) and t for t in names):
            raise TypeError(f"concurrency: tags must be a non-empty string or strings, got {tags!r}")
        if isinstance(occupy, bool) or not isinstance(occupy, int) or occupy < 1:
            raise ValueError(f"concurrency: occupy must be an int >= 1, got {occupy!r}")
        if timeout_seconds is not None and not timeout_seconds >= 0:
            raise ValueError(f"concurrency: timeout_seconds must be >= 0 or None, got {timeout_seconds!r}")
        self.tags = names
        self.occupy = occupy
        self.timeout_seconds = timeout_seconds
        self._leases: list[Lease | None] = []  # one per block entered (nested, or per thread)

    def _acquire(self) -> None:
        limited = limited_tags(self.tags)
        lease = None
        if limited:
            from flowcore.limits.slots import acquire, default_logger

            lease = acquire(
                limited, self.occupy, label=f"concurrency({', '.join(sorted(self.tags))})",
                logger=default_logger(), timeout=self.timeout_seconds,
            )
        self._leases.append(lease)

    def _release(self) -> None:
        lease = self._leases.pop() if self._leases else None
        if lease is not None:
            lease.release()

    def __enter__(self) -> concurrency:
        self._acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._release()

    async def __aenter__(self) -> concurrency:
        import asyncio

        await asyncio.to_thread(self._acquire)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        import asyncio

        await asyncio.to_thread(self._release)


__all__ = ["RECHECK_S", "concurrency", "forget_limited_tags", "limited_tags", "task_slots"]
