"""Model benchmark: size, FLOPs, throughput and memory of the four variants.

For each variant at 256x256: parameters, GFLOPs per frame (torch.utils.flop_counter),
forward and forward+backward frames/s at batch 1 and 8, peak memory, and the machine's
fp32 matmul rate measured in the same process, so "achieved GFLOP/s / matmul GFLOP/s"
is a ratio from one run. Compared with the authors' released affine-DM model (58.9 M
parameters, 137.7 GFLOPs per frame, 0.96 frames/s forward on the 2-core machine).
Also times the two StyleGAN2 modulation forms. On a GPU it adds bf16 autocast rows.
Each case runs in a fresh process so its peak memory is its own.

    python bench/bench_model.py [--variants affine-dm ...] [--batch-sizes 1 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from discohead import VARIANTS, DisCoHead
from discohead.contracts import MEL

from common import append_report, markdown_table, matmul_gflops, median_seconds

AUTHORS = {"parameters_m": 58.9, "gflops": 137.7, "forward_fps_2core": 0.96}


def make_inputs(batch: int, size: int, device: str) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    frames = [torch.rand(batch, 3, size, size, generator=generator).to(device) for _ in range(3)]
    return (*frames, torch.randn(batch, MEL.n_mels, MEL.window_frames, generator=generator).to(device))


def count_flops(model: DisCoHead, size: int, backward: bool) -> float:
    inputs = make_inputs(1, size, "cpu")
    with FlopCounterMode(display=False) as counter:
        if backward:
            model(*inputs)["prediction"].mean().backward()
        else:
            with torch.no_grad():
                model(*inputs)
    return counter.get_total_flops() / 1e9


def current_rss_kib() -> float:
    """Resident memory now (ru_maxrss is the peak so far, which imports may already have set)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1024


def run_case(case: dict) -> dict:
    """Time one (variant, batch, mode, dtype) case in this process."""
    device, batch, size = case["device"], case["batch"], case["image_size"]
    baseline_kib = current_rss_kib()
    torch.manual_seed(0)
    model = DisCoHead.from_variant(case["variant"], image_size=size, fused_modulation=case["fused"]).to(device)
    inputs = make_inputs(batch, size, device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=case["dtype"] == "bf16")

    def forward() -> None:
        with torch.no_grad(), autocast:
            model(*inputs)

    def forward_backward() -> None:
        with autocast:
            loss = model(*inputs)["prediction"].float().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.train(case["mode"] == "train")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    matmul_before = matmul_gflops(device)
    seconds = median_seconds(forward_backward if case["mode"] == "train" else forward, case["repeats"], device=device)
    matmul_after = matmul_gflops(device)
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024
    return {"seconds": seconds, "matmul_gflops": (matmul_before + matmul_after) / 2, "peak_mib": peak_mib}


def measure(case: dict) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-report", action="store_true", help="print only; do not append to docs/benchmarks.md")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    dtypes = ["fp32", "bf16"] if args.device == "cuda" else ["fp32"]
    rows, efficiency = [], []
    for variant in args.variants:
        model = DisCoHead.from_variant(variant, image_size=args.image_size)
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        forward_gflops = count_flops(model, args.image_size, backward=False)
        train_gflops = count_flops(model, args.image_size, backward=True)
        for dtype in dtypes:
            for batch in args.batch_sizes:
                for mode in ("forward", "train"):
                    case = dict(
                        variant=variant,
                        batch=batch,
                        mode=mode,
                        dtype=dtype,
                        fused=False,
                        device=args.device,
                        image_size=args.image_size,
                        repeats=args.repeats,
                    )
                    result = measure(case)
                    fps = batch / result["seconds"]
                    gflops = (forward_gflops if mode == "forward" else train_gflops) * fps
                    ratio = gflops / result["matmul_gflops"]
                    rows.append(
                        [
                            variant,
                            dtype,
                            batch,
                            "forward" if mode == "forward" else "fwd+bwd",
                            f"{fps:.2f}",
                            f"{gflops:.0f}",
                            f"{result['matmul_gflops']:.0f}",
                            f"{ratio:.0%}",
                            f"{result['peak_mib']:.0f}",
                        ]
                    )
                    print(" | ".join(str(cell) for cell in rows[-1]), flush=True)
                    if mode == "forward" and dtype == "fp32":
                        efficiency.append((variant, batch, ratio))
        rows_size = [
            variant,
            f"{parameters:.1f}",
            f"{parameters / AUTHORS['parameters_m'] - 1:+.0%}",
            f"{forward_gflops:.1f}",
            f"{forward_gflops / AUTHORS['gflops'] - 1:+.0%}",
            f"{train_gflops:.1f}",
        ]
        efficiency.append(("size", variant, rows_size))

    size_rows = [entry[2] for entry in efficiency if entry[0] == "size"]
    modulation_rows = []
    for batch in args.batch_sizes:
        for fused in (False, True):
            case = dict(
                variant="affine-dm",
                batch=batch,
                mode="forward",
                dtype="fp32",
                fused=fused,
                device=args.device,
                image_size=args.image_size,
                repeats=args.repeats,
            )
            result = measure(case)
            modulation_rows.append(
                [
                    "fused (grouped conv)" if fused else "activation scaling",
                    batch,
                    f"{batch / result['seconds']:.2f}",
                    f"{result['matmul_gflops']:.0f}",
                ]
            )
            print(" | ".join(str(cell) for cell in modulation_rows[-1]), flush=True)

    size_table = markdown_table(
        [
            "variant",
            "parameters (M)",
            "vs authors' 58.9 M",
            "GFLOPs / frame (fwd)",
            "vs authors' 137.7",
            "GFLOPs / frame (fwd+bwd)",
        ],
        size_rows,
    )
    speed_table = markdown_table(
        [
            "variant",
            "dtype",
            "batch",
            "pass",
            "frames/s",
            "achieved GFLOP/s",
            "matmul GFLOP/s (same process)",
            "achieved / matmul",
            "peak memory (MiB)",
        ],
        rows,
    )
    modulation_table = markdown_table(
        ["affine-dm modulation", "batch", "forward frames/s", "matmul GFLOP/s"], modulation_rows
    )
    peak_memory = (
        "max allocated on the GPU"
        if args.device == "cuda"
        else "growth of the process peak RSS over its start, weights included"
    )
    body = (
        f"`python bench/bench_model.py` at {args.image_size}x{args.image_size} on {args.device}, "
        f"median of {args.repeats} runs per case, each case in its own process"
        f" (peak memory: {peak_memory}).\n\n"
        f"{size_table}\n\n{speed_table}\n\n{modulation_table}\n"
    )
    print("\n" + body)
    if not args.no_report:
        append_report("Model: size, FLOPs, throughput", body)


if __name__ == "__main__":
    main()
