"""``allow_failure`` and ``quote``: what reaches the task, what is waited for, and
what is left alone. (Every backend runs ``test_allow_failure_and_quote`` of the
conformance suite.)"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

from flowcore import allow_failure, flow, quote, task
from flowcore.errors import UpstreamFailedError
from flowcore.futures import TaskFuture


@task
def boom() -> None:
    raise KeyError("gone")


@task
def one() -> int:
    return 1


@task
def received(*values: Any) -> list[Any]:
    return list(values)


@task
def released(gate: threading.Event) -> int:
    gate.wait(10)
    return 7


def test_allow_failure_passes_results_and_exceptions() -> None:
    @flow(backend="threads")
    def body() -> tuple[list[Any], list[Any], str]:
        failed, ok = boom.submit(), one.submit()
        not_run = received.submit(failed)  # NotRun, so allow_failure gives its error
        return (
            received.submit(allow_failure(failed), allow_failure(ok)).result(),
            received.submit(allow_failure({"runs": [failed, ok]})).result(),
            received.submit(allow_failure(not_run)).result()[0].__class__.__name__,
        )

    first, nested, not_run = body()
    assert isinstance(first[0], KeyError) and first[1] == 1
    assert isinstance(nested[0]["runs"][0], KeyError) and nested[0]["runs"][1] == 1
    assert not_run == UpstreamFailedError.__name__


def test_allow_failure_still_waits_for_its_upstream() -> None:
    gate = threading.Event()

    @flow(backend="threads")
    def body() -> list[Any]:
        slow = released.submit(gate)
        downstream = received.submit(allow_failure(slow))
        assert not downstream.done()
        gate.set()
        return downstream.result()

    assert body() == [7]


def test_quote_is_not_scanned_and_keeps_futures() -> None:
    @flow(backend="threads")
    def body() -> tuple[Any, Any]:
        ok = one.submit()
        ok.wait()
        passed = received.submit(quote([ok])).result()
        return quote((passed[0][0], ok))  # quoted: the flow does not resolve them either

    inner, ok = body()
    assert inner is ok and isinstance(inner, TaskFuture)


def test_a_quoted_future_sent_to_a_worker_process_is_a_clear_error() -> None:
    # A future cannot travel to another process; quote() keeps it from being resolved,
    # so the error must say that, not "cannot pickle '_thread.lock' object".
    @flow(backend="loky")
    def body() -> Any:
        ok = one.submit()
        ok.wait()
        return received.submit(quote([ok])).result()

    state = body(return_state=True)
    assert state.is_failed()
    message = str(state.exception)
    assert "argument 'values'" in message and "TaskFuture 'one-0'" in message, message
    assert "unquoted" in message and "_thread.lock" not in message, message


def test_a_flow_returning_quote_completes_with_the_value() -> None:
    @flow(backend="threads")
    def body() -> Any:
        failed = boom.submit()
        failed.wait()
        return quote(failed)  # without quote the flow would take the failed state

    state = body(return_state=True)
    assert state.is_completed() and isinstance(state.result(), TaskFuture)


def test_wait_for_checks_its_items() -> None:
    @flow(backend="threads")
    def body() -> None:
        received.submit(wait_for=[allow_failure(3)])

    with pytest.raises(TypeError, match=r"allow_failure\(future\)"):
        body()


@pytest.mark.parametrize("collection", [list, tuple, set])
def test_wait_for_takes_allow_failure_of_a_collection_of_futures(collection: Any) -> None:
    """``wait_for=[allow_failure([a, b])]`` (Prefect's annotation wraps any collection)
    waits for both and lets the downstream run though one failed; a collection holding
    something else than futures is still refused."""

    @flow(backend="threads")
    def body() -> Any:
        failed, ok = boom.submit(), one.submit()
        after = received.submit(5, wait_for=[allow_failure(collection([failed, ok]))])
        value = after.result()
        assert failed.state.is_failed() and ok.state.is_completed()
        return value

    assert body() == [5]

    @flow(backend="threads")
    def refused() -> None:
        received.submit(wait_for=[allow_failure([one.submit(), 3])])

    with pytest.raises(TypeError, match=r"allow_failure\(\[futures\]\)"):
        refused()


def test_wrappers_compare_and_pickle() -> None:
    assert allow_failure(1) == allow_failure(1) != quote(1)
    assert repr(quote([1])) == "quote([1])" and quote(2).unquote() == 2
    assert pickle.loads(pickle.dumps(quote({"a": 1}))) == quote({"a": 1})
    assert allow_failure(3).unwrap() == 3
