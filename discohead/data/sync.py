"""Audio-visual offset of a segment, from its own landmarks and audio (no SyncNet weights).

Speech is loud when the mouth is open, so the lip opening and the audio's loudness move
together, shifted by however many frames the audio is out of sync. The offset is the lag
that maximises their correlation within +-15 frames; the correlation at that lag is the
confidence. Two views of each side are correlated and their curves averaged, which
steadies the estimate on short segments: the inner and the outer lip opening (the
inner lips of a closed mouth touch, so only the outer pair sees how far the lips are
pressed or pursed), and the audio's RMS per frame and its log energy in the speech band
(300-3000 Hz, where the formants that the mouth shapes are; the RMS alone follows the
loudest, often voiced low-frequency, sounds). Every signal is high-passed first (its
9-frame moving average removed), so slow drifts of loudness or head size do not count.

No library does this: SyncNet (the evaluation's LSE) needs weights that cannot be
fetched everywhere, and this needs none. Measured on the shared GRID and portrait clips
in docs/benchmarks.md ("Curation stages").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..metrics import inner_lip_opening

if TYPE_CHECKING:
    from ..contracts import ClipConfig

MAX_LAG = 15
"""Lags tried, in frames each way (0.6 s at 25 fps: more than any usable recording drifts)."""

TREND_FRAMES = 9
"""Width of the moving average removed from every signal before correlating."""

SPEECH_BAND = (300.0, 3000.0)
"""Hz: the band whose log energy is the second audio signal (telephone speech band)."""

BAND_WINDOW = 1024
"""Samples in each frame's spectrum (64 ms at 16 kHz), centred on the frame's middle."""

RIVAL_FRAMES = 2
"""The margin compares the best lag with the best lag more than this many frames from it."""


class Offset(NamedTuple):
    """An offset estimate: ``frames`` the audio is late (negative: early), the correlation at that lag
    (``confidence``), and by how much it beats the best lag more than :data:`RIVAL_FRAMES` away
    (``margin``): a curve with two near-equal peaks says the offset is one of two, not which."""

    frames: int
    confidence: float
    margin: float


def outer_lip_opening(landmarks: np.ndarray) -> np.ndarray:
    """Gap between the outer lips' middles (points 52 and 58, 1-based) over the eye-corner distance, per frame."""
    points = np.asarray(landmarks, np.float64)
    gap = np.linalg.norm(points[..., 57, :] - points[..., 51, :], axis=-1)
    return gap / np.maximum(np.linalg.norm(points[..., 45, :] - points[..., 36, :], axis=-1), 1e-6)


def _frames_of(waveform: np.ndarray, num_frames: int, samples_per_frame: int) -> np.ndarray:
    """The waveform cut or zero-filled to exactly ``num_frames`` frames' spans."""
    spans = np.zeros(num_frames * samples_per_frame, np.float64)
    count = min(len(waveform), len(spans))
    spans[:count] = waveform[:count]
    return spans


def loudness_envelope(waveform: np.ndarray, num_frames: int, samples_per_frame: int) -> np.ndarray:
    """RMS of the audio in each video frame's span."""
    spans = _frames_of(waveform, num_frames, samples_per_frame)
    return np.sqrt(np.mean(spans.reshape(num_frames, samples_per_frame) ** 2, axis=1))


def speech_band_energy(waveform: np.ndarray, num_frames: int, samples_per_frame: int, sample_rate: int) -> np.ndarray:
    """Log energy in :data:`SPEECH_BAND` of a Hann window centred on each video frame's middle."""
    half = BAND_WINDOW // 2
    padded = np.pad(_frames_of(waveform, num_frames, samples_per_frame), (half, half))
    centres = np.arange(num_frames) * samples_per_frame + samples_per_frame // 2  # index into padded = start
    windows = padded[centres[:, None] + np.arange(BAND_WINDOW)[None]] * np.hanning(BAND_WINDOW)
    power = np.abs(np.fft.rfft(windows, axis=1)) ** 2
    freqs = np.fft.rfftfreq(BAND_WINDOW, 1 / sample_rate)
    in_band = (freqs >= SPEECH_BAND[0]) & (freqs <= SPEECH_BAND[1])
    return np.log(power[:, in_band].sum(axis=1) + 1e-6)


def _high_pass(values: np.ndarray) -> np.ndarray:
    """``values`` less their moving average (averaged over the frames present at the edges), standardised.

    The edge handling matters: a zero-padded average bends both signals at the same
    frames at the start and end, which biased short segments toward whatever lag lines
    those bends up.
    """
    kernel = np.ones(TREND_FRAMES)
    trend = np.convolve(values, kernel, mode="same") / np.convolve(np.ones_like(values), kernel, mode="same")
    values = values - trend
    return (values - values.mean()) / (values.std() + 1e-9)


def _correlations(mouth: np.ndarray, sound: np.ndarray, max_lag: int) -> np.ndarray:
    """Pearson correlation of ``mouth[t]`` with ``sound[t + lag]`` over their overlap, for lag -max_lag..max_lag."""
    count = len(mouth)
    scores = []
    for lag in range(-max_lag, max_lag + 1):
        a, b = (mouth[: count - lag], sound[lag:]) if lag >= 0 else (mouth[-lag:], sound[: count + lag])
        scores.append(float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0)
    return np.asarray(scores)


def av_offset(
    landmarks: np.ndarray,
    waveform: np.ndarray,
    samples_per_frame: int,
    max_lag: int = MAX_LAG,
    sample_rate: int = 16000,
) -> Offset:
    """The segment's :class:`Offset`; confidence in [-1, 1].

    ``landmarks`` are ``(T, 68, 2)``; ``waveform`` is the segment's audio at
    ``sample_rate``, starting with its first frame. A segment too short to try every lag
    on twice its length gives ``(0, 0.0, 0.0)``.
    """
    count = len(landmarks)
    if count < 2 * max_lag + TREND_FRAMES:
        return Offset(0, 0.0, 0.0)
    mouths = [_high_pass(inner_lip_opening(landmarks)), _high_pass(outer_lip_opening(landmarks))]
    sounds = [
        _high_pass(loudness_envelope(waveform, count, samples_per_frame)),
        _high_pass(speech_band_energy(waveform, count, samples_per_frame, sample_rate)),
    ]
    curve = np.mean([_correlations(mouth, sound, max_lag) for mouth in mouths for sound in sounds], axis=0)
    best = int(np.argmax(curve))
    rivals = np.abs(np.arange(len(curve)) - best) > RIVAL_FRAMES
    return Offset(best - max_lag, float(curve[best]), float(curve[best] - curve[rivals].max()))


def syncnet_offset(syncnet: Any, crops: np.ndarray, waveform: np.ndarray, sample_rate: int) -> Offset:
    """SyncNet's :class:`Offset` on a segment's face crops ``(T, S, S, 3)`` uint8 and its audio.

    The evaluation's LSE pipeline (:mod:`discohead.metric_networks`: syncnet_python's crop,
    MFCCs and ``evaluate()`` search over +-15 frames), so the confidence is LSE-C. SyncNet's
    offset is positive when the audio is early; it is negated here to keep this module's sign
    (positive: the audio is late). LSE-C is already a margin (the median distance over the
    lags less the smallest), so ``margin`` repeats it. A segment shorter than SyncNet's
    window gives ``(0, 0.0, 0.0)``.
    """
    import torch

    from ..metric_networks import SYNC_SAMPLE_RATE, lip_sync, syncnet_frames, syncnet_mfcc, window_count

    if sample_rate != SYNC_SAMPLE_RATE:
        import torchaudio

        waveform = torchaudio.functional.resample(torch.from_numpy(waveform), sample_rate, SYNC_SAMPLE_RATE).numpy()
    count = window_count(len(crops), len(waveform))
    if count < 1:
        return Offset(0, 0.0, 0.0)
    device = next(syncnet.parameters()).device
    with torch.no_grad():
        frames = syncnet_frames(torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255))
        lips = syncnet.lip_windows(frames.to(device))[:count]
        audio = syncnet.audio_windows(syncnet_mfcc(waveform).to(device), count)
    found = lip_sync(lips, audio)
    return Offset(-found.offset, found.confidence, found.confidence)


def offset_trusted(confidence: float, margin: float, config: ClipConfig) -> bool:
    """Whether the job acts on an offset estimate: SyncNet's at ``--syncnet-confidence``, the lips' at
    ``--av-confidence`` with a peak standing ``--av-margin`` above its rivals."""
    if config.av_method == "syncnet":
        return confidence >= config.syncnet_confidence
    return confidence >= config.av_confidence and margin >= config.av_margin


def shift_audio(waveform: np.ndarray, frames: int, samples_per_frame: int) -> np.ndarray:
    """The audio moved ``frames`` earlier (undoing an offset of ``frames``), zero-filled, same length."""
    shift = frames * samples_per_frame
    moved = np.zeros_like(waveform)
    if shift >= 0:
        moved[: max(len(waveform) - shift, 0)] = waveform[shift:]
    else:
        moved[-shift:] = waveform[: len(waveform) + shift]
    return moved
