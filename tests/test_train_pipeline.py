"""End to end: the training job on synthetic shards, with a real MLflow server and Ray.

Each run is the real command line (``python pipelines/train.py ...``) in a subprocess,
with a tiny model at 32 px so that a run takes seconds of compute. The shards come from
``discohead.data.synthetic_shards``, written by the preprocessing job's own writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LEARNING_SEED, REPO_ROOT, assert_quiet, repo_env, stop_process_group, venv_binary, wait_until

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "pipelines" / "train.py"
TINY_MODEL = ["--image-size", "32", "--widths", "tiny", "--perceptual-weight", "0", "--no-evaluate"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from discohead.data.synthetic_shards import write_synthetic_shards

    dest = tmp_path_factory.mktemp("shards") / "synthetic"
    write_synthetic_shards(str(dest), clips=4, frames_per_clip=150, image_size=32, seed=0)
    return str(dest)


def train(*arguments: str, mlflow_uri: str, cwd: Path, timeout: float = 420) -> subprocess.CompletedProcess:
    env = repo_env(MLFLOW_TRACKING_URI=mlflow_uri, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def mlflow_runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_two_workers_train_on_different_samples(shards, mlflow_server, tmp_path):
    result = train(
        "--variant", "affine-nm", "--data", shards, "--num-workers", "2", "--batch-size", "4", "--max-steps", "4",
        "--log-every", "2", "--checkpoint-every", "4", "--storage", str(tmp_path / "runs"),
        "--experiment", "two-workers",
        "--register", "two-workers-model", *TINY_MODEL, "--evaluate", "--evaluate-clips", "1",
        mlflow_uri=mlflow_server, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "step 4/4" in result.stdout + result.stderr
    assert_quiet(result.stdout + result.stderr)  # each step, checkpoint and evaluation line once; no Ray internals
    (run,) = mlflow_runs(mlflow_server, "two-workers")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    keys = []
    for rank in (0, 1):
        path = client.download_artifacts(run.info.run_id, f"data/rank-{rank}-chunks.txt", str(tmp_path))
        keys.append(set(Path(path).read_text().split()))
    assert keys[0] and keys[1], "each worker read chunks"
    assert not keys[0] & keys[1], "the two workers saw different chunks"
    assert run.data.params["num_workers"] == "2" and run.data.params["batch_size"] == "4"
    assert "data_config_hash" in run.data.params and "code_version" in run.data.params
    assert {"eval/test/psnr", "eval/test/copy/psnr", "eval/test/akd"} <= set(run.data.metrics), (
        "--evaluate scored the run"
    )
    assert list((tmp_path / "runs").glob("two-workers-affine-nm-*-eval/results.md"))
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development", "the UI opens on the training runs"
    images = [item.path for item in client.list_artifacts(run.info.run_id, "images")]
    assert any("samples+step+4+" in path for path in images), images

    import mlflow
    import numpy as np

    from discohead.tracking import load_model

    for ref in (
        run.info.run_id,
        f"runs:/{run.info.run_id}",
        "models:/two-workers-model/1",
        "models:/two-workers-model@candidate",
    ):
        assert load_model(ref, mlflow_server).config.variant == "affine-nm", ref
    mlflow.set_tracking_uri(mlflow_server)
    pyfunc = mlflow.pyfunc.load_model("models:/two-workers-model@candidate")
    inputs = {
        name: spec.shape
        for name, spec in zip(pyfunc.metadata.signature.inputs.input_names(), pyfunc.metadata.signature.inputs.inputs)
    }
    assert inputs["source"] == (-1, 3, 32, 32) and inputs["audio"] == (-1, 80, 40)
    example = {name: np.zeros((2, *shape[1:]), np.float32) for name, shape in inputs.items()}
    assert pyfunc.predict(example).shape == (2, 3, 32, 32)
    assert pyfunc.metadata.saved_input_example_info is not None, "the model has an input example"
    model_files = mlflow.artifacts.download_artifacts(
        "models:/two-workers-model/1", dst_path=str(tmp_path / "model"), tracking_uri=mlflow_server
    )
    assert (Path(model_files) / "code" / "discohead" / "model.py").exists(), "the model carries the project's code"


def test_all_variants_give_four_comparable_runs(shards, mlflow_server, tmp_path):
    result = train(
        "--variant", "all", "--data", shards, "--num-workers", "1", "--batch-size", "2", "--max-steps", "2",
        "--log-every", "1", "--checkpoint-every", "2", "--storage", str(tmp_path / "runs"),
        "--experiment", "all-variants",
        *TINY_MODEL, mlflow_uri=mlflow_server, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = mlflow_runs(mlflow_server, "all-variants")
    (parent,) = [run for run in runs if run.data.tags["discohead.variant"] == "all"]
    children = [run for run in runs if run is not parent]
    assert sorted(run.data.tags["discohead.variant"] for run in children) == [
        "affine-dm",
        "affine-nm",
        "tps-dm",
        "tps-nm",
    ]
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}, (
        "one launch, grouped in the UI"
    )
    assert {run.info.status for run in runs} == {"FINISHED"}
    metric_keys = {frozenset(run.data.metrics) for run in children}
    assert len(metric_keys) == 1, f"runs differ in metric names: {metric_keys}"
    assert {"loss_total", "loss_l1", "psnr", "ssim", "samples_per_second", "eta_seconds"} <= set(
        next(iter(metric_keys))
    )


@pytest.mark.learning
def test_loss_decreases_and_resume_continues_the_step_count(shards, mlflow_server, tmp_path, record_property):
    common = [
        "--variant", "tps-nm", "--data", shards, "--batch-size", "4", "--lr", "1e-3", "--log-every", "5",
        "--seed", str(LEARNING_SEED),
        "--checkpoint-every", "10", "--storage", str(tmp_path / "runs"), "--experiment", "resume", *TINY_MODEL,
    ]  # fmt: skip
    first = train(*common, "--max-steps", "20", mlflow_uri=mlflow_server, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # Only what finds the run and what changes: the rest comes from the config the checkpoint saved.
    found = ["--variant", "tps-nm", "--storage", str(tmp_path / "runs"), "--experiment", "resume"]
    second = train(*found, "--max-steps", "40", "--resume", mlflow_uri=mlflow_server, cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming from step 20" in second.stdout + second.stderr

    (run,) = mlflow_runs(mlflow_server, "resume")
    history = metric_history(mlflow_server, run.info.run_id, "loss_total")
    assert [step for step, _ in history] == [5, 10, 15, 20, 25, 30, 35, 40], "the resumed run continues at step 21"
    record_property("margin", history[-1][1] / history[0][1] / 0.8)  # passes below 1
    assert history[-1][1] < 0.8 * history[0][1], f"loss did not decrease: {history}"
    checkpoints = sorted(next((tmp_path / "runs").iterdir()).glob("step-*"))
    assert checkpoints[-1].name == "step-00000040"
    import torch

    saved = torch.load(checkpoints[-1] / "discohead.pt", weights_only=True)["train_config"]
    assert saved["max_steps"] == 40 and saved["lr"] == 1e-3, (
        "--resume kept the saved config and took the new --max-steps"
    )
    params = run.data.params
    assert (
        set(saved) - {"model_options", "preprocessing"} <= set(params)
        and params["lr"] == "0.001"
        and params["max_steps"] == "20"
    )


def train_worker_pids(root: int) -> list[int]:
    """Ray Train worker processes descending from ``root`` (the training job we started)."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                titles[int(entry.name)] = (entry / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue

    def descends(pid: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = parents.get(pid, 0)
        return False

    return [pid for pid, title in titles.items() if b"RayTrainWorker" in title and descends(pid)]


@contextlib.contextmanager
def training_until_checkpoint(command: list[str], mlflow_server: str, tmp_path: Path, storage: Path):
    """The training job started in its own process group, yielded (with its log's path) once Ray Train's
    controller has registered a checkpoint; the group is stopped on the way out.

    The controller writes its snapshot when it registers one; a report reaches it up to a health-check
    interval after the checkpoint's files are written.
    """
    env = repo_env(MLFLOW_TRACKING_URI=mlflow_server, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until(
                lambda: any(storage.glob("*/checkpoint_manager_snapshot.json")) or process.poll() is not None,
                300,
                "a registered checkpoint",
            )
            assert process.poll() is None, log_path.read_text()[-3000:]
            yield process, log_path
        finally:
            stop_process_group(process)


def test_a_killed_worker_is_replaced_and_the_run_resumes_from_its_checkpoint(shards, mlflow_server, tmp_path):
    storage = tmp_path / "runs"
    command = [
        sys.executable, str(SCRIPT), "--variant", "affine-dm", "--data", shards, "--batch-size", "4",
        "--max-steps", "100",
        "--log-every", "10", "--checkpoint-every", "10", "--storage", str(storage), "--experiment", "failover",
        "--max-failures", "2", *TINY_MODEL,
    ]  # fmt: skip
    with training_until_checkpoint(command, mlflow_server, tmp_path, storage) as (process, log_path):
        pids = train_worker_pids(process.pid)
        assert pids, "no Ray Train worker process found"
        os.kill(pids[0], signal.SIGKILL)
        process.wait(timeout=420)
    output = log_path.read_text()
    assert process.returncode == 0, output[-4000:]
    resumed = [line for line in output.splitlines() if "resuming from step" in line]
    assert resumed and "resuming from step 0" not in resumed[0], output[-4000:]
    (run,) = mlflow_runs(mlflow_server, "failover")
    assert max(step for step, _ in metric_history(mlflow_server, run.info.run_id, "loss_total")) == 100


def test_unreadable_samples_are_skipped_and_logged_and_too_many_fail_in_one_line(mlflow_server, tmp_path):
    """Issue 11, item 9: one damaged sample used to fail the read task, so every retry of the run."""
    from mlflow.tracking import MlflowClient

    from discohead.data.synthetic_shards import write_synthetic_shards

    from conftest import rewrite_tar

    dest = str(tmp_path / "damaged")
    manifest = write_synthetic_shards(dest, clips=4, frames_per_clip=150, image_size=32, seed=0)
    (shard,) = manifest.shards["train"]
    rewrite_tar(f"{dest}/{shard}", lambda name, data: b"{not json" if name.endswith("001-00001.meta.json") else data)
    common = [
        "--variant", "affine-nm", "--data", dest, "--batch-size", "2", "--max-steps", "30", "--log-every", "10",
        "--checkpoint-every", "30", "--storage", str(tmp_path / "runs"), *TINY_MODEL,
    ]  # fmt: skip  # 7 readable chunks x 8 pairs / 2 = 28 steps a pass: the shard's count (on one row) is met
    within = train(
        *common, "--experiment", "bad-within", "--max-bad-samples", "0.2", mlflow_uri=mlflow_server, cwd=tmp_path
    )
    assert within.returncode == 0, within.stdout[-3000:] + within.stderr[-3000:]
    (run,) = mlflow_runs(mlflow_server, "bad-within")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["bad_samples"] == 1 and run.data.metrics[f"bad_samples/{shard}"] == 1
    assert "sample synthetic-0-001-00001: JSONDecodeError" in run.data.tags[f"bad_samples/{shard}"]

    started = time.monotonic()
    beyond = train(*common, "--experiment", "bad-beyond", mlflow_uri=mlflow_server, cwd=tmp_path)  # default 0.01
    output = beyond.stdout + beyond.stderr
    assert beyond.returncode == 2, output[-3000:]
    (error,) = [line for line in beyond.stderr.splitlines() if line.startswith("[train] error:")]
    assert error == (
        "[train] error: 1 of the 8 training samples are unreadable, more than --max-bad-samples 0.01 allows: "
        "preprocess the data again (the MLflow run's bad_samples/* metrics name the shards) or raise --max-bad-samples"
    ), output[-3000:]
    readers = [line for line in output.splitlines() if "skipped 1 unreadable" in line]
    assert len(readers) == 1, "no retry: one worker read the shard once, no worker group was started again"
    assert time.monotonic() - started < 180
    (run,) = mlflow_runs(mlflow_server, "bad-beyond")
    assert run.info.status == "FAILED" and "1 of the 8 training samples" in run.data.tags["discohead.failure"]
    assert MlflowClient(mlflow_server).get_metric_history(run.info.run_id, f"bad_samples/{shard}")[0].value == 1


def test_a_stopped_job_ends_its_run_killed_with_the_reason_and_resume_finishes_it(shards, mlflow_server, tmp_path):
    """Issue 11, item 10: SIGTERM (what ray job stop sends) used to leave the MLflow run RUNNING forever."""
    storage = tmp_path / "runs"
    arguments = ["--variant", "tps-dm", "--storage", str(storage), "--experiment", "stopped"]
    command = [
        sys.executable, str(SCRIPT), *arguments, "--data", shards, "--batch-size", "2", "--max-steps", "400",
        "--log-every", "5", "--checkpoint-every", "5", *TINY_MODEL,
    ]  # fmt: skip
    with training_until_checkpoint(command, mlflow_server, tmp_path, storage) as (process, log_path):
        os.kill(process.pid, signal.SIGTERM)  # the driver only, as ray job stop signals its entrypoint
        process.wait(timeout=120)
    (run,) = mlflow_runs(mlflow_server, "stopped")
    assert run.info.status == "KILLED", log_path.read_text()[-3000:]
    assert run.data.tags["discohead.failure"].startswith("stopped by SIGTERM")

    saved = max(int(path.parent.name.removeprefix("step-")) for path in storage.glob("*/step-*/discohead.pt"))
    target = saved + 10
    resumed = train(*arguments, "--resume", "--max-steps", str(target), mlflow_uri=mlflow_server, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from step 0" not in resumed.stdout + resumed.stderr
    (again,) = mlflow_runs(mlflow_server, "stopped")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert "discohead.failure" not in again.data.tags, "the resumed run no longer carries the old reason"
    assert max(step for step, _ in metric_history(mlflow_server, run.info.run_id, "loss_total")) == target


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--data", "/nonexistent/shards"], "has no manifest.json: run pipelines/preprocess.py"),
        (["--image-size", "64"], "larger than the shards' 32 px"),
        (["--use-gpu"], "no CUDA GPU: drop --use-gpu"),
        (["--batch-size", "3", "--num-workers", "2"], "does not split evenly"),
        (["--model-option", "colour=blue"], "'colour' is not a model option"),
    ],
)
def test_bad_input_fails_fast_with_one_line(shards, tmp_path, capsys, arguments, message):
    from pipelines import train as train_job

    base = {"--variant": "affine-nm", "--data": shards}
    argv = [item for key, value in base.items() if key not in arguments for item in (key, value)] + arguments
    started = time.monotonic()
    assert train_job.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert time.monotonic() - started < 30, "checks run before any Ray worker starts"


def test_incompatible_shard_format_and_unknown_variant_are_refused(shards, tmp_path, capsys):
    from pipelines import train as train_job

    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((Path(shards) / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    assert train_job.main(["--variant", "affine-nm", "--data", str(old)]) == 2
    assert "shard format 0" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(
        json.dumps(
            {
                **manifest,
                "shards": {"train": [], "test": []},
                "totals": {**manifest["totals"], "chunks": {"train": 0, "test": 0}},
            }
        )
    )
    assert train_job.main(["--variant", "affine-nm", "--data", str(empty)]) == 2
    assert "has no training shards" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train_job.main(["--variant", "affine", "--data", shards])
    assert exit_info.value.code == 2
    assert "invalid choice: 'affine'" in capsys.readouterr().err


def test_ray_job_submit_with_s3_shards_and_checkpoints(ray_head, s3_server, mlflow_server, tmp_path):
    from discohead.data.synthetic_shards import write_synthetic_shards

    filesystem = s3_server.filesystem()
    filesystem.mkdir("training")
    write_synthetic_shards(
        "s3://training/shards", clips=2, frames_per_clip=100, image_size=32, storage_options=s3_server.storage_options
    )
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": mlflow_server}})
    command = [
        venv_binary("ray"), "job", "submit", "--address", ray_head.dashboard, "--runtime-env-json", runtime_env, "--",
        sys.executable, str(SCRIPT), "--variant", "affine-nm", "--data", "s3://training/shards", "--batch-size", "2",
        "--max-steps", "2", "--log-every", "1", "--checkpoint-every", "2", "--storage", "s3://training/runs",
        "--experiment", "submitted", *TINY_MODEL,
    ]  # fmt: skip
    result = subprocess.run(command, env=ray_head.client_env, capture_output=True, text=True, timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output
    checkpoints = filesystem.glob("training/runs/submitted-affine-nm-*/step-00000002/discohead.pt")
    assert checkpoints, filesystem.find("training/runs")
    from discohead import DisCoHead

    with filesystem.open(checkpoints[0], "rb") as handle:
        import torch

        model = DisCoHead.from_checkpoint(torch.load(handle, weights_only=True))
    assert model.config.variant == "affine-nm" and model.config.image_size == 32
    assert len(mlflow_runs(mlflow_server, "submitted")) == 1
    from conftest import S3_SECRET

    assert S3_SECRET not in output
