"""MLflow conventions that need no server (a SQLite store), and model references.

The conventions a server must show (parent and child runs, images with steps, the logged
model, the registry) are asserted on a real MLflow server in test_train_pipeline.py.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from discohead import DisCoHead
from discohead.config import WIDTHS
from discohead.data.synthetic_shards import write_synthetic_shards
from discohead.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    is_model_ref,
    load_model,
    local_artifact_location,
    start_launch,
)
from discohead.train_config import TrainConfig


def test_artifacts_of_a_local_store_go_beside_it(tmp_path):
    assert (
        local_artifact_location(f"sqlite:///{tmp_path}/demo/mlflow.db") == (tmp_path / "demo" / "mlartifacts").as_uri()
    )
    assert local_artifact_location("http://127.0.0.1:5000") is None, "a server decides for itself"


def new_launch(tmp_path, monkeypatch) -> tuple:
    """``(config, run names, manifest, launch)``: all four variants on synthetic shards, in a SQLite store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    shards = str(tmp_path / "shards")
    manifest = write_synthetic_shards(shards, clips=2, frames_per_clip=20, image_size=32, chunk_frames=10)
    config = TrainConfig(variant="all", data=shards, widths="tiny", max_steps=3).resolve(manifest)
    names = {variant: f"exp-{variant}-20260101-000000" for variant in config.variants}
    return config, names, manifest, start_launch(config, names, manifest)


def test_a_launch_tags_the_experiment_and_logs_the_config_as_params(tmp_path, monkeypatch):
    config, names, manifest, launch = new_launch(tmp_path, monkeypatch)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(launch.tracking_uri)
    experiment = client.get_experiment(launch.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri(), "not ./mlruns"
    child = client.get_run(launch.run_ids["tps-dm"])
    assert child.data.tags["mlflow.parentRunId"] == launch.parent_run_id
    assert child.data.params["variant"] == "tps-dm" and child.data.params["model.motion"] == "tps"
    assert child.data.params["data_config_hash"] == manifest.config_hash
    launch.finish("FAILED")
    assert {client.get_run(run_id).info.status for run_id in [*launch.run_ids.values(), launch.parent_run_id]} == {
        "FAILED"
    }
    resumed = start_launch(config, names, manifest, resume=True)
    assert resumed.run_ids == launch.run_ids and resumed.parent_run_id == launch.parent_run_id, (
        "--resume finds the runs"
    )


def test_a_checkpoint_loads_by_path_or_folder_and_bad_references_say_what_is_accepted(tmp_path):
    model = DisCoHead.from_variant("tps-nm", image_size=32, **WIDTHS["tiny"])
    (tmp_path / "step-00000002").mkdir()
    torch.save(model.checkpoint(step=2), tmp_path / "step-00000002" / "discohead.pt")
    for ref in (str(tmp_path / "step-00000002"), str(tmp_path / "step-00000002" / "discohead.pt")):
        assert load_model(ref).config == model.config
    assert is_model_ref("0123456789abcdef0123456789abcdef") and is_model_ref("models:/name@alias")
    assert not is_model_ref(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="models:/NAME@ALIAS"):
        load_model(str(Path(tmp_path) / "missing"))


def test_a_launch_ended_by_an_error_or_a_signal_leaves_no_run_running(tmp_path, monkeypatch):
    """Issue 11, item 10: every way out of the launch's code ends its runs, saying why; --resume clears it."""
    from mlflow.tracking import MlflowClient

    from discohead.tracking import FAILURE_TAG

    config, names, manifest, launch = new_launch(tmp_path, monkeypatch)
    client = MlflowClient(launch.tracking_uri)
    runs = [launch.parent_run_id, *launch.run_ids.values()]

    def ended() -> set[tuple[str, str | None]]:
        return {(client.get_run(run).info.status, client.get_run(run).data.tags.get(FAILURE_TAG)) for run in runs}

    with pytest.raises(RuntimeError), launch:
        raise RuntimeError("the data went away\nsecond line")
    assert ended() == {("FAILED", "RuntimeError: the data went away")}
    resumed = start_launch(config, names, manifest, resume=True)
    assert resumed.run_ids == launch.run_ids and ended() == {("RUNNING", None)}, "--resume continues them, reason gone"
    with pytest.raises(SystemExit), resumed:
        raise SystemExit(15)  # what Ray's driver turns SIGTERM (ray job stop) into
    assert ended() == {
        ("KILLED", "stopped by SIGTERM, e.g. ray job stop: --resume continues the run from its last checkpoint")
    }
    with pytest.raises(KeyboardInterrupt), start_launch(config, names, manifest, resume=True):
        raise KeyboardInterrupt
    assert {status for status, _ in ended()} == {"KILLED"}
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit), start_launch(config, names, manifest, resume=True):
        os.kill(os.getpid(), signal.SIGTERM)  # the launch's own handler: the signal is named, not guessed
        time.sleep(5)
    assert {reason.split(",")[0] for _, reason in ended()} == {"stopped by SIGTERM"}
    assert signal.getsignal(signal.SIGTERM) is before, "the handler is the launch's only while it runs"
    with start_launch(config, names, manifest, resume=True):
        pass  # a trainer that returns without its children finishing (Ray Train aborted by Ctrl-C)
    assert client.get_run(launch.parent_run_id).info.status == "FINISHED"
    assert {client.get_run(run).info.status for run in launch.run_ids.values()} == {"KILLED"}


def test_a_preprocessing_run_is_logged_only_with_a_tracking_uri_and_ends_failed_on_an_error(tmp_path, monkeypatch):
    """Issue 12, item 4 (the job's run end to end: test_preprocess_pipeline.py): no URI, no run; an error ends it
    FAILED with the reason; the params carry no credentials of a URL."""
    from mlflow.tracking import MlflowClient

    from discohead.tracking import FAILURE_TAG, DataRun, data_metrics, requested_tracking_uri, without_credentials

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert requested_tracking_uri() is None and DataRun(None, "x").start("job", {}) is None
    assert without_credentials("https://user:secret@mlflow.example:5000/x@y") == "https://mlflow.example:5000/x@y"
    stats = {"hours_kept": 0.5, "skipped_by_reason": {"blurry": 2}, "throughput": {"write_shards": {"tasks": 3}}}
    assert data_metrics(stats) == {"hours_kept": 0.5, "skipped_blurry": 2.0, "throughput/write_shards/tasks": 3.0}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(RuntimeError), DataRun(requested_tracking_uri(uri), "data") as tracking:
        tracking.start("20260101000000-abcdef", {"image_size": 64})
        raise RuntimeError("the bucket went away")
    run = MlflowClient(uri).get_run(tracking.run_id)
    assert (run.info.status, run.data.tags[FAILURE_TAG]) == ("FAILED", "RuntimeError: the bucket went away")
    assert run.info.run_name == "preprocess-20260101000000-abcdef" and run.data.params["image_size"] == "64"


def test_every_loader_is_tensor_only_and_no_doc_points_at_an_unpickling_one():
    """Issue 11, item 13: models, checkpoints and weights load with ``weights_only=True`` everywhere,
    nothing calls a loader that unpickles (``mlflow.pytorch.load_model``, ``torch.hub.load_state_dict_from_url``
    without it), and the docs point at ``discohead.tracking.load_model`` / ``mlflow.pyfunc``."""
    import re

    root = Path(__file__).resolve().parents[1]
    code = {
        path: path.read_text()
        for folder in ("discohead", "pipelines", "bench")
        for path in (root / folder).rglob("*.py")
    }
    for path, text in code.items():
        for call in re.findall(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert "load_state_dict_from_url" not in text and "mlflow.pytorch" not in text, path
    docs = {path: path.read_text() for path in [root / "README.md", *(root / "docs").glob("*.md")]}
    for path, text in docs.items():
        assert "mlflow.pytorch.load_model" not in text and "pickle.load" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
    training = docs[root / "docs" / "training.md"]
    assert "from discohead.tracking import load_model" in training and "mlflow.pyfunc.load_model" in training


def test_a_tracking_store_mlflow_refuses_is_one_line(tmp_path, monkeypatch):
    """MLflow 3 refuses a file: store unless MLFLOW_ALLOW_FILE_STORE is set; the jobs said so with a traceback."""
    from discohead.errors import UsageError
    from discohead.tracking import tracking_client

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(UsageError, match=r"MLflow tracking URI file:///.*mlruns: .*maintenance mode") as error:
        tracking_client(f"file://{tmp_path}/mlruns")
    assert "\n" not in str(error.value)
    assert tracking_client(f"sqlite:///{tmp_path}/mlflow.db") is not None


def test_a_launch_of_several_variants_shows_them_side_by_side_on_its_parent_run(tmp_path, monkeypatch):
    """What the training job's --evaluate logs on the parent run: the table, its CSV and one chart."""
    import csv
    import io

    import numpy as np
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from discohead.evaluation import EvaluationResult, comparison_chart
    from discohead.tracking import log_comparison
    from pipelines.evaluate import table

    config, names, manifest, launch = new_launch(tmp_path, monkeypatch)
    launch.finish()  # the job evaluates after its runs have ended
    results = {
        variant: EvaluationResult(
            systems={"model": {"psnr": 20.0 + i, "ssim": 0.6}, "copy": {"psnr": 18.0, "ssim": 0.5}, "warp": {}},
            disentanglement={"audio_gain": 0.05 * i, "eye_gain": 0.02},
            unavailable={"fid": "unavailable: provide pt_inception-2015-12-05-6726825d.pth at ..."},
            frames=20,
            clips=2,
            seconds=2.0,
        )  # fmt: skip
        for i, variant in enumerate(launch.run_ids)
    }
    log_comparison(launch.parent_run_id, *table(results), comparison_chart(results), "test", launch.tracking_uri)

    client = MlflowClient(launch.tracking_uri)
    listed = {item.path for item in client.list_artifacts(launch.parent_run_id, "comparison")}
    assert listed == {f"comparison/eval_test.{kind}" for kind in ("md", "csv", "png")}
    folder = Path(client.download_artifacts(launch.parent_run_id, "comparison", str(tmp_path)))
    rows = list(csv.reader(io.StringIO((folder / "eval_test.csv").read_text())))
    assert [row[:2] for row in rows[1:]] == [[variant, system] for variant in launch.run_ids for system in
                                             ("model", "copy", "warp")]  # fmt: skip
    header = rows[0]
    assert rows[1][header.index("audio_gain")] == "0" and rows[4][header.index("audio_gain")] == "0.05"
    assert "- fid: unavailable: provide" in (folder / "eval_test.md").read_text()
    chart = np.asarray(Image.open(folder / "eval_test.png"))
    assert chart.ndim == 3 and chart.shape[0] > 100 and chart.std() > 0
