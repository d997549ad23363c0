"""Which encoding a (non-builtin) type gets; decided once per type and remembered.

Resolution order, first match wins:

1. a reducer registered with :func:`flowcore.caching.register_type` (the class or a base);
2. ``__flowcore_hash__`` defined by the class;
3. enums, dataclasses, attrs classes, pydantic models;
4. numpy and pandas types (only when those modules are already imported);
5. functions, methods, partials, code objects;
6. standard value types (datetime family, paths, UUID, Decimal, Fraction, range,
   slice, modules, classes), OrderedDict, and subclasses of builtin types;
7. any other object exporting the buffer protocol (checked per object).

Anything else is unhashable: the handler raises, and the caller learns where.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import sys
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from flowcore.caching import _arrays, _callables, _objects
from flowcore.caching import _primitives as p
from flowcore.caching._encoder import Encoder, Handler
from flowcore.caching._primitives import Unhashable, qualified_name

_resolved: weakref.WeakKeyDictionary[type, Handler] = weakref.WeakKeyDictionary()
_registered: dict[type, Callable[[Any], object]] = {}
_lock = threading.Lock()


def register(cls: type, reducer: Callable[[Any], object]) -> None:
    """Hash instances of ``cls`` (and subclasses) as class identity + ``reducer(obj)``."""
    with _lock:
        _registered[cls] = reducer
        _resolved.clear()


def unregister(cls: type) -> None:
    """Undo :func:`register` for ``cls`` (no error if it was not registered)."""
    with _lock:
        _registered.pop(cls, None)
        _resolved.clear()


def resolve(cls: type) -> Handler:
    """The handler for instances of ``cls`` (one that raises if there is none)."""
    handler = _resolved.get(cls)
    if handler is None:
        try:
            handler = _find(cls)
        except Unhashable as exc:
            handler = _raiser(exc.type_name, exc.reason)
        # A class that cannot be weakly referenced is resolved every time.
        with contextlib.suppress(TypeError):
            _resolved[cls] = handler
    return handler


_NO_ENCODING = "flowcore knows no deterministic encoding for it"
_NO_IMPLICIT_STATE = (
    "flowcore knows no deterministic encoding for it and does not hash an object's "
    "__dict__ implicitly (its behaviour may depend on state that is not there)"
)


def _raiser(type_name: str, reason: str) -> Handler:
    def unhashable(enc: Encoder, obj: Any) -> None:
        raise Unhashable(type_name, reason)

    return unhashable


def _find(cls: type) -> Handler:
    for base in cls.__mro__:
        reducer = _registered.get(base)
        if reducer is not None:
            return _objects.state_handler(p.CUSTOM, reducer, "registered reducer")
    if callable(getattr(cls, "__flowcore_hash__", None)):
        return _objects.state_handler(p.CUSTOM, _objects.flowcore_hash_state, "__flowcore_hash__")
    if issubclass(cls, enum.Enum):
        return _objects.encode_enum
    handler = _record_handler(cls)
    if handler is not None:
        return handler
    handler = _library_handler(cls)
    if handler is not None:
        return handler
    handler = _callables.HANDLERS.get(cls)
    if handler is not None:
        return handler
    for value_type, value_handler in _objects.VALUE_TYPES:
        if issubclass(cls, value_type):
            return value_handler
    if issubclass(cls, OrderedDict):
        return _objects.encode_ordered_dict
    if issubclass(cls, deque):
        return _objects.state_handler(p.INSTANCE, _deque_state, "deque")
    for base in _objects.BUILTIN_BASES:
        if issubclass(cls, base):
            if _declares_slots(cls):
                raise Unhashable(
                    qualified_name(cls),
                    f"it is a {base.__name__} subclass with __slots__ that flowcore does not "
                    "hash implicitly",
                )
            return _objects.builtin_subclass_handler(base)
    return _buffer_or_nothing


def _record_handler(cls: type) -> Handler | None:
    """Dataclasses, attrs classes and pydantic models (detected without importing them)."""
    if dataclasses.is_dataclass(cls):
        names = [field.name for field in dataclasses.fields(cls)]
        return _objects.record_handler(p.DATACLASS, names)
    attributes = getattr(cls, "__attrs_attrs__", None)
    if attributes is not None:
        return _objects.record_handler(p.ATTRS, [attribute.name for attribute in attributes])
    if any(base.__module__.split(".")[0] == "pydantic" for base in cls.__mro__[1:]):
        if callable(getattr(cls, "model_dump", None)):
            return _objects.state_handler(p.PYDANTIC, _model_dump, "model_dump()")
        if callable(getattr(cls, "dict", None)):
            return _objects.state_handler(p.PYDANTIC, _model_dict, "dict()")
    return None


def _library_handler(cls: type) -> Handler | None:
    """numpy and pandas types, looked up only if the program imported those libraries."""
    np = sys.modules.get("numpy")
    if np is not None:
        handler = _arrays.numpy_handler(cls, np)
        if handler is not None:
            return handler
    pd = sys.modules.get("pandas")
    if pd is not None and cls.__module__.split(".")[0] == "pandas":
        from flowcore.caching import _pandas

        return _pandas.pandas_handler(cls, pd)
    return None


def _model_dump(model: Any) -> object:
    return model.model_dump()


def _model_dict(model: Any) -> object:
    return model.dict()


def _deque_state(queue: deque[Any]) -> object:
    return (list(queue), queue.maxlen)


def _declares_slots(cls: type) -> bool:
    for klass in cls.__mro__:
        if klass.__module__ == "builtins":
            continue
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str) or len(slots) > 0:
            return True
    return False


def _buffer_or_nothing(enc: Encoder, obj: Any) -> None:
    """Last resort: an object exporting the buffer protocol is hashed from its bytes."""
    try:
        view = memoryview(obj)
    except TypeError:
        reason = _NO_IMPLICIT_STATE if hasattr(obj, "__dict__") else _NO_ENCODING
        raise Unhashable(qualified_name(type(obj)), reason) from None
    view.release()
    _arrays.encode_buffer(enc, obj)
