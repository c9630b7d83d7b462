import torch

from discohead.contracts import EYE_LANDMARKS, eye_box_from_landmarks, eye_mask, mask_to_eye_region


def landmarks_with_eyes_at(x0: float, y0: float, x1: float, y1: float) -> torch.Tensor:
    points = torch.full((68, 2), 50.0)
    eye_points = torch.tensor(EYE_LANDMARKS)
    points[eye_points, 0] = torch.linspace(x0, x1, len(EYE_LANDMARKS))
    points[eye_points, 1] = torch.linspace(y0, y1, len(EYE_LANDMARKS))
    return points


def test_eye_box_is_normalised_and_padded():
    box = eye_box_from_landmarks(landmarks_with_eyes_at(20, 30, 60, 40), image_size=100, margin=0.1)
    torch.testing.assert_close(box, torch.tensor([0.16, 0.29, 0.64, 0.41]))


def test_eye_box_is_clamped_to_the_frame():
    box = eye_box_from_landmarks(landmarks_with_eyes_at(-5, 0, 90, 99), image_size=100)
    assert box.min() >= 0 and box.max() <= 1


def test_mask_is_resolution_independent_and_blacks_out_the_rest():
    boxes = torch.tensor([[0.25, 0.25, 0.75, 0.5]])
    assert eye_mask(boxes, 8, 8).sum() == 4 * 2
    assert eye_mask(boxes, 16, 16).sum() == 8 * 4
    frames = torch.ones(1, 3, 8, 8)
    masked = mask_to_eye_region(frames, boxes)
    assert masked[0, :, 2, 2].eq(1).all() and masked[0, :, 6, 6].eq(0).all()
