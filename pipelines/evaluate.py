"""Evaluation job: the paper's metrics for trained models on a split of preprocessed shards.

    python pipelines/evaluate.py --model REF [--model REF ...] --data DEST [--split test] [--max-clips N]
    ray job submit --address http://HEAD:8265 -- python pipelines/evaluate.py --model models:/NAME@candidate ...

REF is an MLflow run id, ``runs:/ID``, ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or a
checkpoint file or folder (local or s3://). The split is read once; each model is evaluated
in its own Ray task (one GPU each when the cluster has GPUs) by ``discohead.evaluation``.
Prints a Table-1-style table, writes it with a CSV under ``--output``, and logs every number
to each model's MLflow run as ``eval/<split>/<metric>`` (baselines ``eval/<split>/copy/...``).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from typing import Any

import ray

from discohead.contracts import SPLITS
from discohead.evaluation import (
    CONTROL_GAINS,
    METRICS,
    MODEL_MEASURES,
    SYSTEMS,
    EvaluationResult,
    Scorers,
    attach_audio,
    clips_with_test_frames,
    comparison_chart,
)
from discohead.flags import check_range
from discohead.manifest import Manifest, ShardFormatError
from discohead.storage import filesystem_for, publish_bytes, s3_options
from discohead.tracking import Launch, load_checkpoint, log_comparison, log_evaluation, run_id_for, tracking_uri
from discohead.train_config import TrainConfig
from pipelines.cli import UsageError, refuse_node_local_paths, run_job
from pipelines.console import add_job_flags, init_ray


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="REF", help="model to evaluate; repeatable")
    parser.add_argument("--data", required=True, metavar="DEST", help="output of pipelines/preprocess.py")
    parser.add_argument("--split", default="test", choices=SPLITS, help="split to evaluate (default: test)")
    parser.add_argument("--max-clips", type=int, default=None, help="evaluate only the first N clips (by id)")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default: 16)")
    parser.add_argument(
        "--output", default="outputs/eval", help="folder (or s3:// prefix) for results.md and results.csv"
    )
    parser.add_argument(
        "--lpips-weights", help="alexnet-owt-7be5be79.pth (default: DISCOHEAD_ALEXNET_WEIGHTS or hub cache)"
    )
    parser.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (default: env or hub cache)")
    parser.add_argument(
        "--syncnet-weights", help="syncnet_v2.model for LSE-C/D (default: DISCOHEAD_SYNCNET_WEIGHTS or hub cache)"
    )
    parser.add_argument("--no-faces", action="store_true", help="skip the dlib face measures (AKD, AED, mouth, eyes)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to the models' MLflow runs")
    parser.add_argument(
        "--shared-storage",
        action="store_true",
        help="a local --output and MLflow store are on a file system every Ray node mounts",
    )
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL)")
    add_job_flags(parser)
    args = parser.parse_args(argv)
    try:  # out-of-range values stop here, before Ray starts, not in the evaluation tasks
        check_range("--max-clips", args.max_clips, 1)
        check_range("--batch-size", args.batch_size, 1)
    except ValueError as error:
        parser.error(str(error))
    return args


def check_model(ref: str, checkpoint: dict[str, Any], manifest: Manifest) -> None:
    """A model the shards can drive: a known checkpoint format, its size and its mel settings."""
    from discohead.config import DisCoHeadConfig
    from discohead.contracts import CHECKPOINT_FORMAT_VERSION

    version = checkpoint.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise UsageError(f"{ref}: checkpoint format {version}, this code reads {CHECKPOINT_FORMAT_VERSION}")
    config = DisCoHeadConfig.from_dict(checkpoint["config"])
    if config.image_size > manifest.image_size:
        raise UsageError(f"{ref}: the model is {config.image_size} px, the shards {manifest.image_size} px")
    if (config.n_mels, config.audio_frames) != (manifest.mel.n_mels, manifest.mel.window_frames):
        shards = f"{manifest.mel.n_mels} x {manifest.mel.window_frames}"
        raise UsageError(
            f"{ref}: the model takes {config.n_mels} x {config.audio_frames} mel windows, the shards hold {shards}"
        )


def evaluate_one(checkpoint: dict[str, Any], clips: list, args: argparse.Namespace) -> EvaluationResult:
    """One model on the clips (a Ray task): the model, the metric networks, the evaluation."""
    import torch

    from discohead import DisCoHead
    from discohead.evaluation import evaluate

    device = "cuda" if torch.cuda.is_available() else "cpu"
    scorers = Scorers.load(
        args.lpips_weights, args.inception_weights, faces=not args.no_faces, syncnet_weights=args.syncnet_weights
    )
    model = DisCoHead.from_checkpoint(checkpoint)
    name = model.config.variant

    def progress(done: int, total: int, frames: int) -> None:
        print(f"[evaluate {name}] clip {done}/{total}, {frames} frames", flush=True)

    return evaluate(model, clips, scorers, device, args.batch_size, progress)


def table(results: dict[str, EvaluationResult]) -> tuple[str, str]:
    """(markdown, CSV): a row per model and baseline, a column per metric; unavailable metrics listed below."""
    header = ["model", "system", *METRICS, *MODEL_MEASURES, "frames", "frames/s"]
    rows = []
    for label, result in results.items():
        for system in SYSTEMS:
            values = {**result.systems[system], **(result.disentanglement if system == "model" else {})}
            cells = [
                "unavailable" if name in result.unavailable else f"{values.get(name, math.nan):.4g}"
                for name in (*METRICS, *MODEL_MEASURES)
            ]
            speed = f"{result.frames_per_second:.1f}" if system == "model" else ""
            rows.append([label, system, *cells, result.frames, speed])
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    unavailable = {name: why for result in results.values() for name, why in result.unavailable.items()}
    lines += ["", *(f"- {name}: {why}" for name, why in sorted(unavailable.items()))]
    return "\n".join(lines) + "\n", buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    checkpoints, clips = prepare(args)  # every check before Ray starts
    init_ray(args.ray_address, args.verbose)
    refuse_node_local_paths({"--output": args.output}, None if args.no_mlflow else tracking_uri(), args.shared_storage)
    evaluate_models(args, checkpoints, clips)
    return 0


def prepare(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], list]:
    """Each model's checkpoint, checked against the shards, and the split's clips (read once)."""
    options = s3_options(args.data, args.s3_endpoint)
    try:
        manifest = Manifest.read(args.data, options)
    except (FileNotFoundError, ShardFormatError) as error:
        raise UsageError(str(error)) from None
    if not manifest.shards[args.split]:
        raise UsageError(
            f"{args.data} has no {args.split} split: preprocess with a split ratio below 1, or pick --split"
        )
    checkpoints = {}
    for ref in args.model:
        try:
            checkpoints[ref] = load_checkpoint(ref, storage_options=s3_options(ref, args.s3_endpoint))
        except Exception as error:  # an unknown run, model, alias or path: say which, in one line
            raise UsageError(f"--model {ref}: {str(error).splitlines()[0]}") from None
        check_model(ref, checkpoints[ref], manifest)
    damaged: list[str] = []
    clips = list(clips_with_test_frames(args.data, options, args.split, args.max_clips, damaged))
    print(
        f"[evaluate] {len(clips)} clips, {sum(len(clip.driver) for clip in clips)} frames of {args.split}", flush=True
    )
    if damaged:
        print(f"[evaluate] passed over {len(damaged)} unreadable samples or clips, first: {damaged[0]}", flush=True)
    if not clips:
        raise UsageError(f"{args.data}: no readable {args.split} clip to evaluate")
    read_audio(args, clips, manifest)
    return checkpoints, clips


def read_audio(args: argparse.Namespace, clips: list, manifest: Manifest) -> None:
    """The clips' audio for LSE-C/D, read from their original files only when SyncNet's weights are here.

    The shards keep mel windows, not the waveform SyncNet's MFCCs need, so LSE costs a read
    (a download, for s3:// sources) of each evaluated clip's file: not worth it without the
    weights. Found here means verified (and downloaded where there is internet) on this machine.
    """
    from discohead.metric_networks import SYNCNET
    from discohead.pretrained import PretrainedWeightsUnavailable

    try:
        SYNCNET.locate(args.syncnet_weights)
    except PretrainedWeightsUnavailable:
        return  # each model's task reports lse_* unavailable, naming the file
    attach_audio(clips, manifest.mel, args.s3_endpoint)
    used = sum(clip.waveform is not None for clip in clips)
    notes = sorted({clip.audio_note for clip in clips if clip.waveform is None})
    print(
        f"[evaluate] audio for LSE-C/D: {used} of {len(clips)} clips" + (f"; {notes[0]}" if notes else ""), flush=True
    )


def evaluate_models(
    args: argparse.Namespace, checkpoints: dict[str, dict[str, Any]], clips: list
) -> dict[str, EvaluationResult]:
    """Each model in a Ray task on the shared clips; the table, the CSV and the MLflow metrics (Ray initialised)."""
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus)(evaluate_one)
    shared = ray.put(clips)
    started = time.perf_counter()
    results = dict(
        zip(args.model, ray.get([task.remote(checkpoint, shared, args) for checkpoint in checkpoints.values()]))
    )
    markdown, rows = table(results)
    elapsed = f"{args.split} split of {args.data} ({time.perf_counter() - started:.0f}s)"
    if labels := getattr(args, "labels", None):  # the training job's --evaluate: a line per model, the table in a file
        print(f"[evaluate] {elapsed}:")
        for ref, result in results.items():
            print(f"[evaluate {labels.get(ref, ref)}] {summary(result)}")
        if unavailable := sorted({name for result in results.values() for name in result.unavailable}):
            print(f"[evaluate] unavailable without their weights (results.md says where): {', '.join(unavailable)}")
    else:
        print(f"\n[evaluate] {elapsed}:\n\n{markdown}")

    fs, root = filesystem_for(args.output, s3_options(args.output, args.s3_endpoint))
    fs.makedirs(root, exist_ok=True)
    publish_bytes(markdown.encode(), fs, f"{root}/results.md")
    publish_bytes(rows.encode(), fs, f"{root}/results.csv")
    print(f"[evaluate] wrote {args.output.rstrip('/')}/results.md and results.csv")
    logged = []
    for ref, result in results.items():
        run_id = None if args.no_mlflow else run_id_for(ref)
        if run_id:
            log_evaluation(run_id, result.flat(args.split), result.unavailable, result.grid, args.split)
            logged.append(run_id)
            if not labels:
                print(f"[evaluate] {ref}: logged eval/{args.split}/* to MLflow run {run_id} ({tracking_uri()})")
        else:
            print(f"[evaluate] {ref}: a checkpoint path, not an MLflow run: nothing logged to MLflow")
    if labels and logged:
        print(f"[evaluate] logged eval/{args.split}/* to the {len(logged)} MLflow run(s) ({tracking_uri()})")
    return results


def summary(result: EvaluationResult) -> str:
    """One line of a model's scores, the copy baseline's PSNR beside its own, and how much it uses its controls."""
    model, copy = result.systems["model"], result.systems["copy"]
    shown = [f"{name} {model[name]:.4g}" for name in METRICS if name in model and name not in result.unavailable]
    shown[0] += f" (copying the source: {copy['psnr']:.4g})" if shown and shown[0].startswith("psnr") else ""
    shown += [f"{name.replace('_', ' ')} {result.disentanglement[name]:.0%}" for name in CONTROL_GAINS
              if name in result.disentanglement]  # fmt: skip
    return ", ".join(shown) or "no metric available"


def evaluate_runs(
    config: TrainConfig, launch: Launch, output: str, verbose: bool = False
) -> dict[str, EvaluationResult]:
    """The training job's ``--evaluate``: its runs on the test split of its data, with its Ray; a launch of
    several variants also gets their table and chart on its parent run."""
    run_ids = launch.run_ids
    models = [item for run_id in run_ids.values() for item in ("--model", run_id)]
    clips = ["--max-clips", str(config.evaluate_clips)] if config.evaluate_clips else []
    endpoint = ["--s3-endpoint", config.s3_endpoint] if config.s3_endpoint else []
    loud = ["--verbose"] if verbose else []
    args = parse_args([*models, "--data", config.data, "--output", output, *clips, *endpoint, *loud])
    args.labels = {run_id: variant for variant, run_id in run_ids.items()}  # a line per variant, not the table
    results = evaluate_models(args, *prepare(args))
    if launch.parent_run_id:
        by_variant = {args.labels[ref]: result for ref, result in results.items()}
        log_comparison(launch.parent_run_id, *table(by_variant), comparison_chart(by_variant, args.split), args.split)
        print(f"[evaluate] the variants side by side: comparison/eval_{args.split}.md, .csv and .png on the parent run")
    return results


def main(argv: list[str] | None = None) -> int:
    return run_job("evaluate", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
