"""Cache keys are the same in the flow's process and in every worker.

A task defined in the user's script lives in ``__main__``: the flow's process holds
it by reference, a process worker receives it pickled by value (cloudpickle). Its
key must depend on its code and inputs only, so these tests run a real script as
``__main__`` in a subprocess, on real process pools.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("loky")

SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    import flowcore
    from flowcore import flow, task
    from flowcore.caching import INPUTS, TASK_SOURCE, task_input_hash

    OFFSET = 1


    def helper(x):
        return x + OFFSET


    class Scale:
        def apply(self, x):
            return 2 * x


    @task(cache_policy=INPUTS + TASK_SOURCE)
    def with_source(x):
        return Scale().apply(helper(x))


    @task(cache_key_fn=task_input_hash)
    def with_key_fn(x):
        return helper(x) * 3


    @task(cache_expiration=3600)  # the default policy
    def with_default(x):
        return helper(x) * 5


    def make_scaler(factor):
        @task(cache_policy=INPUTS + TASK_SOURCE, name=f"by_{factor}")
        def scale(x):
            return helper(x) * factor

        return scale


    by_7, by_11 = make_scaler(7), make_scaler(11)


    def backend(name):
        if name == "loky":
            return flowcore.get_backend("loky", max_workers=2)
        if name == "joblib":
            return flowcore.get_backend("joblib", n_jobs=2)
        return flowcore.get_backend(name)


    if __name__ == "__main__":
        mode, name = sys.argv[1], sys.argv[2]

        @flow(backend=backend(name))
        def main():
            states = {}
            for t in (with_source, with_key_fn, with_default, by_7, by_11):
                if mode == "here-then-worker":
                    first = t(1, return_state=True)  # in the flow's process
                    second = t.submit(1, return_state=True)  # in a worker
                else:
                    first = t.submit(1, return_state=True)
                    second = t.submit(1, return_state=True)
                states[t.name] = [first.name, second.name, first.result(), second.result()]
            return states

        print(json.dumps(main()))
    """
)


def _run(script: Path, cache: Path, *args: str) -> dict[str, list[object]]:
    env = {**os.environ, "FLOWCORE_CACHE_DIR": str(cache)}
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=script.parent,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, list[object]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.py"
    path.write_text(SCRIPT)
    return path


@pytest.mark.parametrize("backend", ["loky", "joblib", "dask"])
def test_a_call_in_the_flow_is_a_hit_in_a_worker(
    script: Path, tmp_path: Path, backend: str
) -> None:
    pytest.importorskip({"loky": "loky", "joblib": "joblib", "dask": "distributed"}[backend])
    states = _run(script, tmp_path / "cache", "here-then-worker", backend)
    assert states == {
        "with_source": ["Completed", "Cached", 4, 4],
        "with_key_fn": ["Completed", "Cached", 6, 6],
        "with_default": ["Completed", "Cached", 10, 10],
        "by_7": ["Completed", "Cached", 14, 14],
        "by_11": ["Completed", "Cached", 22, 22],
    }


def test_a_cache_filled_on_threads_serves_loky_workers(script: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    filled = _run(script, cache, "twice", "threads")
    assert [s[:2] for s in filled.values()] == [["Completed", "Cached"]] * 5

    served = _run(script, cache, "twice", "loky")
    assert [s[:2] for s in served.values()] == [["Cached", "Cached"]] * 5
    assert [s[2] for s in served.values()] == [4, 6, 10, 14, 22]

    from flowcore.caching import FileStore

    tasks = sorted(entry.task for entry in FileStore(cache).entries())
    assert tasks == ["by_11", "by_7", "with_default", "with_key_fn", "with_source"]  # one per call
