"""A smoke run of all four variants: build each, fit a few steps on a synthetic batch.

``python -m discohead.smoke`` checks, in about a minute on a laptop CPU, that the install
works and that every variant trains (its loss goes down). The batch is synthetic: a
bright ellipse "head" that moves between source and driver, with random audio.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .config import VARIANTS
from .contracts import MEL
from .geometry import coordinate_grid
from .model import DisCoHead


def synthetic_batch(batch: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Source and driver frames of an ellipse that moves and turns between them."""
    generator = torch.Generator().manual_seed(seed)
    grid = coordinate_grid(size, size)

    def head(centre: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        cos, sin = torch.cos(angle), torch.sin(angle)
        offset = grid[None] - centre[:, None, None]
        u = offset[..., 0] * cos[:, None, None] + offset[..., 1] * sin[:, None, None]
        v = -offset[..., 0] * sin[:, None, None] + offset[..., 1] * cos[:, None, None]
        inside = ((u / 0.35) ** 2 + (v / 0.5) ** 2 <= 1).float()
        colour = torch.tensor([0.9, 0.7, 0.6])[None, :, None, None]
        return 0.2 + inside[:, None] * (colour - 0.2)

    source = head(0.2 * torch.rand(batch, 2, generator=generator) - 0.1, 0.3 * torch.rand(batch, generator=generator) - 0.15)
    driver = head(0.2 * torch.rand(batch, 2, generator=generator) - 0.1, 0.3 * torch.rand(batch, generator=generator) - 0.15)
    audio = torch.randn(batch, MEL.n_mels, MEL.window_frames, generator=generator)
    return {"source": source, "head_driver": driver, "eye_driver": driver * 0, "audio": audio}


SMOKE_WIDTHS = {"hourglass_max_channels": 256, "feature_channels": 128, "audio_channels": 128, "encoder_channels": 32}
"""Narrower than the paper's model so that the four variants fit in about a minute."""


def fit(variant: str, image_size: int, steps: int, batch_size: int) -> tuple[float, float, float]:
    """Train ``steps`` Adam steps on one batch; returns (first loss, last loss, seconds)."""
    torch.manual_seed(0)
    model = DisCoHead.from_variant(variant, image_size=image_size, **SMOKE_WIDTHS)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = synthetic_batch(batch_size, image_size)
    losses = []
    started = time.perf_counter()
    for step in range(steps):
        out = model(batch["source"], batch["head_driver"], batch["eye_driver"], batch["audio"])
        loss = torch.nn.functional.l1_loss(out["prediction"], batch["head_driver"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 10 == 0 or step + 1 == steps:
            print(f"  {variant}: step {step + 1}/{steps}  L1 {loss.item():.4f}", flush=True)
    return losses[0], losses[-1], time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)
    variants = list(VARIANTS) if args.variant == "all" else [args.variant]
    print(f"DisCoHead smoke run: {len(variants)} variant(s), {args.image_size} px, narrow widths, {args.steps} steps, batch {args.batch_size}, synthetic data")
    results = {variant: fit(variant, args.image_size, args.steps, args.batch_size) for variant in variants}
    print(f"\n{'variant':<10} {'first L1':>9} {'last L1':>9} {'seconds':>8}")
    for variant, (first, last, seconds) in results.items():
        print(f"{variant:<10} {first:>9.4f} {last:>9.4f} {seconds:>8.1f}")
    failed = [variant for variant, (first, last, _) in results.items() if not last < first]
    if failed:
        print(f"the loss did not go down for {', '.join(failed)}", file=sys.stderr)
        return 1
    print("all variants train.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
