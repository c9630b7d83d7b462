import numpy as np
import pytest
import torch

from discohead import DisCoHead
from discohead.config import WIDTHS
from discohead.contracts import MEL
from discohead.losses import DisCoHeadLoss
from discohead.training import (
    comparison_grid,
    draw_pairs,
    evaluate_batch,
    format_eta,
    model_inputs,
    pair_batches,
    train_step,
)

from conftest import LEARNING_SEED, rewrite_tar


def chunk(frames: int = 6, size: int = 32, offset: int = 0) -> dict[str, np.ndarray]:
    # Frame i is filled with the value offset + i, so pairs reveal which frames were drawn.
    values = (offset + np.arange(frames, dtype=np.uint8))[:, None, None, None]
    return {
        "frames": np.broadcast_to(values, (frames, size, size, 3)).copy(),
        "mel": np.broadcast_to(
            np.arange(frames, dtype=np.float16)[:, None, None], (frames, MEL.n_mels, MEL.window_frames)
        ).copy(),
        "eye_boxes": np.tile(np.array([[0.25, 0.25, 0.75, 0.5]], dtype=np.float32), (frames, 1)),
    }


def test_pairs_come_from_distinct_frames_of_the_same_chunk():
    pairs = draw_pairs([chunk(offset=0), chunk(offset=100)], pairs_per_chunk=50, rng=np.random.default_rng(0))
    source, driver = pairs["source"][:, 0, 0, 0].astype(int), pairs["driver"][:, 0, 0, 0].astype(int)
    assert len(source) == 100
    assert (source != driver).all()
    assert (source // 100 == driver // 100).all(), "source and driver must come from the same clip"
    # The audio window and the eye box are the driver's.
    np.testing.assert_array_equal(pairs["mel"][:, 0, 0], driver % 100)


def test_pairs_are_reproducible_from_the_seed():
    first = draw_pairs([chunk()], 8, np.random.default_rng(3))
    second = draw_pairs([chunk()], 8, np.random.default_rng(3))
    np.testing.assert_array_equal(first["source"], second["source"])


def test_model_inputs_mask_the_eye_region_and_resize():
    pairs = draw_pairs([chunk(size=32)], 4, np.random.default_rng(0))
    inputs = model_inputs(pairs, image_size=16)
    assert inputs.source.shape == (4, 3, 16, 16) and inputs.audio.shape == (4, MEL.n_mels, MEL.window_frames)
    torch.testing.assert_close(inputs.target, inputs.head_driver)
    assert inputs.eye_driver[:, :, 0, 0].eq(0).all(), "outside the eye box is black"
    torch.testing.assert_close(inputs.eye_driver[:, :, 5, 8], inputs.head_driver[:, :, 5, 8])
    with pytest.raises(ValueError, match="smaller than the requested image size 64"):
        model_inputs(pairs, image_size=64)


@pytest.mark.learning
def test_train_steps_reduce_the_loss_on_a_fixed_batch(record_property):
    torch.manual_seed(LEARNING_SEED)
    rng = np.random.default_rng(LEARNING_SEED)
    # Smooth frames (blocky noise) that a few steps can start to fit.
    frames = np.repeat(np.repeat(rng.integers(0, 255, size=(4, 4, 4, 3), dtype=np.uint8), 8, axis=1), 8, axis=2)
    pairs = {
        "source": frames,
        "driver": frames[::-1].copy(),
        "mel": rng.normal(size=(4, 80, 40)).astype(np.float16),
        "eye_box": np.tile([0.2, 0.2, 0.8, 0.5], (4, 1)).astype(np.float32),
    }
    inputs = model_inputs(pairs, image_size=32)
    model = DisCoHead.from_variant("affine-nm", image_size=32, **WIDTHS["tiny"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = DisCoHeadLoss(perceptual_weight=0)
    losses = [train_step(model, loss_fn, optimizer, inputs)["total"] for _ in range(20)]
    record_property("margin", losses[-1] / losses[0] / 0.7)  # passes below 1
    assert losses[-1] < 0.7 * losses[0], losses
    metrics, prediction = evaluate_batch(model, inputs)
    assert prediction.shape == inputs.target.shape and 0 < metrics["ssim"] <= 1 and metrics["psnr"] > 0
    grid = comparison_grid(inputs, prediction, rows=2)
    assert grid.shape == (64, 160, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:32, :32], frames[0])


def test_eta_format():
    assert format_eta(1.5, 2401) == "1:00:02"


def test_pair_batches_have_the_requested_size_and_drop_the_remainder():
    def stream():
        for offset in (0, 10, 20):
            columns = chunk(offset=offset)
            yield {key: value[None] for key, value in columns.items()}

    batches = list(pair_batches(stream(), batch_size=4, pairs_per_chunk=3, rng=np.random.default_rng(0)))
    assert [len(batch["source"]) for batch in batches] == [4, 4]
    drivers = np.concatenate([batch["driver"][:, 0, 0, 0] for batch in batches])
    assert set(drivers // 10) <= {0, 1, 2}


def test_fit_trains_and_resumes_from_its_checkpoint_without_ray(capsys):
    import dataclasses

    from discohead.data.synthetic_shards import synthetic_chunks
    from discohead.train_config import TrainConfig
    from discohead.training import Reporter, fit, in_memory_chunks

    class Recorder(Reporter):
        def __init__(self):
            self.losses, self.checkpoints, self.keys = {}, {}, []

        def log(self, step, metrics):
            self.losses[step] = metrics["loss_total"]

        def checkpoint(self, step, checkpoint, metrics):
            self.checkpoints[step] = checkpoint

        def chunks_seen(self, keys):
            self.keys += keys

    chunks = synthetic_chunks(clips=2, frames_per_clip=20, image_size=32, chunk_frames=10)
    config = TrainConfig(
        variant="affine-nm", data="synthetic", image_size=32, widths="tiny", perceptual_weight=0, batch_size=4,
        pairs_per_chunk=2, lr=1e-3, max_steps=4, log_every=1, checkpoint_every=2,
    )  # fmt: skip
    first = Recorder()
    fit(config, in_memory_chunks(chunks, config.chunks_per_fetch), first)
    assert sorted(first.losses) == [1, 2, 3, 4] and sorted(first.checkpoints) == [2, 4]
    assert sorted(first.keys) == sorted(chunk["key"] for chunk in chunks), "one pass reads every chunk once"
    state = first.checkpoints[2]
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (2, 0, 2) and state["optimizer"]["state"]
    progress = [line for line in capsys.readouterr().out.splitlines() if " step " in line]
    assert len(progress) == 4 and progress[0].startswith("[train affine-nm] step 1/4  loss ")
    assert not any("psnr" in line or "nan" in line for line in progress), "no test pairs: no PSNR, and no nan"

    resumed = Recorder()
    fit(
        dataclasses.replace(config, max_steps=6),
        in_memory_chunks(chunks, config.chunks_per_fetch),
        resumed,
        checkpoint=first.checkpoints[4],
    )
    assert sorted(resumed.losses) == [5, 6], "the step count continues"
    assert resumed.checkpoints[6]["epoch"] == 2, "two batches a pass: steps 5 and 6 are the third pass"


def test_training_sources_come_from_anywhere_in_the_clip(tmp_path):
    from discohead.data.synthetic_shards import write_synthetic_shards
    from discohead.manifest import Manifest
    from discohead.training import training_chunks

    dest = str(tmp_path / "shards")
    write_synthetic_shards(dest, clips=2, frames_per_clip=40, image_size=32, chunk_frames=10)  # 3 train chunks a clip
    (url,) = Manifest.read(dest).shard_urls(dest, "train")
    chunks = training_chunks({"path": url}, sources_per_chunk=60)
    assert len(chunks) == 6 and all(chunk["sources"].shape == (60, 32, 32, 3) for chunk in chunks)
    for chunk in chunks:
        clip = chunk["key"].rsplit("-", 1)[0]
        own = [other["frames"] for other in chunks if other["key"].rsplit("-", 1)[0] == clip]
        where = [
            next(i for i, frames in enumerate(own) if (frames == source).all(axis=(1, 2, 3)).any())
            for source in chunk["sources"]
        ]
        assert len(set(where)) > 1, "sources are drawn across the clip's chunks, not only the driver's"
    pairs = draw_pairs(chunks[:1], pairs_per_chunk=4, rng=np.random.default_rng(0))
    assert all((chunks[0]["sources"] == source).all(axis=(1, 2, 3)).any() for source in pairs["source"])
    assert training_chunks({"path": url})[0].keys() == {"key", "frames", "mel", "eye_boxes"}


# --- unreadable samples (issue 11, item 9) ------------------------------------------------


def corrupt_dataset(dest: str):
    """Two training shards of 6 samples: 4 damaged in the first, the second deleted. Returns the manifest."""
    import io
    from pathlib import Path

    from discohead.contracts import ClipConfig
    from discohead.data.shards import load_commits
    from discohead.data.synthetic_shards import write_synthetic_shards
    from discohead.manifest import Manifest
    from discohead.storage import filesystem_for

    for seed in (0, 1):
        write_synthetic_shards(dest, clips=2, frames_per_clip=40, image_size=32, chunk_frames=10, seed=seed)
    config = ClipConfig(image_size=32, chunk_frames=10, split_mode="time")
    manifest = Manifest.build(config, "none", load_commits(*filesystem_for(dest)), run={"id": "t"}, synthetic=True)
    manifest.write(dest)
    first, second = manifest.shards["train"]
    wrong_size = io.BytesIO()
    np.save(wrong_size, np.zeros((10, 16, 16, 3), np.uint8))
    damage = {
        "synthetic-0-000-00000.meta.json": b"{not json",
        "synthetic-0-000-00001.mel.npy": b"\x93NUMPY garbage",
        "synthetic-0-000-00002.eye_boxes.npy": None,  # missing
        "synthetic-0-001-00000.frames.npy": wrong_size.getvalue(),  # 16 px in 32 px shards
    }
    rewrite_tar(f"{dest}/{first}", lambda name, data: damage.get(name, data) if name in damage else data)
    Path(f"{dest}/{second}").unlink()
    return manifest


def test_unreadable_samples_are_skipped_counted_per_shard_and_fail_the_run_past_the_share(tmp_path):
    """A damaged meta.json or .npy, a missing member or shard used to fail the read task, and so
    every retry of the run; now each is skipped and counted, and only too many fail it."""
    import dataclasses

    from discohead.train_config import TrainConfig
    from discohead.training import (
        Reporter,
        TooManyBadSamples,
        chunk_shapes,
        fit,
        fixed_pairs,
        in_memory_chunks,
        shard_rows,
        training_chunks,
    )

    dest = str(tmp_path / "shards")
    manifest = corrupt_dataset(dest)
    rows, shapes = shard_rows(manifest, dest), chunk_shapes(manifest)
    assert [row["samples"] for row in rows] == [6, 6] and manifest.chunks("train") == 12
    damaged = training_chunks(rows[0], sources_per_chunk=2, shapes=shapes)
    assert [chunk["key"] for chunk in damaged] == ["synthetic-0-001-00001", "synthetic-0-001-00002"]
    assert [chunk["bad_samples"] for chunk in damaged] == [4, 0] and all(chunk["usable"] for chunk in damaged)
    assert damaged[0]["bad_reason"].startswith("sample synthetic-0-000-00000: JSONDecodeError")
    (missing,) = training_chunks(rows[1], sources_per_chunk=2, shapes=shapes)
    assert not missing["usable"] and missing["bad_samples"] == 6 and "FileNotFoundError" in missing["bad_reason"]
    assert missing["frames"].shape == shapes["frames"] and missing["sources"].shape == (2, 32, 32, 3), (
        "the placeholder has a chunk's columns and shapes, so it batches with the others"
    )

    class Recorder(Reporter):
        def __init__(self):
            self.bad, self.metrics, self.keys = {}, {}, []

        def bad_samples(self, shard, count, reason):
            self.bad[shard] = (count, reason)

        def log(self, step, metrics):
            self.metrics[step] = metrics

        def chunks_seen(self, keys):
            self.keys += keys

    config = TrainConfig(
        variant="affine-nm", data=dest, image_size=32, widths="tiny", perceptual_weight=0, batch_size=2,
        pairs_per_chunk=2, max_steps=4, log_every=1, checkpoint_every=4, max_bad_samples=0.9,
    )  # fmt: skip
    stream = in_memory_chunks(damaged + [missing], chunks_per_fetch=1)
    recorder = Recorder()
    fit(config, stream, recorder, samples=manifest.chunks("train"))  # 10 of 12 bad: within 0.9
    assert {shard: count for shard, (count, _) in recorder.bad.items()} == dict(zip(manifest.shards["train"], (4, 6)))
    assert recorder.metrics[4]["bad_samples"] == 10 and sorted(recorder.keys) == [chunk["key"] for chunk in damaged], (
        "the placeholder is counted, never trained on"
    )
    with pytest.raises(TooManyBadSamples, match=r"^10 of the 12 training samples are unreadable, more than --max-bad"):
        fit(dataclasses.replace(config, max_bad_samples=0.5), stream, Recorder(), samples=12)
    # The driver's fixed batch of pairs passes over them too (here drawn from the damaged shards).
    damaged_only = dataclasses.replace(manifest, shards={"train": [], "test": manifest.shards["train"]})
    assert len(fixed_pairs(dest, damaged_only, seed=0)["source"]) == 8
