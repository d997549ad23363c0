"""Content hashes of Python values: canonical, type-tagged, stable across processes.

:func:`content_hash` feeds a canonical encoding of a value to xxhash's XXH3-128,
incrementally (large buffers are passed to the hasher without copying), and
returns 32 hex digits. The hash depends only on the value, never on ``id()``,
``hash()`` or ``PYTHONHASHSEED``: the same value hashes the same in every process
and interpreter run of one Python version (code objects are part of some values and
differ between Python versions).

What is equal and what differs
------------------------------
* Every value carries its type: ``1``, ``1.0``, ``True``, ``"1"`` and ``b"1"`` differ,
  a list differs from a tuple, ``bytes`` from ``bytearray``.
* Dicts and sets are unordered: equal dicts (sets) hash equal whatever their order.
  ``OrderedDict`` keeps its order, as its ``==`` does.
* Floats are hashed by their IEEE-754 bits: ``0.0`` and ``-0.0`` differ (some
  functions tell them apart: a miss is safer than a wrong hit), and a NaN hashes
  equal to a NaN with the same bits (``float("nan")`` always does), like numpy
  arrays, which are hashed from their bytes.
* Containers may contain themselves: a container met again on its own path is
  encoded as a back-reference to it, so ``x = [1]; x.append(x)`` hashes
  deterministically. Shared but acyclic references are encoded at each place.
* numpy arrays: class, dtype, shape and data in logical C order, so a Fortran-order
  or strided copy of the same values hashes equal; dtype and shape are part of the
  value. pandas objects: see :mod:`flowcore.caching._pandas`.
* Functions: module, qualified name, code, defaults and closure values (see
  :mod:`flowcore.caching._callables`); classes by module and qualified name.
* Records: dataclasses (fields), attrs classes (``__attrs_attrs__``), pydantic models
  (``model_dump()`` / v1 ``dict()``), enums (class + value), and standard value types
  (datetime family with time zone, paths, UUID, Decimal, Fraction, range, slice).

What cannot be hashed
---------------------
A plain instance of a user class is NOT hashed through its ``__dict__``: its
behaviour may depend on state that is not there (slots, C state, class attributes,
the resource a handle points to), and a wrong cache hit is worse than an error.
Such objects, and everything else without a deterministic encoding (locks,
generators, open files, sockets), raise :class:`~flowcore.errors.CacheKeyError`,
naming the path of the offending value inside the structure and the ways out:

* define ``__flowcore_hash__(self) -> bytes | str`` on the class (the class identity
  is hashed with it);
* :func:`register_type` a reducer for a class you do not own;
* make it a dataclass, an attrs class or a pydantic model;
* or, at the task level, pass a ``cache_key_fn`` or leave the argument out of the
  cache policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import xxhash

from flowcore.caching import _primitives as p
from flowcore.caching._encoder import FAST, Encoder, encode_plain, write_str_items
from flowcore.caching._primitives import Unhashable
from flowcore.caching._resolve import register, resolve, unregister
from flowcore.errors import CacheKeyError

_SEED = p.ENCODING_VERSION
_fast_get = FAST.get


def content_hash(obj: object, *, path: str = "value") -> str:
    """The content hash of ``obj``: 32 lowercase hex digits (XXH3-128).

    ``path`` names ``obj`` in error messages (``"argument 'x'"``, ``"result"``).
    Raises :class:`~flowcore.errors.CacheKeyError` (a ``TypeError``) if ``obj`` or
    anything inside it has no deterministic encoding; the message gives the path to
    it (``value[2]['k']``), its type, and what to do. Never raises anything else for
    an unhashable value; an exception raised by a user's ``__flowcore_hash__`` or
    reducer is reported as a ``CacheKeyError`` chained to it.
    """
    hasher = xxhash.xxh3_128(seed=_SEED)
    if encode_plain(obj, hasher.update):
        return hasher.hexdigest()
    hasher.reset()
    enc = Encoder(hasher.update)
    try:
        handler = _fast_get(type(obj))
        if handler is None:
            handler = resolve(type(obj))
        handler(enc, obj)
    except Unhashable as exc:
        raise CacheKeyError(_message(path, exc)) from exc.__cause__
    except RecursionError:
        raise CacheKeyError(_too_deep(path)) from None
    return hasher.hexdigest()


def hash_value(obj: object, *, path: str, advice: str) -> str:
    """:func:`content_hash`, with ``advice`` instead of the advice for arguments in the
    message of the :class:`~flowcore.errors.CacheKeyError` it raises (for values that
    are not arguments, such as closure cells)."""
    try:
        return content_hash(obj, path=path)
    except CacheKeyError as exc:
        message = str(exc)
        if message.endswith(_ADVICE):
            message = message[: -len(_ADVICE)] + advice
        raise CacheKeyError(message) from exc.__cause__


def hash_arguments(arguments: Mapping[str, object]) -> str:
    """The content hash of a task's bound arguments, by name.

    Equal to ``content_hash(dict(arguments))``; an error names the argument
    (``argument 'x'[2]: cannot hash ...``). Argument names must be strings.
    """
    if any(type(name) is not str for name in arguments):
        raise TypeError("argument names must be str")
    hasher = xxhash.xxh3_128(seed=_SEED)
    if encode_plain(arguments if type(arguments) is dict else dict(arguments), hasher.update):
        return hasher.hexdigest()
    hasher.reset()
    enc = Encoder(hasher.update)
    names = sorted(arguments)
    try:
        write_str_items(enc, names, [arguments[name] for name in names])
    except Unhashable as exc:
        exc.path.pop()  # the "['x']" step, named as an argument instead
        where = f"argument {names[exc.index]!r}"
        raise CacheKeyError(_message(where, exc)) from exc.__cause__
    except RecursionError:
        raise CacheKeyError(_too_deep("arguments")) from None
    return hasher.hexdigest()


def register_type(cls: type, reducer: Callable[[Any], object]) -> None:
    """Hash instances of ``cls`` (and its subclasses) by ``reducer(obj)``.

    For classes you cannot give a ``__flowcore_hash__`` method. ``reducer`` returns
    any hashable value that fully describes the object (a tuple of its fields, its
    bytes); the class identity is hashed with it. A later registration replaces an
    earlier one; registrations take precedence over every built-in encoding except
    those of exact builtin types (int, str, list, dict, ...).
    """
    register(cls, reducer)


def unregister_type(cls: type) -> None:
    """Remove the reducer registered for ``cls`` (nothing happens if there is none)."""
    unregister(cls)


_ADVICE = (
    "To cache this task anyway, pass a cache_key_fn, leave this argument out of the "
    "cache policy, or give the type a __flowcore_hash__(self) -> bytes | str method "
    "(for a class you do not own: flowcore.caching.register_type)"
)


def _message(path: str, exc: Unhashable) -> str:
    where = path + "".join(reversed(exc.path))
    return f"{where}: cannot hash object of type {exc.type_name}: {exc.reason}. {_ADVICE}"


def _too_deep(path: str) -> str:
    return f"{path}: the value is nested too deeply to hash (Python's recursion limit). " + _ADVICE


__all__ = ["content_hash", "hash_arguments", "register_type", "unregister_type"]
