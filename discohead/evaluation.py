"""Reconstruction evaluation (paper §3.3): drive each test clip's first frame with its own test frames.

For every clip with test frames, the source is the clip's first stored frame and each
test frame is the head driver, the eye driver (masked to its eye box) and the audio
window; the prediction is compared with that test frame. Two baselines put the numbers
in scale: copying the source unchanged, and the source warped by the predicted head
motion alone (``S_T``), which shows what the encoder and decoder add.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .contracts import SPLITS
from .data.shards import iter_split
from .metrics import psnr, ssim
from .model import DisCoHead
from .training import model_inputs


@dataclass
class ClipFrames:
    """A test clip: its first frame (the source) and its test frames with their inputs."""

    clip_id: str
    source: np.ndarray
    driver: np.ndarray
    mel: np.ndarray
    eye_boxes: np.ndarray


def clips_with_test_frames(dest: str, storage_options: dict[str, Any] | None = None) -> Iterator[ClipFrames]:
    """Every clip that has test chunks, with the first frame it has in any split."""
    first: dict[str, tuple[int, np.ndarray]] = {}
    tests: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        for chunk in iter_split(dest, split, storage_options):
            clip_id, start = chunk["meta"]["clip_id"], chunk["meta"]["first_frame"]
            if clip_id not in first or start < first[clip_id][0]:
                first[clip_id] = (start, chunk["frames"][0])
            if split == "test":
                tests.setdefault(clip_id, []).append(chunk)
    for clip_id, chunks in sorted(tests.items()):
        chunks.sort(key=lambda chunk: chunk["meta"]["first_frame"])
        yield ClipFrames(
            clip_id,
            first[clip_id][1],
            np.concatenate([chunk["frames"] for chunk in chunks]),
            np.concatenate([chunk["mel"] for chunk in chunks]),
            np.concatenate([chunk["eye_boxes"] for chunk in chunks]),
        )


@dataclass
class ReconstructionScores:
    """Frame-averaged PSNR (dB) and SSIM of the model and of the two baselines."""

    frames: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float, count: int) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value * count

    def mean(self) -> dict[str, float]:
        return {name: total / self.frames for name, total in self.sums.items()} if self.frames else {}


@torch.no_grad()
def evaluate_reconstruction(
    model: DisCoHead,
    dest: str,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, float]:
    """``{model,copy,warp}_{psnr,ssim}`` and ``frames`` over the test split of ``dest``."""
    model = model.to(device).eval()
    size = model.config.image_size
    scores = ReconstructionScores()
    for clip in clips_with_test_frames(dest, storage_options):
        for start in range(0, len(clip.driver), batch_size):
            part = slice(start, start + batch_size)
            count = len(clip.driver[part])
            pairs = {
                "source": np.repeat(clip.source[None], count, axis=0),
                "driver": clip.driver[part],
                "mel": clip.mel[part],
                "eye_box": clip.eye_boxes[part],
            }
            inputs = model_inputs(pairs, size, device)
            out = model(inputs.source, inputs.head_driver, inputs.eye_driver, inputs.audio)
            for name, frames in (
                ("model", out["prediction"]),
                ("copy", inputs.source),
                ("warp", out["transformed_source"]),
            ):
                scores.add(f"{name}_psnr", psnr(frames, inputs.target).item(), count)
                scores.add(f"{name}_ssim", ssim(frames, inputs.target).item(), count)
            scores.frames += count
    return {**scores.mean(), "frames": scores.frames}
