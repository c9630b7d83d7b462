"""The metrics that need pretrained networks: LPIPS (AlexNet), FID (Inception-v3), LSE-C / LSE-D
(SyncNet), and the face measures behind AKD, AED and the mouth and eye agreement (dlib's
68-point predictor and its 128-d identity embedding).

dlib's two networks ship in face-recognition-models and always load. The AlexNet, Inception
and SyncNet weights are files the user provides (or that download where there is internet):
each is looked for at an explicit path, an environment variable, then torch hub's cache,
and must match its sha256 (the prefix in its published name, torch hub's convention, or the
pinned digest where the name carries none). A file that is missing or does not match makes
the metric *unavailable*, with the file to provide; it is never replaced by other or random
weights, and every file is loaded with ``weights_only=True`` (tensors, not pickles).
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .contracts import CROP_LIFT, CROP_SCALE
from .pretrained import WeightFile

MEASURE_SIZE = 256
"""Frames are resized to this many pixels a side before landmarks and embeddings (AKD is in these pixels)."""


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

SYNCNET = WeightFile(
    "syncnet_v2.model",
    "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
    "DISCOHEAD_SYNCNET_WEIGHTS",
    sha256="961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442",
)
"""SyncNet (Chung & Zisserman 2016) as joonson/syncnet_python downloads it: the network behind LSE-C / LSE-D.

The authors (Oxford VGG) publish no checksum. The digest pinned here is the one every public
copy we could check carries (e.g. LatentSync's ``auxiliary/syncnet_v2.model`` on Hugging Face,
uploaded by its authors, and lithiumice/syncnet), all 54.6 MB; a different file is refused
rather than trusted.
"""


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


# --- LSE-C / LSE-D: SyncNet ---------------------------------------------------------

SYNC_FPS = 25
"""SyncNet's video rate: 5 frames (0.2 s) per window."""
SYNC_SAMPLE_RATE = 16_000
MFCC_PER_FRAME = 4
"""MFCC frames (100 Hz) per video frame: a 5-frame window meets 20 MFCC frames."""
WINDOW = 5
"""Video frames per SyncNet window."""
VSHIFT = 15
"""Offsets searched, in frames each way (syncnet_python's ``--vshift`` default, as Wav2Lip runs it)."""
SYNC_SIZE = 224
SYNC_CROP_SCALE = 0.4
"""syncnet_python's ``run_pipeline.py --crop_scale``: the face track is cropped around the face box with this margin."""
SYNC_PAD = 110
"""The grey (0-255) run_pipeline pads frames with where the crop leaves the frame."""


class SyncNet(torch.nn.Module):
    """syncnet_python's ``SyncNetModel.S``, layer for layer, so the official state dict loads with ``strict=True``.

    ``forward_lip`` embeds ``(B, 3, 5, 224, 224)`` BGR frames in 0-255, ``forward_aud``
    ``(B, 1, 13, 20)`` MFCC windows; both give ``(B, 1024)``.
    """

    def __init__(self, embedding: int = 1024):
        super().__init__()
        nn = torch.nn
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(192),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(384),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding))
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
            nn.BatchNorm3d(96),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),
            nn.BatchNorm3d(512),
            nn.ReLU(inplace=True),
        )

    @torch.no_grad()
    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    @torch.no_grad()
    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(video).flatten(1))

    def lip_windows(self, crops: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """``(T - 4, 1024)``: the embedding of every 5-frame window of ``(T, 3, 224, 224)`` crops (T >= 5)."""
        windows = crops.unfold(0, WINDOW, 1).permute(0, 1, 4, 2, 3)  # (T - 4, 3, 5, 224, 224), a view
        return torch.cat([self.forward_lip(windows[i : i + batch].float()) for i in range(0, len(windows), batch)])

    def audio_windows(self, mfcc: torch.Tensor, count: int, batch: int = 64) -> torch.Tensor:
        """``(count, 1024)``: window ``i`` is MFCC frames ``4i`` to ``4i + 19`` of ``(13, T)`` MFCC (evaluate()'s)."""
        starts = torch.arange(count) * MFCC_PER_FRAME
        windows = mfcc[:, starts[:, None] + torch.arange(WINDOW * MFCC_PER_FRAME)].permute(1, 0, 2).unsqueeze(1)
        return torch.cat([self.forward_aud(windows[i : i + batch]) for i in range(0, count, batch)])


def syncnet_metric(weights: str | None = None) -> SyncNet:
    """SyncNet with the verified ``syncnet_v2.model``; raises PretrainedWeightsUnavailable naming the file otherwise."""
    try:
        state = SYNCNET.load(weights)
    except pickle.UnpicklingError:  # weights_only refused it: not a plain state dict
        raise SYNCNET.unavailable("; the file is not a plain state dict (weights_only load failed)") from None
    network = SyncNet()
    network.load_state_dict(state, strict=True)
    return network.eval().requires_grad_(False)


def syncnet_crop(size: int) -> tuple[int, int, int, int, int]:
    """``(pad, top, bottom, left, right)``: run_pipeline's face-track crop of a ``size`` frame, in padded pixels.

    run_pipeline takes the S3FD box (half side ``bs``, centre ``x, y``), pads the frame by
    ``int(bs * (1 + 2 * 0.4))`` and keeps rows ``y - bs`` to ``y + 1.8 bs`` and columns
    ``x ± 1.4 bs``: a square from the top of the face box to well below the chin. Our frames
    are already face crops with the face where :func:`face_box` says (the preprocessing
    contract), so that box stands in for the detector's, the same for every frame and system.
    """
    x0, y0, x1, y1 = face_box(size)
    half = max(x1 - x0, y1 - y0) / 2
    pad = int(half * (1 + 2 * SYNC_CROP_SCALE))
    centre_y, centre_x = (y0 + y1) / 2 + pad, (x0 + x1) / 2 + pad
    return (
        pad,
        int(centre_y - half),
        int(centre_y + half * (1 + 2 * SYNC_CROP_SCALE)),
        int(centre_x - half * (1 + SYNC_CROP_SCALE)),
        int(centre_x + half * (1 + SYNC_CROP_SCALE)),
    )


def syncnet_frames(frames: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] to SyncNet's input frames: ``(B, 3, 224, 224)`` BGR in 0-255 (uint8 values).

    Quantised to 8 bits as a written video is, cropped as :func:`syncnet_crop` says (grey 110
    outside the frame), resized bilinearly to 224 (cv2.resize's default), channels in the
    BGR order cv2.imread gives syncnet_python.
    """
    pad, top, bottom, left, right = syncnet_crop(frames.shape[-1])
    pixels = (frames.float().clamp(0, 1) * 255).round().flip(1)
    padded = torch.nn.functional.pad(pixels, (pad, pad, pad, pad), value=float(SYNC_PAD))
    face = padded[:, :, top:bottom, left:right]
    resized = torch.nn.functional.interpolate(face, size=(SYNC_SIZE, SYNC_SIZE), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255)


def syncnet_mfcc(waveform: np.ndarray) -> torch.Tensor:
    """``(13, frames)`` float32 MFCC at 100 Hz of a mono 16 kHz waveform in [-1, 1], as syncnet_python computes it.

    syncnet_python reads 16-bit PCM (``ffmpeg -acodec pcm_s16le -ar 16000``) and calls
    ``python_speech_features.mfcc`` with its defaults (25 ms frames, 10 ms step, 26 filters,
    512-point FFT, pre-emphasis 0.97, lifter 22, log energy in place of c0). The energy
    makes the scale matter, so the waveform is first put on the 16-bit scale ffmpeg writes.
    """
    import python_speech_features

    pcm = np.clip(np.round(np.asarray(waveform, np.float64) * 32768), -32768, 32767).astype(np.int16)
    return torch.from_numpy(python_speech_features.mfcc(pcm, SYNC_SAMPLE_RATE).T.astype(np.float32))


@dataclass(frozen=True)
class LipSync:
    """One video's SyncNet scores: LSE-D (``distance``), LSE-C (``confidence``) and the AV ``offset`` in frames."""

    offset: int
    distance: float
    confidence: float


def lip_sync(lip: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> LipSync:
    """SyncNetInstance.evaluate's offset search on ``(N, D)`` lip and audio window embeddings.

    For each offset ``k - vshift`` (k = 0 .. 2 vshift), the distance between lip window ``i``
    and audio window ``i + k - vshift`` (a zero vector outside the audio, as the reference
    pads), averaged over ``i``. LSE-D is the smallest mean distance, LSE-C the median of the
    mean distances minus that smallest one, and the offset is ``vshift - argmin``: positive
    when the lips match audio from ``offset`` frames earlier.
    """
    lip, audio = lip.float().cpu(), audio.float().cpu()
    span = 2 * vshift + 1
    padded = torch.nn.functional.pad(audio, (0, 0, vshift, vshift))
    index = torch.arange(len(lip))[:, None] + torch.arange(span)[None, :]
    distances = torch.nn.functional.pairwise_distance(lip[:, None, :].expand(-1, span, -1), padded[index])
    mean = distances.mean(0)
    smallest, position = torch.min(mean, 0)
    return LipSync(vshift - int(position), float(smallest), float(torch.median(mean) - smallest))


def window_count(frames: int, samples: int) -> int:
    """How many windows evaluate() scores: ``min(frames, samples // 640) - 5`` (it leaves out the last full one)."""
    return min(frames, samples // (SYNC_SAMPLE_RATE // SYNC_FPS)) - WINDOW


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
