"""WebDataset shards and the manifest: encoding samples, publishing, resuming, reading.

Layout under DEST (a local folder or any fsspec URL such as ``s3://bucket/prefix``)::

    train/shard-<run>-<task>-<n>.tar   test/...      finished shards only
    _commits/<run>-<task>.json                       which clips each write task stored
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
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from ..contracts import MANIFEST_NAME, SHARD_FORMAT_VERSION, SHARD_KEYS, SPLITS
from ..manifest import ClipRecord, Manifest, ShardFormatError
from ..storage import filesystem_for, is_local, publish_bytes, publish_file

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
    every fresh Ray worker that runs a write task (measured, docs/benchmarks.md). Shards
    are read back with webdataset's own iterators (:func:`iter_shard`).
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


def load_commits(fs: fsspec.AbstractFileSystem, root: str, repair: bool = True) -> list[dict[str, Any]]:
    """Commit records whose tars all exist; interrupted ones are rolled back when ``repair``.

    Rolling back deletes the interrupted commit's published tars and its record, so its
    clips count as not done and are processed again, and removes what killed write tasks
    left in the staging folder. An empty record counts as interrupted: its tars are found
    by name (``shard-<commit name>-*``). Call it with ``repair`` only while no write task
    runs. Raises :class:`ShardFormatError` for a record that is damaged otherwise.
    """
    commit_dir = f"{root}/{COMMITS_DIR}"
    if repair and fs.exists(f"{root}/{STAGING_DIR}"):
        fs.rm(f"{root}/{STAGING_DIR}", recursive=True)
    if not fs.exists(commit_dir):
        return []
    existing = set()
    for split in SPLITS:
        if fs.exists(f"{root}/{split}"):
            for path in fs.ls(f"{root}/{split}", detail=False):
                name = Path(path).name
                if name.endswith(".partial") and repair:
                    fs.rm_file(path)
                else:
                    existing.add(f"{split}/{name}")
    complete = []
    for path in sorted(fs.ls(commit_dir, detail=False)):
        if not path.endswith(".json"):
            continue
        commit = _read_commit(fs, path)
        if commit is not None and all(shard in existing for shard in commit["shards"]):
            complete.append(commit)
        elif repair:
            if commit is not None:
                published = [shard for shard in commit["shards"] if shard in existing]
            else:
                prefix = f"shard-{Path(path).stem}-"
                published = [shard for shard in sorted(existing) if Path(shard).name.startswith(prefix)]
            for shard in published:
                fs.rm_file(f"{root}/{shard}")
            fs.rm_file(path)
    return complete


def remove_outputs(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """Delete everything a previous run wrote under ``root`` (for ``--overwrite``)."""
    for name in (*SPLITS, COMMITS_DIR, STAGING_DIR):
        if fs.exists(f"{root}/{name}"):
            fs.rm(f"{root}/{name}", recursive=True)
    if fs.exists(f"{root}/{MANIFEST_NAME}"):
        fs.rm_file(f"{root}/{MANIFEST_NAME}")


# --- reading -----------------------------------------------------------------------


def iter_shard(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[dict[str, Any]]:
    """Raw samples of one tar, grouped by key with webdataset's own iterators."""
    import webdataset as wds  # imports torch: only readers (training, evaluation) pay for it

    with fs.open(path, "rb") as handle:
        files = wds.tariterators.tar_file_expander([{"url": path, "stream": handle}])
        for sample in wds.tariterators.group_by_keys(files):
            sample.pop("__url__", None)
            yield sample


def iter_split(dest: str, split: str, storage_options: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Decoded samples of one split, in manifest order (the training job's entry point)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    manifest = Manifest.read(dest, storage_options)
    fs, root = filesystem_for(dest, storage_options)
    for shard in manifest.shards[split]:
        for sample in iter_shard(fs, f"{root}/{shard}"):
            yield decode_sample(sample)
