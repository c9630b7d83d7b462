"""Training job: Ray Train DDP of the DisCoHead variants from preprocessed shards, tracked in MLflow.

    python pipelines/train.py --variant affine-nm --data DEST [options]
    ray job submit --address http://HEAD:8265 -- python pipelines/train.py --variant all --data s3://bucket/shards ...

Run directly it starts a local Ray; under ``ray job submit`` it joins the cluster. The
shards stream through Ray Data (one read task per tar, split across the workers by
Ray Train's dataset shards); each worker draws (source, driver) pairs from the chunks it
receives. ``--variant all`` trains the four variants at once when the cluster has room,
each a TorchTrainer launched from its own Ray task and its own MLflow run.
The model, the loss and the step live in ``discohead``; this file only wires them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from cli_support import UsageError, run_job, s3_options
from discohead import VARIANTS, DisCoHead, DisCoHeadConfig, __version__
from discohead.contracts import CHECKPOINT_FILE, MelSettings
from discohead.data.shards import ShardFormatError, iter_split, read_manifest
from discohead.losses import DisCoHeadLoss
from discohead.pretrained import PretrainedWeightsUnavailable
from discohead.tracking import CHECKPOINT_ARTIFACT
from discohead.training import comparison_grid, draw_pairs, evaluate_batch, format_eta, model_inputs, pair_batches, train_step, training_chunks

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_TAG = "discohead.train_run"
VARIANT_TAG = "discohead.variant"


# --- arguments ---------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--variant", required=True, choices=[*VARIANTS, "all"])
    parser.add_argument("--data", required=True, metavar="DEST", help="output of pipelines/preprocess.py: local folder or s3:// prefix")
    parser.add_argument("--num-workers", type=int, default=1, help="data-parallel workers per variant")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL and bf16 autocast")
    parser.add_argument("--cpus-per-worker", type=float, default=1)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch, split across the workers (paper: 16)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, help="optimisation steps (default: 1000 unless --epochs)")
    length.add_argument("--epochs", type=float, help="passes over the training chunks, converted to steps")
    parser.add_argument("--pairs-per-chunk", type=int, default=8, help="(source, driver) pairs drawn from each chunk per pass")
    parser.add_argument("--image-size", type=int, default=None, help="train at this size (default: the shards'); smaller is resized on the fly")
    parser.add_argument("--perceptual-weight", type=float, default=1.0, help="lambda of the VGG-19 term; 0 trains on L1 alone")
    parser.add_argument("--vgg-weights", default=None, help="path to vgg19-dcbb9e9d.pth (default: torch hub cache or DISCOHEAD_VGG19_WEIGHTS)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE", help="override a DisCoHeadConfig field, e.g. feature_channels=256; repeatable")
    parser.add_argument("--storage", default=str(Path.cwd() / "outputs" / "train"), help="checkpoint storage: local folder or s3:// prefix")
    parser.add_argument("--experiment", default="discohead", help="MLflow experiment and run-name prefix")
    parser.add_argument("--resume", action="store_true", help="continue the latest run of this experiment and variant from its last checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50, help="steps between metric logs")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    parser.add_argument("--image-every", type=int, default=None, help="steps between sample grids (default: every checkpoint)")
    parser.add_argument("--max-failures", type=int, default=3, help="worker-group restarts from the last checkpoint before giving up")
    parser.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    args = parser.parse_args(argv)
    if args.max_steps is None and args.epochs is None:
        args.max_steps = 1000
    return args


def model_overrides(options: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to typed DisCoHeadConfig fields."""
    fields = {field.name: field for field in dataclasses.fields(DisCoHeadConfig)}
    overrides: dict[str, Any] = {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in fields or key in ("variant", "motion", "fusion", "image_size"):
            raise UsageError(f"--model-option {option!r}: {key!r} is not a model option (see discohead/config.py)")
        current = getattr(VARIANTS["affine-dm"], key)
        try:
            if isinstance(current, bool):
                overrides[key] = value.lower() in ("1", "true", "yes")
            elif isinstance(current, tuple):
                overrides[key] = tuple(int(part) for part in value.split(","))
            else:
                overrides[key] = type(current)(value)
        except ValueError:
            raise UsageError(f"--model-option {option!r}: {value!r} is not a valid {type(current).__name__}") from None
    return overrides


def storage_options(args: argparse.Namespace, url: str) -> dict[str, Any]:
    return s3_options(url, args.s3_endpoint)


# --- checks before any worker starts -------------------------------------------------


@dataclasses.dataclass
class Plan:
    """Everything the driver decides before launching the workers."""

    manifest: dict[str, Any]
    image_size: int
    max_steps: int
    per_worker_batch: int
    overrides: dict[str, Any]


def plan(args: argparse.Namespace) -> Plan:
    """Validate the command against the data; raise UsageError with what to do."""
    local = not (args.ray_address or os.environ.get("RAY_ADDRESS"))
    if local and args.use_gpu and not torch.cuda.is_available():
        raise UsageError("--use-gpu was given but this machine has no CUDA GPU: drop --use-gpu to train on CPU, or submit to a cluster with GPUs")
    try:
        manifest = read_manifest(args.data, storage_options(args, args.data))
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    except ShardFormatError as error:
        raise UsageError(str(error)) from None
    except OSError as error:
        raise UsageError(f"cannot read {args.data}: {error}") from None
    train_chunks = manifest["totals"]["chunks"].get("train", 0)
    if not manifest["shards"].get("train") or train_chunks == 0:
        raise UsageError(f"{args.data} has no training shards: preprocess more clips (see the skipped reasons in its manifest)")
    shard_size = manifest["config"]["image_size"]
    image_size = args.image_size or shard_size
    if image_size > shard_size:
        raise UsageError(f"--image-size {image_size} is larger than the shards' {shard_size} px: preprocess with --image-size {image_size} or train smaller")
    if args.num_workers < 1:
        raise UsageError("--num-workers must be at least 1")
    if args.batch_size % args.num_workers:
        raise UsageError(f"--batch-size {args.batch_size} does not split evenly across {args.num_workers} workers")
    per_worker_batch = args.batch_size // args.num_workers
    if args.max_steps is not None:
        max_steps = args.max_steps
    else:
        pairs_per_epoch = train_chunks * args.pairs_per_chunk
        max_steps = max(1, int(args.epochs * pairs_per_epoch // args.batch_size))
    overrides = model_overrides(args.model_option)
    mel = manifest["config"].get("mel")
    if mel:  # the audio input follows the shards' mel settings
        settings = MelSettings(**mel)
        overrides.update(n_mels=settings.n_mels, audio_frames=settings.window_frames)
    try:
        DisCoHeadConfig.for_variant("affine-dm", image_size=image_size, **overrides)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    if args.perceptual_weight > 0 and local:
        # On a cluster the workers load the weights (and say which file is missing).
        try:
            DisCoHeadLoss(args.perceptual_weight, args.vgg_weights)
        except PretrainedWeightsUnavailable as error:
            raise UsageError(f"{error} (or train with --perceptual-weight 0)") from None
    return Plan(manifest, image_size, max_steps, per_worker_batch, overrides)


def check_cluster(args: argparse.Namespace) -> None:
    """What only the cluster can tell: GPUs and CPUs for the workers."""
    resources = ray.cluster_resources()
    if args.use_gpu and resources.get("GPU", 0) < 1:
        raise UsageError("--use-gpu was given but the Ray cluster has no GPU: drop --use-gpu to train on CPU")
    needed = args.cpus_per_worker * args.num_workers
    if not args.use_gpu and resources.get("CPU", 0) < needed:
        raise UsageError(f"{args.num_workers} workers x {args.cpus_per_worker:g} CPUs need {needed:g} CPUs; the cluster has {resources.get('CPU', 0):g}")


def connect_ray(args: argparse.Namespace) -> None:
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
        return
    # A local Ray on a laptop: leave room beside the training workers for the Ray Data
    # tasks that read the shards, or they would wait for a CPU forever.
    needed = args.cpus_per_worker * args.num_workers * (len(VARIANTS) if args.variant == "all" else 1) + 2
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(np.ceil(needed))), logging_level="WARNING")


# --- MLflow ------------------------------------------------------------------------


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store in the working folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def mlflow_run_for(args: argparse.Namespace, variant: str, run_name: str, params: dict[str, Any]) -> str:
    """Create (or, on --resume, find) the MLflow run of one variant; returns its id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        location = None if "MLFLOW_TRACKING_URI" in os.environ else (Path.cwd() / "mlartifacts").as_uri()
        experiment_id = client.create_experiment(args.experiment, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    if args.resume:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_name}'", max_results=1)
        if runs:
            return runs[0].info.run_id
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_TAG: run_name, VARIANT_TAG: variant})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


# --- data --------------------------------------------------------------------------


def training_dataset(args: argparse.Namespace, manifest: dict[str, Any]) -> ray.data.Dataset:
    # The workers print the training progress; per-block bars of the reader would drown it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    root = args.data.rstrip("/")
    paths = [{"path": f"{root}/{shard}"} for shard in manifest["shards"]["train"]]
    return ray.data.from_items(paths, override_num_blocks=len(paths)).flat_map(training_chunks, fn_kwargs={"storage_options": storage_options(args, args.data)})


def fixed_test_pairs(args: argparse.Namespace, manifest: dict[str, Any], count: int = 8) -> dict[str, np.ndarray]:
    """A fixed batch of test-split pairs (train split if the test split is empty) for PSNR/SSIM and images."""
    split = "test" if manifest["shards"].get("test") else "train"
    chunks = []
    for chunk in iter_split(args.data, split, storage_options(args, args.data)):
        chunks.append(chunk)
        if len(chunks) * 2 >= count:
            break
    pairs = draw_pairs(chunks, pairs_per_chunk=max(1, -(-count // len(chunks))), rng=np.random.default_rng(args.seed))
    return {key: value[:count] for key, value in pairs.items()}


# --- the training loop on each worker --------------------------------------------------


def train_loop_per_worker(config: dict[str, Any]) -> None:
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config["seed"])
    model_config = DisCoHeadConfig.from_dict(config["model"])
    model = DisCoHead(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    loss_fn = DisCoHeadLoss(config["perceptual_weight"], config["vgg_weights"]).to(device)

    step, epoch, batches_done = 0, 0, 0
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        step, epoch, batches_done = state["step"], state["epoch"], state["batches_in_epoch"]
        if rank == 0:
            print(f"[train {model_config.variant}] resuming from step {step} (epoch {epoch}, batch {batches_done})", flush=True)
    model = ray.train.torch.prepare_model(model)
    if state:  # after the move to the device: load_state_dict puts the state beside its parameters
        optimizer.load_state_dict(state["optimizer"])
    core = model.module if hasattr(model, "module") else model

    tracker = _Tracker(config) if rank == 0 else None
    test_inputs = model_inputs(config["test_pairs"], model_config.image_size, device) if rank == 0 else None
    autocast = torch.bfloat16 if device.type == "cuda" else None
    shard = ray.train.get_dataset_shard("train")
    chunks_per_fetch = max(1, -(-config["per_worker_batch"] // config["pairs_per_chunk"]))
    max_steps = config["max_steps"]
    seen_keys: list[str] = []
    started, steps_timed = time.perf_counter(), 0

    while step < max_steps:
        rng = np.random.default_rng([config["seed"], rank, epoch])
        stream = _chunk_stream(shard, chunks_per_fetch, seen_keys if epoch == 0 else None)
        for index, batch in enumerate(pair_batches(stream, config["per_worker_batch"], config["pairs_per_chunk"], rng)):
            if index < batches_done:
                continue  # replaying the epoch up to where the checkpoint left it
            inputs = model_inputs(batch, model_config.image_size, device)
            terms = train_step(model, loss_fn, optimizer, inputs, autocast)
            step, batches_done, steps_timed = step + 1, index + 1, steps_timed + 1
            is_last = step >= max_steps
            if step % config["log_every"] == 0 or is_last:
                seconds_per_step = (time.perf_counter() - started) / steps_timed
                metrics = _mean_across_workers(terms, device)
                metrics["samples_per_second"] = config["per_worker_batch"] * world_size / seconds_per_step
                if tracker:
                    metrics.update(evaluate_batch(core, test_inputs)[0])
                    tracker.log(metrics, step, seconds_per_step)
                started, steps_timed = time.perf_counter(), 0
            if step % config["checkpoint_every"] == 0 or is_last:
                _report_checkpoint(core, optimizer, step, epoch, batches_done, rank, terms)
            if tracker and (step % config["image_every"] == 0 or is_last):
                tracker.log_grid(test_inputs, evaluate_batch(core, test_inputs)[1], step)
            if is_last:
                break
        if batches_done == 0:
            raise RuntimeError(f"worker {rank} received no full batch in a pass over the data: use fewer workers, a smaller --batch-size or more clips")
        if epoch == 0 and seen_keys:
            _log_seen_keys(config, rank, seen_keys)
            seen_keys = []
        epoch, batches_done = epoch + 1, 0
    if tracker:
        tracker.finish(core)


def _chunk_stream(shard: Any, chunks_per_fetch: int, seen_keys: list[str] | None):
    for columns in shard.iter_batches(batch_size=chunks_per_fetch, batch_format="numpy", prefetch_batches=2, local_shuffle_buffer_size=4 * chunks_per_fetch):
        if seen_keys is not None:
            seen_keys.extend(str(key) for key in columns["key"])
        yield columns


def _mean_across_workers(terms: dict[str, float], device: torch.device) -> dict[str, float]:
    names = sorted(terms)
    values = torch.tensor([terms[name] for name in names], device=device, dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
        values /= torch.distributed.get_world_size()
    return {f"loss_{name}": value for name, value in zip(names, values.tolist())}


def _report_checkpoint(model: DisCoHead, optimizer: torch.optim.Optimizer, step: int, epoch: int, batches_done: int, rank: int, terms: dict[str, float]) -> None:
    """Every worker reports (Ray Train's barrier); rank 0 attaches the checkpoint."""
    metrics = {"step": step, "loss": terms["total"]}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as directory:
        state = model.checkpoint(optimizer=optimizer.state_dict(), step=step, epoch=epoch, batches_in_epoch=batches_done)
        torch.save(state, Path(directory) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory), checkpoint_dir_name=f"step-{step:08d}")


def _log_seen_keys(config: dict[str, Any], rank: int, keys: list[str]) -> None:
    """Which chunks this worker read in its first pass: data lineage, and the proof that workers differ."""
    from mlflow.tracking import MlflowClient

    MlflowClient(config["tracking_uri"]).log_text(config["mlflow_run_id"], "\n".join(keys[:10_000]) + "\n", f"data/rank-{rank}-chunks.txt")


class _Tracker:
    """Rank 0's console progress and MLflow logging."""

    def __init__(self, config: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(config["tracking_uri"])
        self.run_id = config["mlflow_run_id"]
        self.variant = config["model"]["variant"]
        self.max_steps = config["max_steps"]

    def log(self, metrics: dict[str, float], step: int, seconds_per_step: float) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = {**metrics, "eta_seconds": seconds_per_step * (self.max_steps - step)}
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()])
        print(
            f"[train {self.variant}] step {step}/{self.max_steps}  loss {metrics['loss_total']:.4f}  "
            f"psnr {metrics.get('psnr', float('nan')):.2f}  {metrics['samples_per_second']:.1f} samples/s  "
            f"ETA {format_eta(seconds_per_step, self.max_steps - step)}",
            flush=True,
        )

    def log_grid(self, inputs: Any, prediction: torch.Tensor, step: int) -> None:
        self.client.log_image(self.run_id, comparison_grid(inputs, prediction), artifact_file=f"samples/step-{step:08d}.png")

    def finish(self, model: DisCoHead) -> None:
        """Log the final model twice: as an MLflow PyTorch model, and as our checkpoint file."""
        import mlflow

        model = model.cpu().eval()
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / CHECKPOINT_FILE
            torch.save(model.checkpoint(), path)
            self.client.log_artifact(self.run_id, str(path), artifact_path=str(Path(CHECKPOINT_ARTIFACT).parent))
        mlflow.set_tracking_uri(self.client.tracking_uri)
        with mlflow.start_run(run_id=self.run_id):
            mlflow.pytorch.log_model(model, name="model", serialization_format="pickle")
        print(f"[train {self.variant}] done: MLflow run {self.run_id}", flush=True)


# --- launching -----------------------------------------------------------------------


def run_storage(args: argparse.Namespace) -> tuple[str, Any]:
    """Ray Train's (storage_path, storage_filesystem) for a local folder or an s3:// prefix."""
    if not args.storage.startswith("s3://"):
        return str(Path(args.storage).resolve()), None
    import pyarrow.fs
    import s3fs

    endpoint = args.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL")
    filesystem = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {})
    return args.storage.removeprefix("s3://").rstrip("/"), pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(filesystem))


def run_name_for(args: argparse.Namespace, variant: str) -> str:
    """A new run name, or with --resume the latest existing one of this experiment and variant."""
    prefix = f"{args.experiment}-{variant}-"
    if args.resume:
        path, filesystem = run_storage(args)
        if filesystem is None:
            existing = [entry.name for entry in Path(path).glob(f"{prefix}*") if entry.is_dir()]
        else:
            import pyarrow.fs

            infos = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
            existing = [Path(info.path).name for info in infos if info.type == pyarrow.fs.FileType.Directory and Path(info.path).name.startswith(prefix)]
        if not existing:
            raise UsageError(f"--resume: no earlier run {prefix}* in {args.storage}; drop --resume to start one")
        return sorted(existing)[-1]
    return prefix + time.strftime("%Y%m%d-%H%M%S")


def fit_variant(args: argparse.Namespace, chosen: Plan, variant: str, run_name: str, mlflow_run_id: str, test_pairs: dict[str, np.ndarray]) -> str:
    """Train one variant with a TorchTrainer; returns the final checkpoint's path."""
    model_config = DisCoHeadConfig.for_variant(variant, image_size=chosen.image_size, **chosen.overrides)
    storage_path, storage_filesystem = run_storage(args)
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model": model_config.to_dict(),
            "seed": args.seed,
            "lr": args.lr,
            "perceptual_weight": args.perceptual_weight,
            "vgg_weights": args.vgg_weights,
            "max_steps": chosen.max_steps,
            "per_worker_batch": chosen.per_worker_batch,
            "pairs_per_chunk": args.pairs_per_chunk,
            "log_every": args.log_every,
            "checkpoint_every": args.checkpoint_every,
            "image_every": args.image_every or args.checkpoint_every,
            "tracking_uri": tracking_uri(),
            "mlflow_run_id": mlflow_run_id,
            "test_pairs": test_pairs,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=args.num_workers, use_gpu=args.use_gpu, resources_per_worker={"CPU": args.cpus_per_worker, **({"GPU": 1} if args.use_gpu else {})}
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=ray.train.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": training_dataset(args, chosen.manifest)},
    )
    result = trainer.fit()
    return result.checkpoint.path if result.checkpoint else ""


@ray.remote(num_cpus=0)
def fit_variant_task(*arguments: Any) -> str:
    """A variant's driver as a Ray task, so that ``--variant all`` trains them side by side."""
    return fit_variant(*arguments)


def run(args: argparse.Namespace) -> int:
    chosen = plan(args)
    connect_ray(args)
    check_cluster(args)
    variants = list(VARIANTS) if args.variant == "all" else [args.variant]
    manifest = chosen.manifest
    test_pairs = fixed_test_pairs(args, manifest)
    common_params = {
        "data": args.data,
        "data_config_hash": manifest["config_hash"],
        "data_format_version": manifest["format_version"],
        "data_train_chunks": manifest["totals"]["chunks"].get("train", 0),
        "code_version": code_version(),
        "num_workers": args.num_workers,
        "use_gpu": args.use_gpu,
        "global_batch_size": args.batch_size,
        "lr": args.lr,
        "max_steps": chosen.max_steps,
        "pairs_per_chunk": args.pairs_per_chunk,
        "perceptual_weight": args.perceptual_weight,
        "seed": args.seed,
        "storage": args.storage,
    }
    launches = []
    for variant in variants:
        run_name = run_name_for(args, variant)
        model_config = DisCoHeadConfig.for_variant(variant, image_size=chosen.image_size, **chosen.overrides)
        params = {**common_params, **{f"model.{key}": value for key, value in model_config.to_dict().items()}}
        run_id = mlflow_run_for(args, variant, run_name, params)
        print(f"[train] {variant}: run {run_name}, MLflow run {run_id}, {chosen.max_steps} steps, {args.num_workers} worker(s), batch {args.batch_size}", flush=True)
        launches.append((variant, run_name, run_id))

    if len(launches) == 1:
        variant, run_name, run_id = launches[0]
        paths = [fit_variant(args, chosen, variant, run_name, run_id, test_pairs)]
    else:
        paths = ray.get([fit_variant_task.remote(args, chosen, variant, run_name, run_id, test_pairs) for variant, run_name, run_id in launches])

    print(f"\n[train] finished; compare the runs in MLflow ({tracking_uri()}, experiment {args.experiment!r}):")
    for (variant, run_name, run_id), path in zip(launches, paths):
        print(f"  {variant:<10} MLflow run {run_id}  checkpoint {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job("train", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
