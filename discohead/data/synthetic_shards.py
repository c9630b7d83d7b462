"""Synthetic shards in the preprocessing job's exact format, for tests and demos of training.

A "clip" is a bright ellipse (a head) that drifts and turns over time on a dark
background, with a darker mouth whose opening follows the loudness of random audio.
Written with the same writer and manifest code as ``pipelines/preprocess.py``, so a
training run cannot tell them from real shards; they are documented as synthetic in
their manifest (``config.synthetic = true``). :func:`synthetic_chunks` gives the same
clips as in-memory chunks, for runs without shards (``discohead.smoke``, benchmarks).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..contracts import CHUNK_FRAMES, FPS, MEL, ClipConfig
from ..manifest import ClipRecord, Manifest
from .shards import ShardWriterTask, encode_sample


def synthetic_clip(frames: int, image_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Frames (T, S, S, 3) uint8, mel windows (T, n_mels, window), landmarks-free eye boxes (T, 4)."""
    time = np.arange(frames) / FPS
    phase = rng.uniform(0, 2 * math.pi, size=3)
    centre_x = 0.5 + 0.08 * np.sin(2 * math.pi * 0.3 * time + phase[0])
    centre_y = 0.5 + 0.05 * np.sin(2 * math.pi * 0.2 * time + phase[1])
    angle = 0.15 * np.sin(2 * math.pi * 0.25 * time + phase[2])
    loudness = np.clip(0.5 + 0.5 * np.sin(2 * math.pi * 2.0 * time + rng.uniform(0, 6)), 0, 1)
    skin = rng.uniform(0.5, 0.9, size=3)
    background = rng.uniform(0.05, 0.3, size=3)

    coords = (np.arange(image_size) + 0.5) / image_size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    video = np.empty((frames, image_size, image_size, 3), dtype=np.uint8)
    eye_boxes = np.empty((frames, 4), dtype=np.float32)
    for t in range(frames):
        dx, dy = x - centre_x[t], y - centre_y[t]
        u = dx * math.cos(angle[t]) + dy * math.sin(angle[t])
        v = -dx * math.sin(angle[t]) + dy * math.cos(angle[t])
        head = (u / 0.22) ** 2 + (v / 0.3) ** 2 <= 1
        mouth = (u / 0.08) ** 2 + ((v - 0.15) / (0.01 + 0.04 * loudness[t])) ** 2 <= 1
        eyes = ((np.abs(u) - 0.08) / 0.035) ** 2 + ((v + 0.08) / 0.02) ** 2 <= 1
        image = np.where(head[..., None], skin, background)
        image = np.where((head & (mouth | eyes))[..., None], skin * 0.3, image)
        video[t] = (image * 255).round().astype(np.uint8)
        eye_boxes[t] = [centre_x[t] - 0.17, centre_y[t] - 0.13, centre_x[t] + 0.17, centre_y[t] - 0.03]
    mel = rng.normal(size=(frames, MEL.n_mels, MEL.window_frames)).astype(np.float32)
    mel += (4 * loudness - 2)[:, None, None]
    return {"frames": video, "mel": mel.astype(np.float16), "eye_boxes": np.clip(eye_boxes, 0, 1)}


def synthetic_chunks(
    clips: int, frames_per_clip: int, image_size: int, chunk_frames: int = CHUNK_FRAMES, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Synthetic clips cut into chunks with the columns training reads (``key``, ``frames``, ``mel``, ``eye_boxes``)."""
    rng = np.random.default_rng(seed)
    chunks = []
    for index in range(clips):
        clip = synthetic_clip(frames_per_clip, image_size, rng)
        for chunk in range(frames_per_clip // chunk_frames):
            part = slice(chunk * chunk_frames, (chunk + 1) * chunk_frames)
            chunks.append(
                {
                    "key": f"synthetic-{seed}-{index:03d}-{chunk:05d}",
                    **{name: clip[name][part] for name in ("frames", "mel", "eye_boxes")},
                }
            )
    return chunks


def write_synthetic_shards(
    dest: str,
    clips: int = 4,
    frames_per_clip: int = 2 * CHUNK_FRAMES,
    image_size: int = 64,
    chunk_frames: int = CHUNK_FRAMES,
    seed: int = 0,
    storage_options: dict[str, Any] | None = None,
) -> Manifest:
    """Write ``clips`` synthetic clips as train/test shards plus a manifest; returns the manifest.

    Each clip's chunks go to train except its last, which goes to test (a split by time).
    """
    config = ClipConfig(image_size=image_size, chunk_frames=chunk_frames, split_mode="time", seed=seed)
    rng = np.random.default_rng(seed)
    writer = ShardWriterTask(dest, storage_options, name=f"synthetic-{seed}", target_bytes=64 * 2**20)
    for index in range(clips):
        clip_id = f"synthetic-{seed}-{index:03d}"
        clip = synthetic_clip(frames_per_clip, image_size, rng)
        record = ClipRecord(
            clip_id=clip_id, source=f"synthetic://{clip_id}", status="ok", frames=frames_per_clip, fps=float(FPS)
        )
        count = frames_per_clip // chunk_frames
        samples = []
        for chunk in range(count):
            part = slice(chunk * chunk_frames, (chunk + 1) * chunk_frames)
            split = "test" if chunk == count - 1 and count > 1 else "train"
            landmarks = np.zeros((chunk_frames, 68, 2), dtype=np.float32)
            meta = {
                "clip_id": clip_id,
                "source": record.source,
                "chunk": chunk,
                "first_frame": chunk * chunk_frames,
                "fps": FPS,
                "image_size": image_size,
            }
            samples.append(
                (
                    split,
                    encode_sample(
                        f"{clip_id}-{chunk:05d}",
                        clip["frames"][part],
                        clip["mel"][part],
                        landmarks,
                        clip["eye_boxes"][part],
                        meta,
                    ),
                )
            )
        record.split = "time"
        writer.add_clip(record, samples)
    commit = writer.commit(extra={"config_hash": "synthetic"})
    manifest = Manifest.build(config, "none", [commit], run={"id": f"synthetic-{seed}"}, synthetic=True)
    manifest.write(dest, storage_options)
    return manifest
