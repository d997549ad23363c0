"""Which errors are failures to pickle or unpickle (flowcore.serialization).

Decided by the exception's type and pickle's own messages, never by the word
"pickle" anywhere in the text (issue 12.15): a TypeError about a class named
``UnpicklableWidget`` is the task's own error, not a value that failed to cross over.
"""

from __future__ import annotations

import pickle
import threading

import cloudpickle
import pytest

from flowcore.errors import SerializationError
from flowcore.serialization import CallNotLoaded, is_pickling_error
from flowcore.testing.workloads import FailsWhenLoaded


def raised_by(action: object) -> BaseException:
    assert callable(action)
    with pytest.raises(Exception) as info:
        action()
    return info.value


class UnpicklableWidget:
    """Pickles fine: only its name says otherwise."""


def local_function() -> object:
    def inner() -> None:
        pass

    return inner


class Vanished:
    pass


def test_pickles_own_failures_are_pickling_errors() -> None:
    lock = threading.Lock()
    errors = [
        raised_by(lambda: pickle.dumps(lock)),  # TypeError: cannot pickle '_thread.lock' object
        raised_by(lambda: cloudpickle.dumps(lock)),
        raised_by(lambda: pickle.dumps(local_function())),  # AttributeError: Can't pickle local object
        raised_by(lambda: pickle.loads(b"\x80\x05\x95")),  # UnpicklingError: pickle data was truncated
        SerializationError("the call could not be unpickled"),
        CallNotLoaded("the call could not be unpickled in the worker"),
    ]
    payload = pickle.dumps(Vanished())
    saved = globals().pop("Vanished")
    try:
        errors.append(raised_by(lambda: pickle.loads(payload)))  # Can't get attribute 'Vanished'
    finally:
        globals()["Vanished"] = saved
    for error in errors:
        assert is_pickling_error(error), repr(error)


def test_a_pickling_error_is_found_in_the_chain() -> None:
    cause = raised_by(lambda: pickle.dumps(threading.Lock()))
    wrapper = RuntimeError("the pool is broken")
    wrapper.__cause__ = cause
    assert is_pickling_error(wrapper)


def test_text_that_merely_mentions_pickle_is_not_a_pickling_error() -> None:
    widget = UnpicklableWidget()
    errors = [
        raised_by(lambda: len(widget)),  # type: ignore[arg-type]  # TypeError naming the class
        raised_by(lambda: widget.missing),  # type: ignore[attr-defined]  # AttributeError naming it
        TypeError("UnpicklableError.__init__() missing 1 required positional argument: 'b'"),
        TypeError("expected a pickle-friendly config, got None"),
        ValueError("cannot pickle this, says the task"),
    ]
    assert "Unpicklable" in str(errors[0]) and "Unpicklable" in str(errors[1])
    for error in errors:
        assert not is_pickling_error(error), repr(error)


def test_a_value_that_fails_to_load_raises_an_error_of_its_own_making() -> None:
    # Unpickling FailsWhenLoaded raises the TypeError its __reduce__ leads to: only
    # flowcore's way back (SentBack) can tell that it came from unpickling.
    error = raised_by(lambda: pickle.loads(pickle.dumps(FailsWhenLoaded())))
    assert isinstance(error, TypeError) and not is_pickling_error(error)
