"""process_clip on every kind of input: what is stored, and the reason for what is not."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from discohead.contracts import CHUNK_FRAMES, MEL, eye_box_from_landmarks
from discohead.data.clips import SKIP_REASONS, ClipConfig, assign_clip_splits, clip_id_for, process_clip, time_split
from discohead.data.landmarks import load_landmark_backend
from discohead.data.shards import decode_sample
from discohead.data.synthetic import SyntheticClip, write_synthetic_video
from discohead.data.video import ffmpeg_executable

from conftest import EXPECTED_OUTCOMES

CONFIG = ClipConfig(image_size=64)


@pytest.fixture(scope="module")
def backend():
    return load_landmark_backend("dlib")[0]


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTCOMES))
def test_every_input_kind_is_stored_or_skipped_with_its_reason(name, synthetic_media, backend):
    result = process_clip(synthetic_media[name], name, clip_id_for(name), backend, CONFIG, "train")
    expected = EXPECTED_OUTCOMES[name]
    if expected == "ok":
        assert result.record.status == "ok", result.record.detail
        assert result.samples and result.record.frames == len(result.samples) * CHUNK_FRAMES
    else:
        assert (result.record.status, result.record.reason) == ("skipped", expected), result.record.detail
        assert result.record.reason in SKIP_REASONS and result.record.detail and not result.samples


def test_handled_inputs_leave_a_note(synthetic_media, backend):
    notes = {
        name: " ".join(
            process_clip(synthetic_media[name], name, clip_id_for(name), backend, CONFIG, "train").record.notes
        )
        for name in ("fps30.mp4", "vertical.mp4", "two_faces.mp4", "short_audio.mp4")
    }
    assert "resampled from 30 to 25 fps" in notes["fps30.mp4"]
    assert "vertical frame" in notes["vertical.mp4"]
    assert "several faces" in notes["two_faces.mp4"]
    assert "trimmed" in notes["short_audio.mp4"]


def test_odd_frame_rates_are_resampled(tmp_path, backend):
    path = write_synthetic_video(tmp_path / "ntsc.mp4", SyntheticClip(fps=29.97, seed=13))
    result = process_clip(path, "ntsc", "ntsc", backend, CONFIG, "train")
    assert result.record.status == "ok" and "resampled from 29.97 to 25 fps" in result.record.notes
    assert result.record.decoded_frames == 60


def test_allow_silent_keeps_clips_without_sound(synthetic_media, backend):
    config = ClipConfig(image_size=64, allow_silent=True)
    for name in ("no_audio.mp4", "silent.mp4"):
        result = process_clip(synthetic_media[name], name, clip_id_for(name), backend, config, "train")
        assert result.record.status == "ok"
        mel = decode_sample(result.samples[0][1])["mel"]
        assert np.allclose(mel.astype(np.float32), MEL.silence, atol=1e-2)


def test_large_frames_are_decoded_smaller(tmp_path, backend):
    path = write_synthetic_video(tmp_path / "large.mp4", SyntheticClip(width=640, height=512, face_height=180, seed=3))
    config = ClipConfig(image_size=64, max_frame_side=480, detect_max_side=320)
    result = process_clip(path, "large", "large", backend, config, "train")
    assert result.record.status == "ok" and "large frame 640x512" in result.record.notes[0]


def test_too_long_clips_are_skipped_before_any_decoding(synthetic_media, backend):
    config = ClipConfig(max_video_seconds=1.0, max_seconds=1.0, min_seconds=0.5, chunk_frames=25)
    result = process_clip(synthetic_media["good_a.mp4"], "a", "a", backend, config, "train")
    assert result.record.reason == "too_long"


def test_samples_follow_the_shard_schema(synthetic_media, backend):
    result = process_clip(synthetic_media["good_a.mp4"], "src", "good-a", backend, CONFIG, "test")
    split, raw = result.samples[0]
    sample = decode_sample(raw)
    assert split == "test" and sample["__key__"] == "good-a_0000"
    assert sample["frames"].shape == (CHUNK_FRAMES, 64, 64, 3) and sample["frames"].dtype == np.uint8
    assert sample["mel"].shape == (CHUNK_FRAMES, MEL.n_mels, MEL.window_frames) and sample["mel"].dtype == np.float16
    assert sample["landmarks"].shape == (CHUNK_FRAMES, 68, 2) and np.isfinite(sample["landmarks"]).all()
    inside = (sample["landmarks"] >= -8) & (sample["landmarks"] <= 72)
    assert inside.mean() > 0.95
    expected_boxes = eye_box_from_landmarks(torch.from_numpy(sample["landmarks"]), 64).numpy()
    assert np.allclose(sample["eye_boxes"], expected_boxes)
    assert (
        sample["meta"]["clip_id"] == "good-a"
        and sample["meta"]["first_frame"] == 0
        and sample["meta"]["split"] == "test"
    )


def test_real_grid_clip(shared_data, backend):
    path = shared_data / "grid" / "bbaf2n.mpg"
    result = process_clip(path, str(path), "bbaf2n", backend, CONFIG, "train")
    assert result.record.status == "ok" and result.record.frames == CHUNK_FRAMES
    sample = decode_sample(result.samples[0][1])
    eye = sample["eye_boxes"][0]
    assert 0 < eye[0] < eye[2] < 1 and 0 < eye[1] < eye[3] < 0.7


def test_real_portrait_edge_cases(shared_data, backend):
    portrait = shared_data / "portrait"
    reasons = {
        name: process_clip(portrait / name, name, clip_id_for(name), backend, CONFIG, "train").record.reason
        for name in ("d0.mp4", "d13.mp4", "d18.mp4")
    }
    assert reasons == {"d0.mp4": "no_audio_stream", "d13.mp4": "no_audio_stream", "d18.mp4": "silent_audio"}


def test_clip_ids_are_unique_and_webdataset_safe():
    a, b = clip_id_for("/data/x/talk.v1.mp4"), clip_id_for("/data/y/talk.v1.mp4")
    assert a != b and "." not in a and a.startswith("talk-v1-")


def test_by_clip_split_is_deterministic_and_80_20():
    ids = [f"clip{i}" for i in range(10)]
    splits = assign_clip_splits(ids, 0.8, seed=0)
    assert splits == assign_clip_splits(list(reversed(ids)), 0.8, seed=0)
    assert sorted(splits.values()).count("test") == 2
    assert splits != assign_clip_splits(ids, 0.8, seed=1)
    assert sorted(assign_clip_splits(["a", "b"], 0.8, 0).values()) == ["test", "train"]


def test_by_time_split_puts_the_end_of_each_clip_in_test():
    assert time_split(10, 0.8) == ["train"] * 8 + ["test"] * 2
    assert time_split(2, 0.8) == ["train", "test"]
    assert time_split(1, 0.8) == ["train"]


def test_chunk_frames_sets_the_sample_length_and_the_time_split(synthetic_media, backend):
    config = ClipConfig(image_size=64, chunk_frames=12, split_mode="time", train_ratio=0.8)
    result = process_clip(synthetic_media["good_a.mp4"], "src", "good-a", backend, config, None)
    splits = [split for split, _ in result.samples]
    assert len(splits) == 5 and splits == ["train"] * 4 + ["test"], splits
    first = decode_sample(result.samples[1][1])
    assert first["frames"].shape[0] == 12 and first["meta"]["first_frame"] == 12
    assert result.record.frames == 60 and config.to_json()["chunk_frames"] == 12


def raw_stream_of(video, folder):
    """The video stream of ``video`` as a raw .h264 file: no container, so no duration."""
    path = folder / "stream.h264"
    command = [ffmpeg_executable(), "-v", "error", "-y", "-i", str(video), "-an", "-c:v", "copy", "-f", "h264"]
    subprocess.run([*command, str(path)], check=True, capture_output=True)
    return path


def test_a_stream_without_duration_is_cut_at_max_video_seconds_as_too_long(tmp_path, synthetic_media, backend):
    stream = raw_stream_of(synthetic_media["good_a.mp4"], tmp_path)
    kept = process_clip(stream, "s", "s", backend, ClipConfig(image_size=64, allow_silent=True), "train")
    assert kept.record.status == "ok" and kept.record.decoded_frames == 60, kept.record.detail
    limits = {"max_video_seconds": 1.0, "max_seconds": 1.0, "min_seconds": 1.0, "chunk_frames": 25}
    config = ClipConfig(image_size=64, allow_silent=True, **limits)
    result = process_clip(stream, "s", "s", backend, config, "train")
    assert (result.record.status, result.record.reason) == ("skipped", "too_long"), result.record.detail
    assert "--max-video-seconds 1" in result.record.detail and not result.samples


def test_a_playlist_naming_another_video_is_not_a_video(tmp_path, synthetic_media, backend):
    playlist = tmp_path / "clip.m3u8"
    target = synthetic_media["good_a.mp4"]
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.4,\n{target}\n#EXT-X-ENDLIST\n")
    result = process_clip(playlist, "p", "p", backend, CONFIG, "train")
    assert result.record.reason == "not_a_video", result.record.status


def test_an_ffmpeg_run_past_its_timeout_skips_the_clip(synthetic_media, backend):
    result = process_clip(synthetic_media["good_a.mp4"], "a", "a", backend, CONFIG, "train", ffmpeg_timeout_s=0.001)
    assert result.record.reason == "timeout" and result.record.reason in SKIP_REASONS
