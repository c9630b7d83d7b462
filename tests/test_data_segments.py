"""Long videos cut at shots into segments: cut times, segment plan, records, splits and resume."""

from __future__ import annotations

import numpy as np
import pytest

from discohead.contracts import ClipConfig
from discohead.data.clips import SKIP_REASONS, process_clip, process_video, resume_state
from discohead.data.landmarks import load_landmark_backend
from discohead.data.segments import Piece, ShotDetector, plan_pieces, shots_from_cuts, split_shot
from discohead.data.shards import decode_sample
from discohead.data.synthetic import SyntheticClip, join_videos, write_cut_video
from discohead.data.video import iter_video_frames, probe

BACKGROUNDS = [(70, 90, 140), (150, 120, 60), (40, 130, 90)]
SHOTS = [
    SyntheticClip(seconds=3.0, seed=21, background=BACKGROUNDS[0], audio_delay=4 / 25),  # sound 4 frames late
    SyntheticClip(seconds=1.2, seed=22, background=BACKGROUNDS[1], face_height=100),
    SyntheticClip(seconds=6.0, seed=23, background=BACKGROUNDS[2], face_height=84),
]
CONFIG = ClipConfig(image_size=64, max_seconds=4.0, min_seconds=1.5)


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cuts")
    return write_cut_video(folder / "three_shots.mp4", SHOTS, folder)


@pytest.fixture(scope="module")
def backend():
    return load_landmark_backend("dlib")[0]


@pytest.fixture(scope="module")
def results(cut_video, backend):
    return list(process_video(cut_video[0], "three_shots.mp4", "three", backend, CONFIG, "test"))


def test_cuts_are_found_within_one_frame(cut_video):
    path, times = cut_video
    detector = ShotDetector(25, CONFIG.shot_threshold)
    count = sum(1 for _ in detector.watch(iter_video_frames(path, 25, 192, 160)))
    assert count == 255 and len(detector.cuts) == len(times)
    assert np.abs(np.array(detector.cuts) - np.array(times) * 25).max() <= 1, detector.cuts


@pytest.mark.parametrize(
    ("folder", "names"),
    [
        ("grid", None),
        ("grid", ("id2_vcd_swwp2s.mpg", "pwij3p.mpg", "lbax4n.mpg", "lrwp9a.mpg")),  # the least change at their cuts
        ("portrait", ("d10.mp4", "d11.mp4", "d12.mp4", "d14.mp4")),  # head turns that change a frame more than that
    ],
)
def test_cuts_between_real_clips_are_found_on_their_frame(shared_data, tmp_path, folder, names):
    """Same studio and framing (GRID speakers) or expressive head motion (portraits): every cut, no other."""
    parts = [shared_data / folder / name for name in names] if names else sorted((shared_data / folder).glob("*.mpg"))
    joined = join_videos(parts, tmp_path / "joined.mp4")
    # ffmpeg's concat starts each part when the longer of its streams ends (audio or video)
    lengths = [max(probe(part).duration, len(list(iter_video_frames(part, 25, 32, 32))) / 25) for part in parts]
    expected = np.cumsum(lengths)[:-1] * 25
    detector = ShotDetector(25, ClipConfig().shot_threshold)
    for _ in detector.watch(iter_video_frames(joined, 25, 256, 256)):
        pass
    assert len(detector.cuts) == len(expected), (detector.cuts, expected)
    assert np.abs(np.array(detector.cuts) - expected).max() <= 1, (detector.cuts, expected)


def test_no_threshold_means_no_cut(cut_video):
    detector = ShotDetector(25, 0)
    assert not any(
        detector.feed(index, frame) for index, frame in enumerate(iter_video_frames(cut_video[0], 25, 96, 80))
    )


def test_a_long_shot_is_split_evenly_in_whole_chunks():
    pieces = split_shot(180, 480, 2, max_frames=250, chunk_frames=50)
    assert [(p.start, p.end) for p in pieces] == [(180, 330), (330, 480)]
    assert split_shot(0, 260, 0, 250, 50) == [Piece(0, 260, 0)]  # 250 stored, 10 left over as before
    long = split_shot(0, 45_000, 0, 250, 50)
    assert len(long) == 180 and all(p.frames == 250 for p in long)
    odd = split_shot(0, 1234, 0, 240, 50)
    assert all(p.frames // 50 * 50 <= 240 for p in odd) and odd[-1].end == 1234


def test_pieces_tile_the_video_and_never_cross_a_cut():
    pieces = plan_pieces(600, [100, 130], max_frames=250, chunk_frames=50)
    assert shots_from_cuts(600, [130, 100, 0, 600]) == [(0, 100), (100, 130), (130, 600)]
    assert pieces[0].start == 0 and pieces[-1].end == 600
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
    assert [p.shot for p in pieces] == [0, 1, 2, 2]


def test_every_segment_is_a_clip_of_its_own_shot(results):
    records = sorted((result.record for result in results), key=lambda record: record.segment)
    assert [r.clip_id for r in records] == [f"three-s{i:03d}" for i in range(4)]
    assert [r.status for r in records] == ["skipped", "skipped", "ok", "ok"], [r.detail for r in records]
    assert [r.reason for r in records[:2]] == ["av_offset", "short_shot"] and "short_shot" in SKIP_REASONS
    assert (
        abs(records[0].measures["av_offset"] - 4) <= 1 and records[0].measures["av_confidence"] >= CONFIG.av_confidence
    )
    assert [r.measures["av_offset"] for r in records[2:]] == [0, 0]
    assert [r.shot for r in records] == [0, 1, 2, 2]
    assert [(r.start, r.end) for r in records] == [(0.0, 3.0), (3.0, 4.2), (4.2, 8.2), (8.2, 10.2)]
    assert [r.frames for r in records] == [0, 0, 100, 50]
    assert all(r.source_id == "three" and r.parts == 4 and r.source == "three_shots.mp4" for r in records)
    assert {r.split for r in records if r.stored} == {"test"}
    assert sum(r.decoded_frames for r in records) == 255


def test_the_late_shot_is_shifted_into_sync_when_allowed(cut_video, backend):
    config = ClipConfig(image_size=64, max_seconds=4.0, min_seconds=1.5, max_av_shift=8)
    results = process_video(cut_video[0], "three_shots.mp4", "three", backend, config, "test")
    first = {result.record.clip_id: result for result in results}["three-s000"]
    assert (first.record.clip_id, first.record.status, first.record.end) == ("three-s000", "ok", 2.0)
    assert any("audio 4 frames late" in note and "shifted" in note for note in first.record.notes), first.record.notes


def test_segment_crops_show_only_their_own_shot(results):
    """The crop's corner is background: each segment's frames all come from the shot it is attributed to."""
    for result in results:
        for split, raw in result.samples:
            sample = decode_sample(raw)
            corner = sample["frames"][:, :4, :4].reshape(-1, 3).mean(axis=0)
            expected = BACKGROUNDS[result.record.shot]
            assert np.abs(corner - expected).max() < 20, (result.record.clip_id, corner, expected)
            assert split == "test" and sample["meta"]["clip_id"] == result.record.clip_id


def test_resume_stores_only_the_missing_segments(cut_video, backend, results):
    records = [result.record.to_json() for result in results]
    done, committed = resume_state(records[:2])
    assert not done and committed == {"three": {"three-s000", "three-s001"}}
    assert resume_state(records)[0] == {"three"}
    assert resume_state([{"clip_id": "old-clip", "source": "x"}])[0] == {"old-clip"}  # pre-segmentation records
    rest = process_video(cut_video[0], "three_shots.mp4", "three", backend, CONFIG, "test", done=committed["three"])
    assert [result.record.clip_id for result in rest] == ["three-s002", "three-s003"]


def test_process_clip_refuses_a_video_of_several_segments(cut_video, backend):
    with pytest.raises(ValueError, match="makes 4 segments"):
        process_clip(cut_video[0], "three_shots.mp4", "three", backend, CONFIG, "test")


def test_an_uncut_video_keeps_its_clip_id(synthetic_media, backend):
    result = process_clip(synthetic_media["good_a.mp4"], "a", "good-a", backend, ClipConfig(image_size=64), "train")
    assert result.record.clip_id == "good-a" and (result.record.segment, result.record.parts) == (0, 1)
    assert (result.record.start, result.record.end, result.record.decoded_frames) == (0.0, 2.0, 60)


def test_segment_flags_are_checked():
    with pytest.raises(ValueError, match="--max-seconds"):
        ClipConfig(max_seconds=1.0)  # not one 50-frame chunk
    with pytest.raises(ValueError, match="--min-seconds"):
        ClipConfig(min_seconds=12.0)
    with pytest.raises(ValueError, match="--shot-threshold"):
        ClipConfig(shot_threshold=-1)
