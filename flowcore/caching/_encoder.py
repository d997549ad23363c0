"""The canonical, streaming encoder and the handlers of the builtin types.

An :class:`Encoder` walks a value and feeds a canonical, type-tagged byte stream to
a hash function's ``update``; nothing is ever joined into one big bytes object.
Exact builtin types are dispatched through one dict lookup (``FAST``); every other
type is resolved once by :func:`flowcore.caching._resolve.resolve` and remembered.

Order-free containers (sets, dicts with non-string keys) are encoded as the sorted
digests of their elements, each hashed on its own; dicts whose keys are all exact
``str`` are encoded as their items sorted by key, which is canonical too and needs
no extra hashers. ``PYTHONHASHSEED`` never matters: ``hash()`` is not used.

Cycles: mutable containers, records and functions are registered on the current
path while they are encoded; meeting one again writes a back-reference (how many
levels up it is open) instead of recursing, so a self-containing list hashes
deterministically.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from typing import Any

import xxhash

from flowcore.caching import _primitives as p
from flowcore.caching._primitives import (
    Unhashable,
    describe_key,
    pack_2u64,
    pack_f64,
    pack_i64,
    pack_u64,
)

Handler = Callable[["Encoder", Any], None]

# Tags as module globals: the hot loops read them without an attribute lookup.
_STR, _INT, _FLOAT, _NONE, _TRUE, _FALSE = p.STR, p.INT, p.FLOAT, p.NONE, p.TRUE, p.FALSE
_LIST, _TUPLE, _STR_DICT, _STR_DICT_LONG = p.LIST, p.TUPLE, p.STR_DICT, p.STR_DICT_LONG


class Encoder:
    """Feeds the canonical encoding of values to ``update`` (a hasher's method).

    One encoder serves one top-level value; it is not thread-safe. Handlers of
    other types use :meth:`encode`, :meth:`digest`, :meth:`open` / :meth:`close`
    and the raw writers.
    """

    __slots__ = ("_active", "update")

    def __init__(self, update: Callable[[Any], None]) -> None:
        self.update = update
        #: id of each container open on the current path -> its depth
        self._active: dict[int, int] = {}

    def encode(self, obj: object) -> None:
        """Write the encoding of ``obj``; raise :class:`Unhashable` if it has none."""
        handler = _fast_get(type(obj))
        if handler is None:
            handler = _resolve(type(obj))
        handler(self, obj)

    def digest(self, obj: object) -> bytes:
        """The 16-byte digest of ``obj`` encoded on its own (same open path)."""
        saved = self.update
        hasher = xxhash.xxh3_128()
        self.update = hasher.update
        try:
            self.encode(obj)
        finally:
            self.update = saved
        return hasher.digest()

    def open(self, obj: object) -> bool:
        """Mark ``obj`` open on the current path; False if it already was.

        When False, a back-reference has been written in place of ``obj`` and the
        caller must not encode it again. When True, call :meth:`close` after it.
        """
        active = self._active
        key = id(obj)
        position = active.get(key)
        if position is not None:
            self.update(p.BACKREF + pack_u64(len(active) - position))
            return False
        active[key] = len(active)
        return True

    def close(self, obj: object) -> None:
        """End what :meth:`open` started."""
        del self._active[id(obj)]

    def write_bytes(self, tag: bytes, data: bytes | bytearray | memoryview) -> None:
        """``tag``, the length of ``data`` in bytes, then ``data`` itself (not copied)."""
        self.update(tag + pack_u64(memoryview(data).nbytes))
        self.update(data)

    def write_str(self, text: str) -> None:
        """A string, tagged as one (UTF-8, lone surrogates kept)."""
        data = text.encode("utf-8", "surrogatepass")
        self.update(p.STR + pack_u64(len(data)))
        self.update(data)

    def write_len(self, tag: bytes, length: int) -> None:
        """A tag and a count (the number of items that follow)."""
        self.update(tag + pack_u64(length))


# -- scalars ---------------------------------------------------------------------------


def _none(enc: Encoder, obj: None) -> None:
    enc.update(p.NONE)


def _bool(enc: Encoder, obj: bool) -> None:
    enc.update(p.TRUE if obj else p.FALSE)


def _int(enc: Encoder, obj: int) -> None:
    try:
        enc.update(p.INT + pack_i64(obj))
    except struct.error:
        data = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
        enc.write_bytes(p.BIG_INT, data)


def _float(enc: Encoder, obj: float) -> None:
    enc.update(p.FLOAT + pack_f64(obj))


def _complex(enc: Encoder, obj: complex) -> None:
    enc.update(p.COMPLEX + pack_f64(obj.real) + pack_f64(obj.imag))


def _str(enc: Encoder, obj: str) -> None:
    data = obj.encode("utf-8", "surrogatepass")
    enc.update(p.STR + pack_u64(len(data)))
    enc.update(data)


def _bytes(enc: Encoder, obj: bytes) -> None:
    enc.update(p.BYTES + pack_u64(len(obj)))
    enc.update(obj)


def _bytearray(enc: Encoder, obj: bytearray) -> None:
    enc.update(p.BYTEARRAY + pack_u64(len(obj)))
    enc.update(obj)


def _memoryview(enc: Encoder, obj: memoryview) -> None:
    write_buffer(enc, p.MEMORYVIEW, obj)


def write_buffer(enc: Encoder, tag: bytes, view: memoryview) -> None:
    """A buffer: format, item size, shape, then its bytes in C order (zero-copy if it can)."""
    try:
        fmt, itemsize, shape = view.format, view.itemsize, view.shape
        data: memoryview | bytes = view.cast("B") if view.c_contiguous else view.tobytes()
    except (ValueError, TypeError, NotImplementedError) as exc:  # released, exotic format
        raise Unhashable(
            p.qualified_name(type(view)), f"its buffer cannot be read ({exc})"
        ) from None
    enc.update(tag)
    enc.write_str(fmt)
    enc.write_len(p.INT, itemsize)
    enc.write_len(p.TUPLE, len(shape or ()))
    for extent in shape or ():
        enc.update(pack_u64(extent))
    enc.write_bytes(p.BYTES, data)


def _constant(tag: bytes) -> Handler:
    def write(enc: Encoder, obj: object) -> None:
        enc.update(tag)

    return write


# -- containers ------------------------------------------------------------------------


def _encode_items(enc: Encoder, items: Any) -> None:
    """Encode each item in turn; on failure, ``exc.index`` says which one failed.

    The common scalar types are written inline: this loop is the hot path of hashing
    argument lists and records.
    """
    update = enc.update
    get = _fast_get
    item: object = None
    try:
        for item in items:
            kind = type(item)
            if kind is str:
                data = item.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
                update(_STR + pack_u64(len(data)) + data)
            elif kind is int:
                try:
                    update(_INT + pack_i64(item))
                except struct.error:
                    _int(enc, item)  # type: ignore[arg-type]
            elif kind is float:
                update(_FLOAT + pack_f64(item))
            elif item is None:
                update(_NONE)
            elif kind is bool:
                update(_TRUE if item else _FALSE)
            else:
                handler = get(kind)
                if handler is None:
                    handler = _resolve(kind)
                handler(enc, item)
    except Unhashable as exc:
        exc.index = _index_of(items, item)
        raise


def _index_of(items: Any, item: object) -> int:
    """Position of ``item`` (by identity) in ``items``: the first one is the one that failed."""
    for index, candidate in enumerate(items):
        if candidate is item:
            return index
    return -1


def _list(enc: Encoder, obj: list[Any]) -> None:
    active = enc._active
    ident = id(obj)
    if ident in active:
        enc.update(p.BACKREF + pack_u64(len(active) - active[ident]))
        return
    active[ident] = len(active)
    enc.update(_LIST + pack_u64(len(obj)))
    try:
        _encode_items(enc, obj)
    except Unhashable as exc:
        exc.path.append(f"[{exc.index}]")
        raise
    del active[ident]


def _tuple(enc: Encoder, obj: tuple[Any, ...]) -> None:
    # A tuple can only be part of a cycle through a mutable container, which is tracked.
    enc.update(_TUPLE + pack_u64(len(obj)))
    try:
        _encode_items(enc, obj)
    except Unhashable as exc:
        exc.path.append(f"[{exc.index}]")
        raise


def _dict(enc: Encoder, obj: dict[Any, Any]) -> None:
    active = enc._active
    ident = id(obj)
    if ident in active:
        enc.update(p.BACKREF + pack_u64(len(active) - active[ident]))
        return
    active[ident] = len(active)
    for key in obj:
        if type(key) is not str:
            write_mapping(enc, p.DICT, obj)
            break
    else:
        keys = sorted(obj)
        values = _itemgetter(*keys)(obj) if len(keys) > 1 else [obj[key] for key in keys]
        write_str_items(enc, keys, values)
    del active[ident]


def write_str_items(enc: Encoder, keys: list[str], values: Any) -> None:
    """A dict whose keys are all exact str, given as sorted keys and matching values."""
    enc.update(str_keys_block(keys))
    try:
        _encode_items(enc, values)
    except Unhashable as exc:
        exc.path.append(describe_key(keys[exc.index]))
        raise


def str_keys_block(keys: list[str]) -> bytes:
    """Tag, count and all the sorted str keys of a dict, as one block.

    Code-point order of str equals the byte order of their UTF-8, so sorted keys are
    canonical. When no key contains NUL (the usual case), the keys are written as one
    NUL-joined UTF-8 text, which splits back into the keys unambiguously; otherwise
    each key is written with its length (another tag).
    """
    joined = "\0".join(keys)
    if joined.count("\0") == len(keys) - 1 or not keys:
        text = joined.encode("utf-8", "surrogatepass")
        return _STR_DICT + pack_2u64(len(keys), len(text)) + text
    parts = [_STR_DICT_LONG, pack_u64(len(keys))]
    for key in keys:
        data = key.encode("utf-8", "surrogatepass")
        parts.append(pack_u64(len(data)))
        parts.append(data)
    return b"".join(parts)


def write_mapping(enc: Encoder, tag: bytes, obj: Any) -> None:
    """Any mapping: the sorted digests of its (key, value) items."""
    digests = []
    for key, value in obj.items():
        try:
            key_digest = enc.digest(key)
        except Unhashable as exc:
            exc.path.append(f"<key {describe_key(key)[1:-1]}>")
            raise
        try:
            digests.append(key_digest + enc.digest(value))
        except Unhashable as exc:
            exc.path.append(describe_key(key))
            raise
    digests.sort()
    enc.update(tag + pack_u64(len(digests)) + b"".join(digests))


def write_unordered(enc: Encoder, tag: bytes, items: Any) -> None:
    """A set-like collection: the sorted digests of its elements."""
    digests = []
    for item in items:
        try:
            digests.append(enc.digest(item))
        except Unhashable as exc:
            exc.path.append(f"<element {describe_key(item)[1:-1]}>")
            raise
    digests.sort()
    enc.update(tag + pack_u64(len(digests)) + b"".join(digests))


def _set(enc: Encoder, obj: set[Any]) -> None:
    if enc.open(obj):
        write_unordered(enc, p.SET, obj)
        enc.close(obj)


def _frozenset(enc: Encoder, obj: frozenset[Any]) -> None:
    write_unordered(enc, p.FROZENSET, obj)


# -- fast path for plain data -----------------------------------------------------------

#: Deeper plain data (or a cycle) is left to the Encoder, which tracks cycles.
MAX_PLAIN_DEPTH = 64


def encode_plain(obj: Any, update: Callable[[Any], None], depth: int = 0) -> bool:
    """Write ``obj`` if it is plain data; return False (stream unusable) if it is not.

    Plain data: exact list, tuple and str-keyed dict, nested at most MAX_PLAIN_DEPTH
    deep, of exact str, int (64-bit), float, None, bool. The bytes written are exactly
    those the Encoder writes for the same value (tests check it), without the
    Encoder's bookkeeping: no cycle tracking (depth bounds it), no error paths (the
    caller redoes the work with an Encoder, which reports them).
    """
    kind = type(obj)
    if kind is dict:
        for key in obj:
            if type(key) is not str:
                return False
        keys = sorted(obj)
        update(str_keys_block(keys))
        if len(keys) > 1:
            return _plain_items(_itemgetter(*keys)(obj), update, depth)
        return _plain_items([obj[key] for key in keys], update, depth)
    if kind is list:
        update(_LIST + pack_u64(len(obj)))
        return _plain_items(obj, update, depth)
    if kind is tuple:
        update(_TUPLE + pack_u64(len(obj)))
        return _plain_items(obj, update, depth)
    return _plain_items((obj,), update, depth)


def _plain_items(items: Any, update: Callable[[Any], None], depth: int) -> bool:
    for item in items:
        kind = type(item)
        if kind is str:
            data = item.encode("utf-8", "surrogatepass")
            update(_STR + pack_u64(len(data)) + data)
        elif kind is int:
            try:
                update(_INT + pack_i64(item))
            except struct.error:
                return False
        elif kind is float:
            update(_FLOAT + pack_f64(item))
        elif item is None:
            update(_NONE)
        elif kind is bool:
            update(_TRUE if item else _FALSE)
        elif kind is list or kind is tuple or kind is dict:
            if depth >= MAX_PLAIN_DEPTH or not encode_plain(item, update, depth + 1):
                return False
        else:
            return False
    return True


FAST: dict[type, Handler] = {
    type(None): _none,
    bool: _bool,
    int: _int,
    float: _float,
    complex: _complex,
    str: _str,
    bytes: _bytes,
    bytearray: _bytearray,
    memoryview: _memoryview,
    list: _list,
    tuple: _tuple,
    dict: _dict,
    set: _set,
    frozenset: _frozenset,
    type(Ellipsis): _constant(p.ELLIPSIS),
    type(NotImplemented): _constant(p.NOT_IMPLEMENTED),
}
"""Handlers of exact builtin types; subclasses go through the resolver."""

_fast_get = FAST.get
_itemgetter = operator.itemgetter


def _load_resolver(cls: type) -> Handler:
    """Replace itself by the real resolver on first use (its modules import this one)."""
    global _resolve
    from flowcore.caching._resolve import resolve

    _resolve = resolve
    return resolve(cls)


_resolve: Callable[[type], Handler] = _load_resolver
