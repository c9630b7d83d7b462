"""68-point face landmark backends, chosen by name, and largest-face tracking.

Two backends produce the iBUG 300-W layout the contracts use: face-alignment's FAN
(accurate; its weights download on first use, so it needs internet once) and dlib's
HOG detector with the shape predictor shipped in ``face-recognition-models`` (works
offline). ``load_landmark_backend("auto")`` returns the first that loads and the reasons
the others did not, so the job can say which one it used.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import numpy as np

BACKEND_NAMES = ("face-alignment", "dlib")
"""Backends in the order ``auto`` tries them: most accurate first."""


class BackendUnavailable(Exception):
    """A landmark backend cannot run here; the message says what would make it work."""


@dataclass(frozen=True)
class Face:
    """One detected face: box ``(x0, y0, x1, y1)`` and ``(68, 2)`` landmarks, in frame pixels."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class LandmarkBackend(Protocol):
    """Anything that finds faces and their 68 landmarks in an RGB frame."""

    name: str

    def faces(self, frame: np.ndarray) -> list[Face]:
        """All faces in a ``(H, W, 3)`` uint8 RGB frame."""
        ...

    def landmarks_in_box(self, frame: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """``(68, 2)`` landmarks of the face expected inside ``box`` (no detection run)."""
        ...


class DlibLandmarks:
    """dlib's HOG face detector plus the 68-point predictor from face-recognition-models."""

    name = "dlib"

    def __init__(self, upsample: int = 0):
        try:
            import dlib
            import face_recognition_models
        except ImportError as error:
            raise BackendUnavailable(
                f"dlib: {error.name} is not installed (pip install dlib-bin face-recognition-models)"
            ) from None
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
        self._upsample = upsample
        self._rectangle = dlib.rectangle

    def faces(self, frame: np.ndarray) -> list[Face]:
        frame = np.ascontiguousarray(frame)
        found = []
        for rect in self._detector(frame, self._upsample):
            shape = self._predictor(frame, rect)
            points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
            found.append(Face((rect.left(), rect.top(), rect.right(), rect.bottom()), points))
        return found

    def landmarks_in_box(self, frame: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        rect = self._rectangle(*(int(round(v)) for v in box))
        shape = self._predictor(np.ascontiguousarray(frame), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def face_alignment_weight_files() -> list[Path]:
    """Where face-alignment looks for its 2D FAN and S3FD weights: torch hub's cache.

    That is ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints`` by
    default); the names are face-alignment's own, for the installed torch version.
    """
    import torch
    from face_alignment.api import default_model_urls, models_urls
    from face_alignment.detection.sfd.sfd_detector import models_urls as detector_urls

    version = torch.__version__.split("+")[0].rsplit(".", 1)[0]
    urls = [models_urls.get(version, default_model_urls)["2DFAN-4"], detector_urls["s3fd"]]
    return [Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name for url in urls]


class FaceAlignmentLandmarks:
    """face-alignment's FAN with its S3FD detector, on CPU unless told otherwise."""

    name = "face-alignment"

    def __init__(self, device: str = "cpu"):
        try:
            import face_alignment
        except ImportError:
            raise BackendUnavailable("face-alignment: not installed (pip install face-alignment)") from None
        try:
            self._model = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device=device)
        except Exception as error:
            missing = [str(path) for path in face_alignment_weight_files() if not path.exists()]
            raise BackendUnavailable(
                f"face-alignment: its weights could not be loaded or downloaded ({type(error).__name__}: "
                f"{str(error)[:120]}); "
                f"provide {' and '.join(missing) or 'its FAN and S3FD weights'} (run once with internet), or use "
                "--landmarks dlib"
            ) from None

    def faces(self, frame: np.ndarray) -> list[Face]:
        detections = self._model.face_detector.detect_from_image(frame.copy())
        boxes = [tuple(float(v) for v in detection[:4]) for detection in detections]
        return [Face(box, self.landmarks_in_box(frame, box)) for box in boxes]

    def landmarks_in_box(self, frame: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        # float64: face-alignment turns the box into a scale that it assigns into a torch
        # tensor, and torch refuses NumPy float32 scalars there.
        landmarks = self._model.get_landmarks_from_image(frame, detected_faces=[np.asarray(box[:4], np.float64)])
        return np.asarray(landmarks[0], np.float32)


_CONSTRUCTORS = {"dlib": DlibLandmarks, "face-alignment": FaceAlignmentLandmarks}


def load_landmark_backend(name: str) -> tuple[LandmarkBackend, list[str]]:
    """The backend called ``name`` (or, for ``"auto"``, the first that loads) and why others failed.

    Raises :class:`BackendUnavailable` with every reason when nothing loads.
    """
    candidates = BACKEND_NAMES if name == "auto" else (name,)
    if any(candidate not in _CONSTRUCTORS for candidate in candidates):
        raise BackendUnavailable(f"unknown landmark backend {name!r}; choose auto, {', '.join(BACKEND_NAMES)}")
    reasons: list[str] = []
    for candidate in candidates:
        try:
            return _CONSTRUCTORS[candidate](), reasons
        except BackendUnavailable as error:
            reasons.append(str(error))
    raise BackendUnavailable("; ".join(reasons))


@dataclass
class FaceTrack:
    """Landmarks of the tracked face per frame (NaN where none) and faces seen per detection.

    ``face_counts`` is -1 on frames where the detector did not run.
    """

    landmarks: np.ndarray
    found: np.ndarray
    face_counts: np.ndarray

    def __len__(self) -> int:
        return len(self.found)

    @property
    def frames_with_several_faces(self) -> int:
        return int((self.face_counts > 1).sum())


def _follow_box(reference: Face, landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """Where the detector would put its box around ``landmarks``, learnt from the last detection.

    The shape predictor was trained on detector boxes, so a tracked frame gets a box with
    the same offset and scale relative to the landmarks as the last detected one had.
    """
    ref_centre, ref_extent = reference.landmarks.mean(axis=0), np.ptp(reference.landmarks, axis=0).max()
    centre, extent = landmarks.mean(axis=0), np.ptp(landmarks, axis=0).max()
    ratio = extent / max(ref_extent, 1e-6)
    x0, y0, x1, y1 = reference.box
    box_centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    new_centre = centre + (box_centre - ref_centre) * ratio
    half = np.array([x1 - x0, y1 - y0]) * ratio / 2
    return (*(new_centre - half), *(new_centre + half))


def track_largest_face(
    frames: Iterable[np.ndarray],
    backend: LandmarkBackend,
    scale: float = 1.0,
    detect_every: int = 1,
    max_coast: int = 10,
    restart_at: Container[int] = (),
) -> FaceTrack:
    """Follow the largest face through ``frames``; ``scale`` maps frame pixels to output pixels.

    The detector (the costly part) runs every ``detect_every`` frames and picks the
    largest face, which keeps the speaker when a smaller face (audience, poster) appears.
    In between, landmarks are re-fitted in a box that follows the previous landmarks.
    When a detection finds nothing, tracking coasts for at most ``max_coast`` frames
    before the face counts as lost. Faces per detection are kept for the report. At a
    frame in ``restart_at`` (a shot cut; it may fill while the frames stream) tracking
    starts afresh with a detection: the last shot's face says nothing about the new one.
    """
    all_landmarks: list[np.ndarray] = []
    found: list[bool] = []
    counts: list[int] = []
    reference: Face | None = None
    previous: np.ndarray | None = None
    failed_detections = 0
    for index, frame in enumerate(frames):
        landmarks = None
        count = -1
        if index in restart_at:
            reference, previous, failed_detections = None, None, 0
        if previous is None or index % detect_every == 0:
            faces = backend.faces(frame)
            count = len(faces)
            if faces:
                reference = max(faces, key=lambda face: face.area)
                landmarks, failed_detections = reference.landmarks, 0
            else:
                failed_detections += 1
        coasting_allowed = failed_detections == 0 or failed_detections * detect_every <= max_coast
        if landmarks is None and previous is not None and reference is not None and coasting_allowed:
            landmarks = backend.landmarks_in_box(frame, _follow_box(reference, previous))
        previous = landmarks
        counts.append(count)
        found.append(landmarks is not None)
        all_landmarks.append(landmarks * scale if landmarks is not None else np.full((68, 2), np.nan, np.float32))
    stacked = np.stack(all_landmarks).astype(np.float32) if all_landmarks else np.zeros((0, 68, 2), np.float32)
    return FaceTrack(landmarks=stacked, found=np.asarray(found, bool), face_counts=np.asarray(counts, np.int32))
