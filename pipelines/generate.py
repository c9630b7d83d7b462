"""Generation job: many talking-head videos at once, one per row of a CSV, spread over a Ray cluster.

    python pipelines/generate.py --model REF --jobs jobs.csv --output DEST [--grid | --paste-back]
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python pipelines/generate.py --model models:/NAME@candidate --jobs s3://bucket/jobs.csv --output s3://bucket/videos

The CSV has a ``source`` and an ``audio`` column, optionally ``head_video``, ``eye_video`` and
``name`` (the output's stem); paths are local or s3://. The model is resolved once on the
driver (a bad REF fails before Ray starts) and shared through the object store; Ray Data
runs the rows on a pool of actors, each holding the model (one GPU each when the cluster
has GPUs). Every row gives ``DEST/NAME.mp4`` or a failure with its one-line reason, and
``DEST/report.csv`` lists them all; the exit code is 1 when any row failed.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from typing import Any

import ray

from discohead.cli import add_generation_flags, default_device, load_reference
from discohead.generation import Generator, generate_job, read_jobs
from discohead.storage import filesystem_for, publish_bytes, s3_options
from pipelines.cli import UsageError, run_job
from pipelines.console import add_job_flags, init_ray

REPORT_COLUMNS = ("row", "name", "status", "output", "frames", "seconds", "reason")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_generation_flags(parser, single=False)
    parser.add_argument(
        "--jobs", required=True, metavar="LIST.csv", help="CSV of source,audio[,head_video,eye_video,name]"
    )
    parser.add_argument("--output", required=True, metavar="DEST", help="folder or s3:// prefix for the mp4s")
    parser.add_argument("--concurrency", type=int, default=None, help="model replicas (default: GPUs, else CPUs)")
    add_job_flags(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.concurrency is not None and args.concurrency < 1):
        parser.error("--batch-size and --concurrency must be at least 1")
    return args


class Rows:
    """A Ray Data actor: the model built once from the checkpoint in the object store, then one row per call."""

    def __init__(self, checkpoint: ray.ObjectRef, args: argparse.Namespace):
        import torch

        self.generator = Generator.from_checkpoint(ray.get(checkpoint))
        device = default_device(args.device) if torch.cuda.is_available() else "cpu"
        self.layout = {
            "grid": args.grid,
            "paste_back": args.paste_back,
            "batch_size": args.batch_size,
            "device": device,
        }
        self.dest, self.options = args.output, s3_options(args.output, args.s3_endpoint)

    def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        return generate_job(self.generator, job, self.dest, self.layout, self.options)


def run(args: argparse.Namespace) -> int:
    fs, path = filesystem_for(args.jobs, s3_options(args.jobs, args.s3_endpoint))
    if not fs.isfile(path):
        raise UsageError(f"--jobs {args.jobs}: no such file")
    jobs = read_jobs(fs.read_text(path), args.jobs)
    checkpoint = load_reference(args.model, args.s3_endpoint)
    Generator.from_checkpoint(checkpoint)  # a checkpoint the workers cannot use fails here, in one line
    init_ray(args.ray_address, args.verbose)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    # Without GPUs, one CPU stays free for Ray Data's own tasks; all taken by actors, the job would wait forever.
    replicas = args.concurrency or max(1, min(len(jobs), gpus or cpus - 1))
    print(
        f"[generate] {len(jobs)} videos on {replicas} model replica(s){' with a GPU each' if gpus else ''}", flush=True
    )
    results = (
        ray.data.from_items(jobs, override_num_blocks=len(jobs))
        .map(
            Rows,
            fn_constructor_args=(ray.put(checkpoint), args),
            concurrency=replicas,
            num_gpus=1 if gpus else 0,
            num_cpus=1,
        )
        .take_all()
    )
    results.sort(key=lambda result: result["row"])
    report = io.StringIO()
    writer = csv.DictWriter(report, REPORT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(results)
    out_fs, root = filesystem_for(args.output, s3_options(args.output, args.s3_endpoint))
    out_fs.makedirs(root, exist_ok=True)
    publish_bytes(report.getvalue().encode(), out_fs, f"{root}/report.csv")
    failed = [result for result in results if result["status"] != "ok"]
    for result in failed:
        print(f"[generate] row {result['row']} failed: {result['reason']}", file=sys.stderr)
    print(
        f"[generate] {len(results) - len(failed)} written, {len(failed)} failed; report: "
        f"{args.output.rstrip('/')}/report.csv",
        flush=True,
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run_job("generate", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
