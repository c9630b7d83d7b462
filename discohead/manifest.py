"""The manifest: the contract between the preprocessing job and every reader of its shards.

``DEST/manifest.json`` says which settings made the shards (:class:`ClipConfig`, the
landmark backend), which shards hold each split, every clip stored and every input
skipped with its reason, and the totals. It is written last, from the write tasks'
commit records, by :meth:`Manifest.build` and :meth:`Manifest.write` (the preprocessing
job and the synthetic writer both go through them), and read by :meth:`Manifest.read`,
which refuses other shard format versions. Readers use the typed fields, never keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .contracts import MANIFEST_NAME, SHARD_FORMAT_VERSION, SPLITS, ClipConfig, MelSettings
from .storage import filesystem_for, publish_bytes


class ShardFormatError(Exception):
    """Shards or a manifest this version of the code cannot read."""


@dataclass
class ClipRecord:
    """What the manifest says about one input or segment: stored (with its shards) or skipped (with why).

    A video cut into segments has one record per segment, all with the video's
    ``source_id`` and ``parts`` (how many records the video makes, so a resumed job knows
    whether all of them were committed; a segment split where its face changes person adds
    parts, and records written before the split carry the count known then: the largest
    counts); ``start`` and ``end`` are the seconds of the
    source the segment covers (its stored frames, when stored), ``shot`` the shot it is in.
    ``measures`` holds the quality gates' values (``discohead.data.curation``), also for a
    segment a gate skipped, so thresholds can be chosen again from the manifest alone.
    Records of manifests written before segmentation read back with the defaults.
    """

    clip_id: str | None
    source: str
    status: str
    reason: str | None = None
    detail: str | None = None
    frames: int = 0
    decoded_frames: int = 0
    fps: float = 0.0
    split: str | None = None
    chunks: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started_at: float = 0.0
    seconds: float = 0.0
    source_id: str | None = None
    segment: int = 0
    parts: int = 1
    shot: int = 0
    start: float = 0.0
    end: float = 0.0
    measures: dict[str, float] = field(default_factory=dict)

    @property
    def stored(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ClipRecord:
        return cls(**values)


@dataclass(frozen=True)
class Totals:
    clips: int
    skipped: int
    skipped_by_reason: dict[str, int]
    frames: int
    chunks: dict[str, int]
    seconds: float


def settings_json(config: ClipConfig, landmarks: str, synthetic: bool = False) -> dict[str, Any]:
    """The settings as recorded (and hashed): the clip config, the landmark backend, the synthetic flag."""
    return {**config.to_json(), "landmarks": landmarks, **({"synthetic": True} if synthetic else {})}


def config_hash(settings: dict[str, Any]) -> str:
    """Stable short hash of the settings that change a shard's bytes (``settings_json``)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Manifest:
    """A preprocessed dataset: its settings, its shards per split, its clips and skips."""

    config: ClipConfig
    landmarks: str
    shards: dict[str, list[str]]
    clips: list[ClipRecord]
    skipped: list[ClipRecord]
    run: dict[str, Any] = field(default_factory=dict)
    synthetic: bool = False
    created: str = ""
    format_version: int = SHARD_FORMAT_VERSION
    view_of: str = ""
    """Set on a view (``discohead refilter``): the DEST whose shards it reads, keeping only its own clips'
    samples. Empty for a preprocessed DEST, whose shards lie beside its manifest."""

    # --- what readers need -------------------------------------------------------

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def mel(self) -> MelSettings:
        return self.config.mel

    @property
    def config_json(self) -> dict[str, Any]:
        return settings_json(self.config, self.landmarks, self.synthetic)

    @property
    def config_hash(self) -> str:
        return config_hash(self.config_json)

    @property
    def totals(self) -> Totals:
        reasons: dict[str, int] = {}
        for clip in self.skipped:
            reasons[clip.reason or "unknown"] = reasons.get(clip.reason or "unknown", 0) + 1
        return Totals(
            clips=len(self.clips),
            skipped=len(self.skipped),
            skipped_by_reason=dict(sorted(reasons.items())),
            frames=sum(clip.frames for clip in self.clips),
            chunks={split: sum(clip.chunks.get(split, 0) for clip in self.clips) for split in SPLITS},
            seconds=round(sum(clip.frames / clip.fps for clip in self.clips if clip.fps), 3),
        )

    def chunks(self, split: str) -> int:
        return self.totals.chunks.get(split, 0)

    def shard_root(self, dest: str) -> str:
        """Where this manifest's shards are: beside it at ``dest``, or in the DEST a view was made from."""
        return (self.view_of or dest).rstrip("/")

    @property
    def clip_filter(self) -> frozenset[str] | None:
        """The clip ids whose samples count, for a view (its shards also hold clips it dropped); else None."""
        return frozenset(clip.clip_id for clip in self.clips if clip.clip_id) if self.view_of else None

    def shard_urls(self, dest: str, split: str) -> list[str]:
        """Full URLs (or paths) of one split's shards of the manifest at ``dest``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [f"{self.shard_root(dest)}/{shard}" for shard in self.shards.get(split, [])]

    # --- writing -------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        config: ClipConfig,
        landmarks: str,
        commits: Iterable[dict[str, Any]],
        listing_skips: Iterable[ClipRecord] = (),
        run: dict[str, Any] | None = None,
        synthetic: bool = False,
    ) -> Manifest:
        """The manifest of all complete commit records (see ``discohead.data.shards``)."""
        commits = list(commits)
        records = sorted(
            (ClipRecord.from_json(clip) for commit in commits for clip in commit["clips"]),
            key=lambda clip: clip.clip_id or "",
        )
        return cls(
            config=config,
            landmarks=landmarks,
            shards={
                split: sorted(
                    shard for commit in commits for shard in commit["shards"] if shard.startswith(f"{split}/")
                )
                for split in SPLITS
            },
            clips=[clip for clip in records if clip.stored],
            skipped=[clip for clip in records if not clip.stored] + list(listing_skips),
            run=dict(run or {}),
            synthetic=synthetic,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "config": self.config_json,
            "config_hash": self.config_hash,
            "created": self.created,
            "run": self.run,
            "shards": self.shards,
            "clips": [clip.to_json() for clip in self.clips],
            "skipped": [clip.to_json() for clip in self.skipped],
            "totals": dataclasses.asdict(self.totals),
            **({"view_of": self.view_of} if self.view_of else {}),
        }

    def write(self, dest: str, storage_options: dict[str, Any] | None = None) -> None:
        """Publish ``DEST/manifest.json`` atomically (written last: its presence means done)."""
        fs, root = filesystem_for(dest, storage_options)
        publish_bytes(json.dumps(self.to_json(), indent=1).encode(), fs, f"{root}/{MANIFEST_NAME}")

    # --- reading -------------------------------------------------------------------

    @classmethod
    def from_json(cls, values: dict[str, Any], where: str = "the manifest") -> Manifest:
        version = values.get("format_version")
        if version != SHARD_FORMAT_VERSION:
            raise ShardFormatError(
                f"{where} holds shard format {version}, this code reads {SHARD_FORMAT_VERSION}: rerun "
                "preprocessing with --overwrite"
            )
        settings = dict(values["config"])
        landmarks = settings.pop("landmarks", "unknown")
        synthetic = bool(settings.pop("synthetic", False))
        try:
            config = ClipConfig.from_json(settings)
        except (TypeError, ValueError) as error:
            raise ShardFormatError(
                f"{where} has settings this code cannot read ({error}): rerun preprocessing with --overwrite"
            ) from None
        return cls(
            config=config,
            landmarks=landmarks,
            shards={split: list(values["shards"].get(split, [])) for split in SPLITS},
            clips=[ClipRecord.from_json(clip) for clip in values["clips"]],
            skipped=[ClipRecord.from_json(clip) for clip in values["skipped"]],
            run=values.get("run", {}),
            synthetic=synthetic,
            created=values.get("created", ""),
            format_version=version,
            view_of=values.get("view_of", ""),
        )

    @classmethod
    def read(cls, dest: str, storage_options: dict[str, Any] | None = None) -> Manifest:
        """The manifest of a preprocessed dataset; refuses other shard format versions."""
        fs, root = filesystem_for(dest, storage_options)
        path = f"{root}/{MANIFEST_NAME}"
        if not fs.exists(path):
            raise FileNotFoundError(f"{dest} has no {MANIFEST_NAME}: run pipelines/preprocess.py --output {dest} first")
        shown = f"{dest.rstrip('/')}/{MANIFEST_NAME}"
        try:
            values = json.loads(fs.cat_file(path))
            return cls.from_json(values, where=dest)
        except ShardFormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            # Empty or cut short by a crash, or edited: the commits still say what is stored.
            raise ShardFormatError(
                f"{shown} is damaged ({type(error).__name__}: {error}); rerun pipelines/preprocess.py with the same "
                f"--input and --output {dest}: it rebuilds the manifest from the commit records"
            ) from None
