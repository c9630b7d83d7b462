"""WebDataset shards and the manifest: encoding samples, publishing, resuming, reading.

Layout under DEST (a local folder or any fsspec URL such as ``s3://bucket/prefix``)::

    train/shard-<run>-<task>-<n>.tar   test/...      finished shards only
    _commits/<run>-<task>.json                       which clips each write task stored
    _lock.json                                       the job writing DEST now (discohead.data.lock)
    _staging/                                        tars being built (local DEST only)
    manifest.json                                    written last, from all commits

A write task builds its tars in a staging folder, publishes its commit record, then
publishes the tars (an atomic rename locally, a single PUT on object storage). A
commit whose tars are not all there was interrupted: the next run deletes what it
published and redoes its clips, so every clip ends up in the shards exactly once.
Locally every published file is fsynced before its rename, so a power loss leaves a file
either complete or absent; an empty commit record (left by a crash on a filesystem that
still lost it) is rolled back the same way, and any other unreadable one stops the run
with a one-line error naming it rather than being guessed at.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from ..contracts import MANIFEST_NAME, SHARD_FORMAT_VERSION, SHARD_KEYS, SPLITS, STATS_NAME
from ..errors import UsageError
from ..manifest import ClipRecord, Manifest, ShardFormatError
from ..storage import filesystem_for, is_local, publish_bytes, publish_file
from .curation import STATS_PLOT_NAME
from .lock import LOCK_NAME

COMMITS_DIR = "_commits"
STAGING_DIR = "_staging"


# --- samples -----------------------------------------------------------------------


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def encode_sample(
    key: str,
    frames: np.ndarray,
    mel: np.ndarray,
    landmarks: np.ndarray,
    eye_boxes: np.ndarray,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """One WebDataset sample (``__key__`` plus the :class:`~discohead.contracts.ShardSchema` members)."""
    if "." in key:
        raise ValueError(f"sample key {key!r} must not contain '.' (WebDataset splits keys at the first dot)")
    return {
        "__key__": key,
        SHARD_KEYS.frames: _npy_bytes(frames.astype(np.uint8, copy=False)),
        SHARD_KEYS.mel: _npy_bytes(mel.astype(np.float16, copy=False)),
        SHARD_KEYS.landmarks: _npy_bytes(landmarks.astype(np.float32, copy=False)),
        SHARD_KEYS.eye_boxes: _npy_bytes(eye_boxes.astype(np.float32, copy=False)),
        SHARD_KEYS.meta: json.dumps({**meta, "format_version": SHARD_FORMAT_VERSION}, sort_keys=True).encode(),
    }


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Arrays and meta of a raw sample read from a shard; refuses other format versions."""
    meta = json.loads(sample[SHARD_KEYS.meta])
    if meta.get("format_version") != SHARD_FORMAT_VERSION:
        raise ShardFormatError(
            f"sample {sample.get('__key__')} has shard format {meta.get('format_version')}, this code reads "
            f"{SHARD_FORMAT_VERSION}: rerun preprocessing with --overwrite"
        )
    decoded = {"__key__": sample["__key__"], "meta": meta}
    for name in ("frames", "mel", "landmarks", "eye_boxes"):
        decoded[name] = np.load(io.BytesIO(sample[getattr(SHARD_KEYS, name)]), allow_pickle=False)
    return decoded


# --- writing -----------------------------------------------------------------------


def staging_folder(fs: fsspec.AbstractFileSystem, root: str) -> str:
    """A new private folder where a write task builds its tars before publishing them.

    For a local DEST it lies inside DEST (under ``_staging``), on the same filesystem, so
    publishing a tar is a rename instead of a copy of every byte. For object storage it
    is a local temporary folder, uploaded from.
    """
    if is_local(fs):
        parent = Path(root) / STAGING_DIR
        parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix="task-", dir=parent)
    return tempfile.mkdtemp(prefix="discohead-shards-")


def write_sample(tar: tarfile.TarFile, sample: dict[str, Any]) -> int:
    """Append one sample to an open tar as WebDataset members ``<key>.<name>``; returns its bytes.

    This is what webdataset's ``TarWriter`` does for ready-encoded samples, written with
    the standard library because importing webdataset imports torch: about 3 s of CPU in
    every fresh Ray worker that runs a write task (measured, docs/benchmarks.md). Any
    WebDataset loader reads the shards; this package reads them with :func:`iter_shard`.
    """
    key = sample["__key__"]
    written = 0
    for name, data in sample.items():
        if name == "__key__":
            continue
        member = tarfile.TarInfo(f"{key}.{name}")
        member.size, member.mode, member.mtime = len(data), 0o444, 0
        tar.addfile(member, io.BytesIO(data))
        written += len(data)
    return written


@dataclass
class _OpenShard:
    tar: tarfile.TarFile
    local: str
    relative: str
    written: int = 0


class ShardWriterTask:
    """Packs the clips of one write task into tars of about ``target_bytes`` per split.

    A clip never straddles two tars of a split, so shards hold whole clips and a commit
    record can list exactly which clips are complete. Use it as a context manager (or
    call :meth:`abort`): when writing or publishing fails, the staging folder goes with
    it. For object storage that folder is in the machine's temporary directory, where no
    later run would find it, and a failed upload would leave up to a shard there.
    """

    def __init__(self, dest: str, storage_options: dict[str, Any] | None, name: str, target_bytes: int):
        self.fs, self.root = filesystem_for(dest, storage_options)
        self.name = name
        self.target_bytes = target_bytes
        self._workdir = staging_folder(self.fs, self.root)
        self._open: dict[str, _OpenShard] = {}
        self._finished: list[tuple[str, str]] = []
        self._counter = 0
        self.records: list[ClipRecord] = []

    def __enter__(self) -> ShardWriterTask:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()

    def abort(self) -> None:
        """Drop everything staged. What was already published stays for the next run to roll
        back: its commit record names its tars, and only the next run knows no task is still
        writing them."""
        for shard in self._open.values():
            shard.tar.close()
        self._open.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _shard(self, split: str) -> _OpenShard:
        if split not in self._open:
            relative = f"{split}/shard-{self.name}-{self._counter:03d}.tar"
            self._counter += 1
            local = os.path.join(self._workdir, relative.replace("/", "_"))
            self._open[split] = _OpenShard(tarfile.open(local, "w"), local, relative)
        return self._open[split]

    def _close(self, split: str) -> None:
        shard = self._open.pop(split)
        shard.tar.close()
        self._finished.append((shard.local, shard.relative))

    def add_clip(self, record: ClipRecord, samples: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Store a clip's samples (``(split, sample)`` pairs) or just its skip record."""
        by_split: dict[str, list[dict[str, Any]]] = {}
        for split, sample in samples:
            by_split.setdefault(split, []).append(sample)
        for split, split_samples in by_split.items():
            if split in self._open and self._open[split].written >= self.target_bytes:
                self._close(split)
            shard = self._shard(split)
            for sample in split_samples:
                shard.written += write_sample(shard.tar, sample)
            record.shards.append(shard.relative)
            record.chunks[split] = len(split_samples)
        self.records.append(record)

    def commit(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Publish the commit record, then the tars; returns the commit record.

        On failure the staging folder is removed (:meth:`abort`) and the error raised.
        """
        try:
            for split in list(self._open):
                self._close(split)
            commit = {
                "name": self.name,
                "format_version": SHARD_FORMAT_VERSION,
                "shards": [relative for _, relative in self._finished],
                "clips": [record.to_json() for record in self.records],
                **(extra or {}),
            }
            commit_path = f"{self.root}/{COMMITS_DIR}/{self.name}.json"
            publish_bytes(json.dumps(commit, indent=1).encode(), self.fs, commit_path)
            for local, relative in self._finished:
                publish_file(local, self.fs, f"{self.root}/{relative}")
        except BaseException:
            self.abort()
            raise
        os.rmdir(self._workdir)
        return commit


# --- resume ------------------------------------------------------------------------


def _read_commit(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """A commit record, or ``None`` for an empty file (a crash between its creation and its
    data reaching the disk: nothing in it was ever relied on).

    Anything else that is not a commit record raises :class:`ShardFormatError` naming the
    file: its tars may hold clips no other record lists, so it is not deleted on a guess.
    """
    data = fs.cat_file(path)
    if not data.strip():
        return None
    try:
        commit = json.loads(data)
        if not (isinstance(commit["shards"], list) and isinstance(commit["clips"], list)):
            raise TypeError("'shards' and 'clips' must be lists")
    except (ValueError, KeyError, TypeError) as error:
        name = Path(path).stem
        raise ShardFormatError(
            f"commit record {path} is damaged ({type(error).__name__}: {error}); move it and the tars named "
            f"shard-{name}-*.tar out of DEST to redo its clips, or use --overwrite"
        ) from None
    return commit


def _forget_listings(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """Drop fsspec's cached listings of DEST's folders before reading them.

    s3fs caches every folder listing for the life of its filesystem object, which fsspec
    shares among all users of the same options in a process. The write tasks publish
    commits and tars from other processes, so a listing read at the start of a run
    would hide them at its end, and the manifest would miss every clip of the run.
    """
    for folder in (COMMITS_DIR, STAGING_DIR, *SPLITS):
        fs.invalidate_cache(f"{root}/{folder}")


def _split_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Every file under DEST's split folders, as ``<split>/<name>``."""
    found = []
    for split in SPLITS:
        if fs.exists(f"{root}/{split}"):
            found.extend(f"{split}/{Path(path).name}" for path in fs.ls(f"{root}/{split}", detail=False))
    return found


def _named_after(commit_path: str, files: Iterable[str]) -> list[str]:
    """The tars a commit's write task publishes (``shard-<commit name>-*.tar``), found by name."""
    prefix = f"shard-{Path(commit_path).stem}-"
    return [shard for shard in sorted(files) if Path(shard).name.startswith(prefix) and shard.endswith(".tar")]


def _is_shard(relative: Any) -> bool:
    """A path a write task could have published (``<split>/shard-*.tar``), so safe to delete."""
    parts = relative.split("/") if isinstance(relative, str) else []
    return len(parts) == 2 and parts[0] in SPLITS and parts[1].startswith("shard-") and parts[1].endswith(".tar")


def load_commits(fs: fsspec.AbstractFileSystem, root: str, repair: bool = True) -> list[dict[str, Any]]:
    """Commit records whose tars all exist; interrupted ones are rolled back when ``repair``.

    Rolling back deletes the interrupted commit's published tars and its record, so its
    clips count as not done and are processed again, and removes what killed write tasks
    left in the staging folder. An empty record counts as interrupted: its tars are found
    by name (``shard-<commit name>-*``). A complete commit that stores a clip an earlier
    commit already stores (two jobs that wrote one DEST) is rolled back too, so no clip
    is listed, or read, twice. Call it with ``repair`` only while no write task runs.
    Raises :class:`ShardFormatError` for a record that is damaged otherwise. Listings are
    read fresh, never from fsspec's cache.
    """
    _forget_listings(fs, root)
    commit_dir = f"{root}/{COMMITS_DIR}"
    if repair and fs.exists(f"{root}/{STAGING_DIR}"):
        fs.rm(f"{root}/{STAGING_DIR}", recursive=True)
    if not fs.exists(commit_dir):
        return []
    existing = set()
    for shard in _split_files(fs, root):
        if shard.endswith(".partial") and repair:
            fs.rm_file(f"{root}/{shard}")
        else:
            existing.add(shard)
    complete, stored = [], set()
    for path in sorted(fs.ls(commit_dir, detail=False)):
        if not path.endswith(".json"):
            continue
        commit = _read_commit(fs, path)
        clips = {clip.get("clip_id") for clip in commit["clips"]} - {None} if commit is not None else set()
        if commit is not None and all(shard in existing for shard in commit["shards"]) and not clips & stored:
            complete.append(commit)
            stored |= clips
        elif repair:
            published = [s for s in commit["shards"] if s in existing] if commit else _named_after(path, existing)
            for shard in published:
                fs.rm_file(f"{root}/{shard}")
            fs.rm_file(path)
    return complete


_BOOKKEEPING = {
    COMMITS_DIR,
    STAGING_DIR,
    LOCK_NAME,
    f".{LOCK_NAME}.partial",
    f".{MANIFEST_NAME}.partial",
    STATS_NAME,
    f".{STATS_NAME}.partial",
    STATS_PLOT_NAME,
    f".{STATS_PLOT_NAME}.partial",
}
"""What the job itself keeps in DEST besides shards and the manifest (not a sign of a user's files)."""


class ForeignDestination(UsageError):
    """``--overwrite`` asked to clear a DEST this job did not write."""


def _job_manifest(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """DEST's manifest when it is one this job writes (any format version), else ``None``."""
    if not fs.exists(path):
        return None
    try:
        values = json.loads(fs.cat_file(path))
    except ValueError:
        return None
    if isinstance(values, dict) and "format_version" in values and isinstance(values.get("shards"), dict):
        return values
    return None


def remove_outputs(fs: fsspec.AbstractFileSystem, root: str, shown: str | None = None) -> list[str]:
    """Delete what earlier runs of this job wrote under ``root`` (``--overwrite``), and nothing else.

    DEST may hold a user's own files, even in folders named ``train/`` or ``test/``, so
    only what the job's own bookkeeping names is deleted: the tars its commit records and
    its manifest list (``<split>/shard-*.tar`` only), the tars named after an unreadable
    record, the records, the manifest, the staging folder and the job's half-written
    dot-named ``.partial`` files; then the job's folders if that left them empty. A DEST
    that is not empty but holds neither a manifest nor a commit record of this job is
    refused with :class:`ForeignDestination` before anything is deleted. Returns the
    paths (relative to DEST) deleted.
    """
    _forget_listings(fs, root)
    shown = (shown or root).rstrip("/")
    commit_dir = f"{root}/{COMMITS_DIR}"
    records = sorted(p for p in fs.ls(commit_dir, detail=False) if p.endswith(".json")) if fs.exists(commit_dir) else []
    manifest = _job_manifest(fs, f"{root}/{MANIFEST_NAME}")
    if not records and manifest is None:
        listed = fs.ls(root, detail=False) if fs.exists(root) else []
        others = [Path(path).name for path in listed if Path(path).name not in _BOOKKEEPING]
        if others:
            raise ForeignDestination(
                f"--overwrite refused: {shown} holds no manifest or commit records of this job (it holds "
                f"{', '.join(sorted(others)[:3])}), so nothing in it is this job's to delete; nothing was deleted: "
                "use a new or empty --output"
            )
        return []
    files = _split_files(fs, root)
    targets = set()
    for path in records:
        try:
            commit = _read_commit(fs, path)
        except ShardFormatError:
            commit = None
        targets.update(
            shard for shard in (commit["shards"] if commit else _named_after(path, files)) if _is_shard(shard)
        )
    if manifest is not None:
        listed = [shard for shards in manifest["shards"].values() if isinstance(shards, list) for shard in shards]
        targets.update(shard for shard in listed if _is_shard(shard))
    targets &= set(files)
    targets.update(f for f in files if Path(f).name.startswith(".shard-") and f.endswith(".tar.partial"))
    removed = sorted(targets)
    for shard in removed:
        fs.rm_file(f"{root}/{shard}")
    for path in (*records, f"{root}/{MANIFEST_NAME}", f"{root}/{STATS_NAME}", f"{root}/{STATS_PLOT_NAME}"):
        if fs.exists(path):
            fs.rm_file(path)
            removed.append(path[len(root) + 1 :])
    if fs.exists(f"{root}/{STAGING_DIR}"):
        fs.rm(f"{root}/{STAGING_DIR}", recursive=True)
    if is_local(fs):
        partials = [Path(root) / f".{name}.partial" for name in (MANIFEST_NAME, STATS_NAME, STATS_PLOT_NAME)]
        for partial in [*Path(root).glob(f"{COMMITS_DIR}/.*.json.partial"), *partials]:
            partial.unlink(missing_ok=True)
        for folder in (*SPLITS, COMMITS_DIR):
            try:
                os.rmdir(f"{root}/{folder}")
            except OSError:  # absent, or still holding a user's files
                pass
    _forget_listings(fs, root)
    return removed


# --- reading -----------------------------------------------------------------------


MAX_MEMBER_BYTES = 1 << 30
"""Largest tar member a reader loads (1 GiB). A member is read whole into memory, so a tar
whose header claims more (damaged, or made to exhaust the reader) is refused before any of
it is read. The jobs' largest member, ``frames.npy`` at ``MAX_CHUNK_FRAMES`` frames of
``MAX_IMAGE_SIZE`` px, is 768 MiB."""

_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"(\xb5/\xfd": "zstd"}
"""Magic numbers of the compressions tarfile (or webdataset) would otherwise unpack on the fly."""

_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
"""``KEY.NAME`` of a member: the key runs to the first dot of the file name (webdataset's rule)."""


def iter_shard(
    fs: fsspec.AbstractFileSystem, path: str, max_member_bytes: int = MAX_MEMBER_BYTES
) -> Iterator[dict[str, Any]]:
    """Raw samples of one tar: its ``KEY.NAME`` members grouped by key, as webdataset groups them.

    Read with the standard library in stream mode (one pass, also over s3://) and without
    importing webdataset, so that what is accepted is decided here: a plain tar only (a
    compressed one would be unpacked on the fly, at a cost no shard setting bounds), and no
    member larger than ``max_member_bytes``. Raises :class:`ShardFormatError` naming the
    shard for either, and for a tar that is cut short or garbled.
    """
    with fs.open(path, "rb") as handle:
        head = handle.read(8)
        for magic, kind in _COMPRESSED.items():
            if head.startswith(magic):
                raise ShardFormatError(
                    f"{path} is a {kind}-compressed tar: shards are read as plain tars only (decompress it, or "
                    "rerun pipelines/preprocess.py)"
                )
        handle.seek(0)
        sample: dict[str, Any] = {}
        try:
            with tarfile.open(fileobj=handle, mode="r|") as tar:
                for member in tar:
                    found = _MEMBER.match(member.name) if member.isreg() else None
                    if found is None:
                        continue
                    if member.size > max_member_bytes:
                        raise ShardFormatError(
                            f"{path}: member {member.name} is {member.size} bytes, more than the "
                            f"{max_member_bytes} a shard member may hold; the shard is damaged or not this job's"
                        )
                    key, name = found.groups()
                    if sample and (key != sample["__key__"] or name in sample):
                        yield sample
                        sample = {}
                    sample.setdefault("__key__", key)
                    sample[name] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError) as error:
            raise ShardFormatError(f"{path} is not a readable tar ({type(error).__name__}: {error})") from None
        if sample:
            yield sample


SAMPLE_ERRORS = (ShardFormatError, ValueError, KeyError, TypeError, OSError, EOFError, AttributeError)
"""What reading one sample (or one shard) can raise when its bytes are damaged: json and numpy
raise ValueError, a missing member KeyError, storage OSError; the reader ShardFormatError."""


def iter_split(
    dest: str,
    split: str,
    storage_options: dict[str, Any] | None = None,
    damaged: list[str] | None = None,
    manifest: Manifest | None = None,
) -> Iterator[dict[str, Any]]:
    """Decoded samples of one split, in manifest order (a view's: only its own clips').

    With ``damaged`` (a list), a sample or shard that cannot be read is passed over and
    described there in one line starting with the shard's name (and ``sample KEY`` for a
    sample), instead of raising. ``manifest``, when the caller holds DEST's already, saves
    reading it again.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    manifest = manifest or Manifest.read(dest, storage_options)
    fs, root = filesystem_for(manifest.shard_root(dest), storage_options)
    keep = manifest.clip_filter
    for shard in manifest.shards[split]:
        try:
            for sample in iter_shard(fs, f"{root}/{shard}"):
                try:
                    decoded = decode_sample(sample)
                except SAMPLE_ERRORS as error:
                    if damaged is None:
                        raise
                    damaged.append(f"{shard}: sample {sample.get('__key__')}: {type(error).__name__}: {error}")
                    continue
                if keep is None or decoded["meta"].get("clip_id") in keep:
                    yield decoded
        except SAMPLE_ERRORS as error:  # the shard itself: missing, compressed, cut short
            if damaged is None:
                raise
            damaged.append(f"{shard}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
