"""MLflow, both ways: creating and resuming the runs of a training launch, logging to them, and
loading a trained model back by any reference.

Conventions a user of MLflow expects, in one place:

- one experiment per ``--experiment``, tagged as model training so MLflow 3's UI opens on
  its runs, not on the GenAI overview;
- ``--variant all`` is one parent run with a child run per variant, so the UI groups a launch;
- a run's params are its :class:`~discohead.train_config.TrainConfig` (``params()``) and
  the data's identity; metrics and sample grids are logged with their step;
- the final model is an MLflow pyfunc model (``model``) that carries this package's code
  and the DisCoHead checkpoint (tensors only, loaded with ``weights_only=True``: no pickle
  of a module), with a signature and an input example; ``--register NAME`` adds it to the
  registry with an alias;
- without MLFLOW_TRACKING_URI the store is ``./mlflow.db`` and the artifacts go beside the
  database (``mlartifacts/``), never into an unrelated ``./mlruns``.

:func:`load_model` takes the references every job accepts: a run id, ``runs:/ID[/path]``,
``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, or a checkpoint file or folder (local or
any fsspec URL such as s3://).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .contracts import CHECKPOINT_FILE
from .errors import UsageError
from .storage import filesystem_for, is_remote, s3_options
from .training import Reporter

if TYPE_CHECKING:
    from .manifest import Manifest
    from .model import DisCoHead
    from .train_config import TrainConfig

PACKAGE_DIR = Path(__file__).resolve().parent
MODEL_NAME = "model"
"""Name of the logged model in each run (``runs:/ID/model``)."""
RUN_TAG = "discohead.train_run"
VARIANT_TAG = "discohead.variant"
LAUNCH_TAG = "discohead.launch"
PARENT_TAG = "mlflow.parentRunId"
FAILURE_TAG = "discohead.failure"
"""Why a run ended FAILED or KILLED (removed when ``--resume`` continues it)."""
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3's UI opens an experiment of this kind on its training runs (not "Traces / Token usage")."""
MODEL_INPUTS = ("source", "head_driver", "eye_driver", "audio")

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


# --- where ------------------------------------------------------------------------


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store in the working folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def local_artifact_location(uri: str) -> str | None:
    """For a store on this machine (SQLite file or folder), ``mlartifacts/`` beside it; a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    if uri.startswith("file:") or "://" not in uri:
        return (Path(uri.removeprefix("file://")).resolve().parent / "mlartifacts").as_uri()
    return None


def code_version() -> str:
    """``VERSION+COMMIT`` of this checkout (just the version outside a git checkout)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=5
        )
        commit = result.stdout.strip() if result.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def tracking_client(uri: str | None) -> Any:
    """An ``MlflowClient`` for ``uri``. A store MLflow refuses to open (a ``file:`` store, which MLflow 3
    keeps in maintenance mode, unless ``MLFLOW_ALLOW_FILE_STORE=true``) is a one-line :class:`UsageError`."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(uri)
    except MlflowException as error:
        message = str(error).strip().splitlines()
        shown = without_credentials(uri or "the default store")
        raise UsageError(f"MLflow tracking URI {shown}: {message[0] if message else type(error).__name__}") from None


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a local store) and tagged as model training."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        found = client.create_experiment(name, artifact_location=local_artifact_location(uri))
    else:
        found = experiment.experiment_id
    client.set_experiment_tag(found, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return found


# --- a launch's runs ----------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """The MLflow runs of one training launch: a parent for ``--variant all``, one run per variant."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None
    run_ids: dict[str, str]

    def artifact_root(self) -> str:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri).get_experiment(self.experiment_id).artifact_location

    def finish(self, status: str = "FINISHED", reason: str = "") -> None:
        """End the runs: the children end FINISHED when their model is logged, so one still RUNNING
        here did not reach its last step (an aborted trainer returns without an error).

        A run that did not finish gets ``status`` (FAILED or KILLED) and the ``reason`` as its
        :data:`FAILURE_TAG`, so the UI says why; ``--resume`` continues it and clears the tag.
        """
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        if status == "FINISHED":
            unfinished = "KILLED", "training stopped before its last step: --resume continues it"
        else:
            unfinished = status, reason
        for run_id in self.run_ids.values():
            if client.get_run(run_id).info.status == "RUNNING":
                log_values(client, run_id, tags={FAILURE_TAG: unfinished[1][:5000]} if unfinished[1] else {})
                client.set_terminated(run_id, unfinished[0])
        if self.parent_run_id:
            log_values(client, self.parent_run_id, tags={FAILURE_TAG: reason[:5000]} if reason else {})
            client.set_terminated(self.parent_run_id, status)

    def __enter__(self) -> Launch:
        """While the launch runs, SIGTERM (``ray job stop``, a scheduler) ends it with SystemExit in
        the main thread, remembered, so that :meth:`__exit__` ends the runs as KILLED and says by
        what (a SystemExit raised inside ``ray.get`` reaches us as ``SystemExit(1)``)."""

        def stop(signum: int, frame: Any) -> None:
            object.__setattr__(self, "_signal", signum)
            raise SystemExit(128 + signum)

        if threading.current_thread() is threading.main_thread():
            object.__setattr__(self, "_previous_sigterm", signal.signal(signal.SIGTERM, stop))
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> bool:
        """Whatever ends the launch's code ends its runs: FINISHED, FAILED with the error, or KILLED
        (Ctrl-C, SIGTERM), so that no run stays RUNNING after its job is gone. The error propagates."""
        previous, signum = self.__dict__.pop("_previous_sigterm", None), self.__dict__.pop("_signal", None)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if error is None:
            self.finish()
        else:
            self.finish(*ending(SystemExit(128 + signum) if signum else error))
        return False


TRAIN_RESUME = "--resume continues the run from its last checkpoint"


def ending(error: BaseException, resume: str = TRAIN_RESUME) -> tuple[str, str]:
    """The MLflow status and the one-line reason for a launch ended by ``error`` (stopped: how to ``resume``)."""
    error = getattr(error, "cause", None) or error  # a Ray task's error: the one its code raised
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        code = "SIGINT" if isinstance(error, KeyboardInterrupt) else getattr(error, "code", None)
        name = {2: "SIGINT", 15: "SIGTERM", 130: "SIGINT", 143: "SIGTERM"}.get(code, code)
        how = {"SIGTERM": "SIGTERM, e.g. ray job stop", "SIGINT": "SIGINT (Ctrl-C)"}.get(name, f"exit {name}")
        return "KILLED", f"stopped by {how}: {resume}"
    lines = str(error).strip().splitlines()
    return "FAILED", f"{type(error).__name__}: {lines[0] if lines else ''}"


def log_values(
    client: Any,
    run_id: str,
    metrics: Mapping[str, float] | None = None,
    step: int = 0,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Metrics (at ``step``), params and tags of one run in as few requests as MLflow allows (100 params a batch)."""
    import time

    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    items = [Param(key, str(value)) for key, value in (params or {}).items()]
    client.log_batch(
        run_id,
        metrics=[Metric(key, float(value), now, step) for key, value in (metrics or {}).items()],
        params=items[:100],
        tags=[RunTag(key, value) for key, value in (tags or {}).items()],
    )
    for start in range(100, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def data_params(manifest: Manifest) -> dict[str, Any]:
    """What identifies the training data in a run's params."""
    return {
        "data_config_hash": manifest.config_hash,
        "data_format_version": manifest.format_version,
        "data_train_chunks": manifest.chunks("train"),
    }


def start_launch(config: TrainConfig, run_names: Mapping[str, str], manifest: Manifest, resume: bool = False) -> Launch:
    """Create the runs of a launch (or, with ``resume``, find the ones named ``run_names``) and log their params."""
    uri = tracking_uri()
    client = tracking_client(uri)
    experiment = experiment_id(client, config.experiment, uri)
    common = {**data_params(manifest), "code_version": code_version()}
    existing = {}
    if resume:
        for variant, name in run_names.items():
            runs = client.search_runs([experiment], filter_string=f"tags.`{RUN_TAG}` = '{name}'", max_results=1)
            if runs:
                existing[variant] = runs[0]
    parent = None
    if len(run_names) > 1:
        parents = {run.data.tags.get(PARENT_TAG) for run in existing.values()} - {None}
        if parents:
            parent = parents.pop()
            _continue(client, parent)
        else:
            stamp = "-".join(next(iter(run_names.values())).rsplit("-", 2)[-2:])
            launch_name = f"{config.experiment}-all-{stamp}"
            parent = client.create_run(
                experiment, run_name=launch_name, tags={LAUNCH_TAG: launch_name, VARIANT_TAG: "all"}
            ).info.run_id
            launch_params = {
                key: value
                for key, value in config.params(config.model_config()).items()
                if not key.startswith("model.")
            }
            log_values(client, parent, params={**launch_params, **common})
    run_ids = {}
    for variant, name in run_names.items():
        if variant in existing:
            run_ids[variant] = existing[variant].info.run_id
            _continue(client, run_ids[variant])
            continue
        tags = {RUN_TAG: name, VARIANT_TAG: variant, **({PARENT_TAG: parent} if parent else {})}
        run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
        variant_config = config.for_variant(variant)
        log_values(client, run_id, params={**variant_config.params(variant_config.model_config()), **common})
        run_ids[variant] = run_id
    return Launch(uri, experiment, parent, run_ids)


def run_failure(uri: str, run_id: str) -> str | None:
    """Why the run's workers stopped without finishing (:meth:`MlflowReporter.failed`), or None."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_run(run_id).data.tags.get(FAILURE_TAG)


def _continue(client: Any, run_id: str) -> None:
    """A resumed run is RUNNING again, without the reason its last launch ended."""
    client.update_run(run_id, status="RUNNING")
    if FAILURE_TAG in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, FAILURE_TAG)


# --- logging from the training loop --------------------------------------------------


class MlflowReporter(Reporter):
    """:func:`~discohead.training.fit`'s reports into one MLflow run (rank 0 logs; every rank its data lineage)."""

    def __init__(
        self,
        uri: str,
        run_id: str,
        rank: int = 0,
        register: str | None = None,
        alias: str = "candidate",
        example: Mapping[str, np.ndarray] | None = None,
    ):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        self.uri, self.run_id, self.rank = uri, run_id, rank
        self.register, self.alias, self.example = register, alias, example

    def log(self, step: int, metrics: dict[str, float]) -> None:
        log_values(self.client, self.run_id, metrics=metrics, step=step)

    def image(self, step: int, grid: np.ndarray) -> None:
        """Logged under one key with its step, so the UI lines the grids up across steps and runs."""
        self.client.log_image(self.run_id, grid, key="samples", step=step)

    def chunks_seen(self, keys: list[str]) -> None:
        """Which chunks this worker read in its first pass: data lineage, and the proof that workers differ."""
        self.client.log_text(self.run_id, "\n".join(keys[:10_000]) + "\n", f"data/rank-{self.rank}-chunks.txt")

    def bad_samples(self, shard: str, count: int, reason: str) -> None:
        """A shard's unreadable samples, as ``bad_samples/<shard>`` (the count) with the first reason as a tag."""
        key = f"bad_samples/{shard}"
        log_values(self.client, self.run_id, metrics={key: count}, tags={key: reason[:5000]})

    def failed(self, reason: str) -> None:
        """Record why the workers stopped without finishing (rank 0), for the driver's :func:`run_failure`.

        Workers that stop on purpose return normally, so that Ray Train does not restart them,
        and Ray Train's result carries only checkpoint metrics: the run's tag is the message.
        """
        if self.rank == 0:
            log_values(self.client, self.run_id, tags={FAILURE_TAG: reason[:5000]})

    def finish(self, model: DisCoHead, config: TrainConfig) -> None:
        if self.rank != 0:
            return
        log_model(self.uri, self.run_id, model, self.example, self.register, self.alias, config.to_dict())
        self.client.set_terminated(self.run_id, "FINISHED")
        artifacts = self.client.get_run(self.run_id).info.artifact_uri
        print(
            f"[train {model.config.variant}] done: MLflow run {self.run_id}, model "
            f"runs:/{self.run_id}/{MODEL_NAME}, artifacts in {artifacts}",
            flush=True,
        )


def model_example(pairs: Mapping[str, np.ndarray], image_size: int) -> dict[str, np.ndarray]:
    """One sample of the model's four inputs (float32, as the pyfunc model takes them) from a batch of pairs."""
    from .training import model_inputs

    inputs = model_inputs({key: value[:1] for key, value in pairs.items()}, image_size)
    return {name: getattr(inputs, name).numpy().astype(np.float32) for name in MODEL_INPUTS}


def log_model(
    uri: str,
    run_id: str,
    model: DisCoHead,
    example: Mapping[str, np.ndarray] | None,
    register: str | None = None,
    alias: str = "candidate",
    train_config: dict[str, Any] | None = None,
) -> Any:
    """Log ``model`` as the run's pyfunc ``model`` (code and checkpoint inside); register it when asked.

    ``train_config`` (``TrainConfig.to_dict()``) goes into the checkpoint, so whoever loads the
    model knows how it was trained and which preprocessing its inputs need.
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    model = model.cpu().eval()
    if example is None:
        size = model.config.image_size
        frames = np.zeros((1, 3, size, size), np.float32)
        example = {
            "source": frames,
            "head_driver": frames,
            "eye_driver": frames,
            "audio": np.zeros((1, model.config.n_mels, model.config.audio_frames), np.float32),
        }
    example = {name: np.array(example[name], dtype=np.float32) for name in MODEL_INPUTS}  # writable copies
    with torch.no_grad():
        output = model(*(torch.from_numpy(example[name]) for name in MODEL_INPUTS))["prediction"].numpy()
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as directory, mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # The signature is given explicitly; MLflow's advice to add type hints to predict() does not apply.
        warnings.filterwarnings("ignore", message="(?s).*type hints to the `predict` method")
        path = Path(directory) / CHECKPOINT_FILE
        torch.save(model.checkpoint(**({"train_config": train_config} if train_config else {})), path)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(PACKAGE_DIR / "mlflow_model.py"),
            artifacts={"checkpoint": str(path)},
            code_paths=[str(PACKAGE_DIR)],
            signature=infer_signature(dict(example), output),
            input_example=dict(example),
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}",
                f"mlflow=={mlflow.__version__}",
            ],
            registered_model_name=register,
        )
    if register and info.registered_model_version is not None:
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).set_registered_model_alias(register, alias, str(info.registered_model_version))
        print(
            f"[train {model.config.variant}] registered models:/{register}/{info.registered_model_version} "
            f"(models:/{register}@{alias})",
            flush=True,
        )
    return info


# --- loading a trained model ---------------------------------------------------------


def is_model_ref(ref: str) -> bool:
    return ref.startswith(("runs:/", "models:/")) or bool(_RUN_ID.match(ref))


def _find_checkpoint(folder: str) -> str:
    found = sorted(Path(folder).rglob(CHECKPOINT_FILE))
    if not found:
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} in what was downloaded to {folder}")
    return str(found[0])


def load_checkpoint(ref: str, uri: str | None = None, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict (tensors and plain values) a model reference points at; see the module doc."""
    import torch

    with tempfile.TemporaryDirectory() as directory:
        if is_model_ref(ref):
            import mlflow

            artifact_uri = f"runs:/{ref}/{MODEL_NAME}" if _RUN_ID.match(ref) else ref
            if artifact_uri.startswith("runs:/") and artifact_uri.count("/") == 1:
                artifact_uri = f"{artifact_uri}/{MODEL_NAME}"
            previous = mlflow.get_tracking_uri()
            mlflow.set_tracking_uri(
                uri or tracking_uri()
            )  # runs:/ID/model resolves its logged model through the global URI
            try:
                local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=directory)
            finally:
                mlflow.set_tracking_uri(previous)
            path = local if local.endswith(CHECKPOINT_FILE) else _find_checkpoint(local)
            return torch.load(path, map_location="cpu", weights_only=True)
        options = storage_options if storage_options is not None else s3_options(ref)
        fs, path = filesystem_for(ref, options)
        if not fs.exists(path):
            kind = "URL" if is_remote(ref) else "path"
            raise FileNotFoundError(
                f"{ref}: no such checkpoint {kind}, and not an MLflow reference (run id, runs:/ID, "
                "models:/NAME/VERSION, models:/NAME@ALIAS)"
            )
        if fs.isdir(path):
            path = f"{path}/{CHECKPOINT_FILE}"
        with fs.open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)


def load_model(ref: str, tracking_uri: str | None = None, map_location: str = "cpu") -> DisCoHead:
    """A trained model by reference: run id, ``runs:/``, ``models:/NAME/VERSION`` or ``@ALIAS``, checkpoint or URL."""
    from .model import DisCoHead

    return DisCoHead.from_checkpoint(load_checkpoint(ref, tracking_uri), map_location=map_location)


# --- evaluation results ----------------------------------------------------------------


def run_id_for(ref: str, uri: str | None = None) -> str | None:
    """The MLflow run a model reference belongs to (None for a checkpoint path)."""
    if _RUN_ID.match(ref):
        return ref
    if ref.startswith("runs:/"):
        return ref.removeprefix("runs:/").split("/", 1)[0]
    if ref.startswith("models:/"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri or tracking_uri())
        name, _, version = ref.removeprefix("models:/").partition("/")
        if "@" in name:
            name, alias = name.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        return client.get_model_version(name, version).run_id
    return None


def log_evaluation(
    run_id: str, metrics: dict[str, float], unavailable: dict[str, str], grid: Any, split: str, uri: str | None = None
) -> None:
    """An evaluation's numbers on the model's own run, so MLflow's compare view puts the variants side by side.

    Metrics are ``eval/<split>/...``; what could not be measured is a tag naming the file to provide.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri or tracking_uri())
    tags = {f"eval.{split}.unavailable.{name}": message[:5000] for name, message in unavailable.items()}
    log_values(client, run_id, metrics=metrics, tags=tags)
    if grid is not None:
        client.log_image(run_id, grid, key=f"eval/{split}/samples", step=0)


def log_comparison(run_id: str, markdown: str, csv_text: str, figure: Any, split: str, uri: str | None = None) -> None:
    """A launch's variants side by side on its parent run: ``comparison/eval_<split>.{md,csv,png}``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri or tracking_uri())
    client.log_text(run_id, markdown, f"comparison/eval_{split}.md")
    client.log_text(run_id, csv_text, f"comparison/eval_{split}.csv")
    client.log_figure(run_id, figure, f"comparison/eval_{split}.png")


# --- a preprocessing job's run ---------------------------------------------------------

DATA_RUN_TAG = "discohead.preprocess_run"
"""On a preprocessing job's MLflow run: the job's run id (the prefix of the commit records it wrote)."""


def requested_tracking_uri(given: str | None = None) -> str | None:
    """``given``, else MLFLOW_TRACKING_URI, else None: for a job that logs only when asked (preprocessing),
    unlike :func:`tracking_uri`'s local default."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or None


def without_credentials(url: str) -> str:
    """``url`` without a ``user:password@`` part, for what a run records and what a job prints."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", url)


def flat_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as MLflow params: ``{"mel": {"n_mels": 80}}`` becomes ``{"mel.n_mels": 80}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flat_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of nested values as MLflow metrics, keys joined by ``/`` (the UI groups on it); the rest dropped."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flat_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


STATS_METRICS = ("videos", "hours_decoded", "hours_kept", "segments_kept", "segments_skipped")


def data_metrics(stats: Mapping[str, Any]) -> dict[str, float]:
    """A preprocessing job's MLflow metrics from its ``stats.json``: the totals, ``skipped_<reason>`` per skip
    reason and ``throughput/<stage>/<figure>``; the measures' quantiles stay in the artifact."""
    metrics = {key: float(stats[key]) for key in STATS_METRICS if key in stats}
    metrics |= {f"skipped_{reason}": float(count) for reason, count in stats.get("skipped_by_reason", {}).items()}
    return metrics | flat_metrics(stats.get("throughput", {}), "throughput/")


class DataRun:
    """The MLflow run of one preprocessing job; without a tracking URI, nothing (MLflow is not imported).

    :meth:`start` creates it once the job knows its settings (a job refused before that leaves no
    run) and logs them as params; :meth:`finish` logs the dataset statistics as metrics and the
    files given (``stats.json``, ``stats.png``) as artifacts, and ends it. Used as a context
    manager, an error, Ctrl-C or SIGTERM in between ends the run FAILED or KILLED with the reason
    (:data:`FAILURE_TAG`), as a training launch's runs end.
    """

    def __init__(self, uri: str | None, experiment: str):
        self.uri, self.experiment = uri or None, experiment
        self.run_id: str | None = None
        self.ended = False

    def _client(self) -> Any:
        return tracking_client(self.uri)

    def start(self, name: str, params: Mapping[str, Any]) -> str | None:
        """Create the run ``preprocess-NAME`` in the experiment; returns its id (None without a tracking URI)."""
        if not self.uri:
            return None
        client = self._client()
        experiment = experiment_id(client, self.experiment, self.uri)
        tags = {DATA_RUN_TAG: name}
        self.run_id = client.create_run(experiment, run_name=f"preprocess-{name}", tags=tags).info.run_id
        log_values(client, self.run_id, params={**params, "code_version": code_version()})
        return self.run_id

    def finish(self, stats: Mapping[str, Any], files: Mapping[str, bytes], failure: str = "") -> None:
        """Log :func:`data_metrics` of ``stats`` and ``files`` (name -> bytes, at the artifacts' root); end
        FINISHED, or FAILED with ``failure`` as the reason."""
        if self.run_id is None:
            return
        client = self._client()
        tags = {FAILURE_TAG: failure[:5000]} if failure else {}
        log_values(client, self.run_id, metrics=data_metrics(stats), tags=tags)
        with tempfile.TemporaryDirectory(prefix="discohead-stats-") as folder:
            for name, data in files.items():
                (Path(folder) / name).write_bytes(data)
            client.log_artifacts(self.run_id, folder)
        client.set_terminated(self.run_id, "FAILED" if failure else "FINISHED")
        self.ended = True

    def __enter__(self) -> DataRun:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> bool:
        if error is not None and self.run_id is not None and not self.ended:
            status, reason = ending(error, resume="the same command again resumes the job")
            client = self._client()
            log_values(client, self.run_id, tags={FAILURE_TAG: reason[:5000]})
            client.set_terminated(self.run_id, status)
            self.ended = True
        return False
