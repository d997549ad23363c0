"""Encodings of pandas objects, built only when the program has imported pandas.

``pandas.util.hash_pandas_object`` is not used: it hashes object columns through
their ``str()`` (so ``1`` and ``"1"`` collide) and yields 64-bit hashes per row.
Instead every column is encoded like any other value:

* Series: class, name, index, dtype (``str(dtype)``) and values;
* DataFrame: class, columns (an Index), index, then each column's dtype and values
  by position (duplicate column names are fine);
* Index: class, name(s) and values; a RangeIndex by start/stop/step; a MultiIndex
  by names, levels and codes;
* values backed by numpy are hashed from their buffer (zero-copy); categoricals as
  codes + categories + orderedness; tz-aware datetimes as UTC nanoseconds (the zone
  is in the dtype); other extension arrays element by element as objects;
* scalars: Timestamp (nanoseconds, unit, zone), Timedelta, Period, Interval, NaT, NA.

``DataFrame.attrs`` and ``flags`` are not part of the value.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from flowcore.caching import _primitives as p
from flowcore.caching._encoder import Encoder, Handler
from flowcore.caching._objects import encode_tzinfo, write_type
from flowcore.caching._primitives import Unhashable, qualified_name


def pandas_handler(cls: type, pd: ModuleType) -> Handler:
    """The handler for a pandas type; raises Unhashable for types without an encoding."""
    np = sys.modules["numpy"]  # pandas imports numpy
    if issubclass(cls, pd.DataFrame):
        return _frame_handler(np, pd)
    if issubclass(cls, pd.Series):
        return _series_handler(np, pd)
    if issubclass(cls, pd.Index):
        return _index_handler(np, pd)
    if issubclass(cls, pd.api.extensions.ExtensionArray):
        return _extension_array_handler(np, pd)
    if issubclass(cls, pd.Timestamp):
        return _encode_timestamp
    if issubclass(cls, pd.Timedelta):
        return _encode_timedelta
    if issubclass(cls, pd.Period):
        return _encode_period
    if issubclass(cls, pd.Interval):
        return _encode_interval
    if cls is type(pd.NaT) or cls is type(pd.NA):
        return _encode_singleton
    raise Unhashable(qualified_name(cls), "flowcore has no encoding for this pandas type")


def write_values(enc: Encoder, values: Any, np: ModuleType, pd: ModuleType) -> None:
    """The dtype and values of an Index, a Series or a column."""
    dtype = values.dtype
    enc.write_str(str(dtype))
    if isinstance(dtype, np.dtype):
        enc.encode(np.asarray(values))
    elif isinstance(dtype, pd.CategoricalDtype):
        categorical = pd.Categorical(values)
        enc.encode(bool(dtype.ordered))
        _encode_index(enc, categorical.categories, np, pd)
        enc.encode(np.asarray(categorical.codes))
    elif isinstance(dtype, pd.DatetimeTZDtype):
        enc.encode(np.asarray(pd.DatetimeIndex(values).asi8))
    else:
        enc.encode(np.asarray(values, dtype=object))


def _encode_index(enc: Encoder, index: Any, np: ModuleType, pd: ModuleType) -> None:
    enc.update(p.PANDAS_INDEX)
    write_type(enc, type(index))
    enc.encode(list(index.names))
    if isinstance(index, pd.RangeIndex):
        enc.encode(range(index.start, index.stop, index.step))
    elif isinstance(index, pd.MultiIndex):
        enc.write_len(p.TUPLE, index.nlevels)
        for level, codes in zip(index.levels, index.codes, strict=True):
            _encode_index(enc, level, np, pd)
            enc.encode(np.asarray(codes))
    else:
        write_values(enc, index, np, pd)


def _index_handler(np: ModuleType, pd: ModuleType) -> Handler:
    def encode_index(enc: Encoder, index: Any) -> None:
        _encode_index(enc, index, np, pd)

    return encode_index


def _series_handler(np: ModuleType, pd: ModuleType) -> Handler:
    def encode_series(enc: Encoder, series: Any) -> None:
        enc.update(p.PANDAS_SERIES)
        write_type(enc, type(series))
        _encode_labelled(enc, series.name, ".name")
        _encode_index(enc, series.index, np, pd)
        _encode_column(enc, series, ".values", np, pd)

    return encode_series


def _frame_handler(np: ModuleType, pd: ModuleType) -> Handler:
    def encode_frame(enc: Encoder, frame: Any) -> None:
        enc.update(p.PANDAS_FRAME)
        write_type(enc, type(frame))
        _encode_index(enc, frame.columns, np, pd)
        _encode_index(enc, frame.index, np, pd)
        enc.write_len(p.TUPLE, frame.shape[1])
        for position in range(frame.shape[1]):
            column = frame.iloc[:, position]
            _encode_column(enc, column, f"[{frame.columns[position]!r}]", np, pd)

    return encode_frame


def _encode_column(enc: Encoder, series: Any, step: str, np: ModuleType, pd: ModuleType) -> None:
    try:
        write_values(enc, series.array, np, pd)
    except Unhashable as exc:
        exc.path.append(step)
        raise


def _encode_labelled(enc: Encoder, value: object, step: str) -> None:
    try:
        enc.encode(value)
    except Unhashable as exc:
        exc.path.append(step)
        raise


def _extension_array_handler(np: ModuleType, pd: ModuleType) -> Handler:
    def encode_extension_array(enc: Encoder, values: Any) -> None:
        enc.update(p.INSTANCE)
        write_type(enc, type(values))
        write_values(enc, values, np, pd)

    return encode_extension_array


def _encode_timestamp(enc: Encoder, value: Any) -> None:
    enc.update(p.PANDAS_SCALAR)
    write_type(enc, type(value))
    enc.encode(int(value.value))
    enc.write_str(str(getattr(value, "unit", "ns")))
    encode_tzinfo(enc, value.tzinfo)


def _encode_timedelta(enc: Encoder, value: Any) -> None:
    enc.update(p.PANDAS_SCALAR)
    write_type(enc, type(value))
    enc.encode(int(value.value))
    enc.write_str(str(getattr(value, "unit", "ns")))


def _encode_period(enc: Encoder, value: Any) -> None:
    enc.update(p.PANDAS_SCALAR)
    write_type(enc, type(value))
    enc.encode(int(value.ordinal))
    enc.write_str(str(value.freqstr))


def _encode_interval(enc: Encoder, value: Any) -> None:
    enc.update(p.PANDAS_SCALAR)
    write_type(enc, type(value))
    _encode_labelled(enc, value.left, ".left")
    _encode_labelled(enc, value.right, ".right")
    enc.write_str(str(value.closed))


def _encode_singleton(enc: Encoder, value: Any) -> None:
    enc.update(p.PANDAS_SCALAR)
    write_type(enc, type(value))
