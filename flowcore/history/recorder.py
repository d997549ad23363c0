"""The history writer: run events and run logs in, batched transactions out.

::

    any thread                          the writer thread (one per process)
    ----------                          -----------------------------------
    flowcore_run_events(batch) --+
    run log record (handler) ----+--> deque --> drain: events -> HistoryBatch per store
    flow run FINISHED (top) -----+               -> store.write_events (one transaction)
       waits for its flush <------------------- flush markers set after their commit
                                                every HEARTBEAT_SECONDS: heartbeats of
                                                running flow runs; now and then: retention

The caller's thread only appends to a deque: it never reads a lazy batch of events
(a column map's :class:`~flowcore.events.LazyTaskEvents` reads finished state, so the
writer may read it later), never touches the store, and never imports sqlite3. The
settings (on or off, which store) are resolved when a flow run starts and tag every
item queued after; items for a store that cannot be opened or written are dropped
after one warning naming the store and the fix ("history is off for this run").

A top-level flow run waits, when it finishes, until its records are committed
(at most :data:`FLOW_FLUSH_TIMEOUT_S`), so ``flowcore runs ls`` run right after a
script sees them; interpreter exit flushes what is left (at most
:data:`EXIT_FLUSH_TIMEOUT_S`).
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowcore import deferred_runs, direct_runs
from flowcore.events import EventKind, FlowRunEvent, RunColumns, TaskRunEvent, column_events
from flowcore.history import liveness
from flowcore.history.records import (
    FlowRunWrite,
    HistoryBatch,
    LogWrite,
    PendingMapWrite,
    StateRecord,
    TaskRunBlockWrite,
    TaskRunWrite,
    encode_block,
)
from flowcore.history.settings import DEFAULT_STORE, HistorySettings, current_settings

logger = logging.getLogger("flowcore.history")

FLOW_FLUSH_TIMEOUT_S = 10.0
#: a flow run's end that waits this long for the history says why it waits
SLOW_FLUSH_WARNING_S = 2.0
EXIT_FLUSH_TIMEOUT_S = 60.0
#: rows per transaction at most (a huge map is written in several)
MAX_BATCH_ROWS = 50_000
#: how often the writer applies ``history_retention``
RETENTION_EVERY_S = 3600.0
#: while flow runs are running, the writer commits what came in at least this often
DRAIN_EVERY_S = 0.5
#: log records kept from before this process reported any run event
EARLY_LOGS = 100
#: the writer looks at a transaction's size after about this many queued items
_ROWS_CHECK_EVERY = 1024
#: a task run seen only as SUBMITTED is written after this long (or at a flush)
HOLD_PENDING_S = 1.0
#: the writer asks for the SUBMITTED of deferred runs (flowcore.deferred_runs) this old
ANNOUNCE_AFTER_S = 0.5
#: a flow run's start is written this long after it started, or with its end if that
#: comes first (one transaction for a short flow run instead of two)
FLOW_START_HOLD_S = 0.1

_MESSAGE_LIMIT = 10_000
_PARAMETER_REPR_LIMIT = 1_000


class _Flush:
    """A marker in the queue: set once everything queued before it is committed."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_DISABLED = HistorySettings(False, home=Path("."), source="unusable")


class Recorder:
    """The process's history writer (see the module docstring). Use :data:`recorder`."""

    def __init__(self) -> None:
        self._queue: collections.deque[tuple[HistorySettings, Any] | _Flush] = collections.deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: log records from before the writer started (see accept_log)
        self._early: collections.deque[tuple[HistorySettings, Any]] = collections.deque(maxlen=EARLY_LOGS)
        #: the writer sleeps until woken (no flow run is running): a batch must wake it
        self._idle = False
        #: settings that tag items queued now (resolved when a flow run starts)
        self._settings: HistorySettings | None = None
        #: flow runs of this process that started and have not finished (any thread)
        self._started_here: set[str] = set()
        #: the writer's state (touched by the writer thread only)
        self._stores: dict[HistorySettings, Any] = {}
        self._broken: set[HistorySettings] = set()
        self._upkeep_failed: set[HistorySettings] = set()
        self._running: dict[str, HistorySettings] = {}
        #: per store: runs seen but not final and not written yet, and the like
        self._open: dict[HistorySettings, _OpenRuns] = {}
        self._last_beat = 0.0
        self._last_retention: dict[HistorySettings, float] = {}
        self._host = ""
        self._pid = 0
        self._process_start = 0
        self._handler: _LogHandler | None = None
        self._atexit_registered = False
        #: a flow run started: the writer waits until then before it drains (see
        #: FLOW_START_HOLD_S), unless a flush asks sooner
        self._hold_until = 0.0
        self._flushes_asked = 0

    # -- the caller's side --------------------------------------------------------------
    def accept(self, events: Sequence[Any]) -> None:
        """Queue a batch of run events (the ``flowcore_run_events`` hook)."""
        if type(events) is list and len(events) == 1 and type(events[0]) is FlowRunEvent:
            self._accept_flow_event(events[0])
            return
        settings = self._settings
        if settings is None:
            settings = self._settings = self._resolve()
        if settings.enabled:
            self._queue.append((settings, events))
            if self._thread is None:
                self._start()
            if self._idle:
                self._idle = False
                self._wake.set()

    def wake_for_deferred(self) -> None:
        """Runs became outstanding in :mod:`flowcore.deferred_runs` (its waker): the
        writer drains every DRAIN_EVERY_S until none are, flushing them, even while no
        flow run runs (the runs of a ``use_backend`` block). Starts the writer."""
        if self._thread is None:
            self._start()
        if self._idle:
            self._idle = False
            self._wake.set()

    def _accept_flow_event(self, event: FlowRunEvent) -> None:
        # The outermost flow run of this process: no parent, or a parent that runs in
        # another process (a subflow called in a task body on a process worker).
        run = event.run
        parent = run.parent_run_id
        if event.kind is EventKind.STARTED:
            self._started_here.add(run.run_id)
        elif event.kind is EventKind.FINISHED:
            self._started_here.discard(run.run_id)
        top_level = parent is None or parent not in self._started_here
        if event.kind is EventKind.STARTED and top_level and event.attempt == 1:
            self._settings = self._resolve()
        settings = self._settings
        if settings is None:
            settings = self._settings = self._resolve()
        if not settings.enabled:
            return
        self._queue.append((settings, event))
        if self._thread is None:
            self._start()
        if event.kind is EventKind.FINISHED and top_level:
            self._flush_at_flow_end(event, settings)
        elif event.kind is EventKind.STARTED:
            # record the run as running within FLOW_START_HOLD_S: readers see it then;
            # a flow run that ends sooner is written once, with its end
            self._hold_until = time.monotonic() + FLOW_START_HOLD_S
            self._wake.set()

    def accept_log(self, record: logging.LogRecord) -> None:
        """Queue a run's log record (called by the handler on the run loggers).

        Settings are resolved for each record (cached, a few microseconds): a flow
        run's first record comes before its STARTED event, which resolves them for
        the events."""
        settings = self._resolve()
        if not settings.enabled:
            return
        flow_run_id = getattr(record, "flow_run_id", None)
        task_run_id = getattr(record, "task_run_id", None)
        if flow_run_id is None and task_run_id is None:
            return
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        item = (settings, LogWrite(
            flow_run_id, task_run_id, record.created, record.levelno, record.levelname, record.name,
            message, getattr(record, "task_name", None), getattr(record, "task_run_name", None),
        ))
        if self._thread is None:
            # No run event yet in this process: the first flow run logs before it
            # reports (kept for the writer), and a worker process whose records the
            # parent replays never reports at all (kept bounded, never written).
            self._early.append(item)
            return
        self._queue.append(item)
        if self._idle:
            self._idle = False
            self._wake.set()

    def _flush_at_flow_end(self, event: FlowRunEvent, settings: HistorySettings) -> None:
        """A top-level flow run ends: wait (at most FLOW_FLUSH_TIMEOUT_S) until its
        records are committed, saying so once the wait gets long (another program may
        hold the database's lock); past that, the flow returns and the writer goes on."""
        if self.flush(SLOW_FLUSH_WARNING_S):
            return
        if settings.store == DEFAULT_STORE:
            from flowcore.history.sqlite import FILE_NAME

            where = str(settings.home / FILE_NAME)
        else:
            where = f"the {settings.store!r} store"
        logger.warning(
            "flowcore: writing the run history of flow run %r to %s takes longer than %g s "
            "(another program may hold the database's lock); waiting up to %g s more, then "
            "the flow returns and the history is written in the background",
            event.run.name, where, SLOW_FLUSH_WARNING_S, FLOW_FLUSH_TIMEOUT_S - SLOW_FLUSH_WARNING_S,
        )
        self.flush(FLOW_FLUSH_TIMEOUT_S - SLOW_FLUSH_WARNING_S)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is committed (or dropped); True unless
        ``timeout`` passed first. Returns at once when nothing was ever queued."""
        if self._thread is None or not self._thread.is_alive():
            return not self._queue
        marker = _Flush()
        self._flushes_asked += 1
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def install_log_handler(self) -> None:
        """Record the run loggers' records (``flowcore.flow_runs``, ``flowcore.task_runs``:
        ``get_run_logger()``, ``log_prints``, and records replayed from worker
        processes). Only records that logging lets through reach it (the ``flowcore``
        logger's level: INFO by default)."""
        with self._start_lock:
            if self._handler is not None:
                return
            from flowcore.loggers import FLOW_LOGGER, TASK_LOGGER

            handler = self._handler = _LogHandler(self)
            for name in (FLOW_LOGGER, TASK_LOGGER):
                logging.getLogger(name).addHandler(handler)

    def _resolve(self) -> HistorySettings:
        try:
            return current_settings()
        except Exception as exc:
            if _DISABLED not in self._broken:
                self._broken.add(_DISABLED)
                logger.warning("flowcore: run history is off: %s", exc)
            return _DISABLED

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            self._host = liveness.this_host()
            self._pid = os.getpid()
            self._process_start = liveness.process_start(self._pid)
            if not self._atexit_registered:
                self._atexit_registered = True
                atexit.register(self._at_exit)
            while self._early:
                self._queue.appendleft(self._early.pop())
            thread = threading.Thread(target=self._run, name="flowcore-history-writer", daemon=True)
            thread.start()
            self._thread = thread
            while self._early:  # logged while the thread was starting
                self._queue.append(self._early.popleft())

    def _at_exit(self) -> None:
        if self._thread is None:
            return
        try:
            deferred_runs.flush()
        except Exception:  # pragma: no cover - a bug must not hide the flush below
            logger.exception("flowcore: reporting deferred runs at exit failed")
        if not self.flush(EXIT_FLUSH_TIMEOUT_S):
            logger.warning(
                "flowcore: the run history writer did not finish within %.0f s at exit; "
                "the last records of this process may be missing", EXIT_FLUSH_TIMEOUT_S,
            )

    def after_fork_in_child(self) -> None:
        """A forked child starts without the parent's writer thread, queue or stores
        (the parent's SQLite connections must not be used here; they are left open)."""
        self._queue = collections.deque()
        self._early = collections.deque(maxlen=EARLY_LOGS)
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._thread = None
        self._inherited = list(self._stores.values())
        self._stores = {}
        self._running = {}
        self._open = {}
        self._started_here = set()  # the parent's flow runs do not run here

    # -- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            # Idle: sleep until woken. While flow runs are running: drain every
            # DRAIN_EVERY_S (their task batches do not wake the writer one by one).
            self._idle = True  # before looking at the queue: see accept()
            if (
                self._running or self._queue or any(o.waiting() for o in self._open.values())
                or deferred_runs.outstanding()  # runs of use_backend blocks (see wake_for_deferred)
            ):
                self._idle = False
            self._wake.wait(None if self._idle else DRAIN_EVERY_S)
            self._wake.clear()
            self._idle = False
            hold = self._hold_until - time.monotonic()
            if hold > 0 and not self._flushes_asked:
                self._wake.wait(hold)  # a flush (a flow run's end) wakes it sooner
                self._wake.clear()
            self._hold_until = 0.0
            self._flushes_asked = 0
            try:
                # Runs reported late (flowcore.deferred_runs): those that ended on idle
                # threads, and the SUBMITTED of runs that wait or run long; and direct
                # calls' runs left in the buffer of a thread that makes no more calls.
                deferred_runs.flush(min_age=ANNOUNCE_AFTER_S)
                direct_runs.flush(older_than=direct_runs.MAX_AGE_S)
                direct_runs.announce(ANNOUNCE_AFTER_S)  # long direct calls: Running
                self._drain()
                self._beat()
                self._upkeep()  # after the commits flushes wait for, not inside them
            except Exception:  # a bug must not stop the writer: log it, keep going
                logger.exception("flowcore: the run history writer failed; continuing")

    def _drain(self) -> None:
        queue = self._queue
        batches: dict[HistorySettings, _Pending] = {}
        # Items come in long runs of one settings object: look it up once per run.
        last: HistorySettings | None = None
        pending: _Pending | None = None
        broken = False
        since_check = 0  # items since the batch's size was last looked at
        while queue:
            item = queue.popleft()
            if isinstance(item, _Flush):
                self._commit(batches, release=True)
                batches, last = {}, None
                item.done.set()
                continue
            settings, payload = item
            if settings is not last or pending is None:
                last = settings
                broken = settings in self._broken
                pending = batches.get(settings)
                if pending is None:
                    open_runs = self._open.get(settings)
                    if open_runs is None:
                        open_runs = self._open[settings] = _OpenRuns()
                    pending = batches[settings] = _Pending(open_runs)
            if broken:
                continue
            if isinstance(payload, LogWrite):
                pending.batch.logs.append(payload)
            elif isinstance(payload, FlowRunEvent):
                pending.batch.flow_runs.append(self._flow_write(payload, settings))
            else:
                pending.add_tasks(payload)
                since_check += len(payload)
            since_check += 1
            if since_check >= _ROWS_CHECK_EVERY and pending.rows() >= MAX_BATCH_ROWS:
                self._commit({settings: pending}, release=False)
                del batches[settings]
                last = None
            if since_check >= _ROWS_CHECK_EVERY:
                since_check = 0
        self._commit(batches, release=False)

    def _commit(self, batches: dict[HistorySettings, _Pending], *, release: bool) -> None:
        """Write each store's batch. Runs not final yet are held back for up to
        HOLD_PENDING_S (most end by then: one write instead of two); ``release``
        writes them now (a flush)."""
        now = time.monotonic()
        for settings, open_runs in self._open.items():
            if settings not in batches and open_runs.waiting():
                batches[settings] = _Pending(open_runs)  # held runs may be due
        for settings, pending in batches.items():
            batch = pending.finish(now, release)
            if not batch or settings in self._broken:
                continue
            store = self._store(settings)
            if store is None:
                continue
            try:
                store.write_events(batch)
            except Exception as exc:
                self._give_up(settings, exc)

    def _store(self, settings: HistorySettings) -> Any:
        store = self._stores.get(settings)
        if store is None:
            from flowcore.history.store import open_store

            try:
                store = self._stores[settings] = open_store(settings)
                defer = getattr(store, "defer_upkeep", None)  # a plugin's store may lack it
                if defer is not None:
                    defer()  # see _upkeep
            except Exception as exc:
                self._give_up(settings, exc)
                return None
            self._apply_retention(settings, store)
        return store

    def _upkeep(self) -> None:
        """The stores' housekeeping (SQLite's WAL checkpoints), once this drain's
        flushes are released: a flow run's end never waits for it."""
        for settings, store in list(self._stores.items()):
            if settings in self._broken:
                continue
            upkeep = getattr(store, "upkeep", None)
            if upkeep is None:
                continue
            try:
                upkeep()
            except Exception as exc:  # a store's bug: its writes go on, said once
                if settings not in self._upkeep_failed:
                    self._upkeep_failed.add(settings)
                    logger.warning("flowcore: run history upkeep of %s failed: %s", settings.home, exc)

    def _give_up(self, settings: HistorySettings, exc: BaseException) -> None:
        self._broken.add(settings)
        self._open.pop(settings, None)
        for run_id in [r for r, s in self._running.items() if s == settings]:
            del self._running[run_id]
        logger.warning("flowcore: %s; history is off for this run", exc)

    def _beat(self) -> None:
        now = time.time()
        if not self._running or now - self._last_beat < liveness.HEARTBEAT_SECONDS:
            return
        self._last_beat = now
        by_settings: dict[HistorySettings, list[str]] = {}
        for run_id, settings in self._running.items():
            by_settings.setdefault(settings, []).append(run_id)
        for settings, ids in by_settings.items():
            store = self._store(settings)
            if store is None:
                continue
            try:
                store.write_events(HistoryBatch(heartbeat=now, heartbeat_ids=ids))
            except Exception as exc:
                self._give_up(settings, exc)
            else:
                self._apply_retention(settings, store)

    def _apply_retention(self, settings: HistorySettings, store: Any) -> None:
        if settings.retention_s is None:
            return
        now = time.time()
        if now - self._last_retention.get(settings, 0.0) < RETENTION_EVERY_S:
            return
        self._last_retention[settings] = now
        try:
            store.delete_older_than(now - settings.retention_s)
        except Exception as exc:
            logger.warning("flowcore: applying history_retention failed: %s", exc)

    def _flow_write(self, event: FlowRunEvent, settings: HistorySettings) -> FlowRunWrite:
        run = event.run
        if event.kind is EventKind.STARTED:
            self._running[run.run_id] = settings
            return FlowRunWrite(
                run.run_id, run.flow_name, run.name, "Running", "RUNNING", "",
                parameters=_json_text(_parameters(run.parameters)),
                backend=run.backend or None,
                backend_options=_json_text(_backend_options(event)),
                parent_id=run.parent_run_id, start=run.started_at, attempts=event.attempt,
                host=self._host, pid=self._pid, process_start=self._process_start,
                heartbeat=event.timestamp,
                state_entry=StateRecord(event.timestamp, "RUNNING", "Running", "", event.attempt),
            )
        self._running.pop(run.run_id, None)
        state = event.state
        assert state is not None
        error_type, error_message = _error(state)
        end = state.finished_at or event.timestamp
        return FlowRunWrite(
            run.run_id, run.flow_name, run.name, state.name, str(state.type),
            _limit(state.message), parent_id=run.parent_run_id, start=run.started_at, end=end,
            attempts=state.attempts or event.attempt, host=self._host, pid=self._pid,
            process_start=self._process_start, heartbeat=event.timestamp,
            error_type=error_type, error_message=error_message, traceback=state.traceback,
            state_entry=StateRecord(end, str(state.type), state.name, _limit(state.message), state.attempts or None),
        )


class _OpenMap:
    """A map whose runs are not all finished: its SUBMITTED columns, how many of its
    runs finished, and whether its pending row is written."""

    __slots__ = ("columns", "done", "reported", "running", "since", "written")

    def __init__(self, columns: RunColumns, since: float) -> None:
        self.columns = columns
        self.done = 0
        self.reported = 0  # ``done`` as last written
        #: its runs executing, as last written: position -> (start, worker)
        self.running: dict[int, tuple[float, Any]] = {}
        self.since = since
        self.written = False

    def executing_now(self) -> dict[int, tuple[float, Any]]:
        """Its runs executing now (what its columns' ``executing`` says), each with its
        start: as reported, else as first seen executing (now)."""
        executing = self.columns.executing
        if executing is None or self.done >= len(self.columns):
            return {}
        try:
            found = executing()
        except Exception:  # a map's bookkeeping must never stop the writer
            return self.running
        seen = time.time()
        known = self.running
        return {
            position: (start if start is not None else known.get(position, (seen, None))[0], worker)
            for position, (start, worker) in found.items()
        }


class _OpenRuns:
    """A store's runs that are not final yet (the writer thread's state)."""

    __slots__ = ("due", "held", "maps", "since", "written")

    def __init__(self) -> None:
        #: not written yet: run id -> (submitted time, latest event)
        self.held: dict[str, tuple[float | None, TaskRunEvent]] = {}
        #: runs of ``held`` whose event was reported late on purpose (dated at least
        #: ANNOUNCE_AFTER_S before it arrived: a long run reported running, a run that
        #: waits long): written at the next transaction, not held
        self.due: list[str] = []
        #: since when some of ``held`` wait (monotonic), 0 when none do
        self.since = 0.0
        #: written as pending or running rows: their next write is an update
        self.written: set[str] = set()
        #: maps with runs not finished, by map id
        self.maps: dict[str, _OpenMap] = {}

    def waiting(self) -> bool:
        return bool(self.held) or any(
            not m.written or m.done != m.reported or m.columns.executing is not None for m in self.maps.values()
        )


#: a block's identity in one transaction: flow run, task, backend, worker, id prefix
_BlockKey = tuple[str | None, str, str | None, Any, str]


class _Block:
    """Finished runs gathered into one TaskRunBlockWrite."""

    __slots__ = ("ends", "names", "numbers", "starts", "submitted", "task")

    def __init__(self, task: Any) -> None:
        self.task = task
        self.numbers: list[int] = []
        self.names: list[int] = []
        self.submitted: list[float] = []
        self.starts: list[float] = []
        self.ends: list[float] = []


class _Pending:
    """What the writer gathers for one store before a transaction. Finished runs that
    completed plainly (one attempt, not cached, named ``<task>-<n>``) are gathered
    into blocks, one row per task and worker; the others become one row each."""

    __slots__ = ("batch", "blocks", "open", "tasks")

    def __init__(self, open_runs: _OpenRuns) -> None:
        self.batch = HistoryBatch()
        self.open = open_runs
        self.tasks: dict[str, TaskRunWrite] = {}
        self.blocks: dict[_BlockKey, _Block] = {}

    def rows(self) -> int:
        return len(self.tasks) + self.batch.size() + len(self.blocks)

    # -- folding events --------------------------------------------------------------
    def add_tasks(self, events: Sequence[TaskRunEvent]) -> None:
        """Fold a batch of task run events (read as columns when it offers them)."""
        if type(events) is not list:  # a lazy batch may offer columns
            columns_of = getattr(events, "columns", None)
            columns = columns_of() if callable(columns_of) else None
            if columns is not None:
                self._add_columns(columns)
                return
        held = self.open.held
        finished = EventKind.FINISHED
        late = 0.0  # an event dated at or before this reports a run that waits or runs long
        for event in events:
            run_id = event.task_run_id
            if event.kind is not finished:
                earlier = held.get(run_id)
                submitted = earlier[0] if earlier is not None else (
                    event.timestamp if event.kind is EventKind.SUBMITTED else None
                )
                held[run_id] = (submitted, event)
                if not late:
                    late = time.time() - ANNOUNCE_AFTER_S
                if event.timestamp <= late:
                    self.open.due.append(run_id)
                continue
            earlier = held.pop(run_id, None)
            submitted = earlier[0] if earlier is not None else None
            state = event.state
            assert state is not None
            if self.open.maps:  # a map's run ending on its own (its batch was lost or stopped)
                self._count_in_map(run_id)
            if (
                state.name == "Completed" and state.attempts == 1 and run_id not in self.open.written
                and getattr(state, "result_location", None) is None and getattr(state, "cache_key", None) is None
                and self._add_plain(event, state, submitted)
            ):
                continue
            write = self.tasks.get(run_id)
            if write is None:
                write = self.tasks[run_id] = _write_from(earlier[1] if earlier is not None else event, submitted)
            _apply(event, write)

    def _count_in_map(self, run_id: str) -> None:
        """Count the end of ``run_id`` toward the open map it belongs to, if any: a run
        of a map whose batch did not come back is reported on its own, not in the
        map's columns, and the map's pending row must still see it finished."""
        prefix, _, number = run_id.rpartition("-")
        try:
            value = int(number, 16)
        except ValueError:
            return
        for open_map in self.open.maps.values():
            columns = open_map.columns
            first = columns.numbers[0]
            if columns.id_prefix == prefix and first <= value < first + len(columns):
                open_map.done += 1
                return

    def _add_plain(self, event: TaskRunEvent, state: Any, submitted: float | None) -> bool:
        """Add a plainly completed run to its block; False if its ids do not fit one."""
        prefix, _, number = event.task_run_id.rpartition("-")
        task_name, name = event.task_name, event.task_run_name
        named, _, suffix = name.rpartition("-")
        if named != task_name or not suffix.isdigit() or not prefix:
            return False
        key = (event.flow_run_id, task_name, event.backend, event.worker, prefix)
        block = self.blocks.get(key)
        if block is None:
            block = self.blocks[key] = _Block(event.task)
        start = state.started_at if state.started_at is not None else event.timestamp
        block.numbers.append(int(number, 16))
        block.names.append(int(suffix))
        block.submitted.append(submitted if submitted is not None else start)
        block.starts.append(start)
        block.ends.append(state.finished_at or event.timestamp)
        return True

    def _add_columns(self, columns: RunColumns) -> None:
        kinds = columns.kinds
        map_id = columns.map_id
        if EventKind.FINISHED not in kinds:
            if kinds == (EventKind.SUBMITTED,) and map_id is not None:
                self.open.maps[map_id] = _OpenMap(columns, time.monotonic())
                return
            for position in range(len(columns)):  # not expected: read them one by one
                self.add_tasks([_column_event(columns, position, kinds[-1])])
            return
        if EventKind.SUBMITTED not in kinds and map_id is None:
            # Deferred runs whose SUBMITTED came earlier (flowcore.deferred_runs): they
            # may be held or written as pending rows, so they are folded one by one.
            self.add_tasks(list(column_events(columns)))
            return
        exceptional = columns.states
        positions = [i for i in range(len(columns)) if i not in exceptional] if exceptional else None
        if positions is None or positions:
            self.batch.task_run_blocks.append(_block_of(columns, positions))
        tags = _tags(columns.task) if exceptional else None  # once for the batch's rows
        for position, state in exceptional.items():
            run_id = columns.run_id(position)
            write = TaskRunWrite(
                run_id, columns.flow_run_id, columns.task_name, columns.run_name(position), "Pending",
                "PENDING", submitted=columns.submitted_at(position), backend=columns.backend, tags=tags,
            )
            _set_worker(write, columns.worker)
            _set_final(write, state, columns.ends[position])
            self.tasks[run_id] = write
        if map_id is not None:
            open_map = self.open.maps.get(map_id)
            if open_map is not None:
                open_map.done += len(columns)

    # -- the transaction -------------------------------------------------------------
    def finish(self, now: float, release: bool) -> HistoryBatch:
        """The batch to write: task runs gathered, blocks encoded, and held runs and
        maps' pending rows that are due (all of them with ``release``)."""
        batch = self.batch
        open_runs = self.open
        for key, block in self.blocks.items():
            batch.task_run_blocks.append(
                encode_block(
                    flow_run_id=key[0], task=key[1], id_prefix=key[4], backend=key[2], worker=key[3],
                    tags=_tags(block.task), numbers=block.numbers, names=block.names,
                    submitted=block.submitted, starts=block.starts, ends=block.ends,
                )
            )
        self.blocks = {}
        written = open_runs.written
        for run_id, write in self.tasks.items():
            if run_id in written:
                batch.task_run_updates.append(write)
                written.discard(run_id)
            else:
                batch.task_runs.append(write)
        self.tasks = {}
        held = open_runs.held
        if held:
            if not open_runs.since:
                open_runs.since = now
            if release or now - open_runs.since >= HOLD_PENDING_S:
                for run_id, (submitted, event) in held.items():
                    write = _write_from(event, submitted)
                    (batch.task_run_updates if run_id in written else batch.task_runs).append(write)
                    written.add(run_id)
                held.clear()
            else:  # those reported late on purpose: a live reader waits for them already
                for run_id in open_runs.due:
                    entry = held.pop(run_id, None)
                    if entry is not None:
                        write = _write_from(entry[1], entry[0])
                        (batch.task_run_updates if run_id in written else batch.task_runs).append(write)
                        written.add(run_id)
        open_runs.due.clear()
        if not held:
            open_runs.since = 0.0
        for map_id, open_map in list(open_runs.maps.items()):
            complete = open_map.done >= len(open_map.columns)
            if complete and not open_map.written:
                del open_runs.maps[map_id]
                continue
            if not open_map.written and not (release or now - open_map.since >= HOLD_PENDING_S):
                continue
            running = open_map.executing_now()
            if open_map.written and open_map.done == open_map.reported and running == open_map.running:
                continue
            open_map.running = running
            batch.pending_maps.append(_pending_map_write(map_id, open_map))
            open_map.written, open_map.reported = True, open_map.done
            if complete:
                del open_runs.maps[map_id]
        return batch


def _block_of(columns: RunColumns, positions: list[int] | None) -> TaskRunBlockWrite:
    """The runs of ``columns`` at ``positions`` (None: all) as one block."""
    numbers, names, starts, ends = columns.numbers, columns.name_numbers, columns.starts, columns.ends
    submitted: Sequence[float] | float = columns.submitted
    if positions is not None:
        numbers = [numbers[i] for i in positions]
        names = [names[i] for i in positions]
        starts = [starts[i] for i in positions]
        ends = [ends[i] for i in positions]
        if not isinstance(submitted, float):
            submitted = [submitted[i] for i in positions]
    return encode_block(
        flow_run_id=columns.flow_run_id, task=columns.task_name, id_prefix=columns.id_prefix,
        backend=columns.backend, worker=columns.worker, tags=_tags(columns.task), numbers=numbers,
        names=names, submitted=submitted, starts=starts, ends=ends,
    )


def _pending_map_write(map_id: str, open_map: _OpenMap) -> PendingMapWrite:
    columns = open_map.columns
    running = [
        [position, start, getattr(worker, "host", None), getattr(worker, "pid", None),
         getattr(worker, "thread", None), getattr(worker, "address", None)]
        for position, (start, worker) in sorted(open_map.running.items())
    ]
    return PendingMapWrite(
        map_id, columns.flow_run_id, columns.task_name, columns.id_prefix, columns.numbers[0],
        columns.name_numbers[0], len(columns), open_map.done, columns.submitted_at(0), columns.backend,
        _tags(columns.task), json.dumps(running, separators=(",", ":")) if running else None,
    )


def _column_event(columns: RunColumns, position: int, kind: EventKind) -> TaskRunEvent:
    return TaskRunEvent(
        kind, columns.run_id(position), columns.run_name(position), columns.task_name, columns.flow_run_id,
        columns.submitted_at(position), columns.backend, None, None, columns.task,
    )


def _write_from(event: TaskRunEvent, submitted: float | None) -> TaskRunWrite:
    """A pending (or running, after a STARTED event) run as a write."""
    write = TaskRunWrite(
        event.task_run_id, event.flow_run_id, event.task_name, event.task_run_name, "Pending", "PENDING",
        submitted=submitted, backend=event.backend, tags=_tags(event.task),
    )
    if event.kind is EventKind.STARTED:
        _apply(event, write)
    return write


_tags_cache: dict[int, tuple[Any, str | None]] = {}


def _tags(task: Any) -> str | None:
    """The task's tags as JSON text (None for none), cached per task object."""
    if task is None:
        return None
    cached = _tags_cache.get(id(task))
    if cached is not None and cached[0] is task:
        return cached[1]
    options = getattr(task, "options", None)
    tags = getattr(options, "tags", None)
    text = json.dumps(sorted(tags)) if tags else None
    if len(_tags_cache) > 4096:
        _tags_cache.clear()
    _tags_cache[id(task)] = (task, text)
    return text


def _set_worker(write: TaskRunWrite, worker: Any) -> None:
    if worker is not None:
        write.worker_host = worker.host
        write.worker_pid = worker.pid
        write.worker_thread = worker.thread
        write.worker_address = worker.address


def _apply(event: TaskRunEvent, write: TaskRunWrite) -> None:
    """Fold one event of a run into its write."""
    kind = event.kind
    if event.backend is not None:
        write.backend = event.backend
    if kind is EventKind.SUBMITTED:
        write.submitted = event.timestamp
        return
    _set_worker(write, event.worker)
    if kind is EventKind.STARTED:
        if write.state_type == "PENDING":
            write.state, write.state_type = "Running", "RUNNING"
            if not write.attempts:
                write.attempts = 1  # running its first attempt (the end says how many it took)
        write.start = event.timestamp
        return
    state = event.state
    assert state is not None
    _set_final(write, state, event.timestamp)


def _set_final(write: TaskRunWrite, state: Any, end: float) -> None:
    """Record a run's final state (and what it says about the run) in its write."""
    write.state = state.name
    write.state_type = str(state.type)
    if state.message:
        write.message = _limit(state.message)
    write.attempts = state.attempts
    if state.started_at is not None:
        write.start = state.started_at
    write.end = end
    write.cache_hit = state.name == "Cached"
    write.cache_key = getattr(state, "cache_key", None)
    if state.exception is not None and state.type != "COMPLETED":
        write.error_type, write.error_message = _error(state)
        write.traceback = state.traceback
    location = getattr(state, "result_location", None)
    if location is not None:
        write.result_storage, write.result_key = location


def _error(state: Any) -> tuple[str | None, str | None]:
    exc = state.exception
    if exc is None or state.type == "COMPLETED":
        return None, None
    kind = type(exc)
    module = kind.__module__
    name = kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    return name, _limit(str(exc))


def _limit(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "... (truncated)"


def _parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    return {str(name): json_safe(value) for name, value in parameters.items()}


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` where JSON can hold it (small containers of plain values); otherwise its
    ``repr`` (cut at 1,000 characters)."""
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str) and len(value) > _PARAMETER_REPR_LIMIT:
            return value[:_PARAMETER_REPR_LIMIT] + "..."
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if depth < 3 and type(value) in (list, tuple) and len(value) <= 100:
        return [json_safe(v, depth + 1) for v in value]
    if depth < 3 and type(value) is dict and len(value) <= 100 and all(isinstance(k, str) for k in value):
        return {k: json_safe(v, depth + 1) for k, v in value.items()}
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<unrepresentable {type(value).__name__}: {exc!r}>"
    return text if len(text) <= _PARAMETER_REPR_LIMIT else text[:_PARAMETER_REPR_LIMIT] + "..."


def _json_text(value: Any) -> str:
    return json.dumps(value, default=repr, sort_keys=True)


def _backend_options(event: FlowRunEvent) -> dict[str, Any]:
    """The options the run's backend was made with, when known: a backend made by name
    (a flow's backend, the configured one, ``flowcore run --backend-options``), not an
    object the user built (see ``flowcore.registry.options_of``)."""
    options = getattr(event.run, "backend_options", None)
    if not options:
        return {}
    return {str(k): json_safe(v) for k, v in options.items()}


class _LogHandler(logging.Handler):
    """Sends the run loggers' records to the history (see ``Recorder.accept_log``)."""

    def __init__(self, owner: Recorder) -> None:
        super().__init__(logging.NOTSET)
        self.owner = owner

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.owner.accept_log(record)
        except Exception:
            self.handleError(record)


recorder = Recorder()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=recorder.after_fork_in_child)


__all__ = ["Recorder", "json_safe", "recorder"]
