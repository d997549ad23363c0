"""Explaining pickling failures: which argument (or the result) could not cross over.

A process or cluster backend pickles the call on its way to a worker and the result
on its way back. When that fails the backend reports a generic error; this module
turns it into a :class:`~flowcore.errors.SerializationError` that names the task run
and the argument at fault. It runs only on that failure path.

The way back is guarded at its two ends, so that a value that cannot make the trip
fails its own run instead of breaking the pool (issue 12, items 9 and 15):

* in the worker, a process backend wraps what it returns in :class:`SentBack`, which
  pickles the value itself: a value that does not pickle becomes an
  :class:`Unsendable` record naming its type;
* in the parent, the value is unpickled by :func:`_received`, never by the pool's own
  result thread: a value that pickles but cannot be unpickled (an exception whose
  ``__init__`` takes two arguments) also becomes an :class:`Unsendable`, where loky
  would declare the whole pool broken ("A result has failed to un-serialize") and
  lose every run in it.

A batch of runs (:class:`Repairable`) is repaired in the worker when it fails to
pickle: each run whose value does not pickle gets a ``Failed`` state naming it, and the
other runs' results still travel home (issue 12.22).

The core passes every result through :func:`raise_if_unsendable` before reading it,
which turns an :class:`Unsendable` into an error that :func:`explain_pickling_failure`
explains in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from flowcore.calls import TaskCall
from flowcore.errors import RemoteTraceback, SerializationError

T = TypeVar("T")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# loky's (and concurrent.futures') words for a call that a worker could not unpickle:
# the worker exits and the pool is broken for every run in it.
_CALL_NOT_LOADED = "task has failed to un-serialize"
# ... and for a result the pool's result thread could not unpickle.
_RESULT_NOT_LOADED = "result has failed to un-serialize"


# The beginnings of the messages that pickle itself (CPython's pickle, copyreg and
# object.__reduce_ex__), cloudpickle and distributed's serializer give to a TypeError or
# AttributeError when a value cannot be pickled or unpickled. Matched at the start of
# the message, case-sensitively: any text that merely contains "pickle" (a class named
# ``UnpicklableError`` in an unrelated TypeError, say) is not a pickling failure.
_PICKLE_MESSAGES = (
    "cannot pickle ",  # TypeError: cannot pickle '_thread.lock' object
    "can't pickle ",  # the same before Python 3.8
    "Can't pickle ",  # AttributeError: Can't pickle local object 'f.<locals>.g'
    "Can't get attribute ",  # AttributeError on loading: the class is missing here
    "Can't get local object ",
    "Could not serialize object",  # distributed.protocol.serialize
)


def is_pickling_error(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it chains to) is a failure to pickle or
    unpickle a call or its result.

    Decided by the exception's type (pickle's errors, flowcore's SerializationError)
    or, for the TypeError and AttributeError that pickle raises, by the start of
    pickle's own message -- never by the word "pickle" anywhere in the text (issue 12.15).
    """
    import pickle  # a failure path; see the note above SentBack

    for error in _chain(exc):
        if isinstance(error, (pickle.PicklingError, pickle.UnpicklingError, SerializationError)):
            return True
        if isinstance(error, (TypeError, AttributeError)) and str(error).startswith(_PICKLE_MESSAGES):
            return True
        if _CALL_NOT_LOADED in str(error) or _RESULT_NOT_LOADED in str(error):
            return True
    return False


def _root_cause(exc: BaseException) -> BaseException:
    *_, last = _chain(exc)
    return last


def _dumps(value: Any) -> None:
    import cloudpickle

    cloudpickle.dumps(value)


def _round_trip(value: Any) -> None:
    """Pickle and unpickle ``value`` (on the failure path only: finds what a worker
    could not load)."""
    import cloudpickle

    cloudpickle.loads(cloudpickle.dumps(value))


def type_name(value: Any) -> str:
    """``dict``, ``_thread.lock``, ``mymodule.Thing``: the type as a user reads it."""
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def one_line(error: BaseException) -> str:
    """``TypeError: cannot pickle '_thread.lock' object``: never a traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and line.strip() != '"""']
    text = lines[-1] if lines and isinstance(error, RemoteTraceback) else " ".join(lines)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# -- the way back ---------------------------------------------------------------------


class Unsendable:
    """What arrives instead of a worker's return value that could not make the trip.

    ``direction`` is ``"pickled"`` (in the worker) or ``"unpickled"`` (here);
    ``kind`` is ``"result"``/``"exception"`` for a single run's outcome, else None;
    ``what`` the type of the value at fault; ``traceback`` the worker's traceback of a
    failed run, when that was the value.
    """

    __slots__ = ("direction", "kind", "reason", "traceback", "what")

    def __init__(self, direction: str, kind: str | None, what: str, reason: str, traceback: str | None) -> None:
        self.direction = direction
        self.kind = kind
        self.what = what
        self.reason = reason
        self.traceback = traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (Unsendable, (self.direction, self.kind, self.what, self.reason, self.traceback))

    def __repr__(self) -> str:
        return f"<Unsendable {self.kind or 'value'} ({self.what}) could not be {self.direction}: {self.reason}>"


class ResultNotSent(SerializationError):
    """A worker's return value could not make the trip to this process. Carries the
    details (``record``) that :func:`explain_pickling_failure` words for a task run."""

    def __init__(self, record: Unsendable) -> None:
        where = "in the worker" if record.direction == "pickled" else "in this process"
        super().__init__(
            f"a {record.kind or 'value'} (a {record.what}) sent back from a worker process could "
            f"not be {record.direction} {where}: {record.reason}; return plain data instead"
        )
        self.record = record


class CallNotLoaded(SerializationError):
    """Raised in a worker that could not unpickle the call it was sent."""


def _describe(value: Any, find_culprit: bool = False) -> tuple[str | None, str, str | None]:
    """(kind, type, traceback) of a worker's outcome: for one run's ``(state, log
    records, worker)``, its result or its exception; else the value itself (with
    ``find_culprit``, the item in it that does not pickle)."""
    from flowcore.states import State

    if type(value) is tuple and len(value) == 3 and isinstance(value[0], State):
        state = value[0]
        if state.exception is not None:
            return "exception", type_name(state.exception), state.traceback
        return "result", type_name(state.data), None
    return None, type_name(_culprit(value) if find_culprit else value), None


def _culprit(value: Any, depth: int = 3) -> Any:
    """The innermost item of ``value`` (looking into tuples, lists and dict values)
    that does not pickle; ``value`` itself if none of its items is to blame. Only on
    the failure path."""
    if depth and isinstance(value, (tuple, list, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            try:
                _dumps(item)
            except Exception:
                return _culprit(item, depth - 1)
    return value


class Repairable(tuple[Any, ...]):
    """The outcome of several runs (a batch) as a worker returns it: a plain tuple, that
    can also make itself sendable when some run's value cannot be pickled (issue 12.22).

    ``repair()`` returns the same outcome as a plain tuple in which every run whose
    value (or exception) does not pickle has a ``Failed`` state instead, carrying the
    :class:`~flowcore.errors.SerializationError` that names the run and the type: the
    other runs' results still travel home, so the parent never runs them again.
    :class:`SentBack` calls it only when the outcome as a whole failed to pickle (one
    pickling on the normal path). Pickled, it is the plain tuple: ``repair`` stays in
    the worker.
    """

    repair: Callable[[], tuple[Any, ...]]

    def __new__(cls, items: tuple[Any, ...], repair: Callable[[], tuple[Any, ...]]) -> Repairable:
        outcome = super().__new__(cls, items)
        outcome.repair = repair
        return outcome

    def __reduce__(self) -> tuple[Any, ...]:
        return (tuple, (tuple(self),))


def pickling_error(value: Any) -> Exception | None:
    """The error pickling ``value`` raises (as a worker sends it back), or None if it
    pickles. Costs a full pickling: for the failure path."""
    try:
        _dumps(value)
    except Exception as error:
        return error
    return None


def unsendable_error(
    task_run_name: str, value: Any, error: BaseException, *, exception: bool = False
) -> SerializationError:
    """The one-line error of a run whose result (``exception``: whose raised exception)
    ``value`` could not be pickled in its worker: names the run, the type, the cause and
    the fix, as for a run sent alone."""
    record = Unsendable("pickled", "exception" if exception else "result", type_name(value), one_line(error), None)
    return _explain_way_back(f"task run {task_run_name!r}", record)


# pickle is imported where it is used, not at module level: ``import flowcore`` loads
# this module, and only process and cluster backends (which have loaded pickle long
# before) or failure paths ever pickle here.


class SentBack:
    """A worker's return value on its way home (see the module docstring).

    Pickled in the worker by itself, into bytes that :func:`_received` unpickles in
    the parent: the value is pickled once either way, and a failure at either end is
    reported for this value alone. A :class:`Repairable` value that fails to pickle is
    repaired (its unsendable runs fail alone) before it is given up.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        import pickle

        import cloudpickle

        try:
            payload = cloudpickle.dumps(self.value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            if isinstance(self.value, Repairable):
                try:
                    repaired = self.value.repair()
                    payload = cloudpickle.dumps(repaired, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception:  # not a run's value at fault: the whole outcome fails
                    pass
                else:
                    return (_received, (payload, None, type_name(repaired), None))
            kind, what, traceback = _describe(self.value, find_culprit=True)
            return (Unsendable, ("pickled", kind, what, one_line(error), traceback))
        kind, what, traceback = _describe(self.value)
        return (_received, (payload, kind, what, traceback))


def _received(payload: bytes, kind: str | None, what: str, traceback: str | None) -> Any:
    """Unpickle a :class:`SentBack` value in the parent; never raises (it runs in the
    pool's result thread, where an error would break the pool)."""
    import pickle  # loaded already: this runs while the pool unpickles a result

    try:
        return pickle.loads(payload)
    except Exception as error:
        return Unsendable("unpickled", kind, what, one_line(error), traceback)


def send_back(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> SentBack:
    """Run ``fn(*args, **kwargs)`` in a worker; its value travels home as a
    :class:`SentBack`."""
    return SentBack(fn(*args, **kwargs))


def raise_if_unsendable(value: T) -> T:
    """``value``, or the error explaining why the worker's value did not arrive."""
    if isinstance(value, Unsendable):
        error = ResultNotSent(value)
        if value.traceback:
            error.__cause__ = RemoteTraceback(value.traceback)
        raise error
    return value


# -- files that workers may lack -----------------------------------------------------

#: module name -> absolute path of each ``.py`` file that ``flowcore run`` / ``flowcore
#: bench`` imported by path: its tasks pickle by reference to a module that only this
#: machine has. A backend whose workers may run elsewhere (a Dask scheduler at an
#: address) ships these files to them (see :func:`script_files`).
_script_files: dict[str, str] = {}


def note_script_file(module: str, path: str) -> None:
    """Record that ``module`` was imported from the file ``path`` (not from sys.path)."""
    _script_files[module] = path


def script_files() -> dict[str, str]:
    """The files recorded by :func:`note_script_file`, module name -> path."""
    return dict(_script_files)


# -- explaining ---------------------------------------------------------------------


def explain_pickling_failure(
    call: TaskCall, exc: BaseException, backend_name: str
) -> SerializationError | None:
    """A SerializationError naming what could not be pickled (or unpickled), or None
    if ``exc`` is not such a failure, or not one of this run (it was lost with a pool
    that another run's value broke)."""
    if not is_pickling_error(exc):
        return None
    where = f"task run {call.task_run_name!r}"
    for error in _chain(exc):
        if isinstance(error, ResultNotSent):
            return _explain_way_back(where, error.record)
    loading = any(
        isinstance(error, CallNotLoaded) or _CALL_NOT_LOADED in str(error) for error in _chain(exc)
    )
    if any(_RESULT_NOT_LOADED in str(error) for error in _chain(exc)) and not loading:
        return None  # some run's result broke the pool: which one is unknown here
    check = _round_trip if loading else _dumps
    try:
        parameters = call.parameters
    except TypeError:
        parameters = {f"argument {i}": v for i, v in enumerate(call.args)} | call.kwargs
    for name, value in parameters.items():
        try:
            check(value)
        except Exception as error:
            verb = "unpickled in" if loading else "pickled to send it to"
            return SerializationError(
                f"{where}: argument {name!r} (a {type_name(value)}) cannot be {verb} the "
                f"{backend_name!r} workers: {one_line(error) if loading else error}. Pass "
                "a picklable value, or create the object inside the task."
            )
    try:
        check(call.task)
    except Exception as error:
        held = _unpicklable_held_value(getattr(call.task, "fn", None), check)
        if held is not None:
            return SerializationError(
                f"{where}: the task's function uses {held}, which cannot be pickled to send "
                f"it to the {backend_name!r} workers: {error}. A function defined in a "
                "script travels with the values it uses: create the object inside the "
                "task, or define the function in a module the workers import."
            )
        return SerializationError(
            f"{where}: the task itself (its function or options) cannot be pickled "
            f"to send it to the {backend_name!r} workers: {error}"
        )
    if loading:
        if any(isinstance(error, CallNotLoaded) for error in _chain(exc)):
            return SerializationError(
                f"{where}: the call could not be unpickled in the {backend_name!r} worker: "
                f"{one_line(_root_cause(exc))}. Make sure its modules are importable there."
            )
        return None  # another run's call broke the pool; this one is only lost with it
    root = _root_cause(exc)
    return SerializationError(
        f"the result of task run {call.task_run_name!r} cannot be pickled to send it back "
        f"from the {backend_name!r} workers: {one_line(root)}; return plain data instead"
    )


def _unpicklable_held_value(fn: Any, check: Callable[[Any], None]) -> str | None:
    """``global '_lock' (a _thread.lock)`` or ``variable 'lock' (a ...)``: the first
    global or closure cell that ``fn``'s code uses and that fails ``check``, or None.

    A function pickled by value (defined in ``__main__`` or a closure) carries those
    values; naming the one at fault tells the user what to change.
    """
    import types

    while isinstance(fn, types.MethodType | staticmethod | classmethod):
        fn = fn.__func__
    if not isinstance(fn, types.FunctionType):
        return None
    candidates: list[tuple[str, Any]] = []
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
        try:
            candidates.append((f"variable {name!r}", cell.cell_contents))
        except ValueError:  # an empty cell: nothing to pickle
            continue
    codes = [fn.__code__]
    seen: set[str] = set()
    while codes:
        code = codes.pop()
        for name in code.co_names:
            if name in fn.__globals__ and name not in seen:
                seen.add(name)
                candidates.append((f"global {name!r}", fn.__globals__[name]))
        codes.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
    for label, value in candidates:
        if isinstance(value, types.ModuleType):
            continue  # pickled by reference
        try:
            check(value)
        except Exception:
            return f"{label} (a {type_name(value)})"
    return None


def explain_unsendable(task_run_name: str, exc: BaseException) -> SerializationError | None:
    """The error naming task run ``task_run_name`` for a value of it that could not make
    the trip (a :class:`ResultNotSent` that ``exc`` is or chains to), else None. For
    values fetched after their run ended (results kept on the workers)."""
    for error in _chain(exc):
        if isinstance(error, ResultNotSent):
            return _explain_way_back(f"task run {task_run_name!r}", error.record)
    return None


def _explain_way_back(where: str, record: Unsendable) -> SerializationError:
    if record.direction == "pickled":
        if record.kind == "exception":
            return SerializationError(
                f"{where} raised {record.what}, which cannot be pickled to send it back: "
                f"{record.reason}; raise an exception that holds plain data"
            )
        what = f"the result of {where}" if record.kind == "result" else f"what {where} returned"
        return SerializationError(
            # Not "or use persist_result" (issue 12.9's wording): flowcore has no such
            # option, and a persisted result is pickled too.
            f"{what} (a {record.what}) cannot be pickled to send it back: {record.reason}; "
            "return plain data instead"
        )
    if record.kind == "exception":
        return SerializationError(
            f"{where} raised {record.what}, which cannot be unpickled in the flow's process: "
            f"{record.reason}; make the exception picklable (pass every __init__ argument on "
            "to super().__init__)"
        )
    what = f"the result of {where}" if record.kind == "result" else f"what {where} returned"
    return SerializationError(
        f"{what} (a {record.what}) cannot be unpickled in the flow's process: {record.reason}; "
        "return plain data, or make the type rebuild itself when unpickled (__reduce__)"
    )


__all__ = [
    "CallNotLoaded",
    "Repairable",
    "ResultNotSent",
    "SentBack",
    "Unsendable",
    "explain_pickling_failure",
    "explain_unsendable",
    "is_pickling_error",
    "note_script_file",
    "one_line",
    "pickling_error",
    "raise_if_unsendable",
    "script_files",
    "send_back",
    "type_name",
    "unsendable_error",
]
