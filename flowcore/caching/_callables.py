"""Encodings of functions, methods, partials and code objects.

A function is identified by what it does, never by its ``id``: its module and
qualified name, the digest of its code object, its default values and the values
captured by its closure (two closures of one factory with different captured
values differ). Globals a function reads are not part of its encoding; the code
fingerprint of :mod:`flowcore.caching.fingerprint` covers those.

A code object's digest covers its bytecode, constants (nested code objects
recursively), names, argument layout and flags; it is stable across interpreter
runs of one Python version, and cached per code object.
"""

from __future__ import annotations

import functools
import types
import weakref
from typing import Any

import xxhash

from flowcore.caching import _primitives as p
from flowcore.caching._encoder import Encoder, Handler
from flowcore.caching._primitives import Unhashable

_code_digests: weakref.WeakKeyDictionary[types.CodeType, bytes] = weakref.WeakKeyDictionary()


def code_digest(code: types.CodeType) -> bytes:
    """16-byte digest of a code object's behaviour (not its file or line numbers)."""
    cached = _code_digests.get(code)
    if cached is not None:
        return cached
    hasher = xxhash.xxh3_128()
    enc = Encoder(hasher.update)
    enc.update(p.CODE)
    enc.write_str(code.co_name)
    enc.write_bytes(p.BYTES, code.co_code)
    enc.encode((code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags))
    enc.encode((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars))
    enc.write_len(p.TUPLE, len(code.co_consts))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            enc.update(p.CODE + code_digest(const))
        else:
            enc.encode(const)
    digest = hasher.digest()
    _code_digests[code] = digest
    return digest


def encode_code(enc: Encoder, code: types.CodeType) -> None:
    enc.update(p.CODE + code_digest(code))


def _encode_part(enc: Encoder, value: object, step: str) -> None:
    try:
        enc.encode(value)
    except Unhashable as exc:
        exc.path.append(step)
        raise


def encode_function(enc: Encoder, fn: types.FunctionType) -> None:
    """Module, qualified name, code, defaults and closure values of a Python function."""
    if not enc.open(fn):  # a recursive inner function holds itself in its closure
        return
    enc.update(p.FUNCTION)
    enc.write_str(fn.__module__ or "")
    enc.write_str(fn.__qualname__)
    enc.update(code_digest(fn.__code__))
    _encode_part(enc, fn.__defaults__, ".__defaults__")
    _encode_part(enc, fn.__kwdefaults__, ".__kwdefaults__")
    cells = fn.__closure__ or ()
    enc.write_len(p.TUPLE, len(cells))
    for name, cell in zip(fn.__code__.co_freevars, cells, strict=True):
        try:
            value = cell.cell_contents
        except ValueError:  # a cell not filled yet
            enc.update(p.EMPTY_CELL)
            continue
        _encode_part(enc, value, f".<closure {name!r}>")
    enc.close(fn)


def encode_builtin_function(enc: Encoder, fn: types.BuiltinFunctionType) -> None:
    """A C function or bound C method: its name, and its owner unless that is a module."""
    enc.update(p.BUILTIN_FUNCTION)
    enc.write_str(getattr(fn, "__module__", None) or "")
    enc.write_str(getattr(fn, "__qualname__", fn.__name__))
    owner = getattr(fn, "__self__", None)
    if owner is None or isinstance(owner, types.ModuleType):
        enc.update(p.NONE)
    else:
        _encode_part(enc, owner, ".__self__")


def encode_method(enc: Encoder, method: types.MethodType) -> None:
    """A bound method: its function and the object it is bound to."""
    enc.update(p.METHOD)
    _encode_part(enc, method.__func__, ".__func__")
    _encode_part(enc, method.__self__, ".__self__")


def encode_descriptor(enc: Encoder, descriptor: Any) -> None:
    """An unbound C method or slot (``str.upper``, ``object.__init__``)."""
    enc.update(p.DESCRIPTOR)
    enc.encode(descriptor.__objclass__)
    enc.write_str(descriptor.__name__)


def encode_method_wrapper(enc: Encoder, wrapper: Any) -> None:
    """A bound slot wrapper (``(1).__add__``): its object and name."""
    enc.update(p.METHOD_WRAPPER)
    _encode_part(enc, wrapper.__self__, ".__self__")
    enc.write_str(wrapper.__name__)


def encode_partial(enc: Encoder, partial: functools.partial[Any]) -> None:
    """``functools.partial``: function, positional and keyword arguments."""
    enc.update(p.PARTIAL)
    _encode_part(enc, partial.func, ".func")
    _encode_part(enc, partial.args, ".args")
    _encode_part(enc, partial.keywords, ".keywords")


HANDLERS: dict[type, Handler] = {
    types.FunctionType: encode_function,
    types.BuiltinFunctionType: encode_builtin_function,
    types.MethodType: encode_method,
    types.MethodDescriptorType: encode_descriptor,
    types.WrapperDescriptorType: encode_descriptor,
    types.ClassMethodDescriptorType: encode_descriptor,
    types.MethodWrapperType: encode_method_wrapper,
    types.CodeType: encode_code,
    functools.partial: encode_partial,
}
"""Handlers by exact type."""
