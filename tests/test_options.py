"""Options of @task and @flow: validated where they are written, with messages that name them."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import flowcore
from flowcore import flow, task
from flowcore.options import exponential_backoff


def _fn(x: int) -> int:
    return x


def _hook(*args: Any) -> None:
    return None


# -- @task: bad input at decoration time ---------------------------------------------

BAD_TASK_OPTIONS = [
    pytest.param({"retries": -1}, ValueError, "retries", id="retries-negative"),
    pytest.param({"retries": 1.5}, TypeError, "retries", id="retries-float"),
    pytest.param({"retries": True}, TypeError, "retries", id="retries-bool"),
    pytest.param({"retries": "2"}, TypeError, "retries", id="retries-str"),
    pytest.param({"retries": 1, "retry_delay_seconds": "x"}, TypeError, "retry_delay_seconds", id="delay-str"),
    pytest.param({"retries": 2, "retry_delay_seconds": [1, "a"]}, TypeError, "retry_delay_seconds", id="delay-list-str"),
    pytest.param({"retries": 1, "retry_delay_seconds": -1}, ValueError, "retry_delay_seconds", id="delay-negative"),
    pytest.param({"retries": 2, "retry_delay_seconds": [1, -2]}, ValueError, "retry_delay_seconds", id="delay-list-negative"),
    pytest.param({"retries": 1, "retry_delay_seconds": math.nan}, ValueError, "retry_delay_seconds", id="delay-nan"),
    pytest.param({"retries": 1, "retry_jitter_factor": -0.5}, ValueError, "retry_jitter_factor", id="jitter-negative"),
    pytest.param({"retries": 1, "retry_jitter_factor": "x"}, TypeError, "retry_jitter_factor", id="jitter-str"),
    pytest.param({"timeout_seconds": -1}, ValueError, "timeout_seconds", id="timeout-negative"),
    pytest.param({"timeout_seconds": 0}, ValueError, "timeout_seconds", id="timeout-zero"),
    pytest.param({"timeout_seconds": "5"}, TypeError, "timeout_seconds", id="timeout-str"),
    pytest.param({"timeout_seconds": True}, TypeError, "timeout_seconds", id="timeout-bool"),
    pytest.param({"tags": "abc"}, TypeError, "tags", id="tags-str"),
    pytest.param({"tags": [1, 2]}, TypeError, "tags", id="tags-not-str"),
    pytest.param({"on_completion": _hook}, TypeError, "on_completion", id="on_completion-not-list"),
    pytest.param({"on_failure": _hook}, TypeError, "on_failure", id="on_failure-not-list"),
    pytest.param({"on_completion": [1]}, TypeError, "on_completion", id="on_completion-item"),
    pytest.param({"task_run_name": "{nope}"}, ValueError, "task_run_name", id="run-name-missing-param"),
    pytest.param({"task_run_name": "{0}"}, ValueError, "task_run_name", id="run-name-positional"),
    pytest.param({"task_run_name": 42}, TypeError, "task_run_name", id="run-name-int"),
    pytest.param({"retry_condition_fn": 3}, TypeError, "retry_condition_fn", id="retry-condition-not-callable"),
    pytest.param({"log_prints": "yes"}, TypeError, "log_prints", id="log_prints-str"),
    pytest.param({"name": ""}, TypeError, "name", id="name-empty"),
]


@pytest.mark.parametrize(("options", "error", "option_name"), BAD_TASK_OPTIONS)
def test_task_rejects_bad_option_at_decoration(
    options: dict[str, Any], error: type[Exception], option_name: str
) -> None:
    with pytest.raises(error) as info:
        task(**options)(_fn)
    assert option_name in str(info.value)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"retries": -1}, ValueError),
        ({"retries": 1.5}, TypeError),
        ({"retries": 1, "retry_delay_seconds": "x"}, TypeError),
        ({"timeout_seconds": 0}, ValueError),
    ],
)
def test_task_rejects_bad_option_before_the_function_is_applied(
    options: dict[str, Any], error: type[Exception]
) -> None:
    # `@task(retries=-1)` fails on the decorator line itself.
    with pytest.raises(error):
        task(**options)


def test_a_callable_without_a_readable_signature_is_refused_with_the_fix() -> None:
    """A builtin whose signature Python cannot read (``math.hypot``) fails at decoration
    with a TypeError that says how to wrap it, not inspect's ValueError."""
    with pytest.raises(TypeError, match=r"@task cannot read the signature of 'hypot'.*wrap it"):
        task(math.hypot)
    with pytest.raises(TypeError, match=r"@flow cannot read the signature of 'hypot'.*wrap it"):
        flow(math.hypot)

    @task
    def hypot_task(x: float, y: float) -> float:
        return math.hypot(x, y)

    assert hypot_task(3, 4) == 5.0


def test_task_unknown_keyword_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="retires"):
        task(retires=1)  # type: ignore[call-overload]


def test_task_run_name_may_use_var_keyword_and_real_parameters() -> None:
    def fn(path: str, **extra: Any) -> str:
        return path

    decorated = task(task_run_name="load-{path}-{anything}")(fn)
    assert decorated.options.task_run_name == "load-{path}-{anything}"


def test_task_takes_async_functions_but_not_async_generators() -> None:
    async def coro() -> None:
        return None

    async def agen() -> Any:
        yield 1

    assert task(coro).isasync
    with pytest.raises(TypeError, match="async generator"):
        task(agen)
    with pytest.raises(TypeError, match="async generator"):
        flow(agen)


def test_task_with_options_validates_too() -> None:
    t = task(_fn)
    with pytest.raises(ValueError, match="retries"):
        t.with_options(retries=-1)
    with pytest.raises(TypeError, match="tags"):
        t.with_options(tags="abc")


# -- @flow: bad input at decoration time ---------------------------------------------

BAD_FLOW_OPTIONS = [
    pytest.param({"retries": -1}, ValueError, "retries", id="retries-negative"),
    pytest.param({"retries": 1.5}, TypeError, "retries", id="retries-float"),
    pytest.param({"retries": True}, TypeError, "retries", id="retries-bool"),
    pytest.param({"retries": 1, "retry_delay_seconds": "x"}, TypeError, "retry_delay_seconds", id="delay-str"),
    pytest.param({"retries": 2, "retry_delay_seconds": [1, "a"]}, TypeError, "retry_delay_seconds", id="delay-list-str"),
    pytest.param({"retries": 1, "retry_delay_seconds": -3}, ValueError, "retry_delay_seconds", id="delay-negative"),
    pytest.param({"timeout_seconds": -1}, ValueError, "timeout_seconds", id="timeout-negative"),
    pytest.param({"timeout_seconds": 0}, ValueError, "timeout_seconds", id="timeout-zero"),
    pytest.param({"on_completion": _hook}, TypeError, "on_completion", id="on_completion-not-list"),
    pytest.param({"on_failure": _hook}, TypeError, "on_failure", id="on_failure-not-list"),
    pytest.param({"backend": 123}, TypeError, "backend", id="backend-int"),
    pytest.param({"backend": object()}, TypeError, "backend", id="backend-object"),
    pytest.param({"log_prints": 1}, TypeError, "log_prints", id="log_prints-int"),
    pytest.param({"name": "  "}, TypeError, "name", id="name-blank"),
]


@pytest.mark.parametrize(("options", "error", "option_name"), BAD_FLOW_OPTIONS)
def test_flow_rejects_bad_option_at_decoration(
    options: dict[str, Any], error: type[Exception], option_name: str
) -> None:
    with pytest.raises(error) as info:
        flow(**options)(_fn)
    assert option_name in str(info.value)


def test_flow_unknown_keyword_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="retires"):
        flow(retires=1)  # type: ignore[call-overload]


def test_flow_with_options_validates_too() -> None:
    f = flow(_fn)
    with pytest.raises(TypeError, match="backend"):
        f.with_options(backend=123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_seconds"):
        f.with_options(timeout_seconds=0)


def test_flow_accepts_a_backend_instance() -> None:
    backend = flowcore.get_backend("sequential")
    try:
        f = flow(backend=backend)(_fn)
        assert f.options.backend is backend
    finally:
        backend.shutdown()


# -- retry delays ----------------------------------------------------------------


def _delays(t: flowcore.Task[..., Any], count: int) -> list[float]:
    policy = t.options.retry_policy
    return [policy.delay(i) for i in range(count)]


def test_exponential_backoff_doubles_each_retry() -> None:
    t = task(retries=3, retry_delay_seconds=exponential_backoff(2))(_fn)
    assert _delays(t, 3) == [2, 4, 8]


def test_exponential_backoff_rejects_a_bad_factor() -> None:
    with pytest.raises(TypeError, match="backoff_factor"):
        exponential_backoff("x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backoff_factor"):
        exponential_backoff(-1)


def test_delay_list_repeats_its_last_value() -> None:
    t = task(retries=4, retry_delay_seconds=[1, 2])(_fn)
    assert _delays(t, 4) == [1, 2, 2, 2]


def test_single_delay_applies_to_every_retry() -> None:
    t = task(retries=3, retry_delay_seconds=0.5)(_fn)
    assert _delays(t, 3) == [0.5, 0.5, 0.5]


def test_no_delay_by_default() -> None:
    t = task(retries=2)(_fn)
    assert _delays(t, 2) == [0, 0]


def test_delay_callable_that_fails_is_reported_at_decoration() -> None:
    def broken(retries: int) -> list[float]:
        raise RuntimeError("kaputt")

    with pytest.raises(ValueError, match="retry_delay_seconds"):
        task(retries=2, retry_delay_seconds=broken)(_fn)


def test_delay_callable_returning_garbage_is_rejected() -> None:
    with pytest.raises(TypeError, match="retry_delay_seconds"):
        task(retries=2, retry_delay_seconds=lambda n: "soon")(_fn)  # type: ignore[arg-type,return-value]


def test_flow_retry_delays_follow_the_same_rules() -> None:
    f = flow(retries=3, retry_delay_seconds=exponential_backoff(1))(_fn)
    policy = f.options.retry_policy
    assert [policy.delay(i) for i in range(3)] == [1, 2, 4]


@given(
    delay=st.floats(min_value=0, max_value=1000, allow_nan=False),
    jitter=st.floats(min_value=0, max_value=2, allow_nan=False),
    index=st.integers(min_value=0, max_value=20),
)
def test_jitter_stays_within_its_band(delay: float, jitter: float, index: int) -> None:
    t = task(retries=3, retry_delay_seconds=delay, retry_jitter_factor=jitter)(_fn)
    got = t.options.retry_policy.delay(index)
    low = max(0.0, delay * (1 - jitter))
    high = delay * (1 + jitter)
    tolerance = 1e-9 * max(1.0, high)
    assert low - tolerance <= got <= high + tolerance
    assert got >= 0


@given(
    delays=st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=5),
    index=st.integers(min_value=0, max_value=30),
)
def test_delay_list_index_rule(delays: list[int], index: int) -> None:
    t = task(retries=len(delays) + 3, retry_delay_seconds=delays)(_fn)
    assert t.options.retry_policy.delay(index) == delays[min(index, len(delays) - 1)]


def test_option_errors_name_the_task() -> None:
    def my_special_fn(x: int) -> int:
        return x

    with pytest.raises(ValueError, match=re.escape("my_special_fn")):
        task(task_run_name="{nope}")(my_special_fn)


def test_options_are_declared_once() -> None:
    """The typed keyword arguments of @task/@flow (and with_options) are exactly the
    input fields of TaskOptions/FlowOptions, in the same order."""
    from flowcore.options import (
        FlowOptionInputs,
        FlowOptions,
        TaskOptionInputs,
        TaskOptions,
        input_names,
    )

    assert tuple(TaskOptionInputs.__annotations__) == input_names(TaskOptions)
    assert tuple(FlowOptionInputs.__annotations__) == input_names(FlowOptions)
    assert len(input_names(TaskOptions)) == 21 and len(input_names(FlowOptions)) == 17


def test_prefects_task_runner_option_points_to_backends() -> None:
    # `@flow(task_runner=DaskTaskRunner())` is the first thing a ported Prefect flow
    # says: the error must name flowcore's equivalent, not just list the options.
    import pytest

    from flowcore import flow, task

    with pytest.raises(TypeError, match=r"unknown option 'task_runner'.*backend=.*'dask'"):
        flow(task_runner=object())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"unknown option 'result_serializer'.*not supported.*cloudpickle"):
        task(result_serializer="json")  # type: ignore[call-overload]


def test_an_unknown_option_names_the_nearest_one() -> None:
    import pytest

    from flowcore import flow, task

    with pytest.raises(TypeError, match="unknown option 'retires'; did you mean 'retries'"):
        task(retires=2)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="unknown option 'timeout'; did you mean 'timeout_seconds'"):
        flow(timeout=2)  # type: ignore[call-overload]

    @task
    def double(x: int) -> int:
        return 2 * x

    with pytest.raises(TypeError, match="unknown option 'retry_delay'"):
        double.with_options(retry_delay=1)  # type: ignore[call-arg]
    changed = double.with_options(retries=2, tags=["a"])
    assert (changed.options.retries, changed.options.tags, changed.name) == (2, frozenset({"a"}), "double")
    assert changed.with_options(name="twice").options.retries == 2  # the rest kept
