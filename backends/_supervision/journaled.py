"""What process backends whose workers journal their runs can do for the core.

A backend whose worker processes keep a run journal (:mod:`.journal`) can stop the
runs of a failed flow by ending just their workers, and can enforce a hard timeout on
a run stuck in C code by ending its worker (:mod:`.hard_timeouts`). Both are imported
when first used, so importing this module costs nothing.
:class:`JournaledWorkers` gives such a backend those optional methods of the backend
protocol; loky and joblib (on its loky pool) use it, and the Dask backend uses its
stop for the workers of a local cluster.
"""

from __future__ import annotations

from flowcore.backend import Backend, WorkerLost


class JournaledWorkers(Backend):
    """Mixin: ``stop_runs`` and hard timeouts through the worker journal.

    A subclass declares ``stops_running`` / ``hard_timeouts`` in its capabilities and
    calls :meth:`deadline_verdict` first in its ``explain_failure``.
    """

    def stop_runs(self, task_run_ids: set[str], *, closing: bool = False) -> None:
        from .journal import kill_workers_running

        kill_workers_running(task_run_ids)

    def deadline_journals(self) -> tuple[str, ...]:
        """The journal directories of the workers whose deadlines are watched (empty:
        this process's own, where the pool workers it starts journal)."""
        return ()

    def watch_deadline(self, task_run_id: str, timeout: float) -> None:
        from .hard_timeouts import hard_timeouts

        hard_timeouts.watch(task_run_id, timeout, self.deadline_journals())

    def unwatch_deadline(self, task_run_id: str) -> None:
        from .hard_timeouts import hard_timeouts

        hard_timeouts.unwatch(task_run_id)

    def deadline_verdict(self, task_run_id: str) -> WorkerLost | None:
        """A lost run whose worker the deadline watch ended: ``TimedOut`` for that
        attempt, whatever else the pool saw. None otherwise."""
        from .hard_timeouts import hard_timeouts

        timeout = hard_timeouts.killed_timeout(task_run_id)
        if timeout is None:
            return None
        return WorkerLost(
            culprit=True,
            message=(
                f"exceeded its timeout of {timeout:g} s inside code that ignored the timer "
                "signal; its worker process was killed"
            ),
            timed_out=True,
        )


__all__ = ["JournaledWorkers"]
