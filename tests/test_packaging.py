"""What an installed flowcore must offer to workers and plugins."""

from __future__ import annotations

import subprocess
import sys


def test_workloads_import_without_pytest() -> None:
    """Worker processes unpickle conformance tasks; they must not need pytest."""
    code = (
        "import sys; import flowcore.testing.workloads as w; "
        "print('pytest' in sys.modules, w.add(1, 2))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["False", "3"]


def test_conformance_suite_is_importable_on_demand() -> None:
    from flowcore.testing import BackendConformance, LifecycleRecorder

    assert hasattr(BackendConformance, "test_retries_until_success")
    assert hasattr(LifecycleRecorder, "flowcore_task_run_finished")
