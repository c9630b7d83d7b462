"""DisCoHead as an MLflow pyfunc model, logged "from code" by ``discohead.tracking.log_model``.

MLflow loads this file (not a pickle) with the package's code beside it, and the model
from its DisCoHead checkpoint artifact with ``weights_only=True``, so a logged or
registered model loads wherever MLflow and torch are installed, without ``discohead``:

    model = mlflow.pyfunc.load_model("models:/NAME@ALIAS")
    frames = model.predict({"source": S, "head_driver": D, "eye_driver": E, "audio": A})

Inputs are float32 arrays: frames ``(B, 3, H, W)`` in [0, 1], audio ``(B, n_mels, T)``
log-mel windows; the output is the predicted frames ``(B, 3, H, W)``.
"""

from __future__ import annotations

import mlflow
import numpy as np


class DisCoHeadModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from discohead.model import DisCoHead

        self.model = DisCoHead.from_checkpoint(context.artifacts["checkpoint"]).eval()

    def predict(self, context, model_input, params=None):
        import torch

        inputs = [
            torch.as_tensor(np.asarray(model_input[name], dtype=np.float32))
            for name in ("source", "head_driver", "eye_driver", "audio")
        ]
        with torch.no_grad():
            return self.model(*inputs)["prediction"].numpy()


mlflow.models.set_model(DisCoHeadModel())
