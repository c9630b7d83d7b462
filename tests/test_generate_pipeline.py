"""End to end: the generation job under ``ray job submit``, inputs, model and outputs on S3, one bad row.

The model is untrained (tiny widths, 32 px): the test is about the job (rows spread over
Ray, inputs fetched, outputs published, a bad row reported while the others are written),
not about the pictures; tests/test_generation.py checks those.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from discohead import DisCoHead
from discohead.config import WIDTHS
from discohead.contracts import ClipConfig
from discohead.data.synthetic import SyntheticClip, render_frames, speech_like_audio, write_wav

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "pipelines" / "generate.py"


def test_jobs_csv_on_s3_under_ray_job_submit(ray_head, s3_server, synthetic_media, tmp_path):
    from conftest import S3_SECRET, venv_binary

    filesystem = s3_server.filesystem()
    filesystem.mkdir("generation")
    model = DisCoHead.from_variant("affine-nm", image_size=32, **WIDTHS["tiny"])
    train_config = {"preprocessing": {**ClipConfig(image_size=32).to_json(), "landmarks": "dlib"}}
    torch.save(model.checkpoint(train_config=train_config), tmp_path / "discohead.pt")
    filesystem.put_file(str(tmp_path / "discohead.pt"), "generation/model/discohead.pt")

    frame = render_frames(SyntheticClip(seconds=0.4, seed=30), np.zeros(1, np.float32))[0]
    Image.fromarray(frame).save(tmp_path / "face.png")
    waveform, _ = speech_like_audio(1.0, 16_000, seed=31)
    write_wav(tmp_path / "speech.wav", waveform, 16_000)
    Image.new("RGB", (160, 160), (70, 90, 140)).save(tmp_path / "blank.png")
    for name in ("face.png", "speech.wav", "blank.png"):
        filesystem.put_file(str(tmp_path / name), f"generation/inputs/{name}")
    rows = [
        {"source": "s3://generation/inputs/face.png", "audio": "s3://generation/inputs/speech.wav", "name": "still"},
        {"source": "s3://generation/inputs/blank.png", "audio": "s3://generation/inputs/speech.wav", "name": "blank"},
        {
            "source": "s3://generation/inputs/face.png",
            "audio": "s3://generation/inputs/speech.wav",
            "head_video": str(synthetic_media["good_a.mp4"]),
            "name": "driven",
        },
    ]
    jobs = io.StringIO()
    writer = csv.DictWriter(jobs, ["source", "audio", "head_video", "name"])
    writer.writeheader()
    writer.writerows(rows)
    filesystem.pipe_file("generation/jobs.csv", jobs.getvalue().encode())

    command = [
        venv_binary("ray"), "job", "submit", "--address", ray_head.dashboard, "--",
        sys.executable, str(SCRIPT), "--model", "s3://generation/model", "--jobs", "s3://generation/jobs.csv",
        "--output", "s3://generation/videos", "--batch-size", "8",
    ]  # fmt: skip
    result = subprocess.run(command, env=ray_head.client_env, capture_output=True, text=True, timeout=420)
    output = result.stdout + result.stderr
    assert "2 written, 1 failed" in output, output[-4000:]
    assert "row 2 failed: --source s3://generation/inputs/blank.png: no face found" in output, output[-4000:]
    assert result.returncode != 0  # the job exits 1 when a row failed
    assert sorted(filesystem.ls("generation/videos", detail=False)) == [
        f"generation/videos/{name}" for name in ("driven.mp4", "report.csv", "still.mp4")
    ]
    report = list(csv.DictReader(io.StringIO(filesystem.cat_file("generation/videos/report.csv").decode())))
    assert [(row["name"], row["status"], row["frames"]) for row in report] == [
        ("still", "ok", "25"),
        ("blank", "failed", "0"),
        ("driven", "ok", "25"),
    ]
    assert S3_SECRET not in output


def test_bad_jobs_file_is_one_line(tmp_path):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("image,sound\na.png,b.wav\n")
    model = tmp_path / "discohead.pt"
    torch.save(DisCoHead.from_variant("affine-nm", image_size=32, **WIDTHS["tiny"]).checkpoint(), model)
    command = [sys.executable, str(SCRIPT), "--model", str(model), "--jobs", str(jobs), "--output", str(tmp_path / "o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"[generate] error: {jobs}: the header must name source and audio, optionally head_video, eye_video and "
        "name (it has: image, sound)"
    ]
