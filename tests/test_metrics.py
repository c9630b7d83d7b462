import math

import numpy as np
import pytest
import torch

from discohead.metrics import (
    box_area,
    box_l1,
    eye_aspect_ratio,
    inner_lip_opening,
    keypoint_distance,
    pearson,
    psnr,
    share_inside,
    ssim,
)


def test_psnr_of_a_known_error():
    target = torch.zeros(2, 3, 8, 8)
    prediction = torch.full_like(target, 0.1)
    assert math.isclose(psnr(prediction, target).item(), 20.0, rel_tol=1e-5)


def test_ssim_is_one_for_identical_and_lower_for_noisy_frames():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32)
    assert math.isclose(ssim(target, target).item(), 1.0, rel_tol=1e-6)
    assert ssim((target + 0.2 * torch.randn_like(target)).clamp(0, 1), target).item() < 0.9


def face_points() -> np.ndarray:
    """68 points, all at (10, 10) except the eyes and inner lips, placed by hand."""
    points = np.full((68, 2), 10.0)
    # Left eye p1..p6 (36..41): corners 4 apart, lids 1 and 3 apart -> EAR (1 + 3) / (2 * 4) = 0.5.
    points[36:42] = [(0, 0), (1, -0.5), (3, -1.5), (4, 0), (3, 1.5), (1, 0.5)]
    # Right eye (42..47): corners 4 apart, both lids 2 apart -> EAR (2 + 2) / 8 = 0.5.
    points[42:48] = [(10, 0), (11, -1), (13, -1), (14, 0), (13, 1), (11, 1)]
    # Inner lips: 61-67, 62-66, 63-65 are 2, 4 and 6 apart vertically -> opening 4.
    points[61:64] = [(20, 30), (22, 30), (24, 30)]
    points[65:68] = [(24, 36), (22, 34), (20, 32)]
    return points


def test_landmark_measures_against_hand_computed_values():
    points = face_points()
    assert eye_aspect_ratio(points) == pytest.approx(0.5)
    assert inner_lip_opening(points) == pytest.approx(4.0)
    moved = points + np.array([3.0, 4.0])
    np.testing.assert_allclose(keypoint_distance(np.stack([moved, points]), np.stack([points, points])), [5.0, 0.0])


def test_pearson_is_defined_only_when_both_series_vary():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_share_inside_a_box_and_undefined_without_change():
    change = torch.zeros(2, 3, 10, 10)
    change[0, :, 0:5, 0:5] = 1.0  # all inside the top-left quarter
    change[0, :, 9, 9] = 1.0  # one pixel outside: 25 of 26 pixels inside
    share = share_inside(change, torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 2))
    assert share[0].item() == pytest.approx(25 / 26)
    assert math.isnan(share[1].item()), "no change has no share"


def test_box_l1_is_the_error_inside_the_box_alone_and_box_area_its_share_of_the_frame():
    target = torch.zeros(2, 3, 10, 10)
    prediction = target.clone()
    prediction[:, :, :5, :5] = 0.5  # wrong in the top-left quarter only
    prediction[:, :, 5:, 5:] = 1.0
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]])
    assert box_l1(prediction, target, boxes).tolist() == [0.5, (25 * 0.5 + 25 * 1.0) / 100]
    assert torch.isnan(box_l1(prediction, target, torch.tensor([[0.5, 0.5, 0.5, 0.5]] * 2))).all(), "an empty box"
    assert box_area(boxes).tolist() == [0.25, 1.0]
