"""One writer per DEST (issue 11, item 3): the lock on a local folder and on the S3-compatible server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from discohead.data.lock import LOCK_NAME, DestLock
from discohead.errors import UsageError
from discohead.storage import filesystem_for


@pytest.fixture(params=["local", "s3"])
def dest(request, tmp_path) -> tuple[str, dict | None]:
    if request.param == "local":
        return str(tmp_path / "prepared"), None
    s3 = request.getfixturevalue("s3_server")
    s3.filesystem().mkdir(bucket := f"lock-{tmp_path.name.lower().replace('_', '-')[-40:]}")
    return f"s3://{bucket}/prepared", s3.storage_options


def lock_for(dest, **kwargs) -> DestLock:
    fs, root = filesystem_for(*dest)
    return DestLock(fs, root, dest[0], **kwargs)


def plant(dest, **holder) -> None:
    """A lock file left by another job."""
    fs, root = filesystem_for(*dest)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/{LOCK_NAME}", json.dumps({"token": "theirs", **holder}).encode())


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(dest):
    with lock_for(dest) as first:
        with pytest.raises(UsageError) as refused:
            lock_for(dest, break_stale=True).acquire()  # a live holder is never broken
        message = str(refused.value)
        assert f"host {socket.gethostname()}, pid {os.getpid()}, started " in message and "\n" not in message
        assert first.path.endswith(LOCK_NAME)
    fs, root = filesystem_for(*dest)
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/{LOCK_NAME}"), "released at the end"
    with pytest.raises(RuntimeError):
        with lock_for(dest):
            raise RuntimeError("the job failed")
    with lock_for(dest):  # released on failure too
        pass


def test_a_stale_lock_elsewhere_is_broken_only_with_break_lock(dest):
    plant(dest, host="elsewhere", pid=1, heartbeat=0.0, started="2026-01-01T00:00:00Z")
    with pytest.raises(UsageError, match="has not refreshed the lock.*--break-lock") as refused:
        lock_for(dest).acquire()
    assert "host elsewhere, pid 1" in str(refused.value) and "\n" not in str(refused.value)
    with lock_for(dest, break_stale=True) as lock:
        fs, root = filesystem_for(*dest)
        assert json.loads(fs.cat_file(f"{root}/{LOCK_NAME}"))["token"] == lock.token


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(dest, capsys):
    """A job killed outright (SIGKILL) leaves its lock; rerunning it resumes without a flag."""
    pid = dead_pid()
    plant(dest, host=socket.gethostname(), pid=pid, heartbeat=time.time(), started="2026-01-01T00:00:00Z")
    with lock_for(dest) as lock:
        fs, root = filesystem_for(*dest)
        assert json.loads(fs.cat_file(f"{root}/{LOCK_NAME}"))["token"] == lock.token
    said = capsys.readouterr().out
    assert f"pid {pid}" in said and "no longer running" in said


def test_the_heartbeat_refreshes_the_lock_and_notices_when_it_is_taken(tmp_path):
    dest = (str(tmp_path), None)
    with lock_for(dest, heartbeat_s=0.05) as lock:
        path = tmp_path / LOCK_NAME
        first = json.loads(path.read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads(path.read_text())["heartbeat"] > first
        lock.check()
        path.write_text(json.dumps({"host": "elsewhere", "pid": 7, "started": "then", "token": "theirs"}))
        time.sleep(0.3)
        with pytest.raises(UsageError, match="lost the lock.*host elsewhere, pid 7"):
            lock.check()
    assert path.exists(), "a lock taken by another job is not removed"
