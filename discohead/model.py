"""DisCoHead: head-motion predictor -> motion-aware encoder -> expression-control decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import geometry
from .config import DisCoHeadConfig
from .contracts import CHECKPOINT_FORMAT_VERSION
from .expression_control_decoder import ExpressionControlDecoder
from .head_motion_predictor import HeadMotionPredictor
from .motion_aware_encoder import MotionAwareEncoder


class DisCoHead(nn.Module):
    """A talking-head generator with separately controlled head pose, mouth and eyes.

    ``model(source, head_driver, eye_driver, audio)`` takes

    - ``source``, ``head_driver``, ``eye_driver``: float ``(B, 3, H, W)`` in [0, 1];
      the eye driver is a frame blacked out outside its eye box
      (:func:`discohead.contracts.mask_to_eye_region`);
    - ``audio``: ``(B, n_mels, T)`` natural-log mel energies of the 400 ms window centred
      on the frame: 16 kHz audio, 80 mel bins, 10 ms hop, ``T = 40``
      (:mod:`discohead.audio`, :data:`discohead.contracts.MEL`);

    and returns a dict with ``prediction`` (B, 3, H, W) in [0, 1], ``transformed_source``
    (``S_T``), ``confidence`` and, for dense-motion variants, ``flow`` (``O_P`` as a
    (B, h, w, 2) sampling grid) and ``motion_mask``; ``motion`` holds the predicted head
    motion (affine or TPS parameters).
    """

    def __init__(self, config: DisCoHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.head_motion_predictor = HeadMotionPredictor(config)
        self.motion_aware_encoder = MotionAwareEncoder(config)
        self.expression_control_decoder = ExpressionControlDecoder(config)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    @classmethod
    def from_variant(cls, variant: str, image_size: int | None = None, **overrides: Any) -> DisCoHead:
        """Build ``affine-dm``, ``affine-nm``, ``tps-dm`` or ``tps-nm``; widths may be overridden."""
        if image_size is not None:
            overrides["image_size"] = image_size
        return cls(DisCoHeadConfig.for_variant(variant, **overrides))

    def forward(
        self, source: torch.Tensor, head_driver: torch.Tensor, eye_driver: torch.Tensor, audio: torch.Tensor
    ) -> dict[str, Any]:
        self._check_inputs(source, head_driver, eye_driver, audio)
        source, head_driver, eye_driver = (
            frame.contiguous(memory_format=self.memory_format) for frame in (source, head_driver, eye_driver)
        )
        motion = self.head_motion_predictor(source, head_driver)
        height, width = source.shape[-2:]
        transformed_source = geometry.warp(source, motion.sampling_grid(height, width))
        motion_grid = None
        if self.config.dense_motion:
            scale = 2**self.config.encoder_depth
            motion_grid = motion.sampling_grid(height // scale, width // scale)
        encoded = self.motion_aware_encoder(source, transformed_source, motion_grid)
        prediction = self.expression_control_decoder(encoded.features, eye_driver, audio)
        outputs: dict[str, Any] = {
            "prediction": prediction,
            "transformed_source": transformed_source,
            "confidence": encoded.confidence,
            "motion": motion,
        }
        if self.config.dense_motion:
            outputs["flow"] = encoded.flow
            outputs["motion_mask"] = encoded.motion_mask
        return outputs

    def _check_inputs(
        self, source: torch.Tensor, head_driver: torch.Tensor, eye_driver: torch.Tensor, audio: torch.Tensor
    ) -> None:
        size = self.config.image_size
        for name, frame in (("source", source), ("head_driver", head_driver), ("eye_driver", eye_driver)):
            if frame.dim() != 4 or frame.shape[1] != 3 or tuple(frame.shape[-2:]) != (size, size):
                raise ValueError(f"{name} must be (B, 3, {size}, {size}), got {tuple(frame.shape)}")
        expected = (self.config.n_mels, self.config.audio_frames)
        if audio.dim() != 3 or tuple(audio.shape[1:]) != expected:
            raise ValueError(
                f"audio must be (B, {expected[0]}, {expected[1]}) log-mel windows, got {tuple(audio.shape)}"
            )

    def checkpoint(self, **extra: Any) -> dict[str, Any]:
        """Everything needed to rebuild this model: format version, config and weights."""
        return {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "model": self.state_dict(),
            **extra,
        }

    @classmethod
    def from_checkpoint(
        cls, checkpoint: dict[str, Any] | str | Path, map_location: str | torch.device = "cpu"
    ) -> DisCoHead:
        """Rebuild a model from :meth:`checkpoint` output or a file holding it."""
        if not isinstance(checkpoint, dict):
            checkpoint = torch.load(checkpoint, map_location=map_location, weights_only=True)
        version = checkpoint.get("format_version")
        if version != CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"checkpoint format {version} is not supported (this version reads {CHECKPOINT_FORMAT_VERSION}); "
                "train it again, or load it with the discohead that wrote it"
            )
        model = cls(DisCoHeadConfig.from_dict(checkpoint["config"]))
        model.load_state_dict(checkpoint["model"])
        return model
