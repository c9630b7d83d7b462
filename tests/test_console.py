"""What a job prints (pipelines/console.py): its tagged lines once each, Ray's and MLflow's own only with -v.

The printer is driven here with batches shaped as Ray forwards them; the jobs themselves are checked
quiet in test_preprocess_pipeline.py and test_train_pipeline.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest

from pipelines import console

from conftest import REPO_ROOT, assert_quiet


@pytest.fixture
def emit():
    """What Ray's log thread calls with each forwarded batch, once the job has replaced Ray's printer."""
    return console.worker_printer()


def batch(lines: list[str], pid: object = 4242, is_err: bool = False) -> dict:
    return {"ip": "127.0.0.1", "localhost": "127.0.0.1", "pid": pid, "lines": lines, "is_err": is_err,
            "actor_name": "RayTrainWorker", "task_name": "", "job": "01000000"}  # fmt: skip


def test_worker_lines_are_ours_once_each_without_rays_prefix(emit, capsys):
    step = "[train affine-dm] step 10/40  loss 0.0369  psnr 14.85  0.9 samples/s  ETA 0:04:28"
    emit(batch([step, "Moving model to device: cpu", "Setting up process group for: env://"]))
    emit(batch([step], is_err=True))  # Ray Train's print patch: the same print again, via its logger
    emit(batch([step.replace("affine-dm", "tps-dm")], pid=4343))  # another worker: its own line
    emit(batch(["WARNING: 28 PYTHON worker processes have been started on node"], pid="raylet"))
    emit(batch(["[preprocess] from the autoscaler?"], pid="autoscaler"))
    emit(batch(["/x/execution_options.py:436: RayDeprecationWarning: `exclude_resources`", "  self.x"]))
    emit(batch(["[preprocess] clip-7: skipped (no_face: no face in 40 frames) in 0.4s"], is_err=True))
    out, err = capsys.readouterr()
    assert out.splitlines() == [step, step.replace("affine-dm", "tps-dm")]
    assert err.splitlines() == ["[preprocess] clip-7: skipped (no_face: no face in 40 frames) in 0.4s"]
    assert_quiet(out + err)


def test_a_line_printed_again_later_is_printed_again(emit, capsys):
    """Only an immediate repeat from the same worker is the patch's echo; a line may recur legitimately."""
    lines = [f"[evaluate affine-dm] clip {index}/40, 50 frames" for index in range(40)]
    emit(batch(["[evaluate affine-dm] resuming"]))
    emit(batch(lines))
    emit(batch(["[evaluate affine-dm] resuming"]))
    assert capsys.readouterr().out.splitlines().count("[evaluate affine-dm] resuming") == 2


def test_quiet_sets_the_libraries_switches_unless_the_user_set_them(monkeypatch):
    for name in console.QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "DEBUG")  # the user's choice stands
    levels = {name: logging.getLogger(name).level for name in console.QUIET_LOGGERS}
    try:
        with warnings.catch_warnings(record=True) as caught:  # restores the filters quiet() adds
            console.quiet(verbose=False)
            assert os.environ["MLFLOW_LOGGING_LEVEL"] == "DEBUG" and "RAY_BACKEND_LOG_LEVEL" not in os.environ
            assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
            assert logging.getLogger("mlflow").level == logging.WARNING
            warnings.warn("`ExecutionOptions.exclude_resources` is deprecated", DeprecationWarning, stacklevel=1)
            warnings.warn("Add type hints to the `predict` method to enable data validation", UserWarning, stacklevel=1)
            warnings.warn("[train] 3 of 8 samples are unreadable", RuntimeWarning, stacklevel=1)
        assert [str(warning.message) for warning in caught] == ["[train] 3 of 8 samples are unreadable"]
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_the_printer_replaces_rays_before_ray_starts(monkeypatch):
    from ray._private import worker

    monkeypatch.setattr(worker, "print_to_stdstream", worker.print_to_stdstream)  # restored after the test
    console.forward_worker_lines()
    assert worker.print_to_stdstream.__qualname__ == "worker_printer.<locals>.print_ours"


def test_rays_native_log_lines_are_recognised_and_nothing_else():
    dropped = [
        b"[2026-12-07 13:02:10,225 E 4758 4758] core_worker.cc:2465: Actor with class name: 'MapWorker' has",
        b"[2026-12-07 13:15:02,063 I 13526 13526] logging.cc:303: Set ray log level from environment variable",
    ]
    kept = [
        b"[2026-12-07 13:02:10,225 F 4758 4758] core_worker.cc:99: Check failed: the process aborts",
        b"[preprocess] error: --input nowhere/: no such file",
        b"Traceback (most recent call last):",
    ]
    assert all(console.NATIVE_LOG.match(line) for line in dropped)
    assert not any(console.NATIVE_LOG.match(line) for line in kept)


def test_verbose_changes_nothing(monkeypatch):
    for name in console.QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    filters = list(warnings.filters)
    console.quiet(verbose=True)
    assert not any(name in os.environ for name in console.QUIET_ENV) and warnings.filters == filters


def test_native_log_lines_are_dropped_from_the_processs_stderr_and_the_rest_reaches_it_before_exit():
    script = (
        "import os, sys\n"
        "from pipelines import console\n"
        "console.filter_native_stderr()\n"
        "os.write(2, b'[2026-12-07 13:02:10,225 E 4758 4758] core_worker.cc:2465: Actor with class name\\n')\n"
        "os.write(2, b'[2026-12-07 13:02:10,225 F 4758 4758] core_worker.cc:99: Check failed\\n')\n"
        "print('[train] error: the reason, in one line', file=sys.stderr)\n"
        "sys.exit(2)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "[2026-12-07 13:02:10,225 F 4758 4758] core_worker.cc:99: Check failed",
        "[train] error: the reason, in one line",
    ]
