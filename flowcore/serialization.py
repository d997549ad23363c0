"""Explaining pickling failures: which argument (or the result) could not cross over.

A process or cluster backend pickles the call on its way to a worker and the result
on its way back. When that fails the backend reports a generic error; this module
turns it into a :class:`~flowcore.errors.SerializationError` that names the task run
and the argument at fault. It runs only on that failure path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flowcore.calls import TaskCall
from flowcore.errors import SerializationError


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_pickling_error(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it chains to) is a failure to pickle."""
    import pickle

    for error in _chain(exc):
        if isinstance(error, pickle.PicklingError):
            return True
        if isinstance(error, (TypeError, AttributeError)) and "pickle" in str(error).lower():
            return True
    return False


def _root_cause(exc: BaseException) -> BaseException:
    *_, last = _chain(exc)
    return last


def _dumps(value: Any) -> None:
    import cloudpickle

    cloudpickle.dumps(value)


def explain_pickling_failure(
    call: TaskCall, exc: BaseException, backend_name: str
) -> SerializationError | None:
    """A SerializationError naming what could not be pickled, or None if ``exc`` is not
    a pickling failure."""
    if not is_pickling_error(exc):
        return None
    where = f"task run {call.task_run_name!r}"
    try:
        parameters = call.parameters
    except TypeError:
        parameters = {f"argument {i}": v for i, v in enumerate(call.args)} | call.kwargs
    for name, value in parameters.items():
        try:
            _dumps(value)
        except Exception as error:
            return SerializationError(
                f"{where}: argument {name!r} (a {type(value).__module__}.{type(value).__qualname__}) "
                f"cannot be pickled to send it to the {backend_name!r} workers: {error}. Pass "
                "a picklable value, or create the object inside the task."
            )
    try:
        _dumps(call.task)
    except Exception as error:
        return SerializationError(
            f"{where}: the task itself (its function or options) cannot be pickled "
            f"to send it to the {backend_name!r} workers: {error}"
        )
    root = _root_cause(exc)
    return SerializationError(
        f"{where}: its result cannot be pickled to send it back from the {backend_name!r} "
        f"workers: {type(root).__name__}: {root}. Return a picklable value."
    )


__all__ = ["explain_pickling_failure", "is_pickling_error"]
