import math

import torch

from discohead.metrics import psnr, ssim


def test_psnr_of_a_known_error():
    target = torch.zeros(2, 3, 8, 8)
    prediction = torch.full_like(target, 0.1)
    assert math.isclose(psnr(prediction, target).item(), 20.0, rel_tol=1e-5)


def test_ssim_is_one_for_identical_and_lower_for_noisy_frames():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32)
    assert math.isclose(ssim(target, target).item(), 1.0, rel_tol=1e-6)
    assert ssim((target + 0.2 * torch.randn_like(target)).clamp(0, 1), target).item() < 0.9
