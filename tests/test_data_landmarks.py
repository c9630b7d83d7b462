"""Landmark backends: dlib works offline, face-alignment's failure is reported, tracking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from discohead.data.landmarks import BackendUnavailable, Face, load_landmark_backend, track_largest_face
from discohead.data.video import iter_video_frames


@pytest.fixture(scope="module")
def dlib_backend():
    backend, _ = load_landmark_backend("dlib")
    return backend


def test_auto_uses_the_first_backend_that_loads_and_says_why_others_did_not():
    backend, reasons = load_landmark_backend("auto")
    assert backend.name in ("face-alignment", "dlib")
    if backend.name == "dlib":
        assert reasons and reasons[0].startswith("face-alignment:")


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(BackendUnavailable, match="unknown landmark backend"):
        load_landmark_backend("openpose")


def test_dlib_finds_68_landmarks_on_a_real_face(dlib_backend, shared_data):
    frame = next(iter_video_frames(shared_data / "grid" / "bbaf2n.mpg", 25, 360, 288))
    faces = dlib_backend.faces(frame)
    assert len(faces) == 1 and faces[0].landmarks.shape == (68, 2)
    x0, y0, x1, y1 = faces[0].box
    assert x0 < faces[0].landmarks[30, 0] < x1 and y0 < faces[0].landmarks[30, 1] < y1


def test_dlib_detects_the_synthetic_face(dlib_backend, synthetic_media):
    frames = list(iter_video_frames(synthetic_media["good_a.mp4"], 25, 192, 160))
    track = track_largest_face(frames, dlib_backend, detect_every=5)
    assert track.found.mean() > 0.9


class ScriptedBackend:
    """Returns prepared faces per call, to test the tracking logic in isolation."""

    name = "scripted"

    def __init__(self, detections):
        self.detections = list(detections)
        self.refits = 0

    def faces(self, frame):
        return self.detections.pop(0)

    def landmarks_in_box(self, frame, box):
        self.refits += 1
        x0, y0, x1, y1 = box
        return np.tile(np.array([[(x0 + x1) / 2, (y0 + y1) / 2]], np.float32), (68, 1))


def face_at(x: float, size: float) -> Face:
    points = np.tile(np.array([[x, 50.0]], np.float32), (68, 1))
    points[0] -= size / 2
    points[1] += size / 2
    return Face((x - size, 50 - size, x + size, 50 + size), points)


def test_tracking_picks_the_largest_face_and_counts_faces():
    backend = ScriptedBackend([[face_at(10, 4), face_at(40, 20)], [face_at(40, 20)]])
    track = track_largest_face([None] * 6, backend, detect_every=5)
    assert track.face_counts.tolist() == [2, -1, -1, -1, -1, 1]
    assert track.found.all() and backend.refits == 4
    assert track.landmarks[0, 2, 0] == pytest.approx(40)
    assert track.frames_with_several_faces == 1


def test_tracking_coasts_briefly_then_loses_the_face():
    backend = ScriptedBackend([[face_at(40, 20)]] + [[]] * 7)
    track = track_largest_face([None] * 16, backend, detect_every=5, max_coast=5)
    assert track.found.tolist() == [True] * 10 + [False] * 6


# --- face-alignment, with stand-in weights in torch hub's cache ----------------------
#
# Its real FAN and S3FD weights download on first use, which these machines cannot do.
# These tests put stand-ins under the file names face-alignment looks for, to exercise
# the loading path and our adapter's use of its API: a scripted "FAN" whose heatmaps peak
# at known places (whatever the image), and an all-zero S3FD, which finds no face.


class PeakHeatmaps(torch.nn.Module):
    """(B, 3, 256, 256) -> (B, 68, 64, 64) heatmaps, each a single peak at a fixed place."""

    def __init__(self, peaks: torch.Tensor):
        super().__init__()
        heatmaps = torch.zeros(1, 68, 64, 64)
        heatmaps[0, torch.arange(68), peaks[:, 1], peaks[:, 0]] = 1.0
        self.register_buffer("heatmaps", heatmaps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.heatmaps.expand(images.shape[0], -1, -1, -1)


@pytest.fixture
def face_alignment_backend(tmp_path, monkeypatch):
    pytest.importorskip("face_alignment")
    from face_alignment.detection.sfd.net_s3fd import s3fd

    from discohead.data.landmarks import face_alignment_weight_files

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    fan_file, detector_file = face_alignment_weight_files()
    assert fan_file.parent == tmp_path / "hub" / "checkpoints"
    fan_file.parent.mkdir(parents=True)
    angles = torch.linspace(0, 2 * math.pi, 69)[:-1]
    peaks = torch.stack([32 + 8 * torch.cos(angles), 32 + 8 * torch.sin(angles)], dim=1).round().long()
    torch.jit.script(PeakHeatmaps(peaks)).save(str(fan_file))
    torch.save({name: torch.zeros_like(value) for name, value in s3fd().state_dict().items()}, detector_file)
    backend, reasons = load_landmark_backend("auto")
    assert backend.name == "face-alignment" and reasons == []
    return backend


def test_face_alignment_landmarks_follow_the_box(face_alignment_backend):
    frame = np.full((240, 320, 3), 128, np.uint8)
    box = (100.0, 60.0, 180.0, 140.0)
    points = face_alignment_backend.landmarks_in_box(frame, box)
    assert points.shape == (68, 2) and points.dtype == np.float32
    assert (points[:, 0] > box[0]).all() and (points[:, 0] < box[2]).all()
    assert (points[:, 1] > box[1]).all() and (points[:, 1] < box[3]).all()
    moved = face_alignment_backend.landmarks_in_box(frame, (130.0, 70.0, 210.0, 150.0))
    np.testing.assert_allclose(moved - points, np.tile([[30.0, 10.0]], (68, 1)), atol=1e-3)


def test_face_alignment_reports_no_face_as_an_empty_list(face_alignment_backend):
    assert face_alignment_backend.faces(np.full((96, 128, 3), 128, np.uint8)) == []


def test_missing_face_alignment_weights_are_named(tmp_path, monkeypatch):
    pytest.importorskip("face_alignment")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BackendUnavailable) as error:
        load_landmark_backend("face-alignment")
    assert "2DFAN4" in str(error.value) and "s3fd" in str(error.value) and str(tmp_path) in str(error.value)
