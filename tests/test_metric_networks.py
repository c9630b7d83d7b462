"""Metric networks: weights found, verified or reported missing; LPIPS, SyncNet and the dlib face measures.

These machines cannot download the AlexNet, Inception and SyncNet weights, so the loaders are
tested with stand-in files under the real names: a missing file and a file that is not the
published one (wrong sha256) are both reported as unavailable, naming the file to provide,
and LPIPS and SyncNet are built from stand-in state dicts (random weights) to test their
construction and loading. No number from a stand-in is ever a result: SyncNet's offset
search and confidence are tested on hand-made embeddings instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch
import torchvision

from discohead import metric_networks
from discohead.metric_networks import (
    ALEXNET,
    INCEPTION,
    LPIPS,
    SYNCNET,
    FaceMeasures,
    SyncNet,
    fid_metric,
    lip_sync,
    lpips_metric,
    syncnet_crop,
    syncnet_frames,
    syncnet_metric,
    syncnet_mfcc,
    window_count,
)
from discohead.pretrained import PretrainedWeightsUnavailable


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache and no weight variables: what a fresh offline machine has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for weights in (ALEXNET, INCEPTION, SYNCNET):
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


def test_syncnet_missing_weights_name_the_file_and_where_to_put_it(hub, tmp_path):
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        syncnet_metric()
    message = str(error.value)
    assert message.startswith("unavailable: provide syncnet_v2.model (sha256 961e8696")
    assert str(hub / "syncnet_v2.model") in message and "DISCOHEAD_SYNCNET_WEIGHTS" in message
    with pytest.raises(PretrainedWeightsUnavailable, match="does not exist"):
        syncnet_metric(str(tmp_path / "elsewhere" / "syncnet_v2.model"))


def test_syncnet_loader_plumbing_with_a_stand_in_under_the_real_name(hub, tmp_path, monkeypatch):
    torch.manual_seed(0)
    stand_in = tmp_path / "syncnet_v2.model"
    state = SyncNet().state_dict()
    torch.save(state, stand_in)
    with pytest.raises(PretrainedWeightsUnavailable, match="not the published file"):
        syncnet_metric(str(stand_in))
    # Pin the stand-in's own digest: what is left is the plumbing (env var, weights_only, strict load, eval).
    digest = hashlib.sha256(stand_in.read_bytes()).hexdigest()
    monkeypatch.setattr(metric_networks, "SYNCNET", dataclasses.replace(SYNCNET, sha256=digest))
    monkeypatch.setenv(SYNCNET.env_var, str(stand_in))
    network = syncnet_metric()
    assert not network.training and not any(parameter.requires_grad for parameter in network.parameters())
    loaded = network.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[key], state[key]) for key in state)


def test_offset_search_and_confidence_on_hand_made_embeddings():
    """Lip window i is audio window i - 3 (offset +3), all windows orthonormal, so every distance is known.

    At the true offset the 3 lip windows without audio meet the zero padding (distance 1) and the
    other 17 their own audio (0): LSE-D = 3/20. At any other offset a lip window meets padding
    (1) or another window (sqrt 2); the median of the 31 mean distances is the offset with 8
    padded windows: sqrt(2) - 8 (sqrt(2) - 1) / 20.
    """
    count, vshift = 20, 15
    basis = torch.eye(32)
    scores = lip_sync(basis[:count], basis[3 : count + 3], vshift)
    assert scores.offset == 3
    assert scores.distance == pytest.approx(3 / count, abs=1e-5)
    median = math.sqrt(2) - 8 * (math.sqrt(2) - 1) / count
    assert scores.confidence == pytest.approx(median - 3 / count, abs=1e-5)
    assert lip_sync(basis[3 : count + 3], basis[:count], vshift).offset == -3, "audio late: negative offset"


def test_mfcc_windows_per_video_frame():
    frames = 12
    waveform = np.random.default_rng(0).normal(scale=0.1, size=frames * 640).astype(np.float32)
    mfcc = syncnet_mfcc(waveform)
    assert mfcc.shape == (13, 4 * frames - 1) and mfcc.dtype == torch.float32  # 100 Hz, 25 ms frames
    count = window_count(frames, len(waveform))
    assert count == frames - 5 and window_count(frames, len(waveform) - 640) == frames - 6  # audio short: fewer
    network = SyncNet().eval()
    seen = []
    network.netcnnaud.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    assert network.audio_windows(mfcc, count).shape == (count, 1024)
    windows = torch.cat(seen)
    assert windows.shape == (count, 1, 13, 20)  # 20 MFCC frames per 5 video frames
    for i in range(count):
        assert torch.equal(windows[i, 0], mfcc[:, 4 * i : 4 * i + 20])


def test_syncnet_frames_are_run_pipelines_crop_in_bgr():
    pad, top, bottom, left, right = syncnet_crop(256)
    assert bottom - top == right - left  # square, as run_pipeline's crop
    frames = torch.zeros(2, 3, 256, 256)
    frames[:, 0] = 1.0  # pure red
    crops = syncnet_frames(frames)
    assert crops.shape == (2, 3, 224, 224)
    assert crops[0, :, 100, 112].tolist() == [0.0, 0.0, 255.0], "BGR, 0-255"
    assert bottom - pad > 256 and crops[0, :, -1, 112].tolist() == [110.0] * 3, "below the frame: run_pipeline's grey"
    windows = SyncNet().eval().lip_windows(torch.cat([crops, crops, crops[:1]]))
    assert windows.shape == (1, 1024)
