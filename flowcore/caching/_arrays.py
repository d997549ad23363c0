"""Encodings of numpy arrays, numpy scalars and dtypes, and other buffer exporters.

An array is its class, dtype (``dtype.str``, plus ``descr`` for structured and
sub-array dtypes), shape, and its bytes in logical C order. A C-contiguous array is
fed to the hasher straight from its buffer (zero-copy); any other layout (Fortran
order, ``arr[::2]``, ``arr.T``) is copied to C order in chunks of at most
``CHUNK_BYTES``, so equal values hash equal whatever the memory layout and a large
strided view never needs a full copy. Object-dtype arrays are encoded element by
element. Padding bytes of aligned structured dtypes are hashed as they are in memory.

numpy is never imported here: callers pass the module found in ``sys.modules``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from flowcore.caching import _primitives as p
from flowcore.caching._encoder import Encoder, Handler, write_buffer
from flowcore.caching._objects import write_type
from flowcore.caching._primitives import Unhashable, qualified_name

#: Largest temporary copy made while hashing a non-contiguous array.
CHUNK_BYTES = 1 << 24

#: ndarray subclasses whose value is fully described by their data.
_PLAIN_SUBCLASSES = ("numpy.memmap", "numpy.matrix", "numpy.recarray", "numpy.rec.recarray")


def write_dtype(enc: Encoder, dtype: Any) -> None:
    enc.update(p.NUMPY_DTYPE)
    enc.write_str(dtype.str)
    if dtype.fields is not None or dtype.subdtype is not None:
        enc.encode(dtype.descr)
    else:
        enc.update(p.NONE)


def feed_c_order(update: Callable[[Any], None], arr: Any, np: ModuleType) -> None:
    """Feed the bytes of ``arr`` in logical C order, copying at most CHUNK_BYTES at once."""
    if arr.nbytes == 0:
        return
    if arr.flags.c_contiguous:
        update(arr.reshape(-1).view(np.uint8))
    elif arr.nbytes <= CHUNK_BYTES:
        update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
    else:
        rows = arr.shape[0]
        row_bytes = arr.nbytes // rows
        if row_bytes >= CHUNK_BYTES:
            for index in range(rows):
                feed_c_order(update, arr[index], np)
        else:
            step = CHUNK_BYTES // row_bytes
            for start in range(0, rows, step):
                chunk = np.ascontiguousarray(arr[start : start + step])
                update(chunk.reshape(-1).view(np.uint8))


def ndarray_handler(np: ModuleType) -> Handler:
    """Handler of numpy.ndarray and its data-only subclasses."""

    def encode_ndarray(enc: Encoder, arr: Any) -> None:
        dtype = arr.dtype
        if dtype.hasobject:
            _encode_object_array(enc, arr, np)
            return
        enc.update(p.NDARRAY)
        write_type(enc, type(arr))
        write_dtype(enc, dtype)
        enc.encode(arr.shape)
        feed_c_order(enc.update, arr, np)

    return encode_ndarray


def _encode_object_array(enc: Encoder, arr: Any, np: ModuleType) -> None:
    if not enc.open(arr):  # an object array can hold itself
        return
    enc.update(p.NDARRAY_OBJECTS)
    write_type(enc, type(arr))
    write_dtype(enc, arr.dtype)
    enc.encode(arr.shape)
    flat = arr.ravel(order="C")
    for index in range(flat.shape[0]):
        item = flat[index]
        try:
            enc.encode(item)
        except Unhashable as exc:
            position = np.unravel_index(index, arr.shape) if arr.ndim > 1 else (index,)
            exc.path.append("[" + ", ".join(str(int(i)) for i in position) + "]")
            raise
    enc.close(arr)


def masked_array_handler(np: ModuleType) -> Handler:
    """numpy.ma.MaskedArray: data and full mask."""
    plain = ndarray_handler(np)

    def encode_masked(enc: Encoder, arr: Any) -> None:
        enc.update(p.INSTANCE)
        write_type(enc, type(arr))
        plain(enc, np.ma.getdata(arr))
        plain(enc, np.ma.getmaskarray(arr))

    return encode_masked


def encode_numpy_scalar(enc: Encoder, value: Any) -> None:
    enc.update(p.NUMPY_SCALAR)
    write_dtype(enc, value.dtype)
    enc.write_bytes(p.BYTES, value.tobytes())


def encode_dtype(enc: Encoder, dtype: Any) -> None:
    write_dtype(enc, dtype)


def numpy_handler(cls: type, np: ModuleType) -> Handler | None:
    """The handler for a numpy type, None if ``cls`` is not one; raises for unknown subclasses."""
    if issubclass(cls, np.ndarray):
        if cls is np.ndarray or qualified_name(cls) in _PLAIN_SUBCLASSES:
            return ndarray_handler(np)
        if issubclass(cls, np.ma.MaskedArray):
            return masked_array_handler(np)
        raise Unhashable(
            qualified_name(cls),
            "it is a numpy.ndarray subclass that may carry state besides its data",
        )
    if issubclass(cls, np.generic):
        if issubclass(cls, np.object_):
            return None
        return encode_numpy_scalar
    if issubclass(cls, np.dtype):
        return encode_dtype
    return None


def encode_buffer(enc: Encoder, obj: Any) -> None:
    """Any other buffer exporter (array.array, mmap, ctypes): class, format, shape, bytes."""
    with memoryview(obj) as view:
        enc.update(p.BUFFER)
        write_type(enc, type(obj))
        write_buffer(enc, p.MEMORYVIEW, view)
