"""Loading a trained model back from MLflow by run id.

The training job logs each final model twice: as an MLflow PyTorch model (``model``,
for MLflow's own tools) and as a DisCoHead checkpoint file
(``checkpoint/discohead.pt``), which :func:`load_model` reads. The checkpoint is plain
tensors plus the config, so it loads across code versions that keep
``CHECKPOINT_FORMAT_VERSION``, unlike a pickled module.
"""

from __future__ import annotations

import tempfile

from .contracts import CHECKPOINT_FILE
from .model import DisCoHead

CHECKPOINT_ARTIFACT = f"checkpoint/{CHECKPOINT_FILE}"


def load_model(run_id: str, tracking_uri: str | None = None, map_location: str = "cpu") -> DisCoHead:
    """The final model of a training run (MLFLOW_TRACKING_URI unless ``tracking_uri`` is given)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as directory:
        path = client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, directory)
        return DisCoHead.from_checkpoint(path, map_location=map_location)
