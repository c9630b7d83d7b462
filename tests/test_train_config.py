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


def _saved_checkpoints(manifest: Manifest) -> tuple[TrainConfig, dict[int, dict]]:
    config = TrainConfig(**{**TINY, "max_steps": 2, "checkpoint_every": 1}).resolve(manifest)
    recorder = Recorder()
    fit(config, in_memory_chunks(synthetic_chunks(1, 20, 32, 10), config.chunks_per_fetch), recorder)
    return config, recorder.checkpoints


# The run to resume (experiment "exp", affine-nm), then names a prefix match took: a newer run of
# the experiment "exp-affine-nm-v2", the training job's evaluation output, another variant's run.
RESUME_LAYOUT = (
    ("exp-affine-nm-20260101-000000", 1),
    ("exp-affine-nm-20260102-000000", 2),
    ("exp-affine-nm-v2-affine-nm-20260301-000000", 1),
    ("exp-affine-nm-20260102-000000-eval", None),
    ("exp-affine-nm-dm-20260401-000000", 1),
)


def test_resume_point_matches_the_run_name_exactly_and_takes_the_newest(tmp_path, manifest):
    import torch

    config, checkpoints = _saved_checkpoints(manifest)
    for run, step in RESUME_LAYOUT:
        (tmp_path / run).mkdir()
        if step:
            (tmp_path / run / f"step-{step:08d}").mkdir()
            torch.save(checkpoints[step], tmp_path / run / f"step-{step:08d}" / "discohead.pt")
    name, saved = resume_point(str(tmp_path), {}, "exp", "affine-nm")
    assert name == "exp-affine-nm-20260102-000000" and TrainConfig.from_dict(saved) == config
    assert resume_point(str(tmp_path), {}, "exp-affine-nm-v2", "affine-nm")[0].startswith("exp-affine-nm-v2-")
    with pytest.raises(FileNotFoundError, match="drop --resume"):
        resume_point(str(tmp_path), {}, "exp", "tps-nm")
    (tmp_path / "exp-affine-nm-20260501-000000").mkdir()  # killed before its first checkpoint
    with pytest.raises(FileNotFoundError, match="exp-affine-nm-20260501-000000 .* stopped before its first checkpoint"):
        resume_point(str(tmp_path), {}, "exp", "affine-nm")


def test_resume_point_matches_exactly_on_s3(s3_server, manifest):
    """The same layout on the S3-compatible server: the listing comes from object keys, not folders."""
    import io

    import torch

    config, checkpoints = _saved_checkpoints(manifest)
    fs = s3_server.filesystem()
    fs.mkdir("resume-runs")
    for run, step in RESUME_LAYOUT:
        key = f"resume-runs/runs/{run}/" + (f"step-{step:08d}/discohead.pt" if step else "results.md")
        buffer = io.BytesIO()
        torch.save(checkpoints[step] if step else {}, buffer)
        fs.pipe(key, buffer.getvalue())
    name, saved = resume_point("s3://resume-runs/runs", s3_server.storage_options, "exp", "affine-nm")
    assert name == "exp-affine-nm-20260102-000000" and TrainConfig.from_dict(saved) == config


TRAIN_OUT_OF_RANGE = [
    (["--batch-size", "0"], "--batch-size must be at least 1, not 0"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--epochs", "0"], "--epochs must be above 0"),
    (["--epochs", "nan"], "--epochs must be above 0"),
    (["--log-every", "0"], "--log-every must be at least 1"),
    (["--checkpoint-every", "-5"], "--checkpoint-every must be at least 1"),
    (["--image-every", "0"], "--image-every must be at least 1"),  # was a ZeroDivisionError in every worker
    (["--lr", "0"], "--lr must be above 0"),
    (["--lr", "inf"], "--lr must be above 0"),
    (["--num-workers", "0"], "--num-workers must be at least 1"),
    (["--cpus-per-worker", "0"], "--cpus-per-worker must be above 0"),
    (["--pairs-per-chunk", "0"], "--pairs-per-chunk must be at least 1"),
    (["--max-failures", "-1"], "--max-failures must be at least 0"),
    (["--seed", "-1"], "--seed must be at least 0"),  # numpy refused it in the workers, Ray Train retried
    (["--max-bad-samples", "1.5"], "--max-bad-samples must be at least 0 and at most 1"),
    (["--evaluate-clips", "0"], "--evaluate-clips must be at least 1"),  # 0 meant "all"
    (["--image-size", "20"], "--image-size must be at least 32 and at most 1024 and a multiple of 8"),
    (["--perceptual-weight", "-1"], "--perceptual-weight must be at least 0"),
]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> str:
    dest = str(tmp_path_factory.mktemp("ranges") / "shards")
    write_synthetic_shards(dest, clips=2, frames_per_clip=20, image_size=32, chunk_frames=10)
    return dest


@pytest.mark.parametrize("arguments, message", TRAIN_OUT_OF_RANGE)
def test_out_of_range_training_flags_stop_the_job_in_one_line_before_ray(shard_dir, capsys, arguments, message):
    """Each value used to reach the workers (or start Ray first); now the job refuses it, one line, exit 2."""
    import ray

    assert train.main(["--variant", "affine-nm", "--data", shard_dir, *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not ray.is_initialized(), "refused before Ray starts"


PREPROCESS_OUT_OF_RANGE = [
    (["--chunk-frames", "0"], "--chunk-frames must be at least 1"),
    (["--chunk-frames", "1000"], "--chunk-frames must be at least 1 and at most 250"),
    (["--image-size", "2048"], "--image-size must be at least 32 and at most 1024"),
    (["--fps", "0"], "--fps must be at least 1"),
    (["--max-seconds", "0"], "--max-seconds must be at least"),
    (["--max-seconds", "nan"], "--max-seconds must be at least"),
    (["--max-frame-side", "0"], "--max-frame-side must be at least 32"),
    (["--detect-max-side", "8"], "--detect-max-side must be at least 32"),
    (["--detect-every", "0"], "--detect-every must be at least 1"),
    (["--max-missing-face", "2"], "--max-missing-face must be at least 0 and at most 1"),
    (["--sample-rate", "0"], "--sample-rate must be at least 8000"),
    (["--n-mels", "0"], "--n-mels must be at least 1"),
    (["--n-mels", "1000"], "--n-mels must be at least 1 and at most 257"),
    (["--n-fft", "0"], "--n-fft must be at least 16"),
    (["--hop-length", "0"], "--hop-length must be at least 1"),
    (["--f-max", "9000"], "--f-max must be above 55 and at most 8000"),
    (["--window-ms", "0"], "--window-ms must be at least 10"),
    (["--split-ratio", "1.5"], "--split-ratio must be between 0 and 1"),
    (["--shard-size-mb", "0"], "--shard-size-mb must be above 0"),
    (["--workers", "0"], "--workers must be at least 1"),
]


@pytest.mark.parametrize("arguments, message", PREPROCESS_OUT_OF_RANGE)
def test_out_of_range_preprocessing_flags_are_argparse_errors(capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        preprocess.parse_args(["--input", "v", "--output", "o", *arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("usage:") is False and message in error, error


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--max-clips", "0"], "--max-clips must be at least 1"),
    ],
)
def test_out_of_range_evaluation_flags_are_argparse_errors(capsys, arguments, message):
    from pipelines import evaluate

    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args(["--model", "m", "--data", "d", *arguments])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_training_job_module_stays_wiring_only():
    lines = len(open(train.__file__).read().splitlines())
    assert lines < 200, f"pipelines/train.py has {lines} lines: move logic into discohead/"
