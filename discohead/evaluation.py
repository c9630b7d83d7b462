"""Reconstruction evaluation (paper §3.3): drive each test clip's first frame with its own test frames.

For every clip with frames in the evaluated split, the source is the clip's first stored
frame and each test frame is the head driver, the eye driver (masked to its eye box) and
the audio window; the prediction is compared with that test frame. Two baselines put the
numbers in scale: copying the source unchanged (``copy``), and the source warped by the
predicted head motion alone (``warp``, ``S_T``), which shows what the encoder and decoder add.

Metrics (Table 1 and more), each frame-averaged per system (model, copy, warp):
``psnr``, ``ssim``, ``lpips``, ``fid``, ``akd`` (pixels at 256 px), ``aed`` (dlib identity
embedding distance), ``mouth_corr`` and ``eye_corr`` (per-clip Pearson correlation of the
inner-lip opening and of the eye aspect ratio with the ground truth's, averaged over clips).

Disentanglement (the paper's claim that each input controls its own part of the face),
measured on the same frames for the model: ``audio_mouth_share`` (only the audio changes:
share of the pixel change inside the mouth box), ``eye_eye_share`` (only the eye driver
changes: share inside the eye box) and ``head_landmark_shift`` (only the head driver
changes: mean displacement, in pixels at 256 px, of the jaw and nose landmarks).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .contracts import SPLITS, mouth_box_from_landmarks
from .data.shards import iter_split
from .metrics import eye_aspect_ratio, inner_lip_opening, keypoint_distance, pearson, psnr, share_inside, ssim
from .model import DisCoHead
from .pretrained import PretrainedWeightsUnavailable
from .training import ModelInputs, model_inputs

SYSTEMS = ("model", "copy", "warp")
"""The model and the two baselines every metric is reported for."""
METRICS = ("psnr", "ssim", "lpips", "fid", "akd", "aed", "mouth_corr", "eye_corr")
DISENTANGLEMENT = ("audio_mouth_share", "eye_eye_share", "head_landmark_shift")
FACE_METRICS = ("akd", "aed", "mouth_corr", "eye_corr", "audio_mouth_share", "head_landmark_shift")
"""What needs dlib's face measures."""
POSE_LANDMARKS = tuple(range(0, 17)) + tuple(range(27, 36))
"""Jaw and nose: the points that move with the head but belong to neither the mouth nor the eye region."""


@dataclass
class ClipFrames:
    """A test clip: its first frame (the source) and its test frames with their inputs."""

    clip_id: str
    source: np.ndarray
    driver: np.ndarray
    mel: np.ndarray
    eye_boxes: np.ndarray


def clips_with_test_frames(
    dest: str, storage_options: dict[str, Any] | None = None, split: str = "test", max_clips: int | None = None
) -> Iterator[ClipFrames]:
    """Clips with ``split`` chunks (the first ``max_clips`` by id), each with its first frame in any split."""
    first: dict[str, tuple[int, np.ndarray]] = {}
    tests: dict[str, list[dict[str, Any]]] = {}
    for name in SPLITS:
        for chunk in iter_split(dest, name, storage_options):
            clip_id, start = chunk["meta"]["clip_id"], chunk["meta"]["first_frame"]
            if clip_id not in first or start < first[clip_id][0]:
                first[clip_id] = (start, chunk["frames"][0])
            if name == split:
                tests.setdefault(clip_id, []).append(chunk)
    for clip_id, chunks in sorted(tests.items())[:max_clips]:
        chunks.sort(key=lambda chunk: chunk["meta"]["first_frame"])
        yield ClipFrames(
            clip_id,
            first[clip_id][1],
            np.concatenate([chunk["frames"] for chunk in chunks]),
            np.concatenate([chunk["mel"] for chunk in chunks]),
            np.concatenate([chunk["eye_boxes"] for chunk in chunks]),
        )


@dataclass
class Scorers:
    """The metric networks this machine can run; the others are in ``unavailable`` with the file to provide."""

    lpips: Any = None
    fid: Any = None
    faces: Any = None
    unavailable: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(
        cls, lpips_weights: str | None = None, inception_weights: str | None = None, faces: bool = True
    ) -> Scorers:
        """Every metric network that loads here (LPIPS, FID, dlib's face measures); never a substitute."""
        from .metric_networks import FaceMeasures, fid_metric, lpips_metric

        scorers = cls(faces=FaceMeasures() if faces else None)
        try:
            scorers.lpips = lpips_metric(lpips_weights)
        except PretrainedWeightsUnavailable as error:
            scorers.unavailable["lpips"] = str(error)
        try:
            scorers.fid = fid_metric(inception_weights)
        except PretrainedWeightsUnavailable as error:
            scorers.unavailable["fid"] = str(error)
        if not faces:
            scorers.unavailable.update({name: "not measured (--no-faces)" for name in FACE_METRICS})
        return scorers

    @classmethod
    def pixels_only(cls) -> Scorers:
        """PSNR, SSIM and the eye share: what needs no network at all (the learning benchmark's scores)."""
        skipped = ("lpips", "fid", *FACE_METRICS)
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
    faces = scorers.faces
    grid = None
    frames = 0
    started = time.perf_counter()
    for index, clip in enumerate(clips):
        other = clips[(index + 1) % len(clips)]  # the audio, eyes and head pose of another clip
        series: dict[str, list[np.ndarray]] = {}
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
                for system, frames_out in outputs.items():
                    points, identity = faces.measure(faces.to_measure_size(frames_out), boxes)
                    sums.add(f"{system}/akd", keypoint_distance(points, truth_points))
                    sums.add(f"{system}/aed", np.linalg.norm(identity - truth_identity, axis=-1))
                    series.setdefault(f"{system}/lip", []).append(inner_lip_opening(points))
                    series.setdefault(f"{system}/eye", []).append(eye_aspect_ratio(points))
                    if system == "model":
                        model_points = points
                mouth = mouth_box_from_landmarks(torch.from_numpy(truth_points), truth.shape[1]).to(device)
                audio_changed = _predict(model, inputs, audio=other_inputs.audio)["prediction"].float()
                sums.add("audio_mouth_share", share_inside(audio_changed - outputs["model"], mouth).cpu().numpy())
                head_changed = _predict(model, inputs, head=other_inputs.head_driver)["prediction"].float()
                moved, _ = faces.measure(faces.to_measure_size(head_changed), boxes)
                pose = list(POSE_LANDMARKS)
                sums.add("head_landmark_shift", keypoint_distance(moved[:, pose], model_points[:, pose]))
            frames += count
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
    unavailable = dict(scorers.unavailable)
    for system in SYSTEMS:
        for name in list(systems[system]):
            if name in unavailable:
                del systems[system][name]
    disentanglement = {name: sums.mean(name) for name in DISENTANGLEMENT if name not in unavailable}
    return EvaluationResult(systems, disentanglement, unavailable, frames, len(clips), seconds, grid)


def evaluate_reconstruction(
    model: DisCoHead,
    dest: str,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, float]:
    """``{model,copy,warp}_{psnr,ssim}`` and ``frames`` over the test split of ``dest`` (no pretrained networks)."""
    clips = list(clips_with_test_frames(dest, storage_options))
    result = evaluate(model, clips, Scorers.pixels_only(), device, batch_size)
    scores = {f"{system}_{name}": result.systems[system][name] for system in SYSTEMS for name in ("psnr", "ssim")}
    return {**scores, "frames": result.frames}
