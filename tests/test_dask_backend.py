"""The dask backend against real schedulers and workers on 127.0.0.1.

A scheduler and two single-threaded worker processes are started with the ``dask``
command line (as a user would on several machines) and stopped after the module; the
tests that stop a scheduler start their own. No Dask object is mocked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

pytest.importorskip("distributed")

import flowcore
from flowcore import flow, task
from flowcore.errors import (
    BackendConnectionError,
    BackendShutdownError,
    CrashedError,
    SerializationError,
)
from flowcore.states import State

REPO = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).with_name("dask"))
#: Noise that distributed prints when connections close in the wrong order.
NOISE = ("CommClosedError", "stream is closed", "StreamClosedError", "Task was destroyed", "Traceback")


def noise(stderr: str, *, expected: tuple[str, ...] = ()) -> list[str]:
    """The lines of ``stderr`` that are distributed's (or tracebacks), except ``expected``."""
    return [
        line
        for line in stderr.splitlines()
        if (any(n in line for n in NOISE) or "distributed." in line) and not any(e in line for e in expected)
    ]


# -- tasks (imported by reference in the workers: tests/ is on their PYTHONPATH) ----------


@task
def worker_pid(_: int = 0) -> int:
    return os.getpid()


@task
def inc(x: int) -> int:
    return x + 1


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def total(values: list[int]) -> int:
    return sum(values)


@task
def slow_square(x: int, seconds: float = 0.3) -> int:
    time.sleep(seconds)
    return x * x


@task
def always_die() -> None:
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


@task
def die_once(marker: str) -> str:
    """Kills its own worker the first time (the marker file remembers), then succeeds."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@task
def square_or_die(x: int, fatal: int) -> int:
    time.sleep(0.01)
    if x == fatal:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


@task
def takes_anything(value: Any) -> str:
    return type(value).__name__


@task
def returns_a_lock() -> Any:
    return threading.Lock()


@task
def noted_unloadable_if_odd(path: str, x: int) -> Any:
    """Notes each run in ``path``; returns a value that does not unpickle for odd ``x``."""
    from flowcore.testing.workloads import FailsWhenLoaded

    with open(path, "a") as notes:
        notes.write(f"{x}\n")
    return FailsWhenLoaded() if x % 2 else x


@task
def describe_array(array: Any) -> tuple[bool, float]:
    return bool(array.flags.writeable), float(array.sum())


@task
def exits(code: int) -> None:
    sys.exit(code)


@task
def blocked(seconds: float) -> float:
    time.sleep(seconds)  # one C call: a timer in the worker thread cannot stop it
    return seconds


# -- a real cluster on 127.0.0.1 ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DaskCluster:
    """``dask scheduler`` plus ``dask worker --nworkers 2 --nthreads 1``, each in its own
    process group; the scheduler reports a dead worker at once (allowed-failures 0)."""

    def __init__(self, workers: int = 2, protocol: str = "tcp", extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.address = f"{protocol}://127.0.0.1:{self.port}"
        self.extra = list(extra or [])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]),
            "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
        }
        common: dict[str, Any] = {
            "cwd": REPO, "env": env, "start_new_session": True,
            "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
        }
        self.scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--protocol", protocol,
             "--no-dashboard", *self.extra],
            **common,
        )
        self.workers = subprocess.Popen(
            [DASK, "worker", self.address, "--nworkers", str(workers), "--nthreads", "1", "--no-dashboard",
             *self.extra],
            **common,
        )
        try:
            self.wait_for_workers(workers)
        except BaseException:
            self.stop()
            raise

    def wait_for_workers(self, count: int) -> None:
        from distributed import Client, Security

        security = None
        if self.extra:  # the TLS files, as the command line options give them
            files = dict(zip(self.extra[::2], self.extra[1::2], strict=True))
            security = Security(  # type: ignore[no-untyped-call]
                tls_ca_file=files["--tls-ca-file"], tls_client_cert=files["--tls-cert"],
                tls_client_key=files["--tls-key"], require_encryption=True,
            )
        with Client(  # type: ignore[no-untyped-call]
            self.address, timeout=60, security=security, set_as_default=False
        ) as client:
            client.wait_for_workers(count, timeout=120)

    def stop_scheduler(self) -> None:
        _kill_group(self.scheduler)

    def stop(self) -> None:
        _kill_group(self.workers)
        _kill_group(self.scheduler)


def worker_pids(address: str) -> dict[str, int]:
    """``{worker address: pid}`` as the scheduler at ``address`` reports them."""
    from distributed import Client

    with Client(address, timeout=60, set_as_default=False) as client:  # type: ignore[no-untyped-call]
        return {str(worker): int(pid) for worker, pid in client.run(os.getpid).items()}


def wait_for_no_workers(address: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while worker_pids(address) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker_pids(address) == {}, "the scheduler still lists workers"


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with_signal = [signal.SIGTERM, signal.SIGKILL]
        for sig in with_signal:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
    process.wait()


@pytest.fixture(scope="module")
def cluster() -> Iterator[DaskCluster]:
    started = DaskCluster()
    try:
        yield started
    finally:
        started.stop()


def on_dask(body: Any, **options: Any) -> Any:
    backend = flowcore.get_backend("dask", **options)
    try:
        return flow(backend=backend)(body)()
    finally:
        backend.shutdown()


# -- a scheduler at an address ---------------------------------------------------------------


def test_flow_on_a_scheduler_by_address(cluster: DaskCluster) -> None:
    def body() -> tuple[list[int], int, int, set[int]]:
        incremented = inc.map(range(100))
        # Futures stand in for their values (cast tells the type checker so).
        pair = add.submit(cast(int, incremented[0]), cast(int, incremented[1]))
        summed = total.submit(cast(list[int], [pair, incremented[-1], 1000]))  # inside a list
        pids = {f.result() for f in worker_pid.map(range(20))}
        return [f.result() for f in incremented], pair.result(), summed.result(), pids

    backend = flowcore.get_backend("dask", address=cluster.address)
    try:
        values, pair, summed, pids = flow(backend=backend)(body)()
        assert backend.max_workers == 2  # two single-threaded workers, as the scheduler says
    finally:
        backend.shutdown()
    assert values == list(range(1, 101))
    assert pair == 3 and summed == 3 + 100 + 1000
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_configured_through_the_environment(cluster: DaskCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_BACKEND", "dask")
    monkeypatch.setenv("FLOWCORE_BACKEND_OPTIONS", json.dumps({"address": cluster.address}))

    @flow
    def configured() -> tuple[str, int]:
        return type(flowcore.get_backend()).__name__, worker_pid.submit().result()

    backend_type, pid = configured()
    assert backend_type == "DaskBackend"
    assert pid != os.getpid()


def test_flowcore_run_of_a_file_runs_on_workers_that_cannot_import_it(
    cluster: DaskCluster, tmp_path: Path
) -> None:
    """``flowcore run etl.py:etl`` on a scheduler's workers, which do not have the file:
    the backend uploads it to them (``Client.upload_file``) when it connects, so the
    tasks are imported there as they are in the flow's process (a module-level lock
    works: each worker makes its own)."""
    (tmp_path / "etl_elsewhere.py").write_text(
        textwrap.dedent(
            """
            import threading
            from flowcore import flow, task

            OFFSET = 100
            _lock = threading.Lock()

            @task
            def shift(x):
                with _lock:
                    return x + OFFSET

            @flow
            def etl(n: int) -> int:
                return sum(shift.map(range(n)).result())
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "flowcore", "run", "etl_elsewhere.py:etl", "--param", "n=4",
         "--backend", "dask", "--backend-options", json.dumps({"address": cluster.address})],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "406"


def test_a_passed_client_is_used_and_never_closed(cluster: DaskCluster) -> None:
    from distributed import Client

    with Client(cluster.address, set_as_default=False) as client:  # type: ignore[no-untyped-call]
        backend = flowcore.get_backend("dask", client=client)
        with backend:
            assert flow(backend=backend)(lambda: [f.result() for f in inc.map(range(10))])() == list(range(1, 11))
        assert client.status == "running"
        assert client.submit(pow, 2, 5, pure=False).result(timeout=60) == 32
        with pytest.raises(BackendShutdownError):
            backend.submit(pow, 2, 5)


def test_shutdown_never_stops_the_scheduler_or_its_workers(cluster: DaskCluster) -> None:
    on_dask(lambda: inc.submit(1).result(), address=cluster.address)
    on_dask(lambda: inc.submit(1).result(), address=cluster.address)
    assert cluster.scheduler.poll() is None and cluster.workers.poll() is None


def test_worker_killed_mid_task_ends_its_run_crashed(cluster: DaskCluster) -> None:
    def body() -> tuple[State[Any], list[int]]:
        victims = [slow_square.submit(i, 0.5) for i in range(4)]  # queued or running meanwhile
        crashed = always_die.submit(return_state=True)
        return crashed, [v.result() for v in victims]

    crashed, squares = on_dask(body, address=cluster.address)
    assert crashed.is_crashed() and isinstance(crashed.exception, CrashedError)
    assert "Dask worker tcp://127.0.0.1:" in crashed.message and "died while running it" in crashed.message
    assert crashed.attempts == 1
    assert squares == [0, 1, 4, 9]  # the other runs were not lost
    cluster.wait_for_workers(2)  # the nanny restarted the worker


def test_worker_killed_mid_task_is_retried(cluster: DaskCluster, tmp_path: Path) -> None:
    dying = die_once.with_options(retries=1)

    def body() -> tuple[State[Any], list[int]]:
        done = [f.result() for f in inc.map(range(50))]  # finished before the crash
        crashed = dying.submit(str(tmp_path / "died"), return_state=True)
        return crashed, done

    state, done = on_dask(body, address=cluster.address)
    assert state.is_completed() and state.result() == "survived"
    assert state.attempts == 2  # the lost attempt counts
    assert done == list(range(1, 51))
    cluster.wait_for_workers(2)


def test_worker_killed_inside_a_batch_of_a_map_blames_only_its_run(cluster: DaskCluster) -> None:
    def body() -> list[State[Any]]:
        futures = square_or_die.map(range(60), fatal=45)  # later batches hold several runs
        flowcore.wait(futures, timeout=120)
        return [f.state for f in futures]

    states = on_dask(body, address=cluster.address)
    crashed = states[45]
    assert crashed.is_crashed() and crashed.message.endswith("died while running it")
    assert [s.result() for i, s in enumerate(states) if i != 45] == [i * i for i in range(60) if i != 45]
    cluster.wait_for_workers(2)


def test_unpicklable_argument_and_result_fail_with_serialization_errors(cluster: DaskCluster) -> None:
    lock = threading.Lock()

    def body() -> tuple[State[Any], State[Any], str]:
        bad_argument = takes_anything.submit(lock, return_state=True)
        bad_result = returns_a_lock.submit(return_state=True)
        return bad_argument, bad_result, takes_anything.submit(3).result()

    bad_argument, bad_result, good = on_dask(body, address=cluster.address)
    assert isinstance(bad_argument.exception, SerializationError)
    assert "argument 'value'" in bad_argument.message and "_thread.lock" in bad_argument.message
    assert isinstance(bad_result.exception, SerializationError)
    assert "result" in bad_result.message and "returns_a_lock" in bad_result.message
    assert good == "int"


def test_values_that_do_not_unpickle_fail_their_runs_and_restart_no_worker(
    cluster: DaskCluster, tmp_path: Path
) -> None:
    """issue 12.15 on a scheduler by address: an argument that does not unpickle on the
    worker (the scheduler used to reject the whole graph) or a result that does not
    unpickle here (Dask raised its own deserialization error) fails its own run, also
    inside a batched map; the others complete, each run is sent at most once more
    (alone, to find the one at fault) and no worker dies."""
    from flowcore.testing.workloads import FailsWhenLoaded

    before = worker_pids(cluster.address)
    notes = tmp_path / "runs.txt"

    def body() -> tuple[list[State[Any]], list[State[Any]], int]:
        arguments = takes_anything.map([FailsWhenLoaded(), 1, FailsWhenLoaded(), "x"])
        results = noted_unloadable_if_odd.map(str(notes), range(4))
        flowcore.wait(arguments + results)
        return [f.state for f in arguments], [f.state for f in results], inc.submit(1).result()

    arguments, results, after = on_dask(body, address=cluster.address)
    assert after == 2
    assert [s.name for s in arguments] == ["Failed", "Completed", "Failed", "Completed"]
    assert [arguments[1].result(), arguments[3].result()] == ["int", "str"]
    for state in (arguments[0], arguments[2]):
        assert isinstance(state.exception, SerializationError), state.message
        assert "takes_anything" in state.message and "argument 'value'" in state.message
        assert "FailsWhenLoaded" in state.message
    assert [s.name for s in results] == ["Completed", "Failed", "Completed", "Failed"]
    assert [results[0].result(), results[2].result()] == [0, 2]
    for state in (results[1], results[3]):
        assert isinstance(state.exception, SerializationError), state.message
        assert "noted_unloadable_if_odd" in state.message and "FailsWhenLoaded" in state.message
        assert state.attempts == 1
    runs = notes.read_text().split()
    assert sorted(set(runs)) == ["0", "1", "2", "3"]
    assert all(runs.count(x) <= 2 for x in set(runs)), runs  # no resubmission loop
    assert worker_pids(cluster.address) == before  # no worker died or was restarted


def test_an_array_argument_arrives_whole_and_writeable(cluster: DaskCluster) -> None:
    """The call travels as bytes with the array's buffer beside them (out of band);
    the task gets it as Dask would give it: equal, and writeable like the original."""
    np = pytest.importorskip("numpy")
    array = np.arange(1 << 17, dtype=np.float64)  # 1 MiB

    def body() -> tuple[bool, float]:
        return describe_array.submit(array).result()

    assert on_dask(body, address=cluster.address) == (True, float(array.sum()))


def test_sys_exit_in_a_task_crashes_its_run_and_restarts_no_worker(cluster: DaskCluster) -> None:
    """issue 12 (3): SystemExit used to kill the worker, which its nanny restarted four
    times (a remote scheduler's allowed-failures), printing ~240 lines of tracebacks."""
    before = worker_pids(cluster.address)
    exiting = exits.with_options(retries=2, retry_delay_seconds=0)

    def body() -> tuple[State[Any], int]:
        return exiting.submit(3, return_state=True), inc.submit(1).result()

    state, after = on_dask(body, address=cluster.address)
    assert state.is_crashed() and "the task called sys.exit(3)" in state.message, state.message
    assert state.attempts == 1  # a crash of the task's own making is not retried
    assert after == 2  # the flow went on
    assert worker_pids(cluster.address) == before  # no worker died or was restarted


@pytest.mark.slow
def test_a_timeout_ends_a_blocked_task_and_its_retry(cluster: DaskCluster) -> None:
    """issue 12 (5): a 1 s timeout on a 60 s sleep held a Dask flow 77 s; the worker of
    a run past its deadline (plus the grace period) is now restarted."""
    limited = blocked.with_options(timeout_seconds=1, retries=1, retry_delay_seconds=0)

    def body() -> tuple[State[Any], int]:
        return limited.submit(60, return_state=True), inc.submit(1).result()

    started = time.monotonic()
    state, after = on_dask(body, address=cluster.address)
    elapsed = time.monotonic() - started
    assert state.name == "TimedOut" and state.is_failed(), state
    assert state.attempts == 2 and "timeout of 1 s" in state.message
    assert after == 2
    assert elapsed < 30  # not the 2 x 60 s of the sleeps
    cluster.wait_for_workers(2)  # the nanny restarted the killed workers


@pytest.mark.slow
def test_no_workers_warns_at_once_then_crashes_the_waiting_runs(caplog: pytest.LogCaptureFixture) -> None:
    """issue 12 (4): with every worker dead, a flow used to wait for one forever."""
    own = DaskCluster(workers=1)
    backend = flowcore.get_backend("dask", address=own.address, no_workers_timeout=2)
    try:

        def body() -> tuple[State[Any], State[Any]]:
            assert inc.submit(1).result() == 2
            _kill_group(own.workers)  # the nanny too: nobody restarts the worker
            wait_for_no_workers(own.address)
            waiting = [inc.submit(2), inc.submit(3)]
            flowcore.wait(waiting, timeout=120)
            return waiting[0].state, waiting[1].state

        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="flowcore.backends.dask"):
            states = flow(backend=backend)(body)()
        elapsed = time.monotonic() - started
    finally:
        backend.shutdown()
        own.stop()
    for state in states:
        assert state.is_crashed(), state
        assert own.address in state.message and "no_workers_timeout" in state.message, state.message
        assert "2 s" in state.message
    assert elapsed < 60
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "no workers" in r.getMessage()]
    assert len(warnings) == 1 and own.address in warnings[0].getMessage()


# -- unreachable schedulers ---------------------------------------------------------------


def test_unreachable_address_fails_at_first_submit_naming_it() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    backend = flowcore.get_backend("dask", address=address, connect_timeout=1)  # lazy: no error
    try:
        with pytest.raises(BackendConnectionError) as info:
            backend.submit(pow, 2, 5)
        assert address in str(info.value) and "1 s" in str(info.value)
        # The next submit does not wait for another timeout: it fails at once.
        started = time.monotonic()
        with pytest.raises(BackendConnectionError, match=address.replace(".", r"\.")):
            backend.submit(pow, 2, 5)
        assert time.monotonic() - started < 0.5
    finally:
        backend.shutdown()


def test_flow_on_an_unreachable_scheduler_crashes_its_tasks_clearly() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"

    def body() -> tuple[State[Any], set[str]]:
        first = inc.submit(1, return_state=True)
        mapped = inc.map(range(200))
        flowcore.wait(mapped, timeout=120)
        return first, {f.state.name for f in mapped}

    first, mapped = on_dask(body, address=address, connect_timeout=1)
    assert first.is_crashed() and address in first.message
    assert isinstance(first.exception, CrashedError)
    assert isinstance(first.exception.__cause__, BackendConnectionError)
    assert mapped == {"Crashed"}


def test_unreachable_scheduler_leaves_no_noise_at_exit(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    result = _run_script(
        tmp_path,
        f"""
        import flowcore
        from flowcore import flow, task

        @task
        def one():
            return 1

        if __name__ == "__main__":
            backend = flowcore.get_backend("dask", address={address!r}, connect_timeout=1)
            try:
                flow(backend=backend)(lambda: one.submit().result())()
            except flowcore.errors.CrashedError as exc:
                print("crashed:", exc)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert f"cannot connect to the Dask scheduler at {address}" in result.stdout
    assert "Exception ignored" not in result.stderr
    assert noise(result.stderr) == [], result.stderr


def test_unreachable_scheduler_is_logged_once(tmp_path: Path) -> None:
    """issue 12 (8): 200 runs refused by an unreachable scheduler gave 12 ERROR lines,
    each repeating the 300-character connection error."""
    address = f"tcp://127.0.0.1:{free_port()}"
    result = _run_script(
        tmp_path,
        f"""
        import flowcore
        from flowcore import flow, task

        @task
        def one(x):
            return x

        if __name__ == "__main__":
            backend = flowcore.get_backend("dask", address={address!r}, connect_timeout=1)
            def body():
                first = one.submit(0, return_state=True)
                flowcore.wait(one.map(range(200)), timeout=120)
                return first.name
            try:
                print(flow(backend=backend)(body)())
            finally:
                backend.shutdown()
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Crashed"
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    # The run the flow looked at is logged on its own (each failed task run is logged
    # once); the 200 nothing looked at share one line.
    looked_at = [line for line in errors if "Task run 'one-0' - Finished in state Crashed" in line]
    assert len(looked_at) == 1, result.stderr
    others = [line for line in errors if line not in looked_at]
    assert len(others) == 1, result.stderr
    assert f"cannot connect to the Dask scheduler at {address}" in others[0]
    assert "200" in others[0]  # how many runs it ended


def test_stopped_scheduler_crashes_running_tasks_and_fails_the_next_flow() -> None:
    own = DaskCluster(workers=1)
    try:
        assert on_dask(lambda: inc.submit(1).result(), address=own.address, connect_timeout=2) == 2
        reused = flowcore.get_backend("dask", address=own.address, connect_timeout=2)

        def body() -> tuple[State[Any]]:
            running = slow_square.submit(3, 5.0)
            time.sleep(1.0)
            own.stop_scheduler()  # while the task runs
            running.wait()
            return (running.state,)  # a state returned alone would fail the flow

        (lost,) = flow(backend=reused)(body)()
        assert lost.is_crashed() and own.address in lost.message and "2 s" in lost.message
        assert "lost the connection to the Dask scheduler" in lost.message
        # The next flow, on a new backend or on the same one, fails as clearly.
        with pytest.raises(CrashedError) as info:
            on_dask(lambda: inc.submit(1).result(), address=own.address, connect_timeout=2)
        assert own.address in str(info.value) and "2 s" in str(info.value)
        with pytest.raises(CrashedError) as info:
            flow(backend=reused)(lambda: inc.submit(3).result())()
        assert own.address in str(info.value) and "2 s" in str(info.value)
        reused.shutdown()
    finally:
        own.stop()


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (CA, scheduler, worker and client at once)."""
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.mark.slow
def test_tls_options_connect_to_a_tls_scheduler(certificate: tuple[str, str]) -> None:
    from distributed import Security

    cert, key = certificate
    tls = ["--tls-ca-file", cert, "--tls-cert", cert, "--tls-key", key]
    own = DaskCluster(workers=1, protocol="tls", extra=tls)
    try:
        assert own.address.startswith("tls://")
        options = {"tls_ca_file": cert, "tls_client_cert": cert, "tls_client_key": key}
        assert on_dask(lambda: inc.submit(1).result(), address=own.address, require_encryption=True, **options) == 2
        security = Security(**options, require_encryption=True)  # type: ignore[no-untyped-call]
        assert on_dask(lambda: inc.submit(2).result(), address=own.address, security=security) == 3
        with pytest.raises(CrashedError, match=own.address.replace(".", r"\.")):
            on_dask(lambda: inc.submit(3).result(), address=own.address, connect_timeout=2)  # no TLS
    finally:
        own.stop()


# -- options ------------------------------------------------------------------------------


def test_invalid_options_fail_when_the_backend_is_created(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either address= or client="):
        flowcore.get_backend("dask", address="tcp://127.0.0.1:8786", client=object())
    with pytest.raises(ValueError, match="max_workers"):
        flowcore.get_backend("dask", max_workers=0)
    with pytest.raises(ValueError, match="connect_timeout"):
        flowcore.get_backend("dask", connect_timeout=-1)
    for bad in (0, -1, True, "60", float("nan")):
        with pytest.raises(ValueError, match="no_workers_timeout"):
            flowcore.get_backend("dask", no_workers_timeout=bad)
    with pytest.raises(ValueError, match="tls_ca_file"):
        flowcore.get_backend("dask", address="tls://127.0.0.1:8786", tls_ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(TypeError, match="invalid options for backend 'dask'"):
        flowcore.get_backend("dask", adress="tcp://127.0.0.1:8786")


def test_backend_describes_itself_before_connecting() -> None:
    backend = flowcore.get_backend("dask", address="tcp://127.0.0.1:1", max_workers=6)
    assert (backend.name, str(backend.kind), backend.max_workers) == ("dask", "cluster", 6)
    assert "tcp://127.0.0.1:1" in repr(backend)
    backend.shutdown()
    with pytest.raises(BackendShutdownError):
        backend.submit(pow, 1, 1)


def test_importing_the_backend_module_loads_no_dask() -> None:
    code = (
        "import sys, flowcore, flowcore.backends.dask; "
        "from flowcore.registry import get_registry; get_registry().spec('dask'); "
        "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- a local cluster, in a subprocess: clean output, no leftover processes ------------------


def _run_script(tmp_path: Path, source: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], seconds: float = 30) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        time.sleep(0.1)
    return alive


@pytest.mark.slow
def test_local_cluster_runs_main_functions_closures_and_exits_cleanly(tmp_path: Path) -> None:
    result = _run_script(
        tmp_path,
        """
        import json, logging, os, signal, time
        from flowcore import flow, task

        offset = 100

        @task
        def add_offset(x):
            return x + offset

        @task
        def pid(_=0):
            return os.getpid()

        @task
        def die():
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)

        def make_scaler(k):
            @task(name="scale")
            def scale(x):
                return x * k
            return scale

        @flow(backend="dask")
        def main():
            scale = make_scaler(3)
            values = [add_offset.submit(1).result(), scale.submit(2).result(), sum(f.result() for f in add_offset.map(range(300)))]
            crashed = die.submit(return_state=True)
            pids = sorted({f.result() for f in pid.map(range(20))})
            return values, crashed.name, crashed.message, pids

        @task
        def sleeper(seconds, marker):
            open(marker, "w").close()
            time.sleep(seconds)
            return seconds

        running = []

        @flow(backend="dask")
        def failing():
            marker = os.path.abspath("started")
            running.append(sleeper.submit(30, marker))  # stopped with its worker, not awaited
            add_offset.map(range(50))
            deadline = time.monotonic() + 60
            while not os.path.exists(marker) and time.monotonic() < deadline:
                time.sleep(0.05)
            raise RuntimeError("the body failed")

        if __name__ == "__main__":
            values, crashed, message, pids = main()
            try:
                failing()
            except RuntimeError as exc:
                print("raised:", exc, running[0].state.name)
            print(json.dumps({"values": values, "crashed": crashed, "message": message, "pids": pids}))
        """,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["values"] == [101, 6, sum(range(300)) + 300 * 100]
    assert out["crashed"] == "Crashed" and "died while running it" in out["message"]
    assert "raised: the body failed Cancelled" in result.stdout  # its worker was stopped
    assert "started a local Dask cluster of 2 worker processes" in result.stderr  # INFO
    # A dead worker is restarted by its nanny, which says so; nothing else from Dask.
    assert noise(result.stderr, expected=("distributed.nanny - WARNING - Restarting worker",)) == [], result.stderr
    assert os.getpid() not in out["pids"]
    assert _wait_gone(out["pids"]) == []


@pytest.mark.slow
def test_local_cluster_workers_use_the_parents_cache_directory(tmp_path: Path) -> None:
    """issue 12 (11): the workers of the local cluster get the parent's resolved cache
    directory, so that ``flowcore cache ls`` there sees the entries they write."""
    (tmp_path / "pyproject.toml").write_text('[tool.flowcore]\ncache_dir = "shared-cache"\n')
    result = _run_script(
        tmp_path,
        """
        import json, os
        from flowcore import flow, task
        from flowcore.caching import INPUTS

        @task(cache_policy=INPUTS)
        def where(x):
            return os.environ.get("FLOWCORE_CACHE_DIR"), x

        @flow(backend="dask")
        def main():
            return where.submit(1).result()

        if __name__ == "__main__":
            print(json.dumps(main()))
        """,
    )
    assert result.returncode == 0, result.stderr
    worker_directory, _ = json.loads(result.stdout.strip().splitlines()[-1])
    assert worker_directory == str((tmp_path / "shared-cache").resolve())
    listed = subprocess.run(
        [sys.executable, "-m", "flowcore", "cache", "ls"], capture_output=True, text=True, timeout=60,
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    assert "where" in listed.stdout, listed.stdout


@pytest.mark.slow
@pytest.mark.parametrize("whole_group", [False, True], ids=["parent", "process-group"])
def test_ctrl_c_stops_the_local_cluster(tmp_path: Path, whole_group: bool) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, time
            from pathlib import Path
            from flowcore import flow, task

            # Ctrl-C as in a terminal, even if the test runner was started with SIGINT
            # ignored (a background job of a non-interactive shell).
            if __name__ == "__main__":
                signal.signal(signal.SIGINT, signal.default_int_handler)

            @task
            def work(i):
                Path({str(pids)!r}, str(os.getpid())).write_text("")
                time.sleep(60)
                return i

            @flow(backend="dask")
            def main():
                futures = [work.submit(i) for i in range(4)]
                return [f.result() for f in futures]

            if __name__ == "__main__":
                main()
            """
        )
    )
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        worker_pids = [int(p.name) for p in pids.iterdir()]
        assert worker_pids, "no worker started"
        if whole_group:  # what a terminal does
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0
    assert "KeyboardInterrupt" in stderr
    assert _wait_gone(worker_pids) == [], "worker processes outlived the parent"
    assert noise(stderr, expected=("Traceback", "KeyboardInterrupt")) == [], stderr


@task
def busy_span(seconds: float) -> tuple[float, float]:
    started = time.time()
    time.sleep(seconds)
    return started, time.time()


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


@pytest.mark.slow
def test_batches_fill_a_cluster_larger_than_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """How many batches may be out at once follows the cluster's worker threads, known
    only once connected: on a cluster reached by address with more workers than this
    machine has cores (6 against a pretended 2), a map and individual submits both run
    6 tasks at once; so does the joblib shim with ``n_jobs=-1`` (all of the cluster's
    workers, as with joblib's own Dask backend)."""
    import flowcore.backends.dask as dask_backend

    import flowcore.compat._config as shim_config
    from flowcore.compat.joblib import Parallel, delayed

    monkeypatch.setattr(dask_backend, "usable_cpu_count", lambda: 2)
    monkeypatch.setattr(shim_config, "cpu_count", lambda only_physical_cores=False: 2)
    big = DaskCluster(workers=6)
    try:
        mapped = on_dask(lambda: [f.result() for f in busy_span.map([0.6] * 12)], address=big.address)
        submitted = on_dask(
            lambda: [f.result() for f in [busy_span.submit(0.6) for _ in range(12)]], address=big.address
        )
        backend = flowcore.get_backend("dask", address=big.address)
        try:
            through_shim = Parallel(n_jobs=-1, backend=backend)(delayed(busy_span.fn)(0.6) for _ in range(12))
        finally:
            backend.shutdown()
    finally:
        big.stop()
    assert _most_at_once(mapped) == 6
    assert _most_at_once(submitted) == 6
    assert _most_at_once(through_shim) == 6
