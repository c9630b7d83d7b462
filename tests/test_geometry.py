import math

import pytest
import torch

from discohead import geometry


def gaussian_heatmap(mean: torch.Tensor, covariance: torch.Tensor, size: int = 64) -> torch.Tensor:
    grid = geometry.coordinate_grid(size, size, dtype=torch.float64)
    centred = grid - mean
    precision = torch.linalg.inv(covariance)
    log_density = -0.5 * torch.einsum("hwi,ij,hwj->hw", centred, precision, centred)
    heatmap = log_density.exp()
    return (heatmap / heatmap.sum())[None]


def rotated_covariance(angle: float, major: float, minor: float) -> torch.Tensor:
    rotation = geometry.rotation_matrix(torch.tensor(angle, dtype=torch.float64))
    return rotation @ torch.diag(torch.tensor([major, minor], dtype=torch.float64)) @ rotation.T


def test_heatmap_recovers_known_translation_and_covariance():
    mean = torch.tensor([0.2, -0.1], dtype=torch.float64)
    covariance = rotated_covariance(0.3, 0.02, 0.005)
    estimated_mean, estimated_covariance = geometry.heatmap_mean_covariance(gaussian_heatmap(mean, covariance))
    torch.testing.assert_close(estimated_mean[0], mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(estimated_covariance[0], covariance, atol=2e-6, rtol=0)


def test_affine_from_heatmap_is_rotation_times_sqrt_variances():
    angle, major, minor = 0.3, 0.03, 0.01
    heatmap = gaussian_heatmap(torch.zeros(2, dtype=torch.float64), rotated_covariance(angle, major, minor), size=128)
    affine = geometry.affine_from_heatmap(heatmap)[0]
    expected = geometry.rotation_matrix(torch.tensor(angle, dtype=torch.float64)) @ torch.diag(
        torch.tensor([major, minor], dtype=torch.float64).sqrt()
    )
    torch.testing.assert_close(affine[:, :2], expected, atol=3e-3, rtol=0)
    rotation_only = geometry.affine_from_heatmap(heatmap, scale=False)[0]
    torch.testing.assert_close(
        rotation_only[:, :2], geometry.rotation_matrix(torch.tensor(angle, dtype=torch.float64)), atol=1e-3, rtol=0
    )


@pytest.mark.parametrize("angle", [-1.4, -0.7, 0.0, 0.5, 0.78, 1.2, math.pi / 2])
def test_principal_axes_are_a_canonical_proper_rotation(angle):
    covariance = rotated_covariance(angle, 0.04, 0.01)[None]
    rotation, variances = geometry.principal_axes(covariance)
    assert torch.linalg.det(rotation[0]).item() == pytest.approx(1.0)
    recovered_angle = math.atan2(rotation[0, 1, 0].item(), rotation[0, 0, 0].item())
    assert -math.pi / 4 - 1e-6 < recovered_angle <= math.pi / 4 + 1e-6
    torch.testing.assert_close(rotation @ torch.diag_embed(variances) @ rotation.transpose(1, 2), covariance)


def test_principal_axes_gradient_is_finite_for_isotropic_covariance():
    covariance = (0.02 * torch.eye(2, dtype=torch.float64))[None].requires_grad_()
    rotation, variances = geometry.principal_axes(covariance)
    (rotation.sum() + variances.sum()).backward()
    assert torch.isfinite(covariance.grad).all()


def test_relative_affine_is_identity_when_source_equals_driver():
    heatmap = gaussian_heatmap(torch.tensor([0.1, 0.3], dtype=torch.float64), rotated_covariance(-0.4, 0.03, 0.01))
    affine = geometry.affine_from_heatmap(heatmap)
    relative = geometry.relative_affine(affine, affine)
    torch.testing.assert_close(relative[0], torch.eye(2, 3, dtype=torch.float64))


def test_relative_affine_maps_driver_points_to_source_points():
    torch.manual_seed(0)
    source = torch.randn(3, 2, 3, dtype=torch.float64) + torch.eye(2, 3, dtype=torch.float64)
    driver = torch.randn(3, 2, 3, dtype=torch.float64) + torch.eye(2, 3, dtype=torch.float64)
    reference = torch.randn(3, 5, 2, dtype=torch.float64)
    relative = geometry.relative_affine(source, driver)
    torch.testing.assert_close(
        geometry.apply_affine(relative, geometry.apply_affine(driver, reference)),
        geometry.apply_affine(source, reference),
    )


def test_affine_warp_translates_image():
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 10, 12] = 1.0
    # Sampling the source at z + (4 px, 2 px) moves its content by (-4, -2) pixels.
    shift = torch.tensor([[[1.0, 0.0, 4 * 2 / 32], [0.0, 1.0, 2 * 2 / 32]]])
    warped = geometry.warp(image, geometry.affine_sampling_grid(shift, 32, 32))
    assert warped[0, 0, 8, 8].item() == pytest.approx(1.0, abs=1e-5)
    assert warped.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_identity_grid_leaves_image_unchanged():
    image = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(geometry.warp(image, geometry.identity_grid(2, 16, 16)), image)


def test_tps_maps_control_points_exactly_onto_targets():
    torch.manual_seed(1)
    driver = torch.rand(4, 10, 2, dtype=torch.float64) * 2 - 1
    source = driver + 0.2 * torch.randn(4, 10, 2, dtype=torch.float64)
    affine, weights = geometry.solve_tps(driver.float(), source.float())
    mapped = geometry.apply_tps(affine, weights, driver.float(), driver.float())
    torch.testing.assert_close(mapped, source.float(), atol=1e-4, rtol=0)


def test_tps_reduces_to_the_affine_part_for_affinely_related_points():
    torch.manual_seed(2)
    driver = torch.rand(2, 10, 2) * 2 - 1
    affine_true = torch.tensor([[[0.9, -0.2, 0.1], [0.15, 1.1, -0.05]]]).expand(2, 2, 3)
    affine, weights = geometry.solve_tps(driver, geometry.apply_affine(affine_true, driver))
    torch.testing.assert_close(affine, affine_true, atol=1e-4, rtol=0)
    assert weights.abs().max().item() < 1e-4
    grid = geometry.tps_sampling_grid(affine, weights, driver, 8, 8)
    torch.testing.assert_close(grid, geometry.affine_sampling_grid(affine_true, 8, 8), atol=1e-4, rtol=0)


def test_tps_kernel_is_zero_with_finite_gradient_at_the_origin():
    squared = torch.tensor([0.0, 0.25, 1.0], requires_grad=True)
    values = geometry.tps_kernel(squared)
    torch.testing.assert_close(values, torch.tensor([0.0, 0.25 * math.log(0.25), 0.0]))
    values.sum().backward()
    assert torch.isfinite(squared.grad).all()


def test_solve_tps_stays_float32_under_autocast():
    driver = torch.rand(2, 5, 2) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        affine, weights = geometry.solve_tps(driver, driver)
    assert affine.dtype == torch.float32
    torch.testing.assert_close(affine, torch.eye(2, 3).expand(2, 2, 3), atol=1e-4, rtol=0)
