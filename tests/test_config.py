"""Which backend runs a flow: code > use_backend > environment > pyproject.toml > threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import flowcore
from flowcore import flow, task
from flowcore.context import current_scope
from flowcore.errors import BackendNotFoundError, ConfigurationError, ConfigurationWarning

ENV_VARS = ("FLOWCORE_BACKEND", "FLOWCORE_BACKEND_OPTIONS")


@pytest.fixture(autouse=True)
def clean_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No configuration from the outside: no env vars, a working dir without pyproject."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


def _write_pyproject(directory: Path, body: str) -> Path:
    path = directory / "pyproject.toml"
    path.write_text('[project]\nname = "demo"\nversion = "0"\n\n' + body)
    return path


@task
def double(x: int) -> int:
    return x * 2


def _backend() -> Any:
    scope = current_scope()
    assert scope is not None
    return scope.backend()


@flow
def which_backend() -> tuple[str, int]:
    """The backend name and worker count this flow run got (and proof it runs tasks)."""
    backend = _backend()
    assert double.submit(2).result() == 4
    return backend.name, backend.max_workers


# -- precedence -------------------------------------------------------------------------


def test_default_is_threads() -> None:
    name, _ = which_backend()
    assert name == "threads"
    assert flowcore.get_backend().name == "threads"


def test_pyproject_chooses_the_backend(clean_config: Path) -> None:
    _write_pyproject(clean_config, '[tool.flowcore]\nbackend = "sequential"\n')
    assert which_backend()[0] == "sequential"
    assert flowcore.get_backend().name == "sequential"


def test_pyproject_backend_options(clean_config: Path) -> None:
    _write_pyproject(
        clean_config,
        '[tool.flowcore]\nbackend = "threads"\n\n[tool.flowcore.backend_options]\nmax_workers = 2\n',
    )
    assert which_backend() == ("threads", 2)


def test_the_nearest_pyproject_wins(clean_config: Path) -> None:
    _write_pyproject(clean_config, '[tool.flowcore]\nbackend = "sequential"\n')
    inner = clean_config / "pkg"
    (inner / "deeper").mkdir(parents=True)
    _write_pyproject(
        inner,
        '[tool.flowcore]\nbackend = "threads"\nbackend_options = { max_workers = 3 }\n',
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(inner / "deeper")
        assert which_backend() == ("threads", 3)
    other = clean_config / "other"
    other.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(other)
        assert which_backend()[0] == "sequential"


def test_env_beats_pyproject(clean_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_pyproject(clean_config, '[tool.flowcore]\nbackend = "sequential"\n')
    monkeypatch.setenv("FLOWCORE_BACKEND", "threads")
    monkeypatch.setenv("FLOWCORE_BACKEND_OPTIONS", '{"max_workers": 3}')
    assert which_backend() == ("threads", 3)
    backend = flowcore.get_backend()
    assert (backend.name, backend.max_workers) == ("threads", 3)


def test_env_backend_without_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_BACKEND", "sequential")
    assert which_backend()[0] == "sequential"


def test_use_backend_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_BACKEND", "threads")
    monkeypatch.setenv("FLOWCORE_BACKEND_OPTIONS", '{"max_workers": 3}')
    with flowcore.use_backend("sequential") as backend:
        assert backend.name == "sequential"
        assert which_backend()[0] == "sequential"


def test_use_backend_with_options() -> None:
    with flowcore.use_backend("threads", max_workers=2):
        assert which_backend() == ("threads", 2)


def test_flow_backend_beats_use_backend_and_env(clean_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_pyproject(clean_config, '[tool.flowcore]\nbackend = "threads"\n')
    monkeypatch.setenv("FLOWCORE_BACKEND", "threads")
    pinned = which_backend.with_options(backend="sequential")
    assert pinned()[0] == "sequential"
    with flowcore.use_backend("threads"):
        assert pinned()[0] == "sequential"


def test_flow_backend_instance_beats_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_BACKEND", "sequential")
    instance = flowcore.get_backend("threads", max_workers=2)
    try:
        with flowcore.use_backend("sequential"):
            assert which_backend.with_options(backend=instance)() == ("threads", 2)
    finally:
        instance.shutdown()


def test_explicit_options_override_configured_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_BACKEND", "threads")
    monkeypatch.setenv("FLOWCORE_BACKEND_OPTIONS", '{"max_workers": 3}')
    backend = flowcore.get_backend(max_workers=5)
    assert backend.max_workers == 5


# -- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{not json", "JSON"),
        ("[1, 2]", "JSON object"),
        ('"max_workers"', "JSON object"),
        ("3", "JSON object"),
    ],
)
def test_bad_env_options_are_configuration_errors(
    monkeypatch: pytest.MonkeyPatch, raw: str, fragment: str
) -> None:
    monkeypatch.setenv("FLOWCORE_BACKEND", "threads")
    monkeypatch.setenv("FLOWCORE_BACKEND_OPTIONS", raw)
    ran = []

    @flow
    def pipeline() -> None:
        ran.append(1)

    with pytest.raises(ConfigurationError) as info:
        pipeline()
    assert "FLOWCORE_BACKEND_OPTIONS" in str(info.value)
    assert fragment in str(info.value)
    assert ran == []
    with pytest.raises(ConfigurationError):
        flowcore.get_backend()


def test_env_options_without_a_backend_are_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_BACKEND_OPTIONS", '{"max_workers": 3}')
    ran = []

    @flow
    def pipeline() -> None:
        ran.append(1)

    with pytest.raises(ConfigurationError) as info:
        pipeline()
    message = str(info.value)
    assert "FLOWCORE_BACKEND_OPTIONS" in message and "FLOWCORE_BACKEND " in message
    assert ran == []


HANG_PROBE = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from flowcore import flow, task

    @task
    def one():
        return 1

    @flow
    def pipeline():
        return one.submit().result()

    def attempt(out):
        try:
            out["result"] = pipeline()
        except BaseException as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"

    outcomes = []
    for options in sys.argv[1:]:
        os.environ["FLOWCORE_BACKEND_OPTIONS"] = options
        out = {"options": options}
        worker = threading.Thread(target=attempt, args=(out,), daemon=True)
        worker.start()
        worker.join(float(os.environ["PROBE_SECONDS"]))
        out["hung"] = worker.is_alive()
        outcomes.append(out)
    print(json.dumps(outcomes), flush=True)
    os._exit(0)
    """
)


def test_backend_options_the_backend_rejects_fail_instead_of_hanging(tmp_path: Path) -> None:
    """Options from the environment that the backend rejects surface as an error at the
    first submit; the flow must not wait forever for a future that was never dispatched.
    Runs in a subprocess so a regression cannot hang the test session."""
    # FLOWCORE_HOME and FLOWCORE_PROGRESS stay: the suite's isolation (tests/conftest.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCORE_") or k in ("FLOWCORE_HOME", "FLOWCORE_PROGRESS")}
    env.update(FLOWCORE_BACKEND="threads", PROBE_SECONDS="5")
    completed = subprocess.run(
        [sys.executable, "-c", HANG_PROBE, '{"max_workers": 0}', '{"no_such_option": 1}'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    zero, unknown = json.loads(completed.stdout.strip().splitlines()[-1])
    assert not zero["hung"] and not unknown["hung"], "the flow run never finished"
    assert "max_workers" in zero["error"]
    assert "no_such_option" in unknown["error"]


def test_configuration_error_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_BACKEND", "threads")
    monkeypatch.setenv("FLOWCORE_BACKEND_OPTIONS", "nope")
    with pytest.raises(ValueError):
        flowcore.get_backend()


def test_pyproject_options_without_a_backend_are_a_configuration_error(clean_config: Path) -> None:
    _write_pyproject(clean_config, "[tool.flowcore.backend_options]\nmax_workers = 2\n")
    with pytest.raises(ConfigurationError, match="backend"):
        which_backend()


def test_unreadable_pyproject_is_a_configuration_error(clean_config: Path) -> None:
    (clean_config / "pyproject.toml").write_text("[tool.flowcore\nbackend = ")
    with pytest.raises(ConfigurationError, match=r"pyproject\.toml"):
        which_backend()


def test_pyproject_backend_of_the_wrong_type(clean_config: Path) -> None:
    _write_pyproject(clean_config, "[tool.flowcore]\nbackend = 3\n")
    with pytest.raises(ConfigurationError, match="backend"):
        which_backend()


# -- unknown backends --------------------------------------------------------------------------


def _assert_lists_registered(error: BackendNotFoundError) -> None:
    message = str(error)
    assert "sequential" in message and "threads" in message
    assert {"sequential", "threads"} <= set(error.registered)


def test_unknown_backend_in_code_fails_at_call_before_the_body() -> None:
    ran = []

    @flow(backend="daks")
    def pipeline() -> None:
        ran.append(1)

    with pytest.raises(BackendNotFoundError) as info:
        pipeline()
    assert "daks" in str(info.value)
    _assert_lists_registered(info.value)
    assert ran == []


def test_unknown_backend_from_env_mentions_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_BACKEND", "daks")
    ran = []

    @flow
    def pipeline() -> None:
        ran.append(1)

    with pytest.raises(BackendNotFoundError) as info:
        pipeline()
    assert "daks" in str(info.value)
    assert "FLOWCORE_BACKEND" in str(info.value)
    _assert_lists_registered(info.value)
    assert ran == []
    with pytest.raises(BackendNotFoundError, match="FLOWCORE_BACKEND"):
        flowcore.get_backend()


def test_unknown_backend_from_pyproject_mentions_the_file(clean_config: Path) -> None:
    path = _write_pyproject(clean_config, '[tool.flowcore]\nbackend = "daks"\n')
    with pytest.raises(BackendNotFoundError) as info:
        which_backend()
    assert str(path) in str(info.value)
    _assert_lists_registered(info.value)


def test_unknown_backend_in_use_backend_and_get_backend() -> None:
    with pytest.raises(BackendNotFoundError) as info, flowcore.use_backend("daks"):
        pytest.fail("the block must not run")
    _assert_lists_registered(info.value)
    with pytest.raises(BackendNotFoundError) as info:
        flowcore.get_backend("daks")
    _assert_lists_registered(info.value)


def test_bad_backend_options_name_the_backend() -> None:
    with pytest.raises(TypeError, match="threads"):
        flowcore.get_backend("threads", no_such_option=1)
    with pytest.raises(ValueError, match="max_workers"):
        flowcore.get_backend("threads", max_workers=0)


def test_rejected_env_options_fail_before_the_body_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_BACKEND", "threads")
    monkeypatch.setenv("FLOWCORE_BACKEND_OPTIONS", '{"max_workers": 0}')
    ran: list[bool] = []

    @flow
    def body() -> None:
        ran.append(True)

    with pytest.raises(ConfigurationError) as info:
        body()
    message = str(info.value)
    assert "'threads'" in message and "FLOWCORE_BACKEND" in message and "max_workers" in message
    assert ran == []


def test_unknown_backend_message_lists_the_names_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_BACKEND", "nope")

    @flow
    def body() -> None:
        pass

    with pytest.raises(BackendNotFoundError) as info:
        body()
    assert str(info.value).count("registered:") == 1
    assert str(info.value) == (
        "unknown backend 'nope' (backend chosen by environment variable FLOWCORE_BACKEND); "
        "registered: dask, joblib, loky, sequential, threads"
    )


# -- misspelled settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key", "suggestion"),
    [
        ('backends = "loky"\n', "backends", "backend"),
        ('backend = "threads"\nbackend_option = {max_workers = 2}\n', "backend_option", "backend_options"),
        ('cache_dri = ".cache"\n', "cache_dri", "cache_dir"),
    ],
    ids=["backends", "backend_option", "cache_dri"],
)
def test_unknown_pyproject_keys_are_an_error_naming_the_nearest_known_one(
    clean_config: Path, body: str, key: str, suggestion: str
) -> None:
    _write_pyproject(clean_config, "[tool.flowcore]\n" + body)
    with pytest.raises(ConfigurationError) as caught:
        which_backend()
    message = str(caught.value)
    assert f"unknown key {key!r}" in message
    assert f"did you mean {suggestion!r}" in message
    assert "pyproject.toml" in message


def test_an_unknown_pyproject_key_fails_the_flow_run_before_its_body(clean_config: Path) -> None:
    _write_pyproject(clean_config, '[tool.flowcore]\nbackends = "sequential"\n')
    ran: list[int] = []

    @flow
    def body() -> None:
        ran.append(1)

    with pytest.raises(ConfigurationError, match="backends"):
        body()
    assert ran == []


def test_unknown_pyproject_keys_are_an_error_for_the_cache_too(clean_config: Path) -> None:
    from flowcore.caching.store import default_cache_dir

    _write_pyproject(clean_config, '[tool.flowcore]\ncache_dri = ".cache"\n')
    with pytest.raises(ConfigurationError, match="cache_dri"):
        default_cache_dir()


def test_every_documented_pyproject_key_is_accepted(clean_config: Path) -> None:
    from flowcore.caching.storage import configured_store
    from flowcore.caching.store import default_cache_dir

    _write_pyproject(
        clean_config,
        '[tool.flowcore]\nbackend = "sequential"\ncache_dir = ".c"\ncache_store = "file"\n'
        "[tool.flowcore.backend_options]\n[tool.flowcore.cache_store_options]\n",
    )
    assert which_backend()[0] == "sequential"
    assert default_cache_dir() == clean_config / ".c"
    assert configured_store().name == "file"


def test_unknown_flowcore_environment_variables_warn_with_a_suggestion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWCORE_BACKNED", "loky")
    with pytest.warns(ConfigurationWarning) as caught:
        assert which_backend()[0] == "threads"
    messages = [str(w.message) for w in caught if issubclass(w.category, ConfigurationWarning)]
    assert len(messages) == 1
    assert "FLOWCORE_BACKNED" in messages[0]
    assert "did you mean 'FLOWCORE_BACKEND'" in messages[0]


def test_known_flowcore_environment_variables_do_not_warn(
    monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    from flowcore.config import ENVIRONMENT_VARIABLES

    for name in ENVIRONMENT_VARIABLES:
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setenv("FLOWCORE_BACKEND", "sequential")
    assert which_backend()[0] == "sequential"
    assert not [w for w in recwarn if issubclass(w.category, ConfigurationWarning)]


SOURCE_DIRECTORIES = ("flowcore", "backends", "plugins")


def test_every_flowcore_variable_the_code_reads_is_in_the_one_list() -> None:
    """ENVIRONMENT_VARIABLES is authoritative: a variable read anywhere in the code base
    (internal ones passed to workers included) must be listed, or users get a false
    'unknown variable' warning."""
    import re

    from flowcore.config import ENVIRONMENT_VARIABLES

    root = Path(__file__).resolve().parent.parent
    used: dict[str, str] = {}
    for directory in SOURCE_DIRECTORIES:
        for path in (root / directory).rglob("*.py"):
            for name in re.findall(r"\bFLOWCORE_[A-Z][A-Z0-9_]*\b", path.read_text()):
                used.setdefault(name, str(path.relative_to(root)))
    assert "FLOWCORE_DISABLE_PLUGIN_AUTOLOAD" in used and "FLOWCORE_WORKER_JOURNAL" in used
    missing = {name: where for name, where in used.items() if name not in ENVIRONMENT_VARIABLES}
    assert not missing, f"FLOWCORE_* variables used but not listed in flowcore.config: {missing}"
    documented = (root / "README.md").read_text()
    public = {n for n, purpose in ENVIRONMENT_VARIABLES.items() if not purpose.startswith("internal")}
    assert all(name in documented for name in public)
