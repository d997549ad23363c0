"""``Task.map`` argument expansion and :class:`unmapped`."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# Iterable, but passed whole to every run: mapping over the characters of a string
# or the keys of a dict is almost never what the caller meant.
_NOT_MAPPED = (str, bytes, bytearray, memoryview, Mapping)


class unmapped(Generic[T]):
    """Pass ``value`` unchanged to every run of ``Task.map`` even if it is iterable."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"unmapped({self.value!r})"


def _is_mapped(value: Any) -> bool:
    from flowcore.futures import TaskFuture

    if isinstance(value, (unmapped, TaskFuture, _NOT_MAPPED)):
        return False
    return isinstance(value, Iterable)


def expand_map_arguments(
    task_name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    found: list[bool] | None = None,
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Turn ``map`` arguments into one ``(args, kwargs)`` pair per run.

    Appends to ``found`` (if given) whether any argument holds a TaskFuture; each
    static value and each mapped element is scanned once, not once per run.
    Raises ValueError when no argument is iterable or the iterables differ in length.
    """
    if found is None:
        found = []
    mapped_args = {i: list(a) for i, a in enumerate(args) if _is_mapped(a)}
    mapped_kwargs = {k: list(v) for k, v in kwargs.items() if _is_mapped(v)}
    lengths = {f"argument {i}": len(v) for i, v in mapped_args.items()}
    lengths.update({f"{k!r}": len(v) for k, v in mapped_kwargs.items()})
    if not lengths:
        raise ValueError(
            f"{task_name}.map() needs at least one iterable argument to map over; "
            "to run the task once, use .submit()"
        )
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(
            f"{task_name}.map() got iterables of different lengths ({described}); "
            "pass equal lengths, or wrap constant iterables in unmapped(...)"
        )
    count = next(iter(lengths.values()))
    found.append(_any_future(args, kwargs, mapped_args, mapped_kwargs))
    # Columns zipped into rows: one tuple per run, built in C.
    columns = [
        mapped_args[i] if i in mapped_args else itertools.repeat(_unwrap(a), count)
        for i, a in enumerate(args)
    ]
    arg_rows: Iterable[tuple[Any, ...]] = (
        zip(*columns, strict=True) if columns else itertools.repeat((), count)
    )
    if not kwargs:
        # Runs never mutate their kwargs, so they can share one empty dict.
        no_kwargs: dict[str, Any] = {}
        return [(row, no_kwargs) for row in arg_rows]
    static_kwargs = {k: _unwrap(v) for k, v in kwargs.items() if k not in mapped_kwargs}
    names = list(mapped_kwargs)
    if not names:
        return [(row, dict(static_kwargs)) for row in arg_rows]
    kwarg_rows = zip(*(mapped_kwargs[k] for k in names), strict=True)
    return [
        (row, {**static_kwargs, **dict(zip(names, values, strict=True))})
        for row, values in zip(arg_rows, kwarg_rows, strict=True)
    ]


def _any_future(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    mapped_args: dict[int, list[Any]],
    mapped_kwargs: dict[str, list[Any]],
) -> bool:
    from flowcore.futures import TaskFuture, collect_futures

    scan = (TaskFuture, list, tuple, dict, set, frozenset)
    columns = [*mapped_args.values(), *mapped_kwargs.values()]
    static = [_unwrap(a) for i, a in enumerate(args) if i not in mapped_args]
    static += [_unwrap(v) for k, v in kwargs.items() if k not in mapped_kwargs]
    for value in static:
        if isinstance(value, scan) and collect_futures(value):
            return True
    for column in columns:
        for value in column:
            if isinstance(value, scan) and collect_futures(value):
                return True
    return False


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, unmapped) else value


__all__ = ["expand_map_arguments", "unmapped"]
