"""The training loop (:func:`fit`) and its parts: pairs, batches, one step, the comparison grid.

The training job (``pipelines/train.py``) runs :func:`fit` on each Ray Train worker; the
smoke run, the benchmarks and the tests run the same function without Ray. Everything
here is plain PyTorch/NumPy: Ray enters only through what the caller passes in (the
chunk stream, the reporter, the model wrapper).

A training example is a pair of frames of the same clip at different times: the source
``S`` gives the identity, and the driver frame ``D`` gives the head pose (whole frame),
the eye input (``D`` masked to its eye box) and the audio window; the target is ``D``
itself (paper §3.2, self-reconstruction).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .contracts import TrainingState, mask_to_eye_region
from .data.shards import decode_sample, iter_shard, iter_split
from .losses import DisCoHeadLoss
from .manifest import Manifest
from .metrics import psnr, ssim
from .model import DisCoHead
from .storage import filesystem_for
from .train_config import TrainConfig

PAIR_KEYS = ("source", "driver", "mel", "eye_box")
"""Columns of a batch of pairs: uint8 (H, W, 3) frames, float16 (n_mels, T) mel window, (4,) eye box."""


def training_chunks(
    row: Mapping[str, Any], storage_options: dict[str, Any] | None = None, sources_per_chunk: int = 0
) -> list[dict[str, Any]]:
    """The chunks of the shard at ``row["path"]`` with the columns training uses.

    Shaped as a Ray Data ``flat_map`` function (a row in, rows out) so that the shards
    stream through Ray Data; the key is kept for data lineage. With ``sources_per_chunk``
    each chunk also carries that many ``sources``: frames drawn from anywhere in its clip
    (a shard holds all of a clip's chunks of one split), so a training source can lie far
    from its driver in time, as at evaluation and generation, where the source is the
    clip's first frame (or a photo) and the drivers run for seconds.
    """
    fs, path = filesystem_for(row["path"], storage_options)
    chunks, clips = [], {}
    for sample in iter_shard(fs, path):
        decoded = decode_sample(sample)
        chunks.append({"key": decoded["__key__"], **{name: decoded[name] for name in ("frames", "mel", "eye_boxes")}})
        clips.setdefault(decoded["meta"].get("clip_id", decoded["__key__"]), []).append(chunks[-1])
    if sources_per_chunk:
        rng = np.random.default_rng()
        for members in clips.values():
            frames = np.concatenate([chunk["frames"] for chunk in members])  # the clip's frames in this shard
            for chunk in members:
                chunk["sources"] = frames[rng.integers(0, len(frames), size=sources_per_chunk)]
    return chunks


def fixed_pairs(
    dest: str, manifest: Manifest, seed: int, storage_options: dict[str, Any] | None = None, count: int = 8
) -> dict[str, np.ndarray]:
    """A fixed batch of test-split pairs (train split if there is no test split): PSNR/SSIM and the sample grid."""
    chunks = []
    for chunk in iter_split(dest, "test" if manifest.shards["test"] else "train", storage_options):
        chunks.append(chunk)
        if len(chunks) * 2 >= count:
            break
    pairs = draw_pairs(chunks, pairs_per_chunk=max(1, -(-count // len(chunks))), rng=np.random.default_rng(seed))
    return {key: value[:count] for key, value in pairs.items()}


def draw_pairs(
    chunks: Iterable[Mapping[str, np.ndarray]], pairs_per_chunk: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """``pairs_per_chunk`` (source, driver) pairs from each decoded shard sample.

    The driver is a frame of the chunk. The source is one of the chunk's ``sources`` (frames
    from anywhere in its clip, see :func:`training_chunks`) when it has them, else another
    frame of the chunk itself (consecutive frames of one clip) whenever it holds more than one.
    """
    columns: dict[str, list[np.ndarray]] = {key: [] for key in PAIR_KEYS}
    for chunk in chunks:
        count = len(chunk["frames"])
        drivers = rng.integers(0, count, size=pairs_per_chunk)
        if "sources" in chunk:
            columns["source"].append(chunk["sources"][rng.integers(0, len(chunk["sources"]), size=pairs_per_chunk)])
        else:
            sources = (drivers + rng.integers(1, count, size=pairs_per_chunk)) % count if count > 1 else drivers
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
    ``mel``, ``eye_boxes`` and optionally ``sources``, with a leading chunk axis), shuffled
    within each chunk batch.

    The last incomplete batch of the stream is dropped so that every data-parallel worker
    takes the same number of steps.
    """
    pending: dict[str, np.ndarray] | None = None
    for columns in chunk_batches:
        keys = [key for key in ("frames", "mel", "eye_boxes", "sources") if key in columns]
        chunks = [{key: columns[key][i] for key in keys} for i in range(len(columns["frames"]))]
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
        tensor = F.interpolate(
            tensor, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        ).clamp_(0, 1)
    return tensor


def model_inputs(
    pairs: Mapping[str, torch.Tensor | np.ndarray], image_size: int, device: torch.device | str = "cpu"
) -> ModelInputs:
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
    with torch.autocast(
        device_type=device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
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


# --- the loop ------------------------------------------------------------------------


class Reporter:
    """What :func:`fit` tells the outside world. This base class ignores everything.

    ``checkpoint`` is called on every worker at the same steps (Ray Train's report is a
    barrier), with the checkpoint itself on rank 0 only; ``log`` and ``image`` are called
    on rank 0; ``chunks_seen`` on every worker after its first pass over the data.
    """

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def checkpoint(self, step: int, checkpoint: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        pass

    def image(self, step: int, grid: np.ndarray) -> None:
        pass

    def chunks_seen(self, keys: list[str]) -> None:
        pass

    def finish(self, model: DisCoHead, config: TrainConfig) -> None:
        pass


ChunkStream = Callable[[int], Iterable[Mapping[str, np.ndarray]]]
"""Epoch number -> that pass's chunk batches (columns ``frames``, ``mel``, ``eye_boxes``,
optionally ``key``, each with a leading chunk axis)."""


def in_memory_chunks(chunks: list[Mapping[str, np.ndarray]], chunks_per_fetch: int, seed: int = 0) -> ChunkStream:
    """A :data:`ChunkStream` over chunks held in memory, shuffled anew each pass (for runs without Ray)."""

    def stream(epoch: int) -> Iterator[dict[str, np.ndarray]]:
        order = np.random.default_rng([seed, epoch]).permutation(len(chunks))
        for start in range(0, len(order), chunks_per_fetch):
            picked = [chunks[i] for i in order[start : start + chunks_per_fetch]]
            yield {key: np.stack([chunk[key] for chunk in picked]) for key in picked[0]}

    return stream


def _mean_across_workers(terms: dict[str, float], device: torch.device) -> dict[str, float]:
    names = sorted(terms)
    values = torch.tensor([terms[name] for name in names], device=device, dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
        values /= torch.distributed.get_world_size()
    return {f"loss_{name}": value for name, value in zip(names, values.tolist())}


def _recording(
    stream: Iterable[Mapping[str, np.ndarray]], keys: list[str] | None
) -> Iterator[Mapping[str, np.ndarray]]:
    for columns in stream:
        if keys is not None and "key" in columns:
            keys.extend(str(key) for key in columns["key"])
        yield columns


def fit(
    config: TrainConfig,
    batches: ChunkStream,
    report: Reporter | None = None,
    *,
    checkpoint: dict[str, Any] | None = None,
    test_pairs: Mapping[str, np.ndarray] | None = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> DisCoHead:
    """Train ``config.variant`` for ``config.max_steps`` steps; returns the trained model.

    ``checkpoint`` (a loaded training checkpoint) resumes: weights, optimizer and the
    position in the data, replaying the current pass up to where it stopped. ``wrap``
    puts the model on its device for data parallelism (Ray Train's ``prepare_model``);
    without it the model moves to ``device``. ``test_pairs`` (rank 0) is a fixed batch
    scored (PSNR/SSIM) at each log step and drawn as the sample grid.
    """
    report = report or Reporter()
    device = torch.device(device)
    torch.manual_seed(config.seed)
    model_config = config.model_config()
    model: torch.nn.Module = DisCoHead(model_config)
    state = TrainingState()
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        state = TrainingState.from_checkpoint(checkpoint)
        if rank == 0:
            print(
                f"[train {config.variant}] resuming from step {state.step} (epoch {state.epoch}, batch "
                f"{state.batches_in_epoch})",
                flush=True,
            )
    model = wrap(model) if wrap else model.to(device)
    core: DisCoHead = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if state.optimizer:  # after the move to the device: the state goes beside its parameters
        optimizer.load_state_dict(state.optimizer)
    loss_fn = DisCoHeadLoss(config.perceptual_weight, config.vgg_weights).to(device)
    test_inputs = model_inputs(test_pairs, model_config.image_size, device) if test_pairs is not None else None
    autocast = torch.bfloat16 if device.type == "cuda" else None

    step, epoch, done = state.step, state.epoch, state.batches_in_epoch
    max_steps = config.steps
    started, steps_timed = time.perf_counter(), 0
    while step < max_steps:
        rng = np.random.default_rng([config.seed, rank, epoch])
        keys: list[str] | None = [] if epoch == 0 else None
        for index, batch in enumerate(
            pair_batches(_recording(batches(epoch), keys), config.per_worker_batch, config.pairs_per_chunk, rng)
        ):
            if index < done:
                continue  # replaying the pass up to where the checkpoint left it
            terms = train_step(
                model, loss_fn, optimizer, model_inputs(batch, model_config.image_size, device), autocast
            )
            step, done, steps_timed = step + 1, index + 1, steps_timed + 1
            last = step >= max_steps
            if step % config.log_every == 0 or last:
                seconds_per_step = (time.perf_counter() - started) / steps_timed
                metrics = _mean_across_workers(terms, device)
                metrics["samples_per_second"] = config.per_worker_batch * world_size / seconds_per_step
                metrics["eta_seconds"] = seconds_per_step * (max_steps - step)
                if rank == 0:
                    if test_inputs is not None:
                        metrics.update(evaluate_batch(core, test_inputs)[0])
                    report.log(step, metrics)
                    print(
                        f"[train {config.variant}] step {step}/{max_steps}  loss {metrics['loss_total']:.4f}  "
                        f"psnr {metrics.get('psnr', float('nan')):.2f}  {metrics['samples_per_second']:.1f} samples/s  "
                        f"ETA {format_eta(seconds_per_step, max_steps - step)}",
                        flush=True,
                    )
                started, steps_timed = time.perf_counter(), 0
            if step % config.checkpoint_every == 0 or last:
                saved = None
                if rank == 0:
                    training = TrainingState(step, epoch, done, optimizer.state_dict(), config.to_dict())
                    saved = core.checkpoint(**training.to_checkpoint())
                report.checkpoint(step, saved, {"step": step, "loss": terms["total"]})
            if rank == 0 and test_inputs is not None and (step % config.image_steps == 0 or last):
                report.image(step, comparison_grid(test_inputs, evaluate_batch(core, test_inputs)[1]))
            if last:
                break
        if done == 0:
            raise RuntimeError(
                f"worker {rank} received no full batch in a pass over the data: use fewer workers, a smaller "
                "--batch-size or more clips"
            )
        if keys:
            report.chunks_seen(keys)
        epoch, done = epoch + 1, 0
    report.finish(core, config)
    return core
