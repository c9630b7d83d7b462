"""Probing (ffmpeg stderr parsing), decoding and audio/video length reconciliation."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from discohead.data.video import (
    MediaError,
    ffmpeg_executable,
    ffmpeg_timeout,
    iter_video_frames,
    parse_ffmpeg_report,
    probe,
    probe_and_decode_audio,
    reconcile_lengths,
    scaled_size,
)

GRID_REPORT = """Input #0, mpeg, from 'bbaf2n.mpg':
  Duration: 00:00:02.98, start: 0.000000, bitrate: 1215 kb/s
  Stream #0:0[0x1e0]: Video: mpeg1video, yuv420p(tv, progressive), 360x288 [SAR 1:1 DAR 5:4], 104857 kb/s, 25 fps, 50 tbr, 90k tbn
  Stream #0:1[0x1c0]: Audio: mp2, 44100 Hz, stereo, s16p, 224 kb/s
At least one output file must be specified
"""

ROTATED_PHONE_REPORT = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'phone.mp4':
  Duration: 00:01:02.50, start: 0.000000, bitrate: 1688 kb/s
  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709), 1920x1080, 1684 kb/s, 29.97 fps, 29.97 tbr, 90k tbn (default)
    Side data:
      displaymatrix: rotation of -90.00 degrees
"""

AUDIO_ONLY_REPORT = """Input #0, wav, from 'speech.wav':
  Duration: 00:00:02.40, bitrate: 256 kb/s
  Stream #0:0: Audio: pcm_s16le ([1][0][0][0] / 0x0001), 16000 Hz, 1 channels, s16, 256 kb/s
"""


def test_parse_grid_report():
    info = parse_ffmpeg_report(GRID_REPORT)
    assert (info.width, info.height, info.fps, info.audio_rate) == (360, 288, 25.0, 44100)
    assert info.has_video and info.has_audio and info.duration == pytest.approx(2.98)


def test_parse_applies_display_rotation_and_odd_rate():
    info = parse_ffmpeg_report(ROTATED_PHONE_REPORT)
    assert (info.width, info.height) == (1080, 1920)
    assert info.fps == pytest.approx(29.97)
    assert info.duration == pytest.approx(62.5)
    assert not info.has_audio


def test_parse_audio_only():
    info = parse_ffmpeg_report(AUDIO_ONLY_REPORT)
    assert not info.has_video and info.has_audio and info.audio_rate == 16000


def test_parse_ignores_what_ffmpeg_says_about_its_outputs():
    report = (
        AUDIO_ONLY_REPORT
        + """Stream mapping:
  Stream #0:0 -> #0:0 (pcm_s16le (native) -> rawvideo (native))
Output #0, rawvideo, to 'pipe:':
  Stream #0:0: Video: rawvideo, rgb24, 64x48, 25 fps
"""
    )
    info = parse_ffmpeg_report(report)
    assert not info.has_video and (info.width, info.height) == (0, 0)


def test_parse_unrecognised_file():
    with pytest.raises(MediaError) as error:
        parse_ffmpeg_report("x.mp4: Invalid data found when processing input\n")
    assert error.value.reason == "not_a_video"


def test_probe_real_files(synthetic_media):
    info = probe(synthetic_media["fps30.mp4"])
    assert info.has_video and info.has_audio and info.fps == pytest.approx(30)
    with pytest.raises(MediaError, match="empty_file"):
        probe(synthetic_media["zero_bytes.mp4"])
    with pytest.raises(MediaError, match="not_a_video"):
        probe(synthetic_media["not_a_video.mp4"])


def test_one_run_describes_the_file_and_decodes_its_audio(synthetic_media):
    info, waveform = probe_and_decode_audio(synthetic_media["fps30.mp4"], 16000)
    assert info.has_video and info.fps == pytest.approx(30)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert len(waveform) == pytest.approx(info.duration * 16000, abs=0.05 * 16000)
    assert np.abs(waveform).max() > 0.01  # the synthetic speech tone, not silence

    bounded = probe_and_decode_audio(synthetic_media["fps30.mp4"], 16000, max_seconds=0.5)[1]
    assert len(bounded) == pytest.approx(1.5 * 16000, abs=0.05 * 16000)  # a too-long file is not decoded in full

    info, waveform = probe_and_decode_audio(synthetic_media["no_audio.mp4"], 16000)
    assert info.has_video and not info.has_audio and waveform is None

    info, waveform = probe_and_decode_audio(synthetic_media["audio_only.wav"], 16000)
    assert not info.has_video and len(waveform) > 0
    with pytest.raises(MediaError, match="not_a_video"):
        probe_and_decode_audio(synthetic_media["not_a_video.mp4"], 16000)


def test_decode_resamples_to_target_fps(synthetic_media):
    frames = list(iter_video_frames(synthetic_media["fps30.mp4"], 25, 96, 80))
    assert len(frames) == 60  # 2.4 s at 25 fps, whatever the source rate
    assert frames[0].shape == (80, 96, 3) and frames[0].dtype == np.uint8


def test_scaled_size_keeps_aspect_and_even_sides():
    assert scaled_size(360, 288, 640) == (360, 288)
    assert scaled_size(1080, 1920, 640) == (360, 640)
    assert all(side % 2 == 0 for side in scaled_size(721, 1279, 500))


def test_reconcile_pads_small_gaps_and_trims_video_to_short_audio():
    rate, fps = 16000, 25
    frames, audio, note = reconcile_lengths(75, np.ones(int(2.95 * rate), np.float32), fps, rate, tolerance_s=0.2)
    assert frames == 75 and len(audio) == 3 * rate and note is None and audio[-1] == 0
    frames, audio, note = reconcile_lengths(75, np.ones(2 * rate, np.float32), fps, rate, tolerance_s=0.2)
    assert frames == 50 and len(audio) == 2 * rate and "shorter" in note
    frames, audio, _ = reconcile_lengths(50, np.ones(5 * rate, np.float32), fps, rate, tolerance_s=0.2)
    assert len(audio) == 2 * rate


# --- bounds, timeouts and the format whitelist (issue 11, items 6 and 7) -------------


def ffmpeg_make(path: Path, *args: str) -> Path:
    """Write a test file with the bundled ffmpeg (unfenced: the inputs are its own generators)."""
    command = [ffmpeg_executable(), "-hide_banner", "-v", "error", "-y", *args, str(path)]
    subprocess.run(command, check=True, capture_output=True)
    return path


PICTURE = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=1"]
TONE = ["-f", "lavfi", "-i", "sine=frequency=440:duration=1"]
FORMATS = {
    # name: (ffmpeg arguments, has video, has audio)
    "clip.mp4": ([*PICTURE, *TONE, "-c:v", "libx264", "-c:a", "aac"], True, True),
    "clip.mov": ([*PICTURE, *TONE, "-c:v", "libx264", "-c:a", "aac"], True, True),
    "clip.mpg": ([*PICTURE, *TONE, "-c:v", "mpeg1video", "-c:a", "mp2"], True, True),
    "clip.webm": ([*PICTURE, *TONE, "-c:v", "libvpx", "-c:a", "libopus", "-deadline", "realtime"], True, True),
    "clip.mkv": ([*PICTURE, *TONE, "-c:v", "libx264", "-c:a", "flac"], True, True),
    "clip.avi": ([*PICTURE, *TONE, "-c:v", "mjpeg", "-c:a", "pcm_s16le"], True, True),
    "clip.ts": ([*PICTURE, *TONE, "-c:v", "libx264", "-c:a", "aac", "-f", "mpegts"], True, True),
    "clip.h264": ([*PICTURE, "-c:v", "libx264", "-f", "h264"], True, False),
    "speech.m4a": ([*TONE, "-c:a", "aac"], False, True),
    "speech.wav": ([*TONE], False, True),
    "speech.mp3": ([*TONE, "-c:a", "libmp3lame"], False, True),
    "speech.flac": ([*TONE], False, True),
    "speech.ogg": ([*TONE, "-c:a", "libvorbis"], False, True),
    "speech.aac": ([*TONE, "-c:a", "aac", "-f", "adts"], False, True),
    "face.png": ([*PICTURE, "-frames:v", "1"], True, False),
    "face.jpg": ([*PICTURE, "-frames:v", "1"], True, False),
}


@pytest.fixture(scope="module")
def media_formats(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("formats")
    return {name: ffmpeg_make(folder / name, *FORMATS[name][0]) for name in FORMATS}


@pytest.fixture(scope="module")
def raw_h264(tmp_path_factory) -> Path:
    """A raw H.264 stream: 3 s of video in a container that reports no duration at all."""
    return ffmpeg_make(
        tmp_path_factory.mktemp("raw") / "stream.h264",
        "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=3", "-c:v", "libx264", "-f", "h264",
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_accepted_format_still_probes_and_decodes(name, media_formats):
    """The whitelist must not lose a real format: containers, raw streams, audio, stills."""
    _, has_video, has_audio = FORMATS[name]
    info, waveform = probe_and_decode_audio(media_formats[name], 16000)
    assert (info.has_video, info.has_audio) == (has_video, has_audio)
    if has_audio:
        assert len(waveform) > 0.5 * 16000
    if has_video:
        assert len(list(iter_video_frames(media_formats[name], 25, 32, 24))) >= 1


def test_every_shared_sample_still_probes(shared_data):
    samples = sorted(path for path in shared_data.rglob("*") if path.is_file() and path.suffix != ".md")
    assert samples
    for path in samples:
        assert probe(path).has_video, path
        frames = iter_video_frames(path, 25, 64, 64)
        assert len(list(itertools.islice(frames, 3))) == 3, path
        frames.close()


def test_playlists_and_scripts_naming_other_files_are_not_followed(tmp_path, synthetic_media):
    """An HLS playlist or a concat script would make ffmpeg open (and decode) any file it names."""
    target = synthetic_media["good_a.mp4"]
    playlist = tmp_path / "evil.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.4,\n{target}\n#EXT-X-ENDLIST\n")
    script = tmp_path / "evil.ffconcat"
    script.write_text(f"ffconcat version 1.0\nfile '{target}'\n")
    for path in (playlist, script):
        with pytest.raises(MediaError, match="not_a_video"):
            probe(path)
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(MediaError, match="not_a_video"):
        probe_and_decode_audio(fifo, 16000)  # never opened: a pipe could block ffmpeg forever


def test_decoding_is_bounded_when_the_container_reports_no_duration(raw_h264):
    assert probe(raw_h264).duration is None
    assert len(list(iter_video_frames(raw_h264, 25, 64, 48))) == 75
    assert len(list(iter_video_frames(raw_h264, 25, 64, 48, max_seconds=1.0))) == 25  # ffmpeg -t
    frames = []
    with pytest.raises(MediaError, match="too_long"):
        for frame in iter_video_frames(raw_h264, 25, 64, 48, max_frames=10):
            frames.append(frame)
    assert len(frames) == 10  # the cap is reported, not silently kept as a prefix
    assert len(list(iter_video_frames(raw_h264, 25, 64, 48, max_frames=75))) == 75


def test_every_ffmpeg_run_has_a_timeout(synthetic_media):
    assert ffmpeg_timeout(600) == ffmpeg_timeout() == 60 + 10 * 600
    path = synthetic_media["good_a.mp4"]
    with pytest.raises(MediaError, match="timeout"):
        probe_and_decode_audio(path, 16000, timeout_s=0.001)
    with pytest.raises(MediaError, match="timeout"):
        list(iter_video_frames(path, 25, 64, 48, timeout_s=0.001))


def test_video_timeout_counts_only_the_wait_for_ffmpeg(synthetic_media):
    """A slow consumer (the landmark pass) must not use up the decoder's budget."""
    count = 0
    for _ in iter_video_frames(synthetic_media["good_a.mp4"], 25, 64, 48, timeout_s=1.0):
        time.sleep(0.05)
        count += 1
    assert count == 60  # 3 s of consuming under a 1 s budget
