"""Turning ``--input`` values into the list of media files to process.

An input is a local folder (searched recursively), a glob, a text file listing one
path or URI per line, a single file, or the same for an fsspec URL such as an s3://
prefix. Hidden files are ignored; everything else is tried, so a stray non-video file
shows up in the manifest as skipped instead of vanishing silently.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import fsspec

LIST_FILE_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = set("*?[")


def _visible(path: str) -> bool:
    return not any(part.startswith(".") for part in Path(path).parts[-1:])


def is_url(spec: str) -> bool:
    return "://" in spec


def expand_input(spec: str, storage_options: dict[str, Any] | None = None, allow_list_file: bool = True) -> list[str]:
    """Files named by one ``--input`` value, sorted; empty when it matches nothing."""
    if is_url(spec):
        fs, path = fsspec.core.url_to_fs(spec, **(storage_options or {}))
        protocol = spec.split("://", 1)[0]
        if _GLOB_CHARS & set(path):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            found = fs.find(path)
        elif fs.exists(path):
            found = [path]
        else:
            found = []
        return sorted(f"{protocol}://{p}" for p in found if _visible(p))
    if _GLOB_CHARS & set(spec):
        return sorted(os.path.abspath(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p) and _visible(p))
    path = Path(spec)
    if path.is_dir():
        return sorted(os.path.abspath(p) for p in path.rglob("*") if p.is_file() and _visible(str(p)))
    if path.is_file() and allow_list_file and path.suffix.lower() in LIST_FILE_SUFFIXES:
        listed: list[str] = []
        for line in path.read_text().splitlines():
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if not is_url(entry) and not os.path.isabs(entry):
                entry = str(path.parent / entry)
            listed.extend(expand_input(entry, storage_options, allow_list_file=False) or [entry])
        return listed
    if path.is_file():
        return [os.path.abspath(path)]
    return []


def fetch_to_local(source: str, directory: str, storage_options: dict[str, Any] | None = None) -> str:
    """A local path holding ``source``'s bytes: the file itself, or a download of a URL."""
    if not is_url(source):
        return source
    fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
    local = os.path.join(directory, Path(path).name)
    fs.get_file(path, local)
    return local
