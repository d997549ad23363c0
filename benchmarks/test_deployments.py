"""What a worker's loop costs against the store (``pytest benchmarks/test_deployments.py -s``).

* an idle tick over N deployments with schedules (nothing due): reads only;
* the tick that creates one due scheduled run per deployment and claims them;
* a webhook request end to end (uvicorn on 127.0.0.1, one run queued per request).

No anchor of another library: the figure to compare is the worker's poll interval
(0.5 s) and the cron promise (a run claimed within 1 s of its time).
"""

from __future__ import annotations

import importlib
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flowcore.deployments import Deployment
from flowcore.deployments.store import DeploymentStore
from flowcore.schedules import CronSchedule

FLOW = '''
from flowcore import flow

@flow
def bench_flow(n: int = 1) -> int:
    return n
'''


@pytest.fixture
def populated(tmp_path: Path, quick: bool) -> Any:
    (tmp_path / "bench_flows.py").write_text(FLOW)
    sys.path.insert(0, str(tmp_path))
    module = importlib.import_module("bench_flows")
    sys.path.remove(str(tmp_path))
    store = DeploymentStore(tmp_path / "history.db")
    count = 10 if quick else 100
    start = 1_780_000_000.0 - 1_780_000_000.0 % 60
    for i in range(count):
        store.upsert(Deployment.build_from_flow(module.bench_flow, f"d{i}", schedule=CronSchedule(cron="* * * * *")),
                     now=start)
    yield store, start, count
    store.close()
    sys.modules.pop("bench_flows", None)


def test_idle_tick(populated: Any, benchmark: Any) -> None:
    store, start, count = populated

    def tick() -> None:
        now = start + 30
        store.schedule_due(now)
        store.claim("w", "default", now, limit=4)
        store.next_wake(now)

    benchmark(tick)
    print(f"\nidle tick over {count} deployments: {benchmark.stats['median'] * 1000:.2f} ms (median)")


def test_due_tick_creates_and_claims(populated: Any) -> None:
    store, start, count = populated
    t0 = time.perf_counter()
    created = store.schedule_due(start + 60)
    t1 = time.perf_counter()
    claimed = store.claim("w", "default", start + 60)
    t2 = time.perf_counter()
    assert created == count and len(claimed) == count
    print(f"\n{count} due runs: created in {(t1 - t0) * 1000:.1f} ms, claimed in {(t2 - t1) * 1000:.1f} ms")


def test_webhook_request(tmp_path: Path, populated: Any, quick: bool) -> None:
    pytest.importorskip("uvicorn")
    import socket

    from flowcore.deployments.webhook import WebhookServer

    store, _, _ = populated
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import os

    os.environ["FLOWCORE_API_TOKEN"] = "bench"
    try:
        server = WebhookServer(store.path, "127.0.0.1", port)
        server.start()
        url = f"http://127.0.0.1:{port}/api/deployments/bench_flow/d0/runs"
        timings = []
        for i in range(20 if quick else 200):
            request = urllib.request.Request(url, data=b'{"n": %d}' % i, method="POST",
                                             headers={"Authorization": "Bearer bench"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(request) as response:
                assert response.status == 201
            timings.append(time.perf_counter() - t0)
        server.stop()
    finally:
        os.environ.pop("FLOWCORE_API_TOKEN", None)
    timings.sort()
    print(f"\nwebhook POST -> run queued: median {timings[len(timings) // 2] * 1000:.1f} ms, "
          f"p95 {timings[int(len(timings) * 0.95)] * 1000:.1f} ms")
