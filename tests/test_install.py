"""The install: one lock (infra/requirements.lock) read everywhere, within pyproject's ranges, and the
post-install check that names a package whose binary does not load (infra/check_install.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import yaml
from packaging.requirements import Requirement

from conftest import REPO_ROOT

INFRA = REPO_ROOT / "infra"
LOCK = INFRA / "requirements.lock"
sys.path.insert(0, str(INFRA))
import check_install  # noqa: E402 - infra/ is scripts, not a package

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def declared() -> list[Requirement]:
    """pyproject's dependencies and every extra's: what the lock must cover."""
    project = PYPROJECT["project"]
    texts = [*project["dependencies"], *(t for extra in project["optional-dependencies"].values() for t in extra)]
    return [Requirement(text) for text in texts]


def test_the_lock_pins_every_declared_dependency_within_its_range_with_hashes():
    pins = check_install.pinned_versions(LOCK)
    for requirement in declared():
        versions = pins.get(check_install.canonical(requirement.name))
        assert versions, f"{requirement} is not in {LOCK.name}: run ./run lock"
        outside = [v for v in versions if not requirement.specifier.contains(v, prereleases=True)]
        assert not outside, f"{LOCK.name} pins {requirement.name} {outside}, outside {requirement}: run ./run lock"
    text = LOCK.read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])  # one entry per pinned distribution
    assert len(entries) == len(check_install.locked(LOCK)) > 150
    unhashed = [entry.split()[0] for entry in entries if "--hash=sha256:" not in entry]
    assert not unhashed, f"pinned without a hash: {unhashed}"
    assert "#    ./run lock" in text.splitlines()[1], "the lock says which command writes it"


def test_the_lock_is_universal_and_keeps_torch_and_its_companions_in_step():
    """One file for Linux, macOS and every Python >= 3.11; torchaudio at the build that loads beside torch 2.11."""
    pins = check_install.pinned_versions(LOCK)
    assert pins["torch"] == {"2.11.0"} and pins["torchaudio"] == {"2.11.0"} and pins["torchvision"] == {"0.26.0"}
    markers = {str(requirement.marker) for requirement in check_install.locked(LOCK) if requirement.marker}
    assert any('sys_platform == "linux"' in marker for marker in markers), "CUDA wheels only where they exist"
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def lock_uv_version() -> str:
    (version,) = check_install.pinned_versions(LOCK)["uv"]
    return version


def test_every_install_reads_the_one_lock_with_the_uv_it_pins():
    run = (REPO_ROOT / "run").read_text()
    assert (
        "LOCK=infra/requirements.lock" in run
        and 'pip sync --quiet --python "$VENV/bin/python" --require-hashes --compile-bytecode "$LOCK"' in run
    )
    assert "--require-hashes" in run and "pip install --quiet" not in run.split("ensure_uv()")[0]
    assert "uv pip compile pyproject.toml --all-extras --universal" in run.replace('"$VENV/bin/uv"', "uv")
    assert "\n./run test -q\n" in (REPO_ROOT / ".ci" / "run").read_text(), "CI runs ./run"

    dockerfile = (INFRA / "Dockerfile").read_text()
    assert "COPY infra/requirements.lock /tmp/requirements.lock" in dockerfile
    sync = "uv pip sync --python /opt/discohead/bin/python --compile-bytecode --require-hashes /tmp/requirements.lock"
    assert sync in dockerfile
    assert f"ghcr.io/astral-sh/uv:{lock_uv_version()} " in dockerfile
    assert "python infra/check_install.py /tmp/requirements.lock" in dockerfile

    setup = " ".join(yaml.safe_load((REPO_ROOT / "ray_cluster.yaml").read_text())["setup_commands"])
    assert "--compile-bytecode --require-hashes ~/discohead/infra/requirements.lock" in setup
    assert "--no-deps ~/discohead" in setup
    assert f"'uv=={lock_uv_version()}'" in setup
    assert "check_install.py ~/discohead/infra/requirements.lock" in setup

    for manifest in sorted((INFRA / "kuberay").glob("*.yaml")):  # their pods run the image of infra/Dockerfile
        images = re.findall(r"image: (\S+)", manifest.read_text())
        assert images and set(images) == {"registry.example.com/discohead:0.1.0"}, manifest.name
    assert "docker build -f infra/Dockerfile -t REGISTRY/discohead:0.1.0" in (INFRA / "README.md").read_text()

    readme = (REPO_ROOT / "README.md").read_text()
    assert '{"pip": "infra/requirements.lock"}' in readme, "the runtime-env example installs the same lock"
    stale = [path for path in [*REPO_ROOT.glob("*.txt"), *INFRA.glob("*.txt"), REPO_ROOT / "uv.lock"] if path.exists()]
    assert not stale, f"a second requirements file: {stale}"


def test_check_install_passes_here_and_names_a_package_that_differs_from_the_lock(tmp_path):
    assert check_install.check(LOCK) == []
    wrong = tmp_path / "requirements.lock"
    wrong.write_text(re.sub(r"^torchvision==\S+", "torchvision==0.1.0", LOCK.read_text(), flags=re.M))
    result = subprocess.run(
        [sys.executable, str(INFRA / "check_install.py"), str(wrong)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("[setup] torchvision ") and "pins 0.1.0" in line and "rm -rf .venv && ./run setup" in line


def test_check_install_reports_an_import_failure_in_one_line(tmp_path, monkeypatch):
    """A package whose binary does not load (a stand-in module that raises as torchaudio 2.11.1 did)."""
    (tmp_path / "pyarrow").mkdir()
    (tmp_path / "pyarrow" / "__init__.py").write_text(
        "raise OSError('Could not load this library: libarrow.so: undefined symbol: torch_exception_get_what')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pyarrow", raising=False)
    failures = check_install.check(LOCK)
    assert len(failures) == 1 and failures[0].startswith("pyarrow ") and "does not load (OSError:" in failures[0]
    assert "undefined symbol" in failures[0] and "\n" not in failures[0]


def test_check_install_names_a_package_installed_without_bytecode(tmp_path, monkeypatch):
    """uv writes no .pyc unless told to; with PYTHONDONTWRITEBYTECODE none comes later (a stand-in cv2)."""
    (tmp_path / "cv2").mkdir()
    (tmp_path / "cv2" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cv2", raising=False)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    failures = check_install.check(LOCK)
    assert len(failures) == 1 and failures[0].startswith("opencv-python was installed without compiled bytecode")
    assert "uv pip sync --compile-bytecode" in failures[0] and "\n" not in failures[0]


def test_run_names_the_python_to_use_in_one_line():
    python = "python-that-does-not-exist"
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "run"), "setup"], env={"PATH": "/usr/bin:/bin", "PYTHON": python},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert "Python 3.11 or 3.12" in result.stderr and python in result.stderr
