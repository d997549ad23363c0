"""``Task.map`` argument expansion and :class:`unmapped`."""

from __future__ import annotations

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
    task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Turn ``map`` arguments into one ``(args, kwargs)`` pair per run.

    Raises ValueError when no argument is iterable or the iterables differ in length.
    """
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
    static_args = [a.value if isinstance(a, unmapped) else a for a in args]
    static_kwargs = {k: v.value if isinstance(v, unmapped) else v for k, v in kwargs.items()}
    runs = []
    for index in range(count):
        run_args = tuple(
            mapped_args[i][index] if i in mapped_args else value
            for i, value in enumerate(static_args)
        )
        run_kwargs = {
            k: mapped_kwargs[k][index] if k in mapped_kwargs else value
            for k, value in static_kwargs.items()
        }
        runs.append((run_args, run_kwargs))
    return runs


__all__ = ["expand_map_arguments", "unmapped"]
