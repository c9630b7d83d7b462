"""Motion-aware encoder (paper Eq. 6-10): features of the source in the driver's pose.

``F, C, M = Enc(S, S_T)``. With dense motion the features are warped by
``O_P = (1 - M) o O_I + M o O_T``, a per-pixel choice between the identity flow and
the head motion; with neural mix they are not warped and the encoder must move the
content itself from ``S_T``. Either way the output is ``E = C o F_A``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import geometry
from .blocks import DownBlock, conv_bn_relu
from .config import DisCoHeadConfig


@dataclass
class EncoderOutput:
    features: torch.Tensor
    """``E = C o F_A``: (B, feature_channels, H / 2^depth, W / 2^depth)."""
    confidence: torch.Tensor
    motion_mask: torch.Tensor | None = None
    flow: torch.Tensor | None = None
    """``O_P``: (B, h, w, 2) sampling grid used to warp the features (dense motion)."""


class MotionAwareEncoder(nn.Module):
    def __init__(self, config: DisCoHeadConfig) -> None:
        super().__init__()
        channels = [config.encoder_channels * 2**i for i in range(config.encoder_depth)] + [config.feature_channels]
        self.stem = conv_bn_relu(6, channels[0], kernel_size=7)
        self.down = nn.Sequential(*(DownBlock(i, o) for i, o in zip(channels[:-1], channels[1:])))
        width = config.feature_channels
        self.feature = nn.Conv2d(width, width, kernel_size=1)
        self.confidence = nn.Conv2d(width, 1, kernel_size=1)
        self.motion_mask = nn.Conv2d(width, 1, kernel_size=1) if config.dense_motion else None

    def forward(
        self, source: torch.Tensor, transformed_source: torch.Tensor, motion_grid: torch.Tensor | None
    ) -> EncoderOutput:
        """``motion_grid`` is ``O_T`` at the feature resolution (needed for dense motion)."""
        hidden = self.down(self.stem(torch.cat([source, transformed_source], dim=1)))
        features = self.feature(hidden)
        confidence = torch.sigmoid(self.confidence(hidden))
        if self.motion_mask is None:
            return EncoderOutput(confidence * features, confidence)
        if motion_grid is None:
            raise ValueError("dense motion needs the motion grid O_T")
        mask = torch.sigmoid(self.motion_mask(hidden))
        batch, _, height, width = features.shape
        identity = geometry.identity_grid(batch, height, width, device=features.device, dtype=motion_grid.dtype)
        mask_last = mask.permute(0, 2, 3, 1).to(motion_grid.dtype)
        flow = (1 - mask_last) * identity + mask_last * motion_grid
        warped = geometry.warp(features, flow)
        return EncoderOutput(confidence * warped, confidence, mask, flow)
