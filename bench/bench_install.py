"""Install time from an empty .venv: pyproject's ranges with pip (how ./run installed before the lock)
against the lock with uv (./run setup now), each from an empty cache, then the lock again with uv's
cache warm (a second clone on the same machine, as CI on a developer's machine).

    .venv/bin/python bench/bench_install.py              # about 5 minutes; needs the package registry
    .venv/bin/python bench/bench_install.py --lock-only  # the two uv rows only (about 2 minutes)

Each install runs in its own copy of this checkout's tracked files, so the .venv here is untouched.
Download time dominates (torch and its CUDA libraries are about 3 GB), so the numbers hold for this
machine's network; the ratio is what carries over.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import append_report, markdown_table

REPO = Path(__file__).resolve().parents[1]


def checkout(into: Path) -> Path:
    """This checkout's tracked and untracked-but-not-ignored files, without .venv or outputs."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / os.fsdecode(name)
        if source.is_file():
            target = into / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"[bench] {' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return time.perf_counter() - started


def venv_size_gib(root: Path) -> float:
    return sum(path.stat().st_size for path in (root / ".venv").rglob("*") if path.is_file()) / 2**30


def pip_row(scratch: Path, env: dict[str, str]) -> list[str]:
    """How ./run installed before the lock: pip resolving pyproject's ranges, from an empty cache."""
    ranges = checkout(scratch / "ranges")
    pip = [
        f"{sys.executable} -m venv .venv",
        ".venv/bin/python -m pip install --quiet --upgrade pip",
        ".venv/bin/python -m pip install --quiet --progress-bar off -e '.[dev,cluster]'",
    ]
    seconds = timed(["bash", "-c", " && ".join(pip)], ranges, {**env, "PIP_NO_CACHE_DIR": "1"})
    row = ["before: pyproject ranges, pip", "empty", f"{seconds:.0f}", f"{venv_size_gib(ranges):.1f}"]
    shutil.rmtree(ranges)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock-only", action="store_true", help="skip the pip row (the old way, measured once)")
    args = parser.parse_args()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "UV_"))}
    rows = []
    with tempfile.TemporaryDirectory(prefix="discohead-install-") as scratch:
        scratch = Path(scratch)
        rows += [] if args.lock_only else [pip_row(scratch, env)]

        cache = {**env, "UV_CACHE_DIR": str(scratch / "uv-cache"), "PYTHON": sys.executable}
        for label, state in (("after: the lock, uv (./run setup)", "empty"), ("after, a second clone", "warm")):
            locked = checkout(scratch / f"lock-{state}")
            seconds = timed(["./run", "setup"], locked, cache)
            rows.append([label, state, f"{seconds:.0f}", f"{venv_size_gib(locked):.1f}"])
            shutil.rmtree(locked)
    table = markdown_table(["install into an empty .venv", "package cache", "seconds", ".venv GiB"], rows)
    note = "./run setup includes compiling every installed module to bytecode (`--compile-bytecode`) and the check."
    if not args.lock_only:
        ratio = float(rows[0][2]) / float(rows[1][2])
        note += f" The lock installs {ratio:.1f}x faster than the ranges did, both from an empty cache."
    print(table + "\n" + note)
    append_report("Install time from an empty .venv (bench/bench_install.py)", table + "\n\n" + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
