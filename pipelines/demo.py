"""The main job on embedded defaults: synthetic videos -> preprocessing -> training of all four variants.

    python pipelines/demo.py [--workdir outputs/demo] [--clips 6] [--steps 40] [-v]

What `./run` runs on a fresh machine. It writes a few SYNTHETIC talking-head videos
(drawn cartoon faces with a tone for speech, see discohead/data/synthetic.py: they
exercise the pipeline, they do not make a useful model), then runs the two jobs
exactly as a user would, each starting its own local Ray:

    python pipelines/preprocess.py --input WORKDIR/videos --output WORKDIR/shards --image-size 64
    python pipelines/train.py --variant all --data WORKDIR/shards --max-steps 40 ...

and prints where the shards, the checkpoints and the MLflow runs are. Real data: point
the same two commands at your own videos (docs/preprocessing.md, docs/training.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from discohead.data.synthetic import SyntheticClip, write_synthetic_video
from discohead.tracking import local_artifact_location
from pipelines.console import add_verbose_flag

PIPELINES = Path(__file__).resolve().parent


def step(title: str, command: list[str], env: dict[str, str]) -> None:
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        sys.exit(f"demo: {title.lower()} failed (exit {result.returncode}); its output is above")
    print(f"=== {title}: done in {time.perf_counter() - started:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="outputs/demo", help="where videos, shards, checkpoints and mlflow.db go")
    parser.add_argument("--clips", type=int, default=6, help="synthetic videos to generate")
    parser.add_argument("--steps", type=int, default=40, help="training steps per variant")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    loud = ["--verbose"] if args.verbose else []

    workdir = Path(args.workdir).resolve()
    videos, shards, runs = workdir / "videos", workdir / "shards", workdir / "runs"
    videos.mkdir(parents=True, exist_ok=True)
    print(f"=== writing {args.clips} SYNTHETIC talking-head videos (cartoon faces, tone audio) to {videos}", flush=True)
    for index in range(args.clips):
        path = videos / f"synthetic-{index:02d}.mp4"
        if not path.exists():
            write_synthetic_video(path, SyntheticClip(seconds=4.0, seed=100 + index))

    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}"),
    }
    env.pop("RAY_ADDRESS", None)
    python = sys.executable
    step(
        "Preprocessing",
        [
            python,
            str(PIPELINES / "preprocess.py"),
            "--input",
            str(videos),
            "--output",
            str(shards),
            "--image-size",
            "64",
            "--landmarks",
            "dlib",
            "--split-mode",
            "time",
            *loud,
        ],
        env,
    )
    # Narrow widths: the four variants train in a few CPU minutes.
    step(
        "Training all four variants",
        [python, str(PIPELINES / "train.py"), "--variant", "all", "--data", str(shards), "--widths", "narrow",
         "--max-steps", str(args.steps), "--batch-size", "8", "--lr", "3e-4", "--perceptual-weight", "0",
         "--log-every", "20", "--checkpoint-every", str(args.steps), "--storage", str(runs), "--experiment", "demo",
         "--evaluate-clips", "1", *loud],
        env,
    )  # fmt: skip
    uri = env["MLFLOW_TRACKING_URI"]
    artifacts = local_artifact_location(uri) or "on the tracking server"
    mlflow = Path(sys.executable).with_name("mlflow")  # the venv's, on PATH or not
    mlflow = mlflow.relative_to(Path.cwd()) if mlflow.is_relative_to(Path.cwd()) else mlflow
    print(
        f"\nDemo finished.\n  shards and manifest: {shards}\n  checkpoints:         {runs}\n"
        f"  MLflow runs:         {uri} (experiment 'demo'; artifacts {artifacts})\n"
        f"  compare them:        {mlflow} ui --backend-store-uri {uri}   (http://127.0.0.1:5000)\n"
        "The videos were synthetic; run the same two jobs on your own videos next (README)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
