"""Convolution blocks shared by the three parts of the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DownBlock(nn.Sequential):
    """conv3x3 + BN + ReLU, then 2x average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(*conv_bn_relu(in_channels, out_channels), nn.AvgPool2d(2))


class UpBlock(nn.Module):
    """2x upsampling, then conv3x3 + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, mode: str = "bilinear") -> None:
        super().__init__()
        self.mode = mode
        self.conv = conv_bn_relu(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        align = False if self.mode == "bilinear" else None
        return self.conv(F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=align))


def downsample(image: torch.Tensor, scale: float) -> torch.Tensor:
    """Anti-aliased resize by ``scale`` (the release blurs with a Gaussian, then subsamples)."""
    if scale == 1.0:
        return image
    return F.interpolate(image, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
