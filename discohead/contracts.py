"""The contracts every stage shares: preprocessing, training, evaluation and generation.

Each number or convention here is defined once and imported everywhere, so that the
shards a preprocessing job writes are exactly what the model, the trainer and the
generator expect. Changing anything that alters the bytes of a shard bumps
``SHARD_FORMAT_VERSION``; changing the checkpoint layout bumps
``CHECKPOINT_FORMAT_VERSION``.

torch is imported inside the few functions that need it, so that processes which only
need the constants and the shard schema (Ray Data's shard write tasks, each in a fresh
worker) start without paying for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .flags import check_range

if TYPE_CHECKING:
    import torch

# --- video -------------------------------------------------------------------------

FPS = 25
"""Frames per second every clip is resampled to (the paper's datasets are 25 fps)."""

IMAGE_SIZE = 256
"""Side of the square face crop, in pixels (paper §3.2)."""

MAX_IMAGE_SIZE = 1024
"""Largest crop the jobs accept (4x the paper's). With :data:`MAX_CHUNK_FRAMES` it bounds a
shard sample's largest member, ``frames.npy`` (768 MiB at most), below the readers'
``discohead.data.shards.MAX_MEMBER_BYTES``."""

# --- audio -------------------------------------------------------------------------

SAMPLE_RATE = 16_000
"""Mono audio sample rate in Hz."""

AUDIO_WINDOW_MS = 400
"""Length of the speech window centred on each video frame (paper §3.2)."""


@dataclass(frozen=True)
class MelSettings:
    """Log-mel spectrogram settings shared by the preprocessing job and the model.

    With the defaults one mel frame is 10 ms, so the 400 ms window centred on a video
    frame is ``window_frames == 40`` mel frames of ``n_mels == 80`` bins: the model's
    audio input is a ``(B, 80, 40)`` tensor of natural-log mel energies.
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 55.0
    f_max: float = 7_600.0
    log_floor: float = 1e-5
    window_ms: int = AUDIO_WINDOW_MS

    def __post_init__(self) -> None:
        """Settings torchaudio and the model can use: refused here, as a flag error, rather than in every clip."""
        check_range("--sample-rate", self.sample_rate, 8_000, 192_000)
        check_range("--n-fft", self.n_fft, 16, 16_384)
        check_range("--win-length", self.win_length, 1, self.n_fft)
        check_range("--hop-length", self.hop_length, 1, self.win_length)
        check_range("--n-mels", self.n_mels, 1, self.n_fft // 2 + 1)
        check_range("--f-min", self.f_min, 0)
        check_range("--f-max", self.f_max, self.f_min, self.sample_rate / 2, above=True)
        check_range("--log-floor", self.log_floor, 0, above=True)
        check_range("--window-ms", self.window_ms, 1000 * self.hop_length / self.sample_rate, 10_000)

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def window_frames(self) -> int:
        """Mel frames in one audio window (40 with the defaults)."""
        return round(self.window_ms * self.sample_rate / (1000 * self.hop_length))

    @property
    def silence(self) -> float:
        """Log-mel value of a silent (all-zero) signal: the padding value at clip edges."""
        import math

        return math.log(self.log_floor)


MEL = MelSettings()

# --- eye region --------------------------------------------------------------------

EYE_LANDMARKS = tuple(range(17, 27)) + tuple(range(36, 48))
"""Indices into the 68-point (iBUG 300-W) landmark layout: both brows and both eyes."""

MOUTH_LANDMARKS = tuple(range(48, 68))
"""The outer and inner lips in the 68-point layout."""

EYE_BOX_MARGIN = 0.15
"""Fraction of the box's width added on each side (and of its height above and below)."""


def eye_box_from_landmarks(landmarks: torch.Tensor, image_size: int, margin: float = EYE_BOX_MARGIN) -> torch.Tensor:
    """Eye-region box ``(x0, y0, x1, y1)`` in [0, 1] crop coordinates from 68 landmarks.

    ``landmarks`` is ``(..., 68, 2)`` in pixels of an ``image_size`` square crop. The box
    is stored normalised so it stays valid when frames are resized on the fly.
    """
    return region_box(landmarks, EYE_LANDMARKS, image_size, margin)


def mouth_box_from_landmarks(landmarks: torch.Tensor, image_size: int, margin: float = EYE_BOX_MARGIN) -> torch.Tensor:
    """The mouth's box, made like the eye box (the evaluation's disentanglement measures use both)."""
    return region_box(landmarks, MOUTH_LANDMARKS, image_size, margin)


def region_box(landmarks: torch.Tensor, indices: tuple[int, ...], image_size: int, margin: float) -> torch.Tensor:
    """The box around ``landmarks[..., indices, :]``, widened by ``margin`` of its size on each side, in [0, 1]."""
    import torch

    points = landmarks[..., indices, :]
    low = points.amin(dim=-2)
    high = points.amax(dim=-2)
    pad = (high - low) * margin
    box = torch.cat([low - pad, high + pad], dim=-1) / image_size
    return box.clamp(0.0, 1.0)


def eye_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Binary ``(B, 1, H, W)`` mask that is 1 inside each ``(x0, y0, x1, y1)`` box.

    A pixel belongs to the box when its centre lies inside it, so the mask is the same
    whichever resolution the frame is rendered at.
    """
    import torch

    ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height
    xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    inside_x = (xs[None, None, :] >= x0) & (xs[None, None, :] <= x1)
    inside_y = (ys[None, :, None] >= y0) & (ys[None, :, None] <= y1)
    return (inside_x & inside_y).unsqueeze(1).to(boxes.dtype)


def mask_to_eye_region(frames: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The eye-driver input: ``frames`` (B, 3, H, W) blacked out outside their eye boxes."""
    return frames * eye_mask(boxes.to(frames.dtype), frames.shape[-2], frames.shape[-1])


# --- shards ------------------------------------------------------------------------

SHARD_FORMAT_VERSION = 1
"""Version of the sample schema below; readers refuse shards of another version."""

CHUNK_FRAMES = 50
"""Consecutive frames of one clip stored together in one shard sample (2 s at 25 fps)."""

MAX_CHUNK_FRAMES = 250
"""Most frames a shard sample may hold (10 s at 25 fps); see :data:`MAX_IMAGE_SIZE`."""


@dataclass(frozen=True)
class ShardSchema:
    """Keys of one WebDataset sample: a chunk of consecutive frames of one clip.

    A chunk lets training draw the source and the driver frame from the same clip.

    - ``frames.npy``: uint8 ``(T, H, W, 3)`` face crops, RGB.
    - ``mel.npy``: float16 ``(T, n_mels, window_frames)`` log-mel window per frame.
    - ``landmarks.npy``: float32 ``(T, 68, 2)`` landmarks in crop pixels.
    - ``eye_boxes.npy``: float32 ``(T, 4)`` eye boxes, see :func:`eye_box_from_landmarks`.
    - ``meta.json``: clip id, source, chunk index, first frame index, fps, image size,
      format version.
    """

    frames: str = "frames.npy"
    mel: str = "mel.npy"
    landmarks: str = "landmarks.npy"
    eye_boxes: str = "eye_boxes.npy"
    meta: str = "meta.json"


SHARD_KEYS = ShardSchema()

MANIFEST_NAME = "manifest.json"
STATS_NAME = "stats.json"
"""Dataset statistics (``discohead.data.curation.dataset_stats``), written just before the manifest."""
SPLITS = ("train", "test")

CROP_SCALE = 1.7
"""Crop side as a multiple of the landmarks' larger extent: the whole head with a margin."""

CROP_LIFT = 0.08
"""Fraction of the crop side the centre moves up from the landmarks' centre (brows to chin
leave out the forehead)."""


@dataclass(frozen=True)
class ClipConfig:
    """Settings that change the bytes of the shards (all of them go into the config hash).

    The preprocessing job's flags are generated from these fields and their defaults
    (``discohead.flags``), and the manifest records them, so the training job reads the
    image size and the mel settings of the shards it trains on from here.
    """

    fps: int = dataclasses.field(default=FPS, metadata={"help": "frames per second every clip is resampled to"})
    image_size: int = dataclasses.field(default=IMAGE_SIZE, metadata={"help": "side of the square face crop in pixels"})
    mel: MelSettings = MEL
    split_mode: str = dataclasses.field(
        default="clip",
        metadata={
            "choices": ("clip", "time"),
            "help": "clip: whole clips per split; time: start of each clip train, end test",
        },
    )
    train_ratio: float = dataclasses.field(
        default=0.8,
        metadata={"flag": "--split-ratio", "help": "fraction of clips (or of each clip's chunks) for train"},
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the by-clip split"})
    chunk_frames: int = dataclasses.field(
        default=CHUNK_FRAMES,
        metadata={"help": "consecutive frames per shard sample (and the granularity of --split-mode time)"},
    )
    allow_silent: bool = dataclasses.field(
        default=False, metadata={"help": "keep clips without an audio stream or with a silent track"}
    )
    max_missing_face: float = dataclasses.field(
        default=0.2, metadata={"help": "skip a clip when no face is found in more than this fraction of frames"}
    )
    max_seconds: float = dataclasses.field(
        default=10.0,
        metadata={"help": "longest segment: a longer shot is cut into even segments of at most this, each a clip"},
    )
    min_seconds: float = dataclasses.field(
        default=3.0,
        metadata={
            "help": "shortest segment kept when a video is cut (shorter shots are skipped as short_shot; an uncut "
            "video up to --max-seconds is kept whole)"
        },
    )
    max_video_seconds: float = dataclasses.field(
        default=4 * 3600.0, metadata={"help": "skip longer input files as too_long (bounds decoding time)"}
    )
    shot_threshold: float = dataclasses.field(
        default=8.0,
        metadata={
            "help": "a shot cut is a frame change this many times the change of the frames around it "
            "(PySceneDetect's AdaptiveDetector; 0: no cut detection)"
        },
    )
    min_face_size: float = dataclasses.field(
        default=64.0,
        metadata={"help": "skip a segment whose face crop is smaller than this many source pixels a side (small_face)"},
    )
    min_sharpness: float = dataclasses.field(
        default=5.0,
        metadata={
            "help": "skip a segment whose face crops' variance of the Laplacian (at 128 px) is below this (blurry)"
        },
    )
    max_jitter: float = dataclasses.field(
        default=0.2,
        metadata={"help": "skip a segment whose landmarks jump more than this fraction of the face size (jittery)"},
    )
    max_yaw: float = dataclasses.field(
        default=45.0,
        metadata={
            "help": "skip a segment whose head turns further left or right than this many degrees from facing the "
            "camera (head_pose; real talking-head samples reach 21)"
        },
    )
    max_pitch: float = dataclasses.field(
        default=30.0,
        metadata={
            "help": "skip a segment whose head tilts further up or down than this many degrees from facing the camera "
            "(head_pose; real talking-head samples reach 23)"
        },
    )
    max_identity_distance: float = dataclasses.field(
        default=0.6,
        metadata={
            "help": "split a segment where the dlib identity embeddings of its faces (one every 2 s, and the last "
            "frame) differ by more than this, on the frame where the person changes; dlib's same-person threshold "
            "is 0.6 (a part too short to store is skipped as identity_change); 0: not checked, which saves dlib's "
            "embeddings, about a third of the work on short segments"
        },
    )
    min_audio_dbfs: float = dataclasses.field(
        default=-45.0, metadata={"help": "skip a segment whose audio RMS is below this (quiet_audio)"}
    )
    max_clipping: float = dataclasses.field(
        default=0.02,
        metadata={"help": "skip a segment with more than this fraction of clipped samples (clipped_audio)"},
    )
    av_confidence: float = dataclasses.field(
        default=0.4,
        metadata={
            "help": "trust an audio-visual offset estimate (lip opening vs loudness) correlating at least this "
            "(real speech in sync measures 0.42-0.66, unrelated sound at most 0.31: docs/preprocessing.md)"
        },
    )
    av_margin: float = dataclasses.field(
        default=0.03,
        metadata={
            "help": "with --av-method lips: trust an offset only when its correlation beats every lag more than 2 "
            "frames away by at least this (two near-equal peaks: the offset is not known)"
        },
    )
    av_method: str = dataclasses.field(
        default="lips",
        metadata={
            "choices": ("lips", "syncnet"),
            "help": "how the audio-visual offset is estimated: lips (lip opening vs loudness, no weights) or syncnet "
            "(needs --syncnet-weights; its confidence is judged against --syncnet-confidence)",
        },
    )
    syncnet_confidence: float = dataclasses.field(
        default=3.0,
        metadata={"help": "with --av-method syncnet: trust its offset at this LSE-C or more (LatentSync's threshold)"},
    )
    max_av_shift: int = dataclasses.field(
        default=3,
        metadata={
            "help": "shift the audio to correct a trusted offset up to this many frames; skip larger (av_offset)"
        },
    )
    smoothing_sigma: float = dataclasses.field(
        default=2.0, metadata={"help": "temporal smoothing of the crop box, in frames"}
    )
    crop_scale: float = dataclasses.field(default=CROP_SCALE, metadata={"help": "crop side / landmarks' extent"})
    crop_lift: float = dataclasses.field(
        default=CROP_LIFT, metadata={"help": "upward shift of the crop centre, fraction of its side"}
    )
    detect_max_side: int = dataclasses.field(
        default=640, metadata={"help": "frames are shrunk to at most this for face detection"}
    )
    detect_every: int = dataclasses.field(
        default=5, metadata={"help": "run the face detector every N frames, track in between"}
    )
    max_frame_side: int = dataclasses.field(
        default=1920, metadata={"help": "larger frames are shrunk to this before cropping"}
    )
    audio_tolerance_s: float = dataclasses.field(
        default=0.2, metadata={"help": "audio and video lengths may differ by this much before a note"}
    )
    silence_dbfs: float = dataclasses.field(
        default=-60.0, metadata={"help": "audio below this RMS level counts as silent"}
    )

    def __post_init__(self) -> None:
        """Every setting in its range: refused as a flag error before Ray starts, not clip by clip in the workers."""
        if not 0.0 < self.train_ratio < 1.0:
            raise ValueError(f"--split-ratio must be between 0 and 1, not {self.train_ratio!r}")
        check_range("--image-size", self.image_size, 32, MAX_IMAGE_SIZE, multiple=8)  # 32: the model's smallest
        check_range("--fps", self.fps, 1, 120)
        check_range("--chunk-frames", self.chunk_frames, 1, MAX_CHUNK_FRAMES)
        check_range("--seed", self.seed, 0)
        check_range("--max-missing-face", self.max_missing_face, 0, 1)
        check_range("--max-video-seconds", self.max_video_seconds, 0, 24 * 3600, above=True)
        check_range("--max-seconds", self.max_seconds, self.chunk_frames / self.fps, self.max_video_seconds)
        check_range("--min-seconds", self.min_seconds, 0, self.max_seconds)
        check_range("--shot-threshold", self.shot_threshold, 0, 255)
        check_range("--min-face-size", self.min_face_size, 0, 16_384)
        check_range("--min-sharpness", self.min_sharpness, 0)
        check_range("--max-jitter", self.max_jitter, 0)
        check_range("--max-yaw", self.max_yaw, 0, 180)
        check_range("--max-pitch", self.max_pitch, 0, 90)
        check_range("--max-identity-distance", self.max_identity_distance, 0)
        check_range("--min-audio-dbfs", self.min_audio_dbfs, -240, 0)
        check_range("--max-clipping", self.max_clipping, 0, 1)
        check_range("--av-confidence", self.av_confidence, -1, 1)
        check_range("--av-margin", self.av_margin, 0, 2)
        check_range("--max-av-shift", self.max_av_shift, 0, 15)
        check_range("--syncnet-confidence", self.syncnet_confidence, 0, None)
        check_range("--smoothing-sigma", self.smoothing_sigma, 0, 1000)
        check_range("--crop-scale", self.crop_scale, 0, 10, above=True)
        check_range("--crop-lift", self.crop_lift, -0.5, 0.5)
        check_range("--detect-max-side", self.detect_max_side, 32, 16_384)
        check_range("--detect-every", self.detect_every, 1, 1000)
        check_range("--max-frame-side", self.max_frame_side, 32, 16_384)
        check_range("--audio-tolerance-s", self.audio_tolerance_s, 0, 3600)
        check_range("--silence-dbfs", self.silence_dbfs, -200, 0)

    def to_json(self) -> dict[str, Any]:
        config = dataclasses.asdict(self)
        config["format_version"] = SHARD_FORMAT_VERSION
        return config

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ClipConfig:
        values = {key: value for key, value in values.items() if key != "format_version"}
        if isinstance(values.get("mel"), dict):
            values["mel"] = MelSettings(**values["mel"])
        return cls(**values)


# --- checkpoints -------------------------------------------------------------------

CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_FILE = "discohead.pt"
"""One file per checkpoint: the model's ``{"format_version", "config", "model"}`` and, for a
training checkpoint, the :class:`TrainingState` and the run's training configuration."""


@dataclass
class TrainingState:
    """Where a training run stands; written into every checkpoint and read back to resume.

    ``batches_in_epoch`` counts the batches of the current pass already trained on, so a
    resumed worker replays the pass's data order up to there instead of repeating it.
    ``train_config`` is the run's whole training configuration (``TrainConfig.to_dict()``),
    which ``--resume`` starts from.
    """

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    optimizer: dict[str, Any] | None = None
    train_config: dict[str, Any] | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's keys for this state (not ``asdict``: it would deep-copy the optimizer)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> TrainingState:
        return cls(**{field.name: checkpoint.get(field.name, field.default) for field in dataclasses.fields(cls)})
