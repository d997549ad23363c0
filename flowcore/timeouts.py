"""Deadlines for code running in this process (inline and thread backends).

``with Deadline(seconds) as d: body()`` interrupts ``body`` once ``seconds`` have
passed by raising :class:`DeadlineExceeded` inside it; the caller catches it and asks
``d.owns(exc)`` whether it was this deadline that fired (deadlines nest).
:func:`call_with_timeout` wraps that pattern.

Two mechanisms, chosen per deadline:

* In the main thread, where SIGALRM is free (not handled by someone else), a real
  timer signal: it interrupts blocking calls such as ``time.sleep`` too.
* Elsewhere, a watchdog thread raises the exception asynchronously in the target
  thread (``PyThreadState_SetAsyncExc``). It takes effect at the next Python bytecode,
  so a call blocked inside C code ends when that call returns. Process backends stop
  a timed-out task by ending its worker instead.

Ownership is by identity, not by position on a stack: a signal raises an instance
that names its deadline, and each watchdog deadline injects its own exception class
(which names it too). So an exception that surfaces at an awkward moment (inside
``__exit__``) can never be mistaken for another deadline's.

An interruption can land where Python cannot raise it: in a gc callback, a
``__del__`` method or a weakref callback, CPython reports it as unraisable and drops
it. A hook on :data:`sys.unraisablehook` (installed when a deadline first fires, in
front of whatever hook is there) catches a live deadline's dropped exception and
delivers it again in the same thread, so the body is still interrupted; anything else
goes on to the previous hook. A deadline whose interruption was dropped and whose
body then finished raises at the end of the block, as its time was up.

``DeadlineExceeded`` derives from ``BaseException`` so that a task's ``except
Exception`` cannot swallow it; ``finally`` blocks and context managers still run.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, Self, TypeVar

from flowcore.errors import TaskTimeoutError

T = TypeVar("T")


class DeadlineExceeded(BaseException):
    """Raised inside code whose deadline passed. Internal: converted to TaskTimeoutError.

    ``deadline`` names the deadline that fired (an attribute of the instance for a
    signal, of the class a watchdog deadline injects).
    """

    deadline: Deadline | None = None


def call_with_timeout(
    seconds: float,
    what: str,
    fn: Callable[..., T],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    error: TaskTimeoutError | None = None,
) -> T:
    """``fn(*args, **kwargs)``, interrupted after ``seconds``.

    When this deadline fires, raises ``error`` if given, else a
    :class:`~flowcore.errors.TaskTimeoutError` ("<what> exceeded its timeout of N s").
    The expiry of an enclosing deadline passes through unchanged.
    """
    deadline = Deadline(seconds)
    try:
        with deadline:
            return fn(*args, **(kwargs or {}))
    except DeadlineExceeded as exc:
        if deadline.owns(exc):
            raise (
                error
                if error is not None
                else TaskTimeoutError(f"{what} exceeded its timeout of {seconds:g} s")
            ) from None
        raise


class _ThreadStack(threading.local):
    def __init__(self) -> None:
        self.scopes: list[Deadline] = []


_stack = _ThreadStack()


class Deadline:
    """A context manager that interrupts its body after ``seconds``.

    Use :meth:`owns` on a caught :class:`DeadlineExceeded` to know whether this
    deadline fired (rather than an enclosing one); re-raise it when it does not.
    """

    __slots__ = (
        "_exc_type",
        "_lock",
        "_retry",
        "_signal_mode",
        "_thread_id",
        "done",
        "expires_at",
        "fired",
        "seconds",
    )

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires_at = 0.0
        self.fired = False
        self.done = False
        self._lock = threading.RLock()  # re-entered by _deliver_again from a gc callback in __exit__
        self._thread_id = 0
        self._signal_mode = False
        self._retry = False
        self._exc_type: type[DeadlineExceeded] | None = None

    def owns(self, exc: BaseException) -> bool:
        """True when ``exc`` was raised because this deadline passed."""
        if not isinstance(exc, DeadlineExceeded):
            return False
        return exc.deadline is self

    def _exception(self) -> DeadlineExceeded:
        exc = DeadlineExceeded()
        exc.deadline = self
        return exc

    def __enter__(self) -> Self:
        self.expires_at = time.monotonic() + self.seconds
        self._thread_id = threading.get_ident()
        scopes = _stack.scopes
        # A fired deadline whose exception surfaced inside its own __exit__ may have
        # missed its removal; nothing can still be inside it once new work starts.
        scopes[:] = [s for s in scopes if not (s.fired or s.done)]
        scopes.append(self)
        if _signal_timer_available():
            self._signal_mode = True
            _arm_signal_timer()
        else:
            # Its own exception class: ownership survives any timing of the delivery.
            self._exc_type = type(
                "DeadlineExceeded", (DeadlineExceeded,), {"__module__": __name__, "deadline": self}
            )
            _watchdog().add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self.done = True
            # Fired, but its exception did not end the body: not surfaced yet, or
            # dropped where it could not be raised (see the module's docstring).
            undelivered = self.fired and (exc is None or not self.owns(exc))
            if undelivered and not self._signal_mode:
                # Withdraw it so that it cannot go off later, outside this block.
                _set_async_exc(self._thread_id, None)
            pending = undelivered and exc_type is None  # the body had finished: time is up
        scopes = _stack.scopes
        if self in scopes:
            scopes.remove(self)
        if self._signal_mode:
            _arm_signal_timer()
        if pending:
            raise self._exception()

    def _deliver_again(self) -> bool:
        """Called in the thread whose interruption CPython dropped: deliver it again.

        Scheduled a moment later (``_REDELIVERY_DELAY``), not raised from here: any
        call made here would see it pending and raise it inside the hook, where it is
        dropped again. False when this deadline is over or belongs to another thread
        (the drop is then nothing of ours to undo).
        """
        if self._thread_id != threading.get_ident():
            return False
        with self._lock:
            live = not self.done
            if live:
                self.expires_at = time.monotonic() + _REDELIVERY_DELAY
                if self._signal_mode:
                    self._retry = True
                    _arm_signal_timer()
                else:
                    _watchdog().add(self)
        return live


#: How long after a dropped interruption it is delivered again: long enough for the
#: code that dropped it (the unraisable hook, a gc callback) to have returned.
_REDELIVERY_DELAY = 0.001


class _UnraisableHook:
    """``sys.unraisablehook`` in front of ``previous``: a live deadline's dropped
    interruption is delivered again instead of being reported."""

    def __init__(self, previous: Callable[[Any], object]) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        exc = unraisable.exc_value
        scope = exc.deadline if isinstance(exc, DeadlineExceeded) else None
        if scope is not None and scope._deliver_again():
            return
        self.previous(unraisable)


def _catch_dropped_interruptions() -> None:
    """Put the hook in front of the current ``sys.unraisablehook`` unless it is there."""
    import sys

    if not isinstance(sys.unraisablehook, _UnraisableHook):
        sys.unraisablehook = _UnraisableHook(sys.unraisablehook)


# -- waiting under a deadline -----------------------------------------------------

#: How often a wait re-checks once a watchdog deadline has fired but its exception has
#: not been delivered yet (it is delivered when the thread next runs Python code).
_DELIVERY_POLL = 0.01


def wake_for_deadlines(wait: Callable[[float | None], bool], timeout: float | None) -> bool:
    """``wait(timeout)``, but woken for this thread's deadlines.

    ``wait(seconds)`` blocks up to ``seconds`` (None: no limit) and returns True once
    what it waits for has happened: a lock acquire, a condition's ``wait_for``. Such
    a call blocks in C, where a watchdog deadline's exception cannot surface until it
    returns, so a flow timing out in a non-main thread while it waits on a future
    would wait for the task. With watchdog deadlines open in this thread, the wait is
    cut into slices that end at the nearest one: its exception is then raised here, on
    time. Without (the common case, and the main thread, where the timer signal
    interrupts the wait) this is just ``wait(timeout)``.
    """
    if not _stack.scopes:
        return wait(timeout)
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        now = time.monotonic()
        step = _until_next_deadline(now)
        remaining = None if end is None else max(0.0, end - now)
        if step is None:
            return wait(remaining)
        if wait(step if remaining is None else min(step, remaining)):
            return True
        if end is not None and time.monotonic() >= end:
            return False


def _until_next_deadline(now: float) -> float | None:
    """Seconds until the nearest watchdog deadline of this thread fires (a short poll
    once it has fired), or None when it has none."""
    live = [s for s in _stack.scopes if not s._signal_mode and not s.done]
    if not live:
        return None
    if any(s.fired for s in live):
        return _DELIVERY_POLL
    return max(min(s.expires_at for s in live) - now, 0.0) + _DELIVERY_POLL / 10


# -- signal mode (main thread) --------------------------------------------------

# ``signal`` (and the enums it builds) is imported by the functions below, on the first
# deadline: ``import flowcore`` does not need it.


def _timer_signal_here() -> bool:
    """True in the main thread, on a platform with a timer signal (SIGALRM, setitimer)."""
    import signal

    return (
        hasattr(signal, "setitimer")
        and hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
    )


def interrupts_blocking_calls() -> bool:
    """True when a deadline set in this thread can interrupt blocking calls (``time.sleep``).

    That is the main thread, with SIGALRM unused by anyone else.
    """
    import signal

    if not _timer_signal_here():
        return False
    return signal.getsignal(signal.SIGALRM) in (_on_alarm, signal.SIG_DFL, None)


def _signal_timer_available() -> bool:
    import signal

    if not _timer_signal_here():
        return False
    try:
        current = signal.getsignal(signal.SIGALRM)
    except (ValueError, OSError):  # pragma: no cover - e.g. embedded interpreters
        return False
    if current is _on_alarm:
        return True
    if current in (signal.SIG_DFL, None):
        signal.signal(signal.SIGALRM, _on_alarm)
        return True
    return False  # someone else uses SIGALRM: leave it alone


def _arm_signal_timer() -> None:
    import signal

    live = [s for s in _stack.scopes if s._signal_mode and _signal_due(s)]
    if not live:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return
    remaining = min(s.expires_at for s in live) - time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-4))


def _signal_due(scope: Deadline) -> bool:
    """True while a signal deadline is still to go off: not fired, or dropped."""
    return not scope.done and (not scope.fired or scope._retry)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    now = time.monotonic()
    for scope in _stack.scopes:  # outermost first
        if scope._signal_mode and _signal_due(scope) and scope.expires_at <= now:
            scope.fired = True
            scope._retry = False
            _catch_dropped_interruptions()
            _arm_signal_timer()
            raise scope._exception()
    _arm_signal_timer()


# -- watchdog mode (any thread) ------------------------------------------------


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


class _Watchdog:
    """One daemon thread that fires the deadlines of non-main threads."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="flowcore-deadlines", daemon=True)
        self._thread.start()

    def add(self, scope: Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (scope.expires_at, next(self._counter), scope))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)  # finished in time: forget it
                if not self._heap:
                    self._cond.wait()
                    continue
                expires_at, _, scope = self._heap[0]
                delay = expires_at - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            with scope._lock:
                if not scope.done:
                    scope.fired = True
                    _catch_dropped_interruptions()
                    _set_async_exc(scope._thread_id, scope._exc_type)


_watchdog_instance: _Watchdog | None = None
_watchdog_lock = threading.Lock()


def _watchdog() -> _Watchdog:
    global _watchdog_instance
    with _watchdog_lock:
        if _watchdog_instance is None:
            _watchdog_instance = _Watchdog()
        return _watchdog_instance


__all__ = [
    "Deadline",
    "DeadlineExceeded",
    "call_with_timeout",
    "interrupts_blocking_calls",
    "wake_for_deadlines",
]
