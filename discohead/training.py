"""Training pairs, batches, one optimisation step and the comparison grid.

The training job (``pipelines/train.py``) wires these into Ray; everything here is plain
PyTorch/NumPy so that it is unit-tested without a cluster.

A training example is a pair of frames of the same clip at different times: the source
``S`` gives the identity, and the driver frame ``D`` gives the head pose (whole frame),
the eye input (``D`` masked to its eye box) and the audio window; the target is ``D``
itself (paper §3.2, self-reconstruction).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .contracts import mask_to_eye_region
from .data.shards import decode_sample, filesystem_for, iter_shard
from .losses import DisCoHeadLoss
from .metrics import psnr, ssim
from .model import DisCoHead

PAIR_KEYS = ("source", "driver", "mel", "eye_box")
"""Columns of a batch of pairs: uint8 (H, W, 3) frames, float16 (n_mels, T) mel window, (4,) eye box."""


def training_chunks(row: Mapping[str, Any], storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chunks of the shard at ``row["path"]`` with the columns training uses.

    Shaped as a Ray Data ``flat_map`` function (a row in, rows out) so that the shards
    stream through Ray Data; the key is kept for data lineage.
    """
    fs, path = filesystem_for(row["path"], storage_options)
    chunks = []
    for sample in iter_shard(fs, path):
        decoded = decode_sample(sample)
        chunks.append({"key": decoded["__key__"], "frames": decoded["frames"], "mel": decoded["mel"], "eye_boxes": decoded["eye_boxes"]})
    return chunks


def draw_pairs(chunks: Iterable[Mapping[str, np.ndarray]], pairs_per_chunk: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``pairs_per_chunk`` (source, driver) pairs from each decoded shard sample.

    Source and driver are distinct frames of the chunk (consecutive frames of one clip)
    whenever it holds more than one frame.
    """
    columns: dict[str, list[np.ndarray]] = {key: [] for key in PAIR_KEYS}
    for chunk in chunks:
        count = len(chunk["frames"])
        drivers = rng.integers(0, count, size=pairs_per_chunk)
        if count > 1:
            sources = (drivers + rng.integers(1, count, size=pairs_per_chunk)) % count
        else:
            sources = drivers
        columns["source"].append(chunk["frames"][sources])
        columns["driver"].append(chunk["frames"][drivers])
        columns["mel"].append(chunk["mel"][drivers])
        columns["eye_box"].append(chunk["eye_boxes"][drivers])
    return {key: np.concatenate(values) if values else np.empty((0,)) for key, values in columns.items()}


def pair_batches(
    chunk_batches: Iterable[Mapping[str, np.ndarray]],
    batch_size: int,
    pairs_per_chunk: int,
    rng: np.random.Generator,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``batch_size`` pairs from a stream of chunk batches (columns ``frames``,
    ``mel``, ``eye_boxes`` with a leading chunk axis), shuffled within each chunk batch.

    The last incomplete batch of the stream is dropped so that every data-parallel worker
    takes the same number of steps.
    """
    pending: dict[str, np.ndarray] | None = None
    for columns in chunk_batches:
        chunks = [{key: columns[key][i] for key in ("frames", "mel", "eye_boxes")} for i in range(len(columns["frames"]))]
        pairs = draw_pairs(chunks, pairs_per_chunk, rng)
        order = rng.permutation(len(pairs["source"]))
        pairs = {key: value[order] for key, value in pairs.items()}
        pending = pairs if pending is None else {key: np.concatenate([pending[key], pairs[key]]) for key in PAIR_KEYS}
        while len(pending["source"]) >= batch_size:
            yield {key: value[:batch_size] for key, value in pending.items()}
            pending = {key: value[batch_size:] for key, value in pending.items()}


@dataclass
class ModelInputs:
    source: torch.Tensor
    head_driver: torch.Tensor
    eye_driver: torch.Tensor
    audio: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return len(self.source)


def _frames(frames: torch.Tensor | np.ndarray, image_size: int, device: torch.device | str) -> torch.Tensor:
    """uint8 (B, H, W, 3) to float (B, 3, S, S) in [0, 1], resized (anti-aliased) if needed."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.require(frames, requirements="W"))  # Ray hands out read-only views
    tensor = frames.to(device, non_blocking=True)
    tensor = tensor.permute(0, 3, 1, 2).float().div_(255)
    if tensor.shape[-1] != image_size or tensor.shape[-2] != image_size:
        if tensor.shape[-1] < image_size:
            raise ValueError(f"frames are {tensor.shape[-1]} px, smaller than the requested image size {image_size}")
        tensor = F.interpolate(tensor, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return tensor


def model_inputs(pairs: Mapping[str, torch.Tensor | np.ndarray], image_size: int, device: torch.device | str = "cpu") -> ModelInputs:
    """The model's four inputs and the target from a batch of :func:`draw_pairs` columns."""
    source = _frames(pairs["source"], image_size, device)
    driver = _frames(pairs["driver"], image_size, device)
    eye_boxes = torch.as_tensor(np.array(pairs["eye_box"])).to(device).float()
    audio = torch.as_tensor(np.array(pairs["mel"])).to(device).float()
    return ModelInputs(source, driver, mask_to_eye_region(driver, eye_boxes), audio, driver)


def train_step(
    model: torch.nn.Module,
    loss_fn: DisCoHeadLoss,
    optimizer: torch.optim.Optimizer,
    inputs: ModelInputs,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One Adam step on the reconstruction loss; returns the loss terms as floats."""
    model.train()
    device_type = inputs.source.device.type
    with torch.autocast(device_type=device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        prediction = model(inputs.source, inputs.head_driver, inputs.eye_driver, inputs.audio)["prediction"]
    terms = loss_fn(prediction.float(), inputs.target)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    return {name: value.item() for name, value in terms.items()}


@torch.no_grad()
def evaluate_batch(model: DisCoHead, inputs: ModelInputs) -> tuple[dict[str, float], torch.Tensor]:
    """PSNR/SSIM of the model on a fixed batch, and its predictions."""
    was_training = model.training
    model.eval()
    prediction = model(inputs.source, inputs.head_driver, inputs.eye_driver, inputs.audio)["prediction"].float()
    model.train(was_training)
    return {"psnr": psnr(prediction, inputs.target).item(), "ssim": ssim(prediction, inputs.target).item()}, prediction


def comparison_grid(inputs: ModelInputs, prediction: torch.Tensor, rows: int = 4) -> np.ndarray:
    """uint8 (rows*H, 5*W, 3) image: source | head driver | eye input | prediction | target."""
    columns = (inputs.source, inputs.head_driver, inputs.eye_driver, prediction, inputs.target)
    count = min(rows, len(inputs))
    tiles = torch.cat([torch.cat([column[i].float().cpu() for column in columns], dim=2) for i in range(count)], dim=1)
    return (tiles.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def format_eta(seconds_per_step: float, remaining_steps: int) -> str:
    """``H:MM:SS`` estimate of the time left."""
    seconds = int(math.ceil(max(seconds_per_step, 0.0) * max(remaining_steps, 0)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
