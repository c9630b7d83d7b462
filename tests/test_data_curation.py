"""Quality gates: each measure, each skip, and every value kept in the record."""

from __future__ import annotations

import dataclasses
import subprocess

import numpy as np
import pytest
import torch

from discohead.contracts import ClipConfig
from discohead.data import curation, sync
from discohead.data.clips import SKIP_REASONS, clip_id_for, process_clip
from discohead.data.landmarks import load_landmark_backend
from discohead.data.synthetic import SyntheticClip, write_synthetic_video
from discohead.data.video import ffmpeg_executable

MEASURES = {
    "face_size",
    "jitter",
    "yaw",
    "pitch",
    "audio_dbfs",
    "clipping",
    "av_offset",
    "av_confidence",
    "av_margin",
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


def turned_face(yaw: float, pitch: float, roll: float = 0.0, distance: float = 40.0) -> np.ndarray:
    """68 landmarks (the fitted ones set) of the generic face turned by these angles (degrees), seen in perspective.

    Roll turns the face about its forward direction first, then pitch tilts it and yaw turns it; ``distance``
    is in the model's units (its fitted points span about 14).
    """
    y, p, r = np.radians([yaw, pitch, roll])
    turn = np.array([[np.cos(y), 0, -np.sin(y)], [0, 1, 0], [np.sin(y), 0, np.cos(y)]])
    tilt = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    spin = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    model = curation.POSE_MODEL - curation.POSE_MODEL.mean(axis=0)
    points = model @ (turn @ tilt @ spin).T + [0, 0, distance]
    landmarks = np.zeros((68, 2))
    landmarks[list(curation.POSE_LANDMARKS)] = 900 * points[:, :2] / points[:, 2:] + [320, 240]
    return landmarks


@pytest.mark.parametrize(
    ("yaw", "pitch", "roll"), [(0, 0, 0), (30, 0, 0), (-30, 0, 0), (60, 0, 0), (0, 20, 0), (0, -25, 10), (45, 15, 20)]
)
def test_head_pose_recovers_the_angles_of_a_turned_face(yaw, pitch, roll):
    estimate = curation.head_pose(turned_face(yaw, pitch, roll)[None])[0]
    assert np.abs(estimate - [yaw, pitch]).max() < 2.5, estimate
    for distance in (20.0, 200.0):  # closer or further than the fit assumes: less exact, same side
        near = curation.head_pose(turned_face(yaw, pitch, roll, distance)[None])[0]
        assert np.abs(near - [yaw, pitch]).max() < 0.2 * max(abs(yaw), abs(pitch)) + 2.5, (distance, near)


def test_pose_extremes_ignore_a_one_frame_glitch_and_see_a_held_turn():
    frontal = np.stack([turned_face(0, 0)] * 30)
    assert max(curation.pose_extremes(frontal)) < 0.5 and curation.pose_extremes(frontal[:0]) == (0.0, 0.0)
    glitch = frontal.copy()
    glitch[12] = turned_face(70, 0)
    assert curation.pose_extremes(glitch)[0] < 0.5
    held = frontal.copy()
    held[10:20] = [turned_face(-50, -20, 5)] * 10
    assert curation.pose_extremes(held) == pytest.approx((50, 20), abs=2.5)
    with pytest.raises(ValueError, match="--max-yaw"):
        ClipConfig(max_yaw=-1.0)
    with pytest.raises(ValueError, match="--max-pitch"):
        ClipConfig(max_pitch=91.0)


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
    assert record.measures["av_offset"] == 0 and record.measures["av_confidence"] > 0.7  # real speech: 0.44-0.67


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ({"min_face_size": 500.0}, "small_face"),
        ({"max_jitter": 0.0}, "jittery"),
        ({"max_yaw": 0.0}, "head_pose"),
        ({"min_audio_dbfs": -3.0}, "quiet_audio"),
        ({"min_sharpness": 1e6}, "blurry"),
    ],
)
def test_each_gate_skips_with_its_reason_and_keeps_the_values(synthetic_media, backend, setting, reason):
    config = ClipConfig(image_size=64, **setting)
    result = process_clip(synthetic_media["good_a.mp4"], "a", "a", backend, config, "train")
    assert (result.record.status, result.record.reason) == ("skipped", reason) and reason in SKIP_REASONS
    assert not result.samples and result.record.measures and "--" in result.record.detail
    cheap = {"face_size", "jitter", "yaw", "pitch", "audio_dbfs", "clipping"}  # the offset is estimated once these pass
    # identity is embedded only for segments that pass sharpness too (the costliest measure comes last)
    assert set(result.record.measures) == (MEASURES - {"identity_distance"} if reason == "blurry" else cheap)


def test_clipped_audio_is_skipped(synthetic_media, backend, tmp_path):
    loud = tmp_path / "loud.mov"  # 16-bit PCM clips at full scale (AAC's float output can exceed it)
    command = [ffmpeg_executable(), "-v", "error", "-i", str(synthetic_media["good_a.mp4"]), "-af", "volume=30"]
    subprocess.run([*command, "-c:v", "copy", "-c:a", "pcm_s16le", str(loud)], check=True, capture_output=True)
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
    assert record.measures["yaw"] < 15 and record.measures["pitch"] < 15  # a speaker facing the camera


@pytest.fixture(scope="module")
def grid_faces(shared_data, backend):
    """Five 128 px face crops of each of two GRID speakers."""
    from discohead.data.crop import crop_and_resize, crop_boxes
    from discohead.data.video import iter_video_frames

    def crops(name: str) -> np.ndarray:
        frames = list(iter_video_frames(shared_data / "grid" / name, 25, 360, 288))[:50:10]
        faces = [max(backend.faces(frame), key=lambda face: face.area).landmarks for frame in frames]
        boxes = crop_boxes(np.stack(faces), 360, 288, 0.0)
        return np.stack([crop_and_resize(frame, box, 128) for frame, box in zip(frames, boxes)])

    return crops("bbaf2n.mpg"), crops("lbax4n.mpg")


def test_identity_distance_separates_two_speakers_and_keeps_one(grid_faces):
    """dlib's embeddings of GRID crops: one speaker's frames stay under 0.6, another speaker's go over it."""
    one, other = grid_faces
    assert curation.identity_distance(one, every=2) < 0.6
    assert curation.identity_distance(np.concatenate([one[:3], other[:2]]), every=2) > 0.6
    assert curation.identity_distance(np.stack([one[0]] * 3)) == pytest.approx(0.0, abs=1e-6)


def test_a_person_who_changes_and_comes_back_is_seen_and_cut_into_runs(grid_faces):
    """150 frames, speaker B at frames 40-60 only: first, middle and last frame all show A; sampling every 50 sees B."""
    one, other = grid_faces
    crops = np.stack([one[0], other[0]])[[0] * 40 + [1] * 21 + [0] * 89]
    picks = curation.identity_picks(len(crops), 50)
    assert picks == [0, 50, 100, 149] and curation.identity_picks(1, 50) == [0] and curation.identity_picks(0, 50) == []
    embeddings = curation.identity_embeddings(crops, [*picks, 75])
    assert curation.largest_distance(embeddings[[0, 4, 3]]) < 0.6 < curation.largest_distance(embeddings[:4])
    runs = curation.identity_runs(embeddings[:4], picks, 0.6)
    assert [(run.first, run.last) for run in runs] == [(0, 0), (50, 50), (100, 149)]
    assert all(run.distance < 0.6 for run in runs) and runs[2].distance == pytest.approx(0.0, abs=1e-6)
    assert len(curation.identity_runs(embeddings[:4], picks, 2.0)) == 1  # a looser limit keeps one run


def test_bisection_places_each_change_of_person_on_its_frame(monkeypatch):
    """Stand-in embeddings (person A before frame 63, B up to 120, A again after) in place of dlib's: the samples
    every 50 frames see three runs, and bisection moves each boundary to the frame where the person changes."""
    people = np.eye(3)[[0] * 63 + [1] * 57 + [0] * 80]  # 200 frames: A, B from 63, A from 120
    monkeypatch.setattr(curation, "identity_embeddings", lambda crops, picks: people[picks])
    picks = curation.identity_picks(len(people), 50)
    embeddings = curation.identity_embeddings(None, picks)
    runs = curation.identity_runs(embeddings, picks, 0.6)
    assert [(run.first, run.last) for run in runs] == [(0, 50), (100, 100), (150, 199)]
    placed = curation.locate_changes(None, runs, embeddings, picks, 0.6)
    assert [(run.first, run.last) for run in placed] == [(0, 62), (63, 119), (120, 199)]


def test_a_change_of_person_splits_the_segment_and_resumes_by_part(shared_data, backend, tmp_path):
    """Two GRID speakers joined with no cut detection (a change of person without a cut): sampled every 50 frames, the
    change lies between frames 50 and 100, and bisection puts it on frame 75, where B starts; nothing is dropped. A
    rerun stores only what is missing, and the source counts done once every part is committed."""
    from discohead.data.clips import process_video, resume_state
    from discohead.data.synthetic import join_videos

    joined = join_videos([shared_data / "grid" / "bbaf2n.mpg", shared_data / "grid" / "lbax4n.mpg"], tmp_path / "j.mp4")
    config = ClipConfig(image_size=64, shot_threshold=0, min_seconds=1.5)
    results = list(process_video(joined, "j.mp4", "j", backend, config, "train"))
    records = [result.record for result in results]
    assert [(r.clip_id, r.status, r.segment, r.parts) for r in records] == [("j-i0", "ok", 0, 2), ("j-i1", "ok", 0, 2)]
    assert [(r.start, r.end, r.frames) for r in records] == [(0.0, 2.0, 50), (3.0, 5.0, 50)]
    assert sum(r.decoded_frames for r in records) == 150 and all(r.measures["identity_distance"] < 0.6 for r in records)
    assert all(any("changes person: split into 2 parts at 3.00s" in note for note in r.notes) for r in records)
    assert all(len(result.samples) == 1 for result in results) and SKIP_REASONS["identity_change"]
    done, committed = resume_state([records[0].to_json()])
    assert not done and resume_state([r.to_json() for r in records])[0] == {"j"}
    rest = process_video(joined, "j.mp4", "j", backend, config, "train", done=committed["j"])
    assert [result.record.clip_id for result in rest] == ["j-i1"]
    strict = process_video(joined, "j.mp4", "j", backend, dataclasses.replace(config, min_seconds=3.5), "train")
    assert [(r.record.clip_id, r.record.reason) for r in strict] == [(f"j-i{i}", "identity_change") for i in (0, 1)]
    unchecked = process_clip(
        joined, "j.mp4", "j", backend, dataclasses.replace(config, max_identity_distance=0), "train"
    )
    assert unchecked.record.stored and "identity_distance" not in unchecked.record.measures  # 0: not checked


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


def test_stats_image_has_a_panel_per_measure_with_its_gate(tmp_path):
    """stats.png: a histogram per measure found in the records (a gate's threshold drawn where ClipConfig has
    one), the skips by reason last; published beside stats.json with the job's throughput, gone with --overwrite."""
    import io
    import json

    from PIL import Image

    from discohead.data.shards import remove_outputs
    from discohead.manifest import ClipRecord, Manifest
    from discohead.storage import filesystem_for

    rng = np.random.default_rng(0)
    records = []
    for index in range(40):
        measures = {"face_size": rng.uniform(30, 300), "av_offset": int(rng.integers(-6, 7)), "novel": rng.normal()}
        if index % 4:
            measures["sharpness"] = float("nan") if index == 1 else rng.uniform(0, 100)  # not every record has all
        small = measures["face_size"] < 64
        records.append(
            ClipRecord(f"c{index}", f"v{index}.mp4", "skipped" if small else "ok", "small_face" if small else None,
                       frames=50, decoded_frames=50, fps=25.0, measures=measures)
        )  # fmt: skip
    records.append(ClipRecord(None, "x.mp4", "skipped", "not_a_video"))
    config = ClipConfig(min_face_size=64.0, max_av_shift=3)
    manifest = Manifest(config, "dlib", {"train": [], "test": []}, [r for r in records if r.stored],
                        [r for r in records if not r.stored])  # fmt: skip
    image, panels = curation.plot_stats(manifest)
    assert panels == ["av_offset", "face_size", "novel", "sharpness", curation.SKIPPED_PANEL]
    decoded = Image.open(io.BytesIO(image))
    assert decoded.format == "PNG" and decoded.size[0] > 600 and len(image) < 300_000
    decoded.verify()
    assert curation.gate_thresholds(config, "face_size") == [("--min-face-size 64", 64.0)]
    assert [value for _, value in curation.gate_thresholds(config, "av_offset")] == [-3.0, 3.0]
    assert curation.gate_thresholds(config, "novel") == []

    throughput = {"job": {"wall_seconds": 12.5, "workers": 2}}
    stats = curation.write_stats(manifest, str(tmp_path), throughput=throughput)
    assert stats["throughput"] == throughput == json.loads((tmp_path / "stats.json").read_text())["throughput"]
    assert "throughput" not in curation.dataset_stats(manifest)  # the manifest alone gives the rest
    assert (tmp_path / curation.STATS_PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest.write(str(tmp_path))
    assert curation.STATS_PLOT_NAME in remove_outputs(*filesystem_for(str(tmp_path)))


@pytest.mark.parametrize("frames", [4, -4])
def test_an_audio_offset_is_found_and_the_segment_skipped_or_shifted(backend, tmp_path, frames):
    shifted = write_synthetic_video(tmp_path / "late.mp4", SyntheticClip(seed=1, audio_delay=frames / 25))
    skipped = process_clip(shifted, "s", "s", backend, ClipConfig(image_size=64), "train").record
    assert (skipped.status, skipped.reason) == ("skipped", "av_offset") and "av_offset" in SKIP_REASONS
    assert abs(skipped.measures["av_offset"] - frames) <= 1 and skipped.measures["av_confidence"] >= 0.4
    assert ("late" if frames > 0 else "early") in skipped.detail
    kept = process_clip(shifted, "s", "s", backend, ClipConfig(image_size=64, max_av_shift=8), "train").record
    assert kept.status == "ok" and any("shifted to sync" in note for note in kept.notes), kept.notes


class OneHotSyncNet(torch.nn.Module):
    """A stand-in with SyncNet's interface (not its weights): lip window ``i`` embeds as one-hot ``i``, audio
    window ``j`` as one-hot ``j - late``, i.e. the sound of frame ``i`` arrives ``late`` frames after it. It checks
    the plumbing and the sign convention; SyncNet's own accuracy needs the real file, which CI cannot fetch."""

    def __init__(self, late: int):
        super().__init__()
        self.late = late
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def lip_windows(self, crops):
        return 10 * torch.eye(1024)[: len(crops) - 4]  # SyncNet's distances are of this order

    def audio_windows(self, mfcc, count):
        return torch.stack([10 * torch.eye(1024)[j - self.late] * (0 <= j - self.late) for j in range(count)])


def test_syncnet_offsets_keep_this_modules_sign():
    crops = np.zeros((75, 32, 32, 3), np.uint8)
    offset, confidence, margin = sync.syncnet_offset(OneHotSyncNet(late=3), crops, np.zeros(48_000, np.float32), 16_000)
    assert offset == 3 and confidence > 0 and margin == confidence


def test_av_method_syncnet_decides_on_its_own_confidence(backend, tmp_path):
    video = write_synthetic_video(tmp_path / "v.mp4", SyntheticClip(seed=1))
    config = ClipConfig(image_size=64, av_method="syncnet", max_av_shift=3)
    shifted = process_clip(video, "s", "s", backend, config, "train", syncnet=OneHotSyncNet(late=2)).record
    assert shifted.stored and shifted.measures["av_offset"] == 2, shifted.measures
    assert any("2 frames late (syncnet confidence" in note and "shifted to sync" in note for note in shifted.notes)
    skipped = process_clip(video, "s", "s", backend, config, "train", syncnet=OneHotSyncNet(late=-5)).record
    assert skipped.reason == "av_offset" and skipped.measures["av_offset"] == -5
    doubted = dataclasses.replace(config, syncnet_confidence=100.0)
    kept = process_clip(video, "s", "s", backend, doubted, "train", syncnet=OneHotSyncNet(late=-5)).record
    assert kept.stored and not any("shifted" in note for note in kept.notes)
    with pytest.raises(ValueError, match="needs the SyncNet network"):
        process_clip(video, "s", "s", backend, config, "train")


def test_shifting_the_audio_undoes_the_offset():
    waveform = np.arange(10, dtype=np.float32)
    assert sync.shift_audio(waveform, 2, 2).tolist() == [4, 5, 6, 7, 8, 9, 0, 0, 0, 0]
    assert sync.shift_audio(waveform, -1, 2).tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert sync.av_offset(np.zeros((20, 68, 2)), np.zeros(20 * 640), 640) == (0, 0.0, 0.0)  # too short to judge


@pytest.fixture
def measured_dest(tmp_path):
    """Synthetic shards of four clips whose manifest carries known measures (sharpness 10, 20, 30, 40)."""
    from discohead.data.synthetic_shards import write_synthetic_shards

    dest = tmp_path / "prepared"
    manifest = write_synthetic_shards(str(dest), clips=4, frames_per_clip=20, image_size=32, chunk_frames=10)
    for index, clip in enumerate(manifest.clips):
        clip.measures = {"sharpness": 10.0 * (index + 1), "jitter": 0.01, "av_offset": index, "av_confidence": 0.5}
    manifest.write(str(dest))
    return dest, manifest


def test_refilter_drops_what_stricter_gates_fail_and_the_view_reads_only_its_clips(measured_dest, tmp_path):
    from discohead.data.shards import iter_split
    from discohead.manifest import Manifest
    from discohead.training import shard_rows, training_chunks

    dest, manifest = measured_dest
    view = curation.refilter(manifest, {"min_sharpness": 25.0, "max_av_shift": 2}, str(dest))
    ids = [clip.clip_id for clip in manifest.clips]
    assert [clip.clip_id for clip in view.clips] == [ids[2]]  # sharpness 30 and offset 2
    reasons = {clip.clip_id: (clip.reason, clip.detail) for clip in view.skipped}
    assert reasons[ids[0]][0] == reasons[ids[1]][0] == "blurry" and reasons[ids[3]][0] == "av_offset"
    assert reasons[ids[0]][1].startswith("refilter: sharpness 10 < --min-sharpness 25")
    assert view.config.min_sharpness == 25.0 and view.view_of == str(dest)

    out = tmp_path / "strict"
    view.write(str(out))
    read = Manifest.read(str(out))
    assert read.view_of == str(dest) and read.clip_filter == {ids[2]}
    assert {sample["meta"]["clip_id"] for split in ("train", "test") for sample in iter_split(str(out), split)} == {
        ids[2]
    }
    rows = shard_rows(read, str(out))
    assert rows and all(row["path"].startswith(str(dest)) for row in rows)
    chunks = [chunk for row in rows for chunk in training_chunks(row, keep_clips=read.clip_filter)]
    assert len(chunks) == 1 and sum(chunk["bad_samples"] for chunk in chunks) == 0  # nothing counted as damaged


def test_refilter_refuses_looser_thresholds_and_other_settings(measured_dest):
    dest, manifest = measured_dest
    with pytest.raises(ValueError, match="looser than the 5 the shards were made with"):
        curation.refilter(manifest, {"min_sharpness": 1.0}, str(dest))
    with pytest.raises(ValueError, match="--max-av-shift 5 is looser"):
        curation.refilter(manifest, {"max_av_shift": 5}, str(dest))
    with pytest.raises(ValueError, match="cannot change image_size"):
        curation.refilter(manifest, {"image_size": 64}, str(dest))


def test_discohead_refilter_command_prints_writes_a_view_and_refuses_in_one_line(measured_dest, tmp_path, capsys):
    from discohead.cli import main
    from discohead.data.synthetic_shards import write_synthetic_shards
    from discohead.manifest import Manifest

    dest, _ = measured_dest
    assert main(["refilter", str(dest), "--min-sharpness", "25"]) == 0  # a dry run: prints, writes nothing
    printed = capsys.readouterr().out
    assert "4 segments stored" in printed and "drops 2 as blurry" in printed and "keeps 2 segments" in printed
    out = tmp_path / "view"
    assert not out.exists()
    assert main(["refilter", str(dest), "--min-sharpness", "25", "--output", str(out)]) == 0
    assert len(Manifest.read(str(out)).clips) == 2 and (out / "stats.json").exists()
    assert main(["refilter", str(out), "--min-sharpness", "35", "--output", str(out)]) == 0  # a view of a view
    assert Manifest.read(str(out)).view_of == str(dest) and len(Manifest.read(str(out)).clips) == 1
    other = tmp_path / "other"
    write_synthetic_shards(str(other), clips=1, frames_per_clip=10, image_size=32, chunk_frames=10)
    for argv, message in [
        ([str(dest), "--min-sharpness", "1"], "looser than"),
        ([str(dest), "--output", str(dest)], "DEST itself"),
        ([str(out), "--output", str(dest)], "DEST itself"),
        ([str(dest), "--output", str(other)], "holds a preprocessed dataset"),
        ([str(tmp_path / "nowhere")], "has no manifest.json"),
    ]:
        assert main(["refilter", *argv]) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, error
