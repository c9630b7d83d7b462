"""Where bytes live: a URL to a filesystem, S3 options, Ray Train's filesystem, atomic publish.

Every job reads and writes through this module, so a local folder and an ``s3://`` prefix
(AWS or any S3-compatible server) behave the same. S3 credentials stay in the standard
AWS environment of every node (``AWS_ACCESS_KEY_ID``, an instance profile, ...): they never
travel with a job, a config or a log. Only the endpoint may be given explicitly.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def s3_options(url: str, endpoint: str | None = None) -> dict[str, Any]:
    """fsspec options for ``url``: for s3:// the endpoint (``endpoint`` or AWS_ENDPOINT_URL), else none."""
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if url.startswith("s3://") and endpoint else {}


def filesystem_for(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the protocol-less root path of ``url``."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, root.rstrip("/")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def absolute(url: str) -> str:
    """A local path made absolute (workers may run elsewhere); URLs unchanged."""
    return url if is_remote(url) else str(Path(url).expanduser().resolve())


def pyarrow_filesystem(url: str, endpoint: str | None = None) -> tuple[str, Any]:
    """Ray Train's ``(storage_path, storage_filesystem)`` for a local folder or an s3:// prefix.

    Ray Train writes checkpoints through pyarrow; wrapping the same s3fs filesystem the
    other stages use keeps one set of S3 options (endpoint, credentials) for all of them.
    """
    if not is_remote(url):
        return absolute(url), None
    import pyarrow.fs

    fs, root = filesystem_for(url, s3_options(url, endpoint))
    return root, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _local_target(final_path: str) -> tuple[Path, Path]:
    """``final_path`` with its folder created, and the dot-named ``.partial`` name beside it
    that a file is written under before its atomic rename (interrupted ones are removed)."""
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    return final, final.with_name(f".{final.name}.partial")


def fsync_file(path: str | Path) -> None:
    """Force a file's bytes to disk.

    A rename is atomic but says nothing about the data: after a power loss the new name
    can point at an empty or partial file. Syncing before the rename closes that gap.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(path: str | Path) -> None:
    """Force a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the rename itself still happened
        pass
    finally:
        os.close(fd)


def publish_file(local_path: str | Path, fs: fsspec.AbstractFileSystem, final_path: str) -> None:
    """Move a finished local file to ``final_path``, where it appears all at once.

    Locally: a rename when both are on one filesystem, else a copy next to the target
    under a dot-name and a rename; the bytes are synced to disk before the rename and the
    rename after it, so a power loss leaves the file either complete or absent. Object
    stores show an object only once its upload completes, so a plain PUT is already
    atomic. The local file is gone afterwards.
    """
    if is_local(fs):
        final, partial = _local_target(final_path)
        fsync_file(local_path)
        try:
            os.replace(local_path, final)
            fsync_folder(final.parent)
            return
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
        fs.put_file(str(local_path), str(partial))
        fsync_file(partial)
        os.replace(partial, final)
        fsync_folder(final.parent)
    else:
        fs.put_file(str(local_path), final_path)
    os.unlink(local_path)


def publish_bytes(data: bytes, fs: fsspec.AbstractFileSystem, final_path: str) -> None:
    """Write a small file (a commit record, the manifest) so that it appears all at once,
    complete, even across a power loss (synced before its rename, the rename synced after)."""
    if is_local(fs):
        final, partial = _local_target(final_path)
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, final)
        fsync_folder(final.parent)
    else:
        fs.pipe_file(final_path, data)


def is_node_local_store(tracking_uri: str) -> bool:
    """An MLflow store that is a file on this machine (SQLite, a folder), not a server or a database."""
    return tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri


def shared_storage_problem(nodes: int, paths: dict[str, str], tracking_uri: str | None, shared: bool) -> str | None:
    """What to change, in one line, when a job on several Ray nodes would keep its data on one node's disk.

    Each node sees only its own disk: a local ``--storage`` makes Ray Train's checkpoint
    uploads fail on the other nodes (late, at the first checkpoint), local shards cannot be
    read by the read tasks placed elsewhere, and a SQLite tracking store lands in the
    temporary copy of the working directory that ``ray job submit`` unpacks on the head.
    ``shared`` is the user saying the paths are on a file system every node mounts.
    """
    if nodes < 2 or shared:
        return None
    local = [f"{flag} {path}" for flag, path in paths.items() if path and not is_remote(path)]
    if tracking_uri and is_node_local_store(tracking_uri):
        local.append(f"MLFLOW_TRACKING_URI {tracking_uri}")
    if not local:
        return None
    return (
        f"{' and '.join(local)} {'is' if len(local) == 1 else 'are'} on one machine's disk, but this job runs on "
        "several Ray nodes: use s3:// paths and an MLflow tracking server (MLFLOW_TRACKING_URI=http://...), "
        "or add --shared-storage if they are on a file system every node mounts"
    )
