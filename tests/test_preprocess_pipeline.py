"""End to end: the preprocessing job run directly and through `ray job submit`, on local
folders and on a real S3-compatible server, including a kill halfway and a resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from discohead.contracts import MANIFEST_NAME
from discohead.data.shards import COMMITS_DIR, iter_shard, iter_split
from discohead.manifest import Manifest

from conftest import EXPECTED_OUTCOMES, REPO_ROOT, S3_SECRET, repo_env, venv_binary

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "pipelines" / "preprocess.py"
FAST = ["--image-size", "64", "--landmarks", "dlib"]


def preprocess(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO_ROOT,
        env=env or repo_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def outcome_by_file(manifest: Manifest) -> dict[str, str]:
    outcomes = {Path(clip.source).name: "ok" for clip in manifest.clips}
    outcomes.update({Path(clip.source).name: clip.reason for clip in manifest.skipped})
    return outcomes


def s3_env(s3_server, with_endpoint: bool = True) -> dict[str, str]:
    env = repo_env(**s3_server.env)
    if not with_endpoint:
        env.pop("AWS_ENDPOINT_URL")
    return env


def test_direct_run_records_every_input_and_resumes(synthetic_media, tmp_path):
    media = next(iter(synthetic_media.values())).parent
    dest = tmp_path / "prepared"
    first = preprocess(
        "--input", str(media), "--input", str(tmp_path / "nowhere" / "*.mp4"), "--output", str(dest), *FAST
    )
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = Manifest.read(str(dest))
    outcomes = outcome_by_file(manifest)
    assert {name: outcomes[name] for name in EXPECTED_OUTCOMES} == EXPECTED_OUTCOMES
    assert outcomes["*.mp4"] == "not_found"
    ok_count = list(EXPECTED_OUTCOMES.values()).count("ok")
    assert manifest.totals.clips == ok_count and manifest.landmarks == "dlib"
    train, test = list(iter_split(str(dest), "train")), list(iter_split(str(dest), "test"))
    assert train and test and len(train) + len(test) == sum(sum(clip.chunks.values()) for clip in manifest.clips)
    assert train[0]["frames"].shape[1:] == (64, 64, 3)
    assert "clips written" in first.stdout and "frames/s" in first.stdout

    again = preprocess("--input", str(media), "--output", str(dest), *FAST)
    assert again.returncode == 0 and f"{len(EXPECTED_OUTCOMES)} already done" in again.stdout
    assert [clip.clip_id for clip in Manifest.read(str(dest)).clips] == [clip.clip_id for clip in manifest.clips]

    changed = preprocess("--input", str(media), "--output", str(dest), "--image-size", "32", "--landmarks", "dlib")
    assert changed.returncode == 2 and "--overwrite" in changed.stderr and "Traceback" not in changed.stderr


def test_no_usable_clip_exits_non_zero_with_a_message(synthetic_media, tmp_path):
    """Also the hostile inputs: a playlist naming a good clip elsewhere (refused, not decoded),
    a list file with an unreachable entry (recorded, the rest kept) and a second name of
    one file (listed once)."""
    dest = tmp_path / "prepared"
    playlist = tmp_path / "elsewhere.m3u8"
    target = synthetic_media["good_a.mp4"]
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.4,\n{target}\n#EXT-X-ENDLIST\n")
    alias = tmp_path / "alias.mp4"
    alias.symlink_to(synthetic_media["zero_bytes.mp4"])
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{alias}\nnosuch://bucket/clip.mp4\n{playlist}\n")
    result = preprocess(
        "--input",
        str(synthetic_media["zero_bytes.mp4"]),
        "--input",
        str(synthetic_media["not_a_video.mp4"]),
        "--input",
        str(listing),
        "--output",
        str(dest),
        *FAST,
    )
    assert result.returncode == 1 and "no clip was written" in result.stderr and "Traceback" not in result.stderr
    manifest = Manifest.read(str(dest))
    assert manifest.totals.skipped_by_reason == {"empty_file": 1, "not_a_video": 2, "unreadable_input": 1}
    assert {clip.source for clip in manifest.skipped if clip.reason == "unreadable_input"} == {
        "nosuch://bucket/clip.mp4"
    }


def test_a_damaged_commit_record_is_refused_in_one_line(tmp_path):
    dest = tmp_path / "prepared"
    (dest / COMMITS_DIR).mkdir(parents=True)
    record = dest / COMMITS_DIR / "20260101000000-abcdef-00000.json"
    record.write_text('{"name": "20260101000000-abcdef-00000", "shards": [')
    result = preprocess("--input", str(tmp_path), "--output", str(dest), *FAST, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("[preprocess] error")]
    assert len(errors) == 1 and str(record) in errors[0], result.stderr[-3000:]


def upload(s3_server, bucket: str, files: list[Path]) -> None:
    fs = s3_server.filesystem()
    fs.mkdir(bucket)
    for path in files:
        fs.put_file(str(path), f"{bucket}/raw/{path.name}")


def check_s3_output(s3_server, bucket: str, expected_ok: int) -> dict:
    options = s3_server.storage_options
    manifest = Manifest.read(f"s3://{bucket}/prepared", options)
    assert manifest.totals.clips == expected_ok
    samples = list(iter_split(f"s3://{bucket}/prepared", "train", options)) + list(
        iter_split(f"s3://{bucket}/prepared", "test", options)
    )
    assert len(samples) == sum(sum(clip.chunks.values()) for clip in manifest.clips)
    assert S3_SECRET not in json.dumps(manifest.to_json())
    return manifest


def test_direct_run_on_s3_with_endpoint_flag(s3_server, synthetic_media):
    upload(s3_server, "direct", [synthetic_media[name] for name in ("good_a.mp4", "good_b.mp4", "no_audio.mp4")])
    result = preprocess(
        "--input", "s3://direct/raw", "--output", "s3://direct/prepared", "--s3-endpoint", s3_server.endpoint, *FAST,
        env=s3_env(s3_server, with_endpoint=False),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert S3_SECRET not in result.stdout + result.stderr
    manifest = check_s3_output(s3_server, "direct", expected_ok=2)
    assert (
        manifest.skipped[0].reason == "no_audio_stream" and manifest.skipped[0].source == "s3://direct/raw/no_audio.mp4"
    )


def test_ray_job_submit_on_s3(ray_head, s3_server, synthetic_media):
    upload(s3_server, "submitted", [synthetic_media[name] for name in ("good_a.mp4", "good_c.mp4", "silent.mp4")])
    command = [
        venv_binary("ray"), "job", "submit", "--address", ray_head.dashboard, "--",
        sys.executable, str(SCRIPT), "--input", "s3://submitted/raw", "--output", "s3://submitted/prepared", *FAST,
    ]  # fmt: skip
    result = subprocess.run(command, env=ray_head.client_env, capture_output=True, text=True, timeout=400)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "succeeded" in output, f"exit {result.returncode}:\n{output[-5000:]}"
    assert S3_SECRET not in output
    check_s3_output(s3_server, "submitted", expected_ok=2)


def test_ray_job_submit_is_refused_without_the_token(ray_head):
    env = {key: value for key, value in ray_head.client_env.items() if not key.startswith("RAY_AUTH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token")
    result = subprocess.run(
        [venv_binary("ray"), "job", "list", "--address", ray_head.dashboard],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0


def all_sample_keys(dest: Path) -> list[str]:
    """Keys of every sample in every published tar, manifest or not (to catch duplicates)."""
    from discohead.storage import filesystem_for

    fs, _ = filesystem_for(str(dest))
    return [sample["__key__"] for tar in sorted(dest.glob("*/*.tar")) for sample in iter_shard(fs, str(tar))]


def test_killed_halfway_then_rerun_stores_each_clip_exactly_once(synthetic_media, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for copy in range(8):
        shutil.copy(synthetic_media["good_a.mp4" if copy % 2 else "good_b.mp4"], media / f"take{copy}.mp4")
    dest = tmp_path / "prepared"
    args = [
        sys.executable,
        str(SCRIPT),
        "--input",
        str(media),
        "--output",
        str(dest),
        *FAST,
        "--workers",
        "1",
        "--shard-size-mb",
        "0.001",
    ]
    process = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        env=repo_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(list((dest / COMMITS_DIR).glob("*.json"))) < 2:
            assert process.poll() is None, "the job ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (dest / MANIFEST_NAME).exists()
    committed = len(list((dest / COMMITS_DIR).glob("*.json")))
    assert 2 <= committed < 8

    rerun = preprocess("--input", str(media), "--output", str(dest), *FAST, "--shard-size-mb", "0.001")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already done" in rerun.stdout
    manifest = Manifest.read(str(dest))
    clip_ids = [clip.clip_id for clip in manifest.clips]
    assert len(clip_ids) == len(set(clip_ids)) == 8
    keys = all_sample_keys(dest)
    assert len(keys) == len(set(keys)) == sum(sum(clip.chunks.values()) for clip in manifest.clips)
    assert {key.rsplit("_", 1)[0] for key in keys} == set(clip_ids)
