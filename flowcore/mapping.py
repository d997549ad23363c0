"""``Task.map`` argument expansion and :class:`unmapped`."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


@dataclass(slots=True)
class MapArguments:
    """``Task.map`` arguments as columns: one list per mapped argument, the static
    values once. Rows (one ``(args, kwargs)`` pair per run) are built on demand, in
    the parent for the per-run path or in a worker for a slice of columns."""

    count: int
    #: per positional argument: the column (a list) if mapped, else the static value
    positional: list[Any]
    #: which positional arguments are mapped
    mapped: list[bool]
    static_kwargs: dict[str, Any]
    mapped_kwargs: dict[str, list[Any]]
    has_futures: bool

    def rows(self) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        """One ``(args, kwargs)`` pair per run."""
        return self.layout(0, self.count).rows()

    def layout(self, start: int, stop: int) -> RowLayout:
        """The runs ``start:stop`` in a compact, picklable form (column slices)."""
        positional = [
            value[start:stop] if mapped else value
            for value, mapped in zip(self.positional, self.mapped, strict=True)
        ]
        kw_columns = {k: v[start:stop] for k, v in self.mapped_kwargs.items()}
        return RowLayout(stop - start, positional, self.mapped, self.static_kwargs, kw_columns)


@dataclass(slots=True)
class RowLayout:
    """A slice of :class:`MapArguments`: what travels to a worker for a batch of runs."""

    count: int
    positional: list[Any]
    mapped: list[bool]
    static_kwargs: dict[str, Any]
    mapped_kwargs: dict[str, list[Any]]

    def arg_rows(self) -> list[tuple[Any, ...]]:
        columns = [
            value if mapped else itertools.repeat(value, self.count)
            for value, mapped in zip(self.positional, self.mapped, strict=True)
        ]
        if not columns:
            return [()] * self.count
        return list(zip(*columns, strict=True))  # one tuple per run, built in C

    def kwarg_rows(self) -> list[dict[str, Any]] | None:
        """One kwargs dict per run, or None when the runs take no keyword arguments
        (they then share one empty dict: runs never mutate their kwargs)."""
        if not self.mapped_kwargs and not self.static_kwargs:
            return None
        names = list(self.mapped_kwargs)
        if not names:
            return [dict(self.static_kwargs) for _ in range(self.count)]
        static = self.static_kwargs
        return [
            {**static, **dict(zip(names, values, strict=True))}
            for values in zip(*(self.mapped_kwargs[k] for k in names), strict=True)
        ]

    def rows(self) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        arg_rows = self.arg_rows()
        kwarg_rows = self.kwarg_rows()
        if kwarg_rows is None:
            no_kwargs: dict[str, Any] = {}
            return [(row, no_kwargs) for row in arg_rows]
        return list(zip(arg_rows, kwarg_rows, strict=True))


def map_arguments(task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> MapArguments:
    """Split ``map`` arguments into columns and static values.

    Each static value and each mapped element is scanned for futures once, not once
    per run. Raises ValueError when no argument is iterable or the iterables differ
    in length.
    """
    for label, value in [*((f"argument {i}", a) for i, a in enumerate(args)), *kwargs.items()]:
        if isinstance(value, unmapped) and isinstance(value.value, unmapped):
            raise TypeError(
                f"{task_name}.map(): {label} is {value!r}; wrap a value in unmapped() once"
            )
    mapped_args = {i: list(a) for i, a in enumerate(args) if _is_mapped(a)}
    mapped_kwargs = {k: list(v) for k, v in kwargs.items() if _is_mapped(v)}
    lengths = {f"argument {i}": len(v) for i, v in mapped_args.items()}
    lengths.update({f"{k!r}": len(v) for k, v in mapped_kwargs.items()})
    if not lengths:
        whole = [
            (f"argument {key}" if isinstance(key, int) else repr(key), value)
            for key, value in [*enumerate(args), *kwargs.items()]
            if isinstance(value, _NOT_MAPPED)
        ]
        hint = ""
        if whole:
            label, value = whole[0]
            kind = "d" if isinstance(value, Mapping) else "s"
            hint = (
                f" ({label} is a {type(value).__name__}: strings, bytes and mappings are passed "
                f"whole to every run; to map over it, pass list({kind})"
                + (" or list(d.items()))" if kind == "d" else ")")
            )
        raise ValueError(
            f"{task_name}.map() needs at least one iterable argument to map over{hint}; "
            "to run the task once, use .submit()"
        )
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(
            f"{task_name}.map() got iterables of different lengths ({described}); "
            "pass equal lengths, or wrap constant iterables in unmapped(...)"
        )
    return MapArguments(
        count=next(iter(lengths.values())),
        positional=[mapped_args[i] if i in mapped_args else _unwrap(a) for i, a in enumerate(args)],
        mapped=[i in mapped_args for i in range(len(args))],
        static_kwargs={k: _unwrap(v) for k, v in kwargs.items() if k not in mapped_kwargs},
        mapped_kwargs=mapped_kwargs,
        has_futures=_any_future(args, kwargs, mapped_args, mapped_kwargs),
    )


def _any_future(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    mapped_args: dict[int, list[Any]],
    mapped_kwargs: dict[str, list[Any]],
) -> bool:
    from flowcore.futures import column_holds_inputs

    # Annotations (allow_failure, quote) count as futures: such runs take the per-run path.
    static = [_unwrap(a) for i, a in enumerate(args) if i not in mapped_args]
    static += [_unwrap(v) for k, v in kwargs.items() if k not in mapped_kwargs]
    columns = [static, *mapped_args.values(), *mapped_kwargs.values()]
    return any(column_holds_inputs(column) for column in columns)


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, unmapped) else value


__all__ = ["MapArguments", "RowLayout", "map_arguments", "unmapped"]
