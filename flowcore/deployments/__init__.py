"""Deployments, workers and event triggers, without a server.

* :class:`Deployment` (``Deployment.build_from_flow(flow, name, schedule=...).apply()``,
  or ``flow.to_deployment(...)``): a flow, how to import it, its schedules, default
  parameters, policies (catch-up, overlap, concurrency) and triggers, stored in the
  run history file (``$FLOWCORE_HOME/history.db``);
* :class:`FileTrigger`, :class:`DeploymentTrigger`: start runs when a file arrives or
  another deployment's run ends; every deployment also takes webhook calls
  (:mod:`.webhook`);
* ``flowcore worker start`` (:class:`~.worker.Worker`) creates the due runs, claims
  them and runs each in a child process; :func:`serve` (``flow.serve(...)``) does the
  same in this process for the deployments it is given.

Importing this package is cheap; :mod:`.store`, :mod:`.worker` and :mod:`.webhook`
load on use. ``import flowcore`` does not import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowcore.deployments.deployment import Deployment
from flowcore.deployments.triggers import DeploymentTrigger, FileTrigger

if TYPE_CHECKING:
    from flowcore.deployments.worker import Worker, WorkerOptions


def serve(*deployments: Deployment, limit: int | None = None, grace: float = 30.0,
          webhook_port: int | None = None) -> None:
    """Apply ``deployments`` and run them in this process until stopped (Ctrl-C or
    SIGTERM: running flow runs get ``grace`` seconds, then end ``Crashed``; schedules
    are never paused). Each flow run still executes in its own child process.
    ``limit``: flow runs at once. Raises DeploymentError when given nothing to serve.

    Called while a worker imports the flow's module for a run (``serve()`` at the top
    of a script, not under ``if __name__ == "__main__":``), it applies nothing, serves
    nothing, says so on stderr and returns: the run goes on."""
    import sys

    from flowcore.deployments.deployment import loading_entrypoint
    from flowcore.deployments.worker import serve_deployments
    from flowcore.errors import DeploymentError

    importing = loading_entrypoint()
    if importing is not None:
        print(f"flowcore: serve() ignored: it ran while a worker imported {importing} for a flow run; put "
              "the serve() call under `if __name__ == \"__main__\":` so that importing the module does not "
              "serve", file=sys.stderr)
        return

    if not deployments:
        raise DeploymentError("serve() needs at least one deployment: serve(flow.to_deployment(name='...'))")
    for deployment in deployments:
        if not isinstance(deployment, Deployment):
            raise DeploymentError(f"serve() takes deployments (flow.to_deployment(...)), got {deployment!r}")
    ids = [deployment.apply() for deployment in deployments]
    serve_deployments(ids, limit=limit, grace=grace, webhook_port=webhook_port)


def __getattr__(name: str) -> Any:
    if name in ("Worker", "WorkerOptions"):
        from flowcore.deployments import worker

        return getattr(worker, name)
    raise AttributeError(f"module 'flowcore.deployments' has no attribute {name!r}")


__all__ = ["Deployment", "DeploymentTrigger", "FileTrigger", "Worker", "WorkerOptions", "serve"]
