"""What runs in a worker for the joblib shim: one batch of ``(fn, args, kwargs)`` calls.

A batch travels as a column when every call has the same function and no keyword
arguments (``(fn, [args, ...])``: the function is pickled once, each item costs one
tuple) and as a list of triples otherwise. It comes back as ``(values, seconds)`` --
the values in order and how long the worker was busy, which sizes later batches -- or
as a :class:`BatchFailure` for the first call that raised: the rest of the batch is
not run, as joblib stops a batch at its first error.

While the batch runs, the shim's configuration in the worker thread says how nested
``Parallel`` calls behave there (joblib's rule: threads one level down, sequential
below that), and a process worker journals the batch (``flowcore.backends._supervision.journal``) so a
crash is pinned on it and an abort can stop just the workers running this call.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

from flowcore.compat._config import (
    BackendChoice,
    ParallelConfig,
    WorkerInfo,
    set_config,
    set_worker,
)
from flowcore.engine import run_tracker

#: ``(fn, [args, ...])`` or ``[(fn, args, kwargs), ...]``
Payload = Any


@dataclass(frozen=True)
class Nested:
    """The configuration nested calls see inside a worker of a ``Parallel`` call."""

    choice: BackendChoice | None
    level: int
    in_process: bool
    daemonic: bool


@dataclass
class BatchFailure:
    """The first exception a batch raised, and the worker's traceback as text."""

    exception: BaseException
    traceback: str


def make_payload(chunk: list[Any]) -> Payload:
    """Encode ``chunk`` (a list of ``(fn, args, kwargs)``) for the trip to a worker."""
    fn = chunk[0][0]
    for item in chunk:
        if item[0] is not fn or item[2]:
            return chunk
    return (fn, [item[1] for item in chunk])


def not_a_call(chunk: list[Any], first: int) -> TypeError | None:
    """The error for the first item of ``chunk`` (item ``first`` of the input) that is not
    a ``(fn, args, kwargs)`` call as ``delayed(fn)(*args, **kwargs)`` makes, or None."""
    for index, item in enumerate(chunk, first):
        if (
            isinstance(item, tuple | list) and len(item) == 3 and callable(item[0])
            and isinstance(item[1], tuple | list) and isinstance(item[2], dict)
        ):
            continue
        article = "an" if type(item).__name__[:1] in "aeiou" else "a"
        text = repr(item)
        text = text if len(text) <= 60 else text[:57] + "..."
        return TypeError(
            f"Parallel: item {index} is {article} {type(item).__name__} ({text}), not a call made "
            "with delayed(): give delayed(fn)(*args, **kwargs) for each item (calling fn(...) "
            "yourself runs it here, before Parallel sees it)"
        )
    return None


def run_batch(payload: Payload, nested: Nested | None, tag: str | None, portable: bool) -> Any:
    """Run the calls of ``payload`` in order; ``(values, busy seconds)`` or a failure.

    ``portable``: the outcome crosses a process boundary, so an exception that cannot
    be pickled is replaced by one that can (naming the original).
    """
    tracker = run_tracker() if tag is not None else None
    if tracker is not None and tag is not None:
        tracker.record_start(tag)
    if nested is not None:
        old_config = set_config(
            ParallelConfig(backend=nested.choice, n_jobs=None, nesting_level=nested.level)
        )
        old_worker = set_worker(WorkerInfo(nested.in_process, nested.daemonic))
    started = time.perf_counter()
    try:
        if type(payload) is tuple:
            fn, rows = payload
            values = [fn(*args) for args in rows]
        else:
            values = [fn(*args, **kwargs) for fn, args, kwargs in payload]
    except BaseException as exc:  # KeyboardInterrupt in a task reaches the caller too
        return _failure(exc, portable)
    finally:
        if nested is not None:
            set_config(old_config)
            set_worker(old_worker)
        if tracker is not None:
            tracker.record_idle()
    return values, time.perf_counter() - started


def _failure(exc: BaseException, portable: bool) -> BatchFailure:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if portable:
        try:
            import cloudpickle

            cloudpickle.loads(cloudpickle.dumps(exc))
        except Exception as problem:
            from flowcore.errors import SerializationError

            exc = SerializationError(
                f"a task raised {type(exc).__name__}: {exc}, which cannot be sent back from "
                f"the worker process ({problem!r}); its traceback follows as the cause"
            )
        exc.__traceback__ = None
    return BatchFailure(exc, text)


__all__ = ["BatchFailure", "Nested", "make_payload", "run_batch"]
