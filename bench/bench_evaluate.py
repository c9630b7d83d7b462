"""Evaluation benchmark: the evaluation job's full table and its throughput, appended to docs/benchmarks.md.

    python bench/bench_evaluate.py --model REF [--model REF ...] --data DEST [--max-clips N]

Runs ``pipelines/evaluate.py``'s own code (each model a Ray task, on this machine) and
records the Table-1-style table (model and baselines, disentanglement shares) and the
frames per second each model was evaluated at, with every metric networks' availability.
Typical use: the learning benchmark's GRID shards and its trained model (``--workdir`` of
``bench_train.py learning``), next to a second variant.
"""

from __future__ import annotations

import argparse
import sys

import ray

from pipelines import evaluate as job

from common import append_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="REF")
    parser.add_argument("--data", required=True)
    parser.add_argument("--max-clips", type=int)
    parser.add_argument("--title", default="Evaluation")
    parser.add_argument("--note", default="", help="what the models are (how they were trained)")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    job_args = job.parse_args(
        [
            *(item for ref in args.model for item in ("--model", ref)),
            "--data",
            args.data,
            "--output",
            "outputs/eval-bench",
        ]
        + (["--max-clips", str(args.max_clips)] if args.max_clips else [])
    )
    checkpoints, clips = job.prepare(job_args)
    ray.init(address="local", logging_level="ERROR")
    try:
        results = job.evaluate_models(job_args, checkpoints, clips)
    finally:
        ray.shutdown()
    markdown, _ = job.table(results)
    frames = next(iter(results.values())).frames
    speeds = ", ".join(f"{ref}: {result.frames_per_second:.2f}" for ref, result in results.items())
    body = (
        f"`python bench/bench_evaluate.py` on {args.data}, {job_args.split} split, {len(clips)} clips, {frames} frames "
        f"per model; each model one Ray task (one CPU). {args.note}\n\n{markdown}\n"
        f"Evaluation throughput (frames/s per model, all metrics incl. the dlib face measures and the three "
        f"disentanglement passes): {speeds}.\n"
    )
    print(body)
    if not args.no_report:
        append_report(args.title, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
