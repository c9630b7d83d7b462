"""Reconstruction metrics of the paper's Table 1 that need no pretrained network.

PSNR and SSIM come from torchmetrics (SSIM: 11x11 Gaussian window, sigma 1.5, the
standard constants), on frames in [0, 1], averaged over the batch.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-image PSNR in dB of (B, 3, H, W) frames in [0, 1]."""
    return peak_signal_noise_ratio(
        prediction.float(), target.float(), data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)
    )


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (B, 3, H, W) frames in [0, 1]."""
    return structural_similarity_index_measure(prediction.float(), target.float(), data_range=1.0)
