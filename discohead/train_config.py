"""The training run's configuration: one typed object from the flags to the checkpoint.

``pipelines/train.py`` generates its flags from :class:`TrainConfig`'s fields
(``discohead.flags``), builds the config once, checks it against the shards
(:meth:`TrainConfig.resolve`), and then the same object goes to every Ray Train worker,
into the MLflow run as its params (:meth:`TrainConfig.params`) and into every checkpoint
(:meth:`TrainConfig.to_dict`), from which ``--resume`` reads it back. A new
hyper-parameter is one new field here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import VARIANTS, WIDTHS, DisCoHeadConfig
from .contracts import CHECKPOINT_FILE, MAX_IMAGE_SIZE
from .flags import check_range
from .manifest import Manifest
from .storage import filesystem_for, s3_options

LAUNCH_ONLY = ("resume", "ray_address")
"""Flags of the training job that say how to launch, not what to train (not in the config)."""

_FIXED_MODEL_FIELDS = ("variant", "motion", "fusion", "image_size", "n_mels", "audio_frames")
"""Model fields set by the variant and by the shards, never by ``--model-option``."""


def _model_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` to a typed DisCoHeadConfig field."""
    key, separator, value = text.partition("=")
    fields = {item.name for item in dataclasses.fields(DisCoHeadConfig)}
    if not separator or key not in fields or key in _FIXED_MODEL_FIELDS:
        raise ValueError(f"--model-option {text!r}: {key!r} is not a model option (see discohead/config.py)")
    current = getattr(VARIANTS["affine-dm"], key)
    try:
        if isinstance(current, bool):
            return key, value.lower() in ("1", "true", "yes")
        if isinstance(current, tuple):
            return key, tuple(int(part) for part in value.split(","))
        return key, type(current)(value)
    except ValueError:
        raise ValueError(f"--model-option {text!r}: {value!r} is not a valid {type(current).__name__}") from None


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Field metadata gives each flag's help."""

    # what to train, on what
    variant: str = field(
        default="",
        metadata={"choices": (*VARIANTS, "all"), "help": "model variant; all trains the four side by side (required)"},
    )
    data: str = field(
        default="",
        metadata={
            "metavar": "DEST",
            "help": "output of pipelines/preprocess.py: local folder or s3:// prefix (required)",
        },
    )
    image_size: int | None = field(
        default=None, metadata={"help": "train at this size (default: the shards'); smaller is resized on the fly"}
    )
    widths: str = field(
        default="paper",
        metadata={
            "choices": tuple(WIDTHS),
            "help": "channel widths: the paper's, or narrower ones for CPU runs and tests",
        },
    )
    model_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "flag": "--model-option",
            "repeat": True,
            "metavar": "KEY=VALUE",
            "help": "override a DisCoHeadConfig field, e.g. feature_channels=256; repeatable",
        },
    )

    # optimisation (paper §3.2: Adam 1e-4, batch 16)
    batch_size: int = field(default=16, metadata={"help": "global batch, split across the workers (paper: 16)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate (paper: 1e-4)"})
    max_steps: int | None = field(
        default=None,
        metadata={"help": "optimisation steps (1000 unless --epochs; set from --epochs when the run starts)"},
    )
    epochs: float | None = field(default=None, metadata={"help": "passes over the training chunks, converted to steps"})
    pairs_per_chunk: int = field(default=8, metadata={"help": "(source, driver) pairs drawn from each chunk per pass"})
    source_range: str = field(
        default="clip",
        metadata={
            "choices": ("clip", "chunk"),
            "help": "draw each source from anywhere in its clip, or from the driver's chunk",
        },
    )
    perceptual_weight: float = field(default=1.0, metadata={"help": "lambda of the VGG-19 term; 0 trains on L1 alone"})
    vgg_weights: str | None = field(
        default=None,
        metadata={"help": "path to vgg19-dcbb9e9d.pth (default: torch hub cache or DISCOHEAD_VGG19_WEIGHTS)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the model's initialisation and of the pair draws"})

    # scale and failures
    num_workers: int = field(default=1, metadata={"help": "data-parallel workers per variant"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker, NCCL and bf16 autocast"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs each worker reserves"})
    max_failures: int = field(
        default=3, metadata={"help": "worker-group restarts from the last checkpoint before giving up"}
    )
    max_bad_samples: float = field(
        default=0.01,
        metadata={
            "help": "share of the training samples that may be unreadable (skipped, counted per shard and logged); "
            "the run fails once more are met"
        },
    )

    # outputs
    storage: str = field(default="outputs/train", metadata={"help": "checkpoint storage: local folder or s3:// prefix"})
    experiment: str = field(default="discohead", metadata={"help": "MLflow experiment and run-name prefix"})
    register: str | None = field(
        default=None,
        metadata={
            "metavar": "NAME",
            "help": "register the final model in MLflow's registry under NAME (alias: --alias)",
        },
    )
    alias: str = field(
        default="candidate", metadata={"help": "alias the registered version gets, so models:/NAME@ALIAS finds it"}
    )
    log_every: int = field(default=50, metadata={"help": "steps between metric logs"})
    checkpoint_every: int = field(default=500, metadata={"help": "steps between checkpoints"})
    image_every: int | None = field(
        default=None, metadata={"help": "steps between sample grids (default: every checkpoint)"}
    )
    evaluate: bool = field(
        default=True, metadata={"help": "run the evaluation job on the test split at the end, when there is one"}
    )
    evaluate_clips: int | None = field(
        default=None, metadata={"help": "evaluate on the first N test clips only (default: all)"}
    )
    s3_endpoint: str | None = field(
        default=None, metadata={"help": "S3-compatible endpoint URL (default: AWS_ENDPOINT_URL)"}
    )
    shared_storage: bool = field(
        default=False,
        metadata={
            "help": "local --data, --storage and MLflow store are on a file system every Ray node mounts "
            "(without it a multi-node cluster needs s3:// and a tracking server)"
        },
    )

    # set by resolve(), not a flag: the shards' preprocessing settings (ClipConfig and landmark
    # backend), kept in every checkpoint so generation crops faces and cuts audio as training saw them
    preprocessing: dict[str, Any] = field(default_factory=dict, metadata={"flag": False})

    def __post_init__(self) -> None:
        options = self.model_options
        if isinstance(options, (list, tuple)):  # KEY=VALUE strings from the command line
            options = dict(_model_option(text) if isinstance(text, str) else text for text in options)
        object.__setattr__(self, "model_options", dict(options))
        if self.variant not in (*VARIANTS, "all"):
            raise ValueError(f"--variant {self.variant!r}: choose one of {', '.join(VARIANTS)} or all")
        if not self.data:
            raise ValueError("--data is required: the output folder (or s3:// prefix) of pipelines/preprocess.py")
        self._check_ranges()
        if self.batch_size % self.num_workers:
            raise ValueError(f"--batch-size {self.batch_size} does not split evenly across {self.num_workers} workers")

    def _check_ranges(self) -> None:
        """Every numeric field in its range, so a bad value stops the launch in one line instead of
        failing (and being retried) inside the workers."""
        for name in ("num_workers", "batch_size", "pairs_per_chunk", "log_every", "checkpoint_every"):
            check_range(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        for name in ("max_steps", "image_every", "evaluate_clips"):  # None: derived or off
            check_range(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        check_range("--image-size", self.image_size, 32, MAX_IMAGE_SIZE, multiple=8)
        check_range("--lr", self.lr, 0, above=True)
        check_range("--epochs", self.epochs, 0, above=True)
        check_range("--perceptual-weight", self.perceptual_weight, 0)
        check_range("--cpus-per-worker", self.cpus_per_worker, 0, above=True)
        check_range("--max-failures", self.max_failures, 0)
        check_range("--max-bad-samples", self.max_bad_samples, 0, 1)
        check_range("--seed", self.seed, 0, 2**32 - 1)  # numpy's generators refuse negative seeds

    # --- derived -------------------------------------------------------------------

    @property
    def variants(self) -> list[str]:
        return list(VARIANTS) if self.variant == "all" else [self.variant]

    def for_variant(self, variant: str) -> TrainConfig:
        return dataclasses.replace(self, variant=variant)

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers

    @property
    def chunks_per_fetch(self) -> int:
        """Chunks a worker takes from the data stream at a time: enough for one batch of pairs."""
        return max(1, math.ceil(self.per_worker_batch / self.pairs_per_chunk))

    @property
    def steps(self) -> int:
        if self.max_steps is None:
            raise ValueError("the config is not resolved against the data yet (TrainConfig.resolve)")
        return self.max_steps

    @property
    def image_steps(self) -> int:
        return self.image_every or self.checkpoint_every

    def resolve(self, manifest: Manifest) -> TrainConfig:
        """This config with what the shards decide: image size, steps of ``--epochs``, mel settings.

        Raises ValueError with what to do when the shards cannot serve it.
        """
        train_chunks = manifest.chunks("train")
        if not manifest.shards.get("train") or train_chunks == 0:
            raise ValueError(
                f"{self.data} has no training shards: preprocess more clips (see the skipped reasons in its manifest)"
            )
        image_size = self.image_size or manifest.image_size
        if image_size > manifest.image_size:
            raise ValueError(
                f"--image-size {image_size} is larger than the shards' {manifest.image_size} px: preprocess with "
                f"--image-size {image_size} or train smaller"
            )
        max_steps = self.max_steps
        if max_steps is None:
            max_steps = (
                max(1, int(self.epochs * train_chunks * self.pairs_per_chunk // self.batch_size))
                if self.epochs
                else 1000
            )
        # The model's audio input follows the shards' mel settings.
        options = {**self.model_options, "n_mels": manifest.mel.n_mels, "audio_frames": manifest.mel.window_frames}
        resolved = dataclasses.replace(
            self,
            image_size=image_size,
            max_steps=max_steps,
            model_options=options,
            preprocessing=manifest.config_json,
        )
        resolved.model_config()  # raises ValueError for impossible sizes and widths
        return resolved

    def model_config(self, variant: str | None = None) -> DisCoHeadConfig:
        """The model this run trains (``variant`` for one of ``all``)."""
        variant = variant or (self.variant if self.variant != "all" else "affine-dm")
        size = {"image_size": self.image_size} if self.image_size else {}
        try:
            return DisCoHeadConfig.for_variant(variant, **size, **{**WIDTHS[self.widths], **self.model_options})
        except TypeError as error:
            raise ValueError(str(error)) from None

    def check_this_machine(self) -> None:
        """What this machine must have to run the workers: a GPU for ``--use-gpu``, the VGG-19 weights for the loss."""
        import torch

        if self.use_gpu and not torch.cuda.is_available():
            raise ValueError(
                "--use-gpu was given but this machine has no CUDA GPU: "
                "drop --use-gpu to train on CPU, or submit to a cluster with GPUs"
            )
        if self.perceptual_weight > 0:
            from .losses import DisCoHeadLoss
            from .pretrained import PretrainedWeightsUnavailable

            try:
                DisCoHeadLoss(self.perceptual_weight, self.vgg_weights)
            except PretrainedWeightsUnavailable as error:
                raise ValueError(f"{error} (or train with --perceptual-weight 0)") from None

    # --- records -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain values (a checkpoint stores this; tensors-only loading accepts it)."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)} | {
            "model_options": dict(self.model_options),
            "preprocessing": copy.deepcopy(self.preprocessing),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def params(self, model: DisCoHeadConfig) -> dict[str, Any]:
        """The MLflow params of a run: every field, the model's full config under ``model.``.

        The preprocessing settings are not repeated here: the run's ``data_config_hash`` names them.
        """
        values = {key: value for key, value in self.to_dict().items() if key not in ("model_options", "preprocessing")}
        return values | {f"model.{key}": value for key, value in model.to_dict().items()}


RUN_STAMP = "%Y%m%d-%H%M%S"
"""The time in a run's name, ``EXPERIMENT-VARIANT-STAMP``: sorting names of one experiment and variant sorts by time."""


def run_name_pattern(experiment: str, variant: str) -> re.Pattern[str]:
    """The names of the runs of exactly this experiment and variant.

    A prefix would also match other experiments: ``exp-affine-nm-*`` matches the runs of an
    experiment ``exp-affine-nm-v2`` (which sort after the timestamps of ``exp``) and the
    ``-eval`` folders the training job's evaluation writes beside its runs.
    """
    return re.compile(rf"{re.escape(experiment)}-{re.escape(variant)}-\d{{8}}-\d{{6}}")


def resume_point(
    storage: str, storage_options: dict[str, Any], experiment: str, variant: str
) -> tuple[str, dict[str, Any]]:
    """The newest run ``EXPERIMENT-VARIANT-STAMP`` under ``storage`` and the training config its last checkpoint saved.

    Raises FileNotFoundError when there is no such run, or its checkpoints carry no config.
    """
    import torch

    fs, root = filesystem_for(storage, storage_options)
    pattern = run_name_pattern(experiment, variant)
    found = fs.ls(root, detail=False) if fs.isdir(root) else []
    runs = sorted(name for name in (Path(path.rstrip("/")).name for path in found) if pattern.fullmatch(name))
    if not runs:
        raise FileNotFoundError(
            f"no run {experiment}-{variant}-YYYYMMDD-HHMMSS in {storage}; drop --resume to start one"
        )
    run = runs[-1]
    checkpoints = sorted(fs.glob(f"{root}/{run}/step-*/{CHECKPOINT_FILE}"))
    if not checkpoints:
        raise FileNotFoundError(
            f"the newest run {run} in {storage} stopped before its first checkpoint; drop --resume to start again"
        )
    with fs.open(checkpoints[-1], "rb") as handle:
        saved = torch.load(handle, map_location="cpu", weights_only=True).get("train_config")
    if not saved:
        raise FileNotFoundError(
            f"{checkpoints[-1]} holds no training config (written by an older version); drop --resume"
        )
    return run, saved


def launch_config(given: dict[str, Any], resume: bool = False) -> tuple[TrainConfig, dict[str, str]]:
    """The config of a launch and the run name of each variant, from the flags the user gave.

    A new launch names its runs ``EXPERIMENT-VARIANT-TIMESTAMP``. With ``resume`` the
    latest run of each variant is continued and the flags given are laid over the config
    its last checkpoint saved. Raises ValueError or FileNotFoundError saying what to do.
    """
    defaults = {item.name: item.default for item in dataclasses.fields(TrainConfig)}
    variant = given.get("variant", "")
    experiment, storage = given.get("experiment", defaults["experiment"]), given.get("storage", defaults["storage"])
    stamp = time.strftime(RUN_STAMP)
    names, saved = {}, {}
    for one in list(VARIANTS) if variant == "all" else [variant] if variant else []:
        names[one] = f"{experiment}-{one}-{stamp}"
        if resume:
            try:
                names[one], saved = resume_point(
                    storage, s3_options(storage, given.get("s3_endpoint")), experiment, one
                )
            except FileNotFoundError as error:
                raise FileNotFoundError(f"--resume: {error}") from None
    if "epochs" in given:  # the saved run's steps came from its own --epochs
        if "max_steps" in given:
            raise ValueError("give --max-steps or --epochs, not both")
        saved = {**saved, "max_steps": None}
    return TrainConfig.from_dict({**saved, **given, "variant": variant}), names
