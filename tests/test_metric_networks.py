"""Metric networks: weights found, verified or reported missing; LPIPS and the dlib face measures.

These machines cannot download the AlexNet and Inception weights, so the loaders are
tested with stand-in files under the real names: a missing file and a file that is not the
published one (wrong sha256) are both reported as unavailable, naming the file to provide,
and LPIPS is built from a stand-in AlexNet state dict to test its construction.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from discohead.metric_networks import ALEXNET, INCEPTION, LPIPS, FaceMeasures, fid_metric, lpips_metric
from discohead.pretrained import PretrainedWeightsUnavailable


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache and no weight variables: what a fresh offline machine has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for weights in (ALEXNET, INCEPTION):
        monkeypatch.delenv(weights.env_var, raising=False)
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("offline"))
    )
    return tmp_path / "hub" / "checkpoints"


def test_missing_weights_are_reported_with_file_hash_and_place(hub):
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        lpips_metric()
    message = str(error.value)
    assert message.startswith("unavailable: provide alexnet-owt-7be5be79.pth (sha256 7be5be79")
    assert str(hub) in message and "DISCOHEAD_ALEXNET_WEIGHTS" in message
    with pytest.raises(PretrainedWeightsUnavailable, match="pt_inception-2015-12-05-6726825d.pth"):
        fid_metric()


def test_a_file_under_the_real_name_that_is_not_the_published_one_is_refused(hub, monkeypatch):
    hub.mkdir(parents=True)
    stand_in = hub / ALEXNET.name
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), stand_in)
    with pytest.raises(PretrainedWeightsUnavailable, match="not the published file"):
        lpips_metric()
    monkeypatch.setenv(INCEPTION.env_var, str(stand_in))
    with pytest.raises(PretrainedWeightsUnavailable, match="not the published file"):
        fid_metric()


def test_lpips_from_an_alexnet_state_dict():
    torch.manual_seed(0)
    metric = LPIPS(torchvision.models.alexnet(weights=None).state_dict())
    frames = torch.rand(2, 3, 64, 64)
    assert metric(frames, frames).tolist() == [0.0, 0.0]
    assert (metric(frames, torch.rand(2, 3, 64, 64)) > 0).all()
    assert not any(parameter.requires_grad for parameter in metric.parameters())


def test_face_measures_on_a_drawn_face():
    from discohead.data.synthetic import SyntheticClip, render_frames

    faces = FaceMeasures()
    frames = render_frames(
        SyntheticClip(seconds=0.08, width=256, height=256, face_height=150), np.zeros(1280, np.float32)
    )
    boxes = faces.boxes(frames)
    landmarks, identity = faces.measure(frames, boxes)
    assert landmarks.shape == (2, 68, 2) and identity.shape == (2, 128)
    shifted = np.roll(frames, 6, axis=2)  # the face 6 px to the right, fitted in the same boxes
    moved, _ = faces.measure(shifted, boxes)
    assert 3 < np.median(moved[..., 0] - landmarks[..., 0]) <= 8, "landmarks follow the face inside a fixed box"
    as_tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_array_equal(faces.to_measure_size(as_tensor), frames)
