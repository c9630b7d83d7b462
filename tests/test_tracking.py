"""MLflow conventions that need no server (a SQLite store), and model references.

The conventions a server must show (parent and child runs, images with steps, the logged
model, the registry) are asserted on a real MLflow server in test_train_pipeline.py.
"""

from __future__ import annotations

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


def test_a_launch_tags_the_experiment_and_logs_the_config_as_params(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    shards = str(tmp_path / "shards")
    manifest = write_synthetic_shards(shards, clips=2, frames_per_clip=20, image_size=32, chunk_frames=10)
    config = TrainConfig(variant="all", data=shards, widths="tiny", max_steps=3).resolve(manifest)
    names = {variant: f"exp-{variant}-20260101-000000" for variant in config.variants}
    launch = start_launch(config, names, manifest)
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
