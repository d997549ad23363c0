"""Flow parameters checked and coerced against the flow function's type hints (pydantic).

A flow with ``validate_parameters=True`` (the default, as in Prefect) validates each
argument given to a call in pydantic's lax mode: ``"3"`` becomes ``3`` for an ``int``
parameter, a dict becomes a model for a ``BaseModel`` parameter, and a value that does
not fit fails the run before its body starts, with a :class:`ParameterTypeError` that
names the parameter, the expected type and the value. Defaults are not validated (as
pydantic's ``validate_call`` does not), unannotated parameters pass unchanged, and a
class pydantic does not know (a numpy array, a connection) is checked with
``isinstance``.

This module imports pydantic, so it is loaded only when a flow with annotated
parameters is first called (``import flowcore`` stays light).
"""

from __future__ import annotations

import inspect
import sys
import threading
import typing
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import pydantic

from flowcore.errors import ParameterTypeError

_ARBITRARY = pydantic.ConfigDict(arbitrary_types_allowed=True)
_CONTAINERS = (list, dict, set, tuple, frozenset)


class ParameterValidator:
    """The validators of one flow function's annotated parameters (built once)."""

    def __init__(self, flow_name: str, fn: Callable[..., Any], signature: inspect.Signature) -> None:
        self.flow_name = flow_name
        self.signature = signature
        hints = _type_hints(fn, signature)
        self._adapters: dict[str, pydantic.TypeAdapter[Any]] = {}
        self._expected: dict[str, str] = {}
        self._kinds: dict[str, Any] = {}
        for name, parameter in signature.parameters.items():
            hint = hints.get(name, inspect.Parameter.empty)
            if hint is inspect.Parameter.empty or hint is Any:
                continue
            adapter = _adapter(hint)
            if adapter is None:
                continue
            self._adapters[name] = adapter
            self._expected[name] = type_name(hint)
            self._kinds[name] = parameter.kind

    def __bool__(self) -> bool:
        return bool(self._adapters)

    def validate(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` (arguments bound to parameter names, as passed) with each annotated
        one validated and coerced. Raises ParameterTypeError for the first that fails."""
        validated = dict(given)
        for name, value in given.items():
            adapter = self._adapters.get(name)
            if adapter is None:
                continue
            kind = self._kinds[name]
            if kind is inspect.Parameter.VAR_POSITIONAL:
                validated[name] = tuple(self._one(adapter, name, item) for item in value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                validated[name] = {key: self._one(adapter, f"{name}[{key!r}]", item) for key, item in value.items()}
            else:
                validated[name] = self._one(adapter, name, value)
        return validated

    def coerce_text(self, name: str, text: str) -> Any:
        """A command-line value for parameter ``name``: read as JSON for the parameter's
        type when that fits (``3`` for an int, ``[1, 2]`` for a list), else validated
        as the string itself (``"2024-01-01"`` for a date, ``"3"`` for a str). An
        unannotated parameter gets the JSON value, or the string when it is not JSON."""
        adapter = self._adapters.get(name)
        kind = self._kinds.get(name)
        if adapter is None or kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            import json

            try:
                return json.loads(text)
            except ValueError:
                return text
        try:
            return adapter.validate_json(text)
        except pydantic.ValidationError:
            return self._one(adapter, name, text)

    def _one(self, adapter: pydantic.TypeAdapter[Any], name: str, value: Any) -> Any:
        try:
            validated = adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            expected = self._expected[name.split("[", 1)[0]]
            raise ParameterTypeError(
                f"flow {self.flow_name!r}: parameter {name!r} expects {expected}, got "
                f"{_shown(value)} ({type(value).__name__}): {_reason(exc)}; pass a value of "
                f"that type, or turn checking off with @flow(validate_parameters=False)"
            ) from None
        # A container that already fits comes back as an equal copy: pass the caller's
        # own object on, so that a flow may still fill a list it was given.
        if validated is not value and type(validated) is type(value) and type(value) in _CONTAINERS:
            try:
                if validated == value:
                    return value
            except Exception:  # an element whose == does not give a bool
                pass
        return validated


def type_name(hint: Any) -> str:
    """How a type hint is shown in messages: ``int``, ``list[int]``, ``Path | None``."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__qualname__
    return repr(hint).replace("typing.", "")


def _adapter(hint: Any) -> pydantic.TypeAdapter[Any] | None:
    """The validator of ``hint``, or None when pydantic cannot build one (a
    ``typing.TypedDict`` before Python 3.12, a dataclass with a field of a type it
    does not know): that parameter is passed unchecked, as for a hint that cannot be
    resolved."""
    try:
        return pydantic.TypeAdapter(hint, config=_ARBITRARY)
    except pydantic.PydanticUserError:
        pass  # a model, dataclass or TypedDict carries its own config: it takes none here
    try:
        return pydantic.TypeAdapter(hint)
    except pydantic.PydanticUserError:  # schema generation errors included
        return None


def _type_hints(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """The parameters' type hints, string annotations resolved in the function's
    module; a hint that cannot be resolved (a name imported only for type checkers)
    is left out: that parameter is not validated."""
    target = inspect.unwrap(fn)
    try:
        return typing.get_type_hints(target)
    except Exception:
        pass
    namespace = dict(vars(sys.modules[target.__module__])) if target.__module__ in sys.modules else {}
    namespace.update(getattr(target, "__globals__", {}))
    hints: dict[str, Any] = {}
    for name, parameter in signature.parameters.items():
        annotation = parameter.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)
            except Exception:
                continue
        hints[name] = annotation
    return hints


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _reason(exc: pydantic.ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = []
    for error in errors[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


_lock = threading.Lock()
_validators: weakref.WeakKeyDictionary[Any, ParameterValidator] = weakref.WeakKeyDictionary()


def validator_for(flow: Any) -> ParameterValidator:
    """The validator of ``flow`` (a Flow), built on first use and kept while it lives."""
    found = _validators.get(flow)
    if found is None:
        with _lock:
            found = _validators.get(flow)
            if found is None:
                found = _validators[flow] = ParameterValidator(flow.name, flow.fn, flow.signature)
    return found


__all__ = ["ParameterValidator", "type_name", "validator_for"]
