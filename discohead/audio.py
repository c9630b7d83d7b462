"""Speech features: the log-mel spectrogram of a clip and the 400 ms window per frame.

The preprocessing job computes :func:`log_mel_spectrogram` once per clip and cuts
:func:`frame_windows` from it; generation does the same on new audio. Both therefore
feed the model exactly the tensor it was trained on: ``(n_mels, window_frames)`` per
frame, natural-log mel energies, silence outside the clip.
"""

from __future__ import annotations

import torch
import torchaudio

from .contracts import FPS, MEL, MelSettings


def mel_transform(settings: MelSettings = MEL) -> torchaudio.transforms.MelSpectrogram:
    """The torchaudio transform behind :func:`log_mel_spectrogram`."""
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=settings.sample_rate,
        n_fft=settings.n_fft,
        win_length=settings.win_length,
        hop_length=settings.hop_length,
        f_min=settings.f_min,
        f_max=settings.f_max,
        n_mels=settings.n_mels,
        power=2.0,
        center=True,
    )


def log_mel_spectrogram(
    waveform: torch.Tensor,
    settings: MelSettings = MEL,
    transform: torchaudio.transforms.MelSpectrogram | None = None,
) -> torch.Tensor:
    """``(n_mels, frames)`` log-mel of a mono waveform, padded with half a window of silence.

    The padding makes every per-frame window of :func:`frame_windows` a plain slice,
    including those of the first and last frames of a clip (zero-padded audio, as the
    paper's centred 400 ms window requires).
    """
    if waveform.dim() != 1:
        raise ValueError(f"expected a mono waveform of shape (samples,), got {tuple(waveform.shape)}")
    half = settings.window_frames // 2 * settings.hop_length
    padded = torch.nn.functional.pad(waveform.float(), (half, half))
    transform = transform or mel_transform(settings)
    mel = transform(padded)
    return torch.log(mel.clamp_min(settings.log_floor))


def frame_windows(
    log_mel: torch.Tensor,
    num_frames: int,
    fps: float = FPS,
    settings: MelSettings = MEL,
    first: int = 0,
) -> torch.Tensor:
    """``(num_frames, n_mels, window_frames)``: the window centred on each video frame.

    Frame ``i`` is centred at ``(i + 0.5) / fps`` seconds; the frames are ``first`` to
    ``first + num_frames - 1``, so generation can cut the windows of one batch at a time.
    Windows reaching past the end of the audio are padded with the log-mel of silence.
    """
    width = settings.window_frames
    centres = (torch.arange(first, first + num_frames, dtype=torch.float64) + 0.5) / fps * settings.frames_per_second
    starts = torch.round(centres).long()
    needed = int(starts.max().item()) + width if num_frames else 0
    if needed > log_mel.shape[-1]:
        log_mel = torch.nn.functional.pad(log_mel, (0, needed - log_mel.shape[-1]), value=settings.silence)
    index = starts[:, None] + torch.arange(width)[None, :]
    return log_mel[:, index].permute(1, 0, 2).contiguous()


def clip_windows(
    waveform: torch.Tensor, num_frames: int, fps: float = FPS, settings: MelSettings = MEL
) -> torch.Tensor:
    """Per-frame log-mel windows straight from a mono waveform at ``settings.sample_rate``."""
    return frame_windows(log_mel_spectrogram(waveform, settings), num_frames, fps, settings)
