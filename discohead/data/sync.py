"""Audio-visual offset of a segment, from its own landmarks and audio (no SyncNet weights).

Speech is loud when the mouth is open, so the inner-lip opening and the audio's loudness
envelope move together, shifted by however many frames the audio is out of sync. The
offset is the lag that maximises their correlation within +-15 frames; the correlation
at that lag is the confidence. Both signals are high-passed first (a 9-frame moving
average removed), so slow drifts of loudness or head size do not count.
"""

from __future__ import annotations

import numpy as np

from ..metrics import inner_lip_opening

MAX_LAG = 15
"""Lags tried, in frames each way (0.6 s at 25 fps: more than any usable recording drifts)."""

TREND_FRAMES = 9
"""Width of the moving average removed from both signals before correlating."""


def loudness_envelope(waveform: np.ndarray, num_frames: int, samples_per_frame: int) -> np.ndarray:
    """RMS of the audio in each video frame's span."""
    spans = np.zeros(num_frames * samples_per_frame, np.float64)
    count = min(len(waveform), len(spans))
    spans[:count] = waveform[:count]
    return np.sqrt(np.mean(spans.reshape(num_frames, samples_per_frame) ** 2, axis=1))


def _high_pass(values: np.ndarray) -> np.ndarray:
    values = values - np.convolve(values, np.ones(TREND_FRAMES) / TREND_FRAMES, mode="same")
    return (values - values.mean()) / (values.std() + 1e-9)


def av_offset(
    landmarks: np.ndarray, waveform: np.ndarray, samples_per_frame: int, max_lag: int = MAX_LAG
) -> tuple[int, float]:
    """``(offset, confidence)``: the audio is ``offset`` frames late (negative: early); confidence in [-1, 1].

    ``landmarks`` are ``(T, 68, 2)``; ``waveform`` is the segment's audio, starting with
    its first frame. A segment too short to try every lag on twice its length gives
    ``(0, 0.0)``.
    """
    count = len(landmarks)
    if count < 2 * max_lag + TREND_FRAMES:
        return 0, 0.0
    mouth = _high_pass(inner_lip_opening(landmarks))
    loud = _high_pass(loudness_envelope(waveform, count, samples_per_frame))
    scores = []
    for lag in range(-max_lag, max_lag + 1):
        a, b = (mouth[: count - lag], loud[lag:]) if lag >= 0 else (mouth[-lag:], loud[: count + lag])
        scores.append(float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0)
    best = int(np.argmax(scores))
    return best - max_lag, scores[best]


def shift_audio(waveform: np.ndarray, frames: int, samples_per_frame: int) -> np.ndarray:
    """The audio moved ``frames`` earlier (undoing an offset of ``frames``), zero-filled, same length."""
    shift = frames * samples_per_frame
    moved = np.zeros_like(waveform)
    if shift >= 0:
        moved[: max(len(waveform) - shift, 0)] = waveform[shift:]
    else:
        moved[-shift:] = waveform[: len(waveform) + shift]
    return moved
