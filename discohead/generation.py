"""Talking heads from a trained model: a source face driven by a head video, speech audio and an eye video.

Every input goes through the preprocessing job's own code with the settings recorded in the
model's checkpoint (the shards' :class:`~discohead.contracts.ClipConfig`: fps, crop, smoothing,
mel settings, eye boxes), so the model sees at generation exactly what it saw in training:

- the source (a still image, or the first frame of a video with a face) is face-cropped once;
- a head or eye video is tracked, its crop boxes smoothed over time as in preprocessing, and
  its crops written to a scratch file, so any frame can be read back (drivers shorter than
  the audio are played back and forth) while memory stays flat;
- the audio's log-mel spectrogram is computed once; each frame gets the 400 ms window around
  it, cut batch by batch.

Frames are generated in batches and piped to ffmpeg as they come, so memory does not grow with
the audio's length. The output is H.264 (yuv420p) at the contract's fps with the audio muxed
in, written under a temporary name and renamed when complete: a failed run leaves no file.
Defaults: without a head video the source's pose is held, without an eye video the source's
own eyes are kept; the mouth always follows the audio.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ffmpeg
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .audio import frame_windows, log_mel_spectrogram
from .contracts import ClipConfig, eye_box_from_landmarks, mask_to_eye_region
from .data.crop import crop_and_resize, crop_boxes, fill_missing, landmarks_to_crop
from .data.landmarks import BackendUnavailable, LandmarkBackend, load_landmark_backend, track_largest_face
from .data.video import (
    H264,
    MediaError,
    drain,
    ffmpeg_executable,
    iter_video_frames,
    probe,
    probe_and_decode_audio,
    scaled_size,
)
from .errors import UsageError
from .model import DisCoHead

SOURCE_SEARCH_SECONDS = 10.0
"""A video source is searched this far for its first frame with a face."""

FEATHER = 0.12
"""Width of the paste-back mask's soft edge, as a fraction of the face crop's side."""


# --- the model and the settings it was trained with ---------------------------------------


@dataclass
class Generator:
    """A trained model and the preprocessing settings of the shards it was trained on."""

    model: DisCoHead
    preprocessing: ClipConfig
    landmarks: str
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> Generator:
        """From a loaded checkpoint; its ``train_config`` says how its training data was preprocessed.

        A checkpoint written before the settings were recorded gets the preprocessing job's
        defaults at the model's size, and a note says so.
        """
        try:
            model = DisCoHead.from_checkpoint(checkpoint).eval()
        except ValueError as error:  # an unknown format version
            raise UsageError(str(error)) from None
        settings = dict((checkpoint.get("train_config") or {}).get("preprocessing") or {})
        notes = []
        landmarks = settings.pop("landmarks", "auto")
        settings.pop("synthetic", None)
        if settings:
            config = ClipConfig.from_json(settings)
        else:
            config = ClipConfig(image_size=model.config.image_size)
            notes.append("the checkpoint does not record its preprocessing settings: the defaults are used")
        if (model.config.n_mels, model.config.audio_frames) != (config.mel.n_mels, config.mel.window_frames):
            raise UsageError(
                f"the model takes {model.config.n_mels} x {model.config.audio_frames} mel windows but its recorded "
                f"settings make {config.mel.n_mels} x {config.mel.window_frames}: re-export the checkpoint"
            )
        if config.image_size != model.config.image_size:  # trained smaller than the shards: crop at the model's size
            config = dataclasses.replace(config, image_size=model.config.image_size)
        return cls(model, config, landmarks, notes)

    @property
    def size(self) -> int:
        return self.model.config.image_size


def landmark_backend(name: str) -> LandmarkBackend:
    """The landmark backend the training data was cropped with (``auto``: the first that loads)."""
    try:
        return load_landmark_backend(name)[0]
    except BackendUnavailable as error:
        raise UsageError(f"the landmark backend {name!r} the model was trained with does not load: {error}") from None


# --- inputs ------------------------------------------------------------------------------


def _check_file(path: str, flag: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    if file.stat().st_size == 0:
        raise UsageError(f"{flag} {path}: the file is empty; give a real image, video or audio file")
    if not os.access(file, os.R_OK):
        raise UsageError(f"{flag} {path}: the file cannot be read (check its permissions)")
    return file


def read_still(path: Path) -> np.ndarray | None:
    """An image file as ``(H, W, 3)`` uint8 RGB with its EXIF orientation applied; None if it is not an image."""
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError):
        return None


def _resized(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))


@dataclass
class SourceFace:
    """The source: its full frame (for pasting back), its face box in that frame, its crop, landmarks and eye box."""

    frame: np.ndarray
    box: np.ndarray
    crop: np.ndarray
    landmarks: np.ndarray
    eye_box: np.ndarray


def _face_in(frame: np.ndarray, config: ClipConfig, backend: LandmarkBackend) -> np.ndarray | None:
    """The largest face's 68 landmarks in ``frame`` pixels, detected on a copy at most ``detect_max_side``."""
    height, width = frame.shape[:2]
    detect_width, detect_height = scaled_size(width, height, config.detect_max_side)
    faces = backend.faces(_resized(frame, detect_width, detect_height))
    if not faces:
        return None
    return max(faces, key=lambda face: face.area).landmarks * (width / detect_width)


def source_face(path: str, config: ClipConfig, backend: LandmarkBackend) -> SourceFace:
    """Crop the source: an image, or the first frame of a video in which a face is found."""
    file = _check_file(path, "--source")
    still = read_still(file)
    decoding: Iterator[np.ndarray] | None = None
    if still is not None:
        width, height = scaled_size(still.shape[1], still.shape[0], config.max_frame_side)
        candidates: Iterator[np.ndarray] = iter([_resized(still, width, height)])
    else:
        info = _probe(file, "--source")
        if not info.has_video:
            raise UsageError(f"--source {path}: no picture in the file (audio only); give an image or a video")
        width, height = scaled_size(info.width, info.height, config.max_frame_side)
        decoding = iter_video_frames(file, config.fps, width, height)
        candidates = itertools.islice(decoding, int(SOURCE_SEARCH_SECONDS * config.fps))
    try:
        for frame in candidates:
            landmarks = _face_in(frame, config, backend)
            if landmarks is not None:
                box = crop_boxes(landmarks[None], width, height, 0.0, config.crop_scale, config.crop_lift)
                crop = crop_and_resize(frame, box[0], config.image_size)
                in_crop = landmarks_to_crop(landmarks[None], box, config.image_size)
                eye_box = eye_box_from_landmarks(torch.from_numpy(in_crop), config.image_size)[0].numpy()
                return SourceFace(frame.copy(), box[0], crop, in_crop[0], eye_box)
    except MediaError as error:
        raise UsageError(f"--source {path}: {error.detail}") from None
    finally:
        if decoding is not None:
            decoding.close()  # stops ffmpeg now, not when the generator is collected
    where = "the image" if still is not None else f"the first {SOURCE_SEARCH_SECONDS:g} s of the video"
    raise UsageError(f"--source {path}: no face found in {where}; give a picture with one clearly visible face")


def _probe(file: Path, flag: str):
    try:
        return probe(file)
    except MediaError as error:
        raise UsageError(f"{flag} {file}: {error.detail}; give a video or audio file ffmpeg can read") from None


@dataclass
class Speech:
    """The audio that drives the mouth: its log-mel spectrogram and the frames it lasts."""

    log_mel: torch.Tensor
    num_frames: int
    seconds: float


def read_speech(path: str, config: ClipConfig) -> Speech:
    """Decode the first audio stream of an audio or video file at the model's sample rate."""
    file = _check_file(path, "--audio")
    try:
        info, waveform = probe_and_decode_audio(file, config.mel.sample_rate)
    except MediaError as error:
        raise UsageError(f"--audio {path}: {error.detail}; give an audio or video file with speech") from None
    if waveform is None:
        raise UsageError(f"--audio {path}: the file has no audio stream; give an audio file or a video with sound")
    seconds = len(waveform) / config.mel.sample_rate
    num_frames = int(np.floor(seconds * config.fps + 1e-6))
    if num_frames < 1:
        raise UsageError(
            f"--audio {path}: {seconds * 1000:.0f} ms of audio is shorter than one frame ({1000 / config.fps:.0f} ms)"
        )
    return Speech(log_mel_spectrogram(torch.from_numpy(waveform), config.mel), num_frames, seconds)


class CropStore:
    """Face crops of a driver video in a scratch file, read back by frame index.

    Plain reads rather than a memory map: the pages stay in the page cache, not in this
    process's memory, so a long driver does not grow the generator's footprint.
    """

    def __init__(self, directory: str, size: int):
        self.path = Path(directory) / f"crops-{id(self)}.u8"
        self.frame_bytes = size * size * 3
        self.size = size
        self.count = 0
        self._handle = open(self.path, "w+b")  # noqa: SIM115 - closed by close()

    def append(self, crop: np.ndarray) -> None:
        self._handle.write(np.ascontiguousarray(crop, np.uint8).tobytes())
        self.count += 1

    def read(self, indices: np.ndarray) -> np.ndarray:
        self._handle.flush()
        frames = np.empty((len(indices), self.size, self.size, 3), np.uint8)
        for row, index in enumerate(indices):
            buffer = os.pread(self._handle.fileno(), self.frame_bytes, int(index) * self.frame_bytes)
            frames[row] = np.frombuffer(buffer, np.uint8).reshape(self.size, self.size, 3)
        return frames

    def close(self) -> None:
        self._handle.close()
        self.path.unlink(missing_ok=True)


@dataclass
class DriverVideo:
    """A tracked driver video: its crops (in a :class:`CropStore`) and eye box per frame."""

    crops: CropStore
    eye_boxes: np.ndarray

    def __len__(self) -> int:
        return self.crops.count

    def frames(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.crops.read(indices), self.eye_boxes[indices]


def track_driver(
    path: str, flag: str, config: ClipConfig, backend: LandmarkBackend, max_frames: int, scratch: str
) -> DriverVideo:
    """Track and crop a head or eye video as the preprocessing job does (two decoding passes, flat memory)."""
    file = _check_file(path, flag)
    info = _probe(file, flag)
    if not info.has_video:
        raise UsageError(f"{flag} {path}: the file has no video stream; give a video of a face")
    crop_width, crop_height = scaled_size(info.width, info.height, config.max_frame_side)
    detect_width, detect_height = scaled_size(info.width, info.height, config.detect_max_side)
    try:
        track = track_largest_face(
            itertools.islice(iter_video_frames(file, config.fps, detect_width, detect_height), max_frames),
            backend,
            scale=crop_width / detect_width,
            detect_every=config.detect_every,
        )
        missing = 1.0 - float(track.found.mean()) if len(track) else 1.0
        if missing > config.max_missing_face:
            raise UsageError(
                f"{flag} {path}: no face in {missing:.0%} of its frames (at most {config.max_missing_face:.0%}); "
                "give a video where one face is visible throughout"
            )
        count = len(track)
        landmarks = fill_missing(track.landmarks.reshape(count, -1)).reshape(count, 68, 2)
        boxes = crop_boxes(
            landmarks, crop_width, crop_height, config.smoothing_sigma, config.crop_scale, config.crop_lift
        )
        store = CropStore(scratch, config.image_size)
        for index, frame in enumerate(iter_video_frames(file, config.fps, crop_width, crop_height)):
            if index >= count:
                break
            store.append(crop_and_resize(frame, boxes[index], config.image_size))
    except MediaError as error:
        raise UsageError(f"{flag} {path}: {error.detail}") from None
    in_crop = landmarks_to_crop(landmarks[: store.count], boxes[: store.count], config.image_size)
    eye_boxes = eye_box_from_landmarks(torch.from_numpy(in_crop), config.image_size).numpy()
    return DriverVideo(store, eye_boxes)


def back_and_forth(frames: np.ndarray, length: int) -> np.ndarray:
    """Indices into a driver of ``length`` frames for output ``frames``: played forward, backward, forward..."""
    if length <= 1:
        return np.zeros_like(frames)
    period = 2 * length - 2
    phase = frames % period
    return np.where(phase < length, phase, period - phase)


# --- output ------------------------------------------------------------------------------


class Mp4Writer:
    """Frames piped to ffmpeg as they come: H.264 yuv420p at ``fps``, the audio muxed in, cut to ``seconds``.

    ffmpeg writes a temporary file beside ``output``; :meth:`close` renames it into place only
    when ffmpeg succeeded, and :meth:`abort` deletes it, so no partial mp4 is ever visible.
    """

    def __init__(self, output: Path, width: int, height: int, fps: float, audio: Path, seconds: float):
        self.output = output
        self.partial = output.with_name(f".{output.name}.partial-{os.getpid()}.mp4")
        video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", r=fps)
        sound = ffmpeg.input(str(audio))["a:0"]
        stream = ffmpeg.output(
            video,
            sound,
            str(self.partial),
            format="mp4",
            **H264,
            acodec="aac",
            audio_bitrate="128k",
            t=f"{seconds:.6f}",
            movflags="+faststart",
        )
        self.process = stream.global_args("-nostdin", "-v", "error", "-y").run_async(
            cmd=ffmpeg_executable(), pipe_stdin=True, pipe_stderr=True
        )
        self.errors: list[bytes] = []
        self.drainer = threading.Thread(target=drain, args=(self.process.stderr, self.errors), daemon=True)
        self.drainer.start()
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        try:
            self.process.stdin.write(np.ascontiguousarray(frames, np.uint8).tobytes())
        except BrokenPipeError:
            raise OSError(f"ffmpeg stopped while writing {self.output}: {self._error()}") from None
        self.frames += len(frames)

    def _error(self) -> str:
        self.drainer.join(timeout=5)
        lines = b"".join(self.errors).decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no message"

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        if self.process.wait() != 0:
            message = self._error()
            self.partial.unlink(missing_ok=True)
            raise OSError(f"ffmpeg could not write {self.output}: {message}")
        self.drainer.join()
        os.replace(self.partial, self.output)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        self.process.kill()
        self.process.wait()
        self.partial.unlink(missing_ok=True)


def check_output(path: str) -> Path:
    """An output path that can be written: an .mp4 in an existing, writable folder."""
    output = Path(path)
    if output.suffix.lower() != ".mp4":
        raise UsageError(f"--output {path}: give a file name ending in .mp4")
    folder = output.parent if str(output.parent) else Path(".")
    if output.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"--output {path}: cannot write there (create the folder or pick a writable one)")
    return output


def feather_mask(side: int, feather: float = FEATHER) -> np.ndarray:
    """``(side, side, 1)`` weights: 1 inside, easing to 0 at the square's border over ``feather * side`` pixels."""
    ramp = max(1.0, feather * side)
    distance = np.minimum(np.arange(side), np.arange(side)[::-1]) + 0.5
    edge = np.clip(distance / ramp, 0.0, 1.0)
    edge = edge * edge * (3 - 2 * edge)  # smoothstep: no visible seam where the ramp starts
    return np.minimum(edge[:, None], edge[None, :])[..., None].astype(np.float32)


def paste_back(frame: np.ndarray, faces: np.ndarray, box: np.ndarray) -> np.ndarray:
    """``faces`` (B, s, s, 3) resized into ``box`` of ``frame`` and blended with a feathered mask: (B, H, W, 3)."""
    x0, y0 = int(round(box[0])), int(round(box[1]))
    side = min(int(round(box[2] - box[0])), frame.shape[1] - x0, frame.shape[0] - y0)
    mask = feather_mask(side)
    region = frame[y0 : y0 + side, x0 : x0 + side].astype(np.float32)
    out = np.repeat(frame[None], len(faces), axis=0)
    for index, face in enumerate(faces):
        resized = np.asarray(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC), np.float32)
        out[index, y0 : y0 + side, x0 : x0 + side] = np.round(mask * resized + (1 - mask) * region).astype(np.uint8)
    return out


def mel_tiles(windows: torch.Tensor, size: int, silence: float) -> np.ndarray:
    """The audio windows drawn as ``(B, size, size, 3)`` grey images, low frequencies at the bottom."""
    values = windows.float().flip(1)
    scaled = ((values - silence) / (values.amax(dim=(1, 2), keepdim=True) - silence).clamp_min(1e-6)).clamp(0, 1)
    tiles = torch.nn.functional.interpolate(scaled[:, None], size=(size, size), mode="nearest")[:, 0]
    return (tiles[..., None].expand(-1, -1, -1, 3).numpy() * 255).round().astype(np.uint8)


# --- the generation loop -------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One video to generate; paths are local files."""

    source: str
    audio: str
    output: str
    head_video: str | None = None
    eye_video: str | None = None
    grid: bool = False
    paste_back: bool = False
    batch_size: int = 16
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.grid and self.paste_back:
            raise UsageError("--grid and --paste-back are two different layouts: give one")
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")


@dataclass
class Generated:
    """What was written: the output, its frames and size, and what the command should tell the user."""

    output: Path
    frames: int
    width: int
    height: int
    seconds: float
    notes: list[str]


def _to_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(frames, np.uint8)).to(device).permute(0, 3, 1, 2).float().div(255)


def _to_frames(images: torch.Tensor) -> np.ndarray:
    return images.float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _length_note(flag: str, frames: int, wanted: int, fps: float) -> str | None:
    if frames < wanted:
        return f"{flag} lasts {frames / fps:.2f} s, less than the audio's {wanted / fps:.2f} s: played back and forth"
    if frames > wanted:
        return f"{flag} lasts {frames / fps:.2f} s, more than the audio's {wanted / fps:.2f} s: trimmed"
    return None


def generate(
    generator: Generator,
    request: Request,
    backend: LandmarkBackend | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Generated:
    """Make ``request.output``; raises :class:`UsageError` (one line, nothing written) for bad input."""
    output = check_output(request.output)
    config = generator.preprocessing
    backend = backend or landmark_backend(generator.landmarks)
    device = torch.device(request.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {request.device}: this machine has no CUDA GPU; use --device cpu")
    model = generator.model.to(device)
    notes = list(generator.notes)

    speech = read_speech(request.audio, config)
    total = speech.num_frames
    source = source_face(request.source, config, backend)
    with tempfile.TemporaryDirectory(prefix="discohead-generate-") as scratch:
        drivers: dict[str, DriverVideo] = {}
        try:
            for flag, path in (("--head-video", request.head_video), ("--eye-video", request.eye_video)):
                if path:
                    drivers[flag] = track_driver(path, flag, config, backend, total, scratch)
                    note = _length_note(flag, len(drivers[flag]), total, config.fps)
                    if note:
                        notes.append(note)
            for note in notes:
                print(f"[generate] {note}", file=sys.stderr, flush=True)
            return _render(model, config, source, speech, drivers, request, output, device, notes, progress)
        finally:
            for driver in drivers.values():
                driver.crops.close()


def _render(
    model: DisCoHead,
    config: ClipConfig,
    source: SourceFace,
    speech: Speech,
    drivers: dict[str, DriverVideo],
    request: Request,
    output: Path,
    device: torch.device,
    notes: list[str],
    progress: Callable[[int, int], None] | None,
) -> Generated:
    size, total = config.image_size, speech.num_frames
    if request.paste_back:
        height, width = source.frame.shape[:2]
    elif request.grid:
        height, width = 2 * size, 4 * size
    else:
        height, width = size, size
    source_tensor = _to_tensor(source.crop[None], device)
    source_eyes = torch.from_numpy(source.eye_box[None]).to(device).float()
    silent = torch.full((1, config.mel.n_mels, config.mel.window_frames), config.mel.silence, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    writer = Mp4Writer(output, width, height, config.fps, Path(request.audio), total / config.fps)
    try:
        for first in range(0, total, request.batch_size):
            count = min(request.batch_size, total - first)
            indices = np.arange(first, first + count)
            sources = source_tensor.expand(count, -1, -1, -1)
            audio = frame_windows(speech.log_mel, count, config.fps, config.mel, first=first).to(device)
            if "--head-video" in drivers:
                head = drivers["--head-video"]
                heads = _to_tensor(head.frames(back_and_forth(indices, len(head)))[0], device)
            else:
                heads = sources
            eye_frames, eye_boxes = sources, source_eyes.expand(count, -1)
            if "--eye-video" in drivers:
                eye = drivers["--eye-video"]
                crops, boxes = eye.frames(back_and_forth(indices, len(eye)))
                eye_frames, eye_boxes = _to_tensor(crops, device), torch.from_numpy(boxes).to(device).float()
            with torch.no_grad(), autocast:
                if request.grid:  # head only | head + audio | head + audio + eyes, in one forward pass
                    predictions = model(
                        sources.repeat(3, 1, 1, 1),
                        heads.repeat(3, 1, 1, 1),
                        mask_to_eye_region(
                            torch.cat([sources, sources, eye_frames]),
                            torch.cat([source_eyes.expand(count, -1)] * 2 + [eye_boxes]),
                        ),
                        torch.cat([silent.expand(count, -1, -1), audio, audio]),
                    )["prediction"]
                else:
                    predictions = model(sources, heads, mask_to_eye_region(eye_frames, eye_boxes), audio)["prediction"]
            faces = _to_frames(predictions)
            if request.grid:
                top = [_to_frames(sources), _to_frames(heads), mel_tiles(audio.cpu(), size, config.mel.silence)]
                top.append(_to_frames(mask_to_eye_region(eye_frames, eye_boxes)))
                bottom = [_to_frames(sources), faces[:count], faces[count : 2 * count], faces[2 * count :]]
                frames = np.concatenate([np.concatenate(top, axis=2), np.concatenate(bottom, axis=2)], axis=1)
            elif request.paste_back:
                frames = paste_back(source.frame, faces, source.box)
            else:
                frames = faces
            writer.write(frames)
            if progress:
                progress(first + count, total)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return Generated(output, total, width, height, total / config.fps, notes)


class Progress:
    """``[generate] N/T frames, F frames/s, ETA`` on stderr, at most every ``every`` seconds and at the end."""

    def __init__(self, every: float = 2.0):
        self.every, self.started, self.last = every, time.perf_counter(), 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        eta = int((total - done) / max(rate, 1e-9))
        print(
            f"[generate] {done}/{total} frames, {rate:.1f} frames/s, ETA {eta // 60}:{eta % 60:02d}",
            file=sys.stderr,
            flush=True,
        )


# --- many videos: one row of a jobs CSV ------------------------------------------------------

JOB_COLUMNS = ("source", "audio", "head_video", "eye_video", "name")
"""Columns of a jobs CSV: ``source`` and ``audio`` required, the drivers optional, ``name`` the output's stem."""


def read_jobs(text: str, where: str) -> list[dict[str, str]]:
    """The rows of a jobs CSV, each with its row number and output name; one-line errors for a bad file."""
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or ())
    if not {"source", "audio"} <= columns or not columns <= set(JOB_COLUMNS):
        raise UsageError(
            f"{where}: the header must name source and audio, optionally head_video, eye_video and name "
            f"(it has: {', '.join(reader.fieldnames or ()) or 'nothing'})"
        )
    jobs = []
    for number, row in enumerate(reader, start=1):
        values = {column: (row.get(column) or "").strip() for column in JOB_COLUMNS}
        if not values["source"] or not values["audio"]:
            raise UsageError(f"{where}: row {number} has no source or no audio")
        stem = values["name"] or f"{Path(values['source']).stem}-{Path(values['audio']).stem}"
        jobs.append({**values, "row": str(number), "name": f"{number:05d}-{stem}" if not values["name"] else stem})
    if not jobs:
        raise UsageError(f"{where}: no rows")
    if len({job["name"] for job in jobs}) < len(jobs):
        raise UsageError(f"{where}: two rows have the same name; names must be unique")
    return jobs


def generate_job(
    generator: Generator,
    job: dict[str, str],
    dest: str,
    layout: dict[str, Any],
    storage_options: dict[str, Any] | None = None,
    backend: LandmarkBackend | None = None,
) -> dict[str, Any]:
    """One row: inputs fetched (local or s3://), the video made and published to ``DEST/NAME.mp4``.

    Never raises for a bad row: the result says ``ok`` or ``failed`` with the one-line reason,
    so one bad input does not stop the others.
    """
    from .data.sources import fetch_to_local
    from .storage import filesystem_for, publish_file

    started = time.perf_counter()
    result: dict[str, Any] = {"row": int(job["row"]), "name": job["name"], "status": "ok", "reason": "", "frames": 0}
    fs, root = filesystem_for(dest, storage_options)
    result["output"] = f"{dest.rstrip('/')}/{job['name']}.mp4"
    local: dict[str, str | None] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="discohead-job-") as scratch:
            for column in ("source", "audio", "head_video", "eye_video"):
                if not job.get(column):
                    local[column] = None
                    continue
                folder = Path(scratch) / column
                folder.mkdir()
                try:
                    local[column] = fetch_to_local(job[column], str(folder), storage_options)
                except (OSError, ValueError) as error:
                    raise UsageError(f"{column} {job[column]}: cannot be fetched ({error})") from None
            request = Request(
                source=local["source"] or "",
                audio=local["audio"] or "",
                output=str(Path(scratch) / f"{job['name']}.mp4"),
                head_video=local["head_video"],
                eye_video=local["eye_video"],
                **layout,
            )
            made = generate(generator, request, backend)
            publish_file(made.output, fs, f"{root}/{job['name']}.mp4")
            result["frames"] = made.frames
    except (UsageError, OSError) as error:
        reason = str(error)
        for column, path in local.items():  # name the inputs as the CSV does, not by their downloaded copies
            reason = reason.replace(path, job[column]) if path else reason
        result.update(status="failed", reason=reason.splitlines()[0] if reason else type(error).__name__)
        result["output"] = ""
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result
