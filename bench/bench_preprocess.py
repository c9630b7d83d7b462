"""Benchmark of the preprocessing job on real GRID clips with the dlib backend.

Runs the real command (``pipelines/preprocess.py``, its own local Ray each time) with 1
and 2 clip workers, several times each, interleaved, and reads the job's own timing from
the manifest: frames decoded and seconds spent in the Ray Data stages (decode,
landmarks, crop, mel, write). Ray start-up is reported apart, as it does not grow with
the data. The GRID clips are repeated (copies under distinct names: the job lists a file
once by its real path, so symlinks would count once) so that each run has enough work to
reach steady state.

Two ways of giving the runs CPUs, both measured:

- ``pinned``: the whole run (Ray, workers, their ffmpeg decoders) is confined to as many
  cores as it has workers, so each worker brings one core, as when a cluster grows by
  one CPU per worker. This is the speed-up of adding a worker.
- ``shared``: every run sees all the machine's cores, so a single worker's decoder and
  Ray's own processes use the otherwise idle cores for free. On a 2-core machine this
  is the speed-up a user sees from ``--workers 2`` over ``--workers 1``.

With ``--compilations`` the inputs are long videos instead: the GRID clips joined with
hard cuts into one 24 s video per copy, so every run also detects the cuts and cuts each
video into segments (8 per video), as the job does on real footage. The shard-write
stage's own rate comes from the run's ``stats.json``.

Prints a table and appends it to docs/benchmarks.md.

    python bench/bench_preprocess.py [--repeats 3] [--copies 16] [--image-size 256] [--modes pinned shared]
                                     [--compilations]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import ray

from discohead.contracts import CHUNK_FRAMES, STATS_NAME
from discohead.manifest import Manifest

from common import append_report, markdown_table

REPO_ROOT = Path(__file__).resolve().parents[1]
GRID = REPO_ROOT.parent / "shared" / "data" / "grid"
TARGET_PER_CORE = 40.0
TARGET_SPEEDUP = 1.7
WORKERS = (1, 2)


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat: how loaded the machine was."""
    fields = [float(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_job(inputs: Path, output: Path, workers: int, cores: list[int], image_size: int) -> dict:
    """One run of the job on ``cores``; the manifest's run record plus derived rates."""
    command = [
        sys.executable, str(REPO_ROOT / "pipelines" / "preprocess.py"), "--input", str(inputs), "--output", str(output),
        "--landmarks", "dlib", "--workers", str(workers), "--image-size", str(image_size), "--overwrite",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    load_before = os.getloadavg()[0]
    busy_before, total_before = cpu_times()
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cores)
    )
    busy_after, total_after = cpu_times()
    if result.returncode != 0:
        raise SystemExit(f"the job failed ({result.returncode}):\n{result.stderr[-2000:]}")
    manifest = Manifest.read(str(output))
    run, clips = dict(manifest.run), manifest.clips
    span = max(clip.started_at + clip.seconds for clip in clips) - min(clip.started_at for clip in clips)
    run["fps"] = run["decoded_frames"] / run["process_seconds"]
    run["steady_fps"] = run["decoded_frames"] / span
    run["busy_worker_fps"] = run["decoded_frames"] / sum(clip.seconds for clip in clips + manifest.skipped)
    run["busy_cores"] = (busy_after - busy_before) / (total_after - total_before) * (os.cpu_count() or 1)
    run["load_before"] = load_before
    run["segments"] = len(clips) + len(manifest.skipped)
    stats = json.loads((output / STATS_NAME).read_text())
    run["write_fps"] = stats.get("throughput", {}).get("write_shards", {}).get("frames_per_second", float("nan"))
    return run


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def ratios(runs: dict[int, list[dict]], key: str) -> list[float]:
    return [two[key] / one[key] for one, two in zip(runs[1], runs[2])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=16, help="times each GRID clip is fed in (distinct names)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--modes", nargs="+", default=["pinned", "shared"], choices=("pinned", "shared"))
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to docs/benchmarks.md")
    parser.add_argument(
        "--compilations", action="store_true", help="long inputs: the GRID clips joined with cuts, segmented by the job"
    )
    args = parser.parse_args()
    clips = sorted(GRID.glob("*.mpg"))
    if not clips:
        print(
            f"GRID sample clips not found in {GRID} (see ../shared/data/README.md); nothing to measure", file=sys.stderr
        )
        return 1
    available = sorted(os.sched_getaffinity(0))
    if len(available) < max(WORKERS):
        print(f"needs {max(WORKERS)} cores, this process may use {len(available)}", file=sys.stderr)
        return 1

    cores_for = {("pinned", workers): available[:workers] for workers in WORKERS} | {
        ("shared", workers): available for workers in WORKERS
    }
    measurements: dict[str, dict[int, list[dict]]] = {mode: {workers: [] for workers in WORKERS} for mode in args.modes}
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as scratch:
        inputs = Path(scratch) / "inputs"
        inputs.mkdir()
        if args.compilations:
            from discohead.data.synthetic import join_videos

            joined = join_videos(clips, Path(scratch) / "grid-compilation.mp4")
            for copy in range(args.copies):
                shutil.copyfile(joined, inputs / f"compilation-copy{copy}.mp4")
        else:
            for copy in range(args.copies):
                for clip in clips:
                    shutil.copyfile(clip, inputs / f"{clip.stem}-copy{copy}.mpg")
        for repeat in range(args.repeats):
            for mode in args.modes:
                for workers in WORKERS:
                    cores = cores_for[mode, workers]
                    run = run_job(inputs, Path(scratch) / "out", workers, cores, args.image_size)
                    measurements[mode][workers].append(run)
                    print(f"repeat {repeat + 1}/{args.repeats}, {mode}, {workers} worker(s) on {len(cores)} core(s): "
                          f"{run['decoded_frames']} frames in {run['process_seconds']:.1f}s = "
                          f"{run['fps']:.1f} frames/s end to end, "
                          f"{run['steady_fps']:.1f} while clips were processed (wall {run['wall_seconds']:.1f}s, "
                          f"{run['busy_cores']:.2f} cores busy, load {run['load_before']:.1f} before)",
                          flush=True)  # fmt: skip

    first = next(iter(measurements.values()))[1][0]
    rows, verdicts = [], []
    for mode, runs in measurements.items():
        for workers in WORKERS:
            cores = len(cores_for[mode, workers])
            rows.append([
                mode, workers, cores,
                f"{median(runs[workers], 'fps'):.1f}", f"{median(runs[workers], 'fps') / cores:.1f}",
                f"{median(runs[workers], 'steady_fps'):.1f}", f"{median(runs[workers], 'busy_worker_fps'):.1f}",
                f"{median(runs[workers], 'wall_seconds'):.1f}", f"{median(runs[workers], 'busy_cores'):.2f}",
                f"{median(runs[workers], 'write_fps'):.0f}",
            ])  # fmt: skip
        end_to_end, steady = ratios(runs, "fps"), ratios(runs, "steady_fps")
        verdict = "met" if statistics.median(end_to_end) >= TARGET_SPEEDUP else "MISSED"
        verdicts.append(
            f"- {mode}: speed-up 1 -> 2 workers end to end {statistics.median(end_to_end):.2f}x (per repeat "
            f"{', '.join(f'{r:.2f}' for r in end_to_end)}), steady {statistics.median(steady):.2f}x (per repeat "
            f"{', '.join(f'{r:.2f}' for r in steady)}); target >= {TARGET_SPEEDUP}x end to end: {verdict}."
        )
    per_core = [median(runs[1], "fps") / len(cores_for[mode, 1]) for mode, runs in measurements.items()]
    loads = [run["load_before"] for runs in measurements.values() for mode_runs in runs.values() for run in mode_runs]
    what = (
        f"{args.copies} compilations of the {len(clips)} GRID clips joined with cuts (24 s, {len(clips)} shots each; "
        f"{first['segments']} segments per run)"
        if args.compilations
        else f"{len(clips)} GRID clips x {args.copies} copies"
    )
    flags = " --compilations" if args.compilations else ""
    body = "\n".join([
        f"`python bench/bench_preprocess.py{flags} --repeats {args.repeats} --copies {args.copies} --modes "
        f"{' '.join(args.modes)}`: GRID 360x288 -> {args.image_size}px crops, dlib landmarks, "
        f"ray {ray.__version__}. "
        f"{what} = {first['decoded_frames']} input frames per run "
        f"({first['processed_frames']} "
        f"stored: whole {CHUNK_FRAMES}-frame chunks only); medians of {args.repeats} interleaved runs per row.",
        "",
        "pinned: the whole run is confined to as many cores as it has workers (each worker brings one core). "
        "shared: every run sees all cores. End-to-end throughput = input frames / seconds in the Ray Data stages "
        "(actor and write-task start-up included, Ray start-up and listing not); steady = from the first clip's start "
        "to the last clip's end; per busy worker-second = input frames / seconds workers spent inside clips.",
        "",
        markdown_table(
            ["mode", "workers", "cores used", "end-to-end frames/s", "per core", "steady frames/s",
             "frames per busy worker-second", "wall s per run (incl. Ray start-up)", "CPU cores busy (whole machine)",
             "shard write frames per task-second"],
            rows,
        ),  # fmt: skip
        "",
        *verdicts,
        f"- frames/s per core, one worker: {', '.join(f'{value:.1f}' for value in per_core)} "
        f"(target >= {TARGET_PER_CORE:g}: {'met' if min(per_core) >= TARGET_PER_CORE else 'MISSED'}).",
        f"- 1-minute load average before the runs: {min(loads):.1f} to {max(loads):.1f} "
        "(the previous run's own load decays into it).",
    ])  # fmt: skip
    print("\n" + body)
    if not args.no_append:
        title = "Preprocessing: throughput and 1 -> 2 worker speed-up"
        append_report(f"{title}, long videos cut into segments" if args.compilations else title, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
