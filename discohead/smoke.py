"""A smoke run of all four variants: each trains a few steps with the training loop, without Ray.

``python -m discohead.smoke`` checks, in about a minute on a laptop CPU, that the install
works and that every variant trains (its loss goes down). It runs ``discohead.training.fit``,
the loop the training job runs on each worker, on synthetic clips held in memory (the
same generator as the synthetic shards: a bright ellipse "head" that drifts and turns,
with a mouth that follows the loudness of random audio), at the ``narrow`` widths.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .config import VARIANTS
from .data.synthetic_shards import synthetic_chunks
from .train_config import TrainConfig
from .training import Reporter, fit, in_memory_chunks


class LossHistory(Reporter):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.losses.append(metrics["loss_total"])


def smoke_fit(variant: str, image_size: int, steps: int, batch_size: int, seed: int = 0) -> tuple[float, float, float]:
    """Train ``steps`` steps; returns (first loss, mean of the last three, seconds)."""
    config = TrainConfig(
        variant=variant, data="synthetic", image_size=image_size, widths="narrow", batch_size=batch_size, lr=1e-3,
        max_steps=steps, log_every=1, checkpoint_every=steps, perceptual_weight=0, pairs_per_chunk=2, seed=seed,
    )  # fmt: skip
    chunks = synthetic_chunks(clips=2, frames_per_clip=20, image_size=image_size, chunk_frames=10)
    history = LossHistory()
    started = time.perf_counter()
    fit(config, in_memory_chunks(chunks, config.chunks_per_fetch), history)
    return history.losses[0], float(np.mean(history.losses[-3:])), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of the models' initialisation and pair draws")
    args = parser.parse_args(argv)
    variants = list(VARIANTS) if args.variant == "all" else [args.variant]
    print(
        f"DisCoHead smoke run: {len(variants)} variant(s), {args.image_size} px, narrow widths, "
        f"{args.steps} steps, batch {args.batch_size}, seed {args.seed}, synthetic data"
    )
    results = {
        variant: smoke_fit(variant, args.image_size, args.steps, args.batch_size, args.seed) for variant in variants
    }
    print(f"\n{'variant':<10} {'first loss':>10} {'last loss':>10} {'seconds':>8}")
    for variant, (first, last, seconds) in results.items():
        print(f"{variant:<10} {first:>10.4f} {last:>10.4f} {seconds:>8.1f}")
    failed = [variant for variant, (first, last, _) in results.items() if not last < first]
    if failed:
        print(f"the loss did not go down for {', '.join(failed)}", file=sys.stderr)
        return 1
    print("all variants train.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
