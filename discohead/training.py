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
from .data.shards import SAMPLE_ERRORS, decode_sample, iter_shard
from .losses import DisCoHeadLoss
from .manifest import Manifest, ShardFormatError
from .metrics import psnr, ssim
from .model import DisCoHead
from .storage import filesystem_for
from .train_config import TrainConfig

PAIR_KEYS = ("source", "driver", "mel", "eye_box")
"""Columns of a batch of pairs: uint8 (H, W, 3) frames, float16 (n_mels, T) mel window, (4,) eye box."""


ACCOUNT_KEYS = ("shard", "bad_samples", "bad_reason", "usable")
"""Columns :func:`training_chunks` adds for the shard rows of :func:`shard_rows`: the shard, the
count of its unreadable samples and the first reason (on its first row only), and whether the
row is a chunk to train on (a shard with no readable sample sends one placeholder row, so that
its count still reaches the worker)."""


class TooManyBadSamples(ValueError):
    """More training samples are unreadable than ``--max-bad-samples`` allows."""


def shard_rows(manifest: Manifest, dest: str) -> list[dict[str, Any]]:
    """One row per training shard for :func:`training_chunks`: its URL, its name and how many
    samples the manifest says it holds (a clip never straddles two tars of a split), so a
    shard cut short counts its missing samples as bad."""
    samples: dict[str, int] = {}
    for clip in manifest.clips:
        for shard in clip.shards:
            samples[shard] = samples.get(shard, 0) + clip.chunks.get(shard.split("/", 1)[0], 0)
    root = manifest.shard_root(dest)
    return [
        {"path": f"{root}/{shard}", "shard": shard, "samples": samples.get(shard, 0)}
        for shard in manifest.shards.get("train", [])
    ]


def chunk_shapes(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """The shapes every chunk of these shards has; a sample of another shape is unreadable."""
    frames, size, mel = manifest.config.chunk_frames, manifest.image_size, manifest.mel
    return {"frames": (frames, size, size, 3), "mel": (frames, mel.n_mels, mel.window_frames), "eye_boxes": (frames, 4)}


_DTYPES = {"frames": np.uint8, "mel": np.float16, "eye_boxes": np.float32}


def check_chunk(chunk: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Raise ValueError unless a decoded sample is a chunk training can use: its arrays of the
    shard schema's types and of ``shapes`` (else of one length), the mel windows and eye boxes finite."""
    for name, dtype in _DTYPES.items():
        array = chunk[name]
        if not isinstance(array, np.ndarray) or array.dtype != dtype:
            raise ValueError(f"{name}.npy is not a {np.dtype(dtype).name} array")
        if shapes is not None and array.shape != tuple(shapes[name]):
            raise ValueError(f"{name}.npy has shape {array.shape}, the shards' is {tuple(shapes[name])}")
    frames = chunk["frames"]
    if frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"frames.npy has shape {frames.shape}, not (T, H, W, 3)")
    if not len(chunk["mel"]) == len(chunk["eye_boxes"]) == len(frames):
        raise ValueError("frames.npy, mel.npy and eye_boxes.npy differ in length")
    if not (np.isfinite(chunk["mel"]).all() and np.isfinite(chunk["eye_boxes"]).all()):
        raise ValueError("mel.npy or eye_boxes.npy holds NaN or infinite values")


def training_chunks(
    row: Mapping[str, Any],
    storage_options: dict[str, Any] | None = None,
    sources_per_chunk: int = 0,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    keep_clips: frozenset[str] | None = None,
) -> list[dict[str, Any]]:
    """The chunks of the shard at ``row["path"]`` with the columns training uses.

    Shaped as a Ray Data ``flat_map`` function (a row in, rows out) so that the shards
    stream through Ray Data; the key is kept for data lineage. With ``sources_per_chunk``
    each chunk also carries that many ``sources``: frames drawn from anywhere in its clip
    (a shard holds all of a clip's chunks of one split), so a training source can lie far
    from its driver in time, as at evaluation and generation, where the source is the
    clip's first frame (or a photo) and the drivers run for seconds.

    A sample that cannot be read (damaged ``meta.json``, a ``.npy`` that is missing, damaged,
    of another shape than ``shapes`` or not finite) is skipped rather than failing the read
    task: Ray Train would restart the workers on the same shard until ``--max-failures`` is
    used up. For a row of :func:`shard_rows` the skipped samples (with those the manifest
    lists but the tar no longer holds) are counted in the :data:`ACCOUNT_KEYS` columns, and
    :func:`fit` decides whether the run may go on. ``keep_clips`` (a view's
    :attr:`~discohead.manifest.Manifest.clip_filter`) keeps only those clips' samples.
    """
    fs, path = filesystem_for(row["path"], storage_options)
    chunks, clips, bad, reason = [], {}, 0, ""
    try:
        for sample in iter_shard(fs, path):
            try:
                decoded = decode_sample(sample)
                if keep_clips is not None and decoded["meta"].get("clip_id") not in keep_clips:
                    continue
                chunk = {name: decoded[name] for name in ("frames", "mel", "eye_boxes")}
                check_chunk(chunk, shapes)
            except SAMPLE_ERRORS as error:
                bad += 1
                reason = reason or f"sample {sample.get('__key__')}: {type(error).__name__}: {error}"
                continue
            chunks.append({"key": decoded["__key__"], **chunk})
            clips.setdefault(decoded["meta"].get("clip_id", decoded["__key__"]), []).append(chunks[-1])
    except SAMPLE_ERRORS as error:  # the shard itself: missing, compressed, cut short
        reason = reason or f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if sources_per_chunk:
        rng = np.random.default_rng()
        for members in clips.values():
            frames = np.concatenate([chunk["frames"] for chunk in members])  # the clip's frames in this shard
            for chunk in members:
                chunk["sources"] = frames[rng.integers(0, len(frames), size=sources_per_chunk)]
    if "samples" not in row:
        return chunks
    bad = max(bad, int(row["samples"]) - len(chunks))
    if not chunks:
        if shapes is None:
            raise ShardFormatError(f"{row['path']}: no readable sample ({reason})")
        placeholder = {name: np.zeros(shapes[name], _DTYPES[name]) for name in ("frames", "mel", "eye_boxes")}
        if sources_per_chunk:
            placeholder["sources"] = np.zeros((sources_per_chunk, *shapes["frames"][1:]), np.uint8)
        chunks = [{"key": "", **placeholder}]
    for index, chunk in enumerate(chunks):
        chunk.update(
            shard=str(row["shard"]), bad_samples=bad if index == 0 else 0, bad_reason="", usable=bool(chunk["key"])
        )
    chunks[0]["bad_reason"] = reason[:1000] if bad else ""
    return chunks


def fixed_pairs(
    dest: str, manifest: Manifest, seed: int, storage_options: dict[str, Any] | None = None, count: int = 8
) -> dict[str, np.ndarray]:
    """A fixed batch of test-split pairs (train split if there is no test split): PSNR/SSIM and the sample grid.

    Unreadable samples and shards are passed over, as in training, so that one of them does
    not stop the job on the driver.
    """
    fs, root = filesystem_for(manifest.shard_root(dest), storage_options)
    chunks: list[dict[str, Any]] = []
    first_error, shapes, keep = "", chunk_shapes(manifest), manifest.clip_filter
    for shard in manifest.shards["test" if manifest.shards["test"] else "train"]:
        try:
            for sample in iter_shard(fs, f"{root}/{shard}"):
                try:
                    decoded = decode_sample(sample)
                    check_chunk(decoded, shapes)
                except SAMPLE_ERRORS as error:
                    first_error = first_error or f"{type(error).__name__}: {error}"
                    continue
                if keep is None or decoded["meta"].get("clip_id") in keep:
                    chunks.append(decoded)
                if len(chunks) * 2 >= count:
                    break
        except SAMPLE_ERRORS as error:
            first_error = first_error or f"{type(error).__name__}: {error}"
        if len(chunks) * 2 >= count:
            break
    if not chunks:
        why = (first_error or "no shard").splitlines()[0]
        raise ShardFormatError(f"{dest}: no readable sample for the fixed batch of pairs ({why})")
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
        rows = np.flatnonzero(columns["usable"]) if "usable" in columns else range(len(columns["frames"]))
        chunks = [{key: columns[key][i] for key in keys} for i in rows]  # not the placeholders of unreadable shards
        if not chunks:
            continue
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
    on rank 0; ``chunks_seen`` on every worker after its first pass over the data;
    ``bad_samples`` on the worker that meets a shard with unreadable samples, once per shard.
    """

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def checkpoint(self, step: int, checkpoint: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        pass

    def image(self, step: int, grid: np.ndarray) -> None:
        pass

    def chunks_seen(self, keys: list[str]) -> None:
        pass

    def bad_samples(self, shard: str, count: int, reason: str) -> None:
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


@dataclass
class BadSamples:
    """The unreadable samples a worker met in its first pass, per shard (a shard's count comes
    on one row, which one worker receives per pass, so the workers' sums add up)."""

    per_shard: dict[str, int]
    seen: int = 0
    """Usable chunks read; with the bad samples, the share's denominator when the manifest's count is not given."""

    @property
    def total(self) -> int:
        return sum(self.per_shard.values())


def _recording(
    stream: Iterable[Mapping[str, np.ndarray]],
    keys: list[str] | None,
    bad: BadSamples | None = None,
    report: Reporter | None = None,
    name: str = "",
) -> Iterator[Mapping[str, np.ndarray]]:
    for columns in stream:
        usable = np.asarray(columns["usable"], bool) if "usable" in columns else None
        if bad is not None and "bad_samples" in columns:
            for i in np.flatnonzero(columns["bad_samples"]):
                shard, count, reason = (
                    str(columns["shard"][i]),
                    int(columns["bad_samples"][i]),
                    str(columns["bad_reason"][i]),
                )
                if shard not in bad.per_shard:
                    bad.per_shard[shard] = count
                    print(f"[train {name}] {shard}: skipped {count} unreadable sample(s): {reason}", flush=True)
                    if report is not None:
                        report.bad_samples(shard, count, reason)
            bad.seen += int(usable.sum()) if usable is not None else len(columns["frames"])
        if keys is not None and "key" in columns:
            keys.extend(str(key) for i, key in enumerate(columns["key"]) if usable is None or usable[i])
        yield columns


def _agree(has_batch: bool, bad: BadSamples, device: torch.device, world_size: int) -> tuple[bool, int, int]:
    """Whether every worker has a batch for this step, and the bad and seen samples of all of them.

    One small all-reduce per step keeps the workers in step when their passes differ in
    length (an unreadable shard's placeholder row takes the place of a chunk in Ray Data's
    equal split), and lets all of them stop together when too many samples are bad.
    """
    values = [float(has_batch), float(bad.total), float(bad.seen + bad.total)]
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = torch.tensor(values, device=device, dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        values = tensor.tolist()
    return values[0] == world_size, int(values[1]), int(values[2])


def _check_bad_samples(config: TrainConfig, bad: int, seen: int, samples: int | None) -> None:
    total = samples or seen
    if bad and bad > config.max_bad_samples * total:
        raise TooManyBadSamples(
            f"{bad} of the {total} training samples are unreadable, more than --max-bad-samples "
            f"{config.max_bad_samples:g} allows: preprocess the data again (the MLflow run's bad_samples/* "
            "metrics name the shards) or raise --max-bad-samples"
        )


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
    samples: int | None = None,
) -> DisCoHead:
    """Train ``config.variant`` for ``config.max_steps`` steps; returns the trained model.

    ``checkpoint`` (a loaded training checkpoint) resumes: weights, optimizer and the
    position in the data, replaying the current pass up to where it stopped. ``wrap``
    puts the model on its device for data parallelism (Ray Train's ``prepare_model``);
    without it the model moves to ``device``. ``test_pairs`` (rank 0) is a fixed batch
    scored (PSNR/SSIM) at each log step and drawn as the sample grid.

    Unreadable samples (counted by :func:`training_chunks`) are skipped, reported per shard
    and logged as ``bad_samples``; once more than ``config.max_bad_samples`` of the
    ``samples`` training samples (the manifest's count; else those read so far) are bad,
    every worker raises :class:`TooManyBadSamples` at the same step.
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
    bad, first_pass = BadSamples({}), True
    while step < max_steps:
        rng = np.random.default_rng([config.seed, rank, epoch])
        keys: list[str] | None = [] if epoch == 0 else None
        stream = _recording(batches(epoch), keys, bad if first_pass else None, report, config.variant)
        pairs, index = pair_batches(stream, config.per_worker_batch, config.pairs_per_chunk, rng), -1
        while True:
            batch, index = next(pairs, None), index + 1
            if batch is not None and index < done:
                continue  # replaying the pass up to where the checkpoint left it
            ready, bad_total, read = _agree(batch is not None, bad, device, world_size)
            _check_bad_samples(config, bad_total, read, samples)
            if not ready:  # this worker's pass, or another's, is over
                break
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
                metrics["bad_samples"] = bad_total
                if rank == 0:
                    if test_inputs is not None:
                        metrics.update(evaluate_batch(core, test_inputs)[0])
                    report.log(step, metrics)
                    psnr = f"psnr {metrics['psnr']:.2f}  " if "psnr" in metrics else ""  # measured on test pairs only
                    eta = format_eta(seconds_per_step, max_steps - step)
                    print(
                        f"[train {config.variant}] step {step}/{max_steps}  loss {metrics['loss_total']:.4f}  {psnr}"
                        f"{metrics['samples_per_second']:.1f} samples/s  ETA {eta}",
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
        first_pass = False
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
