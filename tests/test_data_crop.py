"""Smoothed square crop boxes and landmark transforms (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from discohead.data.crop import (
    boxes_from_landmarks,
    crop_and_resize,
    crop_boxes,
    fill_missing,
    fit_inside,
    landmarks_to_crop,
    smooth,
)


def square_landmarks(centre_x: float, centre_y: float, extent: float) -> np.ndarray:
    grid = np.linspace(-extent / 2, extent / 2, 68)
    return np.stack([centre_x + grid, centre_y + grid[::-1]], axis=1).astype(np.float32)


def test_boxes_are_square_around_the_face_and_lifted():
    box = boxes_from_landmarks(square_landmarks(100, 100, 50)[None], scale=2.0, lift=0.1)[0]
    assert box[0] == pytest.approx(100) and box[2] == pytest.approx(100) and box[1] == pytest.approx(90)


def test_fill_missing_interpolates_and_holds_edges():
    values = np.array([[np.nan], [0.0], [np.nan], [2.0], [np.nan]])
    assert fill_missing(values)[:, 0].tolist() == [0.0, 0.0, 1.0, 2.0, 2.0]
    with pytest.raises(ValueError):
        fill_missing(np.full((3, 1), np.nan))


def test_smoothing_removes_jitter_but_keeps_constant_signal():
    rng = np.random.default_rng(0)
    jittery = 100 + rng.normal(0, 3, size=(200, 1))
    assert smooth(jittery, sigma=3).std() < jittery.std() / 2.5
    assert np.allclose(smooth(np.full((10, 2), 7.0), sigma=2), 7.0)


def test_fit_inside_moves_and_shrinks_boxes_into_the_frame():
    boxes = fit_inside(np.array([[5.0, 50.0, 40.0], [50.0, 50.0, 500.0]]), width=100, height=80)
    assert boxes[0].tolist() == [0.0, 30.0, 40.0, 70.0]
    assert boxes[1].tolist() == [10.0, 0.0, 90.0, 80.0]


def test_crop_boxes_follow_the_face_smoothly():
    frames = 40
    landmarks = np.stack([square_landmarks(100 + t, 80, 40) for t in range(frames)])
    landmarks[10] = np.nan
    boxes = crop_boxes(landmarks, width=320, height=240, sigma=2)
    sides = boxes[:, 2] - boxes[:, 0]
    assert np.allclose(sides, sides[0]) and np.allclose(boxes[:, 3] - boxes[:, 1], sides)
    assert np.all(np.diff(boxes[:, 0]) > 0)


def test_crop_and_landmarks_agree():
    frame = np.zeros((100, 120, 3), np.uint8)
    frame[40:50, 60:70] = 255
    box = np.array([40.0, 20.0, 100.0, 80.0])
    crop = crop_and_resize(frame, box, 30)
    assert crop.shape == (30, 30, 3)
    point = landmarks_to_crop(np.array([[[65.0, 45.0]]]), box[None], 30)[0, 0]
    assert point.tolist() == pytest.approx([12.5, 12.5])
    assert crop[int(point[1]), int(point[0])].min() > 200
