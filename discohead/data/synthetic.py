"""Synthetic talking-head videos with sound, for demos and for tests without real data.

SYNTHETIC DATA: a drawn cartoon face (skin ellipse, hair, eyes that blink, a mouth that
opens with the loudness of a syllable-rate tone), gently swaying. It is not a person and
is useless for training a real model; it exists so the whole preprocessing job can run
end to end on any machine. The face is drawn 90 px tall and softly blurred, the size at which dlib's
HOG detector (which only finds faces of 80 px and up without upsampling) reliably
detects it, so the dlib backend works on these clips unchanged.
"""

from __future__ import annotations

import math
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .video import H264, ffmpeg_executable, probe

FACE_HEIGHT = 90
"""Drawn face height in pixels: large enough for dlib's detector at its native scale."""


@dataclass(frozen=True)
class SyntheticClip:
    """What to generate. ``audio_seconds`` None means as long as the video."""

    seconds: float = 2.4
    fps: float = 25
    width: int = 192
    height: int = 160
    sample_rate: int = 16_000
    faces: int = 1
    face_height: float = FACE_HEIGHT
    audio: str = "speech"
    audio_seconds: float | None = None
    seed: int = 0
    background: tuple[int, int, int] = (70, 90, 140)
    audio_delay: float = 0.0
    """Seconds the sound lags the mouth (negative: leads it): an out-of-sync recording."""


def speech_like_audio(seconds: float, sample_rate: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A voiced tone whose loudness rises and falls in syllables; returns (waveform, envelope).

    Syllables last 0.12-0.32 s (about 4 a second, as in speech) at random strengths, with
    the odd pause. Their lengths vary as real syllables do: a periodic envelope would look
    the same at a lag of one syllable, so an audio-visual offset could not be told apart
    from a whole number of syllables.
    """
    rng = np.random.default_rng(seed)
    count = int(round(seconds * sample_rate))
    t = np.arange(count) / sample_rate
    pieces, total = [], 0
    while total < count:
        if rng.random() < 0.15:  # a pause
            piece = np.zeros(int(rng.uniform(0.1, 0.4) * sample_rate))
        else:
            span = int(rng.uniform(0.12, 0.32) * sample_rate)
            piece = rng.uniform(0.8, 1.0) * np.sin(np.pi * np.arange(span) / span) ** 1.5
        pieces.append(piece)
        total += len(piece)
    envelope = np.concatenate(pieces)[:count]
    pitch = 140 + 40 * rng.random()
    tone = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in (1, 2, 3))
    return (0.3 * envelope * tone).astype(np.float32), envelope.astype(np.float32)


def draw_face(
    draw: ImageDraw.ImageDraw, centre_x: float, centre_y: float, height: float, mouth_open: float, eyes_open: float
) -> None:
    """A frontal cartoon face whose proportions dlib's detector accepts."""
    width = height * 0.78
    skin, hair, dark = (225, 180, 150), (60, 40, 30), (40, 30, 30)
    draw.ellipse(
        [centre_x - width * 0.55, centre_y - height * 0.525, centre_x + width * 0.55, centre_y + height * 0.5],
        fill=skin,
    )
    draw.chord(
        [centre_x - width * 0.575, centre_y - height * 0.575, centre_x + width * 0.575, centre_y + height * 0.1],
        180,
        360,
        fill=hair,
    )
    draw.ellipse(
        [centre_x - width * 0.55, centre_y - height * 0.375, centre_x + width * 0.55, centre_y + height * 0.5],
        fill=skin,
    )
    eye_y = centre_y - height * 0.08
    for side in (-1, 1):
        eye_x = centre_x + side * width * 0.22
        half_height = height * 0.04 * max(eyes_open, 0.15)
        draw.ellipse(
            [eye_x - width * 0.11, eye_y - half_height, eye_x + width * 0.11, eye_y + half_height], fill=(250, 250, 250)
        )
        draw.ellipse(
            [eye_x - width * 0.045, eye_y - half_height, eye_x + width * 0.045, eye_y + half_height], fill=dark
        )
        draw.line(
            [eye_x - width * 0.14, eye_y - height * 0.11, eye_x + width * 0.14, eye_y - height * 0.12],
            fill=hair,
            width=max(2, int(width / 25)),
        )
    draw.polygon(
        [
            (centre_x, eye_y + height * 0.02),
            (centre_x - width * 0.08, centre_y + height * 0.14),
            (centre_x + width * 0.08, centre_y + height * 0.14),
        ],
        fill=(200, 150, 125),
    )
    mouth_y, mouth_half_width = centre_y + height * 0.27, width * 0.24
    mouth_half_height = height * (0.02 + 0.05 * mouth_open)
    draw.ellipse(
        [
            centre_x - mouth_half_width,
            mouth_y - mouth_half_height,
            centre_x + mouth_half_width,
            mouth_y + mouth_half_height,
        ],
        fill=(120, 40, 50),
    )


def render_frames(clip: SyntheticClip, envelope: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames: faces sway, blink, and open their mouths with ``envelope``."""
    rng = np.random.default_rng(clip.seed + 1)
    count = int(round(clip.seconds * clip.fps))
    frames = np.empty((count, clip.height, clip.width, 3), np.uint8)
    per_frame = len(envelope) / max(count, 1)
    blink_frames = set(rng.choice(count, size=max(1, count // 40), replace=False).tolist()) if count else set()
    for index in range(count):
        image = Image.new("RGB", (clip.width, clip.height), clip.background)
        draw = ImageDraw.Draw(image)
        start = int(index * per_frame)
        mouth = float(envelope[start : int((index + 1) * per_frame) + 1].mean()) if len(envelope) else 0.0
        sway = math.sin(2 * math.pi * 0.4 * index / clip.fps)
        for face in range(clip.faces):
            offset = (face - (clip.faces - 1) / 2) * clip.width / max(clip.faces, 1)
            size = clip.face_height * (1.0 if face == 0 else 0.8)  # one face clearly the largest
            motion = 4 * sway * clip.face_height / FACE_HEIGHT
            draw_face(
                draw,
                clip.width / 2 + offset + motion,
                clip.height / 2 + motion / 2,
                size,
                mouth,
                0.1 if index in blink_frames else 1.0,
            )
        frames[index] = np.asarray(image.filter(ImageFilter.GaussianBlur(2.0 * clip.face_height / FACE_HEIGHT)))
    return frames


def write_wav(path: str | Path, waveform: np.ndarray, sample_rate: int) -> None:
    """16-bit mono WAV (the standard library is enough; no extra dependency)."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes((np.clip(waveform, -1, 1) * 32767).astype("<i2").tobytes())


def write_synthetic_video(path: str | Path, clip: SyntheticClip = SyntheticClip()) -> Path:
    """Encode a synthetic clip as H.264/AAC MP4 (or a WAV when ``path`` ends in .wav, audio only).

    ``clip.audio`` is ``"speech"`` (tone with syllable envelope), ``"silent"`` (digital
    silence track) or ``"none"`` (no audio stream at all).
    """
    path = Path(path)
    audio_seconds = clip.seconds if clip.audio_seconds is None else clip.audio_seconds
    waveform, envelope = speech_like_audio(audio_seconds, clip.sample_rate, clip.seed)
    if clip.audio == "silent":
        waveform = np.zeros_like(waveform)
    if path.suffix == ".wav":
        write_wav(path, waveform, clip.sample_rate)
        return path
    if audio_seconds < clip.seconds:
        envelope = np.pad(envelope, (0, int(round((clip.seconds - audio_seconds) * clip.sample_rate))))
    frames = render_frames(clip, envelope)
    if clip.audio_delay:
        shift = int(round(clip.audio_delay * clip.sample_rate))
        moved = np.zeros_like(waveform)
        if shift > 0:
            moved[shift:] = waveform[:-shift]
        else:
            moved[:shift] = waveform[-shift:]
        waveform = moved
    video = ffmpeg.input(
        "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{clip.width}x{clip.height}", framerate=clip.fps
    )
    with tempfile.TemporaryDirectory() as scratch:
        streams = [video]
        audio_options = {}
        if clip.audio != "none":
            wav = Path(scratch) / "audio.wav"
            write_wav(wav, waveform, clip.sample_rate)
            streams.append(ffmpeg.input(str(wav)))
            audio_options = {"acodec": "aac", "ar": 44_100}
        (
            ffmpeg.output(
                *streams,
                str(path),
                **H264,
                movflags="+faststart",
                **audio_options,
            )
            .global_args("-nostdin", "-v", "error")
            .overwrite_output()
            .run(cmd=ffmpeg_executable(), input=frames.tobytes(), capture_stdout=True, capture_stderr=True)
        )
    return path


def write_cut_video(path: str | Path, clips: list[SyntheticClip], folder: str | Path) -> tuple[Path, list[float]]:
    """Synthetic clips joined with hard cuts into one video (their frame size and fps must agree).

    Returns the path and the times (seconds) where each clip after the first starts: the
    true cut times a shot detector is checked against.
    """
    parts = [write_synthetic_video(Path(folder) / f"part{index}.mp4", clip) for index, clip in enumerate(clips)]
    join_videos(parts, path)
    starts = np.cumsum([round(clip.seconds * clip.fps) / clip.fps for clip in clips])[:-1]
    return Path(path), [float(start) for start in starts]


def join_videos(
    parts: list[Path],
    path: str | Path,
    size: tuple[int, int] | None = None,
    audio_delays: dict[int, float] | None = None,
) -> Path:
    """Videos with audio joined end to end with hard cuts, as H.264/AAC.

    Parts must share a frame size unless ``size`` (width, height) is given: each is then
    scaled to fit inside it and padded with black, as a compilation of footage would be.
    ``audio_delays`` maps a part's index to seconds its sound is made late by (silence
    before, trimmed to its length after), for testing the audio-visual offset.
    """
    streams = []
    for index, part in enumerate(parts):
        source = ffmpeg.input(str(part))
        video, audio = source.video, source.audio
        if size is not None:
            width, height = size
            video = video.filter("scale", width, height, force_original_aspect_ratio="decrease")
            video = video.filter("pad", width, height, "(ow-iw)/2", "(oh-ih)/2").filter("setsar", 1)
        delay = (audio_delays or {}).get(index, 0.0)
        if delay:
            audio = audio.filter("adelay", delays=int(round(delay * 1000)), all=1)
            audio = audio.filter("atrim", end=probe(part).duration)
        streams += [video, audio]
    joined = ffmpeg.concat(*streams, v=1, a=1).node
    (
        ffmpeg.output(joined[0], joined[1], str(path), **H264, acodec="aac")
        .global_args("-nostdin", "-v", "error")
        .overwrite_output()
        .run(cmd=ffmpeg_executable(), capture_stdout=True, capture_stderr=True)
    )
    return Path(path)


def cartoon_chunks(seeds: range, image_size: int, seconds: float = 4.0) -> list[dict[str, np.ndarray]]:
    """Training chunks of cartoon talking faces (mouths that open with the loudness of speech-like audio), cropped
    as the preprocessing job would: one box per clip (they barely move), dlib landmarks, 50-frame chunks.

    What the generation tests and the mouth benchmark train a tiny model on (``bench/bench_mouth.py``).
    """
    import torch

    from ..audio import clip_windows
    from ..contracts import FPS, eye_box_from_landmarks
    from .crop import crop_and_resize, crop_boxes, landmarks_to_crop
    from .landmarks import DlibLandmarks

    backend = DlibLandmarks()
    chunks = []
    for seed in seeds:
        clip = SyntheticClip(seconds=seconds, seed=seed)
        waveform, envelope = speech_like_audio(seconds, clip.sample_rate, seed)
        frames = render_frames(clip, envelope)
        landmarks = max(backend.faces(frames[0]), key=lambda face: face.area).landmarks[None]
        box = crop_boxes(landmarks, clip.width, clip.height, 0.0)
        crops = np.stack([crop_and_resize(frame, box[0], image_size) for frame in frames])
        in_crop = torch.from_numpy(landmarks_to_crop(landmarks, box, image_size))
        eye_box = eye_box_from_landmarks(in_crop, image_size).numpy()
        mel = clip_windows(torch.from_numpy(waveform), len(frames), FPS).numpy()
        for first in range(0, len(frames) - 49, 50):
            part = slice(first, first + 50)
            chunks.append(
                {
                    "key": f"cartoon-{seed}-{first}",
                    "frames": crops[part],
                    "mel": mel[part].astype(np.float16),
                    "eye_boxes": np.repeat(eye_box, 50, axis=0),
                }
            )
    return chunks
