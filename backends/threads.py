"""The ``threads`` backend (the default): a lazily started pool of threads.

Good for I/O-bound tasks and for code that releases the GIL (NumPy, pandas, most
C extensions). Option ``max_workers`` defaults to ``min(32, usable CPUs + 4)``, the
standard library's default.

The pool (:class:`WorkerThreads`) is an Executor, and also takes work items without a
Future each (capability ``queues_items``): a single ``.submit`` of a task costs one
queue put and one small object instead of a ``concurrent.futures.Future`` with its
condition variable. Threads start on demand, as ``ThreadPoolExecutor``'s do: a new
one only when no worker is idle, up to ``max_workers``.

A thread that blocks on ``future.result()`` (no timeout) for a task no worker has
started yet runs that task itself: the caller would only wait for a hand-off, and a
pool saturated by blocked tasks cannot deadlock it (see ``flowcore.dispatch``).
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from flowcore.backend import (
    BackendKind,
    BackendSpec,
    Capabilities,
    ExecutorBackend,
    WorkItem,
    usable_cpu_count,
)
from flowcore.errors import BackendShutdownError
from flowcore.hookspecs import hookimpl

T = TypeVar("T")

CAPABILITIES = Capabilities(in_process=True, interrupts_blocking=True, queues_items=True)


def default_max_workers() -> int:
    return min(32, usable_cpu_count() + 4)


class _Call:
    """An Executor submission as a work item: runs ``fn`` into its Future."""

    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)

    def drop(self) -> None:
        self.future.cancel()


_STOP = None  # put once per thread by shutdown

_live_pools: weakref.WeakSet[WorkerThreads] = weakref.WeakSet()


def _forget_threads_after_fork() -> None:
    """In a forked child only the forking thread exists: every pool starts afresh."""
    for pool in list(_live_pools):
        pool._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads_after_fork)


@atexit.register
def _stop_all() -> None:
    """At interpreter exit: let every pool's threads finish their queued work and end."""
    for pool in list(_live_pools):
        pool.shutdown(wait=True)


class WorkerThreads(Executor):
    """A FIFO pool of daemon threads that runs work items (and Executor submissions).

    Thread-safe. ``shutdown(wait=True)`` lets the queued items run, then joins the
    threads; ``cancel_futures=True`` drops the items no thread has taken (their
    ``drop()`` is called). Pools still open at interpreter exit are shut down then.
    """

    def __init__(self, max_workers: int, name_prefix: str = "flowcore-thread") -> None:
        self.max_workers = max_workers
        self._prefix = name_prefix
        self._queue: queue.SimpleQueue[WorkItem | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for an item, not yet claimed by a put
        #: every thread is started: no more counting of idle threads (no lock per item)
        self._full = False
        self._closed = False
        _live_pools.add(self)

    def enqueue(self, item: WorkItem) -> None:
        """Have a thread call ``item.run()``."""
        if self._closed:
            raise BackendShutdownError("the thread pool has been shut down")
        self._queue.put(item)
        if self._full:
            return
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread will take it
                return
            if len(self._threads) >= self.max_workers:
                self._full = True
                return
            thread = threading.Thread(
                target=self._work, name=f"{self._prefix}_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            self._full = len(self._threads) >= self.max_workers
        thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self.enqueue(_Call(future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        get = self._queue.get
        lock = self._lock
        while True:
            item = get()
            if item is _STOP:
                return
            item.run()
            del item  # let its objects go while this thread waits
            if not self._full:  # once every thread is started, idle ones are not counted
                with lock:
                    self._idle += 1

    def _reset_after_fork(self) -> None:
        """The parent's threads do not exist here: start new ones on demand, and run
        the items queued before the fork (this process has its own copy of them)."""
        self._lock = threading.Lock()
        self._threads = []
        self._idle = 0
        self._full = False
        pending: list[WorkItem | None] = []
        while True:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._queue = queue.SimpleQueue()
        for item in pending:
            if item is not _STOP and not self._closed:
                self.enqueue(item)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            already = self._closed
            self._closed = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    item.drop()
        if not already:
            for _ in threads:
                self._queue.put(_STOP)
        if wait:
            current = threading.current_thread()
            for thread in threads:
                if thread is not current:
                    thread.join()


class ThreadsBackend(ExecutorBackend):
    """The ``threads`` backend: an ExecutorBackend over :class:`WorkerThreads` that
    also queues work items (capability ``queues_items``)."""

    def __init__(self, max_workers: int) -> None:
        super().__init__("threads", BackendKind.THREADS, max_workers, _thread_pool, CAPABILITIES)

    def enqueue(self, item: WorkItem) -> None:
        pool = self._executor
        if pool is None or self._closed:  # not started yet, or shut down (raises)
            pool = self._get_executor()
        pool.enqueue(item)  # type: ignore[attr-defined]  # a WorkerThreads (_thread_pool)


def _thread_pool(max_workers: int) -> Executor:
    return WorkerThreads(max_workers)


def create(max_workers: int | None = None) -> ThreadsBackend:
    """Factory: ``threads`` takes ``max_workers`` (a positive int, or None for the default)."""
    if max_workers is None:
        max_workers = default_max_workers()
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(
            f"max_workers for the threads backend must be a positive int, got {max_workers!r}"
        )
    return ThreadsBackend(max_workers)


@hookimpl
def flowcore_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name="threads",
            factory=create,
            description="a thread pool in this process (I/O-bound work, GIL-releasing code)",
            kind=BackendKind.THREADS,
            capabilities=CAPABILITIES,
        )
    ]


__all__ = ["ThreadsBackend", "WorkerThreads", "create", "default_max_workers"]
