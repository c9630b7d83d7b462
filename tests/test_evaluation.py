import numpy as np
import pytest

from discohead import DisCoHead
from discohead.config import WIDTHS
from discohead.data.shards import iter_split
from discohead.data.synthetic_shards import write_synthetic_shards
from discohead.evaluation import clips_with_test_frames, evaluate_reconstruction

from conftest import rewrite_tar


def test_reconstruction_evaluation_scores_model_and_baselines(tmp_path):
    dest = str(tmp_path / "shards")
    write_synthetic_shards(dest, clips=2, frames_per_clip=30, image_size=32, chunk_frames=10)
    clips = list(clips_with_test_frames(dest))
    assert [clip.clip_id for clip in clips] == ["synthetic-0-000", "synthetic-0-001"]
    assert clips[0].driver.shape == (10, 32, 32, 3) and clips[0].source.shape == (32, 32, 3)
    # The source is the clip's first frame, which lives in its first (train) chunk.
    first_chunk = next(iter_split(dest, "train"))
    np.testing.assert_array_equal(clips[0].source, first_chunk["frames"][0])
    model = DisCoHead.from_variant("affine-nm", image_size=32, **WIDTHS["tiny"])
    scores = evaluate_reconstruction(model, dest, batch_size=4)
    assert scores["frames"] == 20
    assert set(scores) == {"frames"} | {
        f"{name}_{metric}" for name in ("model", "copy", "warp") for metric in ("psnr", "ssim")
    }
    assert 5 < scores["copy_psnr"] < 60 and 0 < scores["copy_ssim"] <= 1


def test_full_evaluation_reports_every_metric_or_why_not(tmp_path, monkeypatch):
    import torch

    from discohead.evaluation import CONTROLS, DISENTANGLEMENT, LIP_AUDIO, LIP_SYNC, METRICS, Scorers, evaluate
    from discohead.metrics import psnr

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no LPIPS, FID or SyncNet weights here
    monkeypatch.delenv("DISCOHEAD_SYNCNET_WEIGHTS", raising=False)
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("offline"))
    )
    dest = str(tmp_path / "shards")
    write_synthetic_shards(dest, clips=2, frames_per_clip=40, image_size=32, chunk_frames=20)
    clips = list(clips_with_test_frames(dest))
    model = DisCoHead.from_variant("tps-dm", image_size=32, **WIDTHS["tiny"])
    result = evaluate(model, clips, Scorers.load(), batch_size=8)
    networks = {"lpips", "fid", *LIP_SYNC}
    assert set(result.unavailable) == networks | {"audio_focus", "eye_focus", *LIP_AUDIO}
    assert result.unavailable["sync_confidence"] == "unavailable: no clip's audio could be used (audio not read)"
    assert all("unavailable: provide" in result.unavailable[name] for name in networks)
    # At initialisation the style weights are zero: the output ignores audio and eyes exactly.
    assert result.disentanglement["audio_gain"] == 0 and result.disentanglement["eye_gain"] == 0
    assert result.unavailable["eye_focus"] == "undefined: swapping the input changed no pixel"
    assert result.unavailable["lse_c"].startswith("unavailable: provide syncnet_v2.model (sha256 961e8696")
    for system in ("model", "copy", "warp"):
        assert set(result.systems[system]) == set(METRICS) - {"lpips", "fid", *LIP_SYNC}
    undefined = {"audio_focus", "eye_focus", *LIP_AUDIO}
    assert set(result.disentanglement) == set(DISENTANGLEMENT) | set(CONTROLS) - undefined
    assert result.frames == 40 and result.clips == 2 and result.grid.shape == (4 * 32, 6 * 32, 3)
    # The copy baseline by hand: each test frame against its clip's first frame.
    expected = [
        psnr(
            torch.from_numpy(clip.source[None]).permute(0, 3, 1, 2) / 255,
            torch.from_numpy(frame[None]).permute(0, 3, 1, 2) / 255,
        )
        for clip in clips
        for frame in clip.driver
    ]
    assert result.systems["copy"]["psnr"] == pytest.approx(float(np.mean(expected)), rel=1e-4)
    assert result.systems["copy"]["aed"] >= 0 and result.systems["model"]["akd"] >= 0
    flat = result.flat("test")
    assert {"eval/test/psnr", "eval/test/copy/psnr", "eval/test/warp/akd", "eval/test/frames_per_second"} <= set(flat)
    assert all(np.isfinite(value) for value in flat.values()), (
        "undefined values (e.g. a share of no change) are left out"
    )
    assert not any("lpips" in key or "fid" in key for key in flat), "an unavailable metric is never logged as a number"


def test_lip_sync_is_scored_for_model_and_baselines_on_clips_with_audio(tmp_path):
    """The LSE plumbing with a stand-in SyncNet (random weights): which clips, systems and numbers, not their values."""
    import torch

    from discohead.evaluation import FACE_METRICS, LIP_SYNC, Scorers, evaluate
    from discohead.metric_networks import SyncNet

    dest = str(tmp_path / "shards")
    write_synthetic_shards(dest, clips=2, frames_per_clip=16, image_size=32, chunk_frames=8)
    clips = list(clips_with_test_frames(dest))
    assert clips[0].frame_index.tolist() == list(range(8, 16)) and clips[0].origin == "synthetic://synthetic-0-000"
    clips[0].waveform = np.random.default_rng(0).normal(scale=0.1, size=8 * 640).astype(np.float32)
    torch.manual_seed(0)
    model = DisCoHead.from_variant("affine-nm", image_size=32, **WIDTHS["tiny"])
    skipped = {name: "not measured" for name in ("lpips", "fid", *FACE_METRICS)}
    scorers = Scorers(syncnet=SyncNet().eval(), unavailable=skipped)
    result = evaluate(model, clips, scorers, batch_size=3)  # windows straddle batches
    for system in ("model", "copy", "warp"):
        scores = result.systems[system]
        assert scores["lse_d"] > 0 and scores["lse_c"] >= 0 and -15 <= scores["lse_offset"] <= 15
    assert not set(LIP_SYNC) & set(result.unavailable)

    clips[0].waveform, clips[0].audio_note = None, "synthetic://synthetic-0-000: cannot read its audio"
    result = evaluate(model, clips, scorers, batch_size=3)
    assert result.unavailable["lse_d"] == (
        "unavailable: no clip's audio could be used (synthetic://synthetic-0-000: cannot read its audio)"
    )
    assert "lse_d" not in result.systems["model"]


def test_lip_sync_stream_matches_one_pass_over_the_clip():
    """Windows computed batch by batch (4 frames carried over) are the windows of the whole clip at once."""
    import torch

    from discohead.evaluation import _LipStream
    from discohead.metric_networks import SyncNet, syncnet_frames

    torch.manual_seed(0)
    network = SyncNet().eval()
    frames = torch.rand(9, 3, 32, 32)
    stream = _LipStream()
    for start in range(0, 9, 2):
        stream.push(network, frames[start : start + 2])
    whole = network.lip_windows(syncnet_frames(frames))
    assert stream.frames == 9 and torch.allclose(torch.cat(stream.features), whole, atol=1e-4)


def test_attach_audio_reads_the_clip_file_and_refuses_other_audio(tmp_path):
    import wave

    import torch

    from discohead.audio import clip_windows
    from discohead.evaluation import ClipFrames, attach_audio

    rng = np.random.default_rng(0)

    def write_wav(path, samples):
        pcm = np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2")
        with wave.open(str(path), "wb") as handle:
            handle.setnchannels(1), handle.setsampwidth(2), handle.setframerate(16000)
            handle.writeframes(pcm.tobytes())
        return pcm.astype(np.float32) / 32768

    speech = write_wav(tmp_path / "clip.wav", rng.normal(scale=0.1, size=30 * 640))  # 30 frames at 25 fps
    write_wav(tmp_path / "other.wav", rng.normal(scale=0.1, size=30 * 640))
    mel = clip_windows(torch.from_numpy(speech), 30).numpy().astype(np.float16)
    test = slice(20, 30)  # the clip's last 10 frames are its test frames

    def clip(origin):
        frames = np.zeros((10, 8, 8, 3), np.uint8)
        return ClipFrames("c", frames[0], frames, mel[test], np.zeros((10, 4)), origin, np.arange(20, 30))

    clips = [clip(str(tmp_path / "clip.wav")), clip(str(tmp_path / "other.wav")), clip(str(tmp_path / "gone.wav"))]
    attach_audio(clips)
    np.testing.assert_array_equal(clips[0].waveform, speech[20 * 640 : 30 * 640])
    assert clips[0].audio_note == ""
    assert clips[1].waveform is None and "not the audio in the shards" in clips[1].audio_note
    assert clips[2].waveform is None and "gone.wav: cannot read its audio" in clips[2].audio_note


def test_a_damaged_test_sample_leaves_its_clip_out_and_the_rest_is_evaluated(tmp_path):
    """Issue 11's known limit: evaluation used to fail on the first unreadable sample; now it passes over it, as
    training does, and leaves out a clip whose test chunks do not all read."""
    import io

    dest = str(tmp_path / "shards")
    manifest = write_synthetic_shards(dest, clips=3, frames_per_clip=30, image_size=32, chunk_frames=10)
    wrong_size = io.BytesIO()
    np.save(wrong_size, np.zeros((10, 16, 16, 3), np.uint8))
    damage = {
        "synthetic-0-001-00002.meta.json": b"{not json",
        "synthetic-0-002-00002.frames.npy": wrong_size.getvalue(),
    }
    rewrite_tar(f"{dest}/{manifest.shards['test'][0]}", lambda name, data: damage.get(name, data))
    damaged: list[str] = []
    clips = list(clips_with_test_frames(dest, damaged=damaged))
    assert [clip.clip_id for clip in clips] == ["synthetic-0-000"]
    assert any("sample synthetic-0-001-00002" in line for line in damaged)
    assert any("sample synthetic-0-002-00002" in line and "shape" in line for line in damaged)
    assert any("clip synthetic-0-001 left out: 0 of its 1 test chunks read" in line for line in damaged)
    with pytest.raises(ValueError):
        list(iter_split(dest, "test"))  # without a list to report to, the reader still raises


def test_control_measures_credit_an_input_used_in_its_box_and_not_one_ignored():
    """A stand-in model that paints the mouth box from its audio window and ignores the eye driver.

    The ground truth's mouth shows the same function of the frame's own audio, so the frame's own audio
    gives an exact mouth (audio_gain near 1) and all the change an audio swap makes is inside the box
    (audio_focus = 1 / the box's area); the eye driver changes nothing (eye_gain 0, focus undefined).
    """
    import torch

    from discohead.contracts import mouth_box_from_landmarks
    from discohead.evaluation import ClipFrames, Scorers, evaluate

    size, count = 32, 24
    rng = np.random.default_rng(0)
    landmarks = np.full((count, 68, 2), size / 2, np.float32)
    landmarks[:, 48:68] = rng.uniform([10, 20], [22, 27], size=(20, 2)).astype(np.float32)
    box = mouth_box_from_landmarks(torch.from_numpy(landmarks[:1]), size)[0]
    mel = rng.normal(size=(count, 80, 40)).astype(np.float16)

    def paint(frames: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        level = torch.sigmoid(4 * audio.float().mean(dim=(1, 2)))[:, None, None, None]
        x0, y0, x1, y1 = (box * size).tolist()
        ys, xs = (torch.arange(size) + 0.5)[:, None], (torch.arange(size) + 0.5)[None, :]
        inside = ((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)).to(frames.dtype)
        return frames * (1 - inside) + level * inside

    class MouthFromAudio(torch.nn.Module):
        config = type("Config", (), {"image_size": size})()

        def forward(self, source, head_driver, eye_driver, audio):
            return {"prediction": paint(source, audio), "transformed_source": source}

    background = torch.full((count, 3, size, size), 0.4)
    truth = (paint(background, torch.from_numpy(mel)).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    clip = ClipFrames(
        "clip", np.full((size, size, 3), 90, np.uint8), truth, mel,
        np.tile(np.array([0.2, 0.2, 0.8, 0.45], np.float32), (count, 1)), landmarks=landmarks,
    )  # fmt: skip
    result = evaluate(MouthFromAudio(), [clip], Scorers.pixels_only(), batch_size=8)
    controls = result.disentanglement
    area = float((box[2] - box[0]) * (box[3] - box[1]))
    assert controls["audio_gain"] > 0.95, controls
    assert controls["audio_focus"] == pytest.approx(1 / area, rel=0.05), "all of the change is in the mouth box"
    assert controls["eye_gain"] == 0 and "eye_focus" not in controls
    assert result.unavailable["eye_focus"] == "undefined: swapping the input changed no pixel"


def test_lip_audio_sync_finds_the_lag_of_the_models_lips_and_none_in_the_real_ones():
    """Landmarks whose lips open with the audio's loudness: the real ones in time, the model's 3 frames late."""
    from discohead.evaluation import ClipFrames, _Sums, lip_audio_sync

    frames, per_frame, lag = 75, 640, 3
    rng = np.random.default_rng(0)
    loudness = rng.uniform(0.05, 1.0, frames)
    waveform = (rng.normal(size=(frames, per_frame)) * loudness[:, None]).ravel().astype(np.float32)

    def lips(opening: np.ndarray) -> np.ndarray:
        points = np.zeros((len(opening), 68, 2), np.float32)
        points[:, :, 0] = np.arange(68)
        for top, bottom in ((61, 67), (62, 66), (63, 65), (50, 58), (51, 57), (52, 56)):
            points[:, bottom, 0] = points[:, top, 0]
            points[:, bottom, 1] = opening
        return points

    late = np.concatenate([np.full(lag, loudness.mean()), loudness[:-lag]])
    clip = ClipFrames("clip", np.zeros((8, 8, 3), np.uint8), np.zeros((frames, 8, 8, 3), np.uint8), None, None)
    clip.waveform = waveform
    sums = _Sums()
    lip_audio_sync(clip, {"model/points": [lips(late)], "truth/points": [lips(loudness)]}, sums)
    assert sums.mean("real_sync_offset") == 0 and sums.mean("sync_offset") == -lag, "mouth late: the audio is early"
    assert sums.mean("real_sync_confidence") > 0.5 and sums.mean("sync_confidence") > 0.5
