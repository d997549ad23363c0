"""One backend's measurements, in a process of its own.

Run as ``python -m flowcore.bench.child TARGET BACKEND PARAMS_JSON REPEAT WARMUP``;
prints one line ``FLOWCORE-BENCH-RESULT <json>`` on stdout (the flow may print
anything else). Wall time per run; CPU time and peak memory of the whole process tree
(this process and the workers it starts), sampled every few milliseconds with psutil
when it is installed, else this process's own figures.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
import traceback
from typing import Any

MARKER = "FLOWCORE-BENCH-RESULT "
SAMPLE_SECONDS = 0.01


class TreeSampler:
    """Samples the CPU time and resident memory of this process and its descendants.

    CPU time of a process is counted from when it is first seen (or from ``start`` for
    processes alive then) to its last sample, so workers that exit before the end of a
    run (a cluster closed by the flow) still count, up to the last sample.
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._root = psutil.Process()
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flowcore-bench-sampler", daemon=True)

    def _processes(self) -> list[Any]:
        try:
            return [self._root, *self._root.children(recursive=True)]
        except self._psutil.Error:
            return [self._root]

    def _sample(self, *, initial: bool = False) -> None:
        rss = 0
        for process in self._processes():
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    cpu = times.user + times.system
                    rss += process.memory_info().rss
            except self._psutil.Error:
                continue
            # Alive at the start: count from now. Born during the run: count it all.
            self._base.setdefault(process.pid, cpu if initial else 0.0)
            self._last[process.pid] = cpu
        self.peak_rss = max(self.peak_rss, rss)

    def start(self) -> None:
        self._sample(initial=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def stop(self) -> float:
        """Stop sampling; the CPU seconds used by the tree since :meth:`start`."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(last - self._base.get(pid, 0.0) for pid, last in self._last.items())


def _fingerprint(value: Any) -> str | None:
    """A hash of the result, to compare backends: content hash, else pickle bytes."""
    try:
        from flowcore.caching import content_hash

        return "content:" + content_hash(value)
    except Exception:  # any value: fall back to its pickle
        pass
    try:
        import cloudpickle
        import xxhash

        return "pickle:" + xxhash.xxh3_128_hexdigest(cloudpickle.dumps(value))
    except Exception:
        return None


def measure(target: str, backend: str, params: dict[str, Any], repeat: int, warmup: int) -> dict[str, Any]:
    """Run the flow ``warmup`` times unmeasured, then ``repeat`` times measured."""
    from flowcore.cli import load_flow

    flow_obj = load_flow(target, command="flowcore bench").with_options(backend=backend)
    report: dict[str, Any] = {"backend": backend, "status": "ok", "error": None}
    try:
        import psutil  # noqa: F401

        sampled = True
    except ImportError:
        sampled = False
    report["sampled_tree"] = sampled
    walls: list[float] = []
    cpus: list[float] = []
    peak = 0
    result_hash: str | None = None
    for index in range(warmup + repeat):
        measured = index >= warmup
        sampler = TreeSampler() if sampled and measured else None
        cpu_start = time.process_time()
        if sampler is not None:
            sampler.start()
        started = time.perf_counter()
        state = flow_obj(**params, return_state=True)
        wall = time.perf_counter() - started
        tree_cpu = sampler.stop() if sampler is not None else None
        if not state.is_completed():
            report["status"] = "failed"
            report["error"] = f"{state.name}: {state.message}"
            break
        if measured:
            walls.append(wall)
            cpus.append(tree_cpu if tree_cpu is not None else time.process_time() - cpu_start)
            if sampler is not None:
                peak = max(peak, sampler.peak_rss)
            if result_hash is None:
                result_hash = _fingerprint(state.result())
    if not sampled:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report.update(
        wall_seconds=walls,
        median_wall_seconds=statistics.median(walls) if walls else None,
        cpu_seconds=statistics.median(cpus) if cpus else None,
        peak_rss_bytes=peak or None,
        result_hash=result_hash,
    )
    return report


def main(argv: list[str]) -> int:
    target, backend, params_json, repeat, warmup = argv
    try:
        report = measure(target, backend, json.loads(params_json), int(repeat), int(warmup))
    except BaseException as exc:  # reported, never raised past the table
        report = {
            "backend": backend,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    sys.stdout.write(MARKER + json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main(sys.argv[1:]))
