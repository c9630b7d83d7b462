"""One writer per DEST: a lock file created exclusively, refreshed while the job runs, removed at its end.

Two preprocessing jobs writing one DEST undo each other's work: the second one's start-up
repair deletes the first one's staging and rolls back its commits in progress, and a clip
both process is stored twice, in two shards. So the job takes ``DEST/_lock.json`` before
it touches anything in DEST:

- locally by an exclusive create (``O_CREAT | O_EXCL``): one process creates the file,
  every other gets ``FileExistsError``;
- on S3 by a conditional PUT (``If-None-Match: *``, s3fs's ``pipe_file(mode="create")``):
  the store refuses the second create (412). AWS S3, MinIO and moto honour the header. A
  store that ignores it would let both writers in; the lock is read back once written,
  which catches a writer that overwrote it first, not one that overwrites it later.

The file says who holds it (host, pid, start time) so a refused job can name the holder
in one line. The holder rewrites its ``heartbeat`` every :data:`HEARTBEAT_S` seconds, so
the age of a lock means something even for a run of many hours. A lock is stale when its
holder is gone (its pid is not running on this host), its heartbeat is older than
:data:`STALE_AFTER_S` or the file is unreadable. A holder proven dead (same host, pid not
running: a job killed outright) is taken over at once, so rerunning a killed job resumes
it as before; the other stale cases need ``--break-lock``, since a missed heartbeat cannot
tell a dead holder on another machine from a frozen one, so the user decides.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import fsspec

from ..errors import UsageError
from ..storage import fsync_folder, is_local, publish_bytes

LOCK_NAME = "_lock.json"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 15 * 60.0
"""A heartbeat older than this (15 heartbeats missed) marks the holder as dead."""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def proven_dead(holder: dict[str, Any]) -> bool:
    """The holder ran on this host and its process is gone: nothing can still be writing for it."""
    return holder.get("host") == socket.gethostname() and not _running(int(holder.get("pid", 0)))


def stale_reason(holder: dict[str, Any], now: float | None = None) -> str | None:
    """Why the lock ``holder`` wrote can be broken, or ``None`` while its job may still run."""
    if not holder:
        return "the lock file is unreadable"
    now = time.time() if now is None else now
    if proven_dead(holder):
        return "that process is no longer running"
    age = now - float(holder.get("heartbeat", 0))
    if age > STALE_AFTER_S:
        return f"it has not refreshed the lock for {age / 60:.0f} min"
    return None


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "unknown holder"
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"


class DestLock:
    """``DEST/_lock.json`` for the life of a ``with`` block (released on return, on an error, on SIGTERM).

    ``lost`` is set when the heartbeat finds the lock gone or taken over (someone broke it
    while this job was frozen): :meth:`check` then refuses to go on, since another job may
    be writing DEST too.
    """

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        root: str,
        shown: str,
        break_stale: bool = False,
        heartbeat_s: float = HEARTBEAT_S,
    ):
        self.fs, self.root, self.shown = fs, root, shown.rstrip("/")
        self.path = f"{root}/{LOCK_NAME}"
        self.break_stale = break_stale
        self.heartbeat_s = heartbeat_s
        self.token = uuid.uuid4().hex
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DestLock:
        self.acquire()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            self.release()
        except OSError:
            if kind is None:  # never hide the error that ended the job behind a failed release
                raise

    # --- the file --------------------------------------------------------------------

    def _create(self) -> bool:
        now = time.time()
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "heartbeat": now,
            "token": self.token,
        }
        data = json.dumps(record).encode()
        if is_local(self.fs):
            os.makedirs(self.root, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            fsync_folder(self.root)
            return True
        try:
            self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            return False
        return self._read().get("token") == self.token  # a store that ignored If-None-Match

    def _read(self) -> dict[str, Any]:
        """The holder's record; ``{}`` when the file is unreadable. Raises FileNotFoundError when absent."""
        self.fs.invalidate_cache(self.path)
        data = self.fs.cat_file(self.path)
        try:
            holder = json.loads(data)
        except ValueError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def _remove(self) -> None:
        self.fs.rm_file(self.path)
        self.fs.invalidate_cache(self.path)

    # --- acquire and release -----------------------------------------------------------

    def acquire(self) -> None:
        """Take the lock, or raise :class:`UsageError` naming its holder (breaking a stale one if asked)."""
        if not self._create():
            self._take_over()
        self._thread = threading.Thread(target=self._beat, name="dest-lock-heartbeat", daemon=True)
        self._thread.start()

    def _take_over(self) -> None:
        """The lock exists: refuse, naming its holder, unless it is stale and ``break_stale`` was asked."""
        try:
            holder = self._read()
        except FileNotFoundError:  # released in between
            if self._create():
                return
            holder = self._read()
        reason = stale_reason(holder)
        where = f"{self.shown} is being written by another preprocessing job ({describe(holder)})"
        if reason is None:
            raise UsageError(f"{where}; wait for it to end or use another --output (lock: {self.shown}/{LOCK_NAME})")
        if not self.break_stale and not proven_dead(holder):
            raise UsageError(f"{where}, but {reason}: if no job writes there, rerun with --break-lock")
        print(f"[lock] taking over the lock on {self.shown} from {describe(holder)}: {reason}", flush=True)
        if self._read() != holder:
            raise UsageError(f"the lock on {self.shown} changed while it was being broken; rerun to see its holder")
        self._remove()
        if not self._create():
            taken = describe(self._read())
            raise UsageError(f"{self.shown} was taken by another job that broke the same lock ({taken})")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder = self._read()
            except FileNotFoundError:
                self.lost = "the lock file was removed"
                return
            except OSError:  # the store did not answer this time: try at the next beat
                continue
            if holder.get("token") != self.token:
                self.lost = f"it is now held by {describe(holder)}"
                return
            try:
                publish_bytes(json.dumps({**holder, "heartbeat": time.time()}).encode(), self.fs, self.path)
            except OSError:
                continue

    def check(self) -> None:
        """Raise :class:`UsageError` if the lock was lost (before writing what the whole run depends on)."""
        if self.lost:
            raise UsageError(
                f"lost the lock on {self.shown} ({self.lost}): another job may have written there; rerun with the "
                "same arguments to finish DEST"
            )

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this job's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            holder = self._read()
        except FileNotFoundError:
            return
        if holder.get("token") == self.token:
            self._remove()
