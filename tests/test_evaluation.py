import numpy as np

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
