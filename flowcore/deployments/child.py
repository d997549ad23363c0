"""The process that executes one deployment run: ``python -m flowcore.deployments.child``.

A worker starts one per claimed run (so a crash, a segfault or the OOM killer takes
this process, never the worker) with the run's id in :data:`ENV_RUN_ID` and the
store in :data:`ENV_STORE`. It imports the flow from the deployment's entrypoint,
calls it with the run's parameters, records which flow run it started (the flow run
and its task runs and logs go to the history through the normal recorder), and
ends the deployment run in the flow's final state, which starts chained runs.

It dies with its worker: the kernel sends it SIGKILL when the worker dies (Linux
``PR_SET_PDEATHSIG``), and a lifeline thread watches the parent pid elsewhere. A run
whose worker is gone is then ended ``Crashed`` by the next worker to look.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from flowcore.hookspecs import hookimpl

ENV_RUN_ID = "FLOWCORE_DEPLOYMENT_RUN_ID"
ENV_STORE = "FLOWCORE_DEPLOYMENT_STORE"
ENV_WORKER_PID = "FLOWCORE_WORKER_PID"
ENV_BACKEND = "FLOWCORE_WORKER_BACKEND"

_NAMES = {"COMPLETED": "Completed", "FAILED": "Failed", "CRASHED": "Crashed", "CANCELLED": "Cancelled"}


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def lifeline() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(70)
            time.sleep(0.5)

    if os.getppid() != parent:
        os._exit(70)
    threading.Thread(target=lifeline, name="flowcore-worker-lifeline", daemon=True).start()


class _Linker:
    """Records the first top-level flow run started here as the deployment run's."""

    def __init__(self, store: Any, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.linked = False

    @hookimpl
    def flowcore_flow_run_started(self, flow: Any, run: Any) -> None:
        if self.linked or run.parent_run_id is not None:
            return
        self.linked = True
        self.store.link_flow_run(self.run_id, run.run_id)


def main(argv: Sequence[str] | None = None) -> int:
    from flowcore.deployments.deployment import Entrypoint
    from flowcore.deployments.store import DeploymentStore
    from flowcore.errors import FlowcoreError

    parent = os.environ.get(ENV_WORKER_PID)
    if parent:
        _die_with_parent(int(parent))
    run_id = os.environ[ENV_RUN_ID]
    store = DeploymentStore(os.environ[ENV_STORE])
    run = store.run(run_id)
    deployment = store.deployment(run.deployment_id)
    try:
        flow = Entrypoint(deployment.entrypoint, deployment.import_path, deployment.working_dir).load()
    except FlowcoreError as exc:
        store.finish_run(run_id, "Failed", str(exc))
        print(f"flowcore worker: run {run_id[:8]} of {deployment.full_name}: {exc}", file=sys.stderr)
        return 1
    from flowcore.registry import get_registry

    linker = _Linker(store, run_id)
    get_registry().register(linker, name="flowcore-deployment-run")
    backend = os.environ.get(ENV_BACKEND) or deployment.backend
    options = deployment.backend_options
    try:
        if options:
            from flowcore.selection import get_backend

            with get_backend(backend or None, **options) as chosen:
                state = flow.with_options(backend=chosen)(**run.parameters, return_state=True)
        else:
            if backend:
                flow = flow.with_options(backend=backend)
            state = flow(**run.parameters, return_state=True)
    except FlowcoreError as exc:  # the backend could not be made; the flow did not start
        store.finish_run(run_id, "Failed", str(exc))
        print(f"flowcore worker: run {run_id[:8]} of {deployment.full_name}: {exc}", file=sys.stderr)
        return 1
    name = _NAMES.get(str(state.type), "Failed")
    store.finish_run(run_id, name, state.message or ("" if name == "Completed" else state.name))
    store.close()
    return 0 if name == "Completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
