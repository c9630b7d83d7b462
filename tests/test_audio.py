import pytest
import torch

from discohead.audio import clip_windows, frame_windows, log_mel_spectrogram
from discohead.contracts import FPS, MEL


def test_window_shape_matches_the_model_input():
    windows = clip_windows(torch.randn(MEL.sample_rate * 2), num_frames=2 * FPS)
    assert windows.shape == (2 * FPS, MEL.n_mels, MEL.window_frames) == (50, 80, 40)


def test_window_is_centred_on_its_frame():
    # A click at the centre of frame 10 sits in the middle of frame 10's window.
    waveform = torch.zeros(MEL.sample_rate)
    centre = int((10 + 0.5) / FPS * MEL.sample_rate)
    waveform[centre : centre + 40] = 1.0
    windows = clip_windows(waveform, num_frames=FPS)
    energy = windows[10].exp().sum(0)
    peak = int(energy.argmax())
    assert abs(peak - MEL.window_frames // 2) <= 1


def test_edges_are_padded_with_silence():
    windows = clip_windows(torch.randn(MEL.sample_rate), num_frames=FPS)
    assert windows[0, :, 0].max().item() == pytest.approx(MEL.silence)
    assert windows[-1, :, -1].max().item() == pytest.approx(MEL.silence)


def test_audio_shorter_than_video_is_padded_with_silence():
    log_mel = log_mel_spectrogram(torch.randn(MEL.sample_rate // 2))
    windows = frame_windows(log_mel, num_frames=FPS)
    assert windows.shape[0] == FPS
    assert windows[-1].max().item() == pytest.approx(MEL.silence)
