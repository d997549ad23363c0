"""Argument annotations: ``allow_failure(future)`` and ``quote(value)`` (Prefect's).

Arguments of ``submit`` and ``map`` are scanned for futures: a run waits for each one
and gets its result, and a run whose upstream did not complete ends ``NotRun``. Two
wrappers change that for one argument:

* :class:`allow_failure` -- the run waits for the futures inside, and runs even if
  they did not complete; each is replaced by its result, or, for one that did not
  complete, by its exception (what ``future.result(raise_on_failure=False)``
  returns: the task's own exception, ``UpstreamFailedError`` for ``NotRun``,
  ``CrashedError`` for ``Crashed`` ...). Also accepted in ``wait_for``.
* :class:`quote` -- the value is passed as it is: not scanned, not waited for, futures
  inside it left as futures (a large structure is not walked either). A flow that
  returns ``quote(x)`` completes with ``x`` as is.

The wrapper itself never reaches the task: it is removed when the run is dispatched.
Direct calls (``t(x)``) do not resolve futures, so they take neither wrapper: pass the
plain value there.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")


class BaseAnnotation(Generic[T]):
    """A wrapper around one argument value that changes how it is resolved."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def unwrap(self) -> T:
        """The wrapped value."""
        return self.value

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value

    def __hash__(self) -> int:
        return hash((type(self), id(self.value)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.value,))


class allow_failure(BaseAnnotation[T]):
    """Run the downstream task even if the futures in ``value`` do not complete; it
    gets their results, or the exceptions of those that failed (see the module)."""

    __slots__ = ()


class quote(BaseAnnotation[T]):
    """Pass ``value`` to the task as it is: not scanned for futures, not resolved."""

    __slots__ = ()

    def unquote(self) -> T:
        """The wrapped value (Prefect's name for :meth:`unwrap`)."""
        return self.value


__all__ = ["BaseAnnotation", "allow_failure", "quote"]
