"""Training benchmarks: throughput (trainer vs loader) and learning (GRID, affine-nm, CPU budget).

    python bench/bench_train.py throughput [--image-size 128] [--batch-size 8]
    python bench/bench_train.py learning [--minutes 40] [--image-size 64]

throughput: the training step's samples/s on one worker and the loader's samples/s
(the job's own Ray Data pipeline: read tars, decode, draw pairs, build model inputs)
on the same shards, in the same run. On a GPU also bf16 and the MFU against the chip's
dense bf16 peak.

learning: preprocesses ../shared/data/grid with the preprocessing job (time split:
the first 80% of each clip trains, the last 20% tests), trains affine-nm with the
training job for a fixed CPU budget, then scores the test split against two baselines:
the source frame copied, and the source warped by the predicted head motion alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from discohead import DisCoHead
from discohead.contracts import CHUNK_FRAMES
from discohead.data.synthetic_shards import synthetic_chunks, write_synthetic_shards
from discohead.losses import DisCoHeadLoss
from discohead.manifest import Manifest
from discohead.train_config import TrainConfig
from discohead.training import draw_pairs, model_inputs, pair_batches, train_step

from common import append_report, markdown_table, matmul_gflops

REPO_ROOT = Path(__file__).resolve().parents[1]
GRID = REPO_ROOT.parent / "shared" / "data" / "grid"
LEARNING_MODEL = (
    "feature_channels=256",
    "hourglass_max_channels=256",
    "audio_channels=128",
    "encoder_channels=32",
    "affine_scale=false",
)
"""The learning row's model: narrowed widths, rotation-only affine motion (the authors' choice for GRID)."""
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 tensor-core peaks from the vendors' data sheets, for the MFU."""


def trainer_samples_per_second(
    image_size: int, batch_size: int, steps: int, device: str, dtype: torch.dtype | None
) -> tuple[float, float]:
    """(samples/s, model GFLOPs per training sample) of train_step on one batch of synthetic pairs."""
    torch.manual_seed(0)
    model = DisCoHead.from_variant("affine-nm", image_size=image_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = DisCoHeadLoss(perceptual_weight=0)
    chunks = synthetic_chunks(clips=1, frames_per_clip=CHUNK_FRAMES, image_size=image_size)
    pairs = draw_pairs(chunks, pairs_per_chunk=batch_size, rng=np.random.default_rng(0))
    inputs = model_inputs(pairs, image_size, device)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step(model, loss_fn, optimizer, inputs)
    flops_per_sample = counter.get_total_flops() / batch_size / 1e9
    for _ in range(2):
        train_step(model, loss_fn, optimizer, inputs, dtype)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, loss_fn, optimizer, inputs, dtype)
    if device == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - started), flops_per_sample


def loader_samples_per_second(
    data: str, image_size: int, batch_size: int, pairs_per_chunk: int, minimum_pairs: int
) -> float:
    """Pairs/s through the training job's own Ray Data pipeline and chunk stream (shuffle buffer included),
    read to model inputs."""
    import ray

    from pipelines.train import chunk_batches, training_dataset

    config = TrainConfig(variant="affine-nm", data=data, batch_size=batch_size, pairs_per_chunk=pairs_per_chunk)
    manifest = Manifest.read(data)
    ray.init(address="local", num_cpus=os.cpu_count(), logging_level="ERROR")
    try:
        dataset = training_dataset(config, manifest)
        rng = np.random.default_rng(0)
        list(dataset.limit(1).iter_rows())  # start-up outside the timing
        pairs, started = 0, time.perf_counter()
        while pairs < minimum_pairs:
            for batch in pair_batches(chunk_batches(dataset, config), batch_size, pairs_per_chunk, rng):
                pairs += len(model_inputs(batch, image_size).source)
        return pairs / (time.perf_counter() - started)
    finally:
        ray.shutdown()


def throughput(args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as folder:
        data = args.data or str(Path(folder) / "shards")
        if not args.data:
            write_synthetic_shards(data, clips=16, frames_per_clip=150, image_size=args.image_size)
        matmul = matmul_gflops(device)
        rows = []
        dtypes = [("fp32", None)] + ([("bf16", torch.bfloat16)] if device == "cuda" else [])
        trainer = {}
        for name, dtype in dtypes:
            rate, gflops = trainer_samples_per_second(args.image_size, args.batch_size, args.steps, device, dtype)
            trainer[name] = rate
            achieved = rate * gflops
            mfu = ""
            if device == "cuda" and name == "bf16":
                peak = next(
                    (tflops for chip, tflops in BF16_PEAK_TFLOPS.items() if chip in torch.cuda.get_device_name()), None
                )
                mfu = f"{achieved / (peak * 1000):.1%}" if peak else "unknown chip"
            rows.append([f"trainer ({name}, 1 worker)", f"{rate:.2f}", f"{achieved:.0f}", mfu])
            print(rows[-1], flush=True)
        loader = loader_samples_per_second(
            data, args.image_size, args.batch_size, args.pairs_per_chunk, args.loader_pairs
        )
        rows.append(["loader (Ray Data, same shards)", f"{loader:.1f}", "", ""])
        print(rows[-1], flush=True)
    ratio = loader / trainer["fp32"]
    table = markdown_table(["stage", "samples/s", "achieved GFLOP/s", "MFU (bf16 peak)"], rows)
    body = (
        f"`python bench/bench_train.py throughput`: affine-nm at {args.image_size} px, full widths, "
        f"batch {args.batch_size} per worker, "
        f"L1 loss, {device}; fp32 matmul {matmul:.0f} GFLOP/s in the same run. "
        f"Loader: {args.pairs_per_chunk} pairs per chunk, "
        f"{'synthetic shards' if not args.data else args.data}.\n\n{table}\n\n"
        f"Loader / trainer: {ratio:.1f}x (target >= 3x: {'met' if ratio >= 3 else 'MISSED'}).\n"
    )
    print(body)
    if not args.no_report:
        append_report("Training throughput: trainer vs loader", body)


def run(command: list[str], **kwargs) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)


CONTROL_COLUMNS = ("audio_gain", "eye_gain", "audio_focus", "eye_focus")
"""Does the model use its audio and eye inputs (discohead.evaluation's module doc)."""


def learning(args: argparse.Namespace) -> None:
    if not GRID.is_dir():
        sys.exit(f"GRID sample clips not found at {GRID}: the learning benchmark needs ../shared/data/grid")
    from discohead.evaluation import evaluate_reconstruction

    work = Path(args.workdir or tempfile.mkdtemp(prefix="discohead-learning-"))
    data, storage = work / "grid", work / "runs"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)
    if not (data / "manifest.json").exists():
        run([sys.executable, str(REPO_ROOT / "pipelines" / "preprocess.py"),
             "--input", str(GRID), "--output", str(data), "--image-size", str(args.image_size),
             "--landmarks", "dlib", "--split-mode", "time", "--chunk-frames", str(args.chunk_frames)],
            env=env)  # fmt: skip
    manifest = Manifest.read(str(data))
    widths = [f"--model-option={option}" for option in args.model_option]
    common = [sys.executable, str(REPO_ROOT / "pipelines" / "train.py"), "--variant", "affine-nm",
              "--data", str(data), "--batch-size", str(args.batch_size),
              "--lr", str(args.lr), "--perceptual-weight", "0", "--pairs-per-chunk", "4",
              "--storage", str(storage), "--experiment", "learning",
              "--cpus-per-worker", str(os.cpu_count()), "--no-evaluate", *widths]  # fmt: skip

    # Calibrate: the steady step time from the run's own samples/s, then spend the budget
    # (less the calibration and one more start-up).
    started = time.perf_counter()
    run([*common, "--max-steps", "30", "--log-every", "10", "--checkpoint-every", "30"], env=env)
    calibration = time.perf_counter() - started
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run_info,) = client.search_runs([client.get_experiment_by_name("learning").experiment_id])
    samples_per_second = client.get_metric_history(run_info.info.run_id, "samples_per_second")[-1].value
    seconds_per_step = args.batch_size / samples_per_second
    steps = 30 + max(10, int((args.minutes * 60 - 2 * calibration) / seconds_per_step))
    print(
        f"[learning] calibration: {seconds_per_step:.2f} s/step steady, "
        f"{calibration:.0f}s for 30 steps with start-up; training to step {steps}",
        flush=True,
    )
    started = time.perf_counter()
    run([*common, "--max-steps", str(steps), "--resume", "--log-every", "50", "--checkpoint-every", "500"], env=env)
    minutes = (time.perf_counter() - started + calibration) / 60

    # Score every checkpoint still kept (the last two), so the table shows the trend too.
    rows = []
    for checkpoint in sorted(storage.glob("learning-affine-nm-*/step-*/discohead.pt")):
        scores = evaluate_reconstruction(DisCoHead.from_checkpoint(checkpoint), str(data))
        controls = [f"{scores[name]:.3f}" if name in scores else "-" for name in CONTROL_COLUMNS]
        rows.append(
            [
                f"DisCoHead affine-nm, step {int(checkpoint.parent.name.split('-')[1])}",
                f"{scores['model_psnr']:.2f}",
                f"{scores['model_ssim']:.3f}",
                *controls,
            ]
        )
    rows += [
        [name, f"{scores[f'{key}_psnr']:.2f}", f"{scores[f'{key}_ssim']:.3f}", *["" for _ in CONTROL_COLUMNS]]
        for name, key in (("source copied", "copy"), ("source warped by the final head motion", "warp"))
    ]
    margin = scores["model_psnr"] - scores["copy_psnr"]
    table = markdown_table(["on the GRID test split", "PSNR (dB)", "SSIM", *CONTROL_COLUMNS], rows)
    options = ", ".join(args.model_option) or "paper widths"
    body = (
        f"`python bench/bench_train.py learning`: ../shared/data/grid (8 clips) preprocessed at {args.image_size} px "
        "with dlib landmarks, "
        f"split by time ({args.chunk_frames}-frame chunks: first 80% of each clip trains, last 20% tests; "
        f"{manifest.totals.chunks}). "
        f"affine-nm, {options}, batch {args.batch_size}, Adam {args.lr:g}, L1 only (no VGG weights offline), "
        f"one worker with all {os.cpu_count()} CPUs, {steps} steps in {minutes:.1f} min "
        f"on the training job. Source = each clip's first frame; {scores['frames']} test frames.\n\n{table}\n\n"
        f"Model vs copying the source: {margin:+.2f} dB PSNR (target >= +3 dB: {'met' if margin >= 3 else 'MISSED'}).\n"
    )
    print(body)
    if not args.no_report:
        append_report("Learning: affine-nm on GRID, CPU budget", body)


def pairing(args: argparse.Namespace) -> None:
    """The same training run with each source drawn from its clip and from its driver's chunk, equal steps."""
    from discohead.evaluation import evaluate_reconstruction

    data = Path(args.workdir) / "grid"
    if not (data / "manifest.json").exists():
        sys.exit(f"no GRID shards at {data}: run `bench_train.py learning --workdir {args.workdir}` first")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{Path(args.workdir) / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)
    rows, scores = [], {}
    for source_range in ("chunk", "clip"):
        storage = Path(args.workdir) / f"pairing-{source_range}"
        run([sys.executable, str(REPO_ROOT / "pipelines" / "train.py"), "--variant", "affine-nm",
             "--data", str(data), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
             "--perceptual-weight", "0", "--pairs-per-chunk", "4", "--storage", str(storage),
             "--experiment", f"pairing-{source_range}", "--cpus-per-worker", str(os.cpu_count()),
             "--no-evaluate", "--source-range", source_range, "--max-steps", str(args.steps),
             "--log-every", "100", "--checkpoint-every", str(args.steps),
             *(f"--model-option={option}" for option in LEARNING_MODEL)], env=env)  # fmt: skip
        (checkpoint,) = storage.glob(f"*/step-{args.steps:08d}/discohead.pt")
        scores[source_range] = evaluate_reconstruction(DisCoHead.from_checkpoint(checkpoint), str(data))
        result = scores[source_range]
        rows.append([f"sources from the {source_range}", f"{result['model_psnr']:.2f}", f"{result['model_ssim']:.3f}"])
    copy = scores["clip"]
    rows.append(["source copied", f"{copy['copy_psnr']:.2f}", f"{copy['copy_ssim']:.3f}"])
    table = markdown_table([f"affine-nm, {args.steps} steps, GRID test split", "PSNR (dB)", "SSIM"], rows)
    gain = scores["clip"]["model_psnr"] - scores["chunk"]["model_psnr"]
    body = (
        f"`python bench/bench_train.py pairing`: the learning benchmark's model and data "
        f"({', '.join(LEARNING_MODEL)}, batch {args.batch_size}, Adam {args.lr:g}, L1), trained twice for {args.steps} "
        f"steps: each training source drawn from the driver's own 15-frame chunk (`--source-range chunk`, "
        f"the earlier pairing) and from anywhere in its clip "
        f"(`clip`, the default). Scored with the evaluation protocol (source = each clip's first frame).\n\n{table}\n\n"
        f"Clip over chunk pairing: {gain:+.2f} dB PSNR at equal steps.\n"
    )
    print(body)
    if not args.no_report:
        append_report("Training pairs: sources from the clip vs the chunk, equal steps", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    through = sub.add_parser("throughput")
    through.add_argument("--image-size", type=int, default=128)
    through.add_argument("--batch-size", type=int, default=8)
    through.add_argument("--steps", type=int, default=5)
    through.add_argument("--pairs-per-chunk", type=int, default=8)
    through.add_argument("--loader-pairs", type=int, default=2000)
    through.add_argument("--data", help="shards to read (default: synthetic ones at --image-size)")
    learn = sub.add_parser("learning")
    learn.add_argument("--minutes", type=float, default=33.5)
    learn.add_argument("--image-size", type=int, default=64)
    learn.add_argument("--chunk-frames", type=int, default=15)
    learn.add_argument("--batch-size", type=int, default=16)
    learn.add_argument("--lr", type=float, default=5e-4)
    learn.add_argument("--model-option", action="append", help=f"model widths (default: {' '.join(LEARNING_MODEL)})")
    learn.add_argument("--workdir", help="keep the shards and runs here (default: a temporary folder)")
    pair = sub.add_parser("pairing")
    pair.add_argument("--workdir", required=True, help="the learning benchmark's --workdir (its GRID shards)")
    pair.add_argument("--steps", type=int, default=1000)
    pair.add_argument("--batch-size", type=int, default=16)
    pair.add_argument("--lr", type=float, default=5e-4)
    for sub_parser in (through, learn, pair):
        sub_parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    if args.mode == "learning" and args.model_option is None:
        args.model_option = list(LEARNING_MODEL)
    {"throughput": throughput, "learning": learning, "pairing": pairing}[args.mode](args)


if __name__ == "__main__":
    main()
