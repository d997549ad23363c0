"""What an installed flowcore must offer to workers and plugins."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any


def test_workloads_import_without_pytest() -> None:
    """Worker processes unpickle conformance tasks; they must not need pytest."""
    code = (
        "import sys; import flowcore.testing.workloads as w; "
        "print('pytest' in sys.modules, w.add(1, 2))"
    )
    result = _python(code)
    assert result.stdout.split() == ["False", "3"]


def test_conformance_suite_is_importable_on_demand() -> None:
    from flowcore.testing import BackendConformance, LifecycleRecorder

    assert hasattr(BackendConformance, "test_retries_until_success")
    assert hasattr(LifecycleRecorder, "flowcore_task_run_finished")


# -- pyproject.toml: supported Pythons and extras ----------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_python_3_11_is_the_oldest_supported_version() -> None:
    """Python 3.10 reached end of life in October 2026: every tool agrees on 3.11."""
    document = _pyproject()
    assert document["project"]["requires-python"] == ">=3.11"
    assert document["tool"]["ruff"]["target-version"] == "py311"
    assert document["tool"]["mypy"]["python_version"] == "3.11"
    # The backports for older Pythons are gone with them.
    assert not {"tomli", "typing_extensions", "typing-extensions"} & _requirement_names(
        document["project"]["dependencies"]
    )
    readme = (ROOT / "README.md").read_text()
    assert "Python 3.11+" in readme and "3.10" not in readme


def test_dask_extra_brings_the_dashboard() -> None:
    """LocalCluster advertises a dashboard that needs bokeh."""
    extras = _pyproject()["project"]["optional-dependencies"]
    assert "bokeh" in _requirement_names(extras["dask"])


def test_dev_extra_brings_every_optional_test_dependency() -> None:
    """The attrs/pydantic hashing test must run, not skip, after pip install -e .[dev]."""
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {"attrs", "pydantic"} <= _requirement_names(extras["dev"])


def test_every_package_is_in_the_explicit_package_list() -> None:
    """A package missing from the list works in an editable install and fails from the wheel."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    roots = {"flowcore": ROOT / "flowcore", "flowcore.backends": ROOT / "backends", "flowcore.plugins": ROOT / "plugins"}
    found = set()
    for prefix, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            if "__pycache__" not in parts:
                found.add(".".join((prefix, *parts)))
    assert found - listed == set()
    assert {"flowcore.schedules", "flowcore.server", "flowcore.server.schemas"} <= listed


def test_schedules_dependencies_are_core() -> None:
    """Schedules need a cron engine, dateutil for rrule, and zone data where the OS has none."""
    names = _requirement_names(_pyproject()["project"]["dependencies"])
    assert {"cronsim", "python-dateutil", "tzdata"} <= names


# -- what import flowcore leaves unloaded (issue 11: import time) ------------------------

#: Modules ``import flowcore`` must not load: each is loaded where it is first needed.
#: pathlib and urllib: configuration and stores only; pickle: process backends and
#: failure paths; hashlib (OpenSSL): kept results and cache keys; pluggy and
#: flowcore.hookspecs, flowcore.backend: the first backend table; flowcore.results,
#: flowcore.run_context, flowcore.option_inputs: persist_result, get_run_context(),
#: type checkers; flowcore.options (the option records and their validation): the
#: first ``@task`` / ``@flow``; signal (its enums): the first deadline; flowcore.mapping
#: and flowcore.mapped: the first ``.map`` or ``unmapped``; math (a shared library):
#: nothing the core runs needs it; the submit path (flowcore.dispatch, flowcore.futures,
#: flowcore.engine and the modules only they use, with concurrent.futures) and the run
#: loggers (flowcore.loggers, logging): a scope's first submit, a flow's first run,
#: ``TaskFuture``, ``wait``, ``get_run_logger``. The rest would be a regression of the
#: same kind.
NOT_LOADED_BY_IMPORT = (
    "pathlib",
    "urllib",
    "pickle",
    "hashlib",
    "_hashlib",
    "pluggy",
    "asyncio",
    "subprocess",
    "json",
    "sqlite3",
    "tomllib",
    "pydantic",
    "signal",
    "math",
    "flowcore.backend",
    "flowcore.hookspecs",
    "flowcore.config",
    "flowcore.options",
    "flowcore.results",
    "flowcore.run_context",
    "flowcore.option_inputs",
    "flowcore.backends",
    "flowcore.mapping",
    "flowcore.mapped",
    "logging",
    "concurrent",
    "flowcore.dispatch",
    "flowcore.futures",
    "flowcore.engine",
    "flowcore.reporting",
    "flowcore.serialization",
    "flowcore.log_relay",
    "flowcore.timeouts",
    "flowcore.loggers",
)


def test_import_flowcore_leaves_lazy_modules_unloaded() -> None:
    """Checked in a fresh interpreter. Whatever the interpreter loaded before flowcore
    (an editable install's path finder loads pathlib at startup) is dropped from
    ``sys.modules`` first, so that an import of it by flowcore shows."""
    code = (
        "import sys\n"
        f"names = {NOT_LOADED_BY_IMPORT!r}\n"
        "def listed(module):\n"
        "    return any(module == n or module.startswith(n + '.') for n in names)\n"
        "for module in [m for m in sys.modules if listed(m)]:\n"
        "    del sys.modules[module]\n"
        "import flowcore\n"
        "print(' '.join(sorted(m for m in sys.modules if listed(m))))\n"
    )
    result = _python(code)
    assert result.stdout.split() == [], f"import flowcore loaded {result.stdout.split()}"


def test_every_public_name_is_importable_and_listed() -> None:
    """Lazily loaded names (PEP 562 ``__getattr__``) work as ``from flowcore import X``
    and appear in ``dir(flowcore)``."""
    code = (
        "import flowcore\n"
        "missing = [n for n in flowcore.__all__ if n not in dir(flowcore)]\n"
        "for name in flowcore.__all__:\n"
        "    exec(f'from flowcore import {name}')\n"
        "from flowcore import get_run_context\n"
        "from flowcore.run_context import get_run_context as original\n"
        "from flowcore.options import FlowOptionInputs, TaskOptionInputs\n"
        "print(missing, get_run_context is original is flowcore.get_run_context,\n"
        "      sorted(TaskOptionInputs.__annotations__)[:1], sorted(FlowOptionInputs.__annotations__)[:1])\n"
    )
    result = _python(code)
    assert result.stdout.strip() == "[] True ['cache_expiration'] ['backend']"


def test_first_use_loads_what_import_deferred() -> None:
    """In a fresh interpreter: the first decoration, ``.map`` with ``unmapped``, a
    deadline, submits, ``wait`` and ``get_run_logger`` work, each loading its deferred
    modules then (and not before)."""
    code = (
        "import sys, flowcore\n"
        "def loaded(*names):\n"
        "    return [n in sys.modules for n in names]\n"
        "print(loaded('flowcore.options', 'flowcore.mapping', 'signal', 'flowcore.dispatch', 'logging'))\n"
        "@flowcore.task(retries=1, timeout_seconds=30)\n"
        "def add(x: int, y: int) -> int:\n"
        "    return x + y\n"
        "print(loaded('flowcore.options', 'flowcore.mapping', 'signal', 'flowcore.dispatch', 'logging'))\n"
        "@flowcore.flow(backend='sequential')\n"
        "def total() -> int:\n"
        "    return sum(f.result() for f in add.map([1, 2, 3], flowcore.unmapped(10)))\n"
        "print(total(), add(1, 2))\n"
        "from flowcore.tasks import exponential_backoff\n"
        "from flowcore.options import exponential_backoff as defined\n"
        "print(exponential_backoff is defined, loaded('flowcore.mapping', 'signal'))\n"
        "@flowcore.flow(backend='threads')\n"
        "def submits() -> int:\n"
        "    flowcore.get_run_logger().info('submitting')\n"
        "    futures = [add.submit(i, 1) for i in range(3)]\n"
        "    done, _ = flowcore.wait(futures)\n"
        "    return sum(f.result() for f in done if isinstance(f, flowcore.TaskFuture))\n"
        "print(submits(), loaded('flowcore.dispatch', 'logging'))\n"
    )
    lines = _python(code).stdout.splitlines()
    assert lines == [
        "[False, False, False, False, False]",
        "[True, False, False, False, False]",
        "36 3",
        "True [True, True]",
        "6 [True, True]",
    ]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; its output, checked for success."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
