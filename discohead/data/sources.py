"""Turning ``--input`` values into the list of media files to process.

An input is a local folder (searched recursively), a glob, a text file listing one
path or URI per line, a single file, or the same for an fsspec URL such as an s3://
prefix. Hidden files and folders are ignored; everything else is tried, so a stray
non-video file shows up in the manifest as skipped instead of vanishing silently.

Every file is listed once, under one name: a clip reached by two paths (a symlink, a
symlink loop under a ``**`` glob) would otherwise get two clip ids and could land in both
train and test. The walk itself visits each real folder once, so a loop cannot make it
explode. An entry of a list file that cannot be read is reported with its reason and
the rest of the list is kept.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

LIST_FILE_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Unreadable:
    """An input (or an entry of a list file) that could not be listed, and why."""

    entry: str
    reason: str
    detail: str


def _visible(path: str) -> bool:
    return not any(part.startswith(".") for part in Path(path).parts[-1:])


def _visible_below(path: str, root: str) -> bool:
    """No hidden part between ``root`` and ``path``: ``root`` itself may lie in a hidden folder."""
    return not any(part.startswith(".") for part in Path(os.path.relpath(path, root)).parts)


def is_url(spec: str) -> bool:
    return "://" in spec


def _walk(root: str, follow_symlinks: bool, hidden: bool) -> list[str]:
    """Files under ``root``, every real folder visited once (a symlink loop is entered once)."""
    status = os.stat(root)
    seen = {(status.st_dev, status.st_ino)}
    files = []
    for folder, folders, names in os.walk(root, followlinks=follow_symlinks):
        kept = []
        for name in sorted(folders):
            if not hidden and name.startswith("."):
                continue
            try:
                status = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            if (status.st_dev, status.st_ino) not in seen:
                seen.add((status.st_dev, status.st_ino))
                kept.append(name)
        folders[:] = kept
        files.extend(os.path.join(folder, name) for name in names if hidden or not name.startswith("."))
    return [path for path in files if os.path.isfile(path)]


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Path components against glob components, with ``glob``'s rules: ``**`` spans any
    number of folders, and a wildcard never matches a name starting with a dot."""
    if not pattern:
        return not parts
    head = pattern[0]
    if head == "**":
        if _matches(parts, pattern[1:]):
            return True
        return bool(parts) and not parts[0].startswith(".") and _matches(parts[1:], pattern)
    if not parts or not fnmatch.fnmatchcase(parts[0], head):
        return False
    if parts[0].startswith(".") and not head.startswith("."):
        return False
    return _matches(parts[1:], pattern[1:])


def _local_glob(spec: str) -> list[str]:
    """``glob.glob(spec, recursive=True)``, except that a ``**`` follows each symlinked folder
    once: Python's glob re-enters a symlink loop until the OS refuses (40 levels deep, and
    exponentially many paths when a folder holds two such links)."""
    if "**" not in spec:
        return [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
    parts = Path(os.path.abspath(spec)).parts
    fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    base = os.path.join(*parts[:fixed])
    pattern = parts[fixed:]
    if not os.path.isdir(base):
        return []
    hidden = any(part.startswith(".") for part in pattern)
    return [
        path
        for path in _walk(base, follow_symlinks=True, hidden=hidden)
        if _matches(Path(os.path.relpath(path, base)).parts, pattern)
    ]


def _one_per_file(paths: list[str]) -> list[str]:
    """One name per real file, sorted: the file's own path when listed, else the shortest
    (then first) of the names that reach it.

    A listed name (not the real path) is kept because the clip id is derived from it: a
    DEST made from a symlinked folder resumes under the same ids.
    """
    real = {path: os.path.realpath(path) for path in paths}
    by_file: dict[str, str] = {}
    for path in sorted(paths, key=lambda p: (p != real[p], len(Path(p).parts), p)):
        by_file.setdefault(real[path], path)
    return sorted(by_file.values())


def list_sources(
    spec: str, storage_options: dict[str, Any] | None = None, allow_list_file: bool = True
) -> tuple[list[str], list[Unreadable]]:
    """Files named by one ``--input`` value (sorted, one name per file) and the entries
    of a list file that could not be read, with their reason.

    Raises ``OSError`` / ``ValueError`` when ``spec`` itself cannot be read; an entry of a
    list file that names no file is returned as is (the job records it as ``not_found``).
    """
    if is_url(spec):
        fs, path = fsspec.core.url_to_fs(spec, **(storage_options or {}))
        protocol = spec.split("://", 1)[0]
        if _GLOB_CHARS & set(path):
            found = [p for p in fs.glob(path) if fs.isfile(p) and _visible(p)]
        elif fs.isdir(path):
            found = [p for p in fs.find(path) if _visible_below(p, path)]
        elif fs.exists(path):
            found = [path]
        else:
            found = []
        return sorted(f"{protocol}://{p}" for p in found), []
    if _GLOB_CHARS & set(spec):
        return _one_per_file([os.path.abspath(p) for p in _local_glob(spec) if _visible(p)]), []
    path = Path(spec)
    if path.is_dir():
        root = os.path.abspath(path)
        return _one_per_file(_walk(root, follow_symlinks=False, hidden=False)), []
    if path.is_file() and allow_list_file and path.suffix.lower() in LIST_FILE_SUFFIXES:
        listed: list[str] = []
        problems: list[Unreadable] = []
        for line in path.read_text().splitlines():
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if not is_url(entry) and not os.path.isabs(entry):
                entry = str(path.parent / entry)
            try:
                listed.extend(list_sources(entry, storage_options, allow_list_file=False)[0] or [entry])
            except (OSError, ValueError) as error:  # one bad line must not drop the whole list
                problems.append(Unreadable(entry, "unreadable_input", f"{type(error).__name__}: {error}"))
        return listed, problems
    if path.is_file():
        return [os.path.abspath(path)], []
    return [], []


def expand_input(spec: str, storage_options: dict[str, Any] | None = None, allow_list_file: bool = True) -> list[str]:
    """Files named by one ``--input`` value, sorted; empty when it matches nothing.

    Entries of a list file that cannot be read are left out; :func:`list_sources` reports them.
    """
    return list_sources(spec, storage_options, allow_list_file)[0]


def fetch_to_local(source: str, directory: str, storage_options: dict[str, Any] | None = None) -> str:
    """A local path holding ``source``'s bytes: the file itself, or a download of a URL."""
    if not is_url(source):
        return source
    fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
    local = os.path.join(directory, Path(path).name)
    fs.get_file(path, local)
    return local
