"""Loading pretrained networks the standard way, and saying clearly when one is missing.

Weights come, in order, from an explicit path, an environment variable, or torch hub's
cache (``$TORCH_HOME/hub/checkpoints``, where torchvision downloads them); a download is
tried last. On a machine without internet a missing file raises
:class:`PretrainedWeightsUnavailable` naming the file to provide. Random weights are
never substituted: a metric or loss built on them would be meaningless.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torchvision.models import WeightsEnum


class PretrainedWeightsUnavailable(RuntimeError):
    """A pretrained network's weight file could not be found or downloaded."""


def hub_checkpoint_path(url: str) -> Path:
    """Where torch hub caches the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def load_state_dict(
    description: str,
    url: str,
    env_var: str,
    explicit_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """State dict of ``description`` from an explicit path, ``env_var``, the hub cache, or ``url``."""
    cached = hub_checkpoint_path(url)
    candidates = [explicit_path, os.environ.get(env_var), cached]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return torch.load(candidate, map_location="cpu", weights_only=True)
    if explicit_path:
        raise PretrainedWeightsUnavailable(f"{description} weights not found at {explicit_path}")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False)
    except OSError as error:  # URLError and socket errors are OSErrors.
        raise PretrainedWeightsUnavailable(
            f"{description} weights are unavailable (download failed: {error}). "
            f"Provide {cached.name}: put it in {cached.parent} or set {env_var}=/path/to/{cached.name}"
        ) from None


def load_torchvision_weights(
    weights: WeightsEnum, env_var: str, explicit_path: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """:func:`load_state_dict` for a torchvision weights enum (e.g. ``VGG19_Weights.IMAGENET1K_V1``)."""
    name = f"torchvision {type(weights).__name__.removesuffix('_Weights')} {weights.name}"
    return load_state_dict(name, weights.url, env_var, explicit_path)
