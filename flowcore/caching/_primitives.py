"""The byte-level vocabulary of the canonical encoding: type tags, packers, errors.

Every encoded value starts with a one-byte tag that names its kind, so values of
different kinds can never produce the same byte stream (``1``, ``1.0``, ``True``,
``"1"`` and ``b"1"`` all differ). Variable-length payloads are preceded by their
length as an unsigned 64-bit little-endian integer, which makes the encoding
prefix-free: the stream of a structure can be split back into its values.

Tags are bytes of length one and must be unique; ``tests/test_caching_hashing.py``
checks that. Changing any tag or layout changes every hash: bump
``ENCODING_VERSION`` when you do.
"""

from __future__ import annotations

import struct
from typing import Final

#: Part of every hash; bump it when the encoding of any value changes.
ENCODING_VERSION: Final = 1

pack_u64 = struct.Struct("<Q").pack
pack_2u64 = struct.Struct("<QQ").pack
pack_i64 = struct.Struct("<q").pack
pack_f64 = struct.Struct("<d").pack
pack_c128 = struct.Struct("<dd").pack

# -- tags ------------------------------------------------------------------------
# Scalars
NONE: Final = b"N"
TRUE: Final = b"T"
FALSE: Final = b"F"
INT: Final = b"i"  # fits in 64 bits: 8 bytes, two's complement
BIG_INT: Final = b"I"  # length + two's complement bytes
FLOAT: Final = b"f"  # IEEE-754 bits: -0.0 != 0.0, NaNs compared by their bits
COMPLEX: Final = b"c"
STR: Final = b"s"
BYTES: Final = b"b"
BYTEARRAY: Final = b"y"
ELLIPSIS: Final = b"."
NOT_IMPLEMENTED: Final = b"_"
# Containers
LIST: Final = b"l"
TUPLE: Final = b"t"
STR_DICT: Final = b"d"  # every key an exact str without NUL: sorted keys joined, values
STR_DICT_LONG: Final = b"J"  # every key an exact str, some with NUL: keys with lengths
DICT: Final = b"D"  # any other keys: sorted digests of the items
ORDERED_DICT: Final = b"o"  # collections.OrderedDict: insertion order matters
SET: Final = b"S"
FROZENSET: Final = b"Z"
BACKREF: Final = b"^"  # a container already open higher up the current path
# Buffers
MEMORYVIEW: Final = b"m"
BUFFER: Final = b"B"  # any other object exporting the buffer protocol
NDARRAY: Final = b"A"
NDARRAY_OBJECTS: Final = b"O"  # object-dtype array, element by element
NUMPY_SCALAR: Final = b"g"
NUMPY_DTYPE: Final = b"e"
# pandas
PANDAS_INDEX: Final = b"x"
PANDAS_SERIES: Final = b"r"
PANDAS_FRAME: Final = b"R"
PANDAS_SCALAR: Final = b"p"
# Records and other library or standard types
INSTANCE: Final = b"$"  # class identity + a state that fully describes the object
SUBCLASS: Final = b"<"  # subclass of a builtin type: class identity + base value
CUSTOM: Final = b"!"  # __flowcore_hash__ or a registered reducer
ENUM: Final = b"E"
DATACLASS: Final = b"K"
ATTRS: Final = b"a"
PYDANTIC: Final = b"P"
TYPE: Final = b"C"  # a class, by module and qualified name
MODULE: Final = b"M"
FUNCTION: Final = b"L"
BUILTIN_FUNCTION: Final = b"u"
METHOD: Final = b"h"
DESCRIPTOR: Final = b"j"
METHOD_WRAPPER: Final = b"W"
PARTIAL: Final = b"q"
CODE: Final = b"k"
EMPTY_CELL: Final = b"0"
DATETIME: Final = b"w"
DATE: Final = b"v"
TIME: Final = b"z"
TIMEDELTA: Final = b"Q"
TZINFO: Final = b"Y"
PATH: Final = b"/"
UUID: Final = b"U"
DECIMAL: Final = b"n"
FRACTION: Final = b"%"
RANGE: Final = b"G"
SLICE: Final = b":"

ALL_TAGS: Final = tuple(
    value
    for name, value in sorted(globals().items())
    if name.isupper() and isinstance(value, bytes) and len(value) == 1
)


class Unhashable(Exception):
    """Raised inside the encoder; turned into ``CacheKeyError`` with the full path.

    ``path`` collects the steps (``[2]``, ``['k']``, ``.field``) innermost first
    while the exception unwinds through the containers that hold the value.
    """

    def __init__(self, type_name: str, reason: str) -> None:
        super().__init__(type_name, reason)
        self.type_name = type_name
        self.reason = reason
        self.path: list[str] = []
        #: set by sequence encoders: position of the failing item in the sequence
        self.index = -1


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class (``builtins.`` omitted)."""
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", "?")
    if not module or module == "builtins":
        return str(qualname)
    return f"{module}.{qualname}"


def describe_key(key: object) -> str:
    """A short ``[...]`` path step for a mapping key (long reprs are cut)."""
    text = repr(key)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"[{text}]"
