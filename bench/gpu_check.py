"""One call on a lent GPU: what only a GPU can measure, as one table in docs/benchmarks.md (issue #19).

    .venv/bin/python bench/gpu_check.py                 # on the device machine: about 7 minutes on an H100
    .venv/bin/python bench/gpu_check.py --quick         # the same code path on a CPU in about 2 minutes (a test)

1. Model: each variant at 256 px with the paper's widths, batch 8, forward + backward in fp32 and under
   bf16 autocast: samples/s, achieved TFLOP/s (FLOPs from torch.utils.flop_counter) and the MFU against
   the chip's dense peak for that precision (H100/H200: 989 TFLOP/s bf16, 495 TF32; other chips: none).
2. Learning: affine-nm trained for ``--minutes`` under bf16 autocast on GRID shards (made here by the
   preprocessing job from ``--grid`` at ``--image-size``), then the test split's PSNR over copying the
   source and the audio and eye gain (``discohead.evaluation``: does it use its controls?).
3. Generation and evaluation: ``discohead generate`` end to end (all three drivers) and the model alone,
   frames/s; ``evaluate()`` with the pixel scorers, frames/s.

The device machine has no ../shared: copy the GRID clips into the working tree first and carry them,
``mkdir -p .device && cp -r ../shared/data/grid .device/`` (``.device/`` is git-ignored), then
``run(command="... bench/gpu_check.py --grid .device/grid", carry=[".venv", ".device"])``.
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

from discohead import VARIANTS, DisCoHead
from discohead.config import WIDTHS

from common import append_report, machine_description, markdown_table, median_seconds

REPO_ROOT = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = {"H100": {"bf16": 989.4, "fp32": 494.7}, "H200": {"bf16": 989.4, "fp32": 494.7}}
"""Dense peaks, TFLOP/s (fp32 counted as TF32, which torch uses for matmul and conv when allowed below)."""


def peak(precision: str) -> float | None:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((peaks[precision] for chip, peaks in PEAK_TFLOPS.items() if chip in name), None)


def model_rows(args: argparse.Namespace, device: str) -> list[list[object]]:
    from bench_model import count_flops, make_inputs

    rows = []
    for variant in VARIANTS:
        model = DisCoHead.from_variant(variant, image_size=args.model_size, **WIDTHS[args.widths])
        gflops = count_flops(model, args.model_size, backward=True)  # per sample, forward + backward
        model = model.to(device)
        inputs = make_inputs(args.batch_size, args.model_size, device)
        for precision in ("fp32", "bf16"):
            autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

            def step(model=model, inputs=inputs, autocast=autocast) -> None:
                with autocast:
                    prediction = model(*inputs)["prediction"]
                prediction.float().mean().backward()

            seconds = median_seconds(step, repeats=args.repeats, warmup=2, device=device)
            rate = args.batch_size / seconds
            achieved = gflops * rate / 1e3
            best = peak(precision)
            mfu = f"{achieved / best:.1%}" if best else "n/a"
            rows.append([f"{variant} fwd+bwd, batch {args.batch_size}", precision, f"{rate:.1f} samples/s",
                         f"{achieved:.2f} TFLOP/s", mfu])  # fmt: skip
            print(" | ".join(str(cell) for cell in rows[-1]), flush=True)
    return rows


def grid_shards(args: argparse.Namespace, work: Path) -> Path:
    data = work / "grid"
    command = [sys.executable, str(REPO_ROOT / "pipelines" / "preprocess.py"), "--input", str(args.grid),
               "--output", str(data), "--image-size", str(args.image_size), "--landmarks", "dlib",
               "--split-mode", "time", "--chunk-frames", "15"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    subprocess.run(command, check=True, env=env, cwd=work)
    return data


def learning_rows(args: argparse.Namespace, device: str, data: Path) -> tuple[list[list[object]], DisCoHead]:
    from discohead.data.shards import iter_split
    from discohead.evaluation import evaluate_reconstruction
    from discohead.losses import DisCoHeadLoss
    from discohead.training import draw_pairs, model_inputs, train_step

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    chunks = list(iter_split(str(data), "train"))
    model = DisCoHead.from_variant("affine-nm", image_size=args.image_size, **WIDTHS[args.widths]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = DisCoHeadLoss(perceptual_weight=0).to(device)
    autocast = torch.bfloat16 if device.startswith("cuda") else None
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.minutes * 60:
        picked = [chunks[i] for i in rng.choice(len(chunks), size=min(len(chunks), args.batch_size), replace=False)]
        inputs = model_inputs(draw_pairs(picked, 1, rng), args.image_size, device)
        terms = train_step(model, loss_fn, optimizer, inputs, autocast)
        steps += 1
        if steps % 200 == 0:
            print(f"[gpu-check] step {steps}, loss {terms['total']:.4f}", flush=True)
    seconds = time.perf_counter() - started
    scores = evaluate_reconstruction(model, str(data), device=device)
    row = [f"affine-nm {args.image_size} px, {steps} steps in {seconds / 60:.1f} min ({steps / seconds:.1f} steps/s)",
           "bf16" if autocast else "fp32", f"PSNR {scores['model_psnr'] - scores['copy_psnr']:+.2f} dB over copying",
           f"audio gain {scores.get('audio_gain', float('nan')):.1%}",
           f"eye gain {scores.get('eye_gain', float('nan')):.1%}"]  # fmt: skip
    print(" | ".join(str(cell) for cell in row), flush=True)
    return [row], model


def serving_rows(args: argparse.Namespace, device: str, model: DisCoHead, data: Path) -> list[list[object]]:
    from bench_generate import checkpoint_for, end_to_end_fps, inputs, model_only_fps

    from discohead.evaluation import Scorers, clips_with_test_frames, evaluate
    from discohead.generation import Generator

    generator = Generator.from_checkpoint(checkpoint_for(args.model_size, args.widths))
    with tempfile.TemporaryDirectory(prefix="discohead-gpu-check-") as scratch:
        files, label = inputs(Path(scratch), 4.0)
        end_to_end, frames = end_to_end_fps(generator, files, Path(scratch), 16, device)
    alone = model_only_fps(generator, frames, 16, device)
    clips = list(clips_with_test_frames(str(data)))
    result = evaluate(model, clips, Scorers.pixels_only(), device, batch_size=16)
    return [
        [f"generate, {args.model_size} px, {label}", "bf16" if device.startswith("cuda") else "fp32",
         f"{end_to_end:.1f} frames/s end to end", f"{alone:.1f} frames/s model only", f"{end_to_end / alone:.2f}x"],
        [f"evaluate() pixel scorers, {args.image_size} px", "fp32", f"{result.frames_per_second:.1f} frames/s",
         f"{result.frames} frames", ""],
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "grid")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget of part 2")
    parser.add_argument("--image-size", type=int, default=128, help="part 2's frames")
    parser.add_argument("--model-size", type=int, default=256, help="parts 1 and 3's frames")
    parser.add_argument("--widths", default="paper", choices=sorted(WIDTHS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="64 px, tiny widths, 20 s of training: a CPU test")
    parser.add_argument("--no-report", action="store_true", help="print only")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.image_size, args.model_size, args.widths, args.repeats = 1 / 3, 64, 64, "tiny", 2
    if not (args.grid / "bbaf2n.mpg").exists():
        sys.exit(f"GRID clips not found at {args.grid}: pass --grid (on the device machine: see this file's doc)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory(prefix="discohead-gpu-check-") as scratch:
        data = grid_shards(args, Path(scratch))
        rows = model_rows(args, device)
        learned, model = learning_rows(args, device, data)
        rows += learned + serving_rows(args, device, model, data)
    table = markdown_table(["what", "precision", "rate", "", ""], rows)
    body = f"{machine_description()}\n\n{table}\n"
    print(body)
    if not args.no_report:
        append_report("GPU check (bench/gpu_check.py)" + (" --quick" if args.quick else ""), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
