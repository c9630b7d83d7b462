"""Quality measures of a segment, and the gates that skip a segment on them.

Every measure is stored in the segment's manifest record (``ClipRecord.measures``),
stored or skipped, so a user can see what the gates did and choose other thresholds
without decoding the videos again. The measures are cheap on purpose: they reuse the
landmarks and crops the job computes anyway.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..contracts import STATS_NAME, ClipConfig

if TYPE_CHECKING:
    from ..manifest import Manifest

SHARPNESS_SIZE = 128
"""Crops are measured at this side whatever ``--image-size``, so sharpness values compare
across datasets made at different sizes."""

CLIP_LEVEL = 0.999
"""A sample at or above this magnitude (full scale is 1) counts as clipped."""


IDENTITY_SIZE = 256
"""Crops are brought to this side before dlib's identity embedding (the evaluation's face measures' size)."""

IDENTITY_EVERY_SECONDS = 2.0
"""A segment's face is embedded once per this many seconds, and at its first and last frame."""

_FACE_MEASURES: Any = None


@dataclasses.dataclass(frozen=True)
class IdentityRun:
    """Frames of a segment whose sampled faces are one person: its first and last sample, their largest distance."""

    first: int
    last: int
    distance: float


def identity_picks(count: int, every: int) -> list[int]:
    """The frames of a ``count``-frame segment that are embedded: every ``every``-th one and the last."""
    return sorted({*range(0, count, max(every, 1)), count - 1}) if count else []


def identity_embeddings(crops: np.ndarray, picks: list[int]) -> np.ndarray:
    """``(len(picks), 128)`` dlib identity embeddings of the face crops at ``picks`` (resized to 256 px).

    dlib's face detector finds the face in each crop (else the crop's face box is used), its
    landmarks align it, and its ResNet embeds it: about 65 ms a crop on one core.
    """
    global _FACE_MEASURES
    if _FACE_MEASURES is None:  # dlib's networks load once per worker process
        from ..metric_networks import FaceMeasures

        _FACE_MEASURES = FaceMeasures()
    frames = np.stack(
        [
            np.asarray(Image.fromarray(crops[index]).resize((IDENTITY_SIZE, IDENTITY_SIZE), Image.Resampling.BILINEAR))
            for index in picks
        ]
    )
    return _FACE_MEASURES.measure(frames, _FACE_MEASURES.boxes(frames))[1]


def identity_runs(embeddings: np.ndarray, picks: list[int], limit: float) -> list[IdentityRun]:
    """The samples cut into runs of one person each, in time order.

    A run grows while the next sample is within ``limit`` of every sample already in it, so
    no two samples of a run are further apart than ``limit``; the next sample starts a new
    run. A person who changes and comes back makes three runs.
    """
    distances = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)
    runs: list[IdentityRun] = []
    first = 0
    for index in range(1, len(picks) + 1):
        if index == len(picks) or distances[index, first:index].max() > limit:
            inside = distances[first:index, first:index]
            runs.append(IdentityRun(picks[first], picks[index - 1], float(inside.max())))
            first = index
    return runs


def locate_changes(
    crops: np.ndarray, runs: list[IdentityRun], embeddings: np.ndarray, picks: list[int], limit: float
) -> list[IdentityRun]:
    """``runs`` with each change of person placed on its frame, by bisection between the two runs' samples.

    Between the last sample of one run and the first of the next, the frame halfway is
    embedded and joins the side it is nearer to (the earlier one only within ``limit``),
    until the two sides are adjacent frames: about 6 more embeddings per change (0.4 s)
    for 2 s between samples, so no frame of either person is dropped.
    """
    at = {pick: embedding for pick, embedding in zip(picks, embeddings)}
    placed = [runs[0]]
    for run in runs[1:]:
        before, after = placed[-1], run
        last, first = before.last, after.first
        ending, starting = at[last], at[first]
        while first - last > 1:
            middle = (first + last) // 2
            embedding = identity_embeddings(crops, [middle])[0]
            to_before, to_after = np.linalg.norm(embedding - ending), np.linalg.norm(embedding - starting)
            if to_before <= limit and to_before <= to_after:
                last = middle
            else:
                first = middle
        placed[-1] = dataclasses.replace(before, last=last)
        placed.append(dataclasses.replace(after, first=first))
    return placed


def identity_distance(crops: np.ndarray, every: int = 50) -> float:
    """Largest distance between dlib's 128-d identity embeddings of a segment's crops, sampled every ``every`` frames.

    A shot whose tracked face changes person (the detector jumped to another speaker, an
    interview's reverse shot without a hard cut) shows as a distance above dlib's 0.6
    same-person threshold. The job samples every :data:`IDENTITY_EVERY_SECONDS` (50 frames
    at 25 fps) and the last frame, so a change and back within a segment is seen too.
    """
    return largest_distance(identity_embeddings(crops, identity_picks(len(crops), every)))


def largest_distance(embeddings: np.ndarray) -> float:
    """Largest distance between two of the embeddings (0 for one)."""
    return float(np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1).max())


def face_size(boxes: np.ndarray, scale: float = 1.0) -> float:
    """Median side of the crop box before resizing, in pixels of the source (``scale`` = source / decoded width)."""
    return float(np.median(boxes[:, 2] - boxes[:, 0]) * scale)


def laplacian_variance(image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image: low when the image is blurred."""
    grey = np.asarray(
        Image.fromarray(image).convert("L").resize((SHARPNESS_SIZE, SHARPNESS_SIZE), Image.Resampling.BILINEAR),
        np.float64,
    )
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    return float(laplacian.var())


def sharpness(crops: np.ndarray, every: int = 5) -> float:
    """Median variance of the Laplacian of the face crops (every ``every``-th frame)."""
    return float(np.median([laplacian_variance(crop) for crop in crops[::every]]))


def landmark_jitter(landmarks: np.ndarray) -> float:
    """Frame-to-frame landmark noise, as a fraction of the face's size.

    The mean size of the second difference over time of each landmark: smooth head
    motion has a small second difference, a landmark fit that jumps around does not.
    """
    if len(landmarks) < 3:
        return 0.0
    extent = float(np.median(np.ptp(landmarks, axis=1).max(axis=-1)))
    second = landmarks[2:] - 2 * landmarks[1:-1] + landmarks[:-2]
    return float(np.linalg.norm(second, axis=-1).mean() / max(extent, 1e-6))


POSE_LANDMARKS = (17, 21, 22, 26, 36, 39, 42, 45, 30, 31, 33, 35)
"""The 68-point indices head pose is fitted on: brow ends, eye corners, nose tip and nose
base. The mouth and the chin are left out: an open mouth moves them, not the head."""

POSE_MODEL = np.array(
    [
        [-6.825897, -6.760612, -4.402142],  # 17 outer end of the brow on the image's left
        [-1.330353, -7.122144, -6.903745],  # 21 inner end of that brow
        [1.330353, -7.122144, -6.903745],  # 22
        [6.825897, -6.760612, -4.402142],  # 26
        [-5.311432, -5.485328, -3.987654],  # 36 outer corner of the eye on the image's left
        [-1.789930, -5.393625, -4.413414],  # 39 its inner corner
        [1.789930, -5.393625, -4.413414],  # 42
        [5.311432, -5.485328, -3.987654],  # 45
        [0.000000, -1.916389, -7.654050],  # 30 nose tip
        [-2.005628, -1.409845, -6.165652],  # 31 nose base, left
        [0.000000, 0.000000, -6.763430],  # 33 nose base, centre
        [2.005628, -1.409845, -6.165652],  # 35 nose base, right
    ]
)
"""A generic face at :data:`POSE_LANDMARKS`, in camera axes for a face looking into the
camera (x to the image's right, y down, z away from the camera; units of about 0.9 cm).
The points of Martins and Batista's anthropometric head model (ISR Coimbra) that head-pose
code commonly pairs with dlib's 68 landmarks, mirrored to a right-handed frame: as commonly
copied they are a mirror image, which no rotation fits (the fit puts the face behind the camera)."""

POSE_FOCAL = 3.0
"""The virtual camera's focal length in units of the fitted landmarks' extent: a camera
about three face widths away, the perspective of a webcam or a talking-head framing."""

POSE_MEDIAN_FRAMES = 5
"""Per-frame angles are median-filtered over this many frames (0.2 s at 25 fps) before the
extreme is taken, so one bad landmark fit does not read as a head turn."""


def head_pose(landmarks: np.ndarray) -> np.ndarray:
    """``(T, 2)`` yaw and pitch in degrees of each frame's head, from its 68 landmarks (pixels).

    A perspective fit (OpenCV's ``solvePnP``, started from a frontal face) of the generic
    face :data:`POSE_MODEL` to the frame's :data:`POSE_LANDMARKS`, seen by a virtual camera
    centred on them (so a face looking into the lens reads 0 wherever it is in the frame).
    Yaw is the left-right angle between the face's forward direction and the line of sight,
    pitch the up-down one (positive: turned to the image's right, tilted up); roll, a turn
    about that forward direction, changes neither. Checked on the model itself seen from 1.5
    to 15 face widths away: within 2 degrees at the assumed distance (:data:`POSE_FOCAL`),
    within 5 (up to 15 % low when seen from afar) at the others.
    """
    import cv2

    angles = np.zeros((len(landmarks), 2))
    model = POSE_MODEL - POSE_MODEL.mean(axis=0)
    depth = POSE_FOCAL * float(np.ptp(model[:, :2], axis=0).max())
    for index, frame in enumerate(np.asarray(landmarks, np.float64)[:, POSE_LANDMARKS]):
        points = frame - frame.mean(axis=0)
        focal = POSE_FOCAL * max(float(np.ptp(points, axis=0).max()), 1e-6)
        camera = np.array([[focal, 0.0, 0.0], [0.0, focal, 0.0], [0.0, 0.0, 1.0]])
        found, rotation, _ = cv2.solvePnP(
            model, points, camera, None, np.zeros(3), np.array([0.0, 0.0, depth]), True, cv2.SOLVEPNP_ITERATIVE
        )
        if not found:
            continue
        backward = cv2.Rodrigues(rotation)[0][:, 2]  # the model's z axis (into the head) in camera axes
        angles[index] = np.degrees(
            [np.arctan2(-backward[0], backward[2]), np.arctan2(backward[1], np.hypot(backward[0], backward[2]))]
        )
    return angles


def pose_extremes(landmarks: np.ndarray) -> tuple[float, float]:
    """The segment's largest |yaw| and |pitch| in degrees (:func:`head_pose`, median-filtered over 5 frames)."""
    if not len(landmarks):
        return 0.0, 0.0
    angles = head_pose(landmarks)
    half = min(POSE_MEDIAN_FRAMES, len(angles)) // 2
    if half:
        padded = np.pad(angles, ((half, half), (0, 0)), mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1, axis=0)
        angles = np.median(windows, axis=-1)
    yaw, pitch = np.abs(angles).max(axis=0)
    return float(yaw), float(pitch)


def audio_dbfs(waveform: np.ndarray) -> float:
    """RMS level of the waveform in dBFS (-inf-safe: silence gives -240)."""
    rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64)))) if waveform.size else 0.0
    return 20 * math.log10(max(rms, 1e-12))


def clipped_share(waveform: np.ndarray) -> float:
    """Fraction of samples at full scale: clipped recordings distort the speech the model learns from."""
    return float(np.mean(np.abs(waveform) >= CLIP_LEVEL)) if waveform.size else 0.0


@dataclasses.dataclass(frozen=True)
class Gate:
    """A quality gate: a segment whose ``measure`` is past the :class:`ClipConfig` field ``field`` is skipped.

    The one table of gates (:data:`GATES`) serves the job (which skips), the statistics
    (which draw the thresholds) and ``discohead refilter`` (which applies stricter ones to a
    manifest without decoding anything).
    """

    measure: str
    field: str
    minimum: bool
    """True: the measure must be at least the threshold; False: at most."""
    reason: str

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    def limit(self, config: ClipConfig) -> float:
        return float(getattr(config, self.field))

    def failure(self, value: float, config: ClipConfig) -> str | None:
        """The skip detail when ``value`` fails the gate under ``config``, else None."""
        limit = self.limit(config)
        if (value < limit) if self.minimum else (value > limit):
            return f"{self.measure} {value:.4g} {'<' if self.minimum else '>'} {self.flag} {limit:g}"
        return None


GATES = (
    Gate("face_size", "min_face_size", True, "small_face"),
    Gate("jitter", "max_jitter", False, "jittery"),
    Gate("yaw", "max_yaw", False, "head_pose"),
    Gate("pitch", "max_pitch", False, "head_pose"),
    Gate("audio_dbfs", "min_audio_dbfs", True, "quiet_audio"),
    Gate("clipping", "max_clipping", False, "clipped_audio"),
    Gate("sharpness", "min_sharpness", True, "blurry"),
    Gate("identity_distance", "max_identity_distance", False, "identity_change"),
)
"""Every threshold gate, in the order the job applies them (the cheap ones first). The job
splits a segment whose identity changes rather than skipping it; a stricter
``--max-identity-distance`` in ``discohead refilter`` drops the parts past it. The
audio-visual offset is judged apart (:mod:`discohead.data.sync`: confidence, then size)."""

GATES_BY_MEASURE = {gate.measure: gate for gate in GATES}


QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def dataset_stats(manifest: Manifest) -> dict[str, Any]:
    """What the segmentation and the gates did to the data, from the manifest alone.

    Hours decoded count every frame read from a video (a file skipped before its frames
    were decoded adds none); hours kept, the frames stored. Each measure's distribution
    is given over the stored segments and over every segment measured (skipped ones too),
    so the effect of a threshold shows as the gap between the two.
    """
    records = [*manifest.clips, *manifest.skipped]
    measured, kept = measure_values(manifest)
    totals = manifest.totals
    return {
        "videos": len({record.source for record in records}),
        "hours_decoded": round(sum(r.decoded_frames / r.fps for r in records if r.fps) / 3600, 4),
        "hours_kept": round(totals.seconds / 3600, 4),
        "segments_kept": totals.clips,
        "segments_skipped": totals.skipped,
        "skipped_by_reason": totals.skipped_by_reason,
        "measures": {
            name: {
                "quantiles": [f"{q:g}" for q in QUANTILES],
                "kept": _quantiles(kept.get(name, [])),
                "measured": _quantiles(values),
            }
            for name, values in sorted(measured.items())
        },
    }


def measure_values(manifest: Manifest) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each measure's values over every segment measured, and over the stored ones (manifest order)."""
    measured: dict[str, list[float]] = {}
    kept: dict[str, list[float]] = {}
    for record in [*manifest.clips, *manifest.skipped]:
        for name, value in record.measures.items():
            measured.setdefault(name, []).append(value)
            if record.stored:
                kept.setdefault(name, []).append(value)
    return measured, kept


def _quantiles(values: list[float]) -> list[float]:
    return [round(float(v), 5) for v in np.quantile(values, QUANTILES)] if values else []


STATS_PLOT_NAME = "stats.png"
"""The measures' histograms and the skips by reason (:func:`plot_stats`), published beside ``stats.json``."""

SKIPPED_PANEL = "skipped"
"""The name of :func:`plot_stats`'s last panel: skipped segments by reason."""


def gate_thresholds(config: ClipConfig, name: str) -> list[tuple[str, float]]:
    """The label and value of each line a measure's gate draws (from :data:`GATES`, and the offset's
    ``--max-av-shift`` at minus and plus); a measure without a gate has none."""
    if name == "av_offset":
        return [(f"--max-av-shift \N{PLUS-MINUS SIGN}{config.max_av_shift:g}", -float(config.max_av_shift)),
                ("", float(config.max_av_shift))]  # fmt: skip
    if name == "av_confidence" and config.av_method == "lips":
        return [(f"--av-confidence {config.av_confidence:g}", float(config.av_confidence))]
    if name == "av_margin" and config.av_method == "lips":
        return [(f"--av-margin {config.av_margin:g}", float(config.av_margin))]
    gate = GATES_BY_MEASURE.get(name)
    return [(f"{gate.flag} {gate.limit(config):g}", gate.limit(config))] if gate else []


def plot_stats(manifest: Manifest, stats: dict[str, Any] | None = None, columns: int = 3) -> tuple[bytes, list[str]]:
    """``stats.png``: per measure, the histogram over every segment measured with the stored segments' over it
    (same bins) and the gate's threshold as a vertical line; last, the skipped segments by reason.

    Returns the PNG and the names of its panels (the measures, sorted, then :data:`SKIPPED_PANEL`). Drawn with
    matplotlib's Agg canvas directly, so no pyplot state or display is touched (about 0.3 s for ten panels).
    """
    import io

    from matplotlib.figure import Figure

    stats = stats or dataset_stats(manifest)
    measured, kept = measure_values(manifest)
    names = sorted(measured)
    panels = [*names, SKIPPED_PANEL]
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(4.2 * columns, 2.6 * rows + 0.4), dpi=72)
    figure.subplots_adjust(left=0.04, right=0.98, bottom=0.04, top=1 - 0.8 / (2.6 * rows + 0.4), hspace=0.35)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        everything, stored = _finite(measured[name]), _finite(kept.get(name, []))
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=7)
        if everything.size:
            edges = np.histogram_bin_edges(everything, bins=min(30, max(5, everything.size)))
            ax.stairs(
                np.histogram(everything, edges)[0],
                edges,
                fill=True,
                color="0.75",
                label=f"measured ({everything.size})",
            )
            ax.stairs(
                np.histogram(stored, edges)[0],
                edges,
                fill=True,
                color="tab:blue",
                alpha=0.8,
                label=f"kept ({stored.size})",
            )
        for label, value in gate_thresholds(manifest.config, name):
            ax.axvline(value, color="tab:red", linestyle="--", linewidth=1.2, label=label or None)
        ax.legend(fontsize=7, framealpha=0.6, loc="best")
    reasons = stats["skipped_by_reason"]
    ax = axes[len(names)]
    ax.set_title("skipped segments by reason", fontsize=10)
    ax.tick_params(labelsize=7)
    if reasons:
        ordered = sorted(reasons.items(), key=lambda item: item[1])
        ax.barh(range(len(ordered)), [count for _, count in ordered], color="tab:orange")
        ax.set_yticks([])  # the reasons are written in the bars, so the panel needs no margin for them
        for row, (reason, count) in enumerate(ordered):
            ax.text(0, row, f" {reason} ({count})", va="center", fontsize=8)
    else:
        ax.text(0.5, 0.5, "none skipped", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    figure.suptitle(
        f"{stats['hours_decoded']:.3g} h decoded, {stats['hours_kept']:.3g} h kept in {stats['segments_kept']} "
        f"segments, {stats['segments_skipped']} skipped (config {manifest.config_hash})",
        fontsize=11,
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue(), panels


def _finite(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def stats_files(manifest: Manifest, stats: dict[str, Any]) -> dict[str, bytes]:
    """What :func:`write_stats` publishes, by file name: ``stats.json`` and ``stats.png``."""
    import json

    return {STATS_NAME: json.dumps(stats, indent=1).encode(), STATS_PLOT_NAME: plot_stats(manifest, stats)[0]}


def stage_throughput(
    listing_seconds: float,
    files: int,
    this_run: list[dict[str, Any]],
    writes: list[dict[str, Any]],
    process_seconds: float,
    wall_seconds: float,
    workers: int,
) -> dict[str, Any]:
    """This run's time and frames per stage, ``throughput`` in stats.json (clips resumed from earlier runs are
    not in it, unlike the rest of the stats).

    A stage's worker seconds are summed over its tasks (a stage busy on 4 workers for 10 s of wall time
    shows about 40), and its frames per second are per worker second: they compare across cluster sizes.
    ``process_videos`` is stages 2-7 (fetch, decode, landmarks, cuts, gates, crops, encoding; each
    segment record's ``seconds``), ``write_shards`` the Datasink's tasks (packing and publishing tars).
    """

    def rate(frames: float, seconds: float) -> float:
        return round(frames / seconds, 2) if seconds > 0 else 0.0

    process = sum(clip.get("seconds", 0.0) for clip in this_run)
    decoded = sum(clip.get("decoded_frames", 0) for clip in this_run)
    write, stored = sum(task["seconds"] for task in writes), sum(task["frames"] for task in writes)
    return {
        "list_inputs": {"wall_seconds": round(listing_seconds, 3), "files": files},
        "process_videos": {
            "worker_seconds": round(process, 3),
            "segments": len(this_run),
            "decoded_frames": decoded,
            "frames_per_second": rate(decoded, process),
        },
        "write_shards": {
            "worker_seconds": round(write, 3),
            "tasks": len(writes),
            "stored_frames": stored,
            "frames_per_second": rate(stored, write),
        },
        "job": {
            "wall_seconds": round(wall_seconds, 3),
            "process_wall_seconds": round(process_seconds, 3),
            "workers": workers,
            "decoded_frames_per_second": rate(decoded, process_seconds),
        },
    }


def write_stats(
    manifest: Manifest,
    dest: str,
    storage_options: dict[str, Any] | None = None,
    throughput: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish ``DEST/stats.png`` and ``DEST/stats.json`` (before the manifest, which is written last); return the
    stats.

    ``throughput`` (the job's seconds and frames per stage in this run) goes in under its key as given; the
    rest is :func:`dataset_stats`, from the manifest alone.
    """
    from ..storage import filesystem_for, publish_bytes

    stats = dataset_stats(manifest) | ({"throughput": throughput} if throughput else {})
    fs, root = filesystem_for(dest, storage_options)
    for name, data in sorted(stats_files(manifest, stats).items(), reverse=True):  # the image first, the json last
        publish_bytes(data, fs, f"{root}/{name}")
    return stats


# --- choosing again from the manifest: discohead refilter ------------------------------

REFILTER_FIELDS = (*(gate.field for gate in GATES), "max_av_shift")
"""The settings a view may tighten: each gate's threshold and the largest audio shift."""


def refilter_failure(measures: dict[str, float], config: ClipConfig, made_with: ClipConfig) -> tuple[str, str] | None:
    """``(reason, detail)`` of the first gate that a stored segment's ``measures`` fail under ``config``.

    A measure the record lacks is not judged (a manifest from before the gate, or a segment
    without real audio). The offset fails when the job trusted it (under ``made_with``, the
    settings the shards were made with) and it is larger than ``config.max_av_shift``.
    """
    from .sync import offset_trusted  # here, not at the top: sync imports torch, which shard write tasks must not

    for gate in GATES:
        if gate.measure in measures:
            failure = gate.failure(measures[gate.measure], config)
            if failure:
                return gate.reason, failure
    offset, confidence = measures.get("av_offset"), measures.get("av_confidence")
    margin = measures.get("av_margin", float("inf"))  # records from before the margin: trusted on confidence
    trusted = offset is not None and confidence is not None and offset_trusted(confidence, margin, made_with)
    if trusted and abs(offset) > config.max_av_shift:
        return "av_offset", f"audio offset {offset:+g} frames > --max-av-shift {config.max_av_shift}"
    return None


def refilter(manifest: Manifest, stricter: dict[str, float], shards_at: str) -> Manifest:
    """A view of ``manifest`` with stricter thresholds: its stored segments that fail them become skipped.

    ``stricter`` maps :data:`REFILTER_FIELDS` to new values; each must keep no segment the
    job skipped (a skipped segment's frames were never stored), else ValueError in one line.
    The view reads ``shards_at``'s shards (the DEST the job wrote, whose manifest this is),
    only its own clips' samples. Nothing is decoded: this is the manifest's ``measures`` alone.
    """
    old = manifest.config
    unknown = sorted(set(stricter) - set(REFILTER_FIELDS))
    if unknown:
        raise ValueError(f"refilter cannot change {', '.join(unknown)}: only the gates' thresholds and max_av_shift")
    config = dataclasses.replace(old, **stricter)  # range-checked as any ClipConfig
    bounds = [(gate.flag, gate.limit(config), gate.limit(old), gate.minimum) for gate in GATES]
    for flag, new, made_with, minimum in [*bounds, ("--max-av-shift", config.max_av_shift, old.max_av_shift, False)]:
        if (new < made_with) if minimum else (new > made_with):
            raise ValueError(
                f"{flag} {new:g} is looser than the {made_with:g} the shards were made with: "
                "segments it would keep were never stored; rerun pipelines/preprocess.py with it"
            )
    kept, dropped = [], []
    for clip in manifest.clips:
        failure = refilter_failure(clip.measures, config, old)
        if failure is None:
            kept.append(clip)
        else:
            reason, detail = failure
            dropped.append(dataclasses.replace(clip, status="skipped", reason=reason, detail=f"refilter: {detail}"))
    used = {shard for clip in kept for shard in clip.shards}
    return dataclasses.replace(
        manifest,
        config=config,
        clips=kept,
        skipped=[*manifest.skipped, *dropped],
        shards={split: [shard for shard in shards if shard in used] for split, shards in manifest.shards.items()},
        run={"refilter": {field: getattr(config, field) for field in sorted(stricter)}, "made_from": manifest.run},
        view_of=manifest.view_of or shards_at,
    )
