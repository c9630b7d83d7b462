import torch

from discohead.expression_control_decoder import AudioEncoder, EyeEncoder, ModulatedConv2d


def styled_conv(fused: bool = False) -> ModulatedConv2d:
    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 6, 3, style_dim=5, fused=fused)
    torch.nn.init.normal_(conv.style.weight)
    return conv


def test_every_demodulated_filter_has_unit_norm():
    conv = styled_conv()
    style = conv.style(torch.randn(4, 5))
    weight = conv.demodulated_weight(style)
    norms = weight.flatten(2).norm(dim=2)
    torch.testing.assert_close(norms, torch.ones(4, 6), atol=1e-5, rtol=0)


def test_fused_and_activation_scaling_modulation_agree():
    x, f_exp = torch.randn(3, 8, 10, 10), torch.randn(3, 5)
    unfused, fused = styled_conv(fused=False), styled_conv(fused=True)
    torch.testing.assert_close(unfused(x, f_exp), fused(x, f_exp), atol=1e-5, rtol=1e-5)


def test_modulation_starts_as_identity_style():
    conv = ModulatedConv2d(4, 4, 3, style_dim=7)
    torch.testing.assert_close(conv.style(torch.randn(2, 7)), torch.ones(2, 4))


def test_style_changes_the_output():
    conv = styled_conv()
    x = torch.randn(1, 8, 6, 6).expand(2, -1, -1, -1)
    out = conv(x, torch.randn(2, 5))
    assert not torch.allclose(out[0], out[1])


def test_audio_encoder_shapes():
    encoder = AudioEncoder(n_mels=80, channels=32, embedding=16)
    assert encoder(torch.randn(3, 80, 40)).shape == (3, 16)


def column_sensitivity(encoder: AudioEncoder, windows: torch.Tensor) -> torch.Tensor:
    """Share of the embedding's squared gradient that each window column (10 ms) receives."""
    windows = windows.clone().requires_grad_(True)
    embedding = encoder(windows)
    (gradient,) = torch.autograd.grad(embedding @ torch.randn(embedding.shape[1]), windows, torch.ones(len(windows)))
    per_column = gradient.pow(2).sum(dim=(0, 1))
    return per_column / per_column.sum()


def test_the_audio_embedding_reads_the_frames_own_sound():
    """At initialisation the centre readout hears the frame's ±40 ms; the release's last step hears the window's end."""
    torch.manual_seed(0)
    windows = torch.randn(16, 80, 40) * 4.7 - 5.4  # GRID's log-mel statistics
    centre = column_sensitivity(AudioEncoder(80, 16, 8, readout="centre"), windows)
    last = column_sensitivity(AudioEncoder(80, 16, 8, readout="last"), windows)
    assert centre[16:25].sum() > 0.9  # the frame's centre, column 20, ± 4 columns
    assert last[30:].sum() > 0.9 and last[16:25].sum() < 0.01  # 100-200 ms after the frame


def test_eye_encoder_shapes():
    encoder = EyeEncoder((8, 8, 8, 8, 8), embedding=4, input_scale=0.5, image_size=64)
    assert encoder(torch.rand(2, 3, 64, 64)).shape == (2, 4)
    small = EyeEncoder((8, 8, 8, 8, 8), embedding=4, input_scale=0.5, image_size=32)
    assert len(small.down) == 4 and small(torch.rand(2, 3, 32, 32)).shape == (2, 4)


def test_a_small_style_change_survives_bf16_autocast():
    """Early in training the codes move the styles by ~1e-3, under bfloat16's spacing near 1 (0.008):
    the modulated convolution runs in float32 under autocast, so that change reaches the output as in fp32."""
    torch.manual_seed(0)
    conv = ModulatedConv2d(16, 16, 3, style_dim=4)
    torch.nn.init.normal_(conv.style.weight, std=1e-3)
    x = torch.randn(1, 16, 8, 8).expand(2, -1, -1, -1)
    f_exp = torch.randn(2, 4)
    exact = conv(x, f_exp)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = conv(x, f_exp)
    assert autocast.dtype == torch.float32
    change, change_under_autocast = exact[1] - exact[0], autocast[1] - autocast[0]
    assert change.abs().mean() > 1e-4
    torch.testing.assert_close(change_under_autocast, change)
