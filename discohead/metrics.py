"""The metrics that need no pretrained network: Table 1's PSNR, SSIM and AKD, and the
mouth, eye and disentanglement measures of the evaluation job.

PSNR and SSIM come from torchmetrics (SSIM: 11x11 Gaussian window, sigma 1.5, the
standard constants), on frames in [0, 1], averaged over the batch. The landmark measures
take 68-point landmarks (found by ``discohead.metric_networks.FaceMeasures``).
"""

from __future__ import annotations

import numpy as np
import torch

# torchmetrics is imported where it is used: importing it (and the scipy.signal it pulls in) takes
# about 2 s of CPU, paid by every Ray process that unpickles a function of discohead.training
# (the Train controller, Ray Data's coordinators) though only the workers compute a metric.


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-image PSNR in dB of (B, 3, H, W) frames in [0, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(
        prediction.float(), target.float(), data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)
    )


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (B, 3, H, W) frames in [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(prediction.float(), target.float(), data_range=1.0)


def box_l1(prediction: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Per frame, the mean absolute error inside the ``(x0, y0, x1, y1)`` box, channels averaged; NaN if empty."""
    from .contracts import eye_mask

    mask = eye_mask(boxes.to(prediction.dtype), prediction.shape[-2], prediction.shape[-1])
    error = (prediction.float() - target.float()).abs().mean(dim=1, keepdim=True) * mask
    area = mask.flatten(1).sum(1)
    return torch.where(area > 0, error.flatten(1).sum(1) / area.clamp_min(1), torch.full_like(area, float("nan")))


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Per box, the share of the frame ``(x0, y0, x1, y1)`` covers (boxes in [0, 1] coordinates)."""
    boxes = boxes.float().clamp(0, 1)
    return (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)


# --- from 68 landmarks (iBUG 300-W layout), pure and batched --------------------------

INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
"""Upper and lower inner-lip points facing each other (0-based 68-point indices)."""
EYES = (tuple(range(36, 42)), tuple(range(42, 48)))
"""Each eye's six points p1..p6 in the order of the eye-aspect-ratio formula."""


def keypoint_distance(landmarks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """AKD per frame: mean Euclidean distance between corresponding points of ``(..., 68, 2)`` arrays."""
    return np.linalg.norm(np.asarray(landmarks, np.float64) - np.asarray(reference, np.float64), axis=-1).mean(axis=-1)


def inner_lip_opening(landmarks: np.ndarray) -> np.ndarray:
    """Mean vertical gap between the inner lips, per frame, in the landmarks' units."""
    points = np.asarray(landmarks, np.float64)
    return np.mean(
        [np.linalg.norm(points[..., top, :] - points[..., bottom, :], axis=-1) for top, bottom in INNER_LIP_PAIRS],
        axis=0,
    )


def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """Soukupova and Cech's eye aspect ratio, (|p2-p6| + |p3-p5|) / (2 |p1-p4|), averaged over both eyes."""
    points = np.asarray(landmarks, np.float64)
    ratios = []
    for eye in EYES:
        p = [points[..., index, :] for index in eye]
        vertical = np.linalg.norm(p[1] - p[5], axis=-1) + np.linalg.norm(p[2] - p[4], axis=-1)
        ratios.append(vertical / (2 * np.linalg.norm(p[0] - p[3], axis=-1)))
    return np.mean(ratios, axis=0)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two series; NaN when either is constant (no signal to follow)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def share_inside(change: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Per frame, the share of the absolute change ``(B, C, H, W)`` inside the ``(x0, y0, x1, y1)`` boxes.

    NaN where nothing changed: a share of no change is undefined, not zero.
    """
    from .contracts import eye_mask

    magnitude = change.abs().sum(dim=1, keepdim=True)
    inside = (
        (magnitude * eye_mask(boxes.to(magnitude.dtype), magnitude.shape[-2], magnitude.shape[-1])).flatten(1).sum(1)
    )
    total = magnitude.flatten(1).sum(1)
    return torch.where(total > 1e-6, inside / total.clamp_min(1e-12), torch.full_like(total, float("nan")))
