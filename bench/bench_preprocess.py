"""Benchmark of the preprocessing job on real GRID clips with the dlib backend.

Runs the real command (``pipelines/preprocess.py``, its own local Ray each time) with 1
and then 2 clip workers, several times each, and reads the job's own timing from the
manifest: frames processed and seconds spent in the Ray Data stages (decode, landmarks,
crop, mel, write). Ray start-up is reported apart, as it does not grow with the data.
The GRID clips are repeated (symlinks under distinct names) so each run has enough
work to reach steady state. Prints a table and appends it to docs/benchmarks.md.

    python bench/bench_preprocess.py [--repeats 3] [--copies 4] [--image-size 256]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from discohead.contracts import CHUNK_FRAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
GRID = REPO_ROOT.parent / "shared" / "data" / "grid"
TARGET_PER_CORE = 40.0
TARGET_SPEEDUP = 1.7


def machine_description() -> str:
    import ray
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        memory = f"{memory_kb / 1024**2:.0f} GiB RAM"
    except (OSError, StopIteration):
        memory = "unknown RAM"
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"ray {ray.__version__}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    )


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat: how loaded the machine was."""
    fields = [float(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_job(inputs: Path, output: Path, workers: int, image_size: int) -> dict:
    command = [
        sys.executable, str(REPO_ROOT / "pipelines" / "preprocess.py"), "--input", str(inputs), "--output", str(output),
        "--landmarks", "dlib", "--workers", str(workers), "--image-size", str(image_size), "--overwrite",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    load_before = os.getloadavg()[0]
    busy_before, total_before = cpu_times()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    busy_after, total_after = cpu_times()
    if result.returncode != 0:
        raise SystemExit(f"the job failed ({result.returncode}):\n{result.stderr[-2000:]}")
    manifest = json.loads((output / "manifest.json").read_text())
    run = manifest["run"]
    clips = manifest["clips"]
    span = max(clip["started_at"] + clip["seconds"] for clip in clips) - min(clip["started_at"] for clip in clips)
    run["steady_fps"] = run["decoded_frames"] / span
    run["clip_seconds"] = [clip["seconds"] for clip in clips] + [clip.get("seconds", 0.0) for clip in manifest["skipped"]]
    run["busy_cores"] = (busy_after - busy_before) / (total_after - total_before) * (os.cpu_count() or 1)
    run["load_before"] = load_before
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=8, help="times each GRID clip is fed in (distinct names)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = parser.parse_args()
    clips = sorted(GRID.glob("*.mpg"))
    if not clips:
        print(f"GRID sample clips not found in {GRID} (see ../shared/data/README.md); nothing to measure", file=sys.stderr)
        return 1

    measurements: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as scratch:
        inputs = Path(scratch) / "inputs"
        inputs.mkdir()
        for copy in range(args.copies):
            for clip in clips:
                (inputs / f"{clip.stem}-copy{copy}.mpg").symlink_to(clip)
        for repeat in range(args.repeats):
            for workers in (1, 2):
                run = run_job(inputs, Path(scratch) / f"out-{workers}", workers, args.image_size)
                run["fps"] = run["decoded_frames"] / run["process_seconds"]
                measurements[workers].append(run)
                print(f"repeat {repeat + 1}/{args.repeats}, {workers} worker(s): {run['decoded_frames']} frames in "
                      f"{run['process_seconds']:.1f}s = {run['fps']:.1f} frames/s end to end, {run['steady_fps']:.1f} "
                      f"while clips were processed (wall {run['wall_seconds']:.1f}s, {run['busy_cores']:.2f} cores busy, "
                      f"load {run['load_before']:.1f} before)", flush=True)  # fmt: skip

    median = {workers: statistics.median(run["fps"] for run in runs) for workers, runs in measurements.items()}
    steady = {workers: statistics.median(run["steady_fps"] for run in runs) for workers, runs in measurements.items()}
    steady_ratios = [two["steady_fps"] / one["steady_fps"] for one, two in zip(measurements[1], measurements[2])]
    wall = {workers: statistics.median(run["wall_seconds"] for run in runs) for workers, runs in measurements.items()}
    busy = {workers: statistics.median(run["busy_cores"] for run in runs) for workers, runs in measurements.items()}
    loads = [run["load_before"] for runs in measurements.values() for run in runs]
    busy_per_worker = {w: statistics.median(run["decoded_frames"] / sum(run["clip_seconds"]) for run in runs) for w, runs in measurements.items()}
    ratios = [two["fps"] / one["fps"] for one, two in zip(measurements[1], measurements[2])]
    speedup = statistics.median(ratios)
    frames = measurements[1][0]["decoded_frames"]
    stored = measurements[1][0]["processed_frames"]
    per_core = {workers: median[workers] / workers for workers in median}
    lines = [
        f"### Preprocessing, GRID 360x288 -> {args.image_size}px crops, dlib landmarks",
        "",
        f"Machine: {machine_description()}.",
        f"Work: {len(clips)} GRID clips x {args.copies} copies = {frames} input frames per run ({stored} stored: whole "
        f"{CHUNK_FRAMES}-frame chunks only); medians of {args.repeats} runs per row. Throughput = input frames / seconds "
        "in the Ray Data stages (actor and write-task start-up included, Ray start-up and listing not). Frames per busy "
        "worker-second = input frames / sum of the seconds workers spent inside clips (the per-clip cost, without "
        "start-up or idle time).",
        "",
        "| workers | end-to-end frames/s | per worker | steady frames/s (first clip start to last clip end) | per worker "
        "| frames per busy worker-second | wall s per run (incl. Ray start-up) | CPU cores busy (whole machine) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {w} | {median[w]:.1f} | {per_core[w]:.1f} | {steady[w]:.1f} | {steady[w] / w:.1f} | {busy_per_worker[w]:.1f} "
            f"| {wall[w]:.1f} | {busy[w]:.2f} |"
            for w in (1, 2)
        ),
        "",
        f"1-minute load average before the runs: {min(loads):.1f} to {max(loads):.1f} (above ~0.5 means other work shared the machine).",
        "",
        f"Speed-up 1 -> 2 workers, end to end: {speedup:.2f}x (per-repeat ratios {', '.join(f'{r:.2f}' for r in ratios)}); "
        f"steady: {statistics.median(steady_ratios):.2f}x (per-repeat ratios {', '.join(f'{r:.2f}' for r in steady_ratios)}). "
        f"Targets: >= {TARGET_PER_CORE:g} frames/s per core ({'met' if min(per_core.values()) >= TARGET_PER_CORE else 'MISSED'}), "
        f">= {TARGET_SPEEDUP}x ({'met' if speedup >= TARGET_SPEEDUP else 'MISSED'}).",
        "",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    if not args.no_append:
        benchmarks = REPO_ROOT / "docs" / "benchmarks.md"
        if not benchmarks.exists():
            benchmarks.write_text("# Benchmarks\n\nAppended by the scripts in bench/; newest last.\n\n")
        with benchmarks.open("a") as handle:
            handle.write(table + "\n")
        print(f"appended to {benchmarks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
