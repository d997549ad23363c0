"""Encodings of records, standard-library value types and subclasses of builtins.

Every encoding here starts with the class identity (module and qualified name)
followed by a state that fully describes the value: the fields of a dataclass or
attrs class, ``model_dump()`` of a pydantic model, the value of an enum member,
the components of a datetime (time zone included), and so on. Handlers are built
per class by :mod:`flowcore.caching._resolve`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import fractions
import pathlib
import types
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from flowcore.caching import _primitives as p
from flowcore.caching._encoder import Encoder, Handler
from flowcore.caching._primitives import Unhashable, describe_key, qualified_name


def write_type(enc: Encoder, cls: type) -> None:
    """The identity of a class: module and qualified name."""
    enc.update(p.TYPE)
    enc.write_str(getattr(cls, "__module__", None) or "")
    enc.write_str(getattr(cls, "__qualname__", None) or cls.__name__)


def encode_type(enc: Encoder, cls: type) -> None:
    write_type(enc, cls)


def encode_module(enc: Encoder, module: types.ModuleType) -> None:
    enc.update(p.MODULE)
    enc.write_str(module.__name__)


def _encode_part(enc: Encoder, value: object, step: str) -> None:
    try:
        enc.encode(value)
    except Unhashable as exc:
        exc.path.append(step)
        raise


_UNSET = object()


def record_handler(tag: bytes, names: Sequence[str]) -> Handler:
    """Class identity, then ``(name, value)`` of each named attribute, in order."""
    names = tuple(names)

    def encode_record(enc: Encoder, obj: Any) -> None:
        if not enc.open(obj):
            return
        enc.update(tag)
        write_type(enc, type(obj))
        enc.write_len(p.TUPLE, len(names))
        for name in names:
            enc.write_str(name)
            value = getattr(obj, name, _UNSET)
            if value is _UNSET:
                enc.update(p.EMPTY_CELL)
            else:
                _encode_part(enc, value, f".{name}")
        enc.close(obj)

    return encode_record


def state_handler(tag: bytes, state: Callable[[Any], object], step: str) -> Handler:
    """Class identity, then the encoding of ``state(obj)`` (a model dump, a reducer)."""

    def encode_state(enc: Encoder, obj: Any) -> None:
        if not enc.open(obj):
            return
        try:
            value = state(obj)
        except Unhashable:
            raise
        except Exception as exc:
            raise Unhashable(
                qualified_name(type(obj)), f"{step} raised {type(exc).__name__}: {exc}"
            ) from exc
        enc.update(tag)
        write_type(enc, type(obj))
        _encode_part(enc, value, f".<{step}>")
        enc.close(obj)

    return encode_state


def flowcore_hash_state(obj: Any) -> bytes | str:
    """The result of ``obj.__flowcore_hash__()``, checked to be bytes or str."""
    value = obj.__flowcore_hash__()
    if not isinstance(value, (bytes, str)):
        raise Unhashable(
            qualified_name(type(obj)),
            f"__flowcore_hash__ returned {type(value).__name__}; it must return bytes or str",
        )
    return value


def encode_enum(enc: Encoder, member: Any) -> None:
    enc.update(p.ENUM)
    write_type(enc, type(member))
    _encode_part(enc, member.value, ".value")


def encode_ordered_dict(enc: Encoder, obj: OrderedDict[Any, Any]) -> None:
    """Insertion order is part of an OrderedDict's value (its ``==`` compares it)."""
    if not enc.open(obj):
        return
    enc.update(p.ORDERED_DICT)
    write_type(enc, type(obj))
    enc.write_len(p.TUPLE, len(obj))
    for key, value in obj.items():
        _encode_part(enc, key, f"<key {describe_key(key)[1:-1]}>")
        _encode_part(enc, value, describe_key(key))
    enc.close(obj)


def builtin_subclass_handler(base: type) -> Handler:
    """A subclass of a builtin type without extra state: class identity + base value."""

    def encode_subclass(enc: Encoder, obj: Any) -> None:
        if not enc.open(obj):
            return
        extra = getattr(obj, "__dict__", None)
        if extra:
            raise Unhashable(
                qualified_name(type(obj)),
                f"it is a {base.__name__} with instance attributes "
                f"({', '.join(sorted(map(str, extra)))}) that flowcore does not hash implicitly",
            )
        enc.update(p.SUBCLASS)
        write_type(enc, type(obj))
        enc.encode(base(obj))
        if isinstance(obj, defaultdict):
            _encode_part(enc, obj.default_factory, ".default_factory")
        enc.close(obj)

    return encode_subclass


def _pack_ints(enc: Encoder, *values: int) -> None:
    for value in values:
        enc.update(p.pack_i64(value))


def encode_tzinfo(enc: Encoder, tz: dt.tzinfo | None) -> None:
    """A time zone by its identity: fixed offset and name, zone key, or a stable repr."""
    if tz is None:
        enc.update(p.NONE)
        return
    enc.update(p.TZINFO)
    write_type(enc, type(tz))
    if isinstance(tz, dt.timezone):
        offset = tz.utcoffset(None)
        enc.encode((offset.days, offset.seconds, offset.microseconds, tz.tzname(None)))
        return
    key = getattr(tz, "key", None) or getattr(tz, "zone", None)  # zoneinfo, pytz
    if isinstance(key, str):
        enc.write_str(key)
        return
    text = repr(tz)
    if " at 0x" in text:
        raise Unhashable(
            qualified_name(type(tz)), "the time zone has no key and its repr is not stable"
        )
    enc.write_str(text)


def encode_datetime(enc: Encoder, value: dt.datetime) -> None:
    enc.update(p.DATETIME)
    write_type(enc, type(value))
    _pack_ints(
        enc,
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        value.fold,
    )
    encode_tzinfo(enc, value.tzinfo)


def encode_date(enc: Encoder, value: dt.date) -> None:
    enc.update(p.DATE)
    write_type(enc, type(value))
    _pack_ints(enc, value.year, value.month, value.day)


def encode_time(enc: Encoder, value: dt.time) -> None:
    enc.update(p.TIME)
    write_type(enc, type(value))
    _pack_ints(enc, value.hour, value.minute, value.second, value.microsecond, value.fold)
    encode_tzinfo(enc, value.tzinfo)


def encode_timedelta(enc: Encoder, value: dt.timedelta) -> None:
    enc.update(p.TIMEDELTA)
    write_type(enc, type(value))
    _pack_ints(enc, value.days, value.seconds, value.microseconds)


def encode_path(enc: Encoder, path: pathlib.PurePath) -> None:
    enc.update(p.PATH)
    write_type(enc, type(path))
    enc.write_str(str(path))


def encode_uuid(enc: Encoder, value: uuid.UUID) -> None:
    enc.update(p.UUID)
    write_type(enc, type(value))
    enc.update(value.bytes)


def encode_decimal(enc: Encoder, value: decimal.Decimal) -> None:
    # str() is exact and keeps the representation: Decimal("1.0") and Decimal("1.00") differ.
    enc.update(p.DECIMAL)
    write_type(enc, type(value))
    enc.write_str(str(value))


def encode_fraction(enc: Encoder, value: fractions.Fraction) -> None:
    enc.update(p.FRACTION)
    write_type(enc, type(value))
    enc.encode(value.numerator)
    enc.encode(value.denominator)


def encode_range(enc: Encoder, value: range) -> None:
    enc.update(p.RANGE)
    enc.encode(value.start)
    enc.encode(value.stop)
    enc.encode(value.step)


def encode_slice(enc: Encoder, value: slice) -> None:
    enc.update(p.SLICE)
    _encode_part(enc, value.start, ".start")
    _encode_part(enc, value.stop, ".stop")
    _encode_part(enc, value.step, ".step")


#: Standard value types, checked with issubclass in this order (datetime before date).
VALUE_TYPES: tuple[tuple[type, Handler], ...] = (
    (dt.datetime, encode_datetime),
    (dt.date, encode_date),
    (dt.time, encode_time),
    (dt.timedelta, encode_timedelta),
    (dt.tzinfo, encode_tzinfo),
    (pathlib.PurePath, encode_path),
    (uuid.UUID, encode_uuid),
    (decimal.Decimal, encode_decimal),
    (fractions.Fraction, encode_fraction),
    (range, encode_range),
    (slice, encode_slice),
    (types.ModuleType, encode_module),
    (type, encode_type),
)

#: Builtin bases whose subclasses are encoded as class identity + base value.
BUILTIN_BASES: tuple[type, ...] = (
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    list,
    tuple,
    dict,
    set,
    frozenset,
)
