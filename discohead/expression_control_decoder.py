"""Expression-control decoder (paper Eq. 11): mouth from audio, eyes from the eye driver.

The encoded source ``E`` passes six residual blocks whose convolutions are modulated,
StyleGAN2-style, by ``f_exp = concat(f_eye, f_audio)``, then three upsampling blocks
and a 7x7 convolution produce the frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DownBlock, UpBlock, downsample
from .config import AudioReadout, DisCoHeadConfig


class AudioEncoder(nn.Module):
    """Four 1-D convolutions, an LSTM and two FC layers over a ``(B, n_mels, T)`` log-mel window.

    ``readout="last"`` (the default, as the authors' release) reads a forward LSTM at its
    last step; at initialisation all of that embedding's sensitivity lies in the window's
    last 100 ms, 100-200 ms after the frame, and the frame's own sound counts for nothing.
    ``readout="centre"`` reads a bidirectional LSTM, half the channels each way, at the
    window's middle step: the video frame's own time, with the sound before it on one side
    and after it on the other (issue #19; docs/training.md has the measurements).
    """

    def __init__(self, n_mels: int, channels: int, embedding: int, readout: AudioReadout = "last") -> None:
        super().__init__()
        self.readout = readout
        layers: list[nn.Module] = []
        for in_channels in (n_mels, channels, channels, channels):
            layers += [nn.Conv1d(in_channels, channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        centre = readout == "centre"
        self.lstm = nn.LSTM(channels, channels // 2 if centre else channels, batch_first=True, bidirectional=centre)
        self.head = nn.Sequential(
            nn.Linear(channels, embedding), nn.ReLU(inplace=True), nn.Linear(embedding, embedding)
        )

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        sequence, _ = self.lstm(self.convs(log_mel).transpose(1, 2))
        step = sequence.shape[1] // 2 if self.readout == "centre" else -1
        return self.head(sequence[:, step])


class EyeEncoder(nn.Module):
    """Five downsampling blocks, global average pooling and two FC layers over the masked eye frame."""

    def __init__(self, channels: tuple[int, ...], embedding: int, input_scale: float, image_size: int) -> None:
        super().__init__()
        self.input_scale = input_scale
        # Five blocks take the 128-pixel input of a 256-pixel frame to 4x4; smaller frames
        # use fewer blocks so that the map never shrinks below one pixel.
        depth = min(len(channels), int(math.log2(image_size * input_scale)))
        channels = tuple(channels[:depth])
        widths = (3,) + channels
        self.down = nn.Sequential(*(DownBlock(i, o) for i, o in zip(widths[:-1], widths[1:])))
        hidden = max(channels[-1] // 2, embedding)
        self.head = nn.Sequential(nn.Linear(channels[-1], hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embedding))

    def forward(self, eye_frame: torch.Tensor) -> torch.Tensor:
        features = self.down(downsample(eye_frame, self.input_scale))
        return self.head(features.mean(dim=(2, 3)))


class ModulatedConv2d(nn.Module):
    """Convolution whose weights are modulated by a style and demodulated (StyleGAN2, Eq. 11).

    ``w'_ijk = s_i w_ijk / sqrt(sum_ik (s_i w_ijk)^2 + eps)``. Two exact ways to compute it:
    the default scales the input channels by ``s``, convolves with the shared ``w`` and
    scales each output channel by its demodulation factor (one dense convolution for the
    whole batch); ``fused=True`` builds each sample's weights and runs a grouped
    convolution, as the authors' release does.

    It runs in float32 even under autocast: the styles start at ``s = 1`` and the audio and
    eye codes move them by ~1e-3 early in training, while bfloat16's spacing near 1 is 0.008,
    so under bf16 autocast (CUDA training and generation) the controls had no effect at all
    until their weights grew by chance (issue #19). The cost is these convolutions in TF32
    instead of bf16 on a GPU (bench/gpu_check.py measures it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        fused: bool = False,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.style = nn.Linear(style_dim, in_channels)
        # Start unmodulated (s = 1), as the release does.
        nn.init.zeros_(self.style.weight)
        nn.init.ones_(self.style.bias)
        self.padding = kernel_size // 2
        self.fused = fused
        self.eps = eps

    def demodulation(self, style: torch.Tensor) -> torch.Tensor:
        """``(B, out)`` factors ``1 / sqrt(sum_ik (s_i w_ijk)^2 + eps)``."""
        squared_norms = self.weight.float().pow(2).sum(dim=(2, 3))
        return torch.rsqrt(style.float().pow(2) @ squared_norms.t() + self.eps)

    def demodulated_weight(self, style: torch.Tensor) -> torch.Tensor:
        """``(B, out, in, k, k)``: each sample's effective filters."""
        weight = self.weight[None] * style[:, None, :, None, None]
        return weight * self.demodulation(style)[:, :, None, None, None].to(weight.dtype)

    def forward(self, x: torch.Tensor, f_exp: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._modulated(x.float(), f_exp.float())

    def _modulated(self, x: torch.Tensor, f_exp: torch.Tensor) -> torch.Tensor:
        style = self.style(f_exp)
        if self.fused:
            batch, channels, height, width = x.shape
            weight = self.demodulated_weight(style).to(x.dtype)
            out = F.conv2d(
                x.reshape(1, batch * channels, height, width), weight.flatten(0, 1), padding=self.padding, groups=batch
            )
            out = out.view(batch, -1, height, width)
        else:
            out = F.conv2d(x * style[:, :, None, None].to(x.dtype), self.weight.to(x.dtype), padding=self.padding)
            out = out * self.demodulation(style)[:, :, None, None].to(out.dtype)
        return out + self.bias[None, :, None, None].to(out.dtype)


class ModulatedResidualBlock(nn.Module):
    """``x + conv(relu(bn(conv(relu(bn(x))))))`` with both convolutions modulated."""

    def __init__(self, channels: int, style_dim: int, fused: bool) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv1 = ModulatedConv2d(channels, channels, 3, style_dim, fused)
        self.norm2 = nn.BatchNorm2d(channels)
        self.conv2 = ModulatedConv2d(channels, channels, 3, style_dim, fused)

    def forward(self, x: torch.Tensor, f_exp: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)), f_exp)
        out = self.conv2(F.relu(self.norm2(out)), f_exp)
        return x + out


class ExpressionControlDecoder(nn.Module):
    def __init__(self, config: DisCoHeadConfig) -> None:
        super().__init__()
        self.audio_encoder = AudioEncoder(
            config.n_mels, config.audio_channels, config.audio_embedding, config.audio_readout
        )
        self.eye_encoder = EyeEncoder(
            config.eye_channels, config.eye_embedding, config.eye_input_scale, config.image_size
        )
        width = config.feature_channels
        self.residual_blocks = nn.ModuleList(
            ModulatedResidualBlock(width, config.style_dim, config.fused_modulation)
            for _ in range(config.residual_blocks)
        )
        widths = [width] + [config.encoder_channels * 2**i for i in reversed(range(config.encoder_depth))]
        self.up = nn.Sequential(*(UpBlock(i, o, mode="bilinear") for i, o in zip(widths[:-1], widths[1:])))
        self.output = nn.Conv2d(widths[-1], 3, kernel_size=7, padding=3)

    def expression_code(self, eye_driver: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``f_exp = concat(f_eye, f_audio)``."""
        return torch.cat([self.eye_encoder(eye_driver), self.audio_encoder(audio)], dim=1)

    def forward(self, encoded: torch.Tensor, eye_driver: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        f_exp = self.expression_code(eye_driver, audio)
        hidden = encoded
        for block in self.residual_blocks:
            hidden = block(hidden, f_exp)
        return torch.sigmoid(self.output(self.up(hidden)))
