"""Tasks: direct calls, submit/map and their context rules, run names, options and states."""

from __future__ import annotations

import dataclasses
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import flowcore
from flowcore import flow, get_run_context, task, unmapped
from flowcore import states as st
from flowcore.caching import INPUTS
from flowcore.errors import (
    CancelledError,
    CrashedError,
    MissingContextError,
    RemoteTraceback,
    TaskTimeoutError,
    UpstreamFailedError,
)
from flowcore.states import State
from flowcore.tasks import Task

# -- module-level tasks (picklable by reference) --------------------------------------


@task
def double(x: int) -> int:
    return x * 2


@task
def combine(a: Any, b: Any) -> tuple[Any, Any]:
    return (a, b)


@task(name="renamed-add")
def add(x: int, y: int) -> int:
    return x + y


def _plain_triple(x: int) -> int:
    return x * 3


triple = task(_plain_triple, name="triple")  # found under its task name, not the function's


@task
def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


@task
def slow_touch(path: str, seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    Path(path).write_text("ran")
    return path


class Boom(Exception):
    """A task's own exception type."""


@task
def explode(message: str) -> None:
    raise Boom(message)


# -- direct calls -------------------------------------------------------------------


def test_direct_call_outside_a_flow_returns_the_value() -> None:
    assert double(21) == 42
    assert add(1, y=2) == 3


def test_direct_call_inside_a_flow_returns_the_value() -> None:
    @flow
    def pipeline() -> int:
        return double(add(1, 2))

    assert pipeline() == 6


def test_direct_call_raises_the_tasks_own_exception() -> None:
    with pytest.raises(Boom, match="nope"):
        explode("nope")


def test_direct_call_return_state() -> None:
    ok = double(4, return_state=True)
    assert isinstance(ok, State)
    assert ok.is_completed() and ok.result() == 8
    bad = explode("x", return_state=True)
    assert isinstance(bad, State)
    assert bad.is_failed()
    assert isinstance(bad.result(raise_on_failure=False), Boom)


def test_direct_call_return_state_inside_a_flow() -> None:
    @flow
    def pipeline() -> tuple[State[Any], State[Any]]:
        return double(5, return_state=True), explode("y", return_state=True)

    ok, bad = pipeline()
    assert ok.is_completed() and ok.result() == 10
    assert bad.is_failed() and isinstance(bad.exception, Boom)


@pytest.mark.parametrize("in_flow", [False, True])
def test_direct_call_retries_until_success(in_flow: bool) -> None:
    attempts = []

    @task(retries=3)
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise ConnectionError("transient")
        return x + 1

    if in_flow:
        assert flow(lambda: flaky(1))() == 2
    else:
        assert flaky(1) == 2
    assert attempts == [1, 1, 1]


def test_direct_call_after_exhausted_retries_raises_the_own_exception() -> None:
    attempts = []

    @task(retries=2)
    def always_fails() -> None:
        attempts.append(1)
        raise Boom(f"attempt {len(attempts)}")

    with pytest.raises(Boom, match="attempt 3"):
        always_fails()
    assert len(attempts) == 3
    state = always_fails(return_state=True)
    assert state.is_failed() and state.attempts == 3


def test_direct_call_with_default_name_and_bad_arguments_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="double"):
        double(1, 2, 3)  # type: ignore[call-arg]


def test_direct_call_with_bad_arguments_names_the_task() -> None:
    # Not Python's "add() takes 2 positional arguments": the task's own name.
    with pytest.raises(TypeError, match="renamed-add"):
        add(1, 2, 3)  # type: ignore[call-arg]


@pytest.mark.parametrize("return_state", [False, True])
def test_direct_call_with_bad_arguments_fails_before_anything_runs(return_state: bool) -> None:
    """Arguments that do not bind are the caller's error: no attempt, no retry, no hook,
    and a TypeError even with return_state=True."""
    consulted: list[Any] = []
    hooked: list[Any] = []

    def condition(*args: Any) -> bool:
        consulted.append(args)
        return True

    @task(
        name="guarded-task",
        retries=2,
        retry_condition_fn=condition,
        on_failure=[lambda *a: hooked.append(a)],
    )
    def guarded(x: int) -> int:
        return x

    with pytest.raises(TypeError) as info:
        guarded(1, 2, return_state=return_state)  # type: ignore[call-arg]
    assert consulted == [], "the bad call was treated as a failed attempt and retried"
    assert hooked == [], "on_failure fired for a call that never ran"
    assert "guarded-task" in str(info.value)


@pytest.mark.parametrize("retries", [0, 2])
def test_type_error_raised_inside_the_body_is_the_tasks_own_failure(retries: int) -> None:
    attempts: list[int] = []

    @task(name="typed-task", retries=retries)
    def typed(x: int) -> int:
        attempts.append(x)
        return x + "1"  # type: ignore[operator]

    with pytest.raises(TypeError) as info:
        typed(1)
    assert "typed-task" not in str(info.value)  # the body's own error, untouched
    assert "str" in str(info.value)
    assert len(attempts) == 1 + retries  # a body failure is retried like any other


# -- submit / map need a context --------------------------------------------------


def test_submit_outside_any_context_raises_missing_context() -> None:
    with pytest.raises(MissingContextError) as info:
        double.submit(1)
    message = str(info.value)
    assert "use_backend" in message and "@flow" in message


def test_map_outside_any_context_raises_missing_context() -> None:
    with pytest.raises(MissingContextError) as info:
        double.map([1, 2])
    message = str(info.value)
    assert "use_backend" in message and "@flow" in message


def test_submit_and_map_work_inside_use_backend() -> None:
    with flowcore.use_backend("threads"):
        single = double.submit(5)
        many = double.map([1, 2, 3])
        assert single.result() == 10
        assert [f.result() for f in many] == [2, 4, 6]


def test_use_backend_block_waits_for_its_futures(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with flowcore.use_backend("threads"):
        future = slow_touch.submit(str(marker), 0.3)
    # No wait, no result: the block itself waited.
    assert future.done()
    assert marker.read_text() == "ran"
    assert future.state.is_completed()


def test_use_backend_shuts_down_the_backend_it_created() -> None:
    with flowcore.use_backend("threads") as backend:
        assert double.submit(1).result() == 2
    with pytest.raises(flowcore.errors.BackendShutdownError):
        backend.submit(int, 1)


def test_use_backend_leaves_a_given_instance_running() -> None:
    backend = flowcore.get_backend("threads", max_workers=2)
    try:
        with flowcore.use_backend(backend) as used:
            assert used is backend
            assert double.submit(3).result() == 6
        assert backend.submit(int, "7").result(timeout=30) == 7
    finally:
        backend.shutdown()


# -- argument binding at submit time --------------------------------------------------


def test_submit_with_bad_arguments_raises_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    backend = flowcore.get_backend("threads")
    try:
        with flowcore.use_backend(backend):
            with pytest.raises(TypeError, match="touch"):
                touch.submit(str(marker), "extra")  # type: ignore[call-arg]
            with pytest.raises(TypeError, match="renamed-add"):
                add.submit(1, z=3)  # type: ignore[call-arg]
        assert not backend.started
        assert not marker.exists()
    finally:
        backend.shutdown()


def test_submit_with_bad_arguments_inside_a_flow_never_starts_its_backend(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    backend = flowcore.get_backend("threads")

    @flow(backend=backend)
    def pipeline() -> None:
        touch.submit(str(marker), "extra")  # type: ignore[call-arg]

    try:
        with pytest.raises(TypeError, match="touch"):
            pipeline()
        assert not backend.started
        assert not marker.exists()
    finally:
        backend.shutdown()


def test_map_with_bad_arguments_raises_before_anything_runs(tmp_path: Path) -> None:
    backend = flowcore.get_backend("threads")
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    try:
        with flowcore.use_backend(backend), pytest.raises(TypeError, match="touch"):
            touch.map(paths, unknown=[1, 2])  # type: ignore[call-arg]
        assert not backend.started
        assert list(tmp_path.iterdir()) == []
    finally:
        backend.shutdown()


# -- map ------------------------------------------------------------------------------


def _results(futures: list[flowcore.TaskFuture[Any]]) -> list[Any]:
    return [f.result(timeout=60) for f in futures]


def test_map_over_equal_length_iterables() -> None:
    with flowcore.use_backend("threads"):
        assert _results(add.map([1, 2, 3], (10, 20, 30))) == [11, 22, 33]
        assert _results(add.map(range(3), y=[5, 5, 5])) == [5, 6, 7]


def test_map_broadcasts_unmapped_values() -> None:
    shared = [10, 20]
    with flowcore.use_backend("threads"):
        got = _results(combine.map([1, 2], unmapped(shared)))
    assert got == [(1, shared), (2, shared)]


def test_unmapped_given_to_submit_is_refused_at_submit_time() -> None:
    """``unmapped`` only means something to ``.map``; given to ``.submit`` the task would
    receive the wrapper instead of the value, and fail later (or worse, not at all)."""
    with flowcore.use_backend("threads"):
        with pytest.raises(TypeError, match=r"add': argument 0 is unmapped\(1\).*only as an argument of .map\(\).*pass the value itself"):
            add.submit(unmapped(1), 2)
        with pytest.raises(TypeError, match=r"argument 'y' is unmapped\(\[2\]\)"):
            add.submit(1, y=unmapped([2]))
        with pytest.raises(TypeError, match=r"argument 1 is unmapped\(unmapped\(2\)\).*once"):
            add.map([1, 2], unmapped(unmapped(2)))
        assert add.submit(1, 2).result(timeout=60) == 3


def test_map_over_only_a_dict_or_a_string_says_they_are_passed_whole() -> None:
    """A Prefect or joblib user maps over a dict's keys or a string's characters; here
    they are constants, so the error says so and how to map over them."""
    with flowcore.use_backend("threads"):
        with pytest.raises(ValueError, match=r"argument 0 is a dict.*passed whole.*list\(d\) or list\(d.items\(\)\)"):
            combine.map({"k": 1, "j": 2}, 3)
        with pytest.raises(ValueError, match=r"'b' is a str.*passed whole.*list\(s\)"):
            combine.map(1, b="ab")
        assert _results(combine.map(list({"k": 1, "j": 2}), 3)) == [("k", 3), ("j", 3)]


@pytest.mark.parametrize("constant", ["ab", b"xy", {"k": 1, "j": 2}])
def test_map_passes_strings_bytes_and_dicts_whole(constant: Any) -> None:
    with flowcore.use_backend("threads"):
        got = _results(combine.map([1, 2, 3], constant))
        by_keyword = _results(combine.map(a=[1, 2], b=constant))
    assert got == [(1, constant), (2, constant), (3, constant)]
    assert by_keyword == [(1, constant), (2, constant)]


def test_map_over_generators() -> None:
    with flowcore.use_backend("threads"):
        got = _results(add.map((i for i in range(4)), (10 * i for i in range(4))))
    assert got == [0, 11, 22, 33]


def test_map_over_futures_and_with_a_future_broadcast() -> None:
    with flowcore.use_backend("threads"):
        firsts = double.map([1, 2, 3])
        assert _results(double.map(firsts)) == [4, 8, 12]
        offset = double.submit(50)
        assert _results(add.map([1, 2], offset)) == [101, 102]


@pytest.mark.parametrize(("backend", "count"), [("threads", 3), ("loky", 3), ("loky", 2000)])
def test_map_returns_a_future_list_and_takes_return_state(backend: str, count: int) -> None:
    # As Prefect 3's PrefectFutureList: `.wait()` and `.result()` on what map returns,
    # and `map(..., return_state=True)` gives the runs' final states (loky 2000: the
    # column-map path).
    @task
    def halve(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x // 2

    @flow(backend=backend)
    def body() -> tuple[list[int], list[str], list[Any], list[Any]]:
        futures = halve.map(range(count))
        assert futures.wait() is None and all(f.done() for f in futures)
        states = halve.map([4, -4], return_state=True)
        failed = halve.map([-2])
        with pytest.raises(ValueError, match="negative"):
            failed.result()
        return futures.result(), [s.name for s in states], failed.result(raise_on_failure=False), halve.map([]).result()

    values, names, errors, empty = body()
    assert values == [x // 2 for x in range(count)]
    assert names == ["Completed", "Failed"]
    assert [type(e) for e in errors] == [ValueError] and empty == []


def test_map_unequal_lengths_is_a_value_error_naming_the_lengths() -> None:
    with flowcore.use_backend("threads"), pytest.raises(ValueError) as info:
        add.map([1, 2], [1, 2, 3])
    message = str(info.value)
    assert "2" in message and "3" in message
    assert "renamed-add" in message


def test_map_without_an_iterable_is_a_value_error() -> None:
    with flowcore.use_backend("threads"):
        with pytest.raises(ValueError, match="iterable"):
            add.map(1, 2)
        with pytest.raises(ValueError, match="iterable"):
            combine.map("abc", {"a": 1})


def test_map_of_empty_iterables_submits_nothing() -> None:
    with flowcore.use_backend("threads"):
        assert double.map([]) == []


# -- run names --------------------------------------------------------------------


def test_task_run_name_template_sets_the_future_name() -> None:
    named = task(task_run_name="load-{path}-{mode}")(lambda path, mode="r": path)
    with flowcore.use_backend("threads"):
        future = named.submit("a.csv")
        assert future.name == "load-a.csv-r"
        assert future.result() == "a.csv"
        mapped = named.map(["x", "y"], mode="w")
        assert [f.name for f in mapped] == ["load-x-w", "load-y-w"]


def test_task_run_name_callable_sets_the_future_name() -> None:
    counter = iter(range(100))
    named = task(task_run_name=lambda: f"run-{next(counter)}")(lambda x: x)
    with flowcore.use_backend("threads"):
        futures = [named.submit(i) for i in range(3)]
    assert [f.name for f in futures] == ["run-0", "run-1", "run-2"]


def test_task_run_name_callable_taking_parameters_gets_the_runs_arguments() -> None:
    # Prefect 3: a task_run_name callable with a ``parameters`` argument is given the
    # run's parameters (defaults applied), on submit, map and direct calls.
    def name(parameters: dict[str, Any]) -> str:
        return f"load-{parameters['path']}-{parameters['mode']}"

    @task(task_run_name=name)
    def load(path: str, mode: str = "r") -> str:
        return get_run_context().task_run.name  # type: ignore[union-attr]

    @flow(backend="threads")
    def body() -> list[str]:
        return [load.submit("a").result(), *[f.result() for f in load.map(["b", "c"], mode="w")], load("d")]

    assert body() == ["load-a-r", "load-b-w", "load-c-w", "load-d-r"]


def test_task_run_name_callable_that_needs_other_arguments_is_refused_at_decoration() -> None:
    with pytest.raises(TypeError, match=r"'task_run_name' callable .*takes no arguments or a 'parameters' argument"):
        task(task_run_name=lambda path: path)(lambda path: path)


def test_default_run_names_are_distinct_and_start_with_the_task_name() -> None:
    with flowcore.use_backend("threads"):
        futures = double.map([1, 2, 3])
    names = [f.name for f in futures]
    assert len(set(names)) == 3
    assert all(name.startswith("double") for name in names)


@pytest.mark.parametrize("backend", ["sequential", "threads"])
def test_default_run_names_count_in_decimal_per_task_in_submission_order(backend: str) -> None:
    @flow(backend=backend)
    def numbered() -> list[str]:
        futures = [double.submit(i) for i in range(3)]
        futures += [add.submit(1, 2), add.submit(3, 4)]
        futures += double.map(range(12))
        futures.append(double.submit(0))
        return [f.name for f in futures]

    names = numbered()
    assert names == (
        ["double-0", "double-1", "double-2", "renamed-add-0", "renamed-add-1"]
        + [f"double-{i}" for i in range(3, 15)]
        + ["double-15"]
    )
    assert numbered() == names  # each flow run counts from 0


def test_run_names_inside_the_task_match_the_future_names() -> None:
    @task
    def own_name(i: int) -> str:
        from flowcore.context import current_task_run

        context = current_task_run()
        assert context is not None
        return context.call.task_run_name

    @flow(backend="threads")
    def names() -> tuple[list[str], list[str]]:
        futures = [own_name.submit(0), *own_name.map(range(20))]
        return [f.result() for f in futures], [f.name for f in futures]

    inside, outside = names()
    assert inside == outside == [f"own_name-{i}" for i in range(21)]


# -- with_options ---------------------------------------------------------------------


def test_task_with_options_returns_a_changed_copy() -> None:
    completions: list[Any] = []
    original = task(name="orig", retries=1, tags=["a"], on_completion=[lambda *a: completions.append(a)])(
        lambda x: x + 1
    )
    copy = original.with_options(name="copy", retries=3, timeout_seconds=10)
    assert copy is not original
    assert (copy.name, copy.options.retries, copy.options.timeout_seconds) == ("copy", 3, 10)
    # Options not named are kept.
    assert copy.tags == frozenset({"a"})
    assert copy.options.on_completion == original.options.on_completion
    # The original is unchanged.
    assert (original.name, original.options.retries, original.options.timeout_seconds) == ("orig", 1, None)
    assert copy(1) == 2 and original(1) == 2
    assert len(completions) == 2


def test_task_with_options_changes_behaviour_only_of_the_copy() -> None:
    attempts: list[int] = []

    @task
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) % 2:
            raise ConnectionError("odd attempt")
        return "ok"

    assert flaky.with_options(retries=1)() == "ok"
    assert len(attempts) == 2
    with pytest.raises(ConnectionError):
        flaky()
    assert len(attempts) == 3


# -- states ---------------------------------------------------------------------------


def test_state_is_frozen() -> None:
    state = st.Completed(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.name = "Failed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.data = 2  # type: ignore[misc]


PREDICATES = ("is_pending", "is_running", "is_completed", "is_failed", "is_crashed", "is_cancelled")


@pytest.mark.parametrize(
    ("state", "name", "true_predicate", "final"),
    [
        (st.Pending(), "Pending", "is_pending", False),
        (st.Running(), "Running", "is_running", False),
        (st.Completed(1), "Completed", "is_completed", True),
        (st.Cached(1), "Cached", "is_completed", True),
        (st.Failed(ValueError("v")), "Failed", "is_failed", True),
        (st.TimedOut("too slow"), "TimedOut", "is_failed", True),
        (st.NotRun("upstream failed"), "NotRun", "is_failed", True),
        (st.Crashed("worker died"), "Crashed", "is_crashed", True),
        (st.Cancelled(), "Cancelled", "is_cancelled", True),
    ],
)
def test_state_predicates(state: State[Any], name: str, true_predicate: str, final: bool) -> None:
    assert state.name == name
    for predicate in PREDICATES:
        assert getattr(state, predicate)() is (predicate == true_predicate), predicate
    assert state.is_final() is final


@pytest.mark.parametrize(
    ("state", "error"),
    [
        (st.Failed(Boom("b")), Boom),
        (st.TimedOut("too slow"), TaskTimeoutError),
        (st.NotRun("upstream failed"), UpstreamFailedError),
        (st.Crashed("worker died"), CrashedError),
        (st.Cancelled(), CancelledError),
    ],
)
def test_result_of_unsuccessful_states(state: State[Any], error: type[BaseException]) -> None:
    with pytest.raises(error):
        state.result()
    returned = state.result(raise_on_failure=False)
    assert isinstance(returned, error)


def test_result_of_completed_and_cached_states() -> None:
    assert st.Completed({"a": 1}).result() == {"a": 1}
    assert st.Cached([1, 2]).result() == [1, 2]
    assert st.Completed(None).result(raise_on_failure=False) is None


def test_result_of_a_non_final_state_is_an_error() -> None:
    with pytest.raises(ValueError):
        st.Pending().result()
    with pytest.raises(ValueError):
        st.Running().result()


@pytest.fixture
def plain_exception_pickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exceptions pickle without their tracebacks, as the standard library does: undo
    tblib's reducers, which ``import distributed`` installs process-wide (an earlier
    test in this process may have imported it)."""
    import copyreg
    import types

    for kind in list(copyreg.dispatch_table):
        if kind is types.TracebackType or (isinstance(kind, type) and issubclass(kind, BaseException)):
            monkeypatch.delitem(copyreg.dispatch_table, kind)


@pytest.mark.usefixtures("plain_exception_pickling")
def test_pickled_failed_state_reraises_with_the_remote_traceback() -> None:
    def deep_helper_that_raises() -> None:
        raise Boom("from far away")

    @task
    def failing() -> None:
        deep_helper_that_raises()

    state = failing(return_state=True)
    assert state.is_failed()
    clone = pickle.loads(pickle.dumps(state))
    assert clone.exception.__traceback__ is None
    with pytest.raises(Boom, match="from far away") as info:
        clone.result()
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "deep_helper_that_raises" in str(cause)
    assert "from far away" in str(cause)


@pytest.mark.usefixtures("plain_exception_pickling")
def test_pickled_state_of_a_submitted_task_keeps_its_traceback() -> None:
    with flowcore.use_backend("threads"):
        future = explode.submit("over there")
        future.wait(60)
    clone = pickle.loads(pickle.dumps(future.state))
    with pytest.raises(Boom) as info:
        clone.result()
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "explode" in str(info.value.__cause__)


def test_tasks_pickle_by_reference_with_their_options() -> None:
    import pickle

    from flowcore.testing import workloads as w

    plain = pickle.loads(pickle.dumps(w.add))
    assert plain is w.add
    derived = w.add.with_options(retries=2, name="add-again", retry_delay_seconds=[0.5])
    copy = pickle.loads(pickle.dumps(derived))
    assert copy is not derived and copy.fn is w.add.fn
    assert copy.name == "add-again" and copy.options.retry_policy.delays == (0.5,)
    assert copy(2, 3) == 5


def test_a_task_bound_under_its_own_name_pickles_by_reference() -> None:
    """``triple = task(_plain_triple, name="triple")``: the module attribute named like
    the function is the plain function, so the task is found under its task name."""
    import pickle

    payload = pickle.dumps(triple)
    assert pickle.loads(payload) is triple
    assert b"_plain_triple" not in payload  # the reference, not the function by value
    derived = triple.with_options(retries=1)
    copy = pickle.loads(pickle.dumps(derived))
    assert copy is not triple and copy.fn is triple.fn and copy.options.retries == 1
    assert copy(2) == 6


def test_a_task_rebuilt_from_its_function_computes_its_signature_on_first_use() -> None:
    """A task that travels by value is rebuilt in the worker for every run: it does not
    inspect its function until something needs the signature."""
    rebuilt = Task(double.fn, double.options)
    assert "signature" not in vars(rebuilt)
    assert rebuilt(4) == 8
    assert list(rebuilt.signature.parameters) == ["x"]
    with pytest.raises(TypeError, match="double"):
        rebuilt(1, 2)


def test_engine_fast_path_state_equals_a_regular_completed_state() -> None:
    from dataclasses import FrozenInstanceError

    from flowcore.states import StateType, completed_run

    fast = completed_run({"v": 1}, 10.0, 12.5, 1)
    regular = State(StateType.COMPLETED, "Completed", "", {"v": 1}, None, None, 12.5, 10.0, 12.5, 1)
    assert fast == regular and repr(fast) == "Completed()"
    assert fast.duration == 2.5 and fast.result() == {"v": 1}
    with pytest.raises(FrozenInstanceError):
        fast.name = "Failed"  # type: ignore[misc]


def test_futures_inside_dict_subclasses_resolve_to_the_same_type() -> None:
    import collections

    @task
    def ident(x: Any) -> Any:
        return x

    with flowcore.use_backend("threads"):
        one = ident.submit(1)
        dd = ident.submit(collections.defaultdict(list, {"k": one})).result()
        counter = ident.submit(collections.Counter({"k": one})).result()
    assert isinstance(dd, collections.defaultdict) and dd.default_factory is list and dd == {"k": 1}
    assert isinstance(counter, collections.Counter) and counter == {"k": 1}


class Scaler:
    """Tasks and a flow defined as methods (Prefect 3 supports methods)."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    @task
    def scale(self, x: int) -> int:
        return x * self.factor

    @task
    async def ascale(self, x: int) -> int:
        return x * self.factor

    @staticmethod
    @task
    def shift(x: int) -> int:
        return x + 1

    @flow
    def run(self, n: int) -> tuple[int, int, list[int], int, int]:
        return (
            self.scale(n),
            self.scale.submit(n + 1).result(),
            self.scale.map([1, 2]).result(),
            self.ascale(3),
            Scaler.shift(n),
        )


@pytest.mark.parametrize("backend", ["threads", "loky"])
def test_tasks_and_flows_work_as_methods(backend: str) -> None:
    scaler = Scaler(10)
    assert scaler.run.with_options(backend=backend)(2) == (20, 30, [10, 20], 30, 3)
    assert Scaler.scale(scaler, 4) == 40  # read from the class: the task itself, unbound


@dataclasses.dataclass(frozen=True)
class Pricer:
    rate: int

    @task(cache_policy=INPUTS)
    def price(self, units: int) -> int:
        return units * self.rate


def test_a_cached_method_keys_on_its_instance_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two instances that differ must not share a cache entry: the instance is an
    # input ('self'), as the arguments are.
    monkeypatch.setenv("FLOWCORE_CACHE_DIR", str(tmp_path))
    assert Pricer(2).price(10) == 20
    assert Pricer(3).price(10) == 30
    assert Pricer(3).price(10, return_state=True).name == "Cached"



@task
def _raises_value_error(x: int) -> int:
    raise ValueError(f"bad {x}")


def test_a_direct_call_that_returns_its_failed_state_logs_the_failure(caplog: pytest.LogCaptureFixture) -> None:
    """``t(x, return_state=True)`` hands a failure back instead of raising it: the run
    is logged at ERROR as a failed submitted run is (Prefect logs every failed run)."""
    import asyncio
    import logging

    @task
    async def async_raises(x: int) -> int:
        raise ValueError(f"bad async {x}")

    @flow
    def sync_body() -> str:
        return _raises_value_error(1, return_state=True).name

    @flow
    async def async_body() -> str:
        await asyncio.sleep(0)
        return (await async_raises(2, return_state=True)).name

    caplog.set_level(logging.INFO, logger="flowcore")
    assert sync_body() == "Failed" and async_body() == "Failed"
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and "Finished in state Failed" in r.getMessage()]
    assert [r.getMessage().split("(")[1] for r in failures] == ["'ValueError: bad 1')", "'ValueError: bad async 2')"]


def test_wait_and_as_completed_refuse_what_is_not_a_future_by_name() -> None:
    """``flowcore.wait([1, 2])`` or ``wait(future)``: a TypeError that names the item,
    instead of "'int' object has no attribute 'wait'" (or a future that is not iterable)."""
    with flowcore.use_backend("threads"):
        future = add.submit(1, 2)
        with pytest.raises(TypeError, match=r"flowcore.wait\(\): item 1 is an int \(3\), not a TaskFuture"):
            flowcore.wait([future, 3])  # type: ignore[list-item]
        with pytest.raises(TypeError, match=r"flowcore.as_completed\(\): item 0 is a str \('x'\)"):
            list(flowcore.as_completed(["x"]))  # type: ignore[list-item]
        with pytest.raises(TypeError, match=r"flowcore.wait\(\) takes a list of futures.*wait\(\[future\]\)"):
            flowcore.wait(future)  # type: ignore[arg-type]
        done, not_done = flowcore.wait([future], timeout=60)
        assert done == {future} and not not_done


class _Unscannable(list[int]):
    """A list whose iteration fails: scanning a submit's arguments for futures raises."""

    def __iter__(self) -> Any:
        raise RuntimeError("cannot iterate me")


def test_a_submit_that_raises_leaves_no_future_for_the_flow_to_wait_for() -> None:
    """When ``.submit`` raises (here: looking for futures in an argument fails), no run
    was sent: the flow must not wait for it at its end (it waited forever)."""
    seen: list[str] = []

    @flow(backend="threads")
    def pipeline() -> int:
        with pytest.raises(RuntimeError, match="cannot iterate me"):
            add.submit(_Unscannable([1]), 2)
        seen.append("raised")
        return add.submit(1, 2).result(timeout=60)

    results: list[int] = []
    runner = threading.Thread(target=lambda: results.append(pipeline()), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "the flow waits for a run that was never sent"
    assert seen == ["raised"] and results == [3]
