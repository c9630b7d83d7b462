"""Head-motion predictor: the head pose of the driver relative to the source.

Run with shared weights on the source ``S`` and the head driver ``D``; the result is
the transformation that takes driver coordinates to source coordinates, used to warp
``S`` into ``S_T`` and, for dense motion, the encoder's features.

- Affine (paper Eq. 1-3, after MRAA): an hourglass turns the anti-aliased 1/4 frame
  into one heatmap; its mean and principal axes give ``A_{X<-R}``, and
  ``A_{S<-D} = A_{S<-R} A_{D<-R}^-1``.
- TPS (paper Eq. 4-5, after TPSMM): a ResNet-18 regresses N keypoints per frame; the
  thin-plate spline through the driver/source keypoint pairs is the motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import geometry
from .blocks import DownBlock, UpBlock, downsample
from .config import DisCoHeadConfig


@dataclass
class AffineMotion:
    """``A_{S<-D}`` plus the per-frame transforms it came from."""

    relative: torch.Tensor
    source_affine: torch.Tensor
    driver_affine: torch.Tensor
    heatmaps: torch.Tensor

    def sampling_grid(self, height: int, width: int) -> torch.Tensor:
        return geometry.affine_sampling_grid(self.relative, height, width)


@dataclass
class TPSMotion:
    """The thin-plate spline from driver keypoints to source keypoints."""

    affine: torch.Tensor
    weights: torch.Tensor
    source_keypoints: torch.Tensor
    driver_keypoints: torch.Tensor

    def sampling_grid(self, height: int, width: int) -> torch.Tensor:
        return geometry.tps_sampling_grid(self.affine, self.weights, self.driver_keypoints, height, width)


class Hourglass(nn.Module):
    """U-Net-shaped encoder/decoder with skip concatenation (FOMM/MRAA's hourglass)."""

    def __init__(self, in_channels: int, channels: int, max_channels: int, depth: int) -> None:
        super().__init__()
        widths = [min(max_channels, channels * 2 ** (i + 1)) for i in range(depth)]
        inputs = [in_channels] + widths[:-1]
        self.down = nn.ModuleList(DownBlock(i, o) for i, o in zip(inputs, widths))
        ups = []
        for level in reversed(range(depth)):
            up_in = widths[level] * (1 if level == depth - 1 else 2)
            up_out = min(max_channels, channels * 2**level)
            ups.append(UpBlock(up_in, up_out, mode="nearest"))
        self.up = nn.ModuleList(ups)
        self.out_channels = channels + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for block in self.down:
            skips.append(block(skips[-1]))
        out = skips.pop()
        for block in self.up:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return out


class AffineHeadMotion(nn.Module):
    def __init__(self, config: DisCoHeadConfig) -> None:
        super().__init__()
        self.input_scale = config.motion_input_scale
        self.temperature = config.heatmap_temperature
        self.scale = config.affine_scale
        input_size = int(config.image_size * config.motion_input_scale)
        # Each level halves the map; stop while it is at least 2 pixels (5 at 256 px).
        depth = min(config.hourglass_depth, int(math.log2(input_size)) - 1)
        self.hourglass = Hourglass(3, config.hourglass_channels, config.hourglass_max_channels, depth)
        self.heatmap = nn.Conv2d(self.hourglass.out_channels, 1, kernel_size=7, padding=3)

    def heatmaps(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` spatial-softmax heatmap of each frame."""
        logits = self.heatmap(self.hourglass(downsample(frames, self.input_scale)))[:, 0]
        flat = (logits.flatten(1).float() / self.temperature).softmax(dim=1)
        return flat.view_as(logits)

    def forward(self, source: torch.Tensor, driver: torch.Tensor) -> AffineMotion:
        heatmaps = self.heatmaps(torch.cat([source, driver]))
        with torch.autocast(device_type=source.device.type, enabled=False):
            affines = geometry.affine_from_heatmap(heatmaps.float(), scale=self.scale)
            source_affine, driver_affine = affines.chunk(2)
            relative = geometry.relative_affine(source_affine, driver_affine)
        return AffineMotion(relative, source_affine, driver_affine, heatmaps)


class TPSHeadMotion(nn.Module):
    def __init__(self, config: DisCoHeadConfig) -> None:
        super().__init__()
        self.input_scale = config.tps_input_scale
        self.count = config.tps_keypoints
        self.regularization = config.tps_regularization
        import torchvision  # here: ~1.4 s of imports that a Ray process unpickling discohead.training needs not pay

        self.backbone = torchvision.models.resnet18(weights=None, num_classes=2 * self.count)
        # Start from keypoints spread over the face: a degenerate layout (all points on
        # one line) makes the TPS system singular.
        with torch.no_grad():
            self.backbone.fc.weight.mul_(0.01)
            self.backbone.fc.bias.copy_(torch.atanh(0.5 * _spread_points(self.count)).flatten())

    def keypoints(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, N, 2)`` keypoints in [-1, 1]."""
        return torch.tanh(self.backbone(downsample(frames, self.input_scale))).view(-1, self.count, 2)

    def forward(self, source: torch.Tensor, driver: torch.Tensor) -> TPSMotion:
        source_keypoints, driver_keypoints = self.keypoints(torch.cat([source, driver])).float().chunk(2)
        affine, weights = geometry.solve_tps(driver_keypoints, source_keypoints, self.regularization)
        return TPSMotion(affine, weights, source_keypoints, driver_keypoints)


def _spread_points(count: int) -> torch.Tensor:
    """``count`` points on a sunflower spiral in the unit disc: never collinear for count >= 3."""
    index = torch.arange(count, dtype=torch.float32) + 0.5
    radius = torch.sqrt(index / count)
    angle = index * math.pi * (3 - math.sqrt(5))
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)


def HeadMotionPredictor(config: DisCoHeadConfig) -> nn.Module:
    """The head-motion predictor of ``config.motion``."""
    return AffineHeadMotion(config) if config.motion == "affine" else TPSHeadMotion(config)
