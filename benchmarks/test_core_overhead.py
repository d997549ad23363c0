"""What flowcore itself costs: direct task calls, submit + result, and ``import flowcore``.

Every figure is measured next to an anchor in the same run, round by round: before
each timed round of the flowcore code, the anchor (the bare function, a raw
ThreadPoolExecutor, ``python -c pass``) runs once and is timed with
``time.perf_counter``. Ratios and overheads therefore compare numbers taken on the
same machine, minutes apart at most, under the same load.

Headline figures use the fastest round of each side (min/min): on a shared, noisy
machine the minimum is the least disturbed estimate of what the code itself costs.
Medians are stored too. Everything lands in ``benchmark.extra_info`` (see
``render_table.py``) and is printed (``pytest -s`` or ``-rP`` shows it).

Nothing here asserts on a timing: goals are reported (``met``), never enforced. The
tests do assert that the code under measurement computed the right thing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
from _harness import Paired, figure, record, run_paired

import flowcore

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

T = TypeVar("T")

#: Modules that must stay out of ``import flowcore`` (backends import them lazily).
HEAVY_MODULES = ("dask", "distributed", "joblib", "loky", "numpy", "pandas")

#: issue 11: "direct call overhead under 2 us" (history on, as by default)
DIRECT_CALL_GOAL_US = 2.0
SUBMIT_RATIO_GOAL = 1.3
IMPORT_GOAL_MS = 60.0
#: ``import flowcore`` over ``import joblib``, both -X importtime cumulative, same run.
IMPORT_JOBLIB_RATIO_GOAL = 0.25


# -- what is measured ----------------------------------------------------------------


@flowcore.task
def inc(x: int) -> int:
    return x + 1


def bare_inc(x: int) -> int:
    """The same body as ``inc``, as a separate plain function."""
    return x + 1


@flowcore.flow(name="benchmark-host")
def _in_flow(body: Callable[[], T]) -> T:
    """Run ``body`` inside a flow run (the flow's own start and finish are not timed)."""
    return body()


def call_loop(fn: Callable[[int], int], n: int) -> int:
    """``n`` direct calls of ``fn``; the same loop times the task and the bare function."""
    total = 0
    for i in range(n):
        total += fn(i)
    return total


def expected_sum(n: int) -> int:
    """sum(i + 1 for i in range(n))."""
    return n * (n + 1) // 2


# -- a. direct task calls inside a flow run ---------------------------------------------


def test_direct_call_overhead(benchmark: BenchmarkFixture, quick: bool) -> None:
    """Per-call cost of ``inc(i)`` inside a flow run over the bare function."""
    n = 2_000 if quick else 100_000
    rounds = 3 if quick else 15
    fast_path = bool(getattr(inc, "_plain", False))

    def measure() -> Paired:
        return run_paired(
            benchmark,
            subject=lambda: call_loop(inc, n),
            anchor=lambda: call_loop(bare_inc, n),
            rounds=rounds,
        )

    paired = _in_flow(measure)

    assert paired.subject_result == expected_sum(n)
    assert paired.anchor_result == expected_sum(n)
    overhead_us = (paired.subject_min - paired.anchor_min) / n * 1e6
    overhead_median_us = (paired.subject_median - paired.anchor_median) / n * 1e6
    record(
        benchmark,
        paired,
        anchor="bare function, same loop",
        n=n,
        figures=[
            figure("overhead per direct call", overhead_us, "µs", DIRECT_CALL_GOAL_US),
        ],
        overhead_us=round(overhead_us, 4),
        overhead_median_us=round(overhead_median_us, 4),
        task_call_us=round(paired.subject_min / n * 1e6, 4),
        bare_call_us=round(paired.anchor_min / n * 1e6, 4),
        fast_path=fast_path,
    )


# -- b. submit + result on the threads backend -------------------------------------------

WORKERS = 2


def _sequential_flowcore(n: int) -> int:
    total = 0
    for i in range(n):
        total += inc.submit(i).result()
    return total


def _sequential_raw(executor: ThreadPoolExecutor, n: int) -> int:
    total = 0
    for i in range(n):
        total += executor.submit(bare_inc, i).result()
    return total


def _throughput_flowcore(n: int) -> int:
    futures = [inc.submit(i) for i in range(n)]
    return sum(f.result() for f in futures)


def _throughput_raw(executor: ThreadPoolExecutor, n: int) -> int:
    futures: list[Future[int]] = [executor.submit(bare_inc, i) for i in range(n)]
    return sum(f.result() for f in futures)


@pytest.mark.parametrize("pattern", ["sequential", "submit_all_then_collect"])
def test_submit_result_vs_threadpool(
    benchmark: BenchmarkFixture, quick: bool, pattern: str
) -> None:
    """``t.submit(i).result()`` on ``threads`` against a raw ThreadPoolExecutor."""
    n = 200 if quick else 2_000
    rounds = 3 if quick else 10
    if pattern == "sequential":
        flowcore_fn, raw_fn = _sequential_flowcore, _sequential_raw
    else:
        flowcore_fn, raw_fn = _throughput_flowcore, _throughput_raw

    with (
        ThreadPoolExecutor(max_workers=WORKERS) as executor,
        flowcore.use_backend("threads", max_workers=WORKERS),
    ):
        paired = run_paired(
            benchmark,
            subject=lambda: flowcore_fn(n),
            anchor=lambda: raw_fn(executor, n),
            rounds=rounds,
        )

    assert paired.subject_result == expected_sum(n)
    assert paired.anchor_result == expected_sum(n)
    ratio = paired.subject_min / paired.anchor_min
    record(
        benchmark,
        paired,
        anchor=f"ThreadPoolExecutor(max_workers={WORKERS})",
        n=n,
        figures=[figure("flowcore / raw executor", ratio, "x", SUBMIT_RATIO_GOAL)],
        pattern=pattern,
        max_workers=WORKERS,
        flowcore_per_task_us=round(paired.subject_min / n * 1e6, 3),
        raw_per_task_us=round(paired.anchor_min / n * 1e6, 3),
    )


# -- c. import flowcore in a fresh interpreter ------------------------------------------

_IMPORTTIME_LINE = re.compile(r"^import time:\s*(\d+)\s*\|\s*(\d+)\s*\|(\s+)(\S+)\s*$")


def _python_env() -> dict[str, str]:
    """This environment, with bytecode writing allowed (cached .pyc is what users get)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _run_python(code: str, cwd: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *options, "-c", code],
        cwd=cwd,
        env=_python_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def parse_importtime(stderr: str) -> Iterator[tuple[str, int, int, int]]:
    """``(module, self_us, cumulative_us, depth)`` for each ``-X importtime`` line."""
    for line in stderr.splitlines():
        match = _IMPORTTIME_LINE.match(line)
        if match:
            self_us, cumulative_us, indent, module = match.groups()
            # One space separates the bar from a top-level name; two more per level.
            yield module, int(self_us), int(cumulative_us), (len(indent) - 1) // 2


def top_level_import_us(stderr: str, module: str) -> int:
    for name, _, cumulative, depth in parse_importtime(stderr):
        if name == module and depth == 0:
            return cumulative
    raise AssertionError(f"no top-level {module!r} line in the -X importtime output:\n{stderr}")


def import_tree_self_us(stderr: str, module: str) -> list[tuple[str, int]]:
    """``(name, self_us)`` of ``module`` and every module its top-level import loaded:
    -X importtime prints a module after those it imported, so they are the lines
    between the previous top-level line and ``module``'s."""
    tree: list[tuple[str, int]] = []
    for name, self_us, _, depth in parse_importtime(stderr):
        tree.append((name, self_us))
        if depth == 0:
            if name == module:
                return tree
            tree = []
    raise AssertionError(f"no top-level {module!r} line in the -X importtime output:\n{stderr}")


@pytest.fixture(scope="module")
def neutral_cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory outside the repository, so the installed package is imported."""
    return tmp_path_factory.mktemp("import-cwd")


def test_import_time(benchmark: BenchmarkFixture, quick: bool, neutral_cwd: Path) -> None:
    """Cold-process ``import flowcore``: -X importtime, its ratio to ``import joblib``
    (measured alternately in the same run), and wall time over ``python -c pass``."""
    repeats = 2 if quick else 7
    has_joblib = importlib.util.find_spec("joblib") is not None
    # Warm-up: writes the bytecode that later runs (and users) load.
    _run_python("import flowcore", neutral_cwd)
    if has_joblib:
        _run_python("import joblib", neutral_cwd)

    samples: list[int] = []
    joblib_samples: list[int] = []
    slowest: list[tuple[str, int]] = []
    for _ in range(repeats):
        stderr = _run_python("import flowcore", neutral_cwd, "-X", "importtime").stderr
        cumulative = top_level_import_us(stderr, "flowcore")
        if not samples or cumulative < min(samples):
            # The modules with the largest own (self) time in the fastest run, among
            # those ``import flowcore`` loaded (not what site loaded before it).
            lines = import_tree_self_us(stderr, "flowcore")
            slowest = sorted(lines, key=lambda item: item[1], reverse=True)[:8]
        samples.append(cumulative)
        if has_joblib:
            # The anchor, each time right after flowcore: both see the same load.
            joblib_stderr = _run_python("import joblib", neutral_cwd, "-X", "importtime").stderr
            joblib_samples.append(top_level_import_us(joblib_stderr, "joblib"))
    importtime_ms = min(samples) / 1e3

    paired = run_paired(
        benchmark,
        subject=lambda: _run_python("import flowcore", neutral_cwd).returncode,
        anchor=lambda: _run_python("pass", neutral_cwd).returncode,
        rounds=repeats,
    )
    assert paired.subject_result == 0
    wall_ms = (paired.subject_min - paired.anchor_min) * 1e3
    figures = [
        figure("import flowcore (-X importtime, cumulative)", importtime_ms, "ms", IMPORT_GOAL_MS),
        figure("import flowcore (wall, over python -c pass)", wall_ms, "ms", IMPORT_GOAL_MS),
    ]
    extra: dict[str, object] = {}
    if joblib_samples:
        ratio = min(samples) / min(joblib_samples)
        figures.append(
            figure("import flowcore / import joblib (-X importtime)", ratio, "x", IMPORT_JOBLIB_RATIO_GOAL)
        )
        extra = {
            "joblib_importtime_ms": round(min(joblib_samples) / 1e3, 3),
            "joblib_importtime_samples_us": joblib_samples,
            "joblib_ratio": round(ratio, 4),
        }
    record(
        benchmark,
        paired,
        anchor="python -c pass",
        n=1,
        figures=figures,
        importtime_ms=round(importtime_ms, 3),
        importtime_samples_us=samples,
        import_wall_ms=round(wall_ms, 3),
        slowest_modules_self_us=[f"{name}: {us}" for name, us in slowest],
        **extra,
    )


def test_import_loads_no_backend_dependency(neutral_cwd: Path) -> None:
    """Correctness, not timing: ``import flowcore`` leaves the heavy libraries unloaded."""
    code = "import sys, flowcore; print(' '.join(sorted(sys.modules)))"
    loaded = set(_run_python(code, neutral_cwd).stdout.split())
    assert "flowcore" in loaded
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY_MODULES)
    assert heavy == [], f"import flowcore loaded {heavy}"
