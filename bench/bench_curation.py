"""Per-core throughput of each curation stage of the preprocessing job, without Ray.

The stages of one clip worker, timed apart on one core (torch and ffmpeg on one thread,
as in the job) on the same frames: decode (ffmpeg at the detection size), shot
detection (PySceneDetect's content detector), face tracking (dlib, a detection every 5
frames), the cheap gates (face size, jitter, audio), head pose (solvePnP per frame), the
audio-visual offset, sharpness (a 128 px crop every 5th frame), identity (dlib embeddings
every 2 s), the whole of ``process_video`` (both decodes, tracking, cuts, gates, crops,
mel, sample encoding), and the shard write (tars of its samples to a local folder, per
stored frame). Then the audio-visual offset estimate's accuracy on the GRID and portrait
clips with their audio moved by 0, +-2, +-4, +-8 frames. A frame/s figure per stage says
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
from discohead.data.shards import ShardWriterTask
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
    pose_s, _ = timed(lambda: curation.pose_extremes(landmarks), repeats)
    step = samples_per_frame(config)
    offset_s, _ = timed(lambda: sync.av_offset(landmarks, waveform, step, sample_rate=config.mel.sample_rate), repeats)
    boxes = crop_boxes(landmarks, width, height, config.smoothing_sigma, config.crop_scale, config.crop_lift)

    def sharpness() -> float:
        sampled = [crop_and_resize(frames[i], boxes[i], curation.SHARPNESS_SIZE) for i in range(0, count, 5)]
        return float(np.median([curation.laplacian_variance(crop) for crop in sampled]))

    sharp_s, _ = timed(sharpness, repeats)
    crops = np.stack([crop_and_resize(frame, box, config.image_size) for frame, box in zip(frames, boxes)])
    every = round(curation.IDENTITY_EVERY_SECONDS * config.fps)
    identity_s, _ = timed(lambda: curation.identity_embeddings(crops, curation.identity_picks(count, every)), repeats)
    whole_s, results = timed(lambda: list(process_video(path, "bench", "bench", backend, config, "train")), repeats)
    stored = sum(result.record.frames for result in results)

    def write() -> None:
        with tempfile.TemporaryDirectory() as dest:
            writer = ShardWriterTask(dest, None, name="bench", target_bytes=256 * 2**20)
            for result in results:
                writer.add_clip(result.record, result.samples)
            writer.commit()

    write_s, _ = timed(write, repeats)
    syncnet_s = syncnet_seconds(crops[: 10 * config.fps], waveform, config)
    return {
        "frames": count,
        "decode": count / decode_s,
        "shots": count / shots_s,
        "tracking": count / track_s,
        "cheap gates": count / gates_s,
        "head pose": count / pose_s,
        "offset": count / offset_s,
        "sharpness": count / sharp_s,
        "identity": count / identity_s,
        "process_video": count / whole_s,
        "shard write (stored frames)": stored / write_s,
        "syncnet offset": min(len(crops), 10 * config.fps) / syncnet_s,
    }


def syncnet_seconds(crops: np.ndarray, waveform: np.ndarray, config: ClipConfig) -> float:
    """Seconds of ``--av-method syncnet``'s offset on these crops, with SyncNet's network at random weights.

    Speed only: the cost does not depend on the weights (which cannot be downloaded here), and the
    offset it finds with random weights means nothing, so it is not reported.
    """
    from discohead.metric_networks import SyncNet

    network = SyncNet().eval().requires_grad_(False)
    audio = waveform[: int(len(crops) / config.fps * config.mel.sample_rate)]
    sync.syncnet_offset(network, crops[:10], audio, config.mel.sample_rate)  # warm-up
    started = time.perf_counter()
    sync.syncnet_offset(network, crops, audio, config.mel.sample_rate)
    return time.perf_counter() - started


SHIFTS = (0, 2, -2, 4, -4, 8, -8)

PORTRAIT_WITH_SOUND = ("d10.mp4", "d11.mp4", "d12.mp4", "d14.mp4")


def offset_estimates(path: Path, config: ClipConfig, backend) -> list[sync.Offset]:
    """The :class:`~discohead.data.sync.Offset` for the clip with its audio moved by each of :data:`SHIFTS` frames
    (positive: late).

    The landmarks come from the job's own tracking (a detection every ``--detect-every``
    frames); the audio is moved in memory, so the only offsets are the one added and
    whatever the recording had.
    """
    step = samples_per_frame(config)
    info, waveform = probe_and_decode_audio(path, config.mel.sample_rate)
    width, height = scaled_size(info.width, info.height, config.detect_max_side)
    frames = iter_video_frames(path, config.fps, width, height)
    track = track_largest_face(frames, backend, detect_every=config.detect_every)
    count = len(track)
    landmarks = fill_missing(track.landmarks.reshape(count, -1)).reshape(count, 68, 2)
    return [
        sync.av_offset(landmarks, sync.shift_audio(waveform, -shift, step), step, sample_rate=config.mel.sample_rate)
        for shift in SHIFTS
    ]


def offset_accuracy(grid: list[Path], portrait: list[Path], config: ClipConfig, backend) -> tuple[str, str, str]:
    """Per shift, the share found within one frame and the confidences; per clip, its estimates; what the job
    would act on.

    GRID recordings are taken as in sync, so the truth is the shift. The portrait clips'
    own offset is unknown, so for them an estimate counts when it moves with the shift:
    within one frame of (estimate unshifted + shift).
    """
    estimates = {path: offset_estimates(path, config, backend) for path in [*grid, *portrait]}
    truth = {path: [shift for shift in SHIFTS] for path in grid}
    truth |= {path: [estimates[path][0].frames + shift for shift in SHIFTS] for path in portrait}
    rows = []
    for index, shift in enumerate(SHIFTS):
        found = [abs(estimates[path][index].frames - shift) <= 1 for path in grid]
        moved = [abs(estimates[path][index].frames - truth[path][index]) <= 1 for path in portrait]
        grid_conf = [estimates[path][index].confidence for path in grid]
        rows.append(
            [
                f"{shift:+d}",
                f"{sum(found)}/{len(found)}",
                f"{min(grid_conf):.2f}-{max(grid_conf):.2f}",
                f"{sum(moved)}/{len(moved)}" if portrait else "-",
            ]
        )
    per_clip = [
        [
            path.name,
            " ".join(f"{found.frames:+d}" for found in estimates[path]),
            f"{min(found.confidence for found in estimates[path]):.2f}-"
            f"{max(found.confidence for found in estimates[path]):.2f}",
            f"{min(found.margin for found in estimates[path]):.2f}-"
            f"{max(found.margin for found in estimates[path]):.2f}",
        ]
        for path in [*grid, *portrait]
    ]
    trusted = [
        (path, index)
        for path in [*grid, *portrait]
        for index, found in enumerate(estimates[path])
        if sync.offset_trusted(found.confidence, found.margin, config)
    ]
    wrong = [(path, index) for path, index in trusted if abs(estimates[path][index].frames - truth[path][index]) > 1]
    acted = (
        f"At the defaults (`--av-confidence` {config.av_confidence:g}, `--av-margin` {config.av_margin:g}) the job "
        f"trusts {len(trusted)} of {sum(len(found) for found in estimates.values())} estimates, {len(wrong)} of them "
        f"more than one frame off"
        + (": " + ", ".join(f"{path.name} at {SHIFTS[index]:+d}" for path, index in wrong) if wrong else "")
        + "."
    )
    shifts = "estimates at shifts " + " ".join(f"{shift:+d}" for shift in SHIFTS)
    return (
        markdown_table(
            ["audio shift (frames)", "GRID: found within 1 frame", "GRID confidence", "portrait: moves with the shift"],
            rows,
        ),
        markdown_table(["clip", shifts, "confidence", "margin"], per_clip),
        acted,
    )


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
    header = ["input", "frames", "decode", "shot detection", "face tracking", "cheap gates", "head pose", "offset"]
    columns = ["sharpness", "identity", "process_video", "shard write (stored frames)", "syncnet offset (speed only)"]
    table = markdown_table([*header, *columns], rows)
    body = (
        f"Frames/s on one core (median of {args.repeats}), image size {args.image_size}, dlib, detection every "
        f"{config.detect_every} frames; process_video is the whole per-video work of a clip worker (two decodes "
        "when frames are resized for cropping, tracking, cuts, gates, crops, mel, encoding; the shard write is the "
        "next column, per stored frame). The last column is `--av-method syncnet`'s offset on up to 10 s of the "
        "crops, its network at random weights (the real file cannot be downloaded here; the cost does not depend "
        "on the weights, the offset found does, so only the speed is reported).\n\n"
        f"{table}\n"
    )
    grid = sorted(GRID.glob("*.mpg"))
    if grid:
        portrait = [GRID.parent / "portrait" / name for name in PORTRAIT_WITH_SOUND]
        by_shift, by_clip, acted = offset_accuracy(grid, [path for path in portrait if path.exists()], config, backend)
        body += (
            f"\nAudio-visual offset (`discohead.data.sync`: inner and outer lip opening against the loudness and the "
            f"speech-band energy, +-15 frames) on the {len(grid)} GRID clips (3 s each) and the portrait clips with "
            f"sound, their audio moved by a known number of frames; the job acts on an estimate at confidence >= "
            f"{config.av_confidence:g} and margin >= {config.av_margin:g}:\n\n{by_shift}\n\n{by_clip}\n\n{acted}\n"
        )
    print(body)
    if not args.no_report:
        append_report("Curation stages, per core", body)


if __name__ == "__main__":
    main()
