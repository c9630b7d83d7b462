"""End to end: the evaluation job on synthetic shards, a registered model on a real MLflow server, and Ray.

The model is untrained (logged straight to MLflow with tiny widths): the test is about the
job, its table and where its numbers go, not about their values.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from discohead import DisCoHead
from discohead.config import WIDTHS
from discohead.data.synthetic_shards import write_synthetic_shards

from conftest import REPO_ROOT, repo_env

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "pipelines" / "evaluate.py"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    dest = tmp_path_factory.mktemp("eval-shards") / "synthetic"
    write_synthetic_shards(str(dest), clips=2, frames_per_clip=20, image_size=32, chunk_frames=10)
    return str(dest)


@pytest.fixture(scope="module")
def registered(mlflow_server, shards) -> str:
    """An MLflow run holding a logged, registered tiny model; returns its run id."""
    from mlflow.tracking import MlflowClient

    from discohead.tracking import log_model

    client = MlflowClient(mlflow_server)
    run_id = client.create_run(client.create_experiment("evaluation")).info.run_id
    model = DisCoHead.from_variant("affine-dm", image_size=32, **WIDTHS["tiny"])
    log_model(mlflow_server, run_id, model, None, register="eval-model", alias="candidate")
    return run_id


def evaluate(*arguments: str, mlflow_uri: str, tmp_path) -> subprocess.CompletedProcess:
    env = repo_env(MLFLOW_TRACKING_URI=mlflow_uri, TORCH_HOME=str(tmp_path / "torch"), PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, str(SCRIPT), *arguments]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_two_models_side_by_side_table_csv_and_mlflow_metrics(shards, registered, mlflow_server, tmp_path):
    checkpoint = tmp_path / "step-00000001"
    checkpoint.mkdir()
    torch.save(
        DisCoHead.from_variant("tps-nm", image_size=32, **WIDTHS["tiny"]).checkpoint(), checkpoint / "discohead.pt"
    )
    result = evaluate(
        "--model", "models:/eval-model@candidate", "--model", str(checkpoint), "--data", shards,
        "--output", str(tmp_path / "out"), "--max-clips", "1", "--batch-size", "5",
        mlflow_uri=mlflow_server, tmp_path=tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| models:/eval-model@candidate | model |" in table and f"| {checkpoint} | warp |" in table
    assert "lpips: unavailable: provide alexnet-owt-7be5be79.pth" in table
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("model,system,psnr,ssim,lpips,fid,akd,aed") and len(rows) == 1 + 2 * 3

    from mlflow.tracking import MlflowClient

    run = MlflowClient(mlflow_server).get_run(registered)
    keys = set(run.data.metrics)
    assert {"eval/test/psnr", "eval/test/ssim", "eval/test/akd", "eval/test/aed", "eval/test/copy/psnr"} <= keys
    assert {"eval/test/warp/psnr", "eval/test/frames_per_second"} <= keys
    assert not any("lpips" in key or "fid" in key for key in keys)
    assert "provide pt_inception-2015-12-05-6726825d.pth" in run.data.tags["eval.test.unavailable.fid"]
    images = [item.path for item in MlflowClient(mlflow_server).list_artifacts(registered, "images")]
    assert any(path.startswith("images/eval~test~samples+step+0") for path in images), images


@pytest.mark.parametrize(
    "problem, message",
    [
        ("unknown-ref", "--model models:/no-such-model/1:"),
        ("old-format", "checkpoint format 99, this code reads 1"),
        ("mel", "takes 40 x 40 mel windows, the shards hold 80 x 40"),
        ("no-test", "has no test split"),
    ],
)
def test_bad_input_fails_with_one_line(problem, message, shards, mlflow_server, tmp_path, capsys, monkeypatch):
    from pipelines import evaluate as job

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    ref, data = str(tmp_path / "model.pt"), shards
    model = DisCoHead.from_variant("affine-nm", image_size=32, **WIDTHS["tiny"], n_mels=40 if problem == "mel" else 80)
    torch.save({**model.checkpoint(), **({"format_version": 99} if problem == "old-format" else {})}, ref)
    if problem == "unknown-ref":
        ref = "models:/no-such-model/1"
    if problem == "no-test":
        data = str(tmp_path / "train-only")
        write_synthetic_shards(data, clips=1, frames_per_clip=10, image_size=32, chunk_frames=10)
    assert job.main(["--model", ref, "--data", data, "--no-mlflow"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error


def test_ray_job_submit_with_s3_shards_and_checkpoint(ray_head, s3_server, tmp_path):
    """Under ``ray job submit``, shards and checkpoint on S3 (the credentials only in the head's environment)."""
    from conftest import S3_SECRET, venv_binary

    filesystem = s3_server.filesystem()
    filesystem.mkdir("evaluation")
    data = "s3://evaluation/shards"
    write_synthetic_shards(
        data, clips=2, frames_per_clip=20, image_size=32, chunk_frames=10, storage_options=s3_server.storage_options
    )
    local = tmp_path / "discohead.pt"
    torch.save(DisCoHead.from_variant("tps-dm", image_size=32, **WIDTHS["tiny"]).checkpoint(), local)
    filesystem.put_file(str(local), "evaluation/runs/step-00000001/discohead.pt")
    command = [
        venv_binary("ray"), "job", "submit", "--address", ray_head.dashboard, "--",
        sys.executable, str(SCRIPT), "--model", "s3://evaluation/runs/step-00000001", "--data", data,
        "--output", "s3://evaluation/eval", "--max-clips", "1", "--no-faces",
    ]  # fmt: skip
    result = subprocess.run(command, env=ray_head.client_env, capture_output=True, text=True, timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "succeeded" in output, output[-4000:]
    assert (
        "| s3://evaluation/runs/step-00000001 | model |" in filesystem.cat_file("evaluation/eval/results.md").decode()
    )
    assert S3_SECRET not in output
