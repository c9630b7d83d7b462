"""The services a team runs next to the Ray cluster: an MLflow tracking server and, for local work, an S3 server.

    python infra/services.py start --artifacts s3://BUCKET/mlflow            # MLflow on 127.0.0.1:5000
    python infra/services.py start --artifacts s3://discohead/mlflow --s3-server   # + a local S3 on :9000
    python infra/services.py status
    python infra/services.py stop

MLflow keeps runs in a database (``--backend-store-uri``: SQLite in the state folder by default,
or a PostgreSQL/MySQL URI for a team) and **proxies** artifacts to object storage
(``--artifacts-destination s3://...``): clients, Ray workers included, upload through the server
and need no S3 credentials of their own; the server takes them from its environment (the AWS
chain: variables, a profile or an instance role), never from a flag, and nothing here prints them.

``--s3-server`` starts moto's S3-compatible server (``pip install 'moto[server]'``, in the dev
extras) for development without AWS: in memory, gone when stopped. Both bind to 127.0.0.1 unless
``--host`` says otherwise (the cluster must reach MLflow: bind a private address, never a public
one, and see infra/README.md); MLflow on another address needs ``--basic-auth``, and the S3
server never leaves 127.0.0.1, since it has no authentication. Each process is started in its
own session; its pid is written to
``STATE/<name>.pid`` and ``stop`` ends exactly that process group, so other servers on the
machine are never touched.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DEFAULT_STATE = Path.home() / ".discohead" / "services"
NAMES = ("mlflow", "s3")
COMMANDS = {"mlflow": "mlflow", "s3": "moto_server"}
"""The console script each service runs, also how ``stop`` recognises its process before signalling it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE, help=f"pids, logs, SQLite ({DEFAULT_STATE})")
    parser.add_argument("--host", default="127.0.0.1", help="address both servers bind to (default: 127.0.0.1)")
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--mlflow-workers", type=int, default=2, help="MLflow's server processes (default: 2)")
    parser.add_argument(
        "--backend-store-uri", help="MLflow's database (default: sqlite:///STATE/mlflow.db; postgresql://... a team's)"
    )
    parser.add_argument("--artifacts", metavar="s3://BUCKET/PREFIX", help="where MLflow keeps artifacts (for start)")
    parser.add_argument("--allowed-hosts", help="Host headers MLflow accepts when bound to another address")
    parser.add_argument(
        "--basic-auth",
        action="store_true",
        help="MLflow's basic-auth app (users and passwords; needs mlflow[auth] and MLFLOW_FLASK_SERVER_SECRET_KEY); "
        "required with a --host other than 127.0.0.1",
    )
    parser.add_argument("--s3-server", action="store_true", help="also start a local S3-compatible server (moto)")
    parser.add_argument("--s3-port", type=int, default=9000)
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for each server to answer")
    args = parser.parse_args(argv)
    if args.action == "start" and not args.artifacts:
        parser.error("start needs --artifacts s3://BUCKET/PREFIX (where MLflow keeps run artifacts)")
    if args.action == "start" and not is_loopback(args.host):
        # Nothing listens beyond this machine without authentication.
        if args.s3_server:
            parser.error(f"--s3-server has no authentication: it binds 127.0.0.1 only, not {args.host}")
        if not args.basic_auth:
            parser.error(f"--host {args.host} reaches MLflow from other machines: add --basic-auth (users, passwords)")
        if not os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
            parser.error("--basic-auth needs MLFLOW_FLASK_SERVER_SECRET_KEY in the environment (a long random string)")
    return args


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def binary(name: str) -> str:
    """A console script of this interpreter's environment (the project's venv), else one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"services: {name} not found; install the project's dev extras (pip install -e '.[dev]')")
    return found


def running(state: Path, name: str) -> int | None:
    """The pid in ``STATE/NAME.pid`` when that process is alive and is the service we started, else None."""
    pid_file = state / f"{name}.pid"
    try:
        pid = int(pid_file.read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes() if Path("/proc").is_dir() else b""
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    if command and COMMANDS[name].encode() not in command:  # the pid was reused by another program
        return None
    return pid


def wait_for(url: str, process: subprocess.Popen, timeout: float, name: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"services: {name} exited with {process.returncode}; see {log}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.5)
    raise SystemExit(f"services: {name} did not answer at {url} within {timeout:.0f}s; see {log}")


def launch(state: Path, name: str, command: list[str], env: dict[str, str], probe: str, timeout: float) -> None:
    """Start one server in its own session, record its pid, wait until ``probe`` answers."""
    log = state / f"{name}.log"
    with open(log, "ab") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    (state / f"{name}.pid").write_text(str(process.pid))
    try:
        wait_for(probe, process, timeout, name, log)
    except BaseException:
        stop_one(state, name)
        raise


def create_bucket(endpoint: str, bucket: str, env: dict[str, str]) -> None:
    """The artifact bucket on the local S3 server (on AWS the bucket exists before the services start)."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    if bucket not in {item["Name"] for item in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)


def start(args: argparse.Namespace) -> int:
    state = args.state_dir.expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        if pid := running(state, name):
            raise SystemExit(f"services: {name} already runs (pid {pid}); stop it first (infra/services.py stop)")
    for name, port in (("mlflow", args.mlflow_port), ("s3", args.s3_port if args.s3_server else None)):
        with socket.socket() as sock:  # a server already there would answer the probe in our server's place
            if port and sock.connect_ex((args.host, port)) == 0:
                raise SystemExit(f"services: {args.host}:{port} is taken by another program; give {name} another port")
    try:
        return start_services(args, state)
    except BaseException:  # a server that did not come up: stop what this call started
        for name in NAMES:
            stop_one(state, name)
        raise


def start_services(args: argparse.Namespace, state: Path) -> int:
    env = dict(os.environ)
    exports = {}
    if args.s3_server:
        endpoint = f"http://{args.host}:{args.s3_port}"
        moto = [binary("moto_server"), "-H", args.host, "-p", str(args.s3_port)]
        launch(state, "s3", moto, env, endpoint, args.timeout)
        # moto accepts any key pair; keep the caller's if set, so that nothing new needs hiding
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        env["AWS_ENDPOINT_URL"] = endpoint
        create_bucket(endpoint, args.artifacts.removeprefix("s3://").split("/")[0], env)
        exports["AWS_ENDPOINT_URL"] = endpoint
    if endpoint := env.get("AWS_ENDPOINT_URL"):
        env.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint)  # MLflow's own name for a non-AWS S3 endpoint
    # MLflow 3 starts three Huey consumer processes for its GenAI jobs (scorers, prompt optimisation),
    # which DisCoHead does not use; the user can turn them back on by setting the variable.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    backend = args.backend_store_uri or f"sqlite:///{state / 'mlflow.db'}"
    uri = f"http://{args.host}:{args.mlflow_port}"
    command = [
        binary("mlflow"), "server", "--host", args.host, "--port", str(args.mlflow_port),
        "--workers", str(args.mlflow_workers),
        "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", args.artifacts,
    ]  # fmt: skip
    if args.allowed_hosts:
        command += ["--allowed-hosts", args.allowed_hosts]
    if args.basic_auth:  # users log in; change the default admin password at once (infra/README.md)
        command += ["--app-name", "basic-auth"]
    launch(state, "mlflow", command, env, f"{uri}/health", args.timeout)
    exports["MLFLOW_TRACKING_URI"] = uri
    print(f"[services] MLflow {uri} (runs in {backend.split('://')[0]}, artifacts proxied to {args.artifacts})")
    print(f"[services] pids and logs in {state}; stop with: python infra/services.py stop --state-dir {state}")
    for key, value in exports.items():
        print(f"export {key}={value}")
    return 0


def stop_one(state: Path, name: str, grace: float = 20) -> bool:
    """End the process group we started for ``name`` (SIGTERM, then SIGKILL after ``grace`` seconds)."""
    pid = running(state, name)
    (state / f"{name}.pid").unlink(missing_ok=True)
    if pid is None:
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return True
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


def stop(args: argparse.Namespace) -> int:
    state = args.state_dir.expanduser().resolve()
    for name in ("mlflow", "s3"):  # the tracking server first: it may be writing to the S3 server
        print(f"[services] {name}: {'stopped' if stop_one(state, name) else 'not running'}")
    return 0


def status(args: argparse.Namespace) -> int:
    state = args.state_dir.expanduser().resolve()
    found = {name: running(state, name) for name in NAMES}
    for name, pid in found.items():
        print(f"[services] {name}: {f'running (pid {pid})' if pid else 'not running'}")
    return 0 if any(found.values()) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return {"start": start, "stop": stop, "status": status}[args.action](args)


if __name__ == "__main__":
    sys.exit(main())
