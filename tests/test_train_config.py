"""The training configuration: flags generated from its fields, checks, resolution against the shards,
and a new field reaching the flags, the worker's loop, the MLflow params and the checkpoint."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from discohead import flags
from discohead.contracts import ClipConfig
from discohead.data.synthetic_shards import synthetic_chunks, write_synthetic_shards
from discohead.manifest import Manifest
from discohead.train_config import LAUNCH_ONLY, TrainConfig, resume_point
from discohead.training import Reporter, fit, in_memory_chunks
from pipelines import preprocess, train

TINY = {
    "variant": "affine-nm",
    "data": "synthetic",
    "image_size": 32,
    "widths": "tiny",
    "perceptual_weight": 0.0,
    "batch_size": 2,
    "pairs_per_chunk": 2,
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Manifest:
    return write_synthetic_shards(
        str(tmp_path_factory.mktemp("shards")), clips=2, frames_per_clip=20, image_size=32, chunk_frames=10
    )


def test_every_field_is_a_flag_and_only_given_flags_are_returned():
    parser = argparse.ArgumentParser()
    flags.add_flags(parser, TrainConfig)
    dests = {action.dest for action in parser._actions} - {"help"}
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    assert dests == fields - {"preprocessing"}  # set from the shards by resolve(), never by a flag
    args = parser.parse_args(
        ["--variant", "all", "--data", "d", "--lr", "0.5", "--model-option", "feature_channels=64", "--use-gpu"]
    )
    given = flags.given(args, TrainConfig)
    assert given == {
        "variant": "all",
        "data": "d",
        "lr": 0.5,
        "model_options": ["feature_channels=64"],
        "use_gpu": True,
    }
    config = TrainConfig(**given)
    assert config.model_options == {"feature_channels": 64} and config.variants == [
        "affine-dm",
        "affine-nm",
        "tps-dm",
        "tps-nm",
    ]
    assert not set(LAUNCH_ONLY) & dests, "launch flags are not part of the config"


def test_preprocessing_flags_come_from_clip_config():
    args = preprocess.parse_args(
        ["--input", "v", "--output", "o", "--n-mels", "64", "--split-ratio", "0.5", "--allow-silent"]
    )
    assert args.config == dataclasses.replace(
        ClipConfig(), train_ratio=0.5, allow_silent=True, mel=dataclasses.replace(ClipConfig().mel, n_mels=64)
    )
    assert preprocess.parse_args(["--input", "v", "--output", "o"]).config == ClipConfig(), (
        "defaults are ClipConfig's own"
    )
    with pytest.raises(SystemExit):
        preprocess.parse_args(
            ["--input", "v", "--output", "o", "--image-size", "16"]
        )  # below the model's 32 px, as training says


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 3, "num_workers": 2}, "does not split evenly"),
        ({"model_options": ["colour=blue"]}, "'colour' is not a model option"),
        ({"model_options": ["n_mels=40"]}, "'n_mels' is not a model option"),
        ({"variant": "affine"}, "choose one of"),
        ({"data": ""}, "--data is required"),
    ],
)
def test_bad_settings_are_refused_with_what_to_do(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**TINY, **changes})


def test_resolve_takes_size_steps_and_mel_settings_from_the_shards(manifest):
    resolved = TrainConfig(**{**TINY, "image_size": None, "epochs": 2.0}).resolve(manifest)
    assert resolved.image_size == 32
    assert resolved.max_steps == int(2.0 * manifest.chunks("train") * 2 // 2)
    model = resolved.model_config()
    assert (model.n_mels, model.audio_frames) == (manifest.mel.n_mels, manifest.mel.window_frames)
    assert resolved.preprocessing == manifest.config_json  # generation crops and cuts audio as the shards did
    assert "preprocessing" not in resolved.params(model)  # the run's data_config_hash names it
    with pytest.raises(ValueError, match="larger than the shards' 32 px"):
        TrainConfig(**{**TINY, "image_size": 64}).resolve(manifest)


def test_mel_settings_follow_every_writer_of_shards(tmp_path):
    """The synthetic writer and the preprocessing job's manifest both carry a mel block the training job matches."""
    synthetic = write_synthetic_shards(
        str(tmp_path / "synthetic"), clips=1, frames_per_clip=20, image_size=32, chunk_frames=10
    )
    assert Manifest.read(str(tmp_path / "synthetic")).mel == synthetic.mel
    narrow_mel = dataclasses.replace(ClipConfig().mel, n_mels=64)
    job = Manifest.build(
        ClipConfig(image_size=32, mel=narrow_mel),
        "dlib",
        [
            {
                "shards": ["train/a.tar"],
                "clips": [{"clip_id": "a", "source": "a.mp4", "status": "ok", "chunks": {"train": 1}}],
            }
        ],
    )
    job.write(str(tmp_path / "job"))
    for written in (synthetic, Manifest.read(str(tmp_path / "job"))):
        model = TrainConfig(**TINY).resolve(written).model_config()
        assert model.n_mels == written.mel.n_mels and model.audio_frames == written.mel.window_frames


class Recorder(Reporter):
    def __init__(self) -> None:
        self.params: dict = {}
        self.checkpoints: dict[int, dict] = {}
        self.logged: list[int] = []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.logged.append(step)

    def checkpoint(self, step: int, checkpoint: dict | None, metrics: dict[str, float]) -> None:
        self.checkpoints[step] = checkpoint


def test_a_new_field_reaches_the_flags_the_loop_the_params_and_the_checkpoint(manifest):
    """Adding a hyper-parameter is one edit: a field. Here a subclass adds one and nothing else changes."""

    @dataclasses.dataclass(frozen=True)
    class WithWarmup(TrainConfig):
        warmup_steps: int = dataclasses.field(default=0, metadata={"help": "steps of linear warm-up"})

    parser = argparse.ArgumentParser()
    flags.add_flags(parser, WithWarmup)
    given = flags.given(parser.parse_args(["--variant", "affine-nm", "--data", "x", "--warmup-steps", "7"]), WithWarmup)
    config = WithWarmup(**{**TINY, **given, "max_steps": 2, "checkpoint_every": 2}).resolve(manifest)
    assert config.warmup_steps == 7
    assert config.params(config.model_config())["warmup_steps"] == 7

    seen = []
    recorder = Recorder()
    original = WithWarmup.model_config

    def model_config(self, variant=None):  # what the worker's loop sees of the config
        seen.append(self.warmup_steps)
        return original(self, variant)

    WithWarmup.model_config = model_config
    chunks = synthetic_chunks(clips=1, frames_per_clip=20, image_size=32, chunk_frames=10)
    fit(config, in_memory_chunks(chunks, config.chunks_per_fetch), recorder)
    assert seen == [7]
    assert recorder.checkpoints[2]["train_config"]["warmup_steps"] == 7
    assert WithWarmup.from_dict(recorder.checkpoints[2]["train_config"]) == config, "--resume rebuilds the same config"


def test_resume_point_finds_the_latest_run_and_its_saved_config(tmp_path, manifest):
    import torch

    config = TrainConfig(**{**TINY, "max_steps": 2, "checkpoint_every": 1}).resolve(manifest)
    recorder = Recorder()
    fit(config, in_memory_chunks(synthetic_chunks(1, 20, 32, 10), config.chunks_per_fetch), recorder)
    for run, step in (("exp-affine-nm-20260101-000000", 1), ("exp-affine-nm-20260102-000000", 2)):
        (tmp_path / run / f"step-{step:08d}").mkdir(parents=True)
        torch.save(recorder.checkpoints[step], tmp_path / run / f"step-{step:08d}" / "discohead.pt")
    name, saved = resume_point(str(tmp_path), {}, "exp-affine-nm-")
    assert name == "exp-affine-nm-20260102-000000" and TrainConfig.from_dict(saved) == config
    with pytest.raises(FileNotFoundError, match="drop --resume"):
        resume_point(str(tmp_path), {}, "exp-tps-nm-")


def test_the_training_job_module_stays_wiring_only():
    lines = len(open(train.__file__).read().splitlines())
    assert lines < 200, f"pipelines/train.py has {lines} lines: move logic into discohead/"
