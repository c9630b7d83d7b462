"""One configuration object per DisCoHead variant.

The four variants of the paper differ in two choices (Table 1): how the head motion is
modelled (``affine`` or ``tps``) and how the encoder fuses the transformed source
(``dense-motion``: warp the features with a predicted mix of the motion field and the
identity; ``neural-mix``: no warp, the encoder mixes ``S`` and ``S_T`` itself). Widths
default to the authors' released affine-DM model; they can be overridden for small
experiments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .contracts import IMAGE_SIZE, MEL

Motion = Literal["affine", "tps"]
Fusion = Literal["dense-motion", "neural-mix"]
AudioReadout = Literal["centre", "last"]


@dataclass(frozen=True)
class DisCoHeadConfig:
    """Every hyper-parameter of one model; saved with each checkpoint."""

    variant: str
    motion: Motion
    fusion: Fusion
    image_size: int = IMAGE_SIZE

    # Head-motion predictor, affine: an hourglass on the anti-aliased 1/4 frame.
    motion_input_scale: float = 0.25
    hourglass_channels: int = 32
    hourglass_max_channels: int = 1024
    hourglass_depth: int = 5
    heatmap_temperature: float = 0.1
    affine_scale: bool = True
    """Keep ``Sigma^1/2`` in ``A = [U Sigma^1/2, t]``; ``False`` is rotation only (GRID)."""

    # Head-motion predictor, TPS: a ResNet-18 regressing keypoints on the full frame.
    tps_keypoints: int = 10
    tps_input_scale: float = 1.0
    tps_regularization: float = 1e-6

    # Motion-aware encoder.
    encoder_channels: int = 64
    encoder_depth: int = 3
    feature_channels: int = 512

    # Expression-control decoder.
    n_mels: int = MEL.n_mels
    audio_frames: int = MEL.window_frames
    audio_channels: int = 512
    audio_embedding: int = 256
    audio_readout: AudioReadout = "last"
    """``last``: the release's forward LSTM read at the window's end, 200 ms after the frame;
    ``centre``: a bidirectional LSTM read at the frame's own time (issue #19: measured at
    initialisation, not yet by training; bench/bench_mouth.py --readouts compares them)."""
    eye_input_scale: float = 0.5
    eye_channels: tuple[int, ...] = (32, 64, 64, 64, 64)
    eye_embedding: int = 8
    residual_blocks: int = 6
    fused_modulation: bool = False
    """Grouped per-sample convolution (StyleGAN2 "fused") instead of scaling activations."""

    channels_last: bool = True
    """Keep activations in NHWC: about 15% faster on CPU (oneDNN) and what GPU tensor cores want."""

    def __post_init__(self) -> None:
        if self.motion not in ("affine", "tps"):
            raise ValueError(f"motion must be 'affine' or 'tps', not {self.motion!r}")
        if self.fusion not in ("dense-motion", "neural-mix"):
            raise ValueError(f"fusion must be 'dense-motion' or 'neural-mix', not {self.fusion!r}")
        if self.audio_readout not in ("centre", "last"):
            raise ValueError(f"audio_readout must be 'centre' or 'last', not {self.audio_readout!r}")
        if self.audio_readout == "centre" and self.audio_channels % 2:
            raise ValueError(f"audio_channels must be even for the bidirectional LSTM, not {self.audio_channels}")
        minimum = 2 ** (self.encoder_depth + 2)
        if self.image_size % 2**self.encoder_depth or self.image_size < minimum:
            raise ValueError(
                f"image_size must be a multiple of {2**self.encoder_depth} and at least {minimum}, not "
                f"{self.image_size}"
            )

    @property
    def dense_motion(self) -> bool:
        return self.fusion == "dense-motion"

    @property
    def style_dim(self) -> int:
        """Length of ``f_exp = concat(f_eye, f_audio)``."""
        return self.eye_embedding + self.audio_embedding

    def replace(self, **changes: Any) -> DisCoHeadConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DisCoHeadConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        values = dict(values)
        if "eye_channels" in values:
            values["eye_channels"] = tuple(values["eye_channels"])
        return cls(**values)

    @classmethod
    def for_variant(cls, variant: str, **overrides: Any) -> DisCoHeadConfig:
        """The config of a named variant (``affine-dm``, ``affine-nm``, ``tps-dm``, ``tps-nm``)."""
        try:
            base = VARIANTS[variant]
        except KeyError:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}") from None
        return base.replace(**overrides)


VARIANTS: dict[str, DisCoHeadConfig] = {
    "affine-dm": DisCoHeadConfig(variant="affine-dm", motion="affine", fusion="dense-motion"),
    "affine-nm": DisCoHeadConfig(variant="affine-nm", motion="affine", fusion="neural-mix"),
    "tps-dm": DisCoHeadConfig(variant="tps-dm", motion="tps", fusion="dense-motion"),
    "tps-nm": DisCoHeadConfig(variant="tps-nm", motion="tps", fusion="neural-mix"),
}


WIDTHS: dict[str, dict[str, Any]] = {
    "paper": {},
    "narrow": {"hourglass_max_channels": 256, "feature_channels": 128, "audio_channels": 128, "encoder_channels": 32},
    "tiny": {
        "hourglass_max_channels": 32,
        "feature_channels": 32,
        "audio_channels": 16,
        "encoder_channels": 8,
        "eye_channels": (8, 8, 8, 8, 8),
    },
}
"""Channel widths by name: the paper's; ``narrow`` for CPU runs (smoke run, demo, learning
benchmark: the four variants train in minutes); ``tiny`` for tests (a step in milliseconds)."""
