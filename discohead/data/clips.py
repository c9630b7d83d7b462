"""One video in, one :class:`ClipResult` out: the whole per-clip preprocessing, without Ray.

Order matters for speed on bad input: the cheap checks (streams, length, audio) run
before the landmark pass, which is the costly part. Every way a file can be unusable
ends in a skip with a short reason code (see ``SKIP_REASONS``) rather than an exception.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audio import clip_windows
from ..contracts import ClipConfig, eye_box_from_landmarks
from ..manifest import ClipRecord
from .crop import crop_and_resize, crop_boxes, fill_missing, landmarks_to_crop
from .landmarks import LandmarkBackend, track_largest_face
from .shards import encode_sample
from .video import (
    MediaError,
    ffmpeg_timeout,
    iter_video_frames,
    probe_and_decode_audio,
    reconcile_lengths,
    scaled_size,
)

SKIP_REASONS = {
    "empty_file": "the file has zero bytes",
    "not_a_video": "not a media file ffmpeg may open: unrecognised, or a playlist / script / device input",
    "corrupt": "truncated or damaged: frames or audio could not be decoded",
    "no_video_stream": "audio-only file",
    "no_audio_stream": "no audio stream (use --allow-silent to keep such clips)",
    "silent_audio": "the audio track is digital silence (use --allow-silent to keep such clips)",
    "too_short": "fewer usable frames than one chunk (--chunk-frames)",
    "too_long": "longer than --max-seconds (by its header, or by decoding when the header has no duration)",
    "no_face": "no face found in too many frames (--max-missing-face)",
    "not_found": "an --input (or a listed path) names no existing file",
    "unreadable_input": "the input (or an entry of a list file) could not be read or fetched from storage",
    "timeout": "ffmpeg ran past its timeout (--ffmpeg-timeout) on the file",
    "failed": "an unexpected error while processing (the detail has it)",
}
"""Every skip reason the manifest can record, with what it means."""


@dataclass
class ClipResult:
    """The manifest record of a clip and, when it was stored, its encoded ``(split, sample)`` pairs."""

    record: ClipRecord
    samples: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def clip_id_for(source: str) -> str:
    """Readable, unique and WebDataset-safe id: the file stem plus a hash of the full source."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(source.rstrip("/")).stem).strip("-") or "clip"
    return f"{stem[:60]}-{hashlib.sha1(source.encode()).hexdigest()[:8]}"


def assign_clip_splits(clip_ids: list[str], train_ratio: float, seed: int) -> dict[str, str]:
    """Deterministic by-clip split: clips ranked by a seeded hash, the first ``train_ratio`` train.

    The ranking depends only on ids and seed, so reruns agree; with two or more clips at
    least one goes to each split.
    """
    ranked = sorted(clip_ids, key=lambda clip: hashlib.sha1(f"{seed}:{clip}".encode()).hexdigest())
    train_count = round(len(ranked) * train_ratio)
    if len(ranked) >= 2:
        train_count = min(max(train_count, 1), len(ranked) - 1)
    return {clip: ("train" if rank < train_count else "test") for rank, clip in enumerate(ranked)}


def time_split(num_chunks: int, train_ratio: float) -> list[str]:
    """By-time split of one clip's chunks: the first ``train_ratio`` train, the rest test."""
    test_count = num_chunks - round(num_chunks * train_ratio) if num_chunks >= 2 else 0
    if num_chunks >= 2:
        test_count = min(max(test_count, 1), num_chunks - 1)
    return ["train"] * (num_chunks - test_count) + ["test"] * test_count


KEEP_FRAMES_BYTES = 512 * 1024**2
"""Up to this many bytes of decoded frames are kept from the landmark pass for cropping;
longer (or larger) clips are decoded a second time instead of held in memory."""


def _keeping(frames: Iterator[np.ndarray], kept: list[np.ndarray] | None) -> Iterator[np.ndarray]:
    for frame in frames:
        if kept is not None:
            kept.append(frame)
        yield frame


def _skip(record: ClipRecord, reason: str, detail: str) -> ClipResult:
    record.status, record.reason, record.detail = "skipped", reason, detail
    return ClipResult(record)


def is_silent(waveform: np.ndarray, dbfs: float) -> bool:
    if waveform.size == 0:
        return True
    rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64))))
    return rms <= 10 ** (dbfs / 20)


def process_clip(
    path: str | Path,
    source: str,
    clip_id: str,
    backend: LandmarkBackend,
    config: ClipConfig,
    split: str | None = None,
    *,
    ffmpeg_timeout_s: float | None = None,
) -> ClipResult:
    """Decode, track, crop and chunk one local video; ``split`` is required in clip mode.

    ``source`` is what the manifest shows (the original URI); ``path`` is where the
    bytes are now. ``ffmpeg_timeout_s`` bounds each ffmpeg run (default: derived from
    ``config.max_seconds`` by :func:`~discohead.data.video.ffmpeg_timeout`); it is not a
    :class:`ClipConfig` field because it never changes a stored shard's bytes and a
    slower machine must be able to raise it without invalidating the DEST it resumes.
    """
    record = ClipRecord(clip_id=clip_id, source=source, status="ok", fps=float(config.fps))
    timeout_s = ffmpeg_timeout(config.max_seconds) if ffmpeg_timeout_s is None else ffmpeg_timeout_s
    try:
        return _process(Path(path), record, backend, config, split, timeout_s)
    except MediaError as error:
        return _skip(record, error.reason, error.detail)


def max_clip_frames(config: ClipConfig) -> int:
    """Most frames a clip of ``--max-seconds`` yields at the target fps, plus one of rounding slack."""
    return int(config.max_seconds * config.fps + 1e-6) + 1


def _process(
    path: Path, record: ClipRecord, backend: LandmarkBackend, config: ClipConfig, split: str | None, timeout_s: float
) -> ClipResult:
    sample_rate = config.mel.sample_rate
    info, waveform = probe_and_decode_audio(path, sample_rate, config.max_seconds, timeout_s=timeout_s)
    if not info.has_video:
        return _skip(
            record,
            "no_video_stream",
            f"only an audio stream ({info.audio_codec})" if info.has_audio else "no stream ffmpeg can decode",
        )
    if info.duration is not None and info.duration > config.max_seconds:
        return _skip(record, "too_long", f"{info.duration:.1f}s > --max-seconds {config.max_seconds:g}")
    notes = record.notes
    if info.fps and abs(info.fps - config.fps) > 0.01:
        notes.append(f"resampled from {info.fps:g} to {config.fps} fps")
    if info.height > info.width:
        notes.append(f"vertical frame {info.width}x{info.height}")
    if max(info.width, info.height) > config.max_frame_side:
        notes.append(f"large frame {info.width}x{info.height} decoded at most {config.max_frame_side} px a side")

    if waveform is not None:
        if is_silent(waveform, config.silence_dbfs):
            if not config.allow_silent:
                return _skip(record, "silent_audio", f"audio RMS below {config.silence_dbfs:g} dBFS")
            notes.append("silent audio kept (--allow-silent)")
    elif not config.allow_silent:
        return _skip(record, "no_audio_stream", "the file has a video stream only")
    else:
        notes.append("no audio stream: silence used (--allow-silent)")

    crop_width, crop_height = scaled_size(info.width, info.height, config.max_frame_side)
    detect_width, detect_height = scaled_size(info.width, info.height, config.detect_max_side)
    expected_bytes = (info.duration or config.max_seconds) * config.fps * crop_width * crop_height * 3
    kept: list[np.ndarray] | None = (
        []
        if (crop_width, crop_height) == (detect_width, detect_height) and expected_bytes <= KEEP_FRAMES_BYTES
        else None
    )
    # Bounded whatever the header says (a raw .h264 stream has no duration): ffmpeg stops a
    # second past the limit, and a frame past it ends the clip as too_long right away.
    bounds = {"max_seconds": config.max_seconds + 1, "max_frames": max_clip_frames(config), "timeout_s": timeout_s}
    try:
        track = track_largest_face(
            _keeping(iter_video_frames(path, config.fps, detect_width, detect_height, **bounds), kept),
            backend,
            scale=crop_width / detect_width,
            detect_every=config.detect_every,
        )
    except MediaError as error:
        if error.reason != "too_long":
            raise
        raise MediaError("too_long", f"{error.detail} > --max-seconds {config.max_seconds:g}") from None
    decoded = len(track)
    record.decoded_frames = decoded
    if info.duration and decoded < 0.9 * info.duration * config.fps - 2:
        return _skip(
            record, "corrupt", f"decoded only {decoded} of about {info.duration * config.fps:.0f} frames (truncated?)"
        )
    if waveform is None:
        waveform = np.zeros(int(round(decoded / config.fps * sample_rate)), np.float32)
    num_frames, waveform, note = reconcile_lengths(decoded, waveform, config.fps, sample_rate, config.audio_tolerance_s)
    if note:
        notes.append(note)
    chunk_frames = config.chunk_frames
    if num_frames < chunk_frames:
        return _skip(record, "too_short", f"{num_frames} usable frames < {chunk_frames}")
    found = track.found[:num_frames]
    missing = 1.0 - float(found.mean())
    if missing > config.max_missing_face:
        return _skip(record, "no_face", f"no face in {missing:.0%} of frames (limit {config.max_missing_face:.0%})")
    several = int((track.face_counts[:num_frames] > 1).sum())
    if several:
        notes.append(f"several faces in {several} detections: tracked the largest")
    if not found.all():
        notes.append(f"no face in {int((~found).sum())} frames: landmarks interpolated")

    landmarks = fill_missing(track.landmarks[:num_frames].reshape(num_frames, -1)).reshape(num_frames, 68, 2)
    boxes = crop_boxes(landmarks, crop_width, crop_height, config.smoothing_sigma, config.crop_scale, config.crop_lift)
    size = config.image_size
    crops = np.empty((num_frames, size, size, 3), np.uint8)
    cropped = 0
    second_pass = kept if kept is not None else iter_video_frames(path, config.fps, crop_width, crop_height, **bounds)
    for index, frame in enumerate(second_pass):
        if index >= num_frames:
            break
        crops[index] = crop_and_resize(frame, boxes[index], size)
        cropped += 1
    if cropped < num_frames:
        return _skip(record, "corrupt", f"second decoding pass gave {cropped} of {num_frames} frames")

    crop_landmarks = landmarks_to_crop(landmarks, boxes, size)
    eye_boxes = eye_box_from_landmarks(torch.from_numpy(crop_landmarks), size).numpy()
    mel = clip_windows(torch.from_numpy(waveform), num_frames, config.fps, config.mel).numpy().astype(np.float16)

    num_chunks = num_frames // chunk_frames
    if config.split_mode == "clip":
        if split is None:
            raise ValueError("split mode 'clip' needs the clip's split")
        splits = [split] * num_chunks
        record.split = split
    else:
        splits = time_split(num_chunks, config.train_ratio)
        record.split = "time"
    samples = []
    for chunk, chunk_split in enumerate(splits):
        first = chunk * chunk_frames
        window = slice(first, first + chunk_frames)
        meta = {
            "clip_id": record.clip_id,
            "source": record.source,
            "chunk": chunk,
            "first_frame": first,
            "fps": config.fps,
            "image_size": size,
            "split": chunk_split,
        }
        samples.append(
            (
                chunk_split,
                encode_sample(
                    f"{record.clip_id}_{chunk:04d}",
                    crops[window],
                    mel[window],
                    crop_landmarks[window],
                    eye_boxes[window],
                    meta,
                ),
            )
        )
    record.frames = num_chunks * chunk_frames
    if num_frames > record.frames:
        notes.append(f"last {num_frames - record.frames} frames dropped (not a whole chunk)")
    return ClipResult(record, samples)
