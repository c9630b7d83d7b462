"""Quality gates: each measure, each skip, and every value kept in the record."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from discohead.contracts import ClipConfig
from discohead.data import curation, sync
from discohead.data.clips import SKIP_REASONS, clip_id_for, process_clip
from discohead.data.landmarks import load_landmark_backend
from discohead.data.synthetic import SyntheticClip, write_synthetic_video
from discohead.data.video import ffmpeg_executable

MEASURES = {
    "face_size",
    "jitter",
    "audio_dbfs",
    "clipping",
    "av_offset",
    "av_confidence",
    "sharpness",
    "identity_distance",
}


@pytest.fixture(scope="module")
def backend():
    return load_landmark_backend("dlib")[0]


def test_sharpness_drops_when_the_image_is_blurred():
    from PIL import Image, ImageFilter

    checker = (np.indices((64, 64)).sum(axis=0) // 4 % 2 * 255).astype(np.uint8)
    image = np.repeat(checker[..., None], 3, axis=-1)
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(3)))
    assert curation.laplacian_variance(image) > 10 * curation.laplacian_variance(blurred)
    assert curation.sharpness(np.stack([image] * 10)) == pytest.approx(curation.laplacian_variance(image))


def test_jitter_is_small_for_smooth_motion_and_large_for_jumps():
    rng = np.random.default_rng(0)
    face = rng.uniform(0, 100, (68, 2))
    smooth = np.stack([face + [t * 0.5, 0] for t in range(50)])
    jumpy = smooth + rng.normal(0, 5, smooth.shape)
    assert curation.landmark_jitter(smooth) < 1e-6 < 0.05 < curation.landmark_jitter(jumpy)
    assert curation.face_size(np.array([[0, 0, 100, 100], [0, 0, 120, 120.0]]), scale=2.0) == 220.0


def test_audio_level_and_clipping():
    tone = 0.5 * np.sin(np.linspace(0, 200 * np.pi, 16_000)).astype(np.float32)
    assert curation.audio_dbfs(tone) == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.1)
    assert curation.audio_dbfs(np.zeros(100)) == -240.0 and curation.clipped_share(tone) == 0.0
    assert curation.clipped_share(np.clip(tone * 4, -1, 1)) > 0.5


def test_a_stored_clip_keeps_every_measure(synthetic_media, backend):
    record = process_clip(synthetic_media["good_a.mp4"], "a", "a", backend, ClipConfig(image_size=64), "train").record
    assert record.status == "ok" and set(record.measures) == MEASURES
    assert record.measures["face_size"] > 100 and record.measures["clipping"] == 0.0
    assert -40 < record.measures["audio_dbfs"] < -5 and record.measures["sharpness"] > 5
    assert record.measures["av_offset"] == 0 and record.measures["av_confidence"] > 0.9


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ({"min_face_size": 500.0}, "small_face"),
        ({"max_jitter": 0.0}, "jittery"),
        ({"min_audio_dbfs": -3.0}, "quiet_audio"),
        ({"min_sharpness": 1e6}, "blurry"),
    ],
)
def test_each_gate_skips_with_its_reason_and_keeps_the_values(synthetic_media, backend, setting, reason):
    config = ClipConfig(image_size=64, **setting)
    result = process_clip(synthetic_media["good_a.mp4"], "a", "a", backend, config, "train")
    assert (result.record.status, result.record.reason) == ("skipped", reason) and reason in SKIP_REASONS
    assert not result.samples and result.record.measures and "--" in result.record.detail
    cheap = {"face_size", "jitter", "audio_dbfs", "clipping"}  # the offset is estimated once these pass
    assert set(result.record.measures) == (MEASURES if reason == "blurry" else cheap)


def test_clipped_audio_is_skipped(synthetic_media, backend, tmp_path):
    loud = tmp_path / "loud.mp4"
    command = [ffmpeg_executable(), "-v", "error", "-i", str(synthetic_media["good_a.mp4"]), "-af", "volume=30"]
    subprocess.run([*command, "-c:v", "copy", str(loud)], check=True, capture_output=True)
    config = ClipConfig(image_size=64, max_clipping=0.005)
    record = process_clip(loud, "loud", "loud", backend, config, "train").record
    assert (record.status, record.reason) == ("skipped", "clipped_audio") and record.measures["clipping"] > 0.005


def test_silence_kept_under_allow_silent_is_not_judged(synthetic_media, backend):
    config = ClipConfig(image_size=64, allow_silent=True)
    record = process_clip(synthetic_media["no_audio.mp4"], "n", clip_id_for("n"), backend, config, "train").record
    assert record.status == "ok" and "audio_dbfs" not in record.measures


def test_real_grid_clips_pass_the_default_gates(shared_data, backend):
    path = shared_data / "grid" / "bbaf2n.mpg"
    record = process_clip(path, str(path), "bbaf2n", backend, ClipConfig(image_size=64), "train").record
    assert record.status == "ok", record.detail
    assert 150 < record.measures["face_size"] < 260 and 50 < record.measures["sharpness"] < 300
    assert record.measures["jitter"] < 0.05 and -30 < record.measures["audio_dbfs"] < -5


def test_identity_distance_separates_two_speakers_and_keeps_one(shared_data, backend):
    """dlib's embeddings of GRID crops: one speaker's frames stay under 0.6, another speaker's go over it."""
    from discohead.data.crop import crop_and_resize, crop_boxes
    from discohead.data.video import iter_video_frames

    def crops(name: str) -> np.ndarray:
        frames = list(iter_video_frames(shared_data / "grid" / name, 25, 360, 288))[:50:10]
        faces = [max(backend.faces(frame), key=lambda face: face.area).landmarks for frame in frames]
        boxes = crop_boxes(np.stack(faces), 360, 288, 0.0)
        return np.stack([crop_and_resize(frame, box, 128) for frame, box in zip(frames, boxes)])

    one, other = crops("bbaf2n.mpg"), crops("lbax4n.mpg")
    assert curation.identity_distance(one) < 0.6
    assert curation.identity_distance(np.concatenate([one[:3], other[:2]])) > 0.6
    assert curation.identity_distance(np.stack([one[0]] * 3)) == pytest.approx(0.0, abs=1e-6)


def test_dataset_stats_sit_next_to_the_manifest_and_go_with_overwrite(tmp_path):
    from discohead.contracts import STATS_NAME
    from discohead.data.shards import remove_outputs
    from discohead.manifest import ClipRecord, Manifest
    from discohead.storage import filesystem_for

    kept = ClipRecord("a", "v.mp4", "ok", frames=250, decoded_frames=250, fps=25.0, measures={"sharpness": 80.0})
    blurry = ClipRecord("b", "v.mp4", "skipped", "blurry", "...", decoded_frames=250, fps=25.0)
    blurry.measures = {"sharpness": 2.0}
    manifest = Manifest(ClipConfig(), "dlib", {"train": [], "test": []}, [kept], [blurry])
    stats = curation.write_stats(manifest, str(tmp_path))
    manifest.write(str(tmp_path))
    assert stats["videos"] == 1 and stats["segments_kept"] == 1 and stats["skipped_by_reason"] == {"blurry": 1}
    assert stats["hours_decoded"] == round(20 / 3600, 4) and stats["hours_kept"] == round(10 / 3600, 4)
    assert stats["measures"]["sharpness"]["kept"][0] == 80.0 and stats["measures"]["sharpness"]["measured"][0] == 2.0
    assert (tmp_path / STATS_NAME).exists()
    fs, root = filesystem_for(str(tmp_path))
    assert STATS_NAME in remove_outputs(fs, root) and not (tmp_path / STATS_NAME).exists()


@pytest.mark.parametrize("frames", [4, -4])
def test_an_audio_offset_is_found_and_the_segment_skipped_or_shifted(backend, tmp_path, frames):
    shifted = write_synthetic_video(tmp_path / "late.mp4", SyntheticClip(seed=1, audio_delay=frames / 25))
    skipped = process_clip(shifted, "s", "s", backend, ClipConfig(image_size=64), "train").record
    assert (skipped.status, skipped.reason) == ("skipped", "av_offset") and "av_offset" in SKIP_REASONS
    assert abs(skipped.measures["av_offset"] - frames) <= 1 and skipped.measures["av_confidence"] >= 0.8
    assert ("late" if frames > 0 else "early") in skipped.detail
    kept = process_clip(shifted, "s", "s", backend, ClipConfig(image_size=64, max_av_shift=8), "train").record
    assert kept.status == "ok" and any("shifted to sync" in note for note in kept.notes), kept.notes


def test_shifting_the_audio_undoes_the_offset():
    waveform = np.arange(10, dtype=np.float32)
    assert sync.shift_audio(waveform, 2, 2).tolist() == [4, 5, 6, 7, 8, 9, 0, 0, 0, 0]
    assert sync.shift_audio(waveform, -1, 2).tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert sync.av_offset(np.zeros((20, 68, 2)), np.zeros(20 * 640), 640) == (0, 0.0)  # too short to judge
