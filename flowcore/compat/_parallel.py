"""``Parallel`` and ``delayed`` with joblib's semantics, on flowcore backends.

A call consumes the iterable of ``delayed(fn)(*args, **kwargs)`` triples lazily,
ships them to the backend in batches (one ``backend.submit`` per batch, never one
future per item) and hands back the values in order (``return_as='list'`` or
``'generator'``) or as they complete (``'generator_unordered'``).

The calling thread drives everything: it consumes the input, sends batches while fewer
than the pre-dispatched number are out, waits, and collects, through the dispatcher's
send loop (:class:`~flowcore.dispatch.BatchSender`, here never fed from its feeder
thread). Backend callbacks only record outcomes and wake it. So the input iterator is
only ever touched by the caller, ``pre_dispatch`` items are consumed up front and one
more batch each time one comes back, exactly joblib's lazy consumption.

Batch sizes: a fixed ``batch_size``, or (``'auto'``) flowcore's
:class:`~flowcore.dispatch.BatchSizer`: single items until the workers have timed one,
then batches of about 50 ms of work, never so large that a worker idles.

Failures: the first failing call of the earliest failing batch (submission order)
wins; the rest of the work is cancelled, workers of a process pool still running this
call's batches are stopped (the journal names them; other users of the shared pool
keep theirs), and the caller gets the original exception with the worker traceback as
text in ``__cause__``. A worker that dies raises
:class:`~flowcore.errors.TerminatedWorkerError` (also joblib's and loky's class of
that name when they are installed); batches that were only lost with the pool are sent
again.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import math
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from multiprocessing import TimeoutError as MPTimeoutError
from typing import Any, Self, TypeVar

from flowcore.backend import Backend
from flowcore.compat._batch import BatchFailure, Nested, make_payload, not_a_call, run_batch
from flowcore.compat._config import (
    UNSET,
    BackendChoice,
    current_worker,
    dask_as_joblib_would,
    effective_workers,
    resolve,
    threads_choice,
)
from flowcore.dispatch import BatchSender
from flowcore.errors import RemoteTraceback

T = TypeVar("T")

_PENDING, _DONE, _FAILED, _LOST = 0, 1, 2, 3
_MAX_RESENDS = 3  # a batch lost with a pool another worker broke is sent again


_last_delayed: tuple[Any, Any] = (None, None)


def delayed(
    function: Callable[..., T],
) -> Callable[..., tuple[Callable[..., T], tuple[Any, ...], dict[str, Any]]]:
    """Capture a call for ``Parallel``: ``delayed(f)(*args, **kwargs)`` is
    ``(f, args, kwargs)``, exactly as in joblib.

    The wrapper carries ``f``'s name, docstring and ``__wrapped__``. The last one made
    is reused for the same ``f`` (``delayed(f)(i) for i in ...`` builds it once instead
    of once per item, which is most of what joblib's ``delayed`` costs).
    """
    global _last_delayed
    last_function, last_wrapper = _last_delayed
    if last_function is function:
        return last_wrapper  # type: ignore[no-any-return]

    def delayed_function(
        *args: Any, **kwargs: Any
    ) -> tuple[Callable[..., T], tuple[Any, ...], dict[str, Any]]:
        return function, args, kwargs

    with contextlib.suppress(AttributeError):  # some callables cannot be wrapped
        delayed_function = functools.wraps(function)(delayed_function)
    _last_delayed = (function, delayed_function)
    return delayed_function


def short_format_time(seconds: float) -> str:
    """joblib's duration format: `` 12.3s`` or `` 1.5min``."""
    if seconds > 60:
        return f"{seconds / 60.0:4.1f}min"
    return f" {seconds:5.1f}s"


def _verbosity_filter(index: int, verbose: int) -> bool:
    """joblib's rule: True to skip the message for batch ``index``."""
    if not verbose:
        return True
    if verbose > 10:
        return False
    if index == 0:
        return False
    scale = 0.5 * (11 - verbose) ** 2
    return int(math.sqrt((index + 1) / scale)) == int(math.sqrt(index / scale))


def _pre_dispatch_amount(pre_dispatch: Any, n_jobs: int) -> int | None:
    """Items consumed before the first result comes back; None for 'all'."""
    if pre_dispatch == "all":
        return None
    if isinstance(pre_dispatch, str):
        expression = pre_dispatch.replace("n_jobs", str(n_jobs))
        if len(expression) > 30 or not set(expression) <= set("0123456789+-*/(). "):
            raise ValueError(f"{pre_dispatch!r} is not a valid or supported arithmetic expression.")
        try:
            value = eval(expression, {"__builtins__": {}}, {})  # digits and operators only
        except (SyntaxError, ZeroDivisionError, TypeError) as exc:
            raise ValueError(
                f"{pre_dispatch!r} is not a valid or supported arithmetic expression."
            ) from exc
        return max(1, int(value))
    return max(1, int(pre_dispatch))


@dataclass(eq=False)
class _Batch:
    """One batch of a call: sent once (or again after a pool broke), settled once."""

    seq: int
    size: int
    payload: Any
    tag: str | None
    status: int = _PENDING
    values: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    lost: BaseException | None = None
    future: Future[Any] | None = None
    resends: int = 0


class _Run(BatchSender[_Batch]):
    """One call of a :class:`Parallel` on a flowcore backend: the dispatcher's send
    loop (:class:`~flowcore.dispatch.BatchSender`), driven by the caller.

    Units are batches of the caller's items (:class:`_Batch`), run by
    :func:`~flowcore.compat._batch.run_batch` (plain callables, not task runs). Only
    the caller's thread sends (:meth:`fill`, from :meth:`batches`): its items are
    pulled from the input there, lazily, while fewer than ``target`` batches are out.
    Outcomes are settled under the lock (``settles_under_lock``) and wake the caller;
    batches lost with a pool are recovered by the caller too.
    """

    settles_under_lock = True

    def __init__(
        self,
        parallel: Parallel,
        backend: Backend,
        owned: bool,
        workers: int,
        iterable: Iterable[Any],
    ) -> None:
        super().__init__(backend, workers)
        self.parallel = parallel
        self.owned = owned
        self.workers = workers
        capabilities = backend.capabilities
        self.portable = not capabilities.in_process
        choice = parallel._choice
        level = choice.nesting_level + 1
        nested_choice = threads_choice(level) if level == 1 else _sequential_choice(level)
        self.nested = Nested(
            nested_choice,
            level,
            capabilities.local_processes,
            choice.label == "MultiprocessingBackend",
        )
        # A local pool's batches are journaled under a tag, so an abort can stop them.
        local_pool = capabilities.local_processes and capabilities.stops_running
        self.tag_prefix = f"joblib{uuid.uuid4().hex[:12]}" if local_pool else None
        self.ordered = parallel.return_as != "generator_unordered"
        self.timeout = parallel.timeout
        self.changed = threading.Condition(self.lock)
        self.pending: collections.deque[_Batch] = collections.deque()  # not yet handed back
        self.completed: collections.deque[_Batch] = collections.deque()  # unordered: by completion
        self.completions = 0
        self.seq = 0
        self.consumed = 0
        self.failed: _Batch | None = None
        self.lost: list[_Batch] = []
        self.aborting = False
        self.exhausted = False
        self.fixed = None if parallel.batch_size == "auto" else int(parallel.batch_size)
        amount = _pre_dispatch_amount(parallel.pre_dispatch, workers)
        self.n_tasks = parallel.n_tasks
        if amount is None:  # 'all': consume everything now
            items = list(iterable)
            self.n_tasks = len(items)
            iterable = items
            size = self.fixed or max(1, len(items) // (8 * workers))
            self.target = max(1, -(-len(items) // size))
            self.initial_size: int | None = size
        else:
            self.target = max(1, -(-amount // (self.fixed or 1)))
            self.initial_size = None
        parallel._pre_dispatch_amount = amount or 0
        self.pre_dispatched = 0 if self.fixed is not None or amount is None else amount
        self.ready_chunks: collections.deque[list[Any]] = collections.deque()
        self.iterator: Iterator[Any] = iter(iterable)

    # -- sending (caller thread only) -------------------------------------------
    def _next_size(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.initial_size is not None:
            return self.initial_size
        if self.sizer.item_seconds is None or self.consumed < self.pre_dispatched:
            return 1  # the pre-dispatched items leave one by one, as in joblib
        waiting = self.n_tasks - self.consumed if self.n_tasks is not None else 1 << 40
        return self.sizer.next_size(max(1, waiting))

    def _next_chunk(self) -> list[Any]:
        """The items of the next batch. Without a length, look ahead ``size * workers``
        items (joblib's rule) and, at the end of the input, share them out evenly."""
        if self.ready_chunks:
            return self.ready_chunks.popleft()
        with self.lock:
            size = self._next_size()
        if size == 1 or self.n_tasks is not None:
            return list(itertools.islice(self.iterator, size))
        ahead = list(itertools.islice(self.iterator, size * self.workers))
        if len(ahead) < size * self.workers:
            size = max(1, -(-len(ahead) // (2 * self.workers)))
        for start in range(0, len(ahead), size):
            self.ready_chunks.append(ahead[start : start + size])
        return self.ready_chunks.popleft() if self.ready_chunks else []

    def next_unit(self) -> _Batch | None:
        """Caller thread only: the next batch while fewer than the target are out and
        input remains, counted in flight. Its items are pulled from the input here,
        without the lock (the input iterator is the caller's)."""
        if self.aborting or self.exhausted or self.sizer.in_flight >= self.target:
            return None
        try:
            chunk = self._next_chunk()
        except BaseException as exc:
            self._input_failed(exc)
            return None
        if not chunk:
            self.exhausted = True
            return None
        if self.n_tasks is not None and self.consumed + len(chunk) >= self.n_tasks:
            self.exhausted = True
        self.consumed += len(chunk)
        try:
            payload = make_payload(chunk)
        except (TypeError, IndexError, KeyError) as exc:  # an item is not a delayed call
            self._input_failed(not_a_call(chunk, self.consumed - len(chunk)) or exc)
            return None
        tag = f"{self.tag_prefix}-{self.seq:x}" if self.tag_prefix else None
        batch = _Batch(self.seq, len(chunk), payload, tag)
        self.seq += 1
        with self.lock:
            self.pending.append(batch)
            self.sizer.in_flight += 1
        self.parallel.n_dispatched_batches += 1
        self.parallel.n_dispatched_tasks += len(chunk)
        return batch

    def submit(self, unit: _Batch) -> Future[Any]:
        future = self.backend.submit(run_batch, unit.payload, self.nested, unit.tag, self.portable)
        unit.future = future
        return future

    def _input_failed(self, exc: BaseException) -> None:
        """The input iterator raised: that is the call's error at this position."""
        self.exhausted = True
        batch = _Batch(self.seq, 0, None, None)
        self.seq += 1
        with self.lock:
            self.pending.append(batch)
            self._fail(batch, exc)

    # -- outcomes (any thread; under the lock unless said) ------------------------
    def observe(self, unit: _Batch, outcome: Any) -> None:
        if type(outcome) is tuple:  # (values, seconds the worker was busy)
            self.sizer.observe(outcome[1], unit.size)

    def settle(self, unit: _Batch, outcome: Any) -> None:
        if type(outcome) is tuple:
            unit.values = outcome[0]
            unit.status = _DONE
            self.completions += 1
            if not self.ordered:
                self.completed.append(unit)
        elif isinstance(outcome, BatchFailure):
            error = outcome.exception
            if self.portable or error.__cause__ is None:
                error.__cause__ = RemoteTraceback(outcome.traceback)
            self._fail(unit, error)
        else:
            self._fail(unit, TypeError(f"a batch came back as {type(outcome).__name__}"))
        self.changed.notify_all()

    def settle_lost(self, unit: _Batch, exc: BaseException) -> None:
        """Cancelled, a dead worker, a pickling error: the caller recovers it."""
        unit.status = _LOST
        unit.lost = exc
        self.lost.append(unit)
        self.changed.notify_all()

    def settle_refused(self, unit: _Batch, exc: BaseException) -> None:
        """Without the lock (caller thread): the backend did not take the batch."""
        with self.lock:
            self._fail(unit, exc)

    def settle_failed(self, unit: _Batch, exc: BaseException) -> None:
        """Without the lock: handling the batch's outcome raised."""
        with self.lock:
            self._fail(unit, exc)

    def send_next(self) -> None:
        """Nothing: the caller, woken by the settle, sends the next batches."""

    def _fail(self, batch: _Batch, error: BaseException) -> None:
        """Under the lock: ``batch`` failed with ``error``; the earliest failure wins."""
        batch.status = _FAILED
        batch.error = error
        if self.failed is None or batch.seq < self.failed.seq:
            self.failed = batch
        self.aborting = True
        self.changed.notify_all()

    def _recover(self, batch: _Batch) -> None:
        """A batch whose future failed without an outcome: send it again if the pool was
        broken by another worker, else fail the call with what happened."""
        exc = batch.lost
        assert exc is not None
        if self.aborting:
            return
        if isinstance(exc, CancelledError):
            with self.lock:
                self._fail(batch, exc)
            return
        lost = self.backend.explain_failure(batch.tag or "", exc)
        if lost is not None and not lost.culprit and batch.resends < _MAX_RESENDS:
            batch.resends += 1
            batch.status = _PENDING
            batch.lost = None
            with self.lock:
                self.sizer.in_flight += 1
            self._send(batch)
            return
        from concurrent.futures import BrokenExecutor

        if lost is not None or isinstance(exc, BrokenExecutor):
            from flowcore.compat._errors import terminated_worker_error

            error: BaseException = terminated_worker_error(
                lost.message if lost is not None else str(exc), exc
            )
        else:
            error = exc
        with self.lock:
            self._fail(batch, error)

    # -- collecting (caller thread) ----------------------------------------------
    def batches(self) -> Generator[list[Any], None, None]:
        """Yield the value lists of the batches, in order or as they complete."""
        parallel = self.parallel
        waited_on: object = None
        wait_started = 0.0
        while True:
            with self.lock:
                lost, self.lost = self.lost, []
            for batch in lost:  # before new batches: they are older
                self._recover(batch)
            self.fill()
            ready: _Batch | None = None
            with self.lock:
                while True:
                    if self.failed is not None or self.lost:
                        break
                    if self.ordered:
                        while self.pending and self.pending[0].status == _DONE:
                            head = self.pending.popleft()
                            if head.size:
                                ready = head
                                break
                        if ready is not None:
                            break
                        key: object = self.pending[0] if self.pending else None
                    else:
                        if self.completed:
                            ready = self.completed.popleft()
                            break
                        key = self.completions
                    in_flight = self.sizer.in_flight
                    if in_flight == 0 and (self.exhausted or self.aborting):
                        break
                    if in_flight < self.target and not self.exhausted and not self.aborting:
                        break  # go and send more first
                    if self.timeout is not None:
                        now = time.monotonic()
                        if key != waited_on:
                            waited_on, wait_started = key, now
                        remaining = self.timeout - (now - wait_started)
                        if remaining <= 0:
                            self.aborting = True
                            raise MPTimeoutError()
                        self.changed.wait(remaining)
                    else:
                        self.changed.wait()
                failed = self.failed
            if failed is not None:
                assert failed.error is not None
                raise failed.error
            if ready is not None:
                parallel.n_completed_tasks += ready.size
                parallel._report_progress(ready.size)
                values, ready.values = ready.values, []
                yield values
                continue
            if (
                self.sizer.in_flight == 0
                and self.exhausted
                and not self.lost
                and (not self.ordered or not self.pending)
            ):
                return

    def abort(self) -> None:
        """Stop the call: cancel queued batches, stop the workers running the others."""
        with self.lock:
            self.aborting = True
            out = [b for b in self.pending if b.status == _PENDING and b.future is not None]
            out += [b for b in self.lost if b.future is not None]
        running: dict[str, Future[Any]] = {}
        for batch in out:
            future = batch.future
            assert future is not None
            if not future.cancel() and not future.done() and batch.tag is not None:
                running[batch.tag] = future
        if running:
            # A batch handed to a worker shows in its journal only once it starts:
            # keep stopping the workers that start one of ours until all are settled.
            threading.Thread(
                target=_stop_workers, args=(self.backend, running), name="flowcore-joblib-abort",
                daemon=True,
            ).start()

    def close(self) -> None:
        """Release what the call holds (an owned backend); never raises."""
        if self.owned:
            with contextlib.suppress(Exception):  # a backend's own shutdown failure
                self.backend.shutdown(wait=not self.aborting, cancel_futures=self.aborting)


def _stop_workers(backend: Backend, running: dict[str, Future[Any]], patience: float = 30.0) -> None:
    """Have the backend stop the workers running the batches ``running`` names (by
    journal tag) until every one of their futures is settled (the pool reports the
    loss at once)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        backend.stop_runs(set(running))
        if all(future.done() for future in running.values()):
            return
        time.sleep(0.01)


def _sequential_choice(level: int) -> BackendChoice:
    from flowcore.compat._config import choose

    return choose("sequential", level)


class Parallel:
    """joblib's ``Parallel`` on flowcore backends: ``Parallel(n_jobs=2)(delayed(f)(x) for x in xs)``.

    Arguments are joblib's (see its documentation) with the same meaning:

    * ``n_jobs``: workers; None takes ``parallel_config``'s value, else 1; negatives
      count from ``cpu_count()`` (-1: all); 0 and values ``int()`` rejects are errors.
    * ``backend``: joblib's names (``loky``, ``threading``, ``multiprocessing``,
      ``sequential``, ``dask``), any flowcore backend name or instance, or a joblib
      backend object; None: ``parallel_config``'s, else ``loky``.
    * ``return_as``: ``'list'``, ``'generator'`` (in order, as they come) or
      ``'generator_unordered'`` (as they complete).
    * ``verbose``: joblib's progress messages (stderr below 50, stdout from 50).
    * ``timeout``: seconds to wait for the next result; past it the call is stopped
      and ``multiprocessing.TimeoutError`` raised (not with n_jobs=1).
    * ``pre_dispatch``: items consumed before the first result (``'2 * n_jobs'``,
      an int, or ``'all'``); one batch more is consumed per batch that comes back.
    * ``batch_size``: ``'auto'`` or a positive int.
    * ``prefer`` (``'processes'``/``'threads'``, a hint) and ``require``
      (``'sharedmem'``: threads, whatever is configured).
    * ``temp_folder``, ``max_nbytes``, ``mmap_mode`` and backend keyword arguments
      are accepted (flowcore pickles arguments; it does not memory-map arrays).
    * ``progress``: flowcore's addition: True shows a rich progress bar on stderr; a
      ``rich.console.Console`` or a text file shows it there.

    Used as a context manager, the instance keeps its backend across calls. One call
    at a time: calling again while a generator from it is running raises
    ``RuntimeError``.
    """

    def __init__(
        self,
        n_jobs: Any = None,
        backend: Any = None,
        return_as: str = "list",
        verbose: Any = UNSET,
        timeout: float | None = None,
        pre_dispatch: Any = "2 * n_jobs",
        batch_size: Any = "auto",
        temp_folder: Any = UNSET,
        max_nbytes: Any = UNSET,
        mmap_mode: Any = UNSET,
        prefer: Any = UNSET,
        require: Any = UNSET,
        progress: Any = False,
        **backend_kwargs: Any,
    ) -> None:
        if return_as not in ("list", "generator", "generator_unordered"):
            raise ValueError(
                'Expected `return_as` parameter to be a string equal to "list",'
                f'"generator" or "generator_unordered", but got {return_as} instead.'
            )
        resolved = resolve(
            backend,
            n_jobs,
            prefer=prefer,
            require=require,
            verbose=verbose,
            backend_kwargs=backend_kwargs,
        )
        self._choice: BackendChoice = resolved.choice
        n = resolved.n_jobs
        if n == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        self.n_jobs: int = 1 if n is None else n
        self._n_jobs_given = n
        self.verbose = resolved.verbose
        self.timeout = timeout
        self.pre_dispatch = pre_dispatch
        if not (
            batch_size == "auto"
            or (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0)
        ):
            raise ValueError(
                f"batch_size must be 'auto' or a positive integer, got: {batch_size!r}"
            )
        self.batch_size = batch_size
        self.return_as = return_as
        self.return_generator = return_as != "list"
        self.progress = progress
        self._backend_kwargs = dict(backend_kwargs)
        config = resolved.config
        self._joblib_kwargs = {
            "temp_folder": config.get("temp_folder") if temp_folder is UNSET else temp_folder,
            "max_nbytes": config.get("max_nbytes", "1M") if max_nbytes is UNSET else max_nbytes,
            "mmap_mode": config.get("mmap_mode", "r") if mmap_mode is UNSET else mmap_mode,
        }
        self._lock = threading.Lock()
        self._running = False
        self._managed: tuple[Backend, bool] | None = None
        self._run: _Run | None = None
        self.n_tasks: int | None = None
        self.n_dispatched_batches = 0
        self.n_dispatched_tasks = 0
        self.n_completed_tasks = 0
        self._pre_dispatch_amount = 0
        self._start_time = 0.0
        self._iterating = False
        self._bar: Any = None

    # -- joblib's small public surface ---------------------------------------------
    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_jobs={self.n_jobs})"

    def _effective_n_jobs(self) -> int:
        """Workers this instance would use (joblib's private helper, kept for parity)."""
        return effective_workers(self._choice, self._n_jobs_given)

    def __enter__(self) -> Self:
        if self._choice.foreign is None:
            self._managed = self._make_backend(self._workers_for_backend())
        return self

    def __exit__(self, *exc_info: object) -> None:
        run = self._run
        if run is not None and self.return_generator:
            run.abort()
        managed, self._managed = self._managed, None
        if managed is not None and managed[1]:
            managed[0].shutdown(wait=False)

    # -- calling -----------------------------------------------------------------------
    def __call__(self, iterable: Iterable[Any]) -> Any:
        """Run the calls in ``iterable``; a list, or a generator per ``return_as``."""
        with self._lock:
            if self._running:
                message = "This Parallel instance is already running !"
                if self.return_generator:
                    message += (
                        " Before submitting new tasks, you must wait for the completion of all "
                        "the previous tasks, or clean all references to the output generator."
                    )
                raise RuntimeError(message)
            self._running = True
        try:
            return self._call(iterable)
        except BaseException:
            self._running = False
            raise

    def _call(self, iterable: Iterable[Any]) -> Any:
        self.n_tasks = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        self.n_dispatched_batches = self.n_dispatched_tasks = self.n_completed_tasks = 0
        self._start_time = time.time()
        if self._choice.foreign is not None:
            self._running = False
            return self._run_foreign(iterable)
        workers = self._effective_n_jobs()
        if workers == 0:
            raise RuntimeError(f"{self._choice.label} has no active worker.")
        if workers == 1 or self._choice.capabilities.inline:
            if self.timeout is not None:
                warnings.warn(
                    "The backend class 'SequentialBackend' does not support timeout. You have set "
                    f"'timeout={self.timeout}' in Parallel but the 'timeout' parameter will not be used.",
                    stacklevel=3,
                )
            if (
                not self.return_generator
                and not self.verbose
                and not self.progress
                and self.batch_size == "auto"
            ):
                try:
                    return [fn(*args, **kwargs) for fn, args, kwargs in iterable]
                finally:
                    self._running = False
            output = self._sequential(iterable)
        else:
            if self._managed is not None:
                backend, owned = self._managed[0], False
            else:
                backend, owned = self._make_backend(workers)
            workers = self._cluster_workers(backend, owned, workers)
            self._print(f"Using backend {self._choice.label} with {workers} concurrent workers.")
            run = _Run(self, backend, owned, workers, iterable)
            self._run = run
            if not self.return_generator:
                return self._collect(run)
            output = self._outputs(run)
        next(output)  # start: the first batches leave before this call returns
        return output if self.return_generator else list(output)

    def _collect(self, run: _Run) -> list[Any]:
        """``return_as='list'`` on a backend: the values, without a generator per item."""
        self._iterating = True
        self._start_progress()
        values: list[Any] = []
        try:
            for chunk in run.batches():
                values.extend(chunk)
        except BaseException:
            run.abort()
            raise
        finally:
            self._finish(run)
        return values

    def _finish(self, run: _Run) -> None:
        self._iterating = False
        run.close()
        self._run = None
        self._running = False
        self._stop_progress()
        self.print_progress()

    def _cluster_workers(self, backend: Backend, owned: bool, workers: int) -> int:
        """A negative ``n_jobs`` on a cluster counts from the cluster's worker threads,
        not this machine's CPUs (as joblib's Dask backend does); they are known once
        connected, so this connects. Otherwise ``workers`` unchanged."""
        n = self._n_jobs_given
        if not self._choice.capabilities.connects_to_cluster or n is None or n >= 0:
            return workers
        try:
            return max(backend.worker_count() + 1 + n, 1)
        except BaseException:
            if owned:
                with contextlib.suppress(Exception):
                    backend.shutdown(wait=False)
            raise

    def _workers_for_backend(self) -> int:
        workers = self._effective_n_jobs()
        if self._choice.capabilities.connects_to_cluster and self._n_jobs_given in (None, -1):
            instance = self._choice.instance
            if instance is not None:
                return instance.max_workers
        return max(1, workers)

    def _make_backend(self, workers: int) -> tuple[Backend, bool]:
        """The flowcore backend of a call (or of a ``with`` block) and whether we own it."""
        choice = self._choice
        if choice.instance is not None:
            return choice.instance, False
        from flowcore.selection import get_backend

        options = dict(choice.options)
        assert choice.name is not None
        if choice.name == "joblib":  # joblib's own pool: sized by n_jobs
            options.setdefault("n_jobs", workers)
        elif choice.sized_by_n_jobs:
            options.setdefault("max_workers", workers)
        if choice.name == "dask":
            dask_as_joblib_would(options)
        return get_backend(choice.name, **options), True

    def _outputs(self, run: _Run) -> Generator[Any, None, None]:
        """Values of a call on a backend, as a generator that starts at its first next()."""
        self._iterating = True
        self._start_progress()
        try:
            run.fill()  # the first batches leave when the call returns the generator
            yield None
            for chunk in run.batches():
                yield from chunk
        except BaseException:  # GeneratorExit too: a dropped generator stops its work
            run.abort()
            raise
        finally:
            self._finish(run)

    def _sequential(self, iterable: Iterable[Any]) -> Generator[Any, None, None]:
        """n_jobs=1: run in this thread, in order, ``batch_size`` items consumed at a time."""
        self._iterating = True
        self._start_progress()
        try:
            size = 1 if self.batch_size == "auto" else int(self.batch_size)
            iterator = iter(iterable)
            yield None
            while True:
                chunk = list(itertools.islice(iterator, size))
                if not chunk:
                    break
                wrong = not_a_call(chunk, self.n_dispatched_tasks)
                if wrong is not None:
                    raise wrong
                self.n_dispatched_batches += 1
                self.n_dispatched_tasks += len(chunk)
                for fn, args, kwargs in chunk:
                    value = fn(*args, **kwargs)
                    self.n_completed_tasks += 1
                    self._report_progress(1)
                    yield value
        finally:
            self._iterating = False
            self._running = False
            self._stop_progress()
            self.print_progress()

    def _run_foreign(self, iterable: Iterable[Any]) -> Any:
        """A joblib backend flowcore does not implement (Ray, Spark, a custom class): run
        the call through ``joblib.Parallel`` with that backend, unchanged."""
        from flowcore.compat._errors import require_joblib

        joblib = require_joblib("a custom joblib backend")
        parallel = joblib.Parallel(
            n_jobs=self._n_jobs_given,
            backend=self._choice.foreign,
            return_as=self.return_as,
            verbose=self.verbose,
            timeout=self.timeout,
            pre_dispatch=self.pre_dispatch,
            batch_size=self.batch_size,
            **self._backend_kwargs,
        )
        return parallel(iterable)

    # -- progress --------------------------------------------------------------------
    def _print(self, message: str) -> None:
        """joblib's output: ``[Parallel(n_jobs=2)]: message`` on stderr, stdout from 50."""
        if not self.verbose:
            return
        stream = sys.stderr if self.verbose < 50 else sys.stdout
        stream.write(f"[{self}]: {message}\n")

    def _start_progress(self) -> None:
        if self.progress:
            from flowcore.compat._progress import ProgressBar

            self._bar = ProgressBar(self.progress, total=self.n_tasks, description=repr(self))

    def _stop_progress(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.stop()

    def _report_progress(self, items: int) -> None:
        if self._bar is not None:
            self._bar.advance(items)
        if self.verbose:
            self.print_progress()

    def print_progress(self) -> None:
        """joblib's progress messages, at joblib's frequency for ``verbose``."""
        if not self.verbose:
            return
        width = math.floor(math.log10(self.n_tasks)) + 1 if self.n_tasks else 3
        elapsed = time.time() - self._start_time
        index = self.n_completed_tasks
        if index == self.n_dispatched_tasks and not self._iterating:
            self._print(
                f"Done {index:{width}d} out of {index:{width}d} | elapsed: {short_format_time(elapsed)} finished"
            )
            return
        run = self._run
        if run is not None and not run.exhausted:
            if _verbosity_filter(self.n_dispatched_batches, self.verbose):
                return
            elapsed_text = f"| elapsed: {short_format_time(elapsed)}"
            if self.n_tasks is not None:
                self._print(f"Done {index:{width}d} out of {self.n_tasks:{width}d} {elapsed_text}")
            else:
                pad = " " * (len("out of ") + width - len("tasks"))
                self._print(f"Done {index:{width}d} tasks {pad}{elapsed_text}")
            return
        total = self.n_dispatched_tasks
        if index != 0:
            cursor = total - index + 1 - self._pre_dispatch_amount
            frequency = (total // self.verbose) + 1
            if index + 1 == total or cursor % frequency:
                return
        remaining = (elapsed / max(index, 1)) * (total - index)
        self._print(
            f"Done {index:{width}d} out of {total:{width}d} | elapsed: {short_format_time(elapsed)} "
            f"remaining: {short_format_time(remaining)}"
        )


def in_worker() -> bool:
    """True while a batch of a shim call runs in this thread (a nested call would nest)."""
    return current_worker() is not None


__all__ = ["Parallel", "delayed", "in_worker", "short_format_time"]
