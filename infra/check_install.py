"""Load every compiled dependency once, right after an install, and say in one line which one fails.

    .venv/bin/python infra/check_install.py infra/requirements.lock      # ./run does this after installing

Why: a wheel whose binary does not match its neighbours installs without complaint and fails
only at the first import, deep inside a job (torchaudio 2.11.1 beside torch 2.11.0:
``undefined symbol: torch_exception_get_what_without_backtrace``). Checked here: each package
imports, its version is the one the lock pins, its Python files were compiled at install, and
the ffmpeg binary the jobs call runs.

Why the bytecode: pip writes ``.pyc`` files at install, uv only with ``--compile-bytecode``. Where
PYTHONDONTWRITEBYTECODE is set (CI's machines set it) none is ever written later, so every Ray
worker compiles torch, ray and mlflow from source when it starts: seconds of CPU each, dozens of
workers a training run (the four-variant training test: 462 s without them, 171 s with).
Exit 0 when all hold; otherwise one line per failure on stderr and exit 1.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

COMPILED = {
    # import name: distribution name
    "torch": "torch",
    "torchaudio": "torchaudio",
    "torchvision": "torchvision",
    "dlib": "dlib-bin",
    "cv2": "opencv-python",
    "ray": "ray",
    "pyarrow": "pyarrow",
}
REBUILD = "rebuild the environment from the lock: rm -rf .venv && ./run setup"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: Path) -> list[Requirement]:
    """The lock's requirements (``name==version ; marker``), hashes and comments left out."""
    text = re.sub(r"\\\n", " ", lock.read_text())  # a requirement and its hashes are one logical line
    lines = (line.split(" --hash")[0].strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]


def pinned_versions(lock: Path) -> dict[str, set[str]]:
    """Distribution -> the versions the lock pins (a universal lock may pin several, one per marker)."""
    pins: dict[str, set[str]] = {}
    for requirement in locked(lock):
        (pin,) = requirement.specifier
        pins.setdefault(canonical(requirement.name), set()).add(pin.version)
    return pins


def has_bytecode(module: str) -> bool:
    """Whether ``module``'s own Python file has its ``.pyc`` (an extension module counts as compiled)."""
    spec = importlib.util.find_spec(module)
    origin = spec.origin if spec else None
    if not origin or not origin.endswith(".py"):
        return True
    return Path(importlib.util.cache_from_source(origin)).exists()


def check(lock: Path) -> list[str]:
    pins = pinned_versions(lock)
    failures = []
    for module, distribution in COMPILED.items():
        try:
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            failures.append(f"{distribution} is not installed: {REBUILD}")
            continue
        wanted = pins.get(canonical(distribution), set())
        if version not in wanted:
            pinned = " or ".join(sorted(wanted)) or "nothing"
            failures.append(f"{distribution} {version} is installed but {lock} pins {pinned}: {REBUILD}")
            continue
        compiled = has_bytecode(module)  # before the import, which may write it
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - any import failure is reported the same way
            cause = f" ({error.__cause__})" if error.__cause__ else ""
            reason = " ".join(f"{error}{cause}".split())[:400]
            failures.append(
                f"{distribution} {version} does not load ({type(error).__name__}: {reason}); "
                f"its binary does not match this machine or the torch beside it: {REBUILD}; if it fails again, "
                f"pin a working {distribution} in pyproject.toml and run ./run lock"
            )
            continue
        if not compiled:
            failures.append(
                f"{distribution} was installed without compiled bytecode (.pyc): each Ray worker would compile it "
                f"at start; install with `uv pip sync --compile-bytecode`, as ./run does: {REBUILD}"
            )
    try:
        import imageio_ffmpeg

        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], check=True, capture_output=True, timeout=60)
    except Exception as error:  # noqa: BLE001
        failures.append(f"ffmpeg (imageio-ffmpeg) does not run ({type(error).__name__}: {error}): {REBUILD}")
    return failures


def main(argv: list[str]) -> int:
    lock = Path(argv[0] if argv else Path(__file__).with_name("requirements.lock"))
    failures = check(lock)
    for failure in failures:
        print(f"[setup] {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
