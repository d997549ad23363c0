"""The worker: creates due scheduled runs, watches triggers, claims runs, runs each
in a child process, and records how each ended.

::

    every tick (at most every `poll` seconds; at once when a fire time comes or a run is requested)
      store.crash_orphans          runs of dead workers -> Crashed        (every 5 s, with the heartbeat)
      reap children                exited child -> its own final state, or Crashed (exit code / signal)
      store.schedule_due           due fire times -> queued runs (catch-up policy, unique keys)
      file watchers                stable new files -> queued runs (key: path, size, mtime)
      cancel requests              overlap="cancel_running" -> SIGTERM the child -> Cancelled
      store.claim                  queued runs -> Running (overlap, concurrency limits, --limit)
      spawn                        python -m flowcore.deployments.child (own session, dies with us)

Stopping (SIGTERM, SIGINT/Ctrl-C, :meth:`Worker.stop`): the worker stops creating and
claiming runs at once, lets running flow runs finish for ``grace`` seconds, then
stops them (SIGTERM, SIGKILL 5 s later) and ends them ``Crashed`` with the reason.
A second signal skips the rest of the grace period. Schedules are never paused: the
next worker creates what is due under each deployment's catch-up policy. No run is
left ``Running``: a worker killed outright (``kill -9``) takes its children with it
(they die with their parent) and the next worker to look ends those runs ``Crashed``.

Time is injectable (``clock``) so tests move a worker's "now" anywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from flowcore.deployments import scheduler
from flowcore.deployments.child import ENV_BACKEND, ENV_RUN_ID, ENV_STORE, ENV_WORKER_PID
from flowcore.deployments.store import DeploymentRun, DeploymentStore, store_path
from flowcore.deployments.triggers import FileTrigger, FileWatcher, trigger_from_dict

#: seconds between heartbeats, dead-worker checks and deployment refreshes
HEARTBEAT_S = 5.0
#: seconds before a pass of the loop that raised is tried again
RETRY_S = 1.0
#: seconds between scans of file triggers
FILE_POLL_S = 1.0
#: seconds a child gets after SIGTERM before SIGKILL
KILL_AFTER_S = 5.0


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs (``flowcore worker start`` options).

    ``pool``: the work pool whose deployments it serves (None with ``deployment_ids``:
    any). ``limit``: flow runs at once in this worker (None: no limit). ``backend``:
    overrides every deployment's backend. ``grace``: seconds running flow runs get
    to finish when the worker is stopped. ``late_after``: a fire time older than this
    when first seen was missed (catch-up policy), and a queued run this late is
    marked ``Late``. ``deployment_ids``: serve only these (``flowcore.serve``).
    """

    pool: str | None = "default"
    limit: int | None = None
    backend: str | None = None
    grace: float = 30.0
    poll: float = 0.5
    late_after: float = scheduler.LATE_AFTER_S
    deployment_ids: tuple[str, ...] | None = None
    webhook_port: int | None = None
    webhook_host: str = "127.0.0.1"


@dataclass
class _Child:
    run: DeploymentRun
    name: str
    process: subprocess.Popen[bytes]
    #: why the worker stops it (set once it was sent SIGTERM)
    stop_state: str | None = None
    stop_reason: str = ""
    kill_at: float | None = None


@dataclass
class _Watchers:
    deployment_id: str
    watchers: list[tuple[FileWatcher, str]] = field(default_factory=list)


class Worker:
    """One worker process (see the module docstring). ``run()`` blocks until stopped.

    ``clock`` returns the current time in epoch seconds (default :func:`time.time`);
    ``out`` receives one line per event (claimed, finished, skipped ...).
    """

    def __init__(
        self,
        options: WorkerOptions | None = None,
        *,
        path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        out: IO[str] | None = None,
    ) -> None:
        self.options = options if options is not None else WorkerOptions()
        self.path = Path(path) if path is not None else store_path()
        self.store = DeploymentStore(self.path)
        self.clock = clock
        self.out = out if out is not None else sys.stderr
        self.id = uuid.uuid4().hex
        self._children: dict[str, _Child] = {}
        self._wake = threading.Event()
        self._stop_reason: str | None = None
        self._stop_deadline: float | None = None
        self._grace_cut = False
        self._last_beat = float("-inf")
        self._last_files = float("-inf")
        self._watchers: dict[str, _Watchers] = {}
        self._names: dict[str, str] = {}
        self._webhook: Any = None
        self._said_failures: set[str] = set()  # each distinct failure of a pass is said once
        self.started = False

    # -- control ----------------------------------------------------------------------------
    def wake(self) -> None:
        """Make the loop look at the store now (a run was requested)."""
        self._wake.set()

    def stop(self, reason: str = "stopped", *, immediate: bool = False) -> None:
        """Stop claiming; running flow runs get the grace period (none if ``immediate``,
        or on a second call). Thread-safe and signal-safe."""
        if self._stop_reason is not None or immediate:
            self._stop_deadline = time.monotonic()
            self._grace_cut = True
        else:
            self._stop_deadline = time.monotonic() + self.options.grace
        if self._stop_reason is None:
            self._stop_reason = reason
        self._wake.set()

    def _say(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        with contextlib.suppress(ValueError, OSError):
            print(f"{stamp} worker {self.id[:8]}: {message}", file=self.out, flush=True)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Work until stopped; returns 0. Installs SIGTERM/SIGINT handlers when called
        from the main thread (restored on return)."""
        from flowcore.history import liveness

        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        pid = os.getpid()
        self.store.register_worker(self.id, self.options.pool or "*", liveness.this_host(), pid,
                                   liveness.process_start(pid), self.clock())
        scope = f"pool {self.options.pool!r}" if self.options.pool else "its deployments"
        limit = f", at most {self.options.limit} runs at once" if self.options.limit else ""
        self._say(f"started on {scope}{limit} (store {self.path}); stop with Ctrl-C or SIGTERM")
        try:
            if self.options.webhook_port is not None:
                self._start_webhook()
            self.started = True
            while True:
                delay = self._guarded_tick()
                if self._stop_reason is not None and not self._children:
                    break
                self._wake.wait(max(0.0, delay))
                self._wake.clear()
        finally:
            self._shutdown()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 0

    def _guarded_tick(self) -> float:
        """:meth:`tick`; an exception out of it (a row this version cannot read, the
        store locked past its timeout) is said once per distinct message and the pass
        is tried again later: the running flow runs go on (they ended Crashed when the
        exception stopped the worker)."""
        try:
            delay = self.tick()
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if message not in self._said_failures and len(self._said_failures) < 100:
                self._said_failures.add(message)
                self._say(f"a pass of the loop failed ({message}); running flow runs go on; "
                          f"trying again every {RETRY_S:g} s")
            if self._stop_reason is not None:
                self._stopping(time.monotonic())  # the grace period still ends
            return RETRY_S
        return delay

    def _on_signal(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self._stop_reason is None:
            self._say(f"{name}: no new runs; waiting up to {self.options.grace:g} s for "
                      f"{len(self._children)} running flow run(s) (again to stop them now)")
        self.stop(f"the worker was stopped ({name})")

    def tick(self) -> float:
        """One pass of the loop; returns the seconds until the next one is wanted."""
        now = self.clock()
        monotonic = time.monotonic()
        options = self.options
        self._reap(now)
        if monotonic - self._last_beat >= HEARTBEAT_S:
            self._last_beat = monotonic
            self.store.heartbeat(self.id, now)
            ended = self.store.crash_orphans(now)
            if ended:
                self._say(f"ended {ended} run(s) of dead workers Crashed")
            self._refresh_watchers()
        if self._stop_reason is not None:
            return self._stopping(monotonic)
        ids = options.deployment_ids
        created = self.store.schedule_due(now, pool=options.pool, ids=ids, late_after=options.late_after)
        if created:
            self._say(f"scheduled {created} run(s)")
        if self._watchers and monotonic - self._last_files >= FILE_POLL_S:
            self._last_files = monotonic
            self._poll_files(now)
        if self._children:
            for run_id, reason in self.store.cancel_requests(self.id):
                child = self._children.get(run_id)
                if child is not None and child.stop_state is None:
                    self._say(f"cancelling run {run_id[:8]} of {child.name}: {reason}")
                    self._terminate(child, "Cancelled", reason, monotonic)
        room = None if options.limit is None else options.limit - len(self._children)
        if room is None or room > 0:
            for run in self.store.claim(self.id, options.pool, now, limit=room, ids=ids):
                self._spawn(run, now)
        wake = self.store.next_wake(now, pool=options.pool, ids=ids)
        delay = options.poll
        if wake is not None:
            delay = min(delay, max(0.0, wake - self.clock()))
        return delay

    def _stopping(self, monotonic: float) -> float:
        deadline = self._stop_deadline if self._stop_deadline is not None else monotonic
        if monotonic >= deadline:
            for child in self._children.values():
                if child.stop_state is None:
                    if self._grace_cut:
                        reason = f"{self._stop_reason}; stopped at once (a second signal, no grace period)"
                    else:
                        reason = (f"{self._stop_reason} and the run did not finish within the "
                                  f"{self.options.grace:g} s grace period")
                    self._terminate(child, "Crashed", reason, monotonic)
        for child in self._children.values():
            if child.kill_at is not None and monotonic >= child.kill_at:
                with contextlib.suppress(OSError):
                    os.killpg(child.process.pid, signal.SIGKILL)
        return 0.1

    # -- children -------------------------------------------------------------------------------
    def _deployment_name(self, deployment_id: str) -> str:
        name = self._names.get(deployment_id)
        if name is None:
            try:
                name = self.store.deployment(deployment_id).full_name
            except Exception:
                name = deployment_id[:8]
            self._names[deployment_id] = name
        return name

    def _spawn(self, run: DeploymentRun, now: float) -> None:
        name = self._deployment_name(run.deployment_id)
        env = dict(os.environ)
        env[ENV_RUN_ID] = run.id
        env[ENV_STORE] = str(self.path)
        env[ENV_WORKER_PID] = str(os.getpid())
        if self.options.backend:
            env[ENV_BACKEND] = self.options.backend
        try:
            cwd = self.store.deployment(run.deployment_id).working_dir
        except Exception:
            cwd = ""
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "flowcore.deployments.child"], env=env,
                cwd=cwd if cwd and os.path.isdir(cwd) else None, stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the worker only
            )
        except OSError as exc:
            self.store.finish_run(run.id, "Crashed", f"the worker could not start its process: {exc}", now)
            self._say(f"run {run.id[:8]} of {name}: could not start a process: {exc}")
            return
        self.store.set_pid(run.id, process.pid)
        self._children[run.id] = _Child(run, name, process)
        late = f", {now - run.scheduled_time:.0f} s late" if run.late else ""
        self._say(f"started run {run.id[:8]} of {name} ({run.kind}{late}), pid {process.pid}")

    def _terminate(self, child: _Child, state: str, reason: str, monotonic: float) -> None:
        child.stop_state, child.stop_reason = state, reason
        child.kill_at = monotonic + KILL_AFTER_S
        with contextlib.suppress(OSError):
            os.killpg(child.process.pid, signal.SIGTERM)

    def _reap(self, now: float) -> None:
        monotonic = time.monotonic()
        for run_id, child in list(self._children.items()):
            code = child.process.poll()
            if code is None:
                if child.kill_at is not None and monotonic >= child.kill_at:
                    with contextlib.suppress(OSError):
                        os.killpg(child.process.pid, signal.SIGKILL)
                continue
            del self._children[run_id]
            with contextlib.suppress(OSError):
                os.killpg(child.process.pid, signal.SIGKILL)  # what it left behind in its session
            if child.stop_state is not None:
                ended = self.store.finish_run(run_id, child.stop_state, child.stop_reason, now)
            else:
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                ended = self.store.finish_run(
                    run_id, "Crashed", f"its process (pid {child.process.pid}) {how} before recording a final state", now)
            final = self.store.run(run_id)
            self._say(f"run {run_id[:8]} of {child.name} ended {final.state}"
                      + (f": {final.message}" if final.message and (ended or final.state != 'Completed') else ""))

    def _shutdown(self) -> None:
        """Never leave a run Running: stop what is left (an exception got here)."""
        now = self.clock()
        for child in self._children.values():
            with contextlib.suppress(OSError):
                os.killpg(child.process.pid, signal.SIGKILL)
        for run_id, child in list(self._children.items()):
            with contextlib.suppress(Exception):
                child.process.wait(10)
            reason = child.stop_reason or f"{self._stop_reason or 'the worker stopped'}; the run was stopped"
            self.store.finish_run(run_id, child.stop_state or "Crashed", reason, now)
        self._children.clear()
        if self._webhook is not None:
            self._webhook.stop()
        self.store.stop_worker(self.id, now)
        self._say("stopped")
        self.store.close()

    # -- triggers ---------------------------------------------------------------------------------
    def _refresh_watchers(self) -> None:
        found: dict[str, _Watchers] = {}
        for record in self.store.list_deployments(pool=self.options.pool, ids=self.options.deployment_ids):
            if record.paused:
                continue
            for data in record.triggers:
                if data.get("type") != "file":
                    continue
                trigger = trigger_from_dict(data)
                if not isinstance(trigger, FileTrigger):
                    continue
                group = found.setdefault(record.id, _Watchers(record.id))
                old = self._watchers.get(record.id)
                kept = next((w for w, _ in (old.watchers if old else []) if w.trigger == trigger), None)
                group.watchers.append((kept or FileWatcher(trigger), trigger.parameter))
        self._watchers = found

    def _poll_files(self, now: float) -> None:
        for group in self._watchers.values():
            for watcher, parameter in group.watchers:
                ready = watcher.poll(now)
                if watcher.problem != watcher.told:
                    self._tell_file_problem(group.deployment_id, watcher, now)
                for path, size, mtime_ns in ready:
                    key = f"file:{group.deployment_id}:{path}:{size}:{mtime_ns}"
                    if self.store.has_key(key):
                        continue  # started before (this worker or an earlier one)
                    try:
                        run_id, created = self.store.request_run(
                            group.deployment_id, {parameter: path}, kind="file", key=key, source=path, now=now)
                    except Exception as exc:
                        self.store.feed_event(group.deployment_id, "file", path, "skipped", str(exc), now=now)
                        continue
                    if created:
                        self._say(f"file {path} -> run {run_id[:8]} of {self._deployment_name(group.deployment_id)}")

    def _tell_file_problem(self, deployment_id: str, watcher: FileWatcher, now: float) -> None:
        """Say once (output and trigger feed) that a FileTrigger's directory cannot be
        watched, or that it can be again."""
        name = self._deployment_name(deployment_id)
        directory = watcher.trigger.path
        if watcher.problem is not None:
            reason = (f"{watcher.problem}; files there start runs once it can be read (create it, or fix "
                      "FileTrigger(path=...) and apply the deployment again)")
            self._say(f"file trigger of {name}: {reason}")
            self.store.feed_event(deployment_id, "file", directory, "skipped", reason, now=now)
        else:
            self._say(f"file trigger of {name}: watching {directory} again")
        watcher.told = watcher.problem

    def _start_webhook(self) -> None:
        from flowcore.deployments.webhook import WebhookServer

        assert self.options.webhook_port is not None
        self._webhook = WebhookServer(self.path, self.options.webhook_host, self.options.webhook_port,
                                      on_request=self.wake, say=self._say)
        self._webhook.start()


def serve_deployments(ids: Iterable[str], *, limit: int | None = None, grace: float = 30.0,
                      webhook_port: int | None = None, path: str | Path | None = None) -> int:
    """Run a worker for exactly these deployments (any pool) until stopped."""
    options = WorkerOptions(pool=None, limit=limit, grace=grace, deployment_ids=tuple(ids), webhook_port=webhook_port)
    return Worker(options, path=path).run()


__all__ = ["Worker", "WorkerOptions", "serve_deployments"]
