"""Long videos to clips: shot cuts (PySceneDetect's adaptive content detector) and segments inside shots.

A training chunk pairs a source and a driver frame of one clip, so a clip must never span
a camera cut (it would pair two shots, often two people). Cuts are found while the
frames stream through the landmark pass (no extra decode), and each shot is cut into
segments of at most ``--max-seconds``; each segment becomes a clip of its own.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

SHOT_DETECT_WIDTH = 256
"""Frames are subsampled to about this width for shot detection: PySceneDetect's own
default for such videos, and a hard cut changes colour and brightness at any scale."""

MIN_SHOT_FRAMES = 15
"""No second cut within this many frames of the last (PySceneDetect's default
``min_scene_len``): a flash or a fast pan is not two shots."""

WINDOW_FRAMES = 2
"""Frames on each side a frame's change is compared with (PySceneDetect's ``window_width``):
cuts are known this many frames late, so :meth:`ShotDetector.watch` holds frames back."""

MIN_CUT_CHANGE = 8.0
"""A cut must also change the frame by this much (the content detector's mean HSV change,
0-255): it keeps the ratio test off near-still footage, where tiny changes make big ratios.
Measured on the shared clips: cuts between two GRID speakers change 12.6 and up, frames
inside a GRID clip at most 2.6."""


class ShotDetector:
    """Feeds RGB frames to PySceneDetect's ``AdaptiveDetector`` and keeps the frames where shots start.

    A frame starts a shot when its change from the previous frame (the content detector's
    mean HSV change) is ``threshold`` times (``--shot-threshold``) the mean change of the
    2 frames before and after it, and at least :data:`MIN_CUT_CHANGE`; 0 turns detection
    off, so a video is one shot. A ratio, not a fixed change, because a fixed one cannot
    tell a cut between two similar shots from a fast head turn: on the shared clips a cut
    between two GRID speakers changes the frame 12.6, a portrait clip's head motion 17.7,
    while their ratios are 14.4 and up against 4.7 at most (docs/preprocessing.md).
    """

    def __init__(self, fps: float, threshold: float):
        self.fps = float(fps)
        self.cuts: list[int] = []
        self._detector = None
        if threshold > 0:
            from scenedetect import AdaptiveDetector

            self._detector = AdaptiveDetector(
                adaptive_threshold=threshold,
                min_scene_len=MIN_SHOT_FRAMES,
                window_width=WINDOW_FRAMES,
                min_content_val=MIN_CUT_CHANGE,
            )

    def feed(self, index: int, frame: np.ndarray) -> list[int]:
        """Look at frame ``index`` (RGB, frames in order); the cuts this frame revealed (at most
        :data:`WINDOW_FRAMES` frames back: the frames where new shots start)."""
        if self._detector is None:
            return []
        from scenedetect import FrameTimecode

        step = max(1, frame.shape[1] // SHOT_DETECT_WIDTH)
        bgr = np.ascontiguousarray(frame[::step, ::step, ::-1])
        found = [cut.frame_num for cut in self._detector.process_frame(FrameTimecode(index, fps=self.fps), bgr)]
        found = [cut for cut in found if cut > 0]
        self.cuts.extend(found)
        return found

    def watch(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Pass ``frames`` through unchanged, detecting cuts on the way.

        Each frame comes out once the detector has seen the :data:`WINDOW_FRAMES` after it,
        so ``self.cuts`` already holds a cut when its frame comes out (the face tracker
        restarts there).
        """
        held: deque[np.ndarray] = deque()
        for index, frame in enumerate(frames):
            self.feed(index, frame)
            held.append(frame)
            if len(held) > WINDOW_FRAMES:
                yield held.popleft()
        yield from held


@dataclass(frozen=True)
class Piece:
    """A stretch ``[start, end)`` of a video's frames: one shot, or part of a longer one."""

    start: int
    end: int
    shot: int

    @property
    def frames(self) -> int:
        return self.end - self.start


def shots_from_cuts(num_frames: int, cuts: Iterable[int]) -> list[tuple[int, int]]:
    """``[start, end)`` frame ranges of the shots between ``cuts`` (the first frame of each new shot)."""
    bounds = [0, *sorted({cut for cut in cuts if 0 < cut < num_frames}), num_frames]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def split_shot(start: int, end: int, shot: int, max_frames: int, chunk_frames: int) -> list[Piece]:
    """One shot in as few pieces of at most ``max_frames`` stored frames as possible, evenly.

    Pieces are whole multiples of ``chunk_frames`` (which is all a clip stores) where the
    shot allows, so cutting a shot drops no more frames than storing it whole would; the
    last piece also takes the shot's leftover frames (fewer than one chunk, not stored).
    """
    length = end - start
    units, per_piece = length // chunk_frames, max(1, max_frames // chunk_frames)
    count = max(1, math.ceil(units / per_piece))
    if count == 1:
        return [Piece(start, end, shot)]
    sizes = [units // count + (1 if index < units % count else 0) for index in range(count)]
    bounds = [start + chunk_frames * int(total) for total in np.cumsum([0, *sizes])]
    bounds[-1] = end
    return [Piece(a, b, shot) for a, b in zip(bounds, bounds[1:])]


def plan_pieces(num_frames: int, cuts: Iterable[int], max_frames: int, chunk_frames: int) -> list[Piece]:
    """Every frame of the video in order, in pieces: shots split at ``cuts``, long shots split further."""
    return [
        piece
        for shot, (start, end) in enumerate(shots_from_cuts(num_frames, cuts))
        for piece in split_shot(start, end, shot, max_frames, chunk_frames)
    ]
