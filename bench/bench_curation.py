"""Per-core throughput of each curation stage of the preprocessing job, without Ray.

The stages of one clip worker, timed apart on one core (torch and ffmpeg on one thread,
as in the job) on the same frames: decode (ffmpeg at the detection size), shot
detection (PySceneDetect's content detector), face tracking (dlib, a detection every 5
frames), the cheap gates (face size, jitter, audio), sharpness (a 128 px crop every 5th
frame), and the whole of ``process_video`` (both decodes, tracking, cuts, gates, crops,
mel, sample encoding; the shard write is not in it). Then the audio-visual offset
estimate's accuracy on the GRID clips with their audio moved by 0, +-2, +-4, +-8 frames. A frame/s figure per stage says
where a worker's time goes, and, with the job's 1 -> N worker scaling
(bench_preprocess.py), what a cluster of N cores does.

The input is a synthetic video of several shots joined with hard cuts (192x160, made
here), and the shared GRID clips (360x288, eight speakers) joined into one video when
``../shared/data`` is present.

    python bench/bench_curation.py [--repeats 3] [--no-report]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from discohead.contracts import ClipConfig
from discohead.data import curation, sync
from discohead.data.clips import process_video, samples_per_frame
from discohead.data.crop import crop_and_resize, crop_boxes, fill_missing
from discohead.data.landmarks import load_landmark_backend, track_largest_face
from discohead.data.segments import ShotDetector
from discohead.data.synthetic import SyntheticClip, join_videos, write_cut_video
from discohead.data.video import iter_video_frames, probe_and_decode_audio, scaled_size

from common import append_report, markdown_table

REPO_ROOT = Path(__file__).resolve().parents[1]
GRID = REPO_ROOT.parent / "shared" / "data" / "grid"


def timed(work: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds of ``work`` over ``repeats`` runs, and its last result."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def stage_rates(path: Path, config: ClipConfig, backend, repeats: int) -> dict[str, float]:
    """Frames per second of each stage on one core for the video at ``path``."""
    info, waveform = probe_and_decode_audio(path, config.mel.sample_rate)
    width, height = scaled_size(info.width, info.height, config.detect_max_side)
    decode_s, frames = timed(lambda: list(iter_video_frames(path, config.fps, width, height)), repeats)
    count = len(frames)

    def shots() -> list[int]:
        detector = ShotDetector(config.fps, config.shot_threshold)
        return list(detector.watch(frames)) and detector.cuts

    shots_s, cuts = timed(shots, repeats)
    track_s, track = timed(
        lambda: track_largest_face(frames, backend, detect_every=config.detect_every, restart_at=cuts), repeats
    )
    landmarks = fill_missing(track.landmarks.reshape(count, -1)).reshape(count, 68, 2)

    def cheap_gates() -> None:
        boxes = crop_boxes(landmarks, width, height, config.smoothing_sigma, config.crop_scale, config.crop_lift)
        curation.face_size(boxes), curation.landmark_jitter(landmarks)
        curation.audio_dbfs(waveform), curation.clipped_share(waveform)

    gates_s, _ = timed(cheap_gates, repeats)
    boxes = crop_boxes(landmarks, width, height, config.smoothing_sigma, config.crop_scale, config.crop_lift)

    def sharpness() -> float:
        sampled = [crop_and_resize(frames[i], boxes[i], curation.SHARPNESS_SIZE) for i in range(0, count, 5)]
        return float(np.median([curation.laplacian_variance(crop) for crop in sampled]))

    sharp_s, _ = timed(sharpness, repeats)
    whole_s, _ = timed(lambda: list(process_video(path, "bench", "bench", backend, config, "train")), repeats)
    return {
        "frames": count,
        "decode": count / decode_s,
        "shots": count / shots_s,
        "tracking": count / track_s,
        "cheap gates": count / gates_s,
        "sharpness": count / sharp_s,
        "process_video": count / whole_s,
    }


SHIFTS = (0, 2, -2, 4, -4, 8, -8)


def offset_accuracy(paths: list[Path], config: ClipConfig, backend) -> list[list[object]]:
    """Share of estimates within one frame of an artificial audio shift, per shift, and the confidences.

    The audio of each clip is moved by a known number of frames (positive: late) in
    memory, so the only offset is the one added (plus whatever the recording had).
    """
    step = samples_per_frame(config)
    hits: dict[int, list[bool]] = {shift: [] for shift in SHIFTS}
    confidences: dict[int, list[float]] = {shift: [] for shift in SHIFTS}
    for path in paths:
        info, waveform = probe_and_decode_audio(path, config.mel.sample_rate)
        width, height = scaled_size(info.width, info.height, config.detect_max_side)
        track = track_largest_face(iter_video_frames(path, config.fps, width, height), backend, detect_every=5)
        count = len(track)
        landmarks = fill_missing(track.landmarks.reshape(count, -1)).reshape(count, 68, 2)
        for shift in SHIFTS:
            offset, confidence = sync.av_offset(landmarks, sync.shift_audio(waveform, -shift, step), step)
            hits[shift].append(abs(offset - shift) <= 1)
            confidences[shift].append(confidence)
    return [
        [f"{shift:+d}", f"{sum(hits[shift])}/{len(hits[shift])}", f"{np.median(confidences[shift]):.2f}"]
        for shift in SHIFTS
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--no-report", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ClipConfig(image_size=args.image_size)
    backend = load_landmark_backend("dlib")[0]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        shots = [
            SyntheticClip(seconds=6.0, seed=41),
            SyntheticClip(seconds=4.0, seed=42, background=(150, 120, 60), face_height=100),
            SyntheticClip(seconds=12.0, seed=43, background=(40, 130, 90), face_height=84),
        ]
        video, _ = write_cut_video(Path(scratch) / "cuts.mp4", shots, scratch)
        inputs = [("synthetic, 3 shots, 192x160", video)]
        grid = sorted(GRID.glob("*.mpg"))
        if grid:
            inputs.append((f"{len(grid)} GRID clips joined, 360x288", join_videos(grid, Path(scratch) / "grid.mp4")))
        for name, path in inputs:
            rates = stage_rates(path, config, backend, args.repeats)
            rows.append([name, rates["frames"], *(f"{rates[key]:.0f}" for key in list(rates)[1:])])
    header = ["input", "frames", "decode", "shot detection", "face tracking", "cheap gates", "sharpness"]
    table = markdown_table([*header, "process_video"], rows)
    body = (
        f"Frames/s on one core (median of {args.repeats}), image size {args.image_size}, dlib, detection every "
        f"{config.detect_every} frames; process_video is the whole per-video work of a clip worker (two decodes "
        "when frames are resized for cropping, tracking, cuts, gates, crops, mel, encoding; no shard write).\n\n"
        f"{table}\n"
    )
    grid = sorted(GRID.glob("*.mpg"))
    if grid:
        accuracy = markdown_table(["audio shift (frames)", "found within 1 frame", "median confidence"],
                                  offset_accuracy(grid, config, backend))  # fmt: skip
        body += (
            f"\nAudio-visual offset (`discohead.data.sync`: inner-lip opening against the loudness envelope, +-15 "
            f"frames) on the {len(grid)} GRID clips (3 s each) with their audio moved by a known number of frames; "
            f"the job acts on an estimate only at confidence >= {config.av_confidence:g}:\n\n{accuracy}\n"
        )
    print(body)
    if not args.no_report:
        append_report("Curation stages, per core", body)


if __name__ == "__main__":
    main()
