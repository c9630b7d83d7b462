"""Training job: Ray Train DDP of the DisCoHead variants from preprocessed shards, tracked in MLflow.

    python pipelines/train.py --variant affine-nm --data DEST [options]
    ray job submit --address http://HEAD:8265 -- python pipelines/train.py --variant all --data s3://bucket/shards ...

Run directly it starts a local Ray; under ``ray job submit`` it joins the cluster. The flags are
``TrainConfig``'s fields; the config goes whole to each worker, which runs ``discohead.training.fit``
on the chunks Ray Data streams to it. ``--variant all`` trains the four variants side by side, as
child runs of one MLflow parent run; ``--evaluate`` scores them at the end. This file only wires.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from discohead import flags
from discohead.contracts import CHECKPOINT_FILE
from discohead.manifest import Manifest, ShardFormatError
from discohead.storage import absolute, pyarrow_filesystem, s3_options
from discohead.tracking import MlflowReporter, model_example, run_failure, start_launch, tracking_uri
from discohead.train_config import TrainConfig, launch_config
from discohead.training import TooManyBadSamples, chunk_shapes, fit, fixed_pairs, shard_rows, training_chunks
from pipelines.cli import UsageError, refuse_node_local_paths, run_job
from pipelines.console import add_job_flags, init_ray
from pipelines.evaluate import evaluate_runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    flags.add_flags(parser, TrainConfig)
    resume = "continue the latest run of this experiment and variant from its last checkpoint and saved config"
    parser.add_argument("--resume", action="store_true", help=resume + " (flags given override it)")
    add_job_flags(parser)
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> tuple[TrainConfig, Manifest, dict[str, str]]:
    """The run's config, checked against the shards (and this machine when Ray is local), and its run names."""
    try:
        config, names = launch_config(flags.given(args, TrainConfig), args.resume)
        config = dataclasses.replace(config, storage=absolute(config.storage))
        manifest = Manifest.read(config.data, s3_options(config.data, config.s3_endpoint))
        config = config.resolve(manifest)
        if not (args.ray_address or os.environ.get("RAY_ADDRESS")):
            config.check_this_machine()  # on a cluster the workers check (and say which file is missing)
    except (ValueError, ShardFormatError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    return config, manifest, names


def connect_ray(config: TrainConfig, address: str | None, verbose: bool = False) -> None:
    """Join the cluster or start a local Ray; refuse too few CPUs or GPUs, and one node's paths on several nodes."""
    address = address or os.environ.get("RAY_ADDRESS")
    needed = int(np.ceil(config.cpus_per_worker * config.num_workers * len(config.variants) + 2))
    init_ray(address, verbose, **({} if address else {"num_cpus": max(os.cpu_count() or 1, needed)}))
    cpus, gpus = ray.cluster_resources().get("CPU", 0), ray.cluster_resources().get("GPU", 0)
    group = {"CPU": config.cpus_per_worker * config.num_workers, "GPU": config.num_workers * config.use_gpu}
    if address and (gpus < 1 if config.use_gpu else cpus < group["CPU"]):  # an autoscaler adds nodes on demand
        need = f"{group['GPU']} GPUs" if config.use_gpu else f"{group['CPU']:g} CPUs"
        print(f"[train] the workers need {need}, more than the cluster has now: waiting for nodes", flush=True)
    elif config.use_gpu and gpus < 1:
        raise UsageError("--use-gpu was given but the Ray cluster has no GPU: drop --use-gpu to train on CPU")
    elif not config.use_gpu and cpus < group["CPU"]:
        workers = f"{config.num_workers} workers x {config.cpus_per_worker:g} CPUs"
        raise UsageError(f"{workers} need {group['CPU']:g} CPUs; the cluster has {cpus:g}")
    paths, shared = {"--data": config.data, "--storage": config.storage}, config.shared_storage
    refuse_node_local_paths(paths, tracking_uri(), shared, group if address else None)  # before any worker starts


def training_dataset(config: TrainConfig, manifest: Manifest) -> ray.data.Dataset:
    """One read task per training shard, flattened to chunks (split across the workers by Ray Train)."""
    ray.data.DataContext.get_current().enable_progress_bars = False  # the workers print the progress
    paths = shard_rows(manifest, config.data)  # with each shard's sample count: unreadable ones are counted
    read = {
        "storage_options": s3_options(config.data, config.s3_endpoint),
        "sources_per_chunk": config.pairs_per_chunk * (config.source_range == "clip"),
        "shapes": chunk_shapes(manifest),
        "keep_clips": manifest.clip_filter,
    }
    return ray.data.from_items(paths, override_num_blocks=len(paths)).flat_map(training_chunks, fn_kwargs=read)


def chunk_batches(iterator: Any, config: TrainConfig) -> Any:
    """One pass of a worker's chunks, as the training loop takes them (the benchmark reads the same)."""
    fetch = config.chunks_per_fetch
    return iterator.iter_batches(batch_size=fetch, batch_format="numpy", local_shuffle_buffer_size=4 * fetch)


class RayTrainReporter(MlflowReporter):
    """MLflow logging plus Ray Train's checkpoint report (a barrier every worker joins)."""

    def checkpoint(self, step: int, checkpoint: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        if checkpoint is None:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(checkpoint, Path(directory) / CHECKPOINT_FILE)
            saved = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=f"step-{step:08d}")


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    config: TrainConfig = loop["config"]
    context = ray.train.get_context()
    rank, checkpoint = context.get_world_rank(), None
    if saved := ray.train.get_checkpoint():
        with saved.as_directory() as directory:
            checkpoint = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    shard = ray.train.get_dataset_shard("train")
    report = RayTrainReporter(
        loop["tracking_uri"], loop["run_id"], rank, config.register, config.alias, loop["example"]
    )
    try:
        fit(
            config, lambda epoch: chunk_batches(shard, config), report, checkpoint=checkpoint,
            test_pairs=loop["test_pairs"] if rank == 0 else None, device=ray.train.torch.get_device(), rank=rank,
            world_size=context.get_world_size(), wrap=ray.train.torch.prepare_model, samples=loop["samples"],
        )  # fmt: skip
    except TooManyBadSamples as error:  # every worker stops at the same step; a raise would make Ray Train retry
        report.failed(str(error))


def fit_variant(config: TrainConfig, manifest: Manifest, run_name: str, loop: dict[str, Any]) -> str:
    """Train one variant with a TorchTrainer; returns the final checkpoint's path."""
    storage_path, storage_filesystem = pyarrow_filesystem(config.storage, config.s3_endpoint)
    resources = {"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})}
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**loop, "config": config},
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),  # fmt: skip
        datasets={"train": training_dataset(config, manifest)},
    )
    result = trainer.fit()
    if failed := run_failure(loop["tracking_uri"], loop["run_id"]):  # the workers stopped on purpose
        raise UsageError(failed)
    return result.checkpoint.path if result.checkpoint else ""


fit_variant_task = ray.remote(num_cpus=0)(fit_variant)
"""A variant's driver as a Ray task, so that ``--variant all`` trains them side by side."""


def run(args: argparse.Namespace) -> int:
    config, manifest, names = configure(args)
    connect_ray(config, args.ray_address, args.verbose)
    launch = start_launch(config, names, manifest, resume=args.resume)
    with launch:  # a failure, Ctrl-C or SIGTERM (ray job stop) ends the runs FAILED or KILLED, with the reason
        where = f"MLflow {launch.tracking_uri}, experiment {config.experiment!r}, artifacts in {launch.artifact_root()}"
        print(f"[train] {where}", flush=True)
        pairs = fixed_pairs(config.data, manifest, config.seed, s3_options(config.data, config.s3_endpoint))
        example, samples = model_example(pairs, config.image_size), manifest.chunks("train")
        loop = {"tracking_uri": launch.tracking_uri, "test_pairs": pairs, "example": example, "samples": samples}
        launches = [
            (config.for_variant(variant), manifest, names[variant], {**loop, "run_id": launch.run_ids[variant]})
            for variant in names
        ]
        for variant, name in names.items():
            size = f"{config.steps} steps, {config.num_workers} worker(s), batch {config.batch_size}"
            print(f"[train] {variant}: run {name}, MLflow run {launch.run_ids[variant]}, {size}", flush=True)
        print(f"[train] starting the workers; each variant prints a line every {config.log_every} steps", flush=True)
        if len(launches) == 1:
            paths = [fit_variant(*launches[0])]
        else:
            paths = ray.get([fit_variant_task.remote(*arguments) for arguments in launches])
    print(f"\n[train] finished; compare the runs in {where}:")
    for variant, path in zip(names, paths):
        print(f"  {variant:<10} MLflow run {launch.run_ids[variant]}  checkpoint {path}")
    if config.evaluate and manifest.shards["test"]:  # the paper's metrics on each run, for MLflow's compare view
        evaluate_runs(config, launch, f"{config.storage.rstrip('/')}/{min(names.values())}-eval", args.verbose)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job("train", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
