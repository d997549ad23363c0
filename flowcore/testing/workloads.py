"""Tasks used by the conformance suite.

They live in an importable module (not in a test file) so that process and cluster
backends can unpickle them by reference in their workers. Cross-run state (attempt
counters, rendezvous) goes through files, which every backend on one machine shares.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from flowcore.tasks import task


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def identity(x: Any) -> Any:
    return x


@task
def total(values: list[int]) -> int:
    return sum(values)


@task
def square(x: int) -> int:
    return x * x


@task
def length(data: bytes) -> int:
    return len(data)


@task
def echo_bytes(size: int) -> bytes:
    return b"\x07" * size


class ConformanceError(ValueError):
    """A distinctive exception type, to check that the type survives the trip."""


@task
def raise_value_error(message: str) -> None:
    raise ConformanceError(message)


@task
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
def sleep_in_steps(seconds: float, step: float = 0.01) -> float:
    """Sleeps in small Python-level steps, so any timeout mechanism can interrupt it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(step)
    return seconds


def bump(counter: str | os.PathLike[str]) -> int:
    """Increment the integer stored in ``counter`` (a file) and return the new value.

    Uses an exclusive lock file so concurrent processes do not lose increments.
    """
    path = Path(counter)
    lock = path.with_suffix(".lock")
    deadline = time.monotonic() + 30
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not lock {lock}") from None
            time.sleep(0.001)
    try:
        value = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(value))
        return value
    finally:
        os.close(fd)
        os.unlink(lock)


def read_count(counter: str | os.PathLike[str]) -> int:
    path = Path(counter)
    return int(path.read_text()) if path.exists() else 0


@task
def counted_square(counter: str, x: int) -> int:
    """``x * x``, counting its executions in the file ``counter`` (for cache tests)."""
    bump(counter)
    return x * x


@task
def fail_until(counter: str, succeed_on: int) -> int:
    """Fails (ConformanceError) until its ``succeed_on``-th attempt; returns the attempt."""
    attempt = bump(counter)
    if attempt < succeed_on:
        raise ConformanceError(f"attempt {attempt} fails on purpose")
    return attempt


@task
def type_error_once(counter: str) -> int:
    attempt = bump(counter)
    raise TypeError(f"attempt {attempt}: not retryable")


@task
def touch(path: str) -> str:
    Path(path).write_text("done")
    return path


@task
def rendezvous(mine: str, other: str, timeout: float = 20.0) -> bool:
    """Create ``mine``, then wait for ``other``: two of these only finish if they overlap."""
    Path(mine).write_text("here")
    deadline = time.monotonic() + timeout
    while not Path(other).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@task
def worker_pid() -> int:
    return os.getpid()


@task
def hold_until(started: str, release: str, timeout: float = 30.0) -> int:
    """Write this worker's pid to ``started``, then wait until ``release`` exists (at
    most ``timeout`` seconds); returns the pid. Keeps one worker busy on demand."""
    Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.getpid()


@task
def exit_with(code: int) -> None:
    """Calls ``sys.exit(code)`` inside the task body."""
    sys.exit(code)


@task
def exit_if_odd(x: int) -> int:
    if x % 2:
        sys.exit(x)
    return x


class UnpicklableError(Exception):
    """The classic pitfall: ``__init__`` takes two arguments but ``Exception`` pickles
    only the message, so the instance pickles but fails to unpickle."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} and {b}")


class FailsWhenLoaded:
    """Pickles fine; unpickling it raises (its ``__reduce__`` rebuilds with bad arguments)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (UnpicklableError, ("only one argument",))


@task
def raise_unpicklable(a: str, b: str) -> None:
    raise UnpicklableError(a, b)


@task
def raise_unpicklable_if_odd(x: int) -> int:
    if x % 2:
        raise UnpicklableError(str(x), "odd")
    return x


@task
def return_unloadable() -> FailsWhenLoaded:
    return FailsWhenLoaded()


__all__ = [
    "LIMITED_TAG",
    "ConformanceError",
    "FailsWhenLoaded",
    "UnpicklableError",
    "add",
    "async_add",
    "async_counted_square",
    "async_fail_until",
    "async_run_context_of",
    "async_sleep_marking",
    "async_where",
    "bump",
    "describe",
    "echo_bytes",
    "exit_if_odd",
    "exit_with",
    "fail_until",
    "identity",
    "kill_own_worker",
    "length",
    "limited_interval",
    "raise_unpicklable",
    "raise_unpicklable_if_odd",
    "raise_value_error",
    "read_count",
    "rendezvous",
    "return_unloadable",
    "run_context_after_a_failure",
    "run_context_of",
    "sleep_for",
    "sleep_in_steps",
    "square",
    "total",
    "touch",
    "type_error_once",
    "worker_pid",
]


@task
def fan_out_inside(n: int) -> list[int]:
    """Submits and maps other tasks from inside its own body (nested task runs)."""
    single = square.submit(n).result()
    mapped = [f.result() for f in square.map(range(n))]
    return [single, *mapped, add(n, 1)]


@task
def fail_on_three(x: int) -> int:
    """``x``, except that 3 raises ValueError."""
    if x == 3:
        raise ValueError("three")
    return x


# -- async tasks -----------------------------------------------------------------


@task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@task
async def async_where() -> tuple[int, bool]:
    """Where the coroutine ran: the process id, and whether an event loop ran it."""
    await asyncio.sleep(0)
    return os.getpid(), asyncio.get_running_loop().is_running()


@task
async def async_fail_until(counter: str, succeed_on: int) -> int:
    """Fails (ConformanceError) until its ``succeed_on``-th execution, counted in a file."""
    await asyncio.sleep(0)
    attempt = bump(counter)
    if attempt < succeed_on:
        raise ConformanceError(f"attempt {attempt} fails")
    return attempt


@task
async def async_counted_square(counter: str, x: int) -> int:
    """``x * x``, counting its executions in the file ``counter`` (for cache tests)."""
    await asyncio.sleep(0)
    bump(counter)
    return x * x


@task
async def async_sleep_marking(seconds: float, marker: str) -> float:
    """Awaits ``seconds``; writes ``marker`` if the coroutine is cancelled meanwhile."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        Path(marker).write_text("cancelled")
        raise
    return seconds


# -- run context -------------------------------------------------------------------


@task
def run_context_of(x: int) -> Any:
    """The :func:`flowcore.get_run_context` snapshot seen by this run's body."""
    from flowcore.run_context import get_run_context

    return get_run_context()


@task
async def async_run_context_of(x: int) -> Any:
    from flowcore.run_context import get_run_context

    await asyncio.sleep(0)
    return get_run_context()


@task(retries=1, retry_delay_seconds=0)
def run_context_after_a_failure(counter: str) -> Any:
    """Fails its first attempt; returns the run context of the second."""
    from flowcore.run_context import get_run_context

    if bump(counter) < 2:
        raise ConformanceError("first attempt fails")
    return get_run_context()


@task
def kill_own_worker() -> None:
    """Ends the worker process at once (``os._exit``): only for process backends."""
    os._exit(13)


@task
def describe(*values: Any) -> list[str]:
    """Each value as ``type:value`` (exceptions as ``ExceptionType:message``)."""
    return [f"{type(v).__name__}:{v}" for v in values]


#: the tag of :func:`limited_interval` (the conformance suite gives it a limit)
LIMITED_TAG = "flowcore-conformance-limited"


@task(tags=[LIMITED_TAG])
def limited_interval(seconds: float) -> tuple[float, float]:
    """Sleep ``seconds``; return when the body started and ended (epoch seconds)."""
    started = time.time()
    time.sleep(seconds)
    return started, time.time()
