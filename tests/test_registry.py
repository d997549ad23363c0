"""Backend registration through pluggy: programmatic plugins, entry points, and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import flowcore
from flowcore import flow, plugins, task
from flowcore.backend import BackendKind, BackendSpec, ExecutorBackend
from flowcore.context import current_scope
from flowcore.errors import BackendNotFoundError, BackendRegistrationError
from flowcore.registry import get_registry

SUBPROCESS_TIMEOUT = 120


@task
def double(x: int) -> int:
    return x * 2


def _thread_backend(name: str, max_workers: int = 2) -> ExecutorBackend:
    return ExecutorBackend(name, BackendKind.THREADS, max_workers, lambda n: ThreadPoolExecutor(n))


class BackendPlugin:
    """A throwaway plugin object providing the given specs."""

    def __init__(self, *specs: Any) -> None:
        self.specs = list(specs)

    @flowcore.hookimpl
    def flowcore_backends(self) -> list[Any]:
        return self.specs


def _spec(name: str, **extra: Any) -> BackendSpec:
    return BackendSpec(
        name=name,
        factory=lambda max_workers=2: _thread_backend(name, max_workers),
        description="a test backend",
        kind=BackendKind.THREADS,
        **extra,
    )


@pytest.fixture
def registered() -> Iterator[list[object]]:
    """Plugins appended here are unregistered after the test, whatever happens."""
    to_unregister: list[object] = []
    try:
        yield to_unregister
    finally:
        for plugin in to_unregister:
            plugins.unregister(plugin)


def _assert_builtins_work() -> None:
    assert {"sequential", "threads"} <= set(get_registry().backends())
    with flowcore.use_backend("threads"):
        assert double.submit(4).result() == 8
    assert flow(backend="sequential")(lambda: double.submit(1).result())() == 2


# -- programmatic registration -----------------------------------------------------------


def test_registered_plugin_backend_is_usable_by_name(registered: list[object]) -> None:
    plugin = BackendPlugin(_spec("test-pool"))
    name = plugins.register(plugin, name="test-pool-plugin")
    registered.append(plugin)
    assert name == "test-pool-plugin"
    assert get_registry().backends()["test-pool"].plugin == "test-pool-plugin"

    backend = flowcore.get_backend("test-pool", max_workers=3)
    try:
        assert (backend.name, backend.max_workers) == ("test-pool", 3)
        assert backend.submit(int, "5").result(timeout=30) == 5
    finally:
        backend.shutdown()

    @flow(backend="test-pool")
    def pipeline() -> tuple[str, list[int]]:
        scope = current_scope()
        assert scope is not None
        return scope.backend().name, [f.result() for f in double.map([1, 2, 3])]

    assert pipeline() == ("test-pool", [2, 4, 6])
    with flowcore.use_backend("test-pool") as used:
        assert used.name == "test-pool"
        assert double.submit(5).result() == 10


def test_unregistered_plugin_backend_is_gone() -> None:
    plugin = BackendPlugin(_spec("short-lived"))
    plugins.register(plugin, name="short-lived-plugin")
    try:
        assert "short-lived" in get_registry().backends()
    finally:
        plugins.unregister(plugin)
    with pytest.raises(BackendNotFoundError) as info:
        flowcore.get_backend("short-lived")
    assert "short-lived" not in info.value.registered
    # Unregistering again (or by an unknown name) is harmless.
    plugins.unregister(plugin)
    plugins.unregister(name="never-registered")
    _assert_builtins_work()


def test_unregister_by_name() -> None:
    plugin = BackendPlugin(_spec("by-name"))
    plugins.register(plugin, name="by-name-plugin")
    try:
        assert "by-name" in get_registry().backends()
    finally:
        plugins.unregister(name="by-name-plugin")
    assert "by-name" not in get_registry().backends()


def test_duplicate_backend_name_is_rejected_naming_both_plugins(registered: list[object]) -> None:
    first = BackendPlugin(_spec("twice"))
    plugins.register(first, name="first-plugin")
    registered.append(first)
    second = BackendPlugin(_spec("twice"))
    try:
        with pytest.raises(BackendRegistrationError) as info:
            plugins.register(second, name="second-plugin")
    finally:
        plugins.unregister(second)
    message = str(info.value)
    assert "twice" in message
    assert "first-plugin" in message and "second-plugin" in message
    # The registry is still usable, and the first registration stands.
    assert get_registry().backends()["twice"].plugin == "first-plugin"
    _assert_builtins_work()


def test_duplicate_of_a_builtin_backend_is_rejected(registered: list[object]) -> None:
    impostor = BackendPlugin(_spec("threads"))
    try:
        with pytest.raises(BackendRegistrationError) as info:
            plugins.register(impostor, name="impostor-plugin")
    finally:
        plugins.unregister(impostor)
    message = str(info.value)
    assert "impostor-plugin" in message and "flowcore.backends.threads" in message
    assert get_registry().backends()["threads"].plugin == "flowcore.backends.threads"
    _assert_builtins_work()
    # The rejected plugin's name is free again: a fixed plugin may take it.
    fixed = BackendPlugin(_spec("not-threads"))
    plugins.register(fixed, name="impostor-plugin")
    registered.append(fixed)
    assert flowcore.get_backend("not-threads").name == "not-threads"


def test_missing_requirement_says_which_extra_to_install(registered: list[object]) -> None:
    plugin = BackendPlugin(_spec("needs-extra", requires=("surely_missing_module_xyz",), extra="dask"))
    plugins.register(plugin, name="needs-extra-plugin")
    registered.append(plugin)
    with pytest.raises(BackendNotFoundError) as info:
        flowcore.get_backend("needs-extra")
    assert 'pip install "flowcore[dask]"' in str(info.value)
    assert "surely_missing_module_xyz" in str(info.value)

    ran = []

    @flow(backend="needs-extra")
    def pipeline() -> None:
        ran.append(1)

    with pytest.raises(BackendNotFoundError, match=r'pip install "flowcore\[dask\]"'):
        pipeline()
    assert ran == []


def test_missing_requirement_without_extra_names_the_module(registered: list[object]) -> None:
    plugin = BackendPlugin(_spec("needs-module", requires=("surely_missing_module_xyz",)))
    plugins.register(plugin, name="needs-module-plugin")
    registered.append(plugin)
    with pytest.raises(BackendNotFoundError, match="surely_missing_module_xyz"):
        flowcore.get_backend("needs-module")


@pytest.mark.parametrize(
    "returned",
    [
        pytest.param(["threads-like"], id="list-of-str"),
        pytest.param([{"name": "dict-backend"}], id="list-of-dict"),
        pytest.param("not-a-list", id="str"),
        pytest.param(BackendSpec("bare", _thread_backend, "not in a list", BackendKind.THREADS), id="bare-spec"),
    ],
)
def test_non_backend_spec_values_are_rejected(returned: Any) -> None:
    class Bad:
        @flowcore.hookimpl
        def flowcore_backends(self) -> Any:
            return returned

    plugin = Bad()
    try:
        with pytest.raises(BackendRegistrationError, match="bad-plugin"):
            plugins.register(plugin, name="bad-plugin")
    finally:
        plugins.unregister(plugin)
    _assert_builtins_work()


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(BackendSpec("has space", _thread_backend, "d", BackendKind.THREADS), id="bad-name"),
        pytest.param(BackendSpec("", _thread_backend, "d", BackendKind.THREADS), id="empty-name"),
        pytest.param(BackendSpec("no-factory", "nope", "d", BackendKind.THREADS), id="factory"),  # type: ignore[arg-type]
        pytest.param(BackendSpec("bad-kind", _thread_backend, "d", "threads"), id="kind"),  # type: ignore[arg-type]
    ],
)
def test_invalid_specs_are_rejected_at_registration(spec: BackendSpec) -> None:
    plugin = BackendPlugin(spec)
    try:
        with pytest.raises(BackendRegistrationError):
            plugins.register(plugin, name="invalid-spec-plugin")
    finally:
        plugins.unregister(plugin)
    _assert_builtins_work()


def test_factory_returning_a_non_backend_is_rejected(registered: list[object]) -> None:
    plugin = BackendPlugin(BackendSpec("not-a-backend", lambda: object(), "d", BackendKind.THREADS))
    plugins.register(plugin, name="not-a-backend-plugin")
    registered.append(plugin)
    with pytest.raises(BackendRegistrationError, match="not-a-backend"):
        flowcore.get_backend("not-a-backend")


def test_a_plugin_with_no_backends_is_fine(registered: list[object]) -> None:
    plugin = BackendPlugin()
    plugins.register(plugin, name="empty-plugin")
    registered.append(plugin)
    _assert_builtins_work()


# -- entry points, in a fresh interpreter ------------------------------------------------------

PLUGIN_MODULE = "flowcore_ep_probe_plugin"

PLUGIN_SOURCE = textwrap.dedent(
    """
    import flowcore
    from flowcore.backend import BackendKind, BackendSpec
    from flowcore.backends.sequential import SequentialBackend


    class ProbeBackend(SequentialBackend):
        name = "ep-probe"


    @flowcore.hookimpl
    def flowcore_backends():
        return [BackendSpec("ep-probe", lambda: ProbeBackend(), "entry-point probe", BackendKind.INLINE)]
    """
)

PROBE_SCRIPT = textwrap.dedent(
    f"""
    import json, sys
    import flowcore
    from flowcore.context import current_scope
    from flowcore.errors import BackendNotFoundError
    from flowcore.registry import get_registry

    out = {{"loaded_at_import": {PLUGIN_MODULE!r} in sys.modules}}
    try:
        backend = flowcore.get_backend("ep-probe")
    except BackendNotFoundError as exc:
        out["error"] = str(exc)
    else:
        out["backend"] = backend.name
        out["plugin"] = get_registry().backends()["ep-probe"].plugin
        run = flowcore.flow(backend="ep-probe")(lambda: current_scope().backend().name)
        out["flow_ran_on"] = run()
    out["builtins"] = sorted(get_registry().backends())
    print(json.dumps(out))
    """
)


def _clean_env(**extra: str) -> dict[str, str]:
    # FLOWCORE_HOME and FLOWCORE_PROGRESS stay: the suite's isolation (tests/conftest.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCORE_") or k in ("FLOWCORE_HOME", "FLOWCORE_PROGRESS")}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


@pytest.fixture
def plugin_distribution(tmp_path: Path) -> Path:
    """A tiny installed distribution (dist-info + module) declaring a `flowcore` entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    dist_info = site / "flowcore_ep_probe-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: flowcore-ep-probe\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[flowcore]\nep_probe = {PLUGIN_MODULE}\n")
    return site


def _probe(site: Path, cwd: Path, **env: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE_SCRIPT],
        cwd=cwd,
        env=_clean_env(PYTHONPATH=str(site), **env),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_entry_point_plugin_is_loaded_on_first_use(plugin_distribution: Path, tmp_path: Path) -> None:
    out = _probe(plugin_distribution, tmp_path)
    assert out.get("error") is None
    assert out["backend"] == "ep-probe"
    assert out["plugin"] == "ep_probe"
    assert out["flow_ran_on"] == "ep-probe"
    assert {"sequential", "threads", "ep-probe"} <= set(out["builtins"])
    # Plugins load when the registry is first used, not at `import flowcore`.
    assert out["loaded_at_import"] is False


def test_entry_point_autoload_can_be_disabled(plugin_distribution: Path, tmp_path: Path) -> None:
    out = _probe(plugin_distribution, tmp_path, FLOWCORE_DISABLE_PLUGIN_AUTOLOAD="1")
    assert "ep-probe" in out["error"]
    assert "sequential" in out["error"] and "threads" in out["error"]
    assert "ep-probe" not in out["builtins"]
    assert {"sequential", "threads"} <= set(out["builtins"])


def test_a_broken_entry_point_plugin_is_skipped_with_a_warning_naming_it(
    plugin_distribution: Path, tmp_path: Path
) -> None:
    """An installed plugin whose module fails to import, or whose backends hook raises,
    must not take every flow down (the ones on built-in backends included): it is left
    out with one warning naming the entry point, its distribution, the error and the
    ways out; the other plugins still load."""
    site = plugin_distribution
    (site / "flowcore_broken_import.py").write_text("import flowcore_no_such_dependency\n")
    (site / "flowcore_broken_hook.py").write_text(
        "import flowcore\n\n@flowcore.hookimpl\ndef flowcore_backends():\n    raise RuntimeError('hook broke')\n"
    )
    for dist, entry in (("flowcore_broken_a-1.0", "broken_import = flowcore_broken_import"),
                        ("flowcore_broken_b-1.0", "broken_hook = flowcore_broken_hook")):
        info = site / f"{dist}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.split('-')[0]}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[flowcore]\n{entry}\n")
    completed = subprocess.run(
        [sys.executable, "-W", "always", "-c", PROBE_SCRIPT], cwd=tmp_path,
        env=_clean_env(PYTHONPATH=str(site)), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
    )
    assert completed.returncode == 0, completed.stderr
    out = json.loads(completed.stdout.strip().splitlines()[-1])
    assert out["flow_ran_on"] == "ep-probe"  # the good plugin still works
    warnings_text = completed.stderr
    assert "ConfigurationWarning" in warnings_text
    assert "plugin 'broken_import' (entry point flowcore_broken_import of flowcore_broken_a 1.0)" in warnings_text
    assert "ModuleNotFoundError: No module named 'flowcore_no_such_dependency'" in warnings_text
    assert "plugin 'broken_hook'" in warnings_text and "RuntimeError: hook broke" in warnings_text
    assert "FLOWCORE_DISABLE_PLUGIN_AUTOLOAD=1" in warnings_text


# -- import stays light ------------------------------------------------------------------------

HEAVY = ("dask", "distributed", "joblib", "loky", "numpy", "pandas")


def test_import_flowcore_loads_no_heavy_dependency(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        import flowcore
        after_import = sorted(m for m in {HEAVY!r} if m in sys.modules)

        @flowcore.task
        def inc(x):
            return x + 1

        @flowcore.flow
        def run():
            return [f.result() for f in inc.map(range(3))]

        assert run() == [1, 2, 3]
        with flowcore.use_backend("sequential"):
            inc.submit(1).result()
        after_run = sorted(m for m in {HEAVY!r} if m in sys.modules)
        print(json.dumps({{"after_import": after_import, "after_run": after_run}}))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    out = json.loads(completed.stdout.strip().splitlines()[-1])
    assert out == {"after_import": [], "after_run": []}


def test_an_unknown_backend_option_names_the_options_the_backend_accepts() -> None:
    """A Dask user's ``n_workers`` (a LocalCluster keyword) or a typo gets the list of
    options the backend takes, not only Python's "unexpected keyword argument"."""
    with pytest.raises(TypeError, match="invalid options for backend 'threads'") as info:
        flowcore.get_backend("threads", workers=2)
    assert str(info.value).endswith("; it accepts: max_workers")
    with pytest.raises(TypeError, match="'n_workers'") as info:
        flowcore.get_backend("dask", n_workers=2)
    assert "it accepts: address, client, max_workers" in str(info.value)
    assert "cluster_options" in str(info.value)
