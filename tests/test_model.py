import pytest
import torch

from discohead import VARIANTS, DisCoHead, DisCoHeadConfig
from discohead.contracts import MEL
from discohead.head_motion_predictor import AffineMotion, TPSMotion


def inputs(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    frames = [torch.rand(batch, 3, size, size, generator=generator) for _ in range(3)]
    audio = torch.randn(batch, MEL.n_mels, MEL.window_frames, generator=generator)
    return (*frames, audio)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_backward_at_64px(variant):
    torch.manual_seed(0)
    model = DisCoHead.from_variant(variant, image_size=64)
    source, head_driver, eye_driver, audio = inputs(2, 64)
    out = model(source, head_driver, eye_driver, audio)
    prediction = out["prediction"]
    assert prediction.shape == (2, 3, 64, 64)
    assert 0 <= prediction.min().item() and prediction.max().item() <= 1
    assert out["transformed_source"].shape == (2, 3, 64, 64)
    assert ("flow" in out) == variant.endswith("-dm")
    if variant.endswith("-dm"):
        assert out["flow"].shape == (2, 8, 8, 2)
    expected_motion = AffineMotion if variant.startswith("affine") else TPSMotion
    assert isinstance(out["motion"], expected_motion)

    # The style layers start at weight 0 (unmodulated, as in the release), so the expression
    # encoders first receive gradient once one step has moved them.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.nn.functional.l1_loss(prediction, head_driver).backward()
    optimizer.step()
    optimizer.zero_grad()
    torch.nn.functional.l1_loss(model(source, head_driver, eye_driver, audio)["prediction"], head_driver).backward()
    decoder = model.expression_control_decoder
    for name, module in (
        ("audio encoder", decoder.audio_encoder),
        ("eye encoder", decoder.eye_encoder),
        ("head-motion predictor", model.head_motion_predictor),
    ):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), f"no gradient reaches the {name}"
        assert sum(g.abs().sum().item() for g in grads) > 0, f"zero gradient in the {name}"
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("size", [32, 64, 128, 256])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_train_step_at_each_image_size(variant, size):
    torch.manual_seed(0)
    narrow = (
        {}
        if size in (32, 64)
        else {"hourglass_max_channels": 64, "feature_channels": 64, "audio_channels": 32, "encoder_channels": 16}
    )
    model = DisCoHead.from_variant(variant, image_size=size, **narrow)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    source, head_driver, eye_driver, audio = inputs(2, size)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.l1_loss(model(source, head_driver, eye_driver, audio)["prediction"], head_driver)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_full_width_forward_at_256px():
    torch.manual_seed(0)
    model = DisCoHead.from_variant("affine-dm", image_size=256).eval()
    with torch.no_grad():
        out = model(*inputs(1, 256))
    assert out["prediction"].shape == (1, 3, 256, 256)
    assert out["flow"].shape == (1, 32, 32, 2)
    assert torch.isfinite(out["prediction"]).all()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_head_motion_is_identity_when_source_equals_driver(variant):
    torch.manual_seed(0)
    model = DisCoHead.from_variant(variant, image_size=64).eval()
    frame = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        motion = model.head_motion_predictor(frame, frame)
        grid = motion.sampling_grid(16, 16)
    identity = torch.eye(2, 3).expand(2, 2, 3)
    if isinstance(motion, AffineMotion):
        torch.testing.assert_close(motion.relative, identity, atol=1e-4, rtol=0)
    else:
        torch.testing.assert_close(motion.affine, identity, atol=1e-3, rtol=0)
        assert motion.weights.abs().max() < 1e-3
    from discohead.geometry import identity_grid

    torch.testing.assert_close(grid, identity_grid(2, 16, 16), atol=1e-3, rtol=0)


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DisCoHead.from_variant("tps-dm", image_size=64).eval()
    path = tmp_path / "model.pt"
    torch.save(model.checkpoint(step=3), path)
    restored = DisCoHead.from_checkpoint(path).eval()
    assert restored.config == model.config
    batch = inputs(2, 64, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(restored(*batch)["prediction"], model(*batch)["prediction"])


def test_checkpoint_of_another_format_version_is_refused():
    checkpoint = DisCoHead.from_variant("affine-nm", image_size=64).checkpoint()
    checkpoint["format_version"] = 999
    with pytest.raises(ValueError, match="format 999"):
        DisCoHead.from_checkpoint(checkpoint)


def test_unknown_variant_and_bad_shapes_are_explained():
    with pytest.raises(ValueError, match="unknown variant 'affine'; choose one of affine-dm"):
        DisCoHead.from_variant("affine")
    model = DisCoHead.from_variant("affine-nm", image_size=64)
    source, head_driver, eye_driver, audio = inputs(1, 64)
    with pytest.raises(ValueError, match=r"audio must be \(B, 80, 40\)"):
        model(source, head_driver, eye_driver, audio[:, :, :10])
    with pytest.raises(ValueError, match=r"source must be \(B, 3, 64, 64\)"):
        model(source[:, :, :32], head_driver, eye_driver, audio)


def test_config_round_trips_through_a_dict():
    config = DisCoHeadConfig.for_variant("tps-nm", image_size=128, eye_channels=(8, 8, 8, 8, 8))
    assert DisCoHeadConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="multiple of 8"):
        DisCoHeadConfig.for_variant("tps-nm", image_size=100)


def test_channels_last_layout_gives_the_same_prediction():
    torch.manual_seed(0)
    nhwc = DisCoHead.from_variant("affine-dm", image_size=64).eval()
    nchw = DisCoHead.from_variant("affine-dm", image_size=64, channels_last=False).eval()
    nchw.load_state_dict(nhwc.state_dict())
    assert nhwc.motion_aware_encoder.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    batch = inputs(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(*batch)["prediction"], nchw(*batch)["prediction"], atol=1e-5, rtol=1e-4)
