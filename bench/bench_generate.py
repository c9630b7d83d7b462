"""Generation benchmark: end-to-end frames/s against model-only frames/s, and peak memory against audio length.

    python bench/bench_generate.py [--sizes 128 256] [--seconds 4] [--device cpu|cuda]

End to end is the whole ``discohead generate`` path with all three drivers: decoding the
source, the audio, a head video and an eye video, tracking and cropping both videos,
the model, and H.264 encoding. Model-only is the same number of frames through the
model alone, in batches of the same size, from tensors already in memory. The goal is
end to end at least 0.8x model-only. The model has the paper's widths and untrained
weights (speed does not depend on the weights). Driver videos are GRID clips from
../shared/data when present, else synthetic cartoon faces.

The memory rows run ``discohead generate`` in a fresh process for 5 s and for 60 s of
audio (tiny widths, still source, a 2.4 s head video played back and forth) and report
the peak resident memory of each: it must not grow with the audio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from discohead import DisCoHead
from discohead.config import WIDTHS
from discohead.contracts import ClipConfig, mask_to_eye_region
from discohead.data.landmarks import DlibLandmarks
from discohead.data.synthetic import SyntheticClip, render_frames, speech_like_audio, write_synthetic_video, write_wav
from discohead.data.video import ffmpeg_executable
from discohead.generation import Generator, Request, generate

from common import append_report, markdown_table, median_seconds

GRID = Path(__file__).resolve().parents[2] / "shared" / "data" / "grid"


def checkpoint_for(size: int, widths: str) -> dict:
    model = DisCoHead.from_variant("affine-nm", image_size=size, **WIDTHS[widths])
    return model.checkpoint(
        train_config={"preprocessing": {**ClipConfig(image_size=size).to_json(), "landmarks": "dlib"}}
    )


def inputs(folder: Path, seconds: float) -> tuple[dict[str, Path], str]:
    """Source image, speech, head and eye videos: GRID when present, else synthetic."""
    waveform, _ = speech_like_audio(seconds, 16_000, seed=1)
    write_wav(folder / "speech.wav", waveform, 16_000)
    if (GRID / "bbaf2n.mpg").exists():
        ffmpeg = ffmpeg_executable()
        still = [ffmpeg, "-v", "error", "-i", str(GRID / "bbaf2n.mpg"), "-vframes", "1", str(folder / "source.png")]
        subprocess.run(still, check=True)
        return {"source": folder / "source.png", "audio": folder / "speech.wav", "head": GRID / "pwij3p.mpg",
                "eyes": GRID / "lwbsza.mpg"}, "GRID 360x288 clips"  # fmt: skip
    frame = render_frames(SyntheticClip(seconds=0.4, seed=2), np.zeros(1, np.float32))[0]
    Image.fromarray(frame).save(folder / "source.png")
    head = write_synthetic_video(folder / "head.mp4", SyntheticClip(seconds=seconds, seed=3))
    eyes = write_synthetic_video(folder / "eyes.mp4", SyntheticClip(seconds=seconds, seed=4))
    return {"source": folder / "source.png", "audio": folder / "speech.wav", "head": head, "eyes": eyes}, (
        "synthetic 192x160 cartoon clips"
    )


def model_only_fps(generator: Generator, frames: int, batch: int, device: str) -> float:
    model, size = generator.model.to(device), generator.size
    source = torch.rand(batch, 3, size, size, device=device)
    boxes = torch.tensor([[0.2, 0.3, 0.8, 0.5]], device=device).expand(batch, -1)
    audio = torch.randn(batch, model.config.n_mels, model.config.audio_frames, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def work() -> None:
        with torch.no_grad(), autocast:
            for _ in range(0, frames, batch):
                model(source, source, mask_to_eye_region(source, boxes), audio)

    return frames / median_seconds(work, repeats=3, device=device)


def end_to_end_fps(
    generator: Generator, files: dict[str, Path], folder: Path, batch: int, device: str
) -> tuple[float, int]:
    backend = DlibLandmarks()
    request = Request(str(files["source"]), str(files["audio"]), str(folder / "out.mp4"), str(files["head"]),
                      str(files["eyes"]), batch_size=batch, device=device)  # fmt: skip
    frames = 0

    def work() -> None:
        nonlocal frames
        frames = generate(generator, request, backend).frames

    seconds = median_seconds(work, repeats=3, device=device)
    return frames / seconds, frames


def peak_memory_mib(checkpoint: Path, files: dict[str, Path], audio: Path, output: Path) -> float:
    script = (
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent at fork, VmHWM starts anew at exec
        "import re, sys; from discohead.cli import main; code = main(sys.argv[1:]); "
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(code)"
    )
    command = [sys.executable, "-c", script, "generate", "--model", str(checkpoint), "--source", str(files["source"]),
               "--audio", str(audio), "--head-video", str(files["head"]), "--output", str(output)]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(completed.stdout.strip().splitlines()[-1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--seconds", type=float, default=4.0, help="audio length of the speed rows")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory rows")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    rows, memory_rows = [], []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        files, described = inputs(folder, args.seconds)
        for size in args.sizes:
            generator = Generator.from_checkpoint(checkpoint_for(size, "paper"))
            e2e, frames = end_to_end_fps(generator, files, folder, args.batch_size, args.device)
            model = model_only_fps(generator, frames, args.batch_size, args.device)
            goal = "met" if e2e >= 0.8 * model else f"missed by {0.8 * model - e2e:.2f} frames/s"
            rows.append([size, frames, f"{model:.2f}", f"{e2e:.2f}", f"{e2e / model:.2f}x", goal])
            print(rows[-1], flush=True)
        if not args.no_memory:
            checkpoint = folder / "tiny.pt"
            torch.save(checkpoint_for(128, "tiny"), checkpoint)
            for seconds in (5.0, 60.0):
                audio = folder / f"speech-{seconds:g}.wav"
                write_wav(audio, speech_like_audio(seconds, 16_000, seed=5)[0], 16_000)
                peak = peak_memory_mib(checkpoint, files, audio, folder / "memory.mp4")
                memory_rows.append([f"{seconds:g} s", f"{peak:.0f}"])
                print(memory_rows[-1], flush=True)
    body = (
        f"`python bench/bench_generate.py`: {args.seconds:g} s of audio, head and eye videos from {described}, "
        f"affine-nm at the paper's widths (untrained), batch {args.batch_size}, device {args.device}. End to end = "
        "decode + track + crop + model + H.264 encode; model-only = the same frames through the model alone. "
        "Goal: end to end at least 0.8x model-only.\n\n"
        + markdown_table(["size", "frames", "model-only frames/s", "end-to-end frames/s", "ratio", "goal"], rows)
    )
    if memory_rows:
        growth = float(memory_rows[1][1]) / float(memory_rows[0][1])
        body += (
            "\n\nPeak resident memory of `discohead generate` (fresh process, tiny widths at 128 px, still source, "
            f"head video looped): 60 s of audio needs {growth:.2f}x the memory of 5 s (goal: within 1.2x).\n\n"
            + markdown_table(["audio", "peak RSS MiB"], memory_rows)
        )
    print(body)
    if not args.no_report:
        append_report("Generation", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
