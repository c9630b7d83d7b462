"""Shared fixtures: real services on 127.0.0.1 (a Ray head with token auth, an S3 server)
and media files (synthetic ones made here, real ones from ../shared/data when present).

Services are started by the tests, on free ports, and stopped by the pid of the process
the fixture started. A fixture skips with a reason only when its binary is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

LEARNING_SEED = int(os.environ.get("DISCOHEAD_LEARNING_SEED", "0"))
"""The training seed of the tests marked ``learning``: 0 in the suite; bench/bench_learning_tests.py
runs them for seeds 0, 1, 2 under each kernel set and tabulates the margin each records
(``record_property("margin", value / threshold)``)."""
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def venv_binary(name: str) -> str | None:
    """A console script of the running interpreter's environment, else one on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f}s")


def wait_for_job_agent(binary: str, dashboard: str, env: dict[str, str]) -> None:
    """Until a trivial job is accepted: the dashboard answers before its job agent has registered."""

    def accepts_jobs() -> bool:
        probe = subprocess.run(
            [binary, "job", "submit", "--address", dashboard, "--", "true"], env=env, capture_output=True, timeout=120
        )
        return probe.returncode == 0

    wait_until(accepts_jobs, 180, "ray job agent")


def stop_process_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """Stop a process we started in its own session, and its children, by its pid."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def repo_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses that import ``discohead`` from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real sample clips (../shared/data); tests using it skip on machines without it."""
    if not (SHARED_DATA / "grid").is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (see its README); synthetic tests still run")
    return SHARED_DATA


# --- S3 ----------------------------------------------------------------------------


S3_SECRET = "moto-secret-never-logged"
"""The test server's secret key: distinctive, so tests can assert it never shows up in output."""


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    env: dict[str, str]

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key="testing", secret=S3_SECRET, client_kwargs={"endpoint_url": self.endpoint})

    @property
    def storage_options(self) -> dict:
        return {"key": "testing", "secret": S3_SECRET, "client_kwargs": {"endpoint_url": self.endpoint}}


@contextlib.contextmanager
def http_service(
    name: str, command: list[str], probe_url: str, log_dir: Path, timeout: float = 120, env: dict | None = None
) -> Iterator[subprocess.Popen]:
    """Start a server in its own session, wait until ``probe_url`` answers, stop it by pid."""
    log = open(log_dir / f"{name}.log", "wb")
    env = {**os.environ, **(env or {})}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def up() -> bool:
        try:
            urllib.request.urlopen(probe_url, timeout=2)
            return True
        except OSError:
            return process.poll() is not None

    try:
        wait_until(up, timeout, name)
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; see {log_dir / f'{name}.log'}")
        yield process
    finally:
        stop_process_group(process)
        log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """moto in server mode: a real S3-compatible HTTP endpoint, like s3fs's own tests."""
    binary = venv_binary("moto_server")
    if binary is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with http_service(
        "moto_server",
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        endpoint,
        tmp_path_factory.mktemp("moto"),
        timeout=60,
    ):
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        yield S3Server(endpoint, env)


MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""As infra/services.py starts it: without MLflow 3's job runners (three Huey consumer processes for
its GenAI jobs, which DisCoHead does not use; on a 2-core machine they compete with the tests)."""


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real MLflow tracking server on 127.0.0.1 (SQLite store, proxied artifacts); yields its URI."""
    binary = venv_binary("mlflow")
    if binary is None:
        pytest.skip("the mlflow CLI is not installed")
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        binary, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
    ]  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    with http_service("mlflow_server", command, f"{uri}/health", folder, env=MLFLOW_SERVER_ENV):
        yield uri


# --- Ray ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RayHead:
    dashboard: str
    client_env: dict[str, str]


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory, s3_server: S3Server) -> Iterator[RayHead]:
    """A local Ray head with token authentication on, for ``ray job submit``.

    The token is generated by Ray itself (``ray get-auth-token --generate``) under a
    private HOME, and clients find it through RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH. The
    head carries the S3 test credentials in its environment so they never appear in a
    job's runtime env or logs.
    """
    binary = venv_binary("ray")
    if binary is None:
        pytest.skip("the ray CLI is not installed (pip install 'ray[default]')")
    home = tmp_path_factory.mktemp("ray-home")
    subprocess.run(
        [binary, "get-auth-token", "--generate"], env={**os.environ, "HOME": str(home)}, check=True, capture_output=True
    )
    token_path = home / ".ray" / "auth_token"
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    port, dashboard_port, client_port = free_port(), free_port(), free_port()
    log = open(home / "ray-head.log", "wb")
    # Its own temp folder: `ray start` records its address in <temp>/ray_current_cluster, and with
    # the default /tmp/ray every local Ray started later (the training jobs' tests) would send its
    # state API calls here, and after this head is killed, to a dead address: Ray Train's
    # placement-group cleaner then waits 12 s at the end of each run (40 s timeouts behind it).
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: unix socket paths are limited to ~107 bytes
    command = [
        binary, "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1", "--port", str(port),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
        "--ray-client-server-port", str(client_port), "--num-cpus", "2", "--disable-usage-stats",
        "--temp-dir", temp_dir,
    ]  # fmt: skip
    head_env = repo_env(**auth_env, **s3_server.env)
    head_env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(command, env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    token = None

    def up() -> bool:
        nonlocal token
        if process.poll() is not None:
            return True
        if token is None and token_path.exists():
            token = token_path.read_text().strip()
        request = urllib.request.Request(f"{dashboard}/api/version", headers={"Authorization": f"Bearer {token}"})
        try:
            urllib.request.urlopen(request, timeout=2)
            return True
        except OSError:
            return False

    try:
        wait_until(up, 120, "ray head")
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}; see {home / 'ray-head.log'}")
        client_env = repo_env(**auth_env)
        wait_for_job_agent(binary, dashboard, client_env)
        yield RayHead(dashboard, client_env)
    finally:
        stop_process_group(process, grace=10)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass(frozen=True)
class RayNodes:
    """A Ray cluster of two nodes on this machine, each told apart by its CPUs and a custom resource."""

    dashboard: str
    gcs_address: str
    client_env: dict[str, str]
    node_env: dict[str, str]
    token: str
    nodes: dict[str, dict[str, float]]
    """Per node name (``head``, ``second``): its resources as given to ``ray start``."""


def alive_nodes(dashboard: str, token: str) -> list[dict]:
    """The cluster's alive nodes from the dashboard's state API (the caller holds the token; no ray.init here)."""
    request = urllib.request.Request(
        f"{dashboard}/api/v0/nodes?limit=100&detail=1", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        nodes = json.load(response)["data"]["result"]["result"]
    return [node for node in nodes if node["state"] == "ALIVE"]


@pytest.fixture(scope="module")
def ray_two_nodes(tmp_path_factory, s3_server: S3Server) -> Iterator[RayNodes]:
    """A Ray head and a second node joined to it, both started with token authentication, as on a cluster.

    Both run ``ray start --block`` in their own session (stopped by pid) with the S3 credentials in
    their environment, the virtual environment first on PATH (``python`` in a job is the nodes'
    Python, as on a cluster's image) and their own short temp folder (unix socket paths are
    limited to ~107 bytes). The nodes differ in CPUs and carry a custom resource each
    (``discohead_head``, ``discohead_second``), so a test can tell which node ran what. Scoped to
    the module: two Ray nodes are heavy on a 2-core machine, they go when their tests are done.
    """
    binary = venv_binary("ray")
    if binary is None:
        pytest.skip("the ray CLI is not installed (pip install 'ray[default]')")
    home, log_dir = Path(tempfile.mkdtemp(prefix="rayhome-")), tmp_path_factory.mktemp("ray-two-nodes")
    subprocess.run(
        [binary, "get-auth-token", "--generate"], env={**os.environ, "HOME": str(home)}, check=True, capture_output=True
    )
    token_path = home / ".ray" / "auth_token"
    token = token_path.read_text().strip()
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    node_env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "PYTHONPATH")}
    node_env.update(auth_env, **s3_server.env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    port, dashboard_port = free_port(), free_port()
    nodes = {"head": {"CPU": 3, "discohead_head": 1}, "second": {"CPU": 4, "discohead_second": 1}}
    common = ["--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    commands = {
        "head": [
            binary, "start", "--head", *common, "--port", str(port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
            "--ray-client-server-port", str(free_port()),
        ],
        "second": [binary, "start", *common, "--address", f"127.0.0.1:{port}"],
    }  # fmt: skip
    processes: list[subprocess.Popen] = []
    logs, folders = [], [str(home)]
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        for name, command in commands.items():
            resources = {key: value for key, value in nodes[name].items() if key != "CPU"}
            folders.append(tempfile.mkdtemp(prefix="ray-"))
            command += [
                "--num-cpus", str(nodes[name]["CPU"]), "--resources", json.dumps(resources),
                "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", folders[-1],
            ]  # fmt: skip
            log = open(log_dir / f"ray-{name}.log", "wb")
            logs.append(log)
            processes.append(
                subprocess.Popen(command, env=node_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )

            def joined(count: int = len(processes)) -> bool:
                if any(process.poll() is not None for process in processes):
                    return True
                try:
                    return len(alive_nodes(dashboard, token)) == count
                except (OSError, KeyError, ValueError):
                    return False

            wait_until(joined, 120, f"ray node {name}")
            if processes[-1].poll() is not None:
                raise RuntimeError(f"ray start ({name}) exited with {processes[-1].returncode}; see {logs[-1].name}")
        client_env = repo_env(**auth_env)
        client_env.pop("RAY_ADDRESS", None)
        wait_for_job_agent(binary, dashboard, client_env)
        yield RayNodes(dashboard, f"127.0.0.1:{port}", client_env, node_env, token, nodes)
    finally:
        for process in reversed(processes):  # the second node first, then the head
            stop_process_group(process, grace=10)
        for log in logs:
            log.close()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


# --- media -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def synthetic_media(tmp_path_factory) -> dict[str, Path]:
    """Synthetic clips covering the good and the bad inputs the job must handle."""
    from discohead.data.synthetic import SyntheticClip, write_synthetic_video

    folder = tmp_path_factory.mktemp("media")
    clips = {
        "good_a.mp4": SyntheticClip(seed=1),
        "good_b.mp4": SyntheticClip(seed=2),
        "good_c.mp4": SyntheticClip(seed=3),
        "fps30.mp4": SyntheticClip(fps=30, seed=4),
        "vertical.mp4": SyntheticClip(width=144, height=192, seed=5),
        "two_faces.mp4": SyntheticClip(width=320, faces=2, seed=6),
        "short_audio.mp4": SyntheticClip(seconds=3.2, audio_seconds=2.2, seed=7),
        "no_face.mp4": SyntheticClip(faces=0, seed=8),
        "no_audio.mp4": SyntheticClip(audio="none", seed=9),
        "silent.mp4": SyntheticClip(audio="silent", seed=10),
        "too_short.mp4": SyntheticClip(seconds=1.0, seed=11),
        "audio_only.wav": SyntheticClip(seed=12),
    }
    paths = {name: write_synthetic_video(folder / name, clip) for name, clip in clips.items()}
    (folder / "zero_bytes.mp4").write_bytes(b"")
    (folder / "not_a_video.mp4").write_text("this is a text file with a video extension\n")
    good = paths["good_a.mp4"].read_bytes()
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 2])
    paths.update({name: folder / name for name in ("zero_bytes.mp4", "not_a_video.mp4", "truncated.mp4")})
    return paths


EXPECTED_OUTCOMES = {
    "good_a.mp4": "ok",
    "good_b.mp4": "ok",
    "good_c.mp4": "ok",
    "fps30.mp4": "ok",
    "vertical.mp4": "ok",
    "two_faces.mp4": "ok",
    "short_audio.mp4": "ok",
    "no_face.mp4": "no_face",
    "no_audio.mp4": "no_audio_stream",
    "silent.mp4": "silent_audio",
    "too_short.mp4": "too_short",
    "audio_only.wav": "no_video_stream",
    "zero_bytes.mp4": "empty_file",
    "not_a_video.mp4": "not_a_video",
    "truncated.mp4": "corrupt",
}
"""What the manifest must record for each synthetic input: ``ok`` or the skip reason."""


# --- damaged shards ----------------------------------------------------------------


def rewrite_tar(path, change) -> None:
    """Rewrite the tar at ``path`` with ``change(name, data)``: new bytes, or None to drop the member."""
    import io
    import tarfile

    with tarfile.open(path) as tar:
        members = [(member.name, tar.extractfile(member).read()) for member in tar]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            data = change(name, data)
            if data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


RAY_INTERNALS = re.compile(
    r"\(raylet\)|pid=\d+|\[repeated \d+x|core_worker\.cc|Downloading artifacts|DeprecationWarning|UserWarning"
    r"|WARNING \S+\.py:\d+ --|INFO \S+\.py:\d+ --|INFO mlflow"
)
"""What Ray and MLflow print of their own; a quiet job's output has none of it."""


def assert_quiet(output: str) -> None:
    """No line of Ray's or MLflow's own, and no tagged line twice (shared by the job tests)."""
    internal = [line for line in output.splitlines() if RAY_INTERNALS.search(line)]
    assert not internal, "\n".join(internal[:10])
    tagged = [line for line in output.splitlines() if re.match(r"\[(preprocess|train|evaluate|generate)\b", line)]
    twice = sorted({line for line in tagged if tagged.count(line) > 1})
    assert not twice, twice
