"""Pure geometry of the head-motion predictor: affine from heatmap, TPS solve, warps.

Coordinates are normalised to [-1, 1] with pixel centres at ``(2j + 1) / W - 1``
(``align_corners=False`` in PyTorch), so the same transform applies to a 64-pixel
heatmap, a 32-pixel feature map and a 256-pixel frame. Points are ``(x, y)``.
Everything runs on the input's device without a host round trip.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_EPS = 1e-7


def coordinate_grid(
    height: int, width: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(H, W, 2)`` grid of pixel-centre coordinates ``(x, y)`` in [-1, 1]."""
    ys = (2 * torch.arange(height, device=device, dtype=dtype) + 1) / height - 1
    xs = (2 * torch.arange(width, device=device, dtype=dtype) + 1) / width - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def heatmap_mean_covariance(heatmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Translation and covariance of a probability heatmap (paper Eq. 1 and 2).

    ``heatmap`` is ``(B, H, W)`` and sums to 1 over each map (a spatial softmax).
    Returns the expectation ``t = sum H(z) z`` as ``(B, 2)`` and
    ``sum H(z) (z - t)(z - t)^T`` as ``(B, 2, 2)``.
    """
    grid = coordinate_grid(*heatmap.shape[-2:], device=heatmap.device, dtype=heatmap.dtype)
    weights = heatmap.flatten(1)
    points = grid.reshape(-1, 2)
    mean = weights @ points
    centred = points[None] - mean[:, None]
    covariance = torch.einsum("bn,bni,bnj->bij", weights, centred, centred)
    return mean, covariance


def rotation_matrix(angle: torch.Tensor) -> torch.Tensor:
    """``(..., 2, 2)`` counter-clockwise rotation by ``angle`` radians."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def principal_axes(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SVD ``Sigma = U diag(s) U^T`` of symmetric 2x2 matrices, in a canonical form.

    The SVD of a covariance is ambiguous: each axis's sign can flip and the two axes
    swap places when their variances cross, which makes the recovered motion jump by
    180 or 90 degrees between frames (the authors' release patches only the first
    case). Here ``U`` is always the proper rotation closest to the identity, with its
    angle in (-pi/4, pi/4], and ``s`` holds the variance along each of its columns.
    The closed form is exact, batched, differentiable and stays on the device.

    Returns ``(U, s)`` with shapes ``(B, 2, 2)`` and ``(B, 2)``.
    """
    a, b, c = covariance[..., 0, 0], covariance[..., 0, 1], covariance[..., 1, 1]
    difference = a - c
    # Keep atan2's gradient finite at an isotropic covariance (0, 0).
    difference = torch.where(difference >= 0, difference + _EPS, difference - _EPS)
    angle = 0.5 * torch.atan2(2 * b, difference)
    angle = torch.where(angle > math.pi / 4, angle - math.pi / 2, angle)
    angle = torch.where(angle <= -math.pi / 4, angle + math.pi / 2, angle)
    rotation = rotation_matrix(angle)
    variances = torch.einsum("...ji,...jk,...ki->...i", rotation, covariance, rotation)
    return rotation, variances.clamp_min(0.0)


def affine_from_heatmap(heatmap: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """``A_{X<-R} = [U Sigma^1/2, t]`` as ``(B, 2, 3)`` from a ``(B, H, W)`` heatmap.

    With ``scale=False`` only the rotation is kept (``[U, t]``), the authors' setting
    for GRID.
    """
    mean, covariance = heatmap_mean_covariance(heatmap)
    rotation, variances = principal_axes(covariance)
    linear = rotation * torch.sqrt(variances + _EPS)[..., None, :] if scale else rotation
    return torch.cat([linear, mean[..., None]], dim=-1)


def to_homogeneous(affine: torch.Tensor) -> torch.Tensor:
    """``(B, 2, 3)`` affine maps as ``(B, 3, 3)`` matrices."""
    bottom = affine.new_tensor([0.0, 0.0, 1.0]).expand(*affine.shape[:-2], 1, 3)
    return torch.cat([affine, bottom], dim=-2)


def relative_affine(source_affine: torch.Tensor, driver_affine: torch.Tensor) -> torch.Tensor:
    """``A_{S<-D} = A_{S<-R} A_{D<-R}^-1`` (paper Eq. 3): driver points to source points."""
    relative = to_homogeneous(source_affine) @ torch.linalg.inv(to_homogeneous(driver_affine))
    return relative[..., :2, :]


def apply_affine(affine: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map ``(B, ..., 2)`` points with ``(B, 2, 3)`` affine transforms."""
    shape = points.shape
    flat = points.reshape(shape[0], -1, 2)
    mapped = flat @ affine[:, :, :2].transpose(1, 2) + affine[:, None, :, 2]
    return mapped.reshape(shape)


def affine_sampling_grid(affine: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, H, W, 2)`` grid that samples the source at ``A_{S<-D} z`` for each driver pixel ``z``."""
    return F.affine_grid(affine, [affine.shape[0], 1, height, width], align_corners=False)


def tps_kernel(squared_distance: torch.Tensor) -> torch.Tensor:
    """``phi(r) = r^2 log r^2`` (paper Eq. 5), exactly 0 with a finite gradient at ``r = 0``."""
    return squared_distance * torch.log(squared_distance.clamp_min(1e-12))


def _pairwise_squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[..., :, None, :] - b[..., None, :, :]).pow(2).sum(-1)


def solve_tps(
    control_points: torch.Tensor, target_points: torch.Tensor, regularization: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve Bookstein's thin-plate-spline system (paper Eq. 4).

    Finds ``f(z) = A [z; 1] + sum_i w_i phi(|z - p_i|)`` with ``f(p_i) = q_i`` for the
    ``(B, N, 2)`` control points ``p`` (driver keypoints) and targets ``q`` (source
    keypoints). Returns the affine part ``A`` as ``(B, 2, 3)`` and the weights ``w`` as
    ``(B, N, 2)``. ``regularization`` adds a ridge to the kernel block; a tiny ridge
    keeps the solve finite when keypoints coincide (as they can at initialisation).

    The solve runs in float32 even under autocast, since half-precision LU is neither
    supported nor accurate enough.
    """
    with torch.autocast(device_type=control_points.device.type, enabled=False):
        p = control_points.float()
        q = target_points.float()
        batch, count, _ = p.shape
        kernel = tps_kernel(_pairwise_squared_distance(p, p))
        if regularization:
            kernel = kernel + regularization * torch.eye(count, device=p.device)
        ones = p.new_ones(batch, count, 1)
        homogeneous = torch.cat([ones, p], dim=-1)
        top = torch.cat([kernel, homogeneous], dim=-1)
        bottom = torch.cat([homogeneous.transpose(1, 2), p.new_zeros(batch, 3, 3)], dim=-1)
        system = torch.cat([top, bottom], dim=1)
        rhs = torch.cat([q, p.new_zeros(batch, 3, 2)], dim=1)
        solution = torch.linalg.solve(system, rhs)
        weights, affine_rows = solution[:, :count], solution[:, count:]
        # affine_rows is (B, 3, 2) for [1, x, y]; rearrange to [[a_xx, a_xy, t_x], ...].
        affine = torch.cat([affine_rows[:, 1:].transpose(1, 2), affine_rows[:, :1].transpose(1, 2)], dim=-1)
    return affine, weights


def apply_tps(
    affine: torch.Tensor, weights: torch.Tensor, control_points: torch.Tensor, points: torch.Tensor
) -> torch.Tensor:
    """Evaluate the TPS of :func:`solve_tps` at ``(B, ..., 2)`` points."""
    shape = points.shape
    flat = points.reshape(shape[0], -1, 2).to(affine.dtype)
    radial = tps_kernel(_pairwise_squared_distance(flat, control_points.to(affine.dtype)))
    mapped = apply_affine(affine, flat) + radial @ weights
    return mapped.reshape(shape)


def tps_sampling_grid(
    affine: torch.Tensor, weights: torch.Tensor, control_points: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """``(B, H, W, 2)`` grid that samples the source at ``f(z)`` for each driver pixel ``z``."""
    grid = coordinate_grid(height, width, device=affine.device, dtype=affine.dtype)
    grid = grid.expand(affine.shape[0], height, width, 2)
    return apply_tps(affine, weights, control_points, grid)


def identity_grid(
    batch: int, height: int, width: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(B, H, W, 2)`` grid that leaves an image unchanged (``O_I`` in paper Eq. 7)."""
    return coordinate_grid(height, width, device=device, dtype=dtype).expand(batch, height, width, 2)


def resize_grid(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resample a ``(B, H, W, 2)`` sampling grid to another resolution."""
    if grid.shape[1:3] == (height, width):
        return grid
    resized = F.interpolate(grid.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False)
    return resized.permute(0, 2, 3, 1)


def warp(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` (B, C, H, W) at ``grid`` (B, h, w, 2); outside the frame reads zero."""
    if grid.shape[1:3] != image.shape[-2:]:
        grid = resize_grid(grid, *image.shape[-2:])
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
