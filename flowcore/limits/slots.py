"""Taking and giving back concurrency slots.

On this machine (every backend but Dask workers)::

    acquire(tags, occupy)
      loop: LimitStore.try_acquire   one BEGIN IMMEDIATE: reap dead holders of each tag,
                                     count live slots, insert ours (all tags or none)
            full? sleep with backoff (POLL_FIRST_S .. POLL_MAX_S, jittered), log why
                  after WAIT_LOG_FIRST_S and then every WAIT_LOG_EVERY_S
      -> Lease: release() deletes our rows (also on exceptions; a process killed
         before that is reaped by the next process looking at the tag)

On a Dask worker, each tag is a ``distributed.Semaphore`` named
``flowcore-limit-<tag>`` with ``max_leases`` the tag's limit (read from the limits
this worker's machine sees): the scheduler bounds the runs of the whole cluster, and
the leases of a worker that dies expire (``distributed.scheduler.locks.lease-timeout``).
A limit of 0 is waited for by polling the limit, as on a machine. With its leases
held, a run on a Dask worker also takes the slots of the worker's machine (as above),
so that the processes of the machine (other flows, the workers of another cluster)
and the cluster's workers on it share the machine's limit.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowcore.errors import ConcurrencySlotTimeoutError
from flowcore.limits.store import Blocked, LimitStore, store_path

#: first and longest sleep between two attempts to take slots (seconds)
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.25
#: a waiting run logs why after this long, then every WAIT_LOG_EVERY_S
WAIT_LOG_FIRST_S = 1.0
WAIT_LOG_EVERY_S = 15.0

_stores: dict[tuple[int, str], LimitStore] = {}
_stores_lock = threading.Lock()
_start: tuple[int, int] = (0, 0)


def process_store(database: Path | None = None) -> LimitStore:
    """This process's connection to the limits (one per process and file; a forked
    child opens its own)."""
    path = database if database is not None else store_path()
    key = (os.getpid(), str(path))
    store = _stores.get(key)
    if store is None:
        with _stores_lock:
            store = _stores.get(key)
            if store is None:
                store = _stores[key] = LimitStore(path)
    return store


def _process_start() -> int:
    global _start
    pid = os.getpid()
    if _start[0] != pid:
        from flowcore.processes import process_start

        _start = (pid, process_start(pid))
    return _start[1]


def default_logger() -> Any:
    """The run logger of the calling flow or task run, else ``flowcore.concurrency``."""
    try:
        from flowcore.loggers import get_run_logger

        return get_run_logger()
    except Exception:
        return logging.getLogger("flowcore.concurrency")


class Lease:
    """Slots held; :meth:`release` gives them back (once; later calls do nothing)."""

    def __init__(self, release: Callable[[], None], tags: list[str]) -> None:
        self._release: Callable[[], None] | None = release
        self.tags = tags

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def acquire(
    tags: frozenset[str], occupy: int, *, label: str, logger: Any, timeout: float | None = None
) -> Lease:
    """Block until ``occupy`` slots of every limited tag in ``tags`` are held, then
    return the :class:`Lease`. Raises ConcurrencySlotTimeoutError after ``timeout``
    seconds (None: no limit); a KeyboardInterrupt while waiting leaves nothing held."""
    if _on_dask_worker():
        return _acquire_on_dask(tags, occupy, label=label, logger=logger, timeout=timeout)
    return _acquire_here(tags, occupy, label=label, logger=logger, timeout=timeout)


def _acquire_here(
    tags: frozenset[str], occupy: int, *, label: str, logger: Any, timeout: float | None
) -> Lease:
    """The slots of this machine: rows in its limits store (see :func:`acquire`)."""
    store = process_store()
    holder = os.urandom(8).hex()
    started = time.monotonic()
    log_at = started + WAIT_LOG_FIRST_S
    delay = POLL_FIRST_S
    while True:
        outcome = store.try_acquire(sorted(tags), occupy, holder, label, _process_start())
        if not isinstance(outcome, Blocked):
            return Lease(lambda: store.release(holder), outcome)
        now = time.monotonic()
        if timeout is not None and now - started >= timeout:
            raise ConcurrencySlotTimeoutError(
                f"{label}: no slot after waiting {now - started:.1f} s: {outcome.reason()} "
                f"(see flowcore concurrency-limit inspect {outcome.tag})"
            )
        if now >= log_at:
            logger.info("%s waits for a concurrency slot (%.0f s so far): %s", label, now - started, outcome.reason())
            log_at = now + WAIT_LOG_EVERY_S
        pause = delay * (0.5 + random.random())
        if timeout is not None:
            pause = min(pause, max(0.0, started + timeout - now))
        time.sleep(pause)
        delay = min(delay * 1.5, POLL_MAX_S)


# -- Dask ----------------------------------------------------------------------------


def _on_dask_worker() -> bool:
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


_semaphores: dict[str, Any] = {}


def semaphore_name(tag: str) -> str:
    """The distributed Semaphore of ``tag``."""
    return f"flowcore-limit-{tag}"


def _semaphore(tag: str, leases: int, logger: Any) -> Any:
    from distributed import Semaphore

    name = semaphore_name(tag)
    key = f"{name}/{leases}"
    found = _semaphores.get(key)
    if found is not None:
        return found
    try:
        semaphore = Semaphore(max_leases=leases, name=name)  # type: ignore[no-untyped-call]
        semaphore.get_value()  # type: ignore[no-untyped-call]  # registers it: another max_leases raises
    except ValueError:
        # The scheduler knows this tag with another limit (changed since it started):
        # a semaphore of the new size, under a name of its own.
        logger.warning(
            "the Dask scheduler holds semaphore %r with another size than the limit %d; using %r "
            "(restart the cluster to drop the old one)", name, leases, f"{name}-{leases}",
        )
        semaphore = Semaphore(max_leases=leases, name=f"{name}-{leases}")  # type: ignore[no-untyped-call]
    _semaphores[key] = semaphore
    return semaphore


def _acquire_on_dask(
    tags: frozenset[str], occupy: int, *, label: str, logger: Any, timeout: float | None
) -> Lease:
    store = process_store()
    started = time.monotonic()
    log_at = started + WAIT_LOG_FIRST_S
    held: list[Any] = []

    def release() -> None:
        while held:
            held.pop().release()

    try:
        for tag in sorted(tags):  # one order everywhere: no deadlock between two tags
            while True:
                found = store.limits([tag])
                if not found:
                    break  # removed meanwhile: nothing to hold
                limit = found[0].slots
                if limit >= occupy:
                    semaphore = _semaphore(tag, limit, logger)
                    taken = 0
                    while taken < occupy:
                        remaining = None if timeout is None else max(0.0, started + timeout - time.monotonic())
                        wait = WAIT_LOG_EVERY_S if remaining is None else min(WAIT_LOG_EVERY_S, remaining)
                        if semaphore.acquire(timeout=wait):
                            held.append(semaphore)
                            taken += 1
                            continue
                        _check_deadline(label, tag, started, timeout, "all its slots are taken on the cluster")
                        logger.info("%s waits for a concurrency slot of tag %r (limit %d, Dask semaphore %r)",
                                    label, tag, limit, semaphore.name)
                    break
                reason = Blocked(tag, limit, 0, occupy).reason()
                _check_deadline(label, tag, started, timeout, reason)
                if time.monotonic() >= log_at:
                    logger.info("%s waits for a concurrency slot: %s", label, reason)
                    log_at = time.monotonic() + WAIT_LOG_EVERY_S
                time.sleep(POLL_MAX_S)  # the limit is read again: raised, or removed
        # The cluster's leases bound the cluster; this machine's slots bound it beside
        # the other processes here (other flows, another cluster's workers). Taken
        # second: a holder of machine slots never waits for a lease, so no cycle.
        remaining = None if timeout is None else max(0.0, started + timeout - time.monotonic())
        here = _acquire_here(tags, occupy, label=label, logger=logger, timeout=remaining)
    except BaseException:
        release()
        raise

    def release_both() -> None:
        try:
            here.release()
        finally:
            release()

    return Lease(release_both, sorted(tags))


def _check_deadline(label: str, tag: str, started: float, timeout: float | None, reason: str) -> None:
    waited = time.monotonic() - started
    if timeout is not None and waited >= timeout:
        raise ConcurrencySlotTimeoutError(f"{label}: no slot of tag {tag!r} after waiting {waited:.1f} s: {reason}")


__all__ = ["Lease", "acquire", "default_logger", "process_store", "semaphore_name"]
