"""Square face crops that follow the head smoothly, as pure functions of the landmarks.

A crop box per frame comes from the landmarks' extent; gaps where no face was found
are interpolated, then centre and size are smoothed over time so the crop does not
jitter with landmark noise (jitter would look like head motion to the model).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..contracts import CROP_LIFT, CROP_SCALE


def boxes_from_landmarks(landmarks: np.ndarray, scale: float = CROP_SCALE, lift: float = CROP_LIFT) -> np.ndarray:
    """``(T, 3)`` crop ``(centre_x, centre_y, side)`` per frame from ``(T, 68, 2)`` landmarks (NaN stays NaN)."""
    low = landmarks.min(axis=1)
    high = landmarks.max(axis=1)
    centre = (low + high) / 2
    side = (high - low).max(axis=1) * scale
    return np.stack([centre[:, 0], centre[:, 1] - lift * side, side], axis=1)


def fill_missing(values: np.ndarray) -> np.ndarray:
    """Linearly interpolate NaN rows of ``(T, D)`` values from their neighbours (edges held)."""
    values = values.astype(np.float64, copy=True)
    known = ~np.isnan(values).any(axis=1)
    if not known.any():
        raise ValueError("no frame has a value to interpolate from")
    frames = np.arange(len(values))
    for column in range(values.shape[1]):
        values[:, column] = np.interp(frames, frames[known], values[known, column])
    return values


def smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of ``(T, D)`` values along time, edges padded by reflection."""
    if sigma <= 0 or len(values) < 2:
        return values.copy()
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(values, ((radius, radius), (0, 0)), mode="reflect" if len(values) > radius else "edge")
    return np.stack([np.convolve(padded[:, d], taps, mode="valid") for d in range(values.shape[1])], axis=1)


def fit_inside(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(T, 4)`` integer-free ``(x0, y0, x1, y1)`` squares moved (and if needed shrunk) into the frame.

    Moving rather than padding keeps every crop pixel real image; a face at the border
    is then slightly off-centre instead of half black.
    """
    centre_x, centre_y, side = boxes[:, 0], boxes[:, 1], np.minimum(boxes[:, 2], min(width, height))
    x0 = np.clip(centre_x - side / 2, 0, width - side)
    y0 = np.clip(centre_y - side / 2, 0, height - side)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def crop_boxes(
    landmarks: np.ndarray, width: int, height: int, sigma: float, scale: float = CROP_SCALE, lift: float = CROP_LIFT
) -> np.ndarray:
    """Smoothed ``(T, 4)`` square crop boxes in frame pixels for a whole clip."""
    return fit_inside(smooth(fill_missing(boxes_from_landmarks(landmarks, scale, lift)), sigma), width, height)


def crop_and_resize(frame: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The ``box`` region of ``frame`` resized to ``(size, size, 3)`` uint8 (bilinear, antialiased)."""
    image = Image.fromarray(frame)
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=tuple(float(v) for v in box)))


def landmarks_to_crop(landmarks: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """``(T, 68, 2)`` frame-pixel landmarks expressed in pixels of the ``size`` crop of each box."""
    origin = boxes[:, None, :2]
    side = (boxes[:, 2] - boxes[:, 0])[:, None, None]
    return ((landmarks - origin) * (size / side)).astype(np.float32)
