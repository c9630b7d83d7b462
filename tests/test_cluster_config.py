"""The cluster templates, checked without a cloud: Ray's own config checks, token auth in every way a node
starts, least-privilege IAM, KubeRay manifests, the image recipe, the lock, and the services script.

No Docker daemon, AWS account or Kubernetes cluster is needed: ray_cluster.yaml goes through the
autoscaler's ``prepare_config`` and ``validate_config`` (what ``ray up`` and the head's autoscaler
run before anything else), the rest is parsed and asserted on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, free_port

INFRA = REPO_ROOT / "infra"
KUBERAY = sorted((INFRA / "kuberay").glob("*.yaml"))
RAY_START = re.compile(r"(?:^|[;&|]\s*)(?P<env>(?:\w+=\S+\s+)*)\S*\bray start\b(?P<args>[^;&|]*)")


@pytest.fixture(scope="module")
def cluster() -> dict:
    """ray_cluster.yaml as the autoscaler sees it: defaults filled in, setup commands merged, then validated."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((REPO_ROOT / "ray_cluster.yaml").read_text()))
    validate_config(config)
    return config


def ray_starts(commands: list[str]) -> list[re.Match]:
    return [match for command in commands for match in RAY_START.finditer(" ".join(command.split()))]


def policy(name: str) -> dict:
    return json.loads((INFRA / "aws" / f"{name}-policy.json").read_text())


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def actions(document: dict) -> set[str]:
    return {action for item in document["Statement"] for action in as_list(item["Action"])}


def test_every_ray_start_of_the_cluster_runs_with_token_auth(cluster):
    head, workers = ray_starts(cluster["head_start_ray_commands"]), ray_starts(cluster["worker_start_ray_commands"])
    assert len(head) == 1 and "--head" in head[0]["args"] and len(workers) == 1 and "--address" in workers[0]["args"]
    for start in head + workers:
        assert "RAY_AUTH_MODE=token" in start["env"].split(), start.group(0)
    # The token exists before the head starts, never leaves it in a log, and reaches each worker before it starts
    setup = cluster["head_setup_commands"]  # setup_commands + head_setup_commands, as prepare_config merges them
    (generate,) = [command for command in setup if "get-auth-token --generate" in command]
    assert "> /dev/null" in generate and "chmod 600 ~/.ray/auth_token" in generate
    assert "~/.ray/auth_token" in cluster["cluster_synced_files"]
    assert not any("auth_token" in source for source in cluster["file_mounts"].values()), "no token from a laptop"
    assert "RAY_AUTH_MODE=token" in " ".join(cluster["setup_commands"]), "ray exec / attach talk to Ray with the token"


def test_the_dashboard_listens_on_localhost_only(cluster):
    (head,) = ray_starts(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head["args"]
    assert "0.0.0.0" not in (REPO_ROOT / "ray_cluster.yaml").read_text()


def test_nodes_get_least_privilege_profiles_and_workers_scale_from_zero(cluster):
    types = cluster["available_node_types"]
    head_type = cluster["head_node_type"]
    profiles = {name: node["node_config"]["IamInstanceProfile"]["Arn"] for name, node in types.items()}
    assert profiles[head_type].endswith("instance-profile/discohead-ray-head")
    assert {arn for name, arn in profiles.items() if name != head_type} == {
        profiles[head_type].replace("discohead-ray-head", "discohead-ray-worker")
    }
    assert types[head_type]["resources"] == {"CPU": 0}
    workers = {name: node for name, node in types.items() if name != head_type}
    assert {node["min_workers"] for node in workers.values()} == {0}
    assert any(node["node_config"]["InstanceType"].startswith(("g", "p")) for node in workers.values()), "a GPU group"
    assert any(node["node_config"]["InstanceType"].startswith(("c", "m")) for node in workers.values()), "a CPU group"
    assert cluster["provider"]["cache_stopped_nodes"] is False


def test_iam_policies_reach_the_bucket_and_this_clusters_instances_only(cluster):
    head, worker = policy("head"), policy("worker")
    trust = json.loads((INFRA / "aws" / "trust-policy.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}

    assert not any("*" in action for action in actions(head) | actions(worker)), "no wildcard actions"
    assert {action.split(":")[0] for action in actions(worker)} == {"s3"}, "workers: the data bucket, nothing else"
    s3 = [item for document in (head, worker) for item in document["Statement"] if "s3:" in str(item["Action"])]
    buckets = {resource.split(":::")[1].split("/")[0] for item in s3 for resource in as_list(item["Resource"])}
    assert len(buckets) == 1, buckets
    cluster_name = cluster["cluster_name"]
    for item in head["Statement"]:
        named = set(as_list(item["Action"]))
        if named & {"ec2:TerminateInstances"}:
            assert item["Condition"]["StringEquals"] == {"ec2:ResourceTag/ray-cluster-name": cluster_name}
        if named == {"iam:PassRole"}:
            assert item["Resource"].endswith(":role/discohead-ray-worker")
        if named == {"ec2:RunInstances"} and item["Resource"] == "arn:aws:ec2:*:*:instance/*":
            assert item["Condition"]["StringEquals"] == {"aws:RequestTag/ray-cluster-name": cluster_name}
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DescribeInstances"} <= actions(head)


def test_nodes_install_the_lock_with_the_uv_it_pins(cluster):
    """What the lock holds and that every install reads it: tests/test_install.py."""
    setup = " ".join(cluster["setup_commands"])
    assert "--require-hashes ~/discohead/infra/requirements.lock" in setup and "--no-deps ~/discohead" in setup
    assert re.search(r"uv==\d+\.\d+\.\d+", setup)


def ray_cluster_specs() -> list[tuple[str, dict]]:
    specs = []
    for path in KUBERAY:
        document = yaml.safe_load(path.read_text())
        spec = document["spec"] if document["kind"] == "RayCluster" else document["spec"]["rayClusterSpec"]
        specs.append((path.name, spec))
    return specs


def test_kuberay_clusters_run_every_ray_container_with_token_auth():
    names = {path.name for path in KUBERAY}
    assert names == {"raycluster.yaml", "rayjob-preprocess.yaml", "rayjob-train.yaml", "rayjob-evaluate.yaml"}
    for name, spec in ray_cluster_specs():
        # KubeRay >= 1.5.1 makes a token Secret and sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN on every Ray container
        assert spec["authOptions"] == {"mode": "token"}, name
        assert tuple(int(part) for part in spec["rayVersion"].split(".")) >= (2, 52), name
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        for group in groups:
            for container in group["template"]["spec"]["containers"]:
                env = {item["name"]: item.get("value") for item in container.get("env", [])}
                assert "RAY_AUTH_MODE" not in env and "RAY_AUTH_TOKEN" not in env, (name, "left to the operator")
                assert not any(key.startswith("AWS_SECRET") or "TOKEN" in key for key in env), name
                assert container["image"] == "registry.example.com/discohead:0.1.0", name
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", name


def test_kuberay_has_a_gpu_group_and_a_job_for_each_stage():
    specs = dict(ray_cluster_specs())

    def gpus(spec: dict) -> int:
        return sum(
            int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
            for group in spec.get("workerGroupSpecs", [])
            for container in group["template"]["spec"]["containers"]
        )

    assert gpus(specs["raycluster.yaml"]) and gpus(specs["rayjob-train.yaml"]) and gpus(specs["rayjob-evaluate.yaml"])
    assert {group["minReplicas"] for group in specs["raycluster.yaml"]["workerGroupSpecs"]} == {0}, "scale from zero"
    for stage in ("preprocess", "train", "evaluate"):
        job = yaml.safe_load((INFRA / "kuberay" / f"rayjob-{stage}.yaml").read_text())
        assert job["kind"] == "RayJob" and job["spec"]["shutdownAfterJobFinishes"] is True
        entrypoint = " ".join(job["spec"]["entrypoint"].split())
        assert entrypoint.startswith(f"python /app/pipelines/{stage}.py ")
        assert "s3://" in entrypoint and not re.search(r"--(storage|output|data) /", entrypoint), "object storage only"


def test_the_image_recipe_pins_its_base_its_python_and_the_lock():
    dockerfile = (INFRA / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    assert re.match(r"FROM nvidia/cuda:\d+\.\d+\.\d+-\S+$", instructions[0])
    assert re.search(r"COPY --from=ghcr.io/astral-sh/uv:\d+\.\d+\.\d+ ", dockerfile)
    assert "uv python install 3.11" in dockerfile and "--require-hashes /tmp/requirements.lock" in dockerfile
    assert "get_ffmpeg_exe()" in dockerfile, "the ffmpeg the jobs call is checked at build time"
    assert "wget" in dockerfile, "KubeRay's probes call wget"
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.M), "Ray runs as an unprivileged user"
    assert not re.search(r"AWS_|SECRET|TOKEN", dockerfile), "no credential in the image"
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "outputs", "mlflow.db"} <= set(ignored)


@pytest.mark.slow
def group_members(group: int) -> list[int]:
    """The live processes of process group ``group`` (a service started in its own session)."""
    members = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == group:
                members.append(int(entry.name))
    return members


def test_services_start_mlflow_with_artifacts_on_a_local_s3_and_stop_both_by_pid(tmp_path):
    """``infra/services.py`` as infra/README.md runs it for local work: MLflow + a local S3, then stop."""
    import boto3
    from mlflow.tracking import MlflowClient

    script = [sys.executable, str(INFRA / "services.py")]
    state = ["--state-dir", str(tmp_path / "state")]
    mlflow_port, s3_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "MLFLOW_"))}
    start = [*script, "start", *state, "--artifacts", "s3://team/mlflow", "--s3-server", "--mlflow-workers", "1"]
    start += ["--mlflow-port", str(mlflow_port), "--s3-port", str(s3_port)]
    started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=240)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}" in started.stdout
        pids = {name: int((tmp_path / "state" / f"{name}.pid").read_text()) for name in ("mlflow", "s3")}
        again = subprocess.run(start, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode != 0 and "already runs" in again.stderr, "a second start is refused"

        client = MlflowClient(f"http://127.0.0.1:{mlflow_port}")
        run = client.create_run(client.create_experiment("services"))
        (tmp_path / "note.txt").write_text("proxied")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))  # through the server: no S3 keys here
        s3 = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{s3_port}", aws_access_key_id="any", aws_secret_access_key="any",
            region_name="us-east-1",
        )  # fmt: skip
        keys = [item["Key"] for item in s3.list_objects_v2(Bucket="team")["Contents"]]
        assert any(key.endswith(f"{run.info.run_id}/artifacts/note.txt") for key in keys), keys
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in group_members(pids["mlflow"])]
        assert commands and not [command for command in commands if b"huey" in command], "MLflow's job runners stay off"
    finally:
        stopped = subprocess.run([*script, "stop", *state], capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0 and stopped.stdout.count("stopped") == 2, stopped.stdout
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert subprocess.run([*script, "status", *state], capture_output=True).returncode == 1


def test_services_listen_beyond_this_machine_only_with_authentication(monkeypatch, capsys):
    """MLflow off 127.0.0.1 needs its basic-auth app and a secret key; the S3 server never leaves 127.0.0.1."""
    sys.path.insert(0, str(INFRA))
    try:
        import services
    finally:
        sys.path.remove(str(INFRA))
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY", raising=False)
    start = ["start", "--artifacts", "s3://bucket/mlflow", "--host", "10.0.0.5"]
    for extra, says in (([], "--basic-auth"), (["--basic-auth"], "MLFLOW_FLASK_SERVER_SECRET_KEY"),
                        (["--basic-auth", "--s3-server"], "127.0.0.1 only")):  # fmt: skip
        with pytest.raises(SystemExit):
            services.parse_args(start + extra)
        assert says in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "a-long-random-string")
    assert services.parse_args([*start, "--basic-auth"]).basic_auth
    assert not services.parse_args(["start", "--artifacts", "s3://bucket/mlflow"]).basic_auth  # 127.0.0.1: as before
