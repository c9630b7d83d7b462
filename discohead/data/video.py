"""Probing and decoding media with the ffmpeg binary that imageio-ffmpeg ships.

The machine may have no system ffmpeg (and imageio-ffmpeg ships no ffprobe), so probing
parses the stream report ffmpeg prints for its input. Decoding goes through ffmpeg-python
with ``cmd=`` pointing at the same binary, streaming raw frames so a long clip never has
to fit in memory at full resolution. A clip takes two ffmpeg runs: one that reports the
streams and decodes the audio, one that decodes the video.

Input files are untrusted, so every run is fenced in: ffmpeg may only open them with the
media demuxers of :data:`MEDIA_FORMATS` through the ``file`` and ``pipe`` protocols (a
playlist or a concat script naming other files is refused, not followed), every run has a
timeout (:func:`ffmpeg_timeout`), and decoding can be bounded in seconds and in frames
for containers that report no duration (a raw .h264 stream is otherwise read to its end).
"""

from __future__ import annotations

import os
import re
import select
import stat
import subprocess
import threading
import time
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


MEDIA_FORMATS = (
    # video containers (mov also opens mp4 / m4a / 3gp; matroska also webm)
    "mov", "mp4", "m4a", "3gp", "matroska", "webm", "avi", "mpeg", "mpegts", "mpegvideo", "flv", "asf",
    "ogg", "nut", "mxf", "dv", "ivf", "yuv4mpegpipe",
    # raw elementary video streams
    "h264", "hevc", "m4v", "mjpeg",
    # audio
    "wav", "w64", "mp3", "flac", "aac", "ac3", "eac3", "aiff", "caf", "amr",
    # still images (generation decodes source frames with ffmpeg too)
    "image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "gif",
)  # fmt: skip
"""ffmpeg demuxers an input may be opened with (``-format_whitelist``). Anything else is
refused as ``not_a_video``: notably ``hls`` and ``dash`` playlists and ``concat`` scripts,
which name other files (or URLs) that ffmpeg would otherwise open and decode, and script
or device inputs (``avisynth``, ``lavfi``)."""

PROTOCOLS = "file,pipe"
"""The only protocols ffmpeg may use (``-protocol_whitelist``): no network, no ``subfile``
or ``concat:`` tricks, even from inside an allowed container."""

TIMEOUT_BASE_S = 60.0
TIMEOUT_PER_MEDIA_SECOND = 10.0
UNBOUNDED_MEDIA_SECONDS = 600.0
""":func:`ffmpeg_timeout` gives a run 60 s plus 10 s per second of media it may decode
(ten times slower than real time covers a single-threaded decode of 4K HEVC); a run with
no ``max_seconds`` is budgeted as ten minutes of media."""


H264 = {"vcodec": "libx264", "pix_fmt": "yuv420p", "preset": "veryfast", "crf": 18}
"""ffmpeg output options of every H.264 video the project writes (players everywhere read yuv420p)."""


def ffmpeg_executable() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_timeout(max_seconds: float | None = None) -> float:
    """Default timeout of one ffmpeg run that decodes at most ``max_seconds`` of media.

    Generous on purpose: it is there to end runs that hang (a stalled read, a decoder
    loop on a hostile file), not to judge slow machines.
    """
    seconds = UNBOUNDED_MEDIA_SECONDS if max_seconds is None else max_seconds
    return TIMEOUT_BASE_S + TIMEOUT_PER_MEDIA_SECOND * seconds


def _fenced_input(path: str | Path) -> ffmpeg.nodes.FilterableStream:
    """``ffmpeg -i path`` restricted to :data:`MEDIA_FORMATS` and :data:`PROTOCOLS`, one thread."""
    return ffmpeg.input(
        str(path),
        threads=DECODER_THREADS,
        format_whitelist=",".join(MEDIA_FORMATS),
        protocol_whitelist=PROTOCOLS,
    )


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
        raise MediaError("not_a_video", f"ffmpeg cannot read it as an accepted media format ({last_line.strip()})")
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


def probe(path: str | Path, *, timeout_s: float | None = None) -> MediaInfo:
    """Describe a local media file, raising :class:`MediaError` for empty or unreadable ones."""
    return probe_and_decode_audio(path, None, timeout_s=timeout_s)[0]


def probe_and_decode_audio(
    path: str | Path, sample_rate: int | None, max_seconds: float | None = None, *, timeout_s: float | None = None
) -> tuple[MediaInfo, np.ndarray | None]:
    """Describe a local media file and decode its first audio stream, in one ffmpeg run.

    The waveform is mono float32 at ``sample_rate`` (``None`` when the file has no audio
    stream, or when ``sample_rate`` is ``None``: probe only), at most ``max_seconds``
    long, so a file too long to use is not decoded in full. One run instead of a probe
    and a decode saves an ffmpeg start per clip, which is a tenth of a short clip's
    decoding cost. The run is killed after ``timeout_s`` (default
    :func:`ffmpeg_timeout` of ``max_seconds``). Raises :class:`MediaError` for empty,
    unrecognised (not a regular file, or not one of :data:`MEDIA_FORMATS`), undecodable
    or timed-out files.
    """
    path = Path(path)
    status = path.stat()
    if not stat.S_ISREG(status.st_mode):
        raise MediaError("not_a_video", "not a regular file (a pipe or a device cannot be decoded with a bound)")
    if status.st_size == 0:
        raise MediaError("empty_file", "the file has zero bytes")
    timeout_s = ffmpeg_timeout(max_seconds) if timeout_s is None else timeout_s
    output_args: dict[str, object] = {"map": "0:a:0?", "format": "f32le", "ac": 1}
    if sample_rate is None:
        output_args["t"] = 0
    else:
        output_args["ar"] = sample_rate
        if max_seconds is not None:
            output_args["t"] = max_seconds + 1
    try:
        completed = subprocess.run(
            _fenced_input(path)
            .output("pipe:", **output_args)
            .global_args("-hide_banner", "-nostdin", "-nostats")
            .compile(cmd=ffmpeg_executable()),
            capture_output=True,
            check=False,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise MediaError("timeout", f"ffmpeg did not finish reading the file within {timeout_s:g}s") from None
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


def drain(stream, sink: list[bytes]) -> None:
    """Read a pipe to its end into ``sink`` (in a thread), so ffmpeg never blocks on a full stderr."""
    for chunk in iter(lambda: stream.read(65536), b""):
        sink.append(chunk)


def iter_video_frames(
    path: str | Path,
    fps: float,
    width: int,
    height: int,
    *,
    max_seconds: float | None = None,
    max_frames: int | None = None,
    timeout_s: float | None = None,
) -> Iterator[np.ndarray]:
    """Yield ``(height, width, 3)`` uint8 RGB frames resampled to ``fps``.

    ffmpeg's ``fps`` filter duplicates or drops frames so 30 fps or odd-rate sources come
    out on the target clock; the scale filter brings any frame to the requested size.

    The decode is bounded whatever the container claims (a raw .h264 stream reports no
    duration at all): ffmpeg stops after ``max_seconds`` of output (``-t``), and at most
    ``max_frames`` frames are yielded; when the stream has more, :class:`MediaError`
    ``too_long`` is raised after the last one, so a caller records the cut instead of
    silently keeping a prefix. ``timeout_s`` (default :func:`ffmpeg_timeout` of
    ``max_seconds``) bounds the time spent waiting for ffmpeg, not the time the caller
    spends on each frame (landmark detection is slower than decoding); ffmpeg is killed
    and ``timeout`` raised when it runs out. Raises ``corrupt`` when ffmpeg fails before
    producing a frame.
    """
    timeout_s = ffmpeg_timeout(max_seconds) if timeout_s is None else timeout_s
    output_args: dict[str, object] = {"format": "rawvideo", "pix_fmt": "rgb24"}
    if max_seconds is not None:
        output_args["t"] = max_seconds
    process = (
        _fenced_input(path)
        .video.filter("fps", fps=fps)
        .filter("scale", width, height)
        .output("pipe:", **output_args)
        .global_args("-nostdin", "-v", "error", "-filter_threads", str(DECODER_THREADS))
        .run_async(cmd=ffmpeg_executable(), pipe_stdout=True, pipe_stderr=True)
    )
    errors: list[bytes] = []
    drainer = threading.Thread(target=drain, args=(process.stderr, errors), daemon=True)
    drainer.start()
    frame_bytes = width * height * 3
    produced = 0
    reader = _TimedReader(process.stdout.fileno(), timeout_s)
    ended = False
    try:
        while (buffer := reader.read_exactly(frame_bytes)) is not None:
            if max_frames is not None and produced >= max_frames:
                raise MediaError(
                    "too_long", f"the stream goes on past {max_frames} frames ({max_frames / fps:.1f}s at {fps:g} fps)"
                )
            produced += 1
            yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3)
        ended = True
    except TimeoutError:
        raise MediaError("timeout", f"ffmpeg took more than {timeout_s:g}s to decode {produced} frames") from None
    finally:
        if not ended:
            process.kill()  # left early: cut, timed out, or the caller stopped reading
        process.stdout.close()
        try:
            process.wait(timeout=max(1.0, timeout_s - reader.waited_s))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        drainer.join()
    if produced == 0:
        message = b"".join(errors).decode(errors="replace").strip().splitlines()
        raise MediaError(
            "corrupt", f"no frame could be decoded ({message[-1] if message else 'ffmpeg gave no reason'})"
        )


class _TimedReader:
    """Reads a pipe with a budget on the total time spent waiting for it to have data.

    The budget counts only waits, so a slow consumer (the landmark pass) never uses it up;
    it ends a producer that stalls or crawls. Reads go straight to the file descriptor
    (``poll`` cannot see bytes held in a Python buffer); ``poll`` rather than ``select``
    because a Ray worker can hold more than ``select``'s 1024 descriptors.
    """

    def __init__(self, fd: int, budget_s: float):
        self.fd = fd
        self.budget_s = budget_s
        self.waited_s = 0.0
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def read_exactly(self, size: int) -> bytearray | None:
        """``size`` bytes, or ``None`` at the end of the stream (a partial last frame is dropped)."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            started = time.monotonic()
            ready = self._poller.poll(max(0.0, self.budget_s - self.waited_s) * 1000)
            self.waited_s += time.monotonic() - started
            if not ready:
                raise TimeoutError
            count = os.readv(self.fd, [view[filled:]])
            if count == 0:
                return None
            filled += count
        return buffer


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
