"""Content hashes: canonical, type-tagged, stable across processes, honest about failure."""

from __future__ import annotations

import array
import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import functools
import io
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import threading
import types
import uuid
import zoneinfo
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowcore.caching import _primitives as primitives
from flowcore.caching import content_hash, hash_arguments, register_type, unregister_type
from flowcore.caching._encoder import Encoder
from flowcore.errors import CacheError, CacheKeyError

# -- strategies ------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text()
    | st.binary()
    | st.complex_numbers(allow_nan=False)
)
hashable_values = st.recursive(
    scalars, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=4), max_leaves=8
)
values = st.recursive(
    scalars | st.text(alphabet="ab\x00é\ud800", max_size=3),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
        | st.dictionaries(hashable_values, inner, max_size=3)
        | st.frozensets(hashable_values, max_size=4)
        | st.sets(hashable_values, max_size=4)
    ),
    max_leaves=16,
)


def encoder_hash(obj: object) -> str:
    """The hash computed by the general Encoder only (no plain-data fast path)."""
    import xxhash

    hasher = xxhash.xxh3_128(seed=primitives.ENCODING_VERSION)
    Encoder(hasher.update).encode(obj)
    return hasher.hexdigest()


# -- type tags and canonical forms -------------------------------------------------------


def test_tags_are_unique() -> None:
    assert len(primitives.ALL_TAGS) == len(set(primitives.ALL_TAGS))
    assert all(len(tag) == 1 for tag in primitives.ALL_TAGS)


def test_result_is_32_hex_digits() -> None:
    digest = content_hash({"a": [1, 2.5, "x"]})
    assert len(digest) == 32
    assert int(digest, 16) >= 0


def test_values_of_different_types_differ() -> None:
    one_like = [1, 1.0, True, "1", b"1", bytearray(b"1"), memoryview(b"1"), 1 + 0j, [1], (1,)]
    digests = {content_hash(value) for value in one_like}
    assert len(digests) == len(one_like)
    assert content_hash(0) != content_hash(False) != content_hash(None)


def test_list_and_tuple_differ_and_nested_containers_work() -> None:
    assert content_hash([1, 2]) != content_hash((1, 2))
    assert content_hash([[1], [2]]) != content_hash([[1, 2]])
    assert content_hash({"a": {"b": [1, (2, 3)]}}) == content_hash({"a": {"b": [1, (2, 3)]}})
    assert content_hash({1: "x"}) != content_hash({"1": "x"})


def test_container_boundaries_are_encoded() -> None:
    assert content_hash(["ab", "c"]) != content_hash(["a", "bc"])
    assert content_hash({"ab": 1, "c": 2}) != content_hash({"a": 1, "bc": 2})
    assert content_hash({"a\x00b": 1}) != content_hash({"a": 1, "b": 1})


def test_dict_and_set_order_does_not_matter() -> None:
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})
    assert content_hash({1: "a", (2, 3): "b"}) == content_hash({(2, 3): "b", 1: "a"})
    assert content_hash({3, 1, 2}) == content_hash({2, 3, 1})
    assert content_hash(frozenset("abc")) == content_hash(frozenset("cba"))
    assert content_hash({1, 2}) != content_hash(frozenset({1, 2}))


def test_ordered_dict_order_matters() -> None:
    first = collections.OrderedDict([("a", 1), ("b", 2)])
    second = collections.OrderedDict([("b", 2), ("a", 1)])
    assert content_hash(first) != content_hash(second)
    assert content_hash(first) != content_hash({"a": 1, "b": 2})


def test_big_ints_and_float_bits() -> None:
    assert content_hash(2**64) != content_hash(2**64 + 1)
    assert content_hash(-(2**200)) != content_hash(2**200)
    assert content_hash(2**63 - 1) != content_hash(2**63)
    # Floats are hashed by their bits: -0.0 differs from 0.0, a NaN equals itself.
    assert content_hash(0.0) != content_hash(-0.0)
    assert content_hash(float("nan")) == content_hash(float("nan"))
    assert content_hash([float("inf")]) != content_hash([float("-inf")])


def test_strings_with_surrogates_and_unicode() -> None:
    assert content_hash("\ud800") != content_hash("\udc00")
    assert content_hash("é") != content_hash("e\u0301")
    assert content_hash({"\ud800": 1}) == content_hash({"\ud800": 1})


def test_self_containing_containers_hash_deterministically() -> None:
    first: list[Any] = [1]
    first.append(first)
    second: list[Any] = [1]
    second.append(second)
    assert content_hash(first) == content_hash(second)
    other: list[Any] = [2]
    other.append(other)
    assert content_hash(first) != content_hash(other)
    mapping: dict[str, Any] = {"a": 1}
    mapping["self"] = mapping
    assert content_hash(mapping) == content_hash(mapping)
    deep: list[Any] = []
    node = deep
    for _ in range(100):  # a cycle deeper than the plain-data fast path goes
        child: list[Any] = []
        node.append(child)
        node = child
    node.append(deep)
    assert content_hash(deep) == content_hash(pickle.loads(pickle.dumps(deep)))


def test_shared_references_hash_like_copies() -> None:
    shared = [1, 2]
    assert content_hash([shared, shared]) == content_hash([[1, 2], [1, 2]])


def test_too_deep_nesting_is_a_cache_key_error() -> None:
    value: list[Any] = []
    for _ in range(sys.getrecursionlimit() * 2):
        value = [value]
    with pytest.raises(CacheKeyError, match="nested too deeply"):
        content_hash(value)


@given(values)
@settings(max_examples=300, deadline=None)
def test_fast_path_writes_what_the_encoder_writes(value: Any) -> None:
    assert content_hash(value) == encoder_hash(value)


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(), max_size=8), st.randoms())
@settings(max_examples=200, deadline=None)
def test_permuted_dicts_hash_equal(mapping: dict[str, Any], rng: Any) -> None:
    items = list(mapping.items())
    rng.shuffle(items)
    assert content_hash(dict(items)) == content_hash(mapping)


@given(st.sets(hashable_values, max_size=8), st.randoms())
@settings(max_examples=200, deadline=None)
def test_permuted_sets_hash_equal(elements: set[Any], rng: Any) -> None:
    ordered = list(elements)
    rng.shuffle(ordered)
    assert content_hash(set(ordered)) == content_hash(elements)
    assert content_hash(frozenset(ordered)) == content_hash(frozenset(elements))


@given(st.lists(scalars, min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_list_and_tuple_never_collide(items: list[Any]) -> None:
    assert content_hash(items) != content_hash(tuple(items))


@given(values)
@settings(max_examples=300, deadline=None)
def test_hash_survives_pickle_round_trip(value: Any) -> None:
    assert content_hash(pickle.loads(pickle.dumps(value))) == content_hash(value)


@given(values)
@settings(max_examples=100, deadline=None)
def test_hash_is_stable_within_a_process(value: Any) -> None:
    assert content_hash(value) == content_hash(value)


def test_same_hash_in_a_process_with_another_hash_seed() -> None:
    value = {
        "names": {"alpha", "beta", "gamma", "delta", "épsilon"},
        "frozen": frozenset({"x", "y", ("z", 1)}),
        "nested": {"k": [1, 2.5, None, {"q": b"bytes"}], 3: "int key"},
        "when": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
    }
    code = textwrap.dedent(
        """
        import datetime as dt, sys
        from flowcore.caching import content_hash
        value = {
            "names": {"alpha", "beta", "gamma", "delta", "épsilon"},
            "frozen": frozenset({"x", "y", ("z", 1)}),
            "nested": {"k": [1, 2.5, None, {"q": b"bytes"}], 3: "int key"},
            "when": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc),
        }
        print(content_hash(value))
        """
    )
    digests = set()
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        digests.add(result.stdout.strip())
    assert digests == {content_hash(value)}


# -- records and standard types ---------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: list[int]


@dataclasses.dataclass
class OtherPoint:
    x: int
    y: list[int]


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1


def test_dataclasses_hash_by_class_and_fields() -> None:
    assert content_hash(Point(1, [2])) == content_hash(Point(1, [2]))
    assert content_hash(Point(1, [2])) != content_hash(Point(1, [3]))
    assert content_hash(Point(1, [2])) != content_hash(OtherPoint(1, [2]))


def test_enums_hash_by_class_and_value() -> None:
    assert content_hash(Color.RED) != content_hash(Color.GREEN)
    assert content_hash(Color.RED) != content_hash(1)
    assert content_hash(Level.LOW) != content_hash(1)
    assert content_hash(Color.RED) == content_hash(Color(1))


def test_standard_value_types() -> None:
    utc = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    paris = dt.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    naive = dt.datetime(2024, 1, 1)
    assert len({content_hash(utc), content_hash(paris), content_hash(naive)}) == 3
    assert content_hash(dt.date(2024, 1, 1)) != content_hash(naive)
    assert content_hash(dt.timedelta(days=1)) != content_hash(dt.timedelta(seconds=86399))
    assert content_hash(dt.time(1, 2)) != content_hash(dt.time(1, 2, tzinfo=dt.UTC))
    assert content_hash(pathlib.PurePosixPath("/a/b")) != content_hash("/a/b")
    assert content_hash(pathlib.Path("/a/b")) == content_hash(pathlib.Path("/a") / "b")
    assert content_hash(uuid.UUID(int=1)) != content_hash(uuid.UUID(int=2))
    assert content_hash(decimal.Decimal("1.0")) != content_hash(decimal.Decimal("1.00"))
    assert content_hash(fractions.Fraction(1, 3)) == content_hash(fractions.Fraction(2, 6))
    assert content_hash(range(3)) != content_hash(range(4))
    assert content_hash(slice(1, 2)) != content_hash(slice(1, 3))
    assert content_hash(int) != content_hash(str)
    assert content_hash(Point) != content_hash(OtherPoint)
    assert content_hash(os) == content_hash(sys.modules["os"])
    assert content_hash(...) != content_hash(None)


def test_builtin_subclasses_hash_with_their_class() -> None:
    pair = collections.namedtuple("pair", "a b")
    assert content_hash(pair(1, 2)) != content_hash((1, 2))
    assert content_hash(pair(1, 2)) == content_hash(pair(1, 2))
    assert content_hash(collections.Counter("aab")) != content_hash({"a": 2, "b": 1})
    assert content_hash(collections.defaultdict(list)) != content_hash(collections.defaultdict(int))
    assert content_hash(collections.deque([1, 2])) != content_hash([1, 2])


def test_attrs_and_pydantic_models() -> None:
    attr = pytest.importorskip("attr")
    pydantic = pytest.importorskip("pydantic")

    @attr.s(auto_attribs=True)
    class Box:
        size: int

    class Model(pydantic.BaseModel):
        name: str
        tags: list[str]

    assert content_hash(Box(1)) == content_hash(Box(1))
    assert content_hash(Box(1)) != content_hash(Box(2))
    assert content_hash(Model(name="a", tags=["x"])) == content_hash(Model(name="a", tags=["x"]))
    assert content_hash(Model(name="a", tags=["x"])) != content_hash(Model(name="a", tags=["y"]))
    assert content_hash(Model(name="a", tags=[])) != content_hash({"name": "a", "tags": []})


# -- functions -------------------------------------------------------------------------


def add_one(x: int) -> int:
    return x + 1


def make_adder(n: int) -> Any:
    def adder(x: int) -> int:
        return x + n

    return adder


def test_functions_hash_by_code_not_identity() -> None:
    copy = pickle.loads(pickle.dumps(add_one))  # same function object by reference
    assert content_hash(add_one) == content_hash(copy)
    namespace: dict[str, Any] = {}
    exec("def add_one(x):\n    return x + 1\n", namespace)
    exec("def add_two(x):\n    return x + 2\n", namespace)
    other = namespace["add_one"]
    other.__module__ = add_one.__module__
    other.__qualname__ = add_one.__qualname__
    # Same name, same code: equal, although a different object.
    assert content_hash(other) == content_hash(namespace["add_one"])
    assert content_hash(namespace["add_one"]) != content_hash(namespace["add_two"])


def test_closures_and_defaults_are_part_of_a_function() -> None:
    assert content_hash(make_adder(1)) == content_hash(make_adder(1))
    assert content_hash(make_adder(1)) != content_hash(make_adder(2))
    assert content_hash(lambda x=1: x) != content_hash(lambda x=2: x)


def test_cloudpickled_lambda_hashes_like_the_original() -> None:
    cloudpickle = pytest.importorskip("cloudpickle")
    square = lambda x: x * x  # noqa: E731
    assert content_hash(cloudpickle.loads(cloudpickle.dumps(square))) == content_hash(square)


def test_methods_partials_and_builtins() -> None:
    assert content_hash(functools.partial(add_one, 1)) != content_hash(
        functools.partial(add_one, 2)
    )
    assert content_hash(functools.partial(max, key=len)) == content_hash(
        functools.partial(max, key=len)
    )
    assert content_hash(len) != content_hash(max)
    assert content_hash(str.upper) != content_hash(str.lower)
    assert content_hash([1].append) != content_hash([2].append)
    assert content_hash(Point(1, [2]).__eq__) == content_hash(Point(1, [2]).__eq__)


def test_recursive_inner_function() -> None:
    def outer() -> Any:
        def walk(n: int) -> int:
            return 0 if n == 0 else walk(n - 1)

        return walk

    assert content_hash(outer()) == content_hash(outer())


# -- numpy -----------------------------------------------------------------------------


def test_numpy_layouts_and_dtypes() -> None:
    np = pytest.importorskip("numpy")
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    assert content_hash(base) == content_hash(np.asfortranarray(base))
    assert content_hash(base[::2]) == content_hash(base[::2].copy())
    assert content_hash(base.T) == content_hash(np.ascontiguousarray(base.T))
    assert content_hash(base[:, ::-1]) == content_hash(base[:, ::-1].copy())
    assert content_hash(base) != content_hash(base.T)  # shape is part of the value
    assert content_hash(base) != content_hash(base.reshape(6, 4))
    assert content_hash(base) != content_hash(base.view(np.int64))  # same bytes
    assert content_hash(base) != content_hash(base.astype(">f8"))
    assert content_hash(base) != content_hash(base.tolist())
    assert content_hash(np.float64(1.0)) != content_hash(1.0)
    assert content_hash(np.float64(1.0)) != content_hash(np.float32(1.0))
    assert content_hash(np.dtype("f8")) != content_hash(np.dtype("f4"))


def test_numpy_special_arrays() -> None:
    np = pytest.importorskip("numpy")
    dates = np.arange(3).astype("datetime64[s]")
    assert content_hash(dates) != content_hash(np.arange(3).astype("datetime64[ms]"))
    structured = np.zeros(3, dtype=[("a", "i4"), ("b", "f8")])
    renamed = np.zeros(3, dtype=[("c", "i4"), ("b", "f8")])
    assert content_hash(structured) != content_hash(renamed)
    objects = np.array([1, "a", None], dtype=object)
    assert content_hash(objects) == content_hash(np.array([1, "a", None], dtype=object))
    assert content_hash(objects) != content_hash(np.array([1, "b", None], dtype=object))
    assert content_hash(np.empty((0, 3))) != content_hash(np.empty((3, 0)))
    masked = np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])
    assert content_hash(masked) != content_hash(np.ma.masked_array([1, 2, 3], mask=[0, 0, 0]))


def test_large_non_contiguous_arrays_are_hashed_in_chunks() -> None:
    np = pytest.importorskip("numpy")
    from flowcore.caching import _arrays

    rng = np.random.default_rng(0)
    big = rng.random((3000, 1000))  # 24 MB, larger than one chunk
    assert big.nbytes > _arrays.CHUNK_BYTES
    assert content_hash(big[::2]) == content_hash(np.ascontiguousarray(big[::2]))
    assert content_hash(np.asfortranarray(big)) == content_hash(big)
    wide = rng.random((2, 2_200_000))[:, ::2]  # rows larger than a chunk
    assert content_hash(wide) == content_hash(wide.copy())


def test_buffer_protocol_objects() -> None:
    assert content_hash(array.array("i", [1, 2])) == content_hash(array.array("i", [1, 2]))
    assert content_hash(array.array("i", [1, 2])) != content_hash(array.array("I", [1, 2]))
    assert content_hash(memoryview(b"abcd").cast("B", (2, 2))) != content_hash(memoryview(b"abcd"))


# -- pandas ----------------------------------------------------------------------------


def test_pandas_frames_series_and_indexes() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"], "c": [1.5, None, 2.5]})
    assert content_hash(frame) == content_hash(frame.copy())
    assert content_hash(frame) != content_hash(frame.assign(a=[1, 2, 4]))
    assert content_hash(frame) != content_hash(frame.rename(columns={"a": "A"}))
    assert content_hash(frame) != content_hash(frame.set_index(pd.Index([5, 6, 7])))
    assert content_hash(frame) != content_hash(frame.astype({"a": "int32"}))
    mixed = pd.Series([1, "1"], dtype=object)
    assert content_hash(mixed) != content_hash(pd.Series(["1", 1], dtype=object))
    assert content_hash(frame["a"]) != content_hash(frame["a"].rename("other"))
    cats = pd.Series(pd.Categorical(["u", "v", "u"]))
    assert content_hash(cats) != content_hash(pd.Series(pd.Categorical(["u", "v", "v"])))
    aware = pd.Series(pd.date_range("2024-01-01", periods=3, tz="UTC"))
    assert content_hash(aware) != content_hash(aware.dt.tz_convert("Europe/Paris"))
    nullable = pd.Series([1, None], dtype="Int64")
    assert content_hash(nullable) != content_hash(pd.Series([1, 2], dtype="Int64"))
    multi = pd.MultiIndex.from_tuples([("a", 1), ("b", 2)])
    assert content_hash(multi) != content_hash(pd.MultiIndex.from_tuples([("a", 1), ("b", 3)]))
    assert content_hash(pd.Timestamp("2024-01-01")) != content_hash(pd.Timestamp("2024-01-02"))
    assert content_hash(pd.NaT) != content_hash(pd.NA)


def test_pandas_frame_hash_is_stable_across_processes() -> None:
    pytest.importorskip("pandas")
    code = (
        "import pandas as pd; from flowcore.caching import content_hash; "
        "print(content_hash(pd.DataFrame({'a': [1, 2], 'b': ['x', None]})))"
    )
    results = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("3", "4")
    }
    assert len(results) == 1
    assert len(results.pop()) == 32


# -- what cannot be hashed -------------------------------------------------------------


class Plain:
    def __init__(self) -> None:
        self.value = 1


class WithHash:
    def __init__(self, token: str) -> None:
        self.token = token

    def __flowcore_hash__(self) -> str:
        return self.token


class BadHash:
    def __flowcore_hash__(self) -> int:
        return 1


def test_error_names_the_path_the_type_and_the_ways_out() -> None:
    with pytest.raises(CacheKeyError) as info:
        content_hash({"x": [0, 1, {"k": threading.Lock()}]}, path="argument 'a'")
    message = str(info.value)
    assert message.startswith("argument 'a'['x'][2]['k']: cannot hash object of type _thread.lock")
    for way_out in ("cache_key_fn", "cache policy", "__flowcore_hash__"):
        assert way_out in message
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, CacheError)


def test_plain_objects_are_not_hashed_through_their_dict() -> None:
    with pytest.raises(CacheKeyError, match=r"value\[0\]\.y\[1\]: .*Plain.*__dict__"):
        content_hash([Point(1, [2, Plain()])])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ((x for x in range(3)), "generator"),
        (io.BytesIO(b"x"), "_io.BytesIO"),
        (threading.RLock(), "_thread.RLock"),
        (object(), "object"),
    ],
)
def test_objects_without_encoding_raise(value: object, type_name: str) -> None:
    with pytest.raises(CacheKeyError, match=f"of type {type_name}"):
        content_hash({"v": value})


def test_unhashable_set_element_and_dict_key_are_named() -> None:
    with pytest.raises(CacheKeyError, match=r"value\[0\]<element"):
        content_hash([{WithHash("a"), object()}])
    with pytest.raises(CacheKeyError, match=r"value<key"):
        content_hash({object(): 1})


def test_hash_arguments_names_the_argument() -> None:
    arguments = {"x": 1, "y": [1, {"k": threading.Lock()}]}
    with pytest.raises(CacheKeyError, match=r"^argument 'y'\[1\]\['k'\]: cannot hash"):
        hash_arguments(arguments)
    assert hash_arguments({"a": 1, "b": [2]}) == content_hash({"b": [2], "a": 1})
    proxy = types.MappingProxyType({"a": 1, "b": Point(1, [2])})
    assert hash_arguments(proxy) == content_hash({"a": 1, "b": Point(1, [2])})
    with pytest.raises(TypeError, match="argument names must be str"):
        hash_arguments({1: "x"})  # type: ignore[dict-item]


def test_flowcore_hash_protocol() -> None:
    assert content_hash(WithHash("a")) == content_hash(WithHash("a"))
    assert content_hash(WithHash("a")) != content_hash(WithHash("b"))
    assert content_hash(WithHash("a")) != content_hash("a")
    with pytest.raises(CacheKeyError, match="must return bytes or str"):
        content_hash(BadHash())


def test_register_type_for_a_class_you_do_not_own() -> None:
    with pytest.raises(CacheKeyError):
        content_hash(Plain())
    register_type(Plain, lambda obj: obj.value)
    try:
        first, second = Plain(), Plain()
        second.value = 2
        assert content_hash(first) != content_hash(second)
        assert content_hash(first) == content_hash(Plain())
    finally:
        unregister_type(Plain)
    with pytest.raises(CacheKeyError):
        content_hash(Plain())


def test_reducer_errors_are_cache_key_errors() -> None:
    def broken(obj: object) -> object:
        raise RuntimeError("boom")

    register_type(Plain, broken)
    try:
        with pytest.raises(CacheKeyError, match="registered reducer raised RuntimeError: boom"):
            content_hash({"p": Plain()})
    finally:
        unregister_type(Plain)


def test_import_flowcore_does_not_import_caching() -> None:
    code = "import sys, flowcore; print('flowcore.caching' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_hashing_does_not_import_numpy_or_pandas() -> None:
    code = (
        "import sys, datetime; from flowcore.caching import content_hash; "
        "content_hash([object.__new__(type('T', (), {'__flowcore_hash__': lambda s: 'x'})), "
        "datetime.date(2020, 1, 1), {1, 2}]); "
        "print(sorted(m for m in ('numpy', 'pandas') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# -- code fingerprints -----------------------------------------------------------------

MODULE_SOURCE = """
import json

LIMIT = 10


def helper(x):
    return x + 1


def unrelated(x):
    return x * 3


class Scaler:
    def scale(self, x):
        return deeper(x) * 2


def deeper(x):
    return x - 1


def task_body(x):
    return helper(x) + Scaler().scale(x) + LIMIT + len(json.dumps(x))
"""


def _fingerprint_in_subprocess(directory: pathlib.Path, seed: str = "0") -> str:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import usermod; "
        "from flowcore.caching import function_fingerprint; "
        "print(function_fingerprint(usermod.task_body))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    return result.stdout.strip()


def test_fingerprint_follows_user_code_across_runs(tmp_path: pathlib.Path) -> None:
    module = tmp_path / "usermod.py"
    module.write_text(MODULE_SOURCE)
    original = _fingerprint_in_subprocess(tmp_path)
    assert len(original) == 32
    assert _fingerprint_in_subprocess(tmp_path, seed="99") == original  # nothing edited

    module.write_text(MODULE_SOURCE.replace("return x * 3", "return x * 4"))
    assert _fingerprint_in_subprocess(tmp_path) == original  # a function it does not use

    module.write_text(MODULE_SOURCE.replace("return x + 1", "return x + 2"))
    assert _fingerprint_in_subprocess(tmp_path) != original  # a helper it calls

    module.write_text(MODULE_SOURCE.replace("return x - 1", "return x - 2"))
    assert _fingerprint_in_subprocess(tmp_path) != original  # two levels down, via a class

    module.write_text(MODULE_SOURCE.replace("LIMIT = 10", "LIMIT = 11"))
    assert _fingerprint_in_subprocess(tmp_path) != original  # a constant it reads


def test_fingerprint_follows_helpers_in_another_user_module(tmp_path: pathlib.Path) -> None:
    (tmp_path / "helpers.py").write_text("def compute(x):\n    return x + 1\n")
    (tmp_path / "usermod.py").write_text(
        "import helpers\n\n\ndef task_body(x):\n    return helpers.compute(x)\n"
    )
    original = _fingerprint_in_subprocess(tmp_path)
    (tmp_path / "helpers.py").write_text("def compute(x):\n    return x + 100\n")
    assert _fingerprint_in_subprocess(tmp_path) != original


def test_fingerprint_skips_library_code_and_is_cached() -> None:
    from flowcore.caching import fingerprint

    assert not fingerprint.is_user_module(json_module())
    assert not fingerprint.is_user_module(sys.modules["flowcore.caching.hashing"])
    assert fingerprint.is_user_module(sys.modules[__name__])
    first = fingerprint.function_fingerprint(add_one)
    assert fingerprint.function_fingerprint(add_one) == first
    assert fingerprint._fingerprints[add_one][0] == first
    assert fingerprint.function_fingerprint(functools.partial(add_one, 1)) == first
    assert fingerprint.function_fingerprint(make_adder) != first
    assert len(fingerprint.function_fingerprint(len)) == 32


def make_defaulted(k: int) -> Any:
    def scaled(x: int, k: int = k) -> int:
        return x * k

    return scaled


def test_fingerprint_of_functions_sharing_code_differs_by_their_defaults() -> None:
    from flowcore.caching import fingerprint

    two, three = make_defaulted(2), make_defaulted(3)
    assert fingerprint.function_fingerprint(two) != fingerprint.function_fingerprint(three)
    again = make_defaulted(2)
    assert fingerprint.function_fingerprint(again) == fingerprint.function_fingerprint(two)


def make_stepper() -> tuple[Any, Any]:
    step = 1

    def stepped(x: int) -> int:
        return x + step

    def bump() -> None:
        nonlocal step
        step += 1

    return stepped, bump


def test_fingerprint_follows_closure_values_that_change() -> None:
    from flowcore.caching import fingerprint

    stepped, bump = make_stepper()
    first = fingerprint.function_fingerprint(stepped)
    assert fingerprint.function_fingerprint(stepped) == first
    assert stepped in fingerprint._fingerprints  # constant cells: cached while they stay
    bump()
    assert fingerprint.function_fingerprint(stepped) != first

    values = [1]
    summed = make_summer(values)
    before = fingerprint.function_fingerprint(summed)
    values.append(2)  # changed in place: never cached
    assert fingerprint.function_fingerprint(summed) != before
    values.pop()
    assert fingerprint.function_fingerprint(summed) == before


def make_countdown() -> Any:
    def countdown(n: int) -> int:
        return 0 if n == 0 else countdown(n - 1)  # holds itself in its closure

    return countdown


def test_the_fingerprint_cache_does_not_keep_functions_alive() -> None:
    import gc
    import weakref

    from flowcore.caching import fingerprint

    countdown = make_countdown()
    fingerprint.function_fingerprint(countdown)
    assert countdown in fingerprint._fingerprints
    alive = weakref.ref(countdown)
    del countdown
    gc.collect()
    assert alive() is None


def make_summer(values: list[int]) -> Any:
    def summed(x: int) -> int:
        return x + sum(values)

    return summed


def json_module() -> Any:
    import json

    return json
