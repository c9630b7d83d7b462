"""Landmark backends: dlib works offline, face-alignment's failure is reported, tracking."""

from __future__ import annotations

import numpy as np
import pytest

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
