"""Quality measures of a segment, and the gates that skip a segment on them.

Every measure is stored in the segment's manifest record (``ClipRecord.measures``),
stored or skipped, so a user can see what the gates did and choose other thresholds
without decoding the videos again. The measures are cheap on purpose: they reuse the
landmarks and crops the job computes anyway.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..contracts import STATS_NAME

if TYPE_CHECKING:
    from ..manifest import Manifest

SHARPNESS_SIZE = 128
"""Crops are measured at this side whatever ``--image-size``, so sharpness values compare
across datasets made at different sizes."""

CLIP_LEVEL = 0.999
"""A sample at or above this magnitude (full scale is 1) counts as clipped."""


IDENTITY_SIZE = 256
"""Crops are brought to this side before dlib's identity embedding (the evaluation's face measures' size)."""

_FACE_MEASURES: Any = None


def identity_distance(crops: np.ndarray) -> float:
    """Largest distance between dlib's 128-d identity embeddings of a segment's first, middle and last crop.

    A shot whose tracked face changes person (the detector jumped to another speaker, an
    interview's reverse shot without a hard cut) shows as a distance above dlib's 0.6
    same-person threshold. Three embeddings keep it cheap: about 0.1 s per segment.
    """
    global _FACE_MEASURES
    if _FACE_MEASURES is None:  # dlib's networks load once per worker process
        from ..metric_networks import FaceMeasures

        _FACE_MEASURES = FaceMeasures()
    picks = sorted({0, len(crops) // 2, len(crops) - 1})
    frames = np.stack(
        [
            np.asarray(Image.fromarray(crops[index]).resize((IDENTITY_SIZE, IDENTITY_SIZE), Image.Resampling.BILINEAR))
            for index in picks
        ]
    )
    _, embeddings = _FACE_MEASURES.measure(frames, _FACE_MEASURES.boxes(frames))
    distances = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)
    return float(distances.max())


def face_size(boxes: np.ndarray, scale: float = 1.0) -> float:
    """Median side of the crop box before resizing, in pixels of the source (``scale`` = source / decoded width)."""
    return float(np.median(boxes[:, 2] - boxes[:, 0]) * scale)


def laplacian_variance(image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image: low when the image is blurred."""
    grey = np.asarray(
        Image.fromarray(image).convert("L").resize((SHARPNESS_SIZE, SHARPNESS_SIZE), Image.Resampling.BILINEAR),
        np.float64,
    )
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    return float(laplacian.var())


def sharpness(crops: np.ndarray, every: int = 5) -> float:
    """Median variance of the Laplacian of the face crops (every ``every``-th frame)."""
    return float(np.median([laplacian_variance(crop) for crop in crops[::every]]))


def landmark_jitter(landmarks: np.ndarray) -> float:
    """Frame-to-frame landmark noise, as a fraction of the face's size.

    The mean size of the second difference over time of each landmark: smooth head
    motion has a small second difference, a landmark fit that jumps around does not.
    """
    if len(landmarks) < 3:
        return 0.0
    extent = float(np.median(np.ptp(landmarks, axis=1).max(axis=-1)))
    second = landmarks[2:] - 2 * landmarks[1:-1] + landmarks[:-2]
    return float(np.linalg.norm(second, axis=-1).mean() / max(extent, 1e-6))


def audio_dbfs(waveform: np.ndarray) -> float:
    """RMS level of the waveform in dBFS (-inf-safe: silence gives -240)."""
    rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64)))) if waveform.size else 0.0
    return 20 * math.log10(max(rms, 1e-12))


def clipped_share(waveform: np.ndarray) -> float:
    """Fraction of samples at full scale: clipped recordings distort the speech the model learns from."""
    return float(np.mean(np.abs(waveform) >= CLIP_LEVEL)) if waveform.size else 0.0


QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def dataset_stats(manifest: Manifest) -> dict[str, Any]:
    """What the segmentation and the gates did to the data, from the manifest alone.

    Hours decoded count every frame read from a video (a file skipped before its frames
    were decoded adds none); hours kept, the frames stored. Each measure's distribution
    is given over the stored segments and over every segment measured (skipped ones too),
    so the effect of a threshold shows as the gap between the two.
    """
    records = [*manifest.clips, *manifest.skipped]
    measured: dict[str, list[float]] = {}
    kept: dict[str, list[float]] = {}
    for record in records:
        for name, value in record.measures.items():
            measured.setdefault(name, []).append(value)
            if record.stored:
                kept.setdefault(name, []).append(value)
    totals = manifest.totals
    return {
        "videos": len({record.source for record in records}),
        "hours_decoded": round(sum(r.decoded_frames / r.fps for r in records if r.fps) / 3600, 4),
        "hours_kept": round(totals.seconds / 3600, 4),
        "segments_kept": totals.clips,
        "segments_skipped": totals.skipped,
        "skipped_by_reason": totals.skipped_by_reason,
        "measures": {
            name: {
                "quantiles": [f"{q:g}" for q in QUANTILES],
                "kept": _quantiles(kept.get(name, [])),
                "measured": _quantiles(values),
            }
            for name, values in sorted(measured.items())
        },
    }


def _quantiles(values: list[float]) -> list[float]:
    return [round(float(v), 5) for v in np.quantile(values, QUANTILES)] if values else []


def write_stats(manifest: Manifest, dest: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Publish ``DEST/stats.json`` (before the manifest, which is written last) and return the stats."""
    import json

    from ..storage import filesystem_for, publish_bytes

    stats = dataset_stats(manifest)
    fs, root = filesystem_for(dest, storage_options)
    publish_bytes(json.dumps(stats, indent=1).encode(), fs, f"{root}/{STATS_NAME}")
    return stats
