"""The ``dask`` backend: tasks run on a Dask distributed cluster.

Three ways to get a cluster, chosen by the options:

* none: a ``distributed.LocalCluster`` of worker *processes* (one thread each, as
  many as usable CPUs or ``max_workers``) is started on the first submit and closed
  by :meth:`DaskBackend.shutdown` -- which the flow run or ``use_backend`` block that
  created the backend calls when it ends. Its dashboard listens on 127.0.0.1; the
  link is logged at INFO by ``flowcore.backends.dask``.
* ``address="tcp://host:8786"``: a ``distributed.Client`` connects to a running
  scheduler on the first submit (``connect_timeout`` seconds at most, else
  :class:`~flowcore.errors.BackendConnectionError`); shutdown closes that client
  only, never the scheduler or its workers. ``security=`` (a
  ``distributed.Security``) or the ``tls_*`` options secure the connection.
* ``client=``: a ready ``distributed.Client``; flowcore never closes it.

The backend only executes callables, like every backend: retries, timeouts, states
and batching of tiny tasks are flowcore's (the core batches for ``CLUSTER``
backends). Each call travels as one Dask task submitted with ``pure=False`` (Dask
would otherwise deduplicate a retry or an impure call) and is pickled with
cloudpickle, so closures and functions from ``__main__`` work. As on the other process
backends, a value that cannot make the trip fails its own run with a
SerializationError (issue 12.15): the call travels as bytes that the worker unpickles
(:class:`DaskCall`), values come back as :class:`~flowcore.serialization.SentBack`.

Native futures (capability ``remote_results``): a result stays on the worker that
computed it; a second, tiny Dask task sends back its light copy (the state, logs and
small values -- at most :data:`flowcore.backends._native.INLINE_LIMIT` bytes pickled -- come
back at once). A downstream task that takes the future as an argument gets the
upstream's Dask future in its task graph, so the data moves between workers only;
``future.result()`` fetches a kept value on first use (once per batch); one that does not
unpickle here raises a SerializationError naming the run and its type. A worker that
dies while holding a kept result makes Dask recompute it from its lineage (its task
runs again) when it is needed. Before closing a client it made, the backend brings
home every kept result that a future still refers to. Maps (``task.map``) still bring
their results back as they finish.

Worker deaths: a Dask task whose worker died raises ``distributed.KilledWorker``
once the scheduler's ``allowed-failures`` budget is spent. The cluster this backend
starts has a budget of 0, so the loss is reported at once and flowcore's retry
policy alone decides: the run that was executing in the dead worker ends
``Crashed`` for that attempt (retried if its retries allow); runs that were only
queued on it, or batched with the culprit, are resubmitted without counting an
attempt. Which run was executing is read from the worker journal
(``flowcore.backends._supervision.journal``) that each worker process keeps: the workers of the local
cluster journal into this process's journal directory (so a flow whose body fails
stops its running tasks by killing just their workers, as on the other process
backends), other workers into a per-user directory under their temp dir, read from
here when the worker runs on this machine. On a remote machine the journal cannot be
read from here: every run of the lost Dask task is then counted as crashed, and a
remote scheduler keeps its own ``allowed-failures`` (default 3), so Dask itself
re-runs a task up to that many times before reporting it.

A cluster left without workers would keep every run waiting, silently: while runs
wait, the backend asks the scheduler for its workers; with none it logs a WARNING at
once, and after ``no_workers_timeout`` seconds the waiting runs end ``Crashed``
(:class:`NoWorkersError`). Timeouts: a worker thread's timer cannot stop a call
blocked in C, so the parent's watch (``flowcore.backends._supervision.hard_timeouts``) kills a worker
of this machine whose run is past its deadline and a grace period (see
:meth:`DaskBackend.deadline_journals`); its nanny restarts it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from flowcore.backend import (
    BackendKind,
    BackendSpec,
    Capabilities,
    WorkerLost,
    usable_cpu_count,
)
from flowcore.errors import BackendConnectionError, BackendShutdownError
from flowcore.hookspecs import hookimpl
from flowcore.serialization import raise_if_unsendable

from ._native import NativeHandle, adopt_result, refer_to_kept, run_call_native
from ._supervision.journaled import JournaledWorkers

T = TypeVar("T")

logger = logging.getLogger("flowcore.backends.dask")

DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds
#: seconds that runs wait on a cluster without a single worker before they end Crashed
DEFAULT_NO_WORKERS_TIMEOUT = 60.0
#: how often the backend asks the scheduler how many workers it has, while runs wait
NO_WORKERS_POLL_SECONDS = 0.5
#: the local cluster without workers for less than this is only restarting one
LOCAL_RESTART_SECONDS = 5.0
DEFAULT_DASHBOARD_ADDRESS = "127.0.0.1:0"  # a free port on loopback: never clashes
#: A run lost with a worker without being its culprit is resubmitted at most this
#: many times; then the loss counts as a crash (a run that kills its worker before
#: the journal sees it must not be resubmitted forever).
MAX_UNCOUNTED_LOSSES = 3
_TLS_OPTIONS = ("tls_ca_file", "tls_client_cert", "tls_client_key")


# -- in the worker ----------------------------------------------------------------------


class DaskCall:
    """One backend call as it travels to a Dask worker: ``fn(*args, **kwargs)``,
    pickled here (with cloudpickle) into bytes that the worker unpickles itself.

    Opaque bytes on purpose: Dask scans lists, tuples and dicts among task arguments
    for futures and keys, which a large batch of arguments would pay for; keyword
    names such as ``key`` or ``pure`` would clash with ``Client.submit``; and the
    scheduler unpickles the task graph, where an argument that pickles but fails to
    unpickle (issue 12.15) would be rejected with Dask's "Error during
    deserialization of the task graph" instead of failing its own run. Here it fails
    on the worker with :class:`~flowcore.serialization.CallNotLoaded`, which the core
    explains, naming the argument. Raises the pickling error when the call does not
    pickle (in :meth:`DaskBackend.submit`, which hands it to the core).
    """

    __slots__ = ("buffers", "payload")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        import cloudpickle

        # Protocol 5 with out-of-band buffers: Dask sends the buffers of large arrays
        # as frames of their own, without copying them into the payload.
        self.buffers: list[Any] = []
        self.payload = cloudpickle.dumps((fn, args, kwargs), protocol=5, buffer_callback=self.buffers.append)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        if isinstance(protocol, int) and protocol >= 5:
            return (_call_from_payload, (self.payload, self.buffers))
        # Dask's scheduler pickles with protocol 4, which cannot hold a PickleBuffer:
        # copies, writeable where the original was (a bytearray)
        views = [memoryview(buffer) for buffer in self.buffers]
        copies = [view.tobytes() if view.readonly else bytearray(view) for view in views]
        return (_call_from_payload, (self.payload, copies))

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__reduce_ex__(None)

    def load(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """``(fn, args, kwargs)``, unpickled in the worker; raises CallNotLoaded."""
        import pickle

        from flowcore.serialization import CallNotLoaded, one_line

        try:
            fn, args, kwargs = pickle.loads(self.payload, buffers=self.buffers)
        except Exception as error:
            raise CallNotLoaded(
                f"the call could not be unpickled in the Dask worker: {one_line(error)}"
            ) from None  # the traceback would only show this function
        return fn, args, kwargs


def _call_from_payload(payload: bytes, buffers: list[Any]) -> DaskCall:
    import pickle

    call = DaskCall.__new__(DaskCall)
    call.payload = payload
    # Unpickled as memoryviews: as PickleBuffers again, a call that the scheduler
    # passes on to a worker keeps them out of band (and writeable).
    call.buffers = [pickle.PickleBuffer(buffer) for buffer in buffers]
    return call


def execute(call: DaskCall, journal_directory: str | None = None, refs: dict[str, Any] | None = None) -> Any:
    """Run ``call`` in a Dask worker, journaling which task run this process executes
    (into ``journal_directory``, or the per-user directory of this machine). With
    ``refs`` (upstream results, resolved by Dask on this worker from the futures the
    parent passed), the function is called with them as keyword ``refs``. Returns the
    value as it is: for a result that stays on the workers."""
    if not _journal_opened:
        open_worker_journal(journal_directory)
    fn, args, kwargs = call.load()
    if refs is not None:
        return fn(*args, refs=refs, **kwargs)
    return fn(*args, **kwargs)


def execute_and_send_back(call: DaskCall, journal_directory: str | None = None) -> Any:
    """:func:`execute`, for a value that travels to the flow's process: it goes as a
    :class:`~flowcore.serialization.SentBack`, so that a value that does not pickle
    here, or does not unpickle there, fails its own run instead of raising Dask's own
    deserialization error in the client (issue 12.15)."""
    from flowcore.serialization import SentBack

    return SentBack(execute(call, journal_directory))


def light_copy_sent_back(full: Any) -> Any:
    """The light copy of a result kept on this worker (:func:`flowcore.backends._native.light_copy`),
    on its way to the flow's process as a :class:`~flowcore.serialization.SentBack`."""
    from flowcore.serialization import SentBack

    from ._native import light_copy

    return SentBack(light_copy(full))


def kept_values_sent_back(full: Any) -> list[Any]:
    """The value of each run of a kept result (of ``run_call_remote`` or ``run_rows``),
    each as a :class:`~flowcore.serialization.SentBack`: only when fetching the kept
    result failed, to find the value that does not unpickle in the flow's process."""
    from flowcore.serialization import SentBack

    if len(full) == 3:  # one run
        return [SentBack(full[0].data)]
    values, exact = full[0], full[3]
    return [SentBack(exact[i].data if i in exact else value) for i, value in enumerate(values)]


_journal_opened = False
_journal_lock = threading.Lock()
_STALE_JOURNAL_SECONDS = 600.0


def worker_journal_directory() -> str:
    """Where Dask worker processes on this machine journal their runs (per user)."""
    import tempfile

    user = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"flowcore-dask-journal-{user}")


def open_worker_journal(directory: str | None = None) -> None:
    """Start journaling this worker process's runs (once; best effort).

    Into ``directory`` (the journal directory of the process that started the local
    cluster, even if the worker inherited another journal from an environment variable
    set further up its process tree), else :func:`worker_journal_directory` -- unless
    the process already journals (a worker that inherited a flowcore journal): then it
    keeps that journal. Journals of processes that died long ago are removed on the way.
    """
    global _journal_opened
    from ._supervision import journal

    with _journal_lock:
        if _journal_opened:
            return
        _journal_opened = True
        if directory is None:
            if journal.position_slots() is not None:
                return  # already journaling
            directory = worker_journal_directory()
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            _remove_stale_journals(directory)
            journal.open_journal(directory)
        except OSError:  # pragma: no cover - an unwritable temp dir: crashes are blamed coarsely
            pass


def _remove_stale_journals(directory: str) -> None:
    from ._supervision.journal import pid_alive

    now = time.time()
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > _STALE_JOURNAL_SECONDS and not pid_alive(int(entry.name)):
                    os.unlink(entry.path)


# -- in the parent ------------------------------------------------------------------------


class DaskFuture(cf.Future[Any]):
    """The :class:`concurrent.futures.Future` that :meth:`DaskBackend.submit` returns.

    It is completed from the Dask future's done-callback (in Dask's callback thread):
    with the task's value, or with the exception that stopped the Dask task (for
    example ``distributed.KilledWorker``). It stays pending until then: Dask does not
    tell a client when a task starts. :meth:`cancel` cancels the Dask task too (the
    scheduler drops it if it has not started; a task already executing finishes on its
    worker and its result is discarded).
    """

    def __init__(self, backend: DaskBackend) -> None:
        super().__init__()
        self._backend = backend
        self.dask_future: Any = None
        #: for :meth:`DaskBackend.submit_kept`: the task whose result stays on the
        #: workers (``dask_future`` is then the task that makes its light copy)
        self.full: Any = None
        #: for :meth:`DaskBackend.submit_kept`: makes the light copy what the core
        #: receives (its markers replaced by NativeValues)
        self.adopt: Any = None

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        dask_future, self.dask_future = self.dask_future, None
        if dask_future is not None:
            self._backend._cancel_remote(dask_future)
        full, self.full = self.full, None
        if full is not None:
            self._backend._cancel_remote(full)
        return True


class DaskHandle(NativeHandle):
    """A result kept on the Dask workers: ``native`` is its Dask future (holding it
    keeps the data there; Dask recomputes it from its lineage if a worker holding it
    dies)."""

    __slots__ = ()

    def _fetch_native(self, native: Any) -> Any:
        backend = self.backend
        assert isinstance(backend, DaskBackend)
        try:
            return native.result(timeout=backend.fetch_timeout)
        except Exception as exc:
            raise backend._fetch_failure(native, exc) from exc


class DaskBackend(JournaledWorkers):
    """Runs tasks on a Dask cluster: a local one it starts, or a running scheduler.

    Creating the backend starts and connects nothing; the first :meth:`submit` does.
    ``max_workers`` is the number of worker threads of the cluster: the configured
    value (or the usable CPUs) until connected, then what the scheduler reports.
    Thread-safe.
    """

    name = "dask"
    kind = BackendKind.CLUSTER
    # Large results stay on the workers; downstream tasks get them as Dask futures
    # (see submit_kept and backends/_native.py). Runs of a failed flow are stopped by
    # ending their workers through the journal (workers on this machine).
    # A run blocked in C past its deadline has its worker (on this machine) killed.
    capabilities = Capabilities(
        batching=True, stops_running=True, hard_timeouts=True, remote_results=True,
        interrupts_blocking=True, connects_to_cluster=True,
    )
    #: seconds that fetching a result kept on the workers may take
    fetch_timeout: float | None = None

    def __init__(
        self,
        address: str | None = None,
        *,
        client: Any = None,
        max_workers: int | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        security: Any = None,
        tls_ca_file: str | None = None,
        tls_client_cert: str | None = None,
        tls_client_key: str | None = None,
        require_encryption: bool | None = None,
        dashboard_address: str | None = DEFAULT_DASHBOARD_ADDRESS,
        cluster_options: Mapping[str, Any] | None = None,
        no_workers_timeout: float = DEFAULT_NO_WORKERS_TIMEOUT,
    ) -> None:
        tls = {"tls_ca_file": tls_ca_file, "tls_client_cert": tls_client_cert, "tls_client_key": tls_client_key}
        _validate(address, client, max_workers, connect_timeout, security, tls, require_encryption, dashboard_address)
        _validate_seconds("no_workers_timeout", no_workers_timeout)
        self.address = address
        self.connect_timeout = float(connect_timeout)
        #: seconds that runs may wait while the cluster has no worker at all
        self.no_workers_timeout = float(no_workers_timeout)
        self.max_workers = max_workers if max_workers is not None else usable_cpu_count()
        self._given_client = client
        self._security_option = security
        self._tls = {key: value for key, value in tls.items() if value is not None}
        self._require_encryption = require_encryption
        self._dashboard_address = dashboard_address
        self._cluster_options = dict(cluster_options or {})
        self._lock = threading.Lock()
        self._closed = False
        self._client: Any = None
        self._cluster: Any = None
        self._owns_client = False
        #: where the local cluster's workers journal: this process's journal directory,
        #: so that a failed flow stops its running tasks as on other process backends
        self._journal_directory: str | None = None
        self._failure: tuple[float, str] | None = None  # (when, message) of the last failed connect
        self._pending: set[DaskFuture] = set()
        self._cancel_queue: list[Any] = []
        self._cancel_thread: threading.Thread | None = None
        self._verdicts_lock = threading.Lock()
        #: what each dead worker was running: ``{(address, pid): (culprit, known, message)}``
        self._verdicts: dict[tuple[str, Any], tuple[str | None, bool, str]] = {}
        self._uncounted: dict[str, int] = {}
        #: handles of results kept on the workers, fetched before a client we close goes
        self._handles: weakref.WeakSet[DaskHandle] = weakref.WeakSet()
        #: the thread that watches for a cluster without workers while runs wait
        self._workers_watch: threading.Thread | None = None
        #: since when (monotonic) the scheduler has reported no workers, None while it has some
        self._no_workers_since: float | None = None
        self._no_workers_warned = False

    # -- the Executor protocol ----------------------------------------------------------
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
        """Run ``fn(*args, **kwargs)`` as one Dask task; returns a :class:`DaskFuture`.

        Connects (or starts the local cluster) on first use. Raises
        :class:`~flowcore.errors.BackendShutdownError` after :meth:`shutdown`, and
        :class:`~flowcore.errors.BackendConnectionError` when the scheduler cannot be
        reached within ``connect_timeout`` (again at once for the next
        ``connect_timeout`` seconds, then it tries again). A call that cannot be
        pickled is not raised here: the returned future fails with the pickling error.
        """
        client = self._connected_client()
        future = DaskFuture(self)
        try:
            with _quiet_serialization_errors():
                dask_future = client.submit(
                    execute_and_send_back,
                    DaskCall(fn, args, kwargs),
                    self._journal_directory,
                    key=_task_key(fn, args),
                    pure=False,
                )
        except Exception as exc:
            from flowcore.serialization import is_pickling_error

            if not is_pickling_error(exc):
                raise
            future.set_exception(exc)  # the core explains which argument did not pickle
            return future
        future.dask_future = dask_future
        with self._lock:  # before the callback can run: it removes the future again
            self._pending.add(future)
        dask_future.add_done_callback(lambda done: self._deliver(future, done))
        self._watch_workers()
        return future

    def submit_kept(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Run the engine's one-run entry point, or a batch of calls, keeping large
        results on the workers (see :meth:`Backend.submit_kept
        <flowcore.backend.Backend.submit_kept>`): values this backend keeps among a
        call's arguments travel as references to their Dask futures."""
        from flowcore.engine import SubmittedRuns, run_call_remote, run_rows

        names: str | list[str]
        refs: dict[str, NativeHandle] | None = None
        if fn is run_call_remote:
            call, refs = refer_to_kept(args[0], self)
            names = call.task_run_name
            fn, args = run_call_native, (call, *args[1:])
        elif fn is run_rows and isinstance(args[3], SubmittedRuns):
            names = args[3].names
        else:
            raise TypeError(f"submit_kept runs flowcore's entry points only, not {fn!r}")
        return self._submit_native(fn, args, kwargs, refs, names)

    def _submit_native(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        refs: Mapping[str, NativeHandle] | None,
        run_names: str | list[str],
    ) -> DaskFuture:
        """Run ``fn(*args, **kwargs)`` as one Dask task whose result stays on the workers,
        and a second, tiny task next to it that returns its light copy; the handle
        fetches the full result on demand.

        ``refs``' Dask futures are passed in the task's arguments, so Dask moves their
        data between workers (or not at all) and never through this process. Raises
        like :meth:`submit`.
        """
        client = self._connected_client()
        future = DaskFuture(self)
        key = _task_key(fn, args)
        handle = DaskHandle(self, None, key)
        future.adopt = functools.partial(adopt_result, handle=handle, run_names=run_names)
        natives = {name: ref.native for name, ref in refs.items()} if refs else None
        try:
            with _quiet_serialization_errors():
                full = client.submit(execute, DaskCall(fn, args, kwargs), self._journal_directory, natives, key=key, pure=False)
            light = client.submit(light_copy_sent_back, full, key=f"{key}-light", pure=False)
        except Exception as exc:
            from flowcore.serialization import is_pickling_error

            if not is_pickling_error(exc):
                raise
            future.set_exception(exc)  # the core explains which argument did not pickle
            return future
        handle.attach(full)
        future.dask_future = light
        future.full = full
        with self._lock:  # before the callback can run: it removes the future again
            self._pending.add(future)
            self._handles.add(handle)
        light.add_done_callback(lambda done: self._deliver(future, done))
        self._watch_workers()
        return future

    def stop_runs(self, task_run_ids: set[str], *, closing: bool = False) -> None:
        """End the workers (on this machine) running these runs, found through the
        worker journal. ``closing``: nothing, the cluster goes down whole (its nannies
        would restart workers killed one by one, and say so while it closes)."""
        if closing:
            return
        from ._supervision.journal import kill_workers_running

        kill_workers_running(task_run_ids)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; close the client and the local cluster this backend made.

        With ``cancel_futures``, pending calls are cancelled first; with ``wait``, the
        others are awaited before closing. A scheduler reached by ``address`` and a
        client passed as ``client=`` stay up. Idempotent; distributed's own messages
        about connections closing are not shown while it closes.
        """
        with self._lock:
            self._closed = True
            pending = list(self._pending)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait and pending:
            cf.wait(pending)
        with self._lock:
            client, self._client = self._client, None
            cluster, self._cluster = self._cluster, None
            owns_client, self._owns_client = self._owns_client, False
            cancelling = self._cancel_thread
        if cancelling is not None and not owns_client:
            cancelling.join(self.connect_timeout)  # a client we keep: its cancels must land
        if client is None and cluster is None:
            return
        with _quiet_distributed_logs():
            if owns_client and client is not None:
                self._materialize(client)
            if cluster is not None and client is not None:
                self._quiet_workers(client)
            # The client first, then the cluster: the other order makes the client
            # log its lost connection while the scheduler goes away.
            if owns_client and client is not None:
                with contextlib.suppress(Exception):
                    client.close(timeout=self.connect_timeout)
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close(timeout=max(self.connect_timeout, 10.0))

    def _materialize(self, client: Any) -> None:
        """Before closing a client this backend made: bring home every result kept on
        the workers that a future here still refers to, so it still has its value."""
        import gc

        def kept() -> list[DaskHandle]:
            # A result not finished belongs to no completed run: nobody can ask for it.
            with self._lock:
                return [handle for handle in self._handles if handle.native is not None and handle.native.done()]

        if not kept():
            return
        gc.collect()  # results only reachable through reference cycles need not travel
        handles = kept()
        with self._lock:
            self._handles = weakref.WeakSet()
        for handle in [handle for handle in handles if handle.fetched]:
            handle.keep(None)  # already here: only drop the Dask future
            handles.remove(handle)
        if not handles:
            return
        try:
            natives = [handle.native for handle in handles]
            results = client.gather(natives)
        except Exception:  # one by one: a failure stays with its own handle
            for handle in handles:
                try:
                    handle.keep(handle.native.result(timeout=self.connect_timeout))
                except Exception as exc:
                    handle.lose(self._fetch_failure(handle.native, exc, closing=True))
            return
        for handle, result in zip(handles, results, strict=True):
            handle.keep(result)

    def _fetch_failure(self, native: Any, exc: Exception, *, closing: bool = False) -> BaseException:
        """What to raise for a kept result (Dask future ``native``) that could not be
        fetched: a lost connection or a closed backend as such; otherwise, when one of
        its values does not unpickle here, :class:`~flowcore.serialization.ResultNotSent`
        naming its type (Dask raises the unpickler's own error, a TypeError say, which
        says nothing of the run). Found by a second, tiny task that sends each value
        of the kept result back on its own (this path only)."""
        error = _explain_gather_error(exc, self._closed and not closing)
        if isinstance(error, (BackendShutdownError, _ConnectionLost)) or native is None:
            return error
        from flowcore.serialization import ResultNotSent, Unsendable

        try:
            client = native.client
            with _quiet_serialization_errors():
                probe = client.submit(
                    kept_values_sent_back, native, key=f"{native.key}-probe-{uuid.uuid4().hex}", pure=False
                )
            values = probe.result(timeout=self.fetch_timeout or self.connect_timeout)
        except Exception:  # the cluster cannot tell: the original error stands
            return error
        for value in values:
            if isinstance(value, Unsendable):
                return ResultNotSent(value)
        return error

    def _quiet_workers(self, client: Any) -> None:
        """Before closing the local cluster: its worker processes (which share this
        process's stderr) would log the tasks they abandon as they stop."""
        with contextlib.suppress(Exception):
            client.run(_silence_distributed_logs, callback_timeout=2)

    def explain_failure(self, task_run_id: str, exc: BaseException) -> WorkerLost | None:
        """Whether ``task_run_id`` was lost with a Dask worker or the scheduler connection.

        ``KilledWorker``: the run executing in the dead worker (per its journal) is the
        culprit; the other runs of the lost Dask task, and runs that were only queued on
        that worker, are resubmitted without counting an attempt. When the journal
        cannot be read (a worker on another machine), every run of the lost task is
        counted as crashed. A lost scheduler connection resubmits the run (the
        resubmission fails fast with BackendConnectionError if it does not come back).
        Anything else is not a lost worker (None).
        """
        verdict = self.deadline_verdict(task_run_id)
        if verdict is not None:
            return verdict
        if isinstance(exc, _ConnectionLost):
            return self._uncounted_loss(task_run_id, str(exc))
        if not isinstance(exc, _distributed().KilledWorker):
            return None
        culprit, known, message = self._killed_worker_verdict(exc)
        if not known or culprit == task_run_id:
            return WorkerLost(culprit=True, message=message)
        return self._uncounted_loss(task_run_id, f"lost with a Dask worker that died: {message}")

    def deadline_journals(self) -> tuple[str, ...]:
        """Where this backend's workers on this machine journal their runs, for the
        parent's watch over timeouts (``flowcore.backends._supervision.hard_timeouts``).

        A worker thread's timer stops Python code, not a call blocked in C: a run still
        on the same attempt a grace period past its ``timeout_seconds`` has its worker
        process killed, which its nanny restarts. Dask reports the loss
        (``KilledWorker``), and the run ends ``TimedOut`` (retried if its retries allow).
        Workers on other machines keep journals that cannot be read from here.
        """
        if self._given_client is None and self.address is None:
            from ._supervision.journal import journal_directory

            return (journal_directory(),)  # the local cluster's workers journal there
        from ._supervision.journal import ENV_VAR

        directories = [worker_journal_directory()]
        inherited = os.environ.get(ENV_VAR, "").rpartition(":")[0]
        if inherited:
            directories.append(inherited)
        return tuple(directories)

    def __repr__(self) -> str:
        where = self.address or ("a given client" if self._given_client is not None else "a local cluster")
        return f"<DaskBackend on {where} max_workers={self.max_workers}>"

    def worker_count(self) -> int:
        """The cluster's worker threads: connects (or starts the local cluster) first."""
        self._connected_client()
        return self.max_workers

    # -- connecting -----------------------------------------------------------------------
    def _connected_client(self) -> Any:
        with self._lock:
            if self._closed:
                raise BackendShutdownError(
                    "backend 'dask' has been shut down; create a new one with "
                    "flowcore.get_backend('dask', ...)"
                )
            client = self._client
            if client is None or client.status in ("closing", "closed", "failed"):
                client = self._connect()
        if client.status != "running":
            self._await_reconnection(client)
        return client

    def _connect(self) -> Any:
        """Under the lock: a running client, or BackendConnectionError."""
        failure = self._failure
        if failure is not None and time.monotonic() - failure[0] < self.connect_timeout:
            raise BackendConnectionError(failure[1])
        try:
            if self._given_client is not None:
                client = self._given_client
                if client.status != "running":
                    raise BackendConnectionError(
                        f"the Dask client passed to the 'dask' backend is {client.status}; "
                        "pass a connected distributed.Client"
                    )
                self._client, self._owns_client = client, False
            elif self.address is not None:
                self._client, self._owns_client = self._connect_to_scheduler(self.address), True
            else:
                self._client, self._owns_client = self._start_local_cluster(), True
        except BackendConnectionError as exc:
            self._failure = (time.monotonic(), str(exc))
            raise
        self._failure = None
        _install_log_filter()
        if self._given_client is not None or self.address is not None:
            _upload_script_files(self._client)
        self._count_workers(self._client)
        return self._client

    def _connect_to_scheduler(self, address: str) -> Any:
        try:
            return _distributed().Client(
                address,
                timeout=self.connect_timeout,
                security=self._security(),
                set_as_default=False,
            )
        except Exception as exc:
            _drop_tracebacks(exc)  # they hold the half-made client, which logs as it dies
            raise BackendConnectionError(
                f"cannot connect to the Dask scheduler at {address} within the connect timeout "
                f"of {self.connect_timeout:g} s ({type(exc).__name__}: {exc}); check that "
                f"'dask scheduler' runs there and is reachable from this machine, or raise "
                f"the backend option connect_timeout"
            ) from exc

    def _start_local_cluster(self) -> Any:
        distributed = _distributed()
        options: dict[str, Any] = {
            "n_workers": self.max_workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": self._dashboard_address,
            # Report a dead worker at once: flowcore's retries decide what runs again.
            "scheduler_kwargs": {"allowed_failures": 0},
        }
        security = self._security()
        if security is not None:
            options["security"] = security
        options.update(self._cluster_options)
        if options.get("processes"):
            _share_cache_directory(options)
        try:
            cluster = distributed.LocalCluster(**options)
        except Exception as exc:
            _drop_tracebacks(exc)
            raise BackendConnectionError(
                f"could not start a local Dask cluster of {options['n_workers']} worker "
                f"processes ({type(exc).__name__}: {exc}). Dask starts its workers with "
                "multiprocessing's spawn method, which imports your main module again: a "
                "script must start flows under 'if __name__ == \"__main__\":'"
            ) from exc
        try:
            client = distributed.Client(cluster, timeout=self.connect_timeout, set_as_default=False)
        except Exception as exc:
            _drop_tracebacks(exc)
            with _quiet_distributed_logs(), contextlib.suppress(Exception):
                cluster.close()
            raise BackendConnectionError(
                f"could not connect to the local Dask cluster at {cluster.scheduler_address} "
                f"within {self.connect_timeout:g} s ({type(exc).__name__}: {exc})"
            ) from exc
        with contextlib.suppress(Exception):  # best effort: only Ctrl-C output is at stake
            plugin = _plugin_class()()
            client.register_plugin(plugin, name=plugin.plugin_name)
        from ._supervision.journal import journal_directory

        self._journal_directory = journal_directory()
        self._cluster = cluster
        self._log_dashboard(cluster)
        return client

    def _log_dashboard(self, cluster: Any) -> None:
        from importlib.util import find_spec

        workers = len(getattr(cluster, "workers", {}) or {})
        if self._dashboard_address is None:
            logger.info("started a local Dask cluster of %d worker processes", workers)
        elif find_spec("bokeh") is None:
            logger.info(
                "started a local Dask cluster of %d worker processes (install bokeh for its "
                "dashboard)",
                workers,
            )
        else:
            logger.info(
                "started a local Dask cluster of %d worker processes; dashboard: %s",
                workers,
                cluster.dashboard_link,
            )

    def _security(self) -> Any:
        if self._security_option is True:
            return _distributed().Security.temporary()
        if self._security_option is not None:
            return self._security_option
        if self._tls or self._require_encryption is not None:
            return _distributed().Security(**self._tls, require_encryption=self._require_encryption)
        return None

    def _count_workers(self, client: Any) -> None:
        try:
            threads = sum(client.nthreads().values())
        except Exception:  # pragma: no cover - the scheduler went away right after connecting
            return
        if threads > 0:
            self.max_workers = int(threads)

    def _await_reconnection(self, client: Any) -> None:
        """The client lost its scheduler and tries to reconnect: wait for that, at most
        the connect timeout."""
        failure = self._failure
        if failure is not None and time.monotonic() - failure[0] < self.connect_timeout:
            raise BackendConnectionError(failure[1])
        deadline = time.monotonic() + self.connect_timeout
        while client.status == "connecting" and time.monotonic() < deadline:
            time.sleep(0.05)
        if client.status != "running":
            message = (
                f"lost the connection to the Dask scheduler at {client.scheduler.address} and "
                f"it did not come back within the connect timeout of {self.connect_timeout:g} s "
                f"(client {client.status}); check that the scheduler is running"
            )
            with self._lock:
                self._failure = (time.monotonic(), message)  # later submits fail at once
            raise BackendConnectionError(message)

    # -- a cluster without workers -------------------------------------------------------------
    def _watch_workers(self) -> None:
        """Make sure a thread watches the cluster's worker count while runs wait.

        Dask keeps a task waiting for a worker as long as none exists, so a flow whose
        workers all died would wait forever, silently. The watch warns at once, and ends
        the runs still waiting ``Crashed`` after ``no_workers_timeout`` seconds.
        """
        with self._lock:
            if self._workers_watch is not None or self._closed:
                return
            thread = self._workers_watch = threading.Thread(
                target=self._watch_worker_count, name="flowcore-dask-workers", daemon=True
            )
        thread.start()

    def _watch_worker_count(self) -> None:
        while True:
            with self._lock:
                client = self._client
                if self._closed or client is None or not self._pending:
                    self._workers_watch = None
                    return
            workers = self._worker_count_now(client)
            if workers == 0:
                self._no_workers(client)
            elif workers is not None and self._no_workers_since is not None:
                self._no_workers_since = None
                if self._no_workers_warned:
                    logger.info("the Dask scheduler at %s has workers again (%d)", _where(client), workers)
            time.sleep(NO_WORKERS_POLL_SECONDS)

    def _worker_count_now(self, client: Any) -> int | None:
        """How many workers the scheduler has now; None when it cannot tell (a lost
        connection is reported by the runs themselves)."""
        if client.status != "running":
            return None
        try:
            return len(client.nthreads(callback_timeout=self.connect_timeout))
        except Exception:
            return None

    def _no_workers(self, client: Any) -> None:
        now = time.monotonic()
        if self._no_workers_since is None:
            self._no_workers_since = now
            self._no_workers_warned = False
        if not self._no_workers_warned:
            # The local cluster's nannies restart a dead worker within seconds (one
            # killed for a timeout, say): only a longer absence is worth a warning there.
            restarting = min(LOCAL_RESTART_SECONDS, self.no_workers_timeout / 2)
            if self._cluster is not None and now - self._no_workers_since < restarting:
                return
            self._no_workers_warned = True
            logger.warning(
                "the Dask scheduler at %s has no workers: task runs wait for one, at most "
                "no_workers_timeout=%g s; start workers ('dask worker %s')",
                _where(client),
                self.no_workers_timeout,
                _where(client),
            )
        if now - self._no_workers_since < self.no_workers_timeout:
            return
        message = (
            f"the Dask scheduler at {_where(client)} has had no workers for the "
            f"no_workers_timeout of {self.no_workers_timeout:g} s; start workers for it "
            "('dask worker <scheduler address>') or raise the backend option no_workers_timeout"
        )
        with self._lock:
            waiting = list(self._pending)
            self._pending.clear()
        for future in waiting:
            remotes = [future.dask_future, future.full]
            future.dask_future = future.full = None
            for remote in remotes:
                if remote is not None:
                    self._cancel_remote(remote)
            with contextlib.suppress(cf.InvalidStateError):
                future.set_exception(NoWorkersError(message))

    # -- results ------------------------------------------------------------------------------
    def _deliver(self, future: DaskFuture, dask_future: Any) -> None:
        """Dask's callback thread: complete ``future`` from the finished ``dask_future``,
        then drop the Dask future so the cluster forgets its result."""
        with self._lock:
            self._pending.discard(future)
        future.dask_future = future.full = None  # a kept result is held by its handle
        if future.done():
            return  # cancelled meanwhile
        value: Any = None
        error: BaseException | None = None
        try:
            status = dask_future.status
            if status == "finished":
                value = dask_future.result()
            elif status == "error":
                error = dask_future.exception()
            else:
                error = self._lost_connection(dask_future)
        except Exception as exc:
            error = _explain_gather_error(exc, self._closed)
        if error is None and future.adopt is not None:
            try:
                value = future.adopt(raise_if_unsendable(value))
            except Exception as exc:  # a value that did not make the trip
                error = exc
        with contextlib.suppress(cf.InvalidStateError):
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

    def _lost_connection(self, dask_future: Any) -> BaseException:
        if self._closed:
            return BackendShutdownError("backend 'dask' was shut down while the task was in flight")
        reason = ""
        try:
            dask_future.result(timeout=1)
        except Exception as exc:  # FutureCancelledError names the reason
            reason = str(exc).splitlines()[0]
        where = self.address or "the local cluster"
        return _ConnectionLost(f"the Dask task was dropped by {where} ({reason or dask_future.status})")

    def _cancel_remote(self, dask_future: Any) -> None:
        """Cancel a Dask task without blocking the caller: a thread sends the queued
        cancellations in one scheduler round trip."""
        with self._lock:
            if self._closed or self._client is None:
                return  # shutdown closes the client, which drops its tasks anyway
            self._cancel_queue.append(dask_future)
            if self._cancel_thread is not None:
                return
            thread = self._cancel_thread = threading.Thread(
                target=self._send_cancellations, name="flowcore-dask-cancel", daemon=True
            )
        thread.start()

    def _send_cancellations(self) -> None:
        while True:
            with self._lock:
                batch, self._cancel_queue = self._cancel_queue, []
                if not batch:
                    self._cancel_thread = None
                    return
            by_client: dict[int, list[Any]] = {}
            for dask_future in batch:
                by_client.setdefault(id(dask_future.client), []).append(dask_future)
            for futures in by_client.values():
                with contextlib.suppress(Exception):
                    futures[0].client.cancel(futures)

    # -- worker deaths ----------------------------------------------------------------------------
    def _killed_worker_verdict(self, exc: BaseException) -> tuple[str | None, bool, str]:
        """``(culprit run id, whether the journal was read, message)`` for a KilledWorker.

        Computed once per dead worker: each Dask task lost with it raises its own
        KilledWorker, and the journal of the dead process is read (then removed) once.
        """
        worker = getattr(exc, "last_worker", None)
        address = str(getattr(worker, "address", "?"))
        pid = getattr(worker, "pid", None)
        with self._verdicts_lock:
            verdict = self._verdicts.get((address, pid))
            if verdict is not None:
                return verdict
            who = f"Dask worker {address}" + (f" (process {pid})" if pid else "")
            entry = _read_local_journal(address, pid, self._journal_directory)
            if entry is None:
                verdict = (None, False, f"{who} died while running it (or a task run sent in the same batch)")
            else:
                verdict = (entry or None, True, f"{who} died while running it")
            if len(self._verdicts) >= 64:  # a few recent deaths are enough
                self._verdicts.pop(next(iter(self._verdicts)))
            self._verdicts[(address, pid)] = verdict
            return verdict

    def _uncounted_loss(self, task_run_id: str, message: str) -> WorkerLost:
        with self._verdicts_lock:
            count = self._uncounted.get(task_run_id, 0) + 1
            self._uncounted[task_run_id] = count
        if count > MAX_UNCOUNTED_LOSSES:
            return WorkerLost(culprit=True, message=f"{message}; lost {count} times, counted as a crash")
        return WorkerLost(culprit=False, message=message)


class _ConnectionLost(BackendConnectionError):
    """A Dask task dropped because the client lost its scheduler (resubmitted)."""


class NoWorkersError(BackendConnectionError):
    """The Dask cluster had no workers for longer than ``no_workers_timeout``: the runs
    that waited for one end ``Crashed`` with this error."""


def _share_cache_directory(options: dict[str, Any]) -> None:
    """Have the local cluster's worker processes use this process's cache directory,
    resolved here (``FLOWCORE_CACHE_DIR``, ``[tool.flowcore] cache_dir`` or the default),
    so that ``flowcore cache ls`` run here sees the entries they write. An ``env`` in
    ``cluster_options`` that names ``FLOWCORE_CACHE_DIR`` wins."""
    from flowcore.caching.store import ENV_CACHE_DIR, default_cache_dir
    from flowcore.errors import ConfigurationError

    try:
        directory = str(default_cache_dir().resolve())
    except (ConfigurationError, OSError):
        return  # the workers meet the same configuration error when they cache
    options["env"] = {ENV_CACHE_DIR: directory, **dict(options.get("env") or {})}


def _where(client: Any) -> str:
    """The scheduler's address, for messages."""
    with contextlib.suppress(Exception):
        return str(client.scheduler.address)
    return "?"


def _make_ignore_interrupts() -> type:
    from distributed.diagnostics.plugin import WorkerPlugin

    class IgnoreInterrupts(WorkerPlugin):
        """Makes a worker process of the local cluster ignore SIGINT.

        Ctrl-C in a terminal reaches every process of the foreground group; the parent
        handles it (the flow stops its runs and closes the cluster), while workers that
        handled it too would each print their own shutdown.
        """

        plugin_name = "flowcore-ignore-interrupts"

        def setup(self, worker: Any) -> None:
            import signal

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    IgnoreInterrupts.__module__ = __name__
    IgnoreInterrupts.__qualname__ = "IgnoreInterrupts"
    return IgnoreInterrupts


def _plugin_class() -> Any:
    cls = globals().get("IgnoreInterrupts")
    if cls is None:
        cls = globals()["IgnoreInterrupts"] = _make_ignore_interrupts()
    return cls


def __getattr__(name: str) -> Any:
    # The worker plugin subclasses distributed's WorkerPlugin: defined on first use so
    # that importing this module does not import distributed, and reachable as a module
    # attribute so that workers unpickle it by reference.
    if name == "IgnoreInterrupts":
        return _plugin_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _drop_tracebacks(exc: BaseException) -> None:
    """Detach the frames from ``exc`` and the exceptions it chains to.

    A Client whose constructor failed is referenced only by those frames (and
    cycles); kept alive by an error stored in a task state, it would try to close
    itself at interpreter exit and print a traceback. Without them it is collected at
    once, quietly.
    """
    import gc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    gc.collect()  # the client sits in reference cycles: collect it while its loop runs


def _distributed() -> Any:
    """The ``distributed`` package, imported on first use (``import flowcore`` stays
    light) and typed as Any: its API is only partly annotated."""
    import importlib

    return importlib.import_module("distributed")


def _task_key(fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """A unique Dask key that names the task in the dashboard: ``flowcore-<task>-<hex>``."""
    label: Any = None
    if args:
        first = args[0]
        label = getattr(getattr(first, "task", first), "name", None)
    if not isinstance(label, str):
        label = getattr(fn, "__name__", "call")
    cleaned = "".join(c if c.isalnum() or c in "_." else "_" for c in label)[:60] or "call"
    return f"flowcore-{cleaned}-{uuid.uuid4().hex}"


def _explain_gather_error(exc: Exception, closed: bool) -> BaseException:
    """Turn a failure to fetch a finished task's value into what the core understands."""
    import pickle

    if closed:
        return BackendShutdownError("backend 'dask' was shut down while the result was fetched")
    from flowcore.serialization import is_pickling_error, one_line

    text = str(exc)
    # By the exception's type and pickle's own words, not by the word "pickle" in any
    # text: a value of a class named UnpicklableSomething that fails to load with a
    # TypeError is not a result that could not be pickled on the worker (issue 12.15).
    if is_pickling_error(exc):
        error = pickle.PicklingError(f"cannot pickle the result on the Dask worker: {one_line(exc)}")
        error.__cause__ = exc
        return error
    if isinstance(exc, OSError) or type(exc).__name__ in ("CommClosedError", "FutureCancelledError"):
        error2 = _ConnectionLost(f"the result could not be fetched from the Dask cluster ({text})")
        error2.__cause__ = exc
        return error2
    return exc


#: seconds a dead worker's process may take to exit before its journal is read
PROCESS_EXIT_GRACE = 2.0


def _read_local_journal(address: str, pid: Any, directory: str | None) -> str | None:
    """The task run the dead worker process ``pid`` was executing, from its journal on
    this machine (in ``directory``, else the per-user one): the run id, ``""`` when it
    was executing none, None when unknown (the worker ran elsewhere, or kept no
    journal here)."""
    from ._supervision.journal import ENV_VAR, read_journal_entries

    if not isinstance(pid, int) or pid <= 0 or not _is_this_machine(address):
        return None
    # The scheduler may learn of the death (a closed connection) while the process is
    # still exiting: give it a moment before its journal counts as unknown.
    deadline = time.monotonic() + PROCESS_EXIT_GRACE
    while not _process_gone(pid):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
    directories = [directory or worker_journal_directory()]
    inherited = os.environ.get(ENV_VAR, "").rpartition(":")[0]
    if inherited:
        directories.append(inherited)
    for candidate in directories:
        path = os.path.join(candidate, str(pid))
        if not os.path.exists(path):
            continue
        entry = read_journal_entries(candidate).get(pid)
        with contextlib.suppress(OSError):
            os.unlink(path)  # the process is dead: nobody else needs its journal
        return entry[0] if entry is not None else ""
    return None


def _process_gone(pid: int) -> bool:
    """True when process ``pid`` of this machine has died: gone, or a zombie that its
    parent (the worker's nanny) has not reaped yet."""
    from ._supervision.journal import pid_alive

    if not pid_alive(pid):
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _is_this_machine(address: str) -> bool:
    import socket

    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", "::1", "0.0.0.0") or host.startswith("127."):
        return True
    try:
        names = {socket.gethostname(), socket.getfqdn()}
        local = {info[4][0] for name in names for info in socket.getaddrinfo(name, None)}
    except OSError:
        return False
    return host in names or host in local


# -- distributed's logs ------------------------------------------------------------------------

_thread_state = threading.local()
_filter_installed = False


class _SubmitFilter(logging.Filter):
    """Drops distributed's own report of a call that does not pickle while this module
    submits it: the task run ends with a SerializationError that names the argument."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_thread_state, "submitting", False)


class _KilledWorkerFilter(logging.Filter):
    """Drops the scheduler's error about a flowcore task whose worker died (a scheduler
    in this process: the local cluster): flowcore reports that run itself, as Crashed
    or with the retry it gets, naming the worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith("Task %s marked as failed because")
            and isinstance(record.args, tuple)
            and bool(record.args)
            and str(record.args[0]).startswith("flowcore-")
        )


def _upload_script_files(client: Any) -> None:
    """Ship the files ``flowcore run`` imported by path to a cluster flowcore did not
    start: its workers (and those that join later) may run on machines without them,
    and tasks defined there are pickled by reference to their module. A failed upload
    is a warning: the runs then fail naming the module."""
    from flowcore.serialization import script_files

    for module, path in script_files().items():
        try:
            client.upload_file(path, load=False)
        except Exception as exc:
            logger.warning(
                "could not upload %s (module %r) to the Dask workers (%s: %s); its tasks will "
                "fail there unless the workers can import it", path, module, type(exc).__name__, exc,
            )


def _install_log_filter() -> None:
    global _filter_installed
    if not _filter_installed:
        _filter_installed = True
        logging.getLogger("distributed.protocol.pickle").addFilter(_SubmitFilter())
        logging.getLogger("distributed.scheduler").addFilter(_KilledWorkerFilter())


@contextlib.contextmanager
def _quiet_serialization_errors() -> Iterator[None]:
    _thread_state.submitting = True
    try:
        yield
    finally:
        _thread_state.submitting = False


def _silence_distributed_logs() -> None:
    """In a worker process of the local cluster, just before it is stopped."""
    for name in ["distributed", "tornado"] + [
        name for name in list(logging.root.manager.loggerDict) if name.startswith("distributed.")
    ]:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def _quiet_distributed_logs() -> Iterator[None]:
    """While a client or cluster closes: distributed's loggers report connections that
    close as errors ("stream is closed", CommClosedError); they are expected then."""
    names = ["distributed", "tornado"] + [
        name for name in list(logging.root.manager.loggerDict) if name.startswith("distributed.")
    ]
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in names]
    for named, _ in saved:
        named.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for named, level in saved:
            named.setLevel(level)


# -- options and registration -------------------------------------------------------------------


def _validate(
    address: Any,
    client: Any,
    max_workers: Any,
    connect_timeout: Any,
    security: Any,
    tls: dict[str, Any],
    require_encryption: Any,
    dashboard_address: Any,
) -> None:
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ValueError(
            f"address for the dask backend must be a scheduler address such as "
            f"'tcp://host:8786', got {address!r}"
        )
    if client is not None:
        if address is not None:
            raise ValueError("the dask backend takes either address= or client=, not both")
        if security is not None or any(v is not None for v in tls.values()) or require_encryption is not None:
            raise ValueError(
                "security options of the dask backend apply to connections it makes; a "
                "client passed as client= is already connected"
            )
        if not all(hasattr(client, attribute) for attribute in ("submit", "status", "nthreads")):
            raise ValueError(f"client for the dask backend must be a distributed.Client, got {client!r}")
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
    ):
        raise ValueError(f"max_workers for the dask backend must be a positive int, got {max_workers!r}")
    if (
        isinstance(connect_timeout, bool)
        or not isinstance(connect_timeout, (int, float))
        or not connect_timeout > 0
    ):
        raise ValueError(
            f"connect_timeout for the dask backend must be a positive number of seconds, got "
            f"{connect_timeout!r}"
        )
    if security is True and address is not None:
        raise ValueError(
            "security=True (temporary self-signed credentials) only works for the local "
            "cluster the dask backend starts; pass a distributed.Security for a scheduler"
        )
    for option, path in tls.items():
        if path is not None and (not isinstance(path, str) or not os.path.isfile(path)):
            raise ValueError(f"{option} for the dask backend must be an existing file, got {path!r}")
    if require_encryption is not None and not isinstance(require_encryption, bool):
        raise ValueError(f"require_encryption for the dask backend must be a bool, got {require_encryption!r}")
    if dashboard_address is not None and not isinstance(dashboard_address, str):
        raise ValueError(
            f"dashboard_address for the dask backend must be 'host:port' or None, got "
            f"{dashboard_address!r}"
        )


def _validate_seconds(option: str, value: Any) -> None:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(
            f"{option} for the dask backend must be a positive number of seconds, got {value!r}"
        )


@hookimpl
def flowcore_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name="dask",
            factory=DaskBackend,  # takes the options as keyword arguments
            description="a Dask distributed cluster: a local one, or a scheduler at an address",
            kind=BackendKind.CLUSTER,
            requires=("distributed",),
            extra="dask",
            capabilities=DaskBackend.capabilities,
        )
    ]


__all__ = [
    "DaskBackend",
    "DaskCall",
    "DaskFuture",
    "DaskHandle",
    "NoWorkersError",
    "execute",
    "open_worker_journal",
    "worker_journal_directory",
]
