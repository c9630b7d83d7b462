"""Training objective (paper §3.2): ``L = L1 + lambda * L_perceptual``.

The perceptual term compares VGG-19 ImageNet features (after Johnson et al.), at the
first ReLU of each of its five stages, as FOMM and TPSMM do. ``lambda`` is not given in
the paper; the default of 1 weighs both terms about equally at the start of training.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .pretrained import WeightFile

VGG19_WEIGHTS_ENV = "DISCOHEAD_VGG19_WEIGHTS"
VGG19 = WeightFile(
    "vgg19-dcbb9e9d.pth",
    "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    VGG19_WEIGHTS_ENV,
    description="VGG-19 (perceptual loss)",
)
"""torchvision's ImageNet VGG-19 (``VGG19_Weights.IMAGENET1K_V1``): found, hash-checked against the
prefix in its name and loaded tensors-only like every other weights file (``discohead.pretrained``)."""
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_VGG19_STAGE_ENDS = (2, 7, 12, 21, 30)
"""End indices (exclusive) of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in ``vgg19().features``."""


class VGG19Features(nn.Module):
    """Frozen VGG-19 returning the activations the perceptual loss compares."""

    def __init__(self, weights_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        import torchvision  # here, not at the top: about 1.5 s of imports that only the VGG loss needs

        vgg = torchvision.models.vgg19(weights=None)
        vgg.load_state_dict(VGG19.load(weights_path))
        layers = vgg.features[: _VGG19_STAGE_ENDS[-1]]
        starts = (0,) + _VGG19_STAGE_ENDS[:-1]
        self.stages = nn.ModuleList(layers[start:end] for start, end in zip(starts, _VGG19_STAGE_ENDS))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        return super().train(False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features = []
        hidden = (image - self.mean) / self.std
        for stage in self.stages:
            hidden = stage(hidden)
            features.append(hidden)
        return features


class PerceptualLoss(nn.Module):
    def __init__(self, weights_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.vgg = VGG19Features(weights_path)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        predicted = self.vgg(prediction)
        with torch.no_grad():
            wanted = self.vgg(target)
        return sum(F.l1_loss(p, w) for p, w in zip(predicted, wanted))


class DisCoHeadLoss(nn.Module):
    """``L1 + perceptual_weight * perceptual``; with weight 0 no VGG weights are needed."""

    def __init__(self, perceptual_weight: float = 1.0, vgg_weights_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        if perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, not {perceptual_weight}")
        self.perceptual_weight = perceptual_weight
        self.perceptual = PerceptualLoss(vgg_weights_path) if perceptual_weight > 0 else None

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"total", "l1", "perceptual"}`` (``perceptual`` only when its weight is > 0)."""
        terms = {"l1": F.l1_loss(prediction, target)}
        total = terms["l1"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(prediction.float(), target.float())
            total = total + self.perceptual_weight * terms["perceptual"]
        terms["total"] = total
        return terms
