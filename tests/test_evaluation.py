import numpy as np
import pytest

from discohead import DisCoHead
from discohead.config import WIDTHS
from discohead.data.shards import iter_split
from discohead.data.synthetic_shards import write_synthetic_shards
from discohead.evaluation import clips_with_test_frames, evaluate_reconstruction


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

    from discohead.evaluation import DISENTANGLEMENT, METRICS, Scorers, evaluate
    from discohead.metrics import psnr

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no LPIPS or FID weights here
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("offline"))
    )
    dest = str(tmp_path / "shards")
    write_synthetic_shards(dest, clips=2, frames_per_clip=20, image_size=32, chunk_frames=10)
    clips = list(clips_with_test_frames(dest))
    model = DisCoHead.from_variant("tps-dm", image_size=32, **WIDTHS["tiny"])
    result = evaluate(model, clips, Scorers.load(), batch_size=8)
    assert set(result.unavailable) == {"lpips", "fid"} and all(
        "unavailable: provide" in why for why in result.unavailable.values()
    )
    for system in ("model", "copy", "warp"):
        assert set(result.systems[system]) == set(METRICS) - {"lpips", "fid"}
    assert set(result.disentanglement) == set(DISENTANGLEMENT)
    assert result.frames == 20 and result.clips == 2 and result.grid.shape == (4 * 32, 6 * 32, 3)
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
