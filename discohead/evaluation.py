"""Reconstruction evaluation (paper §3.3): drive each test clip's first frame with its own test frames.

For every clip with frames in the evaluated split, the source is the clip's first stored
frame and each test frame is the head driver, the eye driver (masked to its eye box) and
the audio window; the prediction is compared with that test frame. Two baselines put the
numbers in scale: copying the source unchanged (``copy``), and the source warped by the
predicted head motion alone (``warp``, ``S_T``), which shows what the encoder and decoder add.

Metrics (Table 1 and more), each frame-averaged per system (model, copy, warp):
``psnr``, ``ssim``, ``lpips``, ``fid``, ``akd`` (pixels at 256 px), ``aed`` (dlib identity
embedding distance), ``mouth_corr`` and ``eye_corr`` (per-clip Pearson correlation of the
inner-lip opening and of the eye aspect ratio with the ground truth's, averaged over clips),
``lse_d``, ``lse_c`` and ``lse_offset`` (SyncNet's lip-sync distance, confidence and AV offset
per clip, as Wav2Lip reports them, averaged over clips; see :func:`clip_lip_sync`).

Disentanglement (the paper's claim that each input controls its own part of the face),
measured on the same frames for the model: ``audio_mouth_share`` (only the audio changes:
share of the pixel change inside the mouth box), ``eye_eye_share`` (only the eye driver
changes: share inside the eye box) and ``head_landmark_shift`` (only the head driver
changes: mean displacement, in pixels at 256 px, of the jaw and nose landmarks).

Control use (does the model use its audio and eye inputs at all?), measured by driving the same
frames with the input from another time of the same clip (same speaker, same session, never
at least :data:`CONTROL_GAP` frames away) and comparing with the ground truth:

- ``audio_gain``: ``1 - L1_mouth(own audio) / L1_mouth(audio from elsewhere)``, the relative drop
  of the error inside the mouth box that the frame's own audio brings. 0: the audio is ignored;
  negative: it hurts.
- ``eye_gain``: the same inside the eye box, for the eye driver.
- ``audio_focus`` and ``eye_focus``: of the pixel change that swapping the input makes, the share
  inside its box divided by the box's share of the frame: 1 is a change spread evenly over the
  frame (no localisation), the paper's Fig. 2 is far above it.

The mouth box comes from the shards' landmarks (the preprocessing job's detector), else from
dlib's landmarks on the ground truth; a clip shorter than ``2 * CONTROL_GAP`` test frames has no
"elsewhere" and is left out of these four.

Lip-audio sync without SyncNet's weights: ``sync_confidence`` and ``sync_offset`` are the
preprocessing job's estimator (:func:`discohead.data.sync.av_offset`: the lips' opening against
the audio's loudness, the best lag within +-15 frames and its correlation) on dlib's landmarks of
the model's frames with the clip's audio; ``real_sync_*`` the same on the real frames, the
scale to read it against (in sync: offset 0 +- 1 frame). Per clip of at least 39 test frames
with its audio (:func:`attach_audio`), averaged over clips.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .contracts import FPS, MEL, SPLITS, MelSettings, mouth_box_from_landmarks
from .data.shards import iter_split
from .data.sync import MAX_LAG, TREND_FRAMES, av_offset
from .metrics import (
    box_area,
    box_l1,
    eye_aspect_ratio,
    inner_lip_opening,
    keypoint_distance,
    pearson,
    psnr,
    share_inside,
    ssim,
)
from .model import DisCoHead
from .pretrained import PretrainedWeightsUnavailable
from .training import ModelInputs, model_inputs

SYSTEMS = ("model", "copy", "warp")
"""The model and the two baselines every metric is reported for."""
METRICS = ("psnr", "ssim", "lpips", "fid", "akd", "aed", "mouth_corr", "eye_corr", "lse_d", "lse_c", "lse_offset")
LIP_SYNC = ("lse_d", "lse_c", "lse_offset")
"""What needs SyncNet and the clips' audio."""
DISENTANGLEMENT = ("audio_mouth_share", "eye_eye_share", "head_landmark_shift")
LIP_AUDIO = ("sync_confidence", "sync_offset", "real_sync_confidence", "real_sync_offset")
"""The weight-free lip-audio estimate on the model's frames and on the real ones (needs faces and audio)."""
CONTROL_GAINS = ("audio_gain", "eye_gain")
CONTROLS = (*CONTROL_GAINS, "audio_focus", "eye_focus", *LIP_AUDIO)
MODEL_MEASURES = (*DISENTANGLEMENT, *CONTROLS)
"""What is measured of the model alone (no baseline): a row's extra columns in the evaluation table."""
SYNC_FRAMES = 2 * MAX_LAG + TREND_FRAMES
"""Frames the lip-audio estimator needs to try every lag on twice its length (discohead.data.sync)."""
CONTROL_GAP = 7
"""Fewest frames between a test frame and the same clip's frame whose input replaces it. The 400 ms
audio windows of frames 7 apart (280 ms at 25 fps) share only their outer 120 ms; their centres, where
the mouth's shape is decided, share nothing. A 3 s GRID clip's test split (15 frames) qualifies; the
shared edges make the gain, if anything, an underestimate."""
FACE_METRICS = ("akd", "aed", "mouth_corr", "eye_corr", "audio_mouth_share", "head_landmark_shift", *LIP_AUDIO)
"""What needs dlib's face measures."""
POSE_LANDMARKS = tuple(range(0, 17)) + tuple(range(27, 36))
"""Jaw and nose: the points that move with the head but belong to neither the mouth nor the eye region."""


@dataclass
class ClipFrames:
    """A test clip: its first frame (the source) and its test frames with their inputs.

    LSE needs the test frames' audio, which the shards do not keep (only its mel windows):
    :func:`attach_audio` reads it from the clip's original file (``origin``) into ``waveform``,
    or says in ``audio_note`` why it could not.
    """

    clip_id: str
    source: np.ndarray
    driver: np.ndarray
    mel: np.ndarray
    eye_boxes: np.ndarray
    origin: str = ""
    frame_index: np.ndarray | None = None
    fps: float = FPS
    waveform: np.ndarray | None = None
    audio_note: str = "audio not read"
    landmarks: np.ndarray | None = None

    def mouth_boxes(self, part: slice) -> torch.Tensor | None:
        """The test frames' mouth boxes from the shards' landmarks; None where the shards hold none (all zero)."""
        if self.landmarks is None or not np.any(self.landmarks):
            return None
        return mouth_box_from_landmarks(torch.from_numpy(self.landmarks[part]).float(), self.driver.shape[1])


def clips_with_test_frames(
    dest: str,
    storage_options: dict[str, Any] | None = None,
    split: str = "test",
    max_clips: int | None = None,
    damaged: list[str] | None = None,
) -> Iterator[ClipFrames]:
    """Clips with ``split`` chunks (the first ``max_clips`` by id), each with its first frame in any split.

    A sample or shard that cannot be read, or a chunk of the wrong shape or not finite, is
    passed over, as in training; a clip that then has fewer ``split`` chunks than the
    manifest lists is left out whole (its frames would not run on in time). ``damaged``,
    when given, receives a line for each.
    """
    from .manifest import Manifest
    from .training import check_chunk, chunk_shapes

    manifest = Manifest.read(dest, storage_options)
    shapes, problems = chunk_shapes(manifest), []
    first: dict[str, tuple[int, np.ndarray]] = {}
    tests: dict[str, list[dict[str, Any]]] = {}
    for name in SPLITS:
        for chunk in iter_split(dest, name, storage_options, damaged=problems, manifest=manifest):
            try:
                check_chunk(chunk, shapes)
            except ValueError as error:
                problems.append(f"sample {chunk.get('__key__')}: {error}")
                continue
            clip_id, start = chunk["meta"]["clip_id"], chunk["meta"]["first_frame"]
            if clip_id not in first or start < first[clip_id][0]:
                first[clip_id] = (start, chunk["frames"][0])
            if name == split:
                tests.setdefault(clip_id, []).append(chunk)
    expected = {clip.clip_id: clip.chunks.get(split, 0) for clip in manifest.clips}
    for clip_id, count in expected.items():
        if len(tests.get(clip_id, [])) < count:
            read = len(tests.pop(clip_id, []))
            problems.append(f"clip {clip_id} left out: {read} of its {count} {split} chunks read")
    if damaged is not None:
        damaged.extend(problems)
    for clip_id, chunks in sorted(tests.items())[:max_clips]:
        chunks.sort(key=lambda chunk: chunk["meta"]["first_frame"])
        meta = chunks[0]["meta"]
        yield ClipFrames(
            clip_id,
            first[clip_id][1],
            np.concatenate([chunk["frames"] for chunk in chunks]),
            np.concatenate([chunk["mel"] for chunk in chunks]),
            np.concatenate([chunk["eye_boxes"] for chunk in chunks]),
            origin=meta.get("source", ""),
            frame_index=np.concatenate(
                [chunk["meta"]["first_frame"] + np.arange(len(chunk["frames"])) for chunk in chunks]
            ),
            fps=float(meta.get("fps", FPS)),
            landmarks=np.concatenate([chunk["landmarks"] for chunk in chunks]) if "landmarks" in chunks[0] else None,
        )


AUDIO_MATCH_TOLERANCE = 0.05
"""Median absolute log-mel difference (natural log) under which a file's audio is the audio the shards hold.

The shards store float16 log-mels (steps of at most 0.008 in their range): the same audio
decoded again differs by far less, another recording by ~1."""


def attach_audio(clips: list[ClipFrames], mel: MelSettings = MEL, s3_endpoint: str | None = None) -> None:
    """Each clip's test-frame audio (16 kHz, ``len(driver) / fps`` seconds) from its original file.

    The shards keep only log-mel windows, and SyncNet needs MFCCs of the waveform, so the
    file recorded in the shards (a path or URL) is decoded again the way preprocessing did.
    The audio is accepted only where its log-mel windows are those stored with the frames,
    so a moved, edited or replaced file never scores lip sync against other audio. What
    cannot be used leaves ``waveform`` unset and says why in ``audio_note``.
    """
    from .audio import clip_windows
    from .data.sources import fetch_to_local
    from .data.video import probe_and_decode_audio
    from .metric_networks import SYNC_FPS, SYNC_SAMPLE_RATE
    from .storage import s3_options

    for clip in clips:
        clip.waveform = None
        index = clip.frame_index if clip.frame_index is not None else np.arange(len(clip.driver))
        if mel.sample_rate != SYNC_SAMPLE_RATE:
            clip.audio_note = f"SyncNet takes {SYNC_SAMPLE_RATE} Hz audio, the shards hold {mel.sample_rate} Hz"
            continue
        if clip.fps != SYNC_FPS:
            clip.audio_note = f"SyncNet takes {SYNC_FPS} fps video, the shards hold {clip.fps:g} fps"
            continue
        if len(index) == 0 or np.any(np.diff(index) != 1):
            clip.audio_note = f"the {clip.clip_id} frames of the split are not one contiguous run"
            continue
        first, count = int(index[0]), len(index)
        seconds = (first + count) / clip.fps + 1  # decode no further than the test frames
        try:
            with tempfile.TemporaryDirectory(prefix="discohead-audio-") as folder:
                local = fetch_to_local(clip.origin, folder, s3_options(clip.origin, s3_endpoint))
                _, waveform = probe_and_decode_audio(local, mel.sample_rate, seconds)
        except Exception as error:  # a missing file, an unknown protocol, an undecodable file: say which
            clip.audio_note = f"{clip.origin or clip.clip_id}: cannot read its audio ({str(error).splitlines()[0]})"
            continue
        if waveform is None:
            clip.audio_note = f"{clip.origin}: no audio stream"
            continue
        hop = mel.sample_rate // SYNC_FPS
        needed = (first + count) * hop
        waveform = np.pad(waveform[:needed], (0, max(0, needed - len(waveform))))
        windows = clip_windows(torch.from_numpy(waveform), first + count, clip.fps, mel)[first:].numpy()
        difference = float(np.median(np.abs(windows - clip.mel.astype(np.float32))))
        if difference > AUDIO_MATCH_TOLERANCE:
            clip.audio_note = (
                f"{clip.origin}: its audio is not the audio in the shards (log-mel off by {difference:.2f})"
            )
            continue
        clip.waveform, clip.audio_note = waveform[first * hop :].astype(np.float32), ""


@dataclass
class Scorers:
    """The metric networks this machine can run; the others are in ``unavailable`` with the file to provide."""

    lpips: Any = None
    fid: Any = None
    faces: Any = None
    syncnet: Any = None
    unavailable: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        lpips_weights: str | None = None,
        inception_weights: str | None = None,
        faces: bool = True,
        syncnet_weights: str | None = None,
    ) -> Scorers:
        """Every metric network that loads here (LPIPS, FID, SyncNet, dlib's face measures); never a substitute."""
        from .metric_networks import FaceMeasures, fid_metric, lpips_metric, syncnet_metric

        scorers = cls(faces=FaceMeasures() if faces else None)
        try:
            scorers.lpips = lpips_metric(lpips_weights)
        except PretrainedWeightsUnavailable as error:
            scorers.unavailable["lpips"] = str(error)
        try:
            scorers.fid = fid_metric(inception_weights)
        except PretrainedWeightsUnavailable as error:
            scorers.unavailable["fid"] = str(error)
        try:
            scorers.syncnet = syncnet_metric(syncnet_weights)
        except PretrainedWeightsUnavailable as error:
            scorers.unavailable.update(dict.fromkeys(LIP_SYNC, str(error)))
        if not faces:
            scorers.unavailable.update({name: "not measured (--no-faces)" for name in FACE_METRICS})
        return scorers

    @classmethod
    def pixels_only(cls) -> Scorers:
        """PSNR, SSIM and the eye share: what needs no network at all (the learning benchmark's scores)."""
        skipped = ("lpips", "fid", *LIP_SYNC, *FACE_METRICS)
        return cls(unavailable={name: "not measured" for name in skipped})


@dataclass
class EvaluationResult:
    """Frame-averaged metrics per system, the disentanglement measures, and what could not be measured."""

    systems: dict[str, dict[str, float]]
    disentanglement: dict[str, float]
    unavailable: dict[str, str]
    frames: int
    clips: int
    seconds: float
    grid: np.ndarray | None = None

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def flat(self, split: str = "test") -> dict[str, float]:
        """MLflow metric names: ``eval/<split>/<metric>``, baselines ``eval/<split>/copy/<metric>``."""
        values = {}
        for system, metrics in self.systems.items():
            prefix = f"eval/{split}/" if system == "model" else f"eval/{split}/{system}/"
            values.update({prefix + name: value for name, value in metrics.items() if np.isfinite(value)})
        values.update(
            {f"eval/{split}/{name}": value for name, value in self.disentanglement.items() if np.isfinite(value)}
        )
        values[f"eval/{split}/frames_per_second"] = self.frames_per_second
        return values


@dataclass
class _Sums:
    totals: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, values: Any, weight: int = 1) -> None:
        """Per-frame values (NaNs dropped), or one mean standing for ``weight`` frames."""
        values = np.atleast_1d(np.asarray(values, np.float64))
        values = values[np.isfinite(values)]
        self.totals[name] = self.totals.get(name, 0.0) + float(values.sum()) * weight
        self.counts[name] = self.counts.get(name, 0) + len(values) * weight

    def mean(self, name: str) -> float:
        return self.totals[name] / self.counts[name] if self.counts.get(name) else float("nan")


def _predict(model: DisCoHead, inputs: ModelInputs, head: torch.Tensor | None = None, eye=None, audio=None) -> dict:
    return model(
        inputs.source,
        inputs.head_driver if head is None else head,
        inputs.eye_driver if eye is None else eye,
        inputs.audio if audio is None else audio,
    )


class _LipStream:
    """One system's SyncNet window embeddings over a clip, computed batch by batch.

    The last 4 crops of a batch are kept for the windows that straddle the next one, so a
    clip of any length never holds more than a batch of 224-pixel crops.
    """

    def __init__(self) -> None:
        self.tail: torch.Tensor | None = None
        self.features: list[torch.Tensor] = []
        self.frames = 0

    def push(self, syncnet: Any, frames: torch.Tensor) -> None:
        from .metric_networks import WINDOW, syncnet_frames

        crops = syncnet_frames(frames)
        self.frames += len(crops)
        if self.tail is not None:
            crops = torch.cat([self.tail, crops])
        if len(crops) >= WINDOW:
            self.features.append(syncnet.lip_windows(crops))
        self.tail = crops[-(WINDOW - 1) :]


def clip_lip_sync(syncnet: Any, streams: dict[str, _LipStream], waveform: np.ndarray) -> dict[str, Any]:
    """Each system's :class:`~discohead.metric_networks.LipSync` on one clip, with the clip's own audio.

    The clip's test frames with their audio are one "video" of syncnet_python's evaluate():
    every 5-frame window against the MFCC window at the same time, offsets searched over ±15
    frames; the audio windows are computed once and shared by the systems. Empty when the
    clip is shorter than evaluate() needs (6 frames).
    """
    from .metric_networks import lip_sync, syncnet_mfcc, window_count

    frames = next(iter(streams.values())).frames
    count = window_count(frames, len(waveform))
    if count < 1:
        return {}
    device = next(syncnet.parameters()).device
    audio = syncnet.audio_windows(syncnet_mfcc(waveform).to(device), count)
    return {system: lip_sync(torch.cat(stream.features)[:count], audio) for system, stream in streams.items()}


def evaluation_grid(inputs: ModelInputs, prediction: torch.Tensor, rows: int = 4) -> np.ndarray:
    """uint8 image, a row per frame: source | head driver | eye input | prediction | ground truth | |difference|."""
    difference = (prediction.float() - inputs.target).abs().clamp(0, 1)
    columns = (inputs.source, inputs.head_driver, inputs.eye_driver, prediction.float(), inputs.target, difference)
    count = min(rows, len(inputs))
    tiles = torch.cat([torch.cat([column[i].float().cpu() for column in columns], dim=2) for i in range(count)], dim=1)
    return (tiles.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def evaluate(
    model: DisCoHead,
    clips: list[ClipFrames],
    scorers: Scorers,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    progress: Any = None,
) -> EvaluationResult:
    """All metrics of the module doc for ``model`` and the two baselines on ``clips``."""
    model = model.to(device).eval()
    size = model.config.image_size
    sums = _Sums()
    fids = {system: scorers.fid.clone().to(device) for system in SYSTEMS} if scorers.fid else {}
    lpips = scorers.lpips.to(device) if scorers.lpips is not None else None
    syncnet = scorers.syncnet.to(device) if scorers.syncnet is not None else None
    unavailable = dict(scorers.unavailable)
    if syncnet is not None and not any(clip.waveform is not None for clip in clips):
        why = clips[0].audio_note if clips else "no clips"
        unavailable.update(dict.fromkeys(LIP_SYNC, f"unavailable: no clip's audio could be used ({why})"))
        syncnet = None
    faces = scorers.faces
    grid = None
    frames = 0
    started = time.perf_counter()
    for index, clip in enumerate(clips):
        other = clips[(index + 1) % len(clips)]  # the audio, eyes and head pose of another clip
        series: dict[str, list[np.ndarray]] = {}
        streams = (
            {system: _LipStream() for system in SYSTEMS} if syncnet is not None and clip.waveform is not None else None
        )
        shift = len(clip.driver) // 2 if len(clip.driver) >= 2 * CONTROL_GAP else 0
        for start in range(0, len(clip.driver), batch_size):
            part = slice(start, start + batch_size)
            count = len(clip.driver[part])
            pairs = {
                "source": np.repeat(clip.source[None], count, axis=0),
                "driver": clip.driver[part],
                "mel": clip.mel[part],
                "eye_box": clip.eye_boxes[part],
            }
            inputs = model_inputs(pairs, size, device)
            out = _predict(model, inputs)
            outputs = {
                "model": out["prediction"].float(),
                "copy": inputs.source,
                "warp": out["transformed_source"].float(),
            }
            if grid is None:
                grid = evaluation_grid(inputs, outputs["model"])
            for system, frames_out in outputs.items():
                # psnr and ssim are batch means of per-frame values: weighted by the batch's frames.
                sums.add(f"{system}/psnr", psnr(frames_out, inputs.target).item(), count)
                sums.add(f"{system}/ssim", ssim(frames_out, inputs.target).item(), count)
                if lpips is not None:
                    sums.add(f"{system}/lpips", lpips(frames_out, inputs.target).cpu().numpy())
                if system in fids:
                    fids[system].update(inputs.target, real=True)
                    fids[system].update(frames_out.clamp(0, 1), real=False)
                if streams:
                    streams[system].push(syncnet, frames_out)

            # Disentanglement: change one input at a time, to another clip's (same positions, cycled).
            rows = np.arange(start, start + count) % len(other.driver)
            other_inputs = model_inputs(
                {
                    "source": pairs["source"],
                    "driver": other.driver[rows],
                    "mel": other.mel[rows],
                    "eye_box": other.eye_boxes[rows],
                },
                size,
                device,
            )
            eye_boxes = torch.as_tensor(np.array(pairs["eye_box"]), device=device).float()
            eye_changed = _predict(model, inputs, eye=other_inputs.eye_driver)["prediction"].float()
            sums.add("eye_eye_share", share_inside(eye_changed - outputs["model"], eye_boxes).cpu().numpy())
            if faces is not None:
                truth = faces.to_measure_size(inputs.target)
                boxes = faces.boxes(truth)
                truth_points, truth_identity = faces.measure(truth, boxes)
                series.setdefault("truth/lip", []).append(inner_lip_opening(truth_points))
                series.setdefault("truth/eye", []).append(eye_aspect_ratio(truth_points))
                series.setdefault("truth/points", []).append(truth_points)
                for system, frames_out in outputs.items():
                    points, identity = faces.measure(faces.to_measure_size(frames_out), boxes)
                    sums.add(f"{system}/akd", keypoint_distance(points, truth_points))
                    sums.add(f"{system}/aed", np.linalg.norm(identity - truth_identity, axis=-1))
                    series.setdefault(f"{system}/lip", []).append(inner_lip_opening(points))
                    series.setdefault(f"{system}/eye", []).append(eye_aspect_ratio(points))
                    if system == "model":
                        model_points = points
                        series.setdefault("model/points", []).append(points)
                face_mouth = mouth_box_from_landmarks(torch.from_numpy(truth_points), truth.shape[1]).to(device)
                audio_changed = _predict(model, inputs, audio=other_inputs.audio)["prediction"].float()
                sums.add("audio_mouth_share", share_inside(audio_changed - outputs["model"], face_mouth).cpu().numpy())
                head_changed = _predict(model, inputs, head=other_inputs.head_driver)["prediction"].float()
                moved, _ = faces.measure(faces.to_measure_size(head_changed), boxes)
                pose = list(POSE_LANDMARKS)
                sums.add("head_landmark_shift", keypoint_distance(moved[:, pose], model_points[:, pose]))
            if shift:
                mouth = clip.mouth_boxes(part)
                if mouth is None and faces is not None:
                    mouth = face_mouth
                control_use(model, inputs, outputs["model"], clip, start, shift, eye_boxes, mouth, sums)
            frames += count
        if streams:
            for system, scores in clip_lip_sync(syncnet, streams, clip.waveform).items():
                sums.add(f"{system}/lse_d", scores.distance)
                sums.add(f"{system}/lse_c", scores.confidence)
                sums.add(f"{system}/lse_offset", scores.offset)
        if faces is not None and clip.waveform is not None:
            lip_audio_sync(clip, series, sums)
        if faces is not None:
            for system in SYSTEMS:
                for name, key in (("mouth_corr", "lip"), ("eye_corr", "eye")):
                    truth_series = np.concatenate(series[f"truth/{key}"])
                    sums.add(f"{system}/{name}", pearson(np.concatenate(series[f"{system}/{key}"]), truth_series))
        if progress:
            progress(index + 1, len(clips), frames)
    seconds = time.perf_counter() - started
    systems = {system: {name: sums.mean(f"{system}/{name}") for name in METRICS if name != "fid"} for system in SYSTEMS}
    for system, fid in fids.items():
        systems[system]["fid"] = float(fid.compute()) if frames >= 2 else float("nan")
    for system in SYSTEMS:
        for name in list(systems[system]):
            if name in unavailable:
                del systems[system][name]
    disentanglement = {name: sums.mean(name) for name in DISENTANGLEMENT if name not in unavailable}
    for name in LIP_AUDIO:
        if name in unavailable:
            continue
        if sums.counts.get(name):
            disentanglement[name] = sums.mean(name)
        elif not any(clip.waveform is not None for clip in clips):
            why = clips[0].audio_note if clips else "no clips"
            unavailable[name] = f"unavailable: no clip's audio could be used ({why})"
        else:
            unavailable[name] = f"unavailable: no clip with its audio has {SYNC_FRAMES} test frames"
    for name in (*CONTROL_GAINS, "audio_focus", "eye_focus"):
        if name.endswith("_gain"):
            own, away = sums.mean(f"{name}/own"), sums.mean(f"{name}/away")
            value = 1 - own / away if away > 0 else float("nan")
        else:
            value = sums.mean(f"{name}/share") / sums.mean(f"{name}/area")
        if np.isfinite(value):
            disentanglement[name] = value
        elif not any(len(clip.driver) >= 2 * CONTROL_GAP for clip in clips):
            unavailable[name] = f"unavailable: no clip has {2 * CONTROL_GAP} test frames (the input from elsewhere)"
        elif name.startswith("audio") and not sums.counts.get("audio_gain/away"):
            unavailable[name] = "unavailable: the shards hold no landmarks and face measures are off (no mouth box)"
        elif name.endswith("_gain"):
            unavailable[name] = "undefined: no error in the box with the input from elsewhere"
        else:  # a share of no change: the input is ignored, its focus undefined
            unavailable[name] = "undefined: swapping the input changed no pixel"
    return EvaluationResult(systems, disentanglement, unavailable, frames, len(clips), seconds, grid)


def lip_audio_sync(clip: ClipFrames, series: dict[str, list[np.ndarray]], sums: _Sums) -> None:
    """Adds one clip's ``LIP_AUDIO`` terms (module doc) from its landmarks of the model's and the real frames."""
    per_frame = round(MEL.sample_rate / clip.fps)
    for prefix, key in (("sync", "model/points"), ("real_sync", "truth/points")):
        points = np.concatenate(series[key])
        if len(points) < SYNC_FRAMES:
            return
        found = av_offset(points, clip.waveform, per_frame, sample_rate=MEL.sample_rate)
        sums.add(f"{prefix}_confidence", found.confidence)
        sums.add(f"{prefix}_offset", found.frames)


def control_use(
    model: DisCoHead,
    inputs: ModelInputs,
    prediction: torch.Tensor,
    clip: ClipFrames,
    start: int,
    shift: int,
    eye_boxes: torch.Tensor,
    mouth_boxes: torch.Tensor | None,
    sums: _Sums,
) -> None:
    """Adds one batch's terms of the module doc's control measures: each input from ``shift`` frames away."""
    away = (np.arange(start, start + len(inputs)) + shift) % len(clip.driver)
    columns = {"source": clip.source[None], "driver": clip.driver[away], "mel": clip.mel[away]}
    columns["eye_box"] = clip.eye_boxes[away]
    elsewhere = model_inputs(columns, model.config.image_size, inputs.source.device)
    controls = [("eye", eye_boxes, _predict(model, inputs, eye=elsewhere.eye_driver))]
    if mouth_boxes is not None:
        controls.append(("audio", mouth_boxes.to(eye_boxes), _predict(model, inputs, audio=elsewhere.audio)))
    for name, boxes, swapped in controls:
        swapped = swapped["prediction"].float()
        sums.add(f"{name}_gain/own", box_l1(prediction, inputs.target, boxes).cpu().numpy())
        sums.add(f"{name}_gain/away", box_l1(swapped, inputs.target, boxes).cpu().numpy())
        share = share_inside(swapped - prediction, boxes)
        sums.add(f"{name}_focus/share", share.cpu().numpy())
        sums.add(f"{name}_focus/area", box_area(boxes)[torch.isfinite(share)].cpu().numpy())


def comparison_chart(results: dict[str, EvaluationResult], split: str = "test") -> Any:
    """One matplotlib figure (Agg, no display): a panel per measure, a bar per model, the copy baseline as a line.

    What a ``--variant all`` launch's parent run shows beside its table: the variants side by side
    without opening each child run. Measures none of the models has are left out.
    """
    from matplotlib.figure import Figure

    names = [name for name in (*METRICS, *MODEL_MEASURES) if any(
        name in result.systems["model"] or name in result.disentanglement for result in results.values()
    )]  # fmt: skip
    columns = min(4, max(1, len(names)))
    rows = -(-len(names) // columns) or 1
    figure = Figure(figsize=(3.2 * columns, 2.4 * rows + 0.5), dpi=80)
    figure.suptitle(f"eval/{split}: one bar per model, dashed: copying the source", fontsize=10)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    labels = list(results)
    for ax, name in zip(axes, names):
        measured = [{**result.systems["model"], **result.disentanglement} for result in results.values()]
        values = [found.get(name, np.nan) for found in measured]
        ax.bar(range(len(labels)), values, color="tab:blue")
        copies = [result.systems["copy"].get(name, np.nan) for result in results.values()]
        if np.isfinite(copies).any():
            ax.axhline(float(np.nanmean(copies)), color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=20)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    figure.tight_layout()
    return figure


def evaluate_reconstruction(
    model: DisCoHead,
    dest: str,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, float]:
    """``{model,copy,warp}_{psnr,ssim}``, ``frames`` and the measurable ``CONTROLS`` (module doc) over the test
    split of ``dest``, with no pretrained network."""
    clips = list(clips_with_test_frames(dest, storage_options))
    result = evaluate(model, clips, Scorers.pixels_only(), device, batch_size)
    scores = {f"{system}_{name}": result.systems[system][name] for system in SYSTEMS for name in ("psnr", "ssim")}
    controls = {name: value for name, value in result.disentanglement.items() if name in CONTROLS}
    return {**scores, **controls, "frames": result.frames}
