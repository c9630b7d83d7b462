import dataclasses
import hashlib
import urllib.error

import pytest
import torch
import torchvision

from discohead import losses
from discohead.losses import VGG19, VGG19_WEIGHTS_ENV, DisCoHeadLoss
from discohead.pretrained import PretrainedWeightsUnavailable

UNPICKLED = []


def _unpickled() -> dict:
    UNPICKLED.append(True)
    return {}


class Payload:
    """What a hostile weights file carries: unpickling it runs ``_unpickled`` (any code, in a real attack)."""

    def __reduce__(self):
        return _unpickled, ()


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, no weights variable, and no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(VGG19_WEIGHTS_ENV, raising=False)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return tmp_path / "hub" / "checkpoints"


def test_l1_only_needs_no_pretrained_weights():
    loss = DisCoHeadLoss(perceptual_weight=0)
    prediction, target = torch.full((1, 3, 8, 8), 0.25), torch.full((1, 3, 8, 8), 0.75)
    terms = loss(prediction, target)
    assert set(terms) == {"l1", "total"}
    assert terms["total"].item() == pytest.approx(0.5)


def test_missing_explicit_vgg_file_is_reported(offline_hub):
    with pytest.raises(
        PretrainedWeightsUnavailable, match="vgg19-dcbb9e9d.pth .*/nonexistent/vgg19.pth does not exist"
    ):
        DisCoHeadLoss(perceptual_weight=1, vgg_weights_path="/nonexistent/vgg19.pth")


def test_offline_machine_is_told_which_file_to_provide(offline_hub):
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        DisCoHeadLoss(perceptual_weight=1)
    message = str(error.value)
    assert message.startswith("VGG-19 (perceptual loss) weights unavailable: provide vgg19-dcbb9e9d.pth")
    assert VGG19_WEIGHTS_ENV in message and str(offline_hub) in message


def test_the_download_is_hash_checked_and_never_unpickled(offline_hub, monkeypatch):
    """The download must name the hash prefix (torch hub refuses a mismatch before the file is
    used) and nothing downloaded is unpickled: ``load_state_dict_from_url`` did neither."""
    asked = []

    def download(url, destination, hash_prefix=None, progress=True):  # what torch hub does, without the network
        data = pickle_bytes(Payload())
        asked.append(hash_prefix)
        if hash_prefix and not hashlib.sha256(data).hexdigest().startswith(hash_prefix):
            raise RuntimeError(f'invalid hash value (expected "{hash_prefix}")')
        with open(destination, "wb") as handle:
            handle.write(data)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    UNPICKLED.clear()
    with pytest.raises(PretrainedWeightsUnavailable, match="vgg19-dcbb9e9d.pth"):
        DisCoHeadLoss(perceptual_weight=1)
    assert asked == ["dcbb9e9d"] and not UNPICKLED


def pickle_bytes(value) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_a_vgg_file_that_is_not_the_published_one_is_refused_and_none_is_unpickled(offline_hub, tmp_path, monkeypatch):
    # A stand-in under the real name (these machines cannot download ImageNet weights) is refused by its hash.
    stand_in = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), stand_in)
    monkeypatch.setenv(VGG19_WEIGHTS_ENV, str(stand_in))
    with pytest.raises(PretrainedWeightsUnavailable, match="not the published file"):
        DisCoHeadLoss(perceptual_weight=1)
    # Even a file whose hash is pinned is read as tensors only: a pickled object is refused, not run.
    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(pickle_bytes({"features.0.weight": Payload()}))
    digest = hashlib.sha256(hostile.read_bytes()).hexdigest()
    monkeypatch.setattr(losses, "VGG19", dataclasses.replace(VGG19, sha256=digest))
    UNPICKLED.clear()
    with pytest.raises(Exception, match="Weights only load failed"):
        DisCoHeadLoss(perceptual_weight=1, vgg_weights_path=str(hostile))
    assert not UNPICKLED


def test_perceptual_term_uses_the_provided_weight_file(offline_hub, tmp_path, monkeypatch):
    # A stand-in file with its own digest pinned proves the loading path and the loss's
    # behaviour, not the quality of the features.
    torch.manual_seed(0)
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), path)
    monkeypatch.setattr(
        losses, "VGG19", dataclasses.replace(VGG19, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    )
    monkeypatch.setenv(VGG19_WEIGHTS_ENV, str(path))
    loss = DisCoHeadLoss(perceptual_weight=2.0)
    target = torch.rand(1, 3, 32, 32)
    assert loss(target, target)["perceptual"].item() == 0.0
    prediction = torch.rand(1, 3, 32, 32, requires_grad=True)
    terms = loss(prediction, target)
    assert terms["total"].item() == pytest.approx(terms["l1"].item() + 2.0 * terms["perceptual"].item(), rel=1e-5)
    terms["total"].backward()
    assert prediction.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in loss.perceptual.parameters())
    loss.train()
    assert not loss.perceptual.vgg.training
