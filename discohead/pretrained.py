"""Loading pretrained networks the standard way, verified, and saying clearly when one is missing.

A weights file is looked for at an explicit path, an environment variable, then torch hub's
cache (``$TORCH_HOME/hub/checkpoints``, where torchvision downloads them); a download into
that cache is tried last. Whichever copy is used must match the published file's sha256 (the
prefix in its published name, torch hub's convention, or a pinned digest where the name
carries none), and it is loaded with ``weights_only=True``: plain tensors, never a pickle
that could run code. On a machine without internet a missing file raises
:class:`PretrainedWeightsUnavailable` naming the file to provide. Random weights are never
substituted: a metric or loss built on them would be meaningless.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DOWNLOAD_TIMEOUT_S = 20
"""Seconds a weights download may stall before the file is reported unavailable."""


class PretrainedWeightsUnavailable(RuntimeError):
    """A pretrained network's weight file could not be found or downloaded, or is not the published one."""


@dataclass(frozen=True)
class WeightFile:
    """A published weights file: its name (ending in its sha256 prefix), where to get it, how to point at it."""

    name: str
    url: str
    env_var: str
    sha256: str = ""
    """The whole digest, for a file whose name carries no hash prefix (SyncNet's)."""
    description: str = ""
    """What the weights are for, at the start of the message when they are unavailable."""

    @property
    def sha256_prefix(self) -> str:
        return self.sha256 or Path(self.name).stem.rsplit("-", 1)[-1]

    @property
    def cached(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.name

    def unavailable(self, why: str = "") -> PretrainedWeightsUnavailable:
        where = f"{self.cached} (or set {self.env_var}=/path/to/{self.name})"
        what = f"{self.description} weights " if self.description else ""
        return PretrainedWeightsUnavailable(
            f"{what}unavailable: provide {self.name} (sha256 {self.sha256_prefix[:8]}…) at {where}{why}"
        )

    def locate(self, explicit: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
        """The verified file: explicit path, environment variable, hub cache, else a download (hash-checked)."""
        for candidate in (explicit, os.environ.get(self.env_var), self.cached):
            if candidate and Path(candidate).is_file():
                return self.verified(Path(candidate))
        if explicit:
            raise self.unavailable(f"; {explicit} does not exist")
        if download:
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # an offline machine may drop packets rather than refuse
            try:
                self.cached.parent.mkdir(parents=True, exist_ok=True)
                # torch hub checks the hash prefix before it moves the download into place.
                torch.hub.download_url_to_file(self.url, str(self.cached), self.sha256_prefix, progress=False)
                return self.cached
            except (OSError, RuntimeError):  # no network, or the download did not match its hash
                pass
            finally:
                socket.setdefaulttimeout(previous)
        raise self.unavailable()

    def verified(self, path: Path) -> Path:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if not digest.hexdigest().startswith(self.sha256_prefix):
            raise self.unavailable(f"; {path} has sha256 {digest.hexdigest()[:8]}…, not the published file")
        return path

    def load(self, explicit: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The verified file's state dict, tensors only."""
        return torch.load(self.locate(explicit), map_location="cpu", weights_only=True)
