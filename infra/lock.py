"""Write infra/requirements.lock: the exact versions of DisCoHead's runtime dependencies in this environment.

    .venv/bin/python infra/lock.py            # after ./run setup, on the tested environment

pyproject.toml states ranges (what the code supports); the cluster image and the cluster nodes
install this lock instead, so that every node runs the versions the test suite passed with.
The lock is the closure of pyproject.toml's dependencies (extras followed, the ``dev`` extra left
out) as installed here, plus boto3 for the autoscaler: test tools never reach the cluster. A
dependency of pyproject.toml that is not installed stops it: run ``./run setup`` first.
"""

from __future__ import annotations

import platform
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

LOCK = Path(__file__).resolve().parent / "requirements.lock"
PYPROJECT = LOCK.parents[1] / "pyproject.toml"
CLUSTER_EXTRAS = ("boto3",)
"""Not DisCoHead's but the cluster's: the Ray autoscaler's AWS provider (on the head) and MLflow's S3 artifact store."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str]) -> dict[str, str]:
    """Installed name -> version of everything ``requirements`` need, themselves included."""
    found: dict[str, str] = {}
    pending: list[tuple[frozenset[str], list[str]]] = [(frozenset(), requirements)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        wanted, texts = pending.pop()
        for text in texts:
            requirement = Requirement(text)
            active = [""] + sorted(wanted)
            if requirement.marker and not any(
                requirement.marker.evaluate({**default_environment(), "extra": extra}) for extra in active
            ):
                continue
            key = (canonical(requirement.name), frozenset(requirement.extras))
            if key in seen:
                continue
            seen.add(key)
            try:
                distribution = metadata.distribution(requirement.name)
            except metadata.PackageNotFoundError:
                raise SystemExit(f"[lock] {requirement.name} is not installed here: run ./run setup first") from None
            found[distribution.metadata["Name"]] = distribution.version
            pending.append((key[1], distribution.requires or []))
    return found


def main() -> int:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = closure([*declared, *CLUSTER_EXTRAS])
    header = (
        f"# Written by infra/lock.py from the tested environment (Python {sys.version.split()[0]}, {sys.platform}, "
        f"{platform.machine()}): do not edit.\n"
        "# The cluster image (infra/Dockerfile) and the nodes of ray_cluster.yaml install exactly these.\n"
    )
    ordered = sorted(pins.items(), key=lambda item: canonical(item[0]))
    body = "".join(f"{name}=={version}\n" for name, version in ordered)
    LOCK.write_text(header + body)
    print(f"[lock] {len(pins)} packages pinned in {LOCK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
