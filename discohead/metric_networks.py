"""The metrics that need pretrained networks: LPIPS (AlexNet), FID (Inception-v3), and the face
measures behind AKD, AED and the mouth and eye agreement (dlib's 68-point predictor and its
128-d identity embedding).

dlib's two networks ship in face-recognition-models and always load. The AlexNet and
Inception weights are files the user provides (or that download where there is internet):
each is looked for at an explicit path, an environment variable, then torch hub's cache,
and must match the sha256 prefix in its published name (torch hub's convention). A file
that is missing or does not match makes the metric *unavailable*, with the file to provide;
it is never replaced by other or random weights, and every file is loaded with
``weights_only=True`` (tensors, not pickles).
"""

from __future__ import annotations

import hashlib
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .contracts import CROP_LIFT, CROP_SCALE
from .pretrained import PretrainedWeightsUnavailable

DOWNLOAD_TIMEOUT_S = 20
"""Seconds a weights download may stall before the metric is reported unavailable."""

MEASURE_SIZE = 256
"""Frames are resized to this many pixels a side before landmarks and embeddings (AKD is in these pixels)."""


@dataclass(frozen=True)
class WeightFile:
    """A published weights file: its name (ending in its sha256 prefix), where to get it, how to point at it."""

    name: str
    url: str
    env_var: str

    @property
    def sha256_prefix(self) -> str:
        return Path(self.name).stem.rsplit("-", 1)[-1]

    @property
    def cached(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.name

    def unavailable(self, why: str = "") -> PretrainedWeightsUnavailable:
        where = f"{self.cached} (or set {self.env_var}=/path/to/{self.name})"
        return PretrainedWeightsUnavailable(
            f"unavailable: provide {self.name} (sha256 {self.sha256_prefix}…) at {where}{why}"
        )

    def locate(self, explicit: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
        """The verified file: explicit path, environment variable, hub cache, else a download (hash-checked)."""
        for candidate in (explicit, os.environ.get(self.env_var), self.cached):
            if candidate and Path(candidate).is_file():
                return self.verified(Path(candidate))
        if explicit:
            raise self.unavailable(f"; {explicit} does not exist")
        if download:
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # an offline machine may drop packets rather than refuse
            try:
                self.cached.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(self.url, str(self.cached), self.sha256_prefix, progress=False)
                return self.cached
            except (OSError, RuntimeError):  # no network, or the download did not match its hash
                pass
            finally:
                socket.setdefaulttimeout(previous)
        raise self.unavailable()

    def verified(self, path: Path) -> Path:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if not digest.hexdigest().startswith(self.sha256_prefix):
            raise self.unavailable(f"; {path} has sha256 {digest.hexdigest()[:8]}…, not the published file")
        return path

    def load(self, explicit: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        return torch.load(self.locate(explicit), map_location="cpu", weights_only=True)


ALEXNET = WeightFile(
    "alexnet-owt-7be5be79.pth",
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "DISCOHEAD_ALEXNET_WEIGHTS",
)
"""torchvision's ImageNet AlexNet, the backbone of LPIPS (its linear heads ship in the lpips package)."""

INCEPTION = WeightFile(
    "pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "DISCOHEAD_INCEPTION_WEIGHTS",
)
"""The TensorFlow FID Inception-v3 ported to PyTorch (torch-fidelity, as torchmetrics uses): the standard FID."""


# --- LPIPS ---------------------------------------------------------------------------


class LPIPS(torch.nn.Module):
    """Mean LPIPS (AlexNet, v0.1 linear heads) of ``(B, 3, H, W)`` frames in [0, 1]."""

    def __init__(self, alexnet_state: dict[str, Any]):
        super().__init__()
        import lpips
        import torchvision

        with warnings.catch_warnings():  # lpips builds torchvision's AlexNet with the deprecated pretrained=False
            warnings.simplefilter("ignore", UserWarning)
            self.net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        backbone = torchvision.models.alexnet(weights=None)
        backbone.load_state_dict(alexnet_state)
        for block in (
            self.net.net.slice1,
            self.net.net.slice2,
            self.net.net.slice3,
            self.net.net.slice4,
            self.net.net.slice5,
        ):
            for index, layer in block.named_children():
                layer.load_state_dict(backbone.features[int(index)].state_dict())
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.net(prediction.float(), target.float(), normalize=True).flatten()


def lpips_metric(weights: str | None = None) -> LPIPS:
    """LPIPS with verified AlexNet weights; raises PretrainedWeightsUnavailable naming the file otherwise."""
    return LPIPS(ALEXNET.load(weights))


# --- FID -----------------------------------------------------------------------------


def fid_metric(weights: str | None = None) -> Any:
    """torchmetrics' FID on the 2048-d pool features of the verified FID Inception-v3.

    torch-fidelity reads the file with a full unpickler, so the file is first loaded here
    with ``weights_only=True``: only a file of plain tensors gets that far.
    """
    path = INCEPTION.locate(weights)
    torch.load(path, map_location="cpu", weights_only=True)
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(path))


# --- faces: landmarks and identity ---------------------------------------------------


def face_box(size: int) -> tuple[float, float, float, float]:
    """Where the preprocessing crop puts the face: ``size / CROP_SCALE`` wide, ``CROP_LIFT`` below the middle."""
    side = size / CROP_SCALE
    centre_x, centre_y = size / 2, size / 2 + CROP_LIFT * size
    return centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2


class FaceMeasures:
    """68 landmarks and the 128-d dlib identity embedding of face crops, both from face-recognition-models.

    The landmarks of a generated frame and of its ground truth are fitted in the same box
    (the one dlib's detector finds in the ground truth, else where the crop puts the face),
    so AKD measures where the face's points moved, not where a detector drew a box.
    """

    def __init__(self) -> None:
        import dlib
        import face_recognition_models

        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
        self._encoder = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
        self._rectangle = dlib.rectangle

    @staticmethod
    def to_measure_size(frames: torch.Tensor) -> np.ndarray:
        """``(B, 3, H, W)`` floats in [0, 1] to ``(B, 256, 256, 3)`` uint8."""
        frames = torch.nn.functional.interpolate(
            frames.float().cpu(), size=(MEASURE_SIZE, MEASURE_SIZE), mode="bilinear", antialias=True
        )
        return (frames.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()

    def boxes(self, frames: np.ndarray) -> list[Any]:
        """A dlib rectangle per frame: the largest detected face, else the crop's face box."""
        fallback = self._rectangle(*(int(round(value)) for value in face_box(frames.shape[1])))
        found = []
        for frame in frames:
            faces = self._detector(frame, 0)
            found.append(max(faces, key=lambda rect: rect.area()) if len(faces) else fallback)
        return found

    def measure(self, frames: np.ndarray, boxes: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(B, 68, 2)`` landmarks in pixels and ``(B, 128)`` identity embeddings of uint8 frames."""
        landmarks, embeddings = [], []
        for frame, box in zip(frames, boxes):
            shape = self._predictor(frame, box)
            landmarks.append([(point.x, point.y) for point in shape.parts()])
            embeddings.append(np.asarray(self._encoder.compute_face_descriptor(frame, shape)))
        return np.asarray(landmarks, np.float32), np.asarray(embeddings, np.float32)
