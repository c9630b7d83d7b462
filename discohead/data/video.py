"""Probing and decoding media with the ffmpeg binary that imageio-ffmpeg ships.

The machine may have no system ffmpeg (and imageio-ffmpeg ships no ffprobe), so probing
parses the stream report ffmpeg prints for its input. Decoding goes through ffmpeg-python
with ``cmd=`` pointing at the same binary, streaming raw frames so a long clip never has
to fit in memory at full resolution. A clip takes two ffmpeg runs: one that reports the
streams and decodes the audio, one that decodes the video.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ffmpeg
import imageio_ffmpeg
import numpy as np


class MediaError(Exception):
    """A file that cannot be used; ``reason`` is the short code recorded in the manifest."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


DECODER_THREADS = 1
"""Threads of each ffmpeg run. A clip worker holds one CPU (Ray's ``num_cpus=1``) and its
decoder must stay inside it: with ffmpeg's default of a thread per core, N workers on an
N-core node would start N² decoding threads and slow each other down."""


def ffmpeg_executable() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class MediaInfo:
    """What ``ffmpeg -i`` says about a file, with the display rotation already applied."""

    duration: float | None
    width: int = 0
    height: int = 0
    fps: float | None = None
    has_video: bool = False
    has_audio: bool = False
    audio_rate: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\d+:\d+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_FPS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:fps|tbr)")
_AUDIO = re.compile(r"Stream #\d+:\d+.*?: Audio: (\w+).*?, (\d+) Hz")
_OUTPUTS = re.compile(r"\n(?:Stream mapping:|Output #)")
_ROTATION = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")


def parse_ffmpeg_report(report: str) -> MediaInfo:
    """Parse the stderr of ``ffmpeg -hide_banner -i FILE`` into a :class:`MediaInfo`.

    Only the first video and the first audio stream of the input count, as those are
    what decoding picks by default; what ffmpeg says about its outputs is ignored.
    Raises :class:`MediaError` when ffmpeg did not recognise the file.
    """
    if "Input #0" not in report:
        last_line = report.strip().splitlines()[-1] if report.strip() else "no output"
        raise MediaError("not_a_video", f"ffmpeg cannot read it ({last_line.strip()})")
    report = _OUTPUTS.split(report, 1)[0]
    duration_match = _DURATION.search(report)
    duration = None
    if duration_match:
        hours, minutes, seconds = duration_match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    video = _VIDEO.search(report)
    audio = _AUDIO.search(report)
    width = height = 0
    fps = None
    if video:
        width, height = int(video.group(2)), int(video.group(3))
        video_line = report[video.start() : report.find("\n", video.start())]
        fps_match = _FPS.search(video_line)
        fps = float(fps_match.group(1)) if fps_match else None
        rotation = _ROTATION.search(report[video.start() :])
        if rotation and round(abs(float(rotation.group(1)))) % 180 == 90:
            width, height = height, width
    return MediaInfo(
        duration=duration,
        width=width,
        height=height,
        fps=fps,
        has_video=video is not None,
        has_audio=audio is not None,
        audio_rate=int(audio.group(2)) if audio else None,
        video_codec=video.group(1) if video else None,
        audio_codec=audio.group(1) if audio else None,
    )


def probe(path: str | Path) -> MediaInfo:
    """Describe a local media file, raising :class:`MediaError` for empty or unreadable ones."""
    return probe_and_decode_audio(path, None)[0]


def probe_and_decode_audio(
    path: str | Path, sample_rate: int | None, max_seconds: float | None = None
) -> tuple[MediaInfo, np.ndarray | None]:
    """Describe a local media file and decode its first audio stream, in one ffmpeg run.

    The waveform is mono float32 at ``sample_rate`` (``None`` when the file has no audio
    stream, or when ``sample_rate`` is ``None``: probe only), at most ``max_seconds``
    long, so a file too long to use is not decoded in full. One run instead of a probe
    and a decode saves an ffmpeg start per clip, which is a tenth of a short clip's
    decoding cost. Raises :class:`MediaError` for empty, unrecognised or undecodable files.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise MediaError("empty_file", "the file has zero bytes")
    stream = ffmpeg.input(str(path), threads=DECODER_THREADS)
    output_args: dict[str, object] = {"map": "0:a:0?", "format": "f32le", "ac": 1}
    if sample_rate is None:
        output_args["t"] = 0
    else:
        output_args["ar"] = sample_rate
        if max_seconds is not None:
            output_args["t"] = max_seconds + 1
    completed = subprocess.run(
        stream.output("pipe:", **output_args)
        .global_args("-hide_banner", "-nostdin", "-nostats")
        .compile(cmd=ffmpeg_executable()),
        capture_output=True,
        check=False,
    )
    report = completed.stderr.decode(errors="replace")
    info = parse_ffmpeg_report(report)
    if sample_rate is None or not info.has_audio:
        return info, None
    if completed.returncode != 0:
        message = report.strip().splitlines()
        raise MediaError("corrupt", f"audio could not be decoded ({message[-1] if message else 'unknown error'})")
    return info, np.frombuffer(completed.stdout, np.float32).copy()


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Even-sided frame size no larger than ``max_side`` that keeps the aspect ratio."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _drain(stream, sink: list[bytes]) -> None:
    for chunk in iter(lambda: stream.read(65536), b""):
        sink.append(chunk)


def iter_video_frames(path: str | Path, fps: float, width: int, height: int) -> Iterator[np.ndarray]:
    """Yield ``(height, width, 3)`` uint8 RGB frames resampled to ``fps``.

    ffmpeg's ``fps`` filter duplicates or drops frames so 30 fps or odd-rate sources come
    out on the target clock; the scale filter brings any frame to the requested size.
    Raises :class:`MediaError` when ffmpeg fails before producing a frame.
    """
    process = (
        ffmpeg.input(str(path), threads=DECODER_THREADS)
        .video.filter("fps", fps=fps)
        .filter("scale", width, height)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .global_args("-nostdin", "-v", "error", "-filter_threads", str(DECODER_THREADS))
        .run_async(cmd=ffmpeg_executable(), pipe_stdout=True, pipe_stderr=True)
    )
    errors: list[bytes] = []
    drainer = threading.Thread(target=_drain, args=(process.stderr, errors), daemon=True)
    drainer.start()
    frame_bytes = width * height * 3
    produced = 0
    try:
        while True:
            buffer = process.stdout.read(frame_bytes)
            if len(buffer) < frame_bytes:
                break
            produced += 1
            yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3)
    finally:
        process.stdout.close()
        process.wait()
        drainer.join()
    if produced == 0:
        message = b"".join(errors).decode(errors="replace").strip().splitlines()
        raise MediaError(
            "corrupt", f"no frame could be decoded ({message[-1] if message else 'ffmpeg gave no reason'})"
        )


def reconcile_lengths(
    num_frames: int, waveform: np.ndarray, fps: float, sample_rate: int, tolerance_s: float
) -> tuple[int, np.ndarray, str | None]:
    """Make the audio exactly as long as the video, trimming video where audio ends early.

    Within ``tolerance_s`` the audio is padded with silence or cut. If the audio ends
    more than that before the video, the frames after the audio's end are dropped (they
    would teach the model lips moving in silence) and a note says so.
    """
    audio_frames = int(np.floor(len(waveform) / sample_rate * fps + 1e-6))
    note = None
    if (num_frames - audio_frames) / fps > tolerance_s:
        audio_seconds = len(waveform) / sample_rate
        note = f"audio {audio_seconds:.2f}s shorter than video {num_frames / fps:.2f}s: video trimmed to the audio"
        num_frames = audio_frames
    expected_samples = int(round(num_frames / fps * sample_rate))
    if len(waveform) < expected_samples:
        waveform = np.pad(waveform, (0, expected_samples - len(waveform)))
    return num_frames, waveform[:expected_samples], note
