"""End to end on two Ray nodes: the design card's commands, as a user types them, against a cluster with auth on.

A head and a second node joined to it (``ray_two_nodes``: both ``ray start`` with token
authentication, S3 credentials only in the nodes' environment), the S3-compatible server of
``s3_server``, and an MLflow server started by ``infra/services.py`` with its artifacts proxied to
the bucket. Every job goes through ``ray job submit --working-dir .`` from the repository, like
from a laptop. Tiny on purpose (two 2.4 s clips, 32 px, a tiny model, 4 steps): the test is
about where things run and land, not about the model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from discohead.storage import shared_storage_problem

from conftest import REPO_ROOT, S3_SECRET, alive_nodes, free_port, repo_env, venv_binary

SUBMIT_TIMEOUT = 420


@pytest.fixture(scope="module")
def mlflow_on_s3(s3_server, tmp_path_factory):
    """``infra/services.py start``: MLflow with its artifacts proxied to s3://mlflow/artifacts; stopped by pid."""
    s3_server.filesystem().mkdir("mlflow")
    state = tmp_path_factory.mktemp("services")
    env = {**os.environ, **s3_server.env}
    script = [sys.executable, str(REPO_ROOT / "infra" / "services.py")]
    port = free_port()
    start = [*script, "start", "--state-dir", str(state), "--mlflow-port", str(port), "--mlflow-workers", "1"]
    start += ["--artifacts", "s3://mlflow/artifacts"]
    started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr + (state / "mlflow.log").read_text()[-3000:]
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in started.stdout
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([*script, "stop", "--state-dir", str(state)], env=env, capture_output=True, timeout=60)
    assert subprocess.run([*script, "status", "--state-dir", str(state)], capture_output=True).returncode == 1


def submit(cluster, *entrypoint: str, env_vars: dict[str, str] | None = None) -> str:
    """``ray job submit --working-dir . -- ENTRYPOINT`` from the repository, as in README; returns its output."""
    command = [venv_binary("ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", "."]
    if env_vars:
        command += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
    started = time.monotonic()
    result = subprocess.run(
        [*command, "--", *entrypoint],
        cwd=REPO_ROOT,
        env=cluster.client_env,
        capture_output=True,
        text=True,
        timeout=SUBMIT_TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "succeeded" in output, f"exit {result.returncode}:\n{output[-6000:]}"
    print(f"{entrypoint[1]}: {time.monotonic() - started:.0f}s")
    return output


def state_api(cluster, resource: str) -> list[dict]:
    """Rows of the dashboard's state API (``actors``, ``tasks``), dead ones included."""
    request = urllib.request.Request(
        f"{cluster.dashboard}/api/v0/{resource}?limit=10000&detail=1",
        headers={"Authorization": f"Bearer {cluster.token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]["result"]["result"]


@pytest.mark.slow
def test_design_card_commands_run_on_both_nodes_with_s3_and_mlflow(ray_two_nodes, s3_server, mlflow_on_s3, tmp_path):
    from mlflow.tracking import MlflowClient

    from discohead.data.synthetic import SyntheticClip, write_synthetic_video
    from discohead.manifest import Manifest

    fs = s3_server.filesystem()
    fs.mkdir("raw")
    fs.mkdir("data")
    for seed in (1, 2):
        fs.put_file(
            str(write_synthetic_video(tmp_path / f"speaker{seed}.mp4", SyntheticClip(seed=seed))),
            f"raw/clips/speaker{seed}.mp4",
        )

    # 1. raw videos on S3 -> shards on S3 (20-frame chunks: two per split, one per training worker)
    outputs = [
        submit(
            ray_two_nodes, "python", "pipelines/preprocess.py", "--input", "s3://raw/clips", "--output",
            "s3://data/prepared", "--image-size", "32", "--chunk-frames", "20", "--landmarks", "dlib", "--workers", "2",
        )
    ]  # fmt: skip
    manifest = Manifest.read("s3://data/prepared", s3_server.storage_options)
    assert manifest.totals.clips == 2 and not manifest.skipped
    assert manifest.chunks("train") >= 2 and manifest.shards["test"]
    assert all(fs.exists(f"data/prepared/{shard}") for split in ("train", "test") for shard in manifest.shards[split])

    # 2. shards -> affine-nm, two DDP workers that fit one per node (2.5 CPUs: the head has 3, the second node 4)
    tracking = {"MLFLOW_TRACKING_URI": mlflow_on_s3}
    outputs.append(
        submit(
            ray_two_nodes, "python", "pipelines/train.py", "--variant", "affine-nm", "--data", "s3://data/prepared",
            "--storage", "s3://data/runs", "--experiment", "cluster", "--num-workers", "2", "--cpus-per-worker", "2.5",
            "--batch-size", "4", "--max-steps", "4", "--log-every", "2", "--checkpoint-every", "4",
            "--widths", "tiny", "--perceptual-weight", "0", "--no-evaluate",
            env_vars=tracking,
        )
    )  # fmt: skip
    client = MlflowClient(mlflow_on_s3)
    experiment = client.get_experiment_by_name("cluster")
    (run,) = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id

    # 3. the trained run -> the paper's metrics, logged to its MLflow run
    outputs.append(
        submit(
            ray_two_nodes, "python", "pipelines/evaluate.py", "--model", run_id, "--data", "s3://data/prepared",
            "--output", "s3://data/eval", "--max-clips", "1", "--no-faces", env_vars=tracking,
        )
    )  # fmt: skip

    # both nodes did work: a training worker on each, and Ray Data work beyond the head
    nodes = {
        node["node_id"]: next(name for name in ray_two_nodes.nodes if f"discohead_{name}" in node["resources_total"])
        for node in alive_nodes(ray_two_nodes.dashboard, ray_two_nodes.token)
    }
    actors = state_api(ray_two_nodes, "actors")
    trainers = [nodes[actor["node_id"]] for actor in actors if actor["class_name"] == "RayTrainWorker"]
    assert sorted(trainers) == ["head", "second"], trainers
    tasks = state_api(ray_two_nodes, "tasks")
    assert {nodes.get(task.get("node_id")) for task in tasks} >= {"head", "second"}

    # checkpoints and MLflow artifacts in the bucket; metrics, images and the evaluation on the server
    fs.invalidate_cache()
    checkpoints = fs.glob("data/runs/cluster-affine-nm-*/step-00000004/discohead.pt")
    assert len(checkpoints) == 1, fs.find("data/runs")
    assert fs.exists("data/eval/results.md")
    artifacts = fs.find(f"mlflow/artifacts/{experiment.experiment_id}")  # MLflow 3: the run's, and models/<id>/
    assert any(f"/{run_id}/artifacts/images/" in key for key in artifacts), artifacts
    assert any(key.endswith(f"/{run_id}/artifacts/data/rank-1-chunks.txt") for key in artifacts), "rank 1 read data"
    assert any(key.endswith("/artifacts/MLmodel") for key in artifacts), "the logged model is in the bucket"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert {"loss_total", "psnr", "eval/test/psnr", "eval/test/copy/psnr"} <= set(run.data.metrics)
    assert any(item.path.startswith("images/samples") for item in client.list_artifacts(run_id, "images"))

    # no secret in any job log, job record or MLflow field
    listed = subprocess.run(
        [venv_binary("ray"), "job", "list", "--address", ray_two_nodes.dashboard],
        env=ray_two_nodes.client_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    fields = [run.data.params, run.data.tags, experiment.tags, client.get_experiment(experiment.experiment_id).tags]
    recorded = "\n".join([*outputs, listed.stdout, listed.stderr, json.dumps(fields)])
    for secret in (S3_SECRET, ray_two_nodes.token):
        assert secret not in recorded


@pytest.mark.slow
def test_a_job_or_a_node_without_the_token_is_refused(ray_two_nodes, tmp_path):
    """The job API refuses a client without the token (or with another); the GCS refuses a node without it."""
    node_env = {key: value for key, value in ray_two_nodes.node_env.items() if not key.startswith("RAY_AUTH")}
    command = [
        venv_binary("ray"), "start", "--block", "--address", ray_two_nodes.gcs_address, "--node-ip-address",
        "127.0.0.1", "--num-cpus", "1", "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats",
    ]  # fmt: skip
    node = subprocess.Popen(  # it retries for ~20 s before it gives up: the job checks run meanwhile
        command, env={**node_env, "HOME": str(tmp_path)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        env = {key: value for key, value in ray_two_nodes.client_env.items() if not key.startswith("RAY_AUTH")}
        env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
        for extra in ({}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"}):
            result = subprocess.run(
                [venv_binary("ray"), "job", "submit", "--address", ray_two_nodes.dashboard, "--", "echo", "ran"],
                env={**env, **extra},
                capture_output=True,
                text=True,
                timeout=120,
            )
            refused = re.search(r"Unauthorized|Forbidden", result.stdout + result.stderr)
            assert result.returncode != 0 and refused, result.stderr[-2000:]
            assert "ran" not in result.stdout.splitlines()
        output, _ = node.communicate(timeout=90)
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
    assert node.returncode != 0 and b"AuthenticationError" in output, output[-2000:]
    assert len(alive_nodes(ray_two_nodes.dashboard, ray_two_nodes.token)) == 2


@pytest.mark.slow
def test_a_multi_node_job_refuses_paths_on_one_disk_before_any_worker(ray_two_nodes, s3_server, tmp_path):
    from discohead.data.synthetic_shards import write_synthetic_shards

    data = "s3://refusal/shards"
    s3_server.filesystem().makedirs("refusal", exist_ok=True)
    write_synthetic_shards(
        data, clips=2, frames_per_clip=20, image_size=32, chunk_frames=10, storage_options=s3_server.storage_options
    )
    env = repo_env(**ray_two_nodes.client_env, **s3_server.env, RAY_ADDRESS=ray_two_nodes.gcs_address)
    env.pop("MLFLOW_TRACKING_URI", None)
    train = [sys.executable, str(REPO_ROOT / "pipelines" / "train.py"), "--variant", "affine-nm", "--data", data]
    result = subprocess.run(
        [*train, "--storage", str(tmp_path / "runs"), "--widths", "tiny", "--perceptual-weight", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("[train] error:")]
    assert result.returncode == 2 and error == (
        f"[train] error: --storage {tmp_path / 'runs'} and MLFLOW_TRACKING_URI sqlite:///{tmp_path / 'mlflow.db'} are "
        "on one machine's disk, but this job runs on several Ray nodes: use s3:// paths and an MLflow tracking server "
        "(MLFLOW_TRACKING_URI=http://...), or add --shared-storage if they are on a file system every node mounts"
    ), result.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists(), "refused before any run began"

    evaluate = [sys.executable, str(REPO_ROOT / "pipelines" / "evaluate.py"), "--data", data, "--no-mlflow"]
    checkpoint = tmp_path / "model.pt"
    import torch

    from discohead import DisCoHead
    from discohead.config import WIDTHS

    torch.save(DisCoHead.from_variant("affine-nm", image_size=32, **WIDTHS["tiny"]).checkpoint(), checkpoint)
    result = subprocess.run(
        [*evaluate, "--model", str(checkpoint), "--output", "results"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 2 and "[evaluate] error: --output results is on one machine's disk" in result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "nodes, paths, tracking, shared, refused",
    [
        (1, {"--storage": "/data/runs"}, "sqlite:///mlflow.db", False, None),
        (2, {"--storage": "/data/runs"}, "http://mlflow:5000", True, None),
        (2, {"--storage": "s3://bucket/runs", "--data": "s3://bucket/shards"}, "http://mlflow:5000", False, None),
        (2, {"--storage": "s3://bucket/runs"}, "postgresql://db/mlflow", False, None),
        (2, {"--storage": "/data/runs"}, "http://mlflow:5000", False, "--storage /data/runs is on one machine's"),
        (
            3,
            {"--data": "shards", "--storage": "s3://b/r"},
            "mlruns",
            False,
            "--data shards and MLFLOW_TRACKING_URI mlruns",
        ),
        (2, {"--output": "s3://b/eval"}, "file:///tmp/mlruns", False, "MLFLOW_TRACKING_URI file:///tmp/mlruns is on"),
    ],
)
def test_shared_storage_problem(nodes, paths, tracking, shared, refused):
    problem = shared_storage_problem(nodes, paths, tracking, shared)
    assert (problem is None) if refused is None else (refused in problem and "\n" not in problem), problem
