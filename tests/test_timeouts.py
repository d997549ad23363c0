"""flowcore.timeouts.Deadline: interrupts its body, nests, and leaves nothing behind."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from flowcore.timeouts import Deadline, DeadlineExceeded

# Generous upper bound that only proves "did not hang" (2 noisy shared cores).
NO_HANG = 15.0


def _busy(seconds: float) -> None:
    """A pure-Python loop (no blocking call) that runs for ``seconds``."""
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        count += 1


def _in_thread(body: Callable[[], Any]) -> Any:
    """Run ``body`` in a fresh non-main thread; return its result or raise its error."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = body()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=target)
    worker.start()
    worker.join(NO_HANG * 2)
    assert not worker.is_alive(), "the deadline did not stop the thread"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _require_main_thread() -> None:
    assert threading.current_thread() is threading.main_thread()


# -- main thread (signal timer) ------------------------------------------------------------


def test_deadline_interrupts_a_long_sleep_in_the_main_thread() -> None:
    _require_main_thread()
    deadline = Deadline(0.2)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info, deadline:
        time.sleep(60)
    assert time.monotonic() - started < NO_HANG
    assert deadline.owns(info.value)


def test_deadline_is_not_an_exception_a_body_can_swallow() -> None:
    swallowed = []
    with pytest.raises(DeadlineExceeded), Deadline(0.2):
        try:
            time.sleep(60)
        except Exception:
            swallowed.append(True)
    assert swallowed == []


def test_nested_main_thread_outer_short_inner_long_outer_owns() -> None:
    _require_main_thread()
    outer, inner = Deadline(0.2), Deadline(60)
    inner_saw: list[bool] = []
    with pytest.raises(DeadlineExceeded) as info, outer:
        try:
            with inner:
                time.sleep(60)
        except DeadlineExceeded as exc:
            inner_saw.append(inner.owns(exc))
            raise
    assert inner_saw == [False]
    assert outer.owns(info.value)


def test_nested_main_thread_inner_short_outer_long_inner_owns() -> None:
    _require_main_thread()
    outer, inner = Deadline(60), Deadline(0.2)
    with outer:
        with pytest.raises(DeadlineExceeded) as info, inner:
            time.sleep(60)
        assert inner.owns(info.value)
        assert not outer.owns(info.value)
        # The outer deadline is still armed and has not fired: the block goes on.
        time.sleep(0.05)
    assert not outer.fired


def test_outer_deadline_still_fires_after_an_inner_one_finished_early() -> None:
    _require_main_thread()
    outer = Deadline(0.4)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info, outer:
        with Deadline(30):
            pass  # finished early: must not disarm the outer deadline
        time.sleep(60)
    assert time.monotonic() - started < NO_HANG
    assert outer.owns(info.value)


def test_finished_deadlines_leave_nothing_pending_in_the_main_thread() -> None:
    _require_main_thread()
    values = []
    for i in range(200):
        with Deadline(0.05):
            values.append(i)
    assert values == list(range(200))
    # Sleep well past every deadline: no alarm may go off now.
    time.sleep(0.3)


# -- worker threads (watchdog) ----------------------------------------------------------------


def test_deadline_interrupts_a_python_loop_in_a_worker_thread() -> None:
    def body() -> tuple[bool, float]:
        deadline = Deadline(0.2)
        started = time.monotonic()
        try:
            with deadline:
                _busy(60)
        except DeadlineExceeded as exc:
            return deadline.owns(exc), time.monotonic() - started
        return False, time.monotonic() - started

    owned, elapsed = _in_thread(body)
    assert owned
    assert elapsed < NO_HANG


def test_nested_worker_thread_outer_short_inner_long_outer_owns() -> None:
    def body() -> tuple[list[bool], bool]:
        outer, inner = Deadline(0.2), Deadline(60)
        inner_saw: list[bool] = []
        try:
            with outer:
                try:
                    with inner:
                        _busy(60)
                except DeadlineExceeded as exc:
                    inner_saw.append(inner.owns(exc))
                    raise
        except DeadlineExceeded as exc:
            return inner_saw, outer.owns(exc)
        return inner_saw, False

    inner_saw, outer_owned = _in_thread(body)
    assert inner_saw == [False]
    assert outer_owned


def test_nested_worker_thread_inner_short_outer_long_inner_owns() -> None:
    def body() -> tuple[bool, bool, str]:
        outer, inner = Deadline(60), Deadline(0.2)
        with outer:
            try:
                with inner:
                    _busy(60)
            except DeadlineExceeded as exc:
                owned = (inner.owns(exc), outer.owns(exc))
            _busy(0.05)  # the outer block continues undisturbed
            return owned[0], owned[1], "finished"

    inner_owned, outer_owned, finished = _in_thread(body)
    assert inner_owned and not outer_owned
    assert finished == "finished"


def test_finished_deadlines_leave_nothing_pending_in_a_worker_thread() -> None:
    def body() -> tuple[int, int]:
        fired_inside = 0
        for _ in range(300):
            deadline = Deadline(0.05)
            try:
                with deadline:
                    sum(range(50))
            except DeadlineExceeded as exc:
                # Only acceptable if the machine stalled past the deadline inside the block.
                assert deadline.owns(exc)
                fired_inside += 1
        # Well past every deadline: a leftover asynchronous exception would surface here.
        ticks = 0
        end = time.monotonic() + 0.4
        while time.monotonic() < end:
            time.sleep(0.005)
            ticks += 1
        return fired_inside, ticks

    fired_inside, ticks = _in_thread(body)
    assert ticks > 0
    assert fired_inside < 300


def test_deadlines_in_several_threads_fire_only_where_they_expire() -> None:
    results: dict[str, Any] = {}

    def short() -> None:
        try:
            with Deadline(0.2):
                _busy(60)
            results["short"] = "not interrupted"
        except DeadlineExceeded:
            results["short"] = "interrupted"

    def long() -> None:
        try:
            with Deadline(30):
                _busy(0.6)
            results["long"] = "finished"
        except DeadlineExceeded:
            results["long"] = "interrupted"

    threads = [threading.Thread(target=short), threading.Thread(target=long)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(NO_HANG * 2)
    assert not any(t.is_alive() for t in threads)
    assert results == {"short": "interrupted", "long": "finished"}


def _stress_until_misattributed(seconds: float) -> bool:
    """Race deadlines against bodies of the same length; after each batch, check that a
    deadline that clearly fires is still recognised as the one that fired.

    Returns True when every check passed, False as soon as one did not.
    """
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(200):
            racing = Deadline(0.0005)
            try:
                with racing:
                    _busy(0.0005)
            except DeadlineExceeded as exc:
                if not racing.owns(exc):
                    return False
        probe = Deadline(0.01)
        try:
            with probe:
                _busy(NO_HANG)
        except DeadlineExceeded as exc:
            if not probe.owns(exc):
                return False
        else:  # pragma: no cover - the probe must fire
            return False
    return True


def test_deadlines_racing_their_bodies_leave_later_deadlines_intact() -> None:
    """A deadline expiring just as its body finishes (the exception may surface inside
    ``__exit__``) must not leave anything behind that confuses later deadlines' owns()."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so the race shows up quickly
    try:
        outcomes: list[bool] = []
        workers = [
            threading.Thread(target=lambda: outcomes.append(_stress_until_misattributed(1.5)))
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(NO_HANG * 2)
    finally:
        sys.setswitchinterval(previous)
    assert not any(w.is_alive() for w in workers)
    assert outcomes == [True, True]


def test_main_thread_deadline_leaves_a_foreign_sigalrm_handler_alone() -> None:
    _require_main_thread()
    alarms: list[int] = []

    def foreign_handler(signum: int, frame: Any) -> None:
        alarms.append(signum)

    previous = signal.signal(signal.SIGALRM, foreign_handler)
    try:
        deadline = Deadline(0.2)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info, deadline:
            _busy(60)  # a Python loop: interruptible without the signal
        assert time.monotonic() - started < NO_HANG
        assert deadline.owns(info.value)
        assert signal.getsignal(signal.SIGALRM) is foreign_handler
        assert alarms == []
    finally:
        signal.signal(signal.SIGALRM, previous)


# -- an interruption that lands where Python cannot raise it ------------------------------------


class _DropInGcCallback:
    """The first garbage collection after ``with`` runs a gc callback that spins until
    ``deadline`` has fired: its interruption lands in the callback, where CPython
    reports it as unraisable and drops it. Unraisable exceptions are recorded."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.unraisable: list[BaseException | None] = []
        self.armed = True
        self.entered = False
        self.completed = False
        self._previous_hook = sys.unraisablehook

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase != "stop" or not self.armed:
            return
        self.armed = False
        self.entered = True
        end = time.monotonic() + NO_HANG
        while time.monotonic() < end and not self.deadline.fired:
            pass
        _busy(0.5)  # the interruption surfaces here, at the latest
        self.completed = True

    def __enter__(self) -> _DropInGcCallback:
        import gc

        sys.unraisablehook = lambda hook_args: self.unraisable.append(hook_args.exc_value)
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        import gc

        gc.callbacks.remove(self._callback)
        sys.unraisablehook = self._previous_hook


def _collect_then_work() -> None:
    """A garbage collection (the callback above drops the interruption), then a long
    pure-Python loop where a second delivery surfaces."""
    import gc

    gc.collect(0)
    _busy(NO_HANG)


def test_a_watchdog_interruption_dropped_in_a_gc_callback_is_delivered_again() -> None:
    """CI failure, 609b6e5: the watchdog's exception surfaced inside a gc callback
    (hypothesis installs one), CPython reported it as unraisable and dropped it, and the
    body ran on past its deadline."""

    def body() -> tuple[bool, float, _DropInGcCallback]:
        deadline = Deadline(0.2)
        started = time.monotonic()
        with _DropInGcCallback(deadline) as dropper:
            try:
                with deadline:
                    _collect_then_work()
            except DeadlineExceeded as exc:
                return deadline.owns(exc), time.monotonic() - started, dropper
        return False, time.monotonic() - started, dropper

    owned, elapsed, dropper = _in_thread(body)
    assert dropper.entered and not dropper.completed  # it was dropped in the callback
    assert owned
    assert elapsed < NO_HANG / 2
    assert dropper.unraisable == []


def test_a_signal_interruption_dropped_in_a_gc_callback_is_delivered_again() -> None:
    _require_main_thread()
    deadline = Deadline(0.2)
    started = time.monotonic()
    with _DropInGcCallback(deadline) as dropper, pytest.raises(DeadlineExceeded) as info, deadline:
        _collect_then_work()
    assert dropper.entered and not dropper.completed
    assert deadline.owns(info.value)
    assert time.monotonic() - started < NO_HANG / 2
    assert dropper.unraisable == []


@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_an_interruption_dropped_as_the_body_finishes_is_raised_at_its_end(where: str) -> None:
    """Dropped in a gc callback, then the body ends before a second delivery: the block
    still ends with the deadline's exception (its time was up)."""

    def body() -> tuple[bool, _DropInGcCallback]:
        import gc

        deadline = Deadline(0.1)
        with _DropInGcCallback(deadline) as dropper:
            try:
                with deadline:
                    gc.collect(0)
            except DeadlineExceeded as exc:
                return deadline.owns(exc), dropper
        return False, dropper

    owned, dropper = body() if where == "main thread" else _in_thread(body)
    assert dropper.entered and not dropper.completed
    assert owned
