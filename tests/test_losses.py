import urllib.error

import pytest
import torch
import torchvision

from discohead import pretrained
from discohead.losses import VGG19_WEIGHTS_ENV, DisCoHeadLoss
from discohead.pretrained import PretrainedWeightsUnavailable


def test_l1_only_needs_no_pretrained_weights():
    loss = DisCoHeadLoss(perceptual_weight=0)
    prediction, target = torch.full((1, 3, 8, 8), 0.25), torch.full((1, 3, 8, 8), 0.75)
    terms = loss(prediction, target)
    assert set(terms) == {"l1", "total"}
    assert terms["total"].item() == pytest.approx(0.5)


def test_missing_explicit_vgg_file_is_reported():
    with pytest.raises(PretrainedWeightsUnavailable, match="weights not found at /nonexistent/vgg19.pth"):
        DisCoHeadLoss(perceptual_weight=1, vgg_weights_path="/nonexistent/vgg19.pth")


def test_offline_machine_is_told_which_file_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(VGG19_WEIGHTS_ENV, raising=False)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(pretrained.torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        DisCoHeadLoss(perceptual_weight=1)
    message = str(error.value)
    assert "vgg19-dcbb9e9d.pth" in message and VGG19_WEIGHTS_ENV in message and str(tmp_path) in message


def test_perceptual_term_uses_the_provided_weight_file(tmp_path, monkeypatch):
    # A stand-in file (these machines cannot download ImageNet weights) proves the
    # loading path and the loss's behaviour, not the quality of the features.
    torch.manual_seed(0)
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), path)
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
