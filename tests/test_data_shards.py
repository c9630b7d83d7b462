"""Shard samples, the commit protocol (publish, resume, roll back), manifest and reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from discohead.contracts import CHUNK_FRAMES, MANIFEST_NAME, SHARD_FORMAT_VERSION, SHARD_KEYS, ClipConfig
from discohead.data.shards import (
    COMMITS_DIR,
    STAGING_DIR,
    ForeignDestination,
    ShardWriterTask,
    decode_sample,
    encode_sample,
    iter_shard,
    iter_split,
    load_commits,
    remove_outputs,
)
from discohead.manifest import ClipRecord, Manifest, ShardFormatError
from discohead.storage import filesystem_for


def fake_sample(clip_id: str, chunk: int, size: int = 8) -> dict:
    rng = np.random.default_rng(chunk)
    return encode_sample(
        f"{clip_id}_{chunk:04d}",
        rng.integers(0, 255, (CHUNK_FRAMES, size, size, 3), dtype=np.uint8),
        rng.normal(size=(CHUNK_FRAMES, 80, 40)),
        rng.uniform(0, size, (CHUNK_FRAMES, 68, 2)),
        rng.uniform(0, 1, (CHUNK_FRAMES, 4)),
        {"clip_id": clip_id, "chunk": chunk},
    )


def write_clips(dest: str, name: str, clips: dict[str, list[str]], options=None, target_bytes: int = 10**9) -> dict:
    writer = ShardWriterTask(dest, options, name, target_bytes)
    for clip_id, splits in clips.items():
        record = ClipRecord(clip_id, f"/videos/{clip_id}.mp4", "ok", frames=len(splits) * CHUNK_FRAMES, fps=25.0)
        writer.add_clip(record, [(split, fake_sample(clip_id, chunk)) for chunk, split in enumerate(splits)])
    writer.add_clip(ClipRecord(f"bad-{name}", "/videos/bad.mp4", "skipped", "corrupt", "no frame"), [])
    return writer.commit(extra={"config_hash": "abc"})


def test_sample_round_trip_and_version_check():
    raw = fake_sample("clip-a", 3)
    assert set(raw) == {
        "__key__",
        *(getattr(SHARD_KEYS, name) for name in ("frames", "mel", "landmarks", "eye_boxes", "meta")),
    }
    sample = decode_sample(raw)
    assert sample["frames"].dtype == np.uint8 and sample["mel"].dtype == np.float16
    assert sample["meta"] == {"clip_id": "clip-a", "chunk": 3, "format_version": SHARD_FORMAT_VERSION}
    raw[SHARD_KEYS.meta] = json.dumps({"format_version": SHARD_FORMAT_VERSION + 1}).encode()
    with pytest.raises(ShardFormatError, match="--overwrite"):
        decode_sample(raw)
    with pytest.raises(ValueError, match="must not contain"):
        encode_sample("a.b", *([np.zeros(1)] * 4), {})


def test_writer_packs_whole_clips_and_rolls_over_at_target_size(tmp_path):
    commit = write_clips(
        str(tmp_path), "run-00000", {"a": ["train", "train"], "b": ["train"], "c": ["test"]}, target_bytes=1
    )
    assert sorted(commit["shards"]) == [
        "test/shard-run-00000-002.tar",
        "train/shard-run-00000-000.tar",
        "train/shard-run-00000-001.tar",
    ]
    by_clip = {clip["clip_id"]: clip for clip in commit["clips"]}
    assert by_clip["a"]["shards"] == ["train/shard-run-00000-000.tar"] and by_clip["a"]["chunks"] == {"train": 2}
    assert by_clip["bad-run-00000"]["status"] == "skipped"
    assert not list(tmp_path.rglob("*.partial"))


def test_local_tars_are_built_inside_dest_and_published_by_rename(tmp_path, monkeypatch):
    writer = ShardWriterTask(str(tmp_path), None, "run-00000", 10**9)
    assert writer._workdir.startswith(str(tmp_path / STAGING_DIR))
    writer.add_clip(
        ClipRecord("a", "/videos/a.mp4", "ok", frames=CHUNK_FRAMES, fps=25.0), [("train", fake_sample("a", 0))]
    )
    built = next(Path(writer._workdir).iterdir())
    inode = built.stat().st_ino
    copies = []
    monkeypatch.setattr(type(writer.fs), "put_file", lambda *args, **kwargs: copies.append(args))
    commit = writer.commit()
    published = tmp_path / commit["shards"][0]
    assert published.stat().st_ino == inode and not copies  # moved, not copied
    assert not any((tmp_path / STAGING_DIR).iterdir())
    fs, root = filesystem_for(str(tmp_path))
    assert [sample["__key__"] for sample in iter_shard(fs, f"{root}/{commit['shards'][0]}")] == ["a_0000"]


def test_staging_left_by_a_killed_write_task_is_removed_on_resume(tmp_path):
    write_clips(str(tmp_path), "run-00000", {"a": ["train"]})
    killed = ShardWriterTask(str(tmp_path), None, "run-00001", 10**9)
    killed.add_clip(
        ClipRecord("b", "/videos/b.mp4", "ok", frames=CHUNK_FRAMES, fps=25.0), [("train", fake_sample("b", 0))]
    )
    fs, root = filesystem_for(str(tmp_path))
    assert [commit["name"] for commit in load_commits(fs, root)] == ["run-00000"]
    assert not (tmp_path / STAGING_DIR).exists()


def test_writing_shards_does_not_import_torch():
    """Ray starts a fresh worker for each write task: importing torch there costs seconds."""
    code = "import sys, discohead.data.shards; print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_interrupted_commit_is_rolled_back(tmp_path):
    write_clips(str(tmp_path), "run-00000", {"a": ["train"]})
    broken = write_clips(str(tmp_path), "run-00001", {"b": ["train"], "c": ["test"]})
    (tmp_path / broken["shards"][1]).unlink()  # killed between publishing its two tars
    fs, root = filesystem_for(str(tmp_path))
    commits = load_commits(fs, root)
    assert [commit["name"] for commit in commits] == ["run-00000"]
    assert not (tmp_path / broken["shards"][0]).exists()
    assert not (tmp_path / COMMITS_DIR / "run-00001.json").exists()


def test_manifest_and_reader_local(tmp_path):
    write_clips(str(tmp_path), "run-00000", {"a": ["train", "test"], "b": ["train"]})
    fs, root = filesystem_for(str(tmp_path))
    missing = ClipRecord(None, "/nowhere/*.mp4", "skipped", "not_found", "matches no file")
    Manifest.build(ClipConfig(), "dlib", load_commits(fs, root), [missing], {"id": "run"}).write(str(tmp_path))
    stored = Manifest.read(str(tmp_path))
    assert stored.totals.clips == 2 and stored.totals.frames == 3 * CHUNK_FRAMES
    assert stored.totals.skipped_by_reason == {"corrupt": 1, "not_found": 1}
    assert stored.totals.chunks == {"train": 2, "test": 1}
    assert len(stored.config_hash) == 16 and stored.format_version == SHARD_FORMAT_VERSION
    assert stored.config == ClipConfig() and stored.landmarks == "dlib" and stored.skipped[-1].clip_id is None
    on_disk = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert on_disk["config"]["mel"]["n_mels"] == 80 and on_disk["totals"]["clips"] == 2, (
        "the file stays readable by people"
    )
    keys = [sample["__key__"] for sample in iter_split(str(tmp_path), "train")]
    assert sorted(keys) == ["a_0000", "b_0000"]
    assert [sample["__key__"] for sample in iter_split(str(tmp_path), "test")] == ["a_0001"]


def test_reader_refuses_missing_or_foreign_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="run pipelines/preprocess.py"):
        Manifest.read(str(tmp_path))
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format_version": 0}))
    with pytest.raises(ShardFormatError):
        Manifest.read(str(tmp_path))


def test_shards_on_s3(s3_server):
    fs = s3_server.filesystem()
    fs.mkdir("shards-test")
    options = s3_server.storage_options
    dest = "s3://shards-test/prepared"
    write_clips(dest, "run-00000", {"a": ["train"], "b": ["test"]}, options)
    s3, root = filesystem_for(dest, options)
    Manifest.build(ClipConfig(), "dlib", load_commits(s3, root)).write(dest, options)
    assert sorted(fs.ls("shards-test/prepared/train")) == ["shards-test/prepared/train/shard-run-00000-000.tar"]
    assert [sample["__key__"] for sample in iter_split(dest, "test", options)] == ["b_0000"]


# --- crashes and failed writes (issue 11, items 4 and 5) ----------------------------


def test_published_files_are_synced_before_their_rename(tmp_path, monkeypatch):
    """Without fsync a power loss can leave a renamed commit record or manifest empty."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target):
        events.append(("rename", str(source), str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    commit = write_clips(str(tmp_path), "run-00000", {"a": ["train"], "b": ["test"]})
    fs, root = filesystem_for(str(tmp_path))
    Manifest.build(ClipConfig(), "dlib", load_commits(fs, root)).write(str(tmp_path))
    renames = [event for event in events if event[0] == "rename"]
    published = {Path(target).relative_to(tmp_path).as_posix() for _, _, target in renames}
    assert published == {f"{COMMITS_DIR}/run-00000.json", MANIFEST_NAME, *commit["shards"]}
    for rename in renames:
        index = events.index(rename)
        assert ("fsync", rename[1]) in events[:index], f"{rename[2]} renamed before its bytes were synced"
        assert ("fsync", str(Path(rename[2]).parent)) in events[index:], f"rename to {rename[2]} not synced"


def test_an_empty_commit_record_left_by_a_crash_is_rolled_back(tmp_path):
    write_clips(str(tmp_path), "run-00000", {"a": ["train"]})
    crashed = write_clips(str(tmp_path), "run-00001", {"b": ["train"], "c": ["test"]})
    (tmp_path / COMMITS_DIR / "run-00001.json").write_bytes(b"")
    fs, root = filesystem_for(str(tmp_path))
    assert [commit["name"] for commit in load_commits(fs, root)] == ["run-00000"]
    assert not any((tmp_path / shard).exists() for shard in crashed["shards"])  # its clips are redone
    assert not (tmp_path / COMMITS_DIR / "run-00001.json").exists()


@pytest.mark.parametrize("content", ['{"name": "run-00001", "shards": ["train/', '{"name": "run-00001"}', "[]"])
def test_a_damaged_commit_record_is_a_one_line_error_naming_it(tmp_path, content):
    damaged = write_clips(str(tmp_path), "run-00001", {"b": ["train"]})
    record = tmp_path / COMMITS_DIR / "run-00001.json"
    record.write_text(content)
    fs, root = filesystem_for(str(tmp_path))
    with pytest.raises(ShardFormatError) as error:
        load_commits(fs, root)
    assert str(record) in str(error.value) and "\n" not in str(error.value)
    assert record.exists() and (tmp_path / damaged["shards"][0]).exists(), "nothing is deleted on a guess"


@pytest.mark.parametrize("content", ["", '{"format_version": 1, "config": {', '{"format_version": 1}'])
def test_a_damaged_manifest_is_a_one_line_error_naming_it(tmp_path, content):
    (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(ShardFormatError) as error:
        Manifest.read(str(tmp_path))
    message = str(error.value)
    assert f"{tmp_path}/{MANIFEST_NAME}" in message and "rebuilds" in message and "\n" not in message


def test_a_failed_upload_leaves_no_staging_tar_behind(s3_server, monkeypatch):
    s3_server.filesystem().mkdir("failed-upload")
    writer = ShardWriterTask("s3://failed-upload/prepared", s3_server.storage_options, "run-00000", 10**9)
    writer.add_clip(
        ClipRecord("a", "/videos/a.mp4", "ok", frames=CHUNK_FRAMES, fps=25.0), [("train", fake_sample("a", 0))]
    )
    assert any(Path(writer._workdir).iterdir())

    def refuse(*args, **kwargs):
        raise PermissionError("upload refused by the store")

    monkeypatch.setattr(writer.fs, "put_file", refuse)  # the tar's upload, after the commit record's
    with pytest.raises(PermissionError):
        writer.commit()
    assert not Path(writer._workdir).exists()


def test_a_write_task_that_fails_before_committing_removes_its_staging(tmp_path):
    with pytest.raises(RuntimeError, match="block could not be read"):
        with ShardWriterTask(str(tmp_path), None, "run-00000", 10**9) as writer:
            writer.add_clip(
                ClipRecord("a", "/videos/a.mp4", "ok", frames=CHUNK_FRAMES, fps=25.0), [("train", fake_sample("a", 0))]
            )
            raise RuntimeError("block could not be read")
    assert not Path(writer._workdir).exists()


# --- listing, overwrite, two writers (issue 11, items 1-3) --------------------------


def test_commits_published_by_other_processes_are_listed_on_s3(s3_server):
    """s3fs caches folder listings: the driver must still see what the write tasks published."""
    import s3fs

    s3_server.filesystem().mkdir("fresh-listing")
    dest, options = "s3://fresh-listing/prepared", s3_server.storage_options
    write_clips(dest, "run-00000", {"a": ["train"]}, options)
    fs, root = filesystem_for(dest, options)
    assert [commit["name"] for commit in load_commits(fs, root)] == ["run-00000"]  # the listing is now cached
    other_process = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    writer = ShardWriterTask(dest, options, "run-00001", 10**9)
    writer.fs = other_process  # a write task of another process: this process's cache is not told
    writer.add_clip(
        ClipRecord("b", "/videos/b.mp4", "ok", frames=CHUNK_FRAMES, fps=25.0), [("train", fake_sample("b", 0))]
    )
    writer.commit()
    assert [commit["name"] for commit in load_commits(fs, root)] == ["run-00000", "run-00001"]


def test_a_clip_stored_by_two_commits_is_listed_once(tmp_path):
    """What two jobs writing one DEST left behind: the later commit is rolled back and its clips redone."""
    write_clips(str(tmp_path), "run-00000", {"a": ["train"], "b": ["train"]})
    later = write_clips(str(tmp_path), "run-00001", {"b": ["train"], "c": ["test"]})
    fs, root = filesystem_for(str(tmp_path))
    manifest = Manifest.build(ClipConfig(), "dlib", load_commits(fs, root))
    assert [clip.clip_id for clip in manifest.clips] == ["a", "b"]
    assert not any((tmp_path / shard).exists() for shard in later["shards"])


@pytest.fixture(params=["local", "s3"])
def dest_fs(request, tmp_path):
    """A DEST and its filesystem, on local disk or on the S3-compatible server."""
    if request.param == "local":
        dest, options = str(tmp_path / "prepared"), None
    else:
        s3_server = request.getfixturevalue("s3_server")
        bucket = f"overwrite-{tmp_path.name.lower().replace('_', '-')[-40:]}"
        s3_server.filesystem().mkdir(bucket)
        dest, options = f"s3://{bucket}/prepared", s3_server.storage_options
    fs, root = filesystem_for(dest, options)
    fs.makedirs(root, exist_ok=True)
    return dest, options, fs, root


def put(fs, path: str, data: bytes) -> None:
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)


def test_overwrite_refuses_a_dest_this_job_did_not_write(dest_fs):
    dest, _, fs, root = dest_fs
    assert remove_outputs(fs, root, dest) == []  # empty: nothing to delete, nothing to refuse
    for name in ("train/holiday.mp4", "test/wedding.mp4"):
        put(fs, f"{root}/{name}", b"a user's own video")
    with pytest.raises(ForeignDestination) as refused:
        remove_outputs(fs, root, dest)
    assert dest in str(refused.value) and "\n" not in str(refused.value)
    fs.invalidate_cache()
    assert fs.cat_file(f"{root}/train/holiday.mp4") == fs.cat_file(f"{root}/test/wedding.mp4") == b"a user's own video"


def test_overwrite_deletes_only_the_files_its_commits_list(dest_fs):
    dest, options, fs, root = dest_fs
    first = write_clips(dest, "run-00000", {"a": ["train", "test"]}, options)
    crashed = write_clips(dest, "run-00001", {"b": ["train"]}, options)
    fs.pipe_file(f"{root}/{COMMITS_DIR}/run-00001.json", b"")  # its record lost: its tars are found by name
    Manifest.build(ClipConfig(), "dlib", [first]).write(dest, options)
    mine = {"train/holiday.mp4": b"video", "train/shard-mine.tar.gz": b"tar", "notes.txt": b"notes"}
    for name, data in mine.items():
        put(fs, f"{root}/{name}", data)
    removed = remove_outputs(fs, root, dest)
    assert set(removed) == {
        *first["shards"],
        *crashed["shards"],
        f"{COMMITS_DIR}/run-00000.json",
        f"{COMMITS_DIR}/run-00001.json",
        MANIFEST_NAME,
    }
    fs.invalidate_cache()
    assert sorted(path[len(root) + 1 :] for path in fs.find(root)) == sorted(mine)


# --- reading untrusted tars (issue 11, item 13) ------------------------------------------


def _one_shard(tmp_path) -> str:
    commit = write_clips(str(tmp_path / "dest"), "r1", {"a": ["train", "train", "train"]})
    return str(tmp_path / "dest" / commit["shards"][0])


def test_the_reader_groups_members_as_webdataset_does(tmp_path):
    import webdataset as wds

    path = _one_shard(tmp_path)
    fs, _ = filesystem_for(path)
    ours = list(iter_shard(fs, path))
    with open(path, "rb") as handle:
        theirs = list(
            wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander([{"url": path, "stream": handle}]))
        )
    assert [sample["__key__"] for sample in ours] == ["a_0000", "a_0001", "a_0002"]
    assert ours == [{key: value for key, value in sample.items() if key != "__url__"} for sample in theirs]


@pytest.mark.parametrize("compression", ["gzip", "bz2", "xz"])
def test_compressed_tars_are_refused(tmp_path, compression):
    """A compressed tar used to be unpacked on the fly (webdataset opens tars with mode ``r|*``)."""
    import bz2
    import gzip
    import lzma

    path = _one_shard(tmp_path)
    packed = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[compression](Path(path).read_bytes())
    Path(path).write_bytes(packed)
    fs, _ = filesystem_for(path)
    with pytest.raises(ShardFormatError, match=f"{Path(path).name} is a .*-compressed tar") as error:
        list(iter_shard(fs, path))
    assert len(str(error.value).splitlines()) == 1


def test_a_member_larger_than_the_bound_is_an_error_before_it_is_read(tmp_path):
    import tarfile
    import tracemalloc

    path = _one_shard(tmp_path)
    fs, _ = filesystem_for(path)
    with pytest.raises(ShardFormatError, match=r"member a_0000\.frames\.npy is \d+ bytes, more than the 1000"):
        list(iter_shard(fs, path, max_member_bytes=1000))
    # A header claiming 8 GiB (a damaged or hostile tar): refused from the header, nothing allocated for it.
    huge = tmp_path / "huge.tar"
    member = tarfile.TarInfo("x_0000.frames.npy")
    member.size = 8 << 30
    huge.write_bytes(member.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096)
    tracemalloc.start()
    try:
        with pytest.raises(ShardFormatError, match="x_0000.frames.npy is 8589934592 bytes"):
            list(iter_shard(fs, str(huge)))
        assert tracemalloc.get_traced_memory()[1] < 50 << 20
    finally:
        tracemalloc.stop()


def test_a_truncated_or_garbled_tar_is_a_one_line_error_naming_it(tmp_path):
    path = _one_shard(tmp_path)
    data = Path(path).read_bytes()
    fs, _ = filesystem_for(path)
    Path(path).write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardFormatError, match=f"{Path(path).name} is not a readable tar"):
        list(iter_shard(fs, path))
    Path(path).write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ShardFormatError, match="is not a readable tar"):
        list(iter_shard(fs, path))
