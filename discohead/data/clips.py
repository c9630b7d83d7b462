"""One video in, one :class:`ClipResult` per segment out: the whole per-clip preprocessing, without Ray.

Order matters for speed on bad input: the cheap checks (streams, length, audio) run
before the landmark pass, which is the costly part. Every way a file can be unusable
ends in a skip with a short reason code (see ``SKIP_REASONS``) rather than an exception.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audio import clip_windows
from ..contracts import ClipConfig, eye_box_from_landmarks
from ..manifest import ClipRecord
from . import curation, sync
from .crop import crop_and_resize, crop_boxes, fill_missing, landmarks_to_crop
from .landmarks import FaceTrack, LandmarkBackend, track_largest_face
from .segments import Piece, ShotDetector, plan_pieces
from .shards import encode_sample
from .video import (
    MediaError,
    ffmpeg_timeout,
    iter_video_frames,
    probe_and_decode_audio,
    reconcile_lengths,
    scaled_size,
)

SKIP_REASONS = {
    "empty_file": "the file has zero bytes",
    "not_a_video": "not a media file ffmpeg may open: unrecognised, or a playlist / script / device input",
    "corrupt": "truncated or damaged: frames or audio could not be decoded",
    "no_video_stream": "audio-only file",
    "no_audio_stream": "no audio stream (use --allow-silent to keep such clips)",
    "silent_audio": "the audio track is digital silence (use --allow-silent to keep such clips)",
    "too_short": "fewer usable frames than one chunk (--chunk-frames)",
    "too_long": "longer than --max-video-seconds (by its header, or by decoding when the header has no duration)",
    "short_shot": "a shot shorter than --min-seconds in a video with cuts (an uncut video is kept whole)",
    "no_face": "no face found in too many frames (--max-missing-face)",
    "small_face": "the face crop is smaller than --min-face-size source pixels a side",
    "jittery": "the landmarks jump more than --max-jitter of the face size per frame (a lost or switching track)",
    "head_pose": "the head turns (yaw) or tilts (pitch) further from facing the camera than --max-yaw / --max-pitch",
    "quiet_audio": "the segment's audio is below --min-audio-dbfs (no audible speech)",
    "clipped_audio": "more than --max-clipping of the segment's audio samples are at full scale",
    "blurry": "the face crops' variance of the Laplacian is below --min-sharpness",
    "identity_change": "a part of a segment split where its face changes person (--max-identity-distance) is "
    "shorter than one chunk or --min-seconds",
    "av_offset": "the audio is confidently (--av-confidence) more than --max-av-shift frames out of sync",
    "not_found": "an --input (or a listed path) names no existing file",
    "unreadable_input": "the input (or an entry of a list file) could not be read or fetched from storage",
    "timeout": "ffmpeg ran past its timeout (--ffmpeg-timeout) on the file",
    "failed": "an unexpected error while processing (the detail has it)",
}
"""Every skip reason the manifest can record, with what it means."""


@dataclass
class ClipResult:
    """The manifest record of a clip and, when it was stored, its encoded ``(split, sample)`` pairs."""

    record: ClipRecord
    samples: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def clip_id_for(source: str) -> str:
    """Readable, unique and WebDataset-safe id: the file stem plus a hash of the full source."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(source.rstrip("/")).stem).strip("-") or "clip"
    return f"{stem[:60]}-{hashlib.sha1(source.encode()).hexdigest()[:8]}"


def assign_clip_splits(clip_ids: list[str], train_ratio: float, seed: int) -> dict[str, str]:
    """Deterministic by-clip split: clips ranked by a seeded hash, the first ``train_ratio`` train.

    The ranking depends only on ids and seed, so reruns agree; with two or more clips at
    least one goes to each split.
    """
    ranked = sorted(clip_ids, key=lambda clip: hashlib.sha1(f"{seed}:{clip}".encode()).hexdigest())
    train_count = round(len(ranked) * train_ratio)
    if len(ranked) >= 2:
        train_count = min(max(train_count, 1), len(ranked) - 1)
    return {clip: ("train" if rank < train_count else "test") for rank, clip in enumerate(ranked)}


def time_split(num_chunks: int, train_ratio: float) -> list[str]:
    """By-time split of one clip's chunks: the first ``train_ratio`` train, the rest test."""
    test_count = num_chunks - round(num_chunks * train_ratio) if num_chunks >= 2 else 0
    if num_chunks >= 2:
        test_count = min(max(test_count, 1), num_chunks - 1)
    return ["train"] * (num_chunks - test_count) + ["test"] * test_count


SHARPNESS_EVERY = 5
"""Sharpness is measured on every 5th frame of a segment: the median of 50 frames of a
10 s segment is steady, and each measure costs one extra small crop."""

KEEP_FRAMES_BYTES = 512 * 1024**2
"""Up to this many bytes of decoded frames are kept from the landmark pass for cropping;
longer (or larger) clips are decoded a second time instead of held in memory."""


def _keeping(frames: Iterator[np.ndarray], kept: list[np.ndarray] | None) -> Iterator[np.ndarray]:
    for frame in frames:
        if kept is not None:
            kept.append(frame)
        yield frame


def _skip(record: ClipRecord, reason: str, detail: str) -> ClipResult:
    record.status, record.reason, record.detail = "skipped", reason, detail
    return ClipResult(record)


def is_silent(waveform: np.ndarray, dbfs: float) -> bool:
    if waveform.size == 0:
        return True
    rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64))))
    return rms <= 10 ** (dbfs / 20)


def process_video(
    path: str | Path,
    source: str,
    source_id: str,
    backend: LandmarkBackend,
    config: ClipConfig,
    split: str | None = None,
    *,
    ffmpeg_timeout_s: float | None = None,
    done: Container[str] = (),
    syncnet: Any = None,
) -> Iterator[ClipResult]:
    """Decode, track, cut into segments, crop and chunk one local video: one result per segment.

    ``split`` (required in clip mode) is the video's: all its segments share it, so no
    person leaks from train to test. Results come one segment at a time, so a long video
    never holds more than one segment's crops; a segment whose clip id is in ``done``
    (committed by an earlier run) is not yielded. A video with no cut up to
    ``--max-seconds`` makes one clip with the id ``source_id``, as before segmentation.
    A segment whose face changes person is split into one result per person (ids
    ``<segment id>-i0``, ``-i1``, ...; see :func:`_identity_parts`).

    ``source`` is what the manifest shows (the original URI); ``path`` is where the bytes
    are now. ``ffmpeg_timeout_s`` bounds each ffmpeg run (default: derived from
    ``config.max_video_seconds`` by :func:`~discohead.data.video.ffmpeg_timeout`); it is
    not a :class:`ClipConfig` field because it never changes a stored shard's bytes and a
    slower machine must be able to raise it without invalidating the DEST it resumes.
    ``syncnet`` is the loaded SyncNet (:func:`~discohead.metric_networks.syncnet_metric`)
    that estimates the audio-visual offset from the face crops under ``--av-method syncnet``.
    """
    record = ClipRecord(clip_id=source_id, source=source, status="ok", fps=float(config.fps), source_id=source_id)
    timeout_s = ffmpeg_timeout(config.max_video_seconds) if ffmpeg_timeout_s is None else ffmpeg_timeout_s
    try:
        yield from _process(Path(path), record, backend, config, split, timeout_s, done, syncnet)
    except MediaError as error:
        yield _skip(record, error.reason, error.detail)


def process_clip(
    path: str | Path,
    source: str,
    clip_id: str,
    backend: LandmarkBackend,
    config: ClipConfig,
    split: str | None = None,
    *,
    ffmpeg_timeout_s: float | None = None,
    syncnet: Any = None,
) -> ClipResult:
    """:func:`process_video` for a video that makes one clip (uncut, up to ``--max-seconds``, or skipped whole).

    Raises ValueError when the video makes several segments: callers that take any video
    use :func:`process_video`.
    """
    results = list(
        process_video(path, source, clip_id, backend, config, split, ffmpeg_timeout_s=ffmpeg_timeout_s, syncnet=syncnet)
    )
    if len(results) != 1:
        raise ValueError(f"{source} makes {len(results)} segments; use process_video")
    return results[0]


def max_video_frames(config: ClipConfig) -> int:
    """Most frames a video of ``--max-video-seconds`` yields at the target fps, plus one of rounding slack."""
    return int(config.max_video_seconds * config.fps + 1e-6) + 1


def max_segment_frames(config: ClipConfig) -> int:
    """Most frames one segment stores: ``--max-seconds`` at the target fps."""
    return int(config.max_seconds * config.fps + 1e-6)


def resume_state(records: Iterable[dict[str, Any]]) -> tuple[set[str], dict[str, set[str]]]:
    """From committed records: the source ids with every part committed, and the clip ids committed per source.

    A video's segments may be committed by different write tasks, so a crash can leave
    some of them; the next run redoes that video and stores only the missing ones.
    Records written before segmentation count as one-part sources under their clip id.
    A video's count is the largest ``parts`` of its records: an identity split adds parts,
    and records yielded before it carry the smaller count known then: still more than the
    records yielded up to them (but for the video's last), so a video missing one is never done.
    """
    committed: dict[str, set[str]] = {}
    parts: dict[str, int] = {}
    for record in records:
        source_id = record.get("source_id") or record["clip_id"]
        committed.setdefault(source_id, set()).add(record["clip_id"])
        parts[source_id] = max(parts.get(source_id, 1), int(record.get("parts", 1)))
    return {source_id for source_id, ids in committed.items() if len(ids) >= parts[source_id]}, committed


def _segment_record(base: ClipRecord, piece: Piece, index: int, pieces: int, config: ClipConfig) -> ClipRecord:
    record = ClipRecord(
        clip_id=base.source_id if pieces == 1 else f"{base.source_id}-s{index:03d}",
        source=base.source,
        status="ok",
        fps=base.fps,
        notes=list(base.notes),
        source_id=base.source_id,
        segment=index,
        parts=pieces,
        shot=piece.shot,
        start=round(piece.start / config.fps, 3),
        end=round(piece.end / config.fps, 3),
        decoded_frames=piece.frames,
    )
    return record


def samples_per_frame(config: ClipConfig) -> int:
    """Audio samples in one video frame's span (rounded when the rates do not divide)."""
    return int(round(config.mel.sample_rate / config.fps))


def _piece_waveform(waveform: np.ndarray, piece: Piece, whole: bool, config: ClipConfig, shift: int = 0) -> np.ndarray:
    """The piece's stretch of the audio (a whole video keeps its whole waveform, as before segmentation).

    With ``shift``, the stretch as :func:`~discohead.data.sync.shift_audio` would leave it in
    the whole recording moved ``shift`` frames earlier (zeros past the recording's ends),
    read from the piece's own samples: shifting a long video's whole waveform for each
    segment would copy hours of audio per segment.
    """
    step = samples_per_frame(config)
    if whole:
        return sync.shift_audio(waveform, shift, step) if shift else waveform
    sample_rate = config.mel.sample_rate
    first = int(round(piece.start / config.fps * sample_rate))
    end = min(first + int(round(piece.frames / config.fps * sample_rate)), len(waveform))
    if not shift:
        return waveform[first:end]
    moved = np.zeros(max(end - first, 0), waveform.dtype)
    start = first + shift * step  # where the stretch's first sample comes from
    low, high = max(start, 0), min(end + shift * step, len(waveform))
    if high > low:
        moved[low - start : high - start] = waveform[low:high]
    return moved


def _gate(record: ClipRecord, values: dict[str, float], config: ClipConfig) -> bool:
    """Store every measure on the record, then skip it on the first gate (:data:`curation.GATES`) it fails.

    True when skipped.
    """
    for name, value in values.items():
        record.measures[name] = round(value, 5)
    for name, value in values.items():
        failure = curation.GATES_BY_MEASURE[name].failure(value, config)
        if failure:
            _skip(record, curation.GATES_BY_MEASURE[name].reason, failure)
            return True
    return False


def _check_piece(
    record: ClipRecord,
    piece: Piece,
    track: FaceTrack,
    config: ClipConfig,
    whole: bool,
    frame: tuple[int, int, float],
    audio: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The piece's landmarks, crop boxes and audio shift in frames, or None when it is not stored (the record says why).

    ``frame`` is the decoded width and height and the source / decoded scale; ``audio``
    the piece's waveform, or None when there is no real audio to judge (silence kept
    under --allow-silent). The cheap gates and the audio-visual offset run here, before
    any crop is made; a confident offset up to ``--max-av-shift`` is corrected by
    shifting the audio, a larger one skips the piece.
    """
    if not whole and piece.frames < config.min_seconds * config.fps - 1e-6:
        _skip(record, "short_shot", f"{piece.frames / config.fps:.2f}s < --min-seconds {config.min_seconds:g}")
        return None
    if piece.frames < config.chunk_frames:
        _skip(record, "too_short", f"{piece.frames} usable frames < {config.chunk_frames}")
        return None
    found = track.found[piece.start : piece.end]
    missing = 1.0 - float(found.mean())
    if missing > config.max_missing_face:
        _skip(record, "no_face", f"no face in {missing:.0%} of frames (limit {config.max_missing_face:.0%})")
        return None
    several = int((track.face_counts[piece.start : piece.end] > 1).sum())
    if several:
        record.notes.append(f"several faces in {several} detections: tracked the largest")
    if not found.all():
        record.notes.append(f"no face in {int((~found).sum())} frames: landmarks interpolated")
    count = piece.frames
    width, height, scale = frame
    landmarks = fill_missing(track.landmarks[piece.start : piece.end].reshape(count, -1)).reshape(count, 68, 2)
    boxes = crop_boxes(landmarks, width, height, config.smoothing_sigma, config.crop_scale, config.crop_lift)
    yaw, pitch = curation.pose_extremes(landmarks)
    values = {
        "face_size": curation.face_size(boxes, scale),
        "jitter": curation.landmark_jitter(landmarks),
        "yaw": yaw,
        "pitch": pitch,
    }
    if audio is not None:
        values.update(audio_dbfs=curation.audio_dbfs(audio), clipping=curation.clipped_share(audio))
    if _gate(record, values, config):
        return None
    shift: int | None = 0
    if audio is not None and config.av_method == "lips":
        found = sync.av_offset(landmarks, audio, samples_per_frame(config), sample_rate=config.mel.sample_rate)
        shift = _act_on_offset(record, found, config)
        if shift is None:
            return None
    return landmarks, boxes, shift


def _act_on_offset(record: ClipRecord, found: sync.Offset, config: ClipConfig) -> int | None:
    """Record the estimate; the frames to shift the audio by (0: leave it), or None when the record is skipped.

    A trusted offset (:func:`~discohead.data.sync.offset_trusted`) up to ``--max-av-shift`` frames is corrected by
    shifting the audio, a larger one skips the segment; an untrusted one is only recorded.
    """
    offset, confidence = found.frames, found.confidence
    record.measures.update(av_offset=offset, av_confidence=round(confidence, 5), av_margin=round(found.margin, 5))
    if not offset or not sync.offset_trusted(confidence, found.margin, config):
        return 0
    frames = f"{abs(offset)} frame{'s' if abs(offset) > 1 else ''}"
    said = f"audio {frames} {'late' if offset > 0 else 'early'} ({config.av_method} confidence {confidence:.2f})"
    if abs(offset) > config.max_av_shift:
        _skip(record, "av_offset", f"{said} > --max-av-shift {config.max_av_shift}")
        return None
    record.notes.append(f"{said}: shifted to sync")
    return offset


def _process(
    path: Path,
    base: ClipRecord,
    backend: LandmarkBackend,
    config: ClipConfig,
    split: str | None,
    timeout_s: float,
    done: Container[str],
    syncnet: Any = None,
) -> Iterator[ClipResult]:
    if config.split_mode == "clip" and split is None:
        raise ValueError("split mode 'clip' needs the clip's split")
    if config.av_method == "syncnet" and syncnet is None:
        raise ValueError("--av-method syncnet needs the SyncNet network (metric_networks.syncnet_metric)")
    sample_rate = config.mel.sample_rate
    limit = config.max_video_seconds
    info, waveform = probe_and_decode_audio(path, sample_rate, limit, timeout_s=timeout_s)
    if not info.has_video:
        yield _skip(
            base,
            "no_video_stream",
            f"only an audio stream ({info.audio_codec})" if info.has_audio else "no stream ffmpeg can decode",
        )
        return
    if info.duration is not None and info.duration > limit:
        yield _skip(base, "too_long", f"{info.duration:.1f}s > --max-video-seconds {limit:g}")
        return
    notes = base.notes
    if info.fps and abs(info.fps - config.fps) > 0.01:
        notes.append(f"resampled from {info.fps:g} to {config.fps} fps")
    if info.height > info.width:
        notes.append(f"vertical frame {info.width}x{info.height}")
    if max(info.width, info.height) > config.max_frame_side:
        notes.append(f"large frame {info.width}x{info.height} decoded at most {config.max_frame_side} px a side")

    if waveform is not None:
        if is_silent(waveform, config.silence_dbfs):
            if not config.allow_silent:
                yield _skip(base, "silent_audio", f"audio RMS below {config.silence_dbfs:g} dBFS")
                return
            notes.append("silent audio kept (--allow-silent)")
    elif not config.allow_silent:
        yield _skip(base, "no_audio_stream", "the file has a video stream only")
        return
    else:
        notes.append("no audio stream: silence used (--allow-silent)")

    crop_width, crop_height = scaled_size(info.width, info.height, config.max_frame_side)
    detect_width, detect_height = scaled_size(info.width, info.height, config.detect_max_side)
    expected_bytes = (info.duration or limit) * config.fps * crop_width * crop_height * 3
    kept: list[np.ndarray] | None = (
        []
        if (crop_width, crop_height) == (detect_width, detect_height) and expected_bytes <= KEEP_FRAMES_BYTES
        else None
    )
    # Bounded whatever the header says (a raw .h264 stream has no duration): ffmpeg stops a
    # second past the limit, and a frame past it ends the video as too_long right away.
    bounds = {"max_seconds": limit + 1, "max_frames": max_video_frames(config), "timeout_s": timeout_s}
    shots = ShotDetector(config.fps, config.shot_threshold)
    try:
        track = track_largest_face(
            _keeping(shots.watch(iter_video_frames(path, config.fps, detect_width, detect_height, **bounds)), kept),
            backend,
            scale=crop_width / detect_width,
            detect_every=config.detect_every,
            restart_at=shots.cuts,
        )
    except MediaError as error:
        if error.reason != "too_long":
            raise
        raise MediaError("too_long", f"{error.detail} > --max-video-seconds {limit:g}") from None
    decoded = len(track)
    base.decoded_frames = decoded
    if info.duration and decoded < 0.9 * info.duration * config.fps - 2:
        yield _skip(
            base, "corrupt", f"decoded only {decoded} of about {info.duration * config.fps:.0f} frames (truncated?)"
        )
        return
    if waveform is None:
        waveform = np.zeros(int(round(decoded / config.fps * sample_rate)), np.float32)
    num_frames, waveform, note = reconcile_lengths(decoded, waveform, config.fps, sample_rate, config.audio_tolerance_s)
    if note:
        notes.append(note)
    pieces = plan_pieces(num_frames, shots.cuts, max_segment_frames(config), config.chunk_frames) or [
        Piece(0, num_frames, 0)
    ]
    if len(pieces) > 1:
        cuts = len({piece.shot for piece in pieces}) - 1
        notes.append(f"cut into {len(pieces)} segments ({cuts} shot cuts, at most {config.max_seconds:g}s each)")
    records = [_segment_record(base, piece, index, len(pieces), config) for index, piece in enumerate(pieces)]
    records[-1].decoded_frames += decoded - num_frames
    if len(pieces) == 1:
        records[0].decoded_frames = decoded
    whole = len(pieces) == 1
    real_audio = not is_silent(waveform, config.silence_dbfs)  # silence kept under --allow-silent is not judged
    frame = (crop_width, crop_height, info.width / crop_width)
    todo = []
    for record, piece in zip(records, pieces):
        audio = _piece_waveform(waveform, piece, whole, config) if real_audio else None
        fitted = _check_piece(record, piece, track, config, whole, frame, audio)
        if record.clip_id in done:
            continue
        if fitted is None:
            yield ClipResult(record)
        else:
            todo.append((record, piece, fitted))
    if not todo:
        return

    second_pass = kept if kept is not None else iter_video_frames(path, config.fps, crop_width, crop_height, **bounds)
    frames = enumerate(second_pass)
    extra = 0  # records added by identity splits: counted in the parts of every record yielded after them
    for position, (record, piece, (landmarks, boxes, shift)) in enumerate(todo):
        record.parts = len(pieces) + extra
        stored = piece.frames // config.chunk_frames * config.chunk_frames
        try:
            cropped = _crop_piece(frames, piece, stored, landmarks, boxes, config)
            reason, detail = "corrupt", f"second decoding pass ended before frame {piece.start + stored}"
        except MediaError as error:
            cropped, reason, detail = None, error.reason, error.detail
        if cropped is None:  # the rest of the video cannot be read: every segment left says why
            for rest, _, _ in todo[position:]:
                rest.parts = len(pieces) + extra
                yield _skip(rest, reason, detail)
            return
        crops, crop_landmarks, sharpness = cropped
        if _gate(record, {"sharpness": sharpness}, config):
            yield ClipResult(record)
            continue
        runs = [curation.IdentityRun(0, stored - 1, 0.0)]
        if config.max_identity_distance > 0:  # 0: not checked (the embeddings are a third of a short segment's work)
            picks = curation.identity_picks(stored, round(curation.IDENTITY_EVERY_SECONDS * config.fps))
            embeddings = curation.identity_embeddings(crops, picks)
            runs = curation.identity_runs(embeddings, picks, config.max_identity_distance)
            if len(runs) > 1:
                runs = curation.locate_changes(crops, runs, embeddings, picks, config.max_identity_distance)
            record.measures["identity_distance"] = round(curation.largest_distance(embeddings), 5)
        if real_audio and config.av_method == "syncnet":
            found = sync.syncnet_offset(
                syncnet, crops, _piece_waveform(waveform, piece, whole, config), config.mel.sample_rate
            )
            shift = _act_on_offset(record, found, config)
            if shift is None:
                yield ClipResult(record)
                continue
        if len(runs) == 1:
            audio = _piece_waveform(waveform, piece, whole, config, shift)
            yield _store_piece(record, piece, stored, (crops, crop_landmarks), audio, config, split)
            continue
        extra += len(runs) - 1
        for part, part_piece, first in _identity_parts(record, piece, runs, stored, config):
            part.parts = len(pieces) + extra
            if part.clip_id in done:
                continue
            if not part.stored:
                yield ClipResult(part)
                continue
            kept_frames = part_piece.frames // config.chunk_frames * config.chunk_frames
            window = slice(first, first + kept_frames)
            audio = _piece_waveform(waveform, part_piece, False, config, shift)
            yield _store_piece(
                part, part_piece, kept_frames, (crops[window], crop_landmarks[window]), audio, config, split
            )


def _identity_parts(
    record: ClipRecord, piece: Piece, runs: list[curation.IdentityRun], stored: int, config: ClipConfig
) -> list[tuple[ClipRecord, Piece, int]]:
    """A piece whose face changes person, as one record per run of one person: the record, its frames, their offset.

    Each part keeps the frames from its run's first frame (the piece's first frame for the
    first run) to its last (the last cropped frame for the last run); with the changes placed
    by :func:`~discohead.data.curation.locate_changes` one part ends on the frame before the
    next begins. Any frames left between two runs are dropped. The parts share the
    piece's segment index and measures (their own identity distance excepted); their ids
    add ``-i0``, ``-i1``, ... to the piece's. A part shorter than one chunk or
    ``--min-seconds`` is skipped as ``identity_change``.
    """
    fps = config.fps
    spans = [
        (0 if index == 0 else run.first, stored if index == len(runs) - 1 else run.last + 1)
        for index, run in enumerate(runs)
    ]
    changes = ", ".join(
        f"{(piece.start + end) / fps:.2f}s"
        if next_first == end
        else f"{(piece.start + end) / fps:.2f}-{(piece.start + next_first) / fps:.2f}s (dropped)"
        for (_, end), (next_first, _) in zip(spans, spans[1:])
    )
    note = f"the face changes person: split into {len(runs)} parts at {changes}"
    parts = []
    decoded = 0
    for index, ((first, end), run) in enumerate(zip(spans, runs)):
        part_piece = Piece(piece.start + first, piece.start + end, piece.shot)
        own = record.decoded_frames - decoded if index == len(runs) - 1 else spans[index + 1][0] - first
        decoded += own
        part = replace(
            record,
            clip_id=f"{record.clip_id}-i{index}",
            notes=[*record.notes, note],
            measures={**record.measures, "identity_distance": round(run.distance, 5)},
            start=round(part_piece.start / fps, 3),
            end=round(part_piece.end / fps, 3),
            decoded_frames=own,
        )
        frames = end - first
        if frames < config.chunk_frames or frames < config.min_seconds * fps - 1e-6:
            said = f"{frames / fps:.2f}s of one person < one chunk ({config.chunk_frames} frames) or --min-seconds"
            _skip(part, "identity_change", f"{said} {config.min_seconds:g} (--max-identity-distance)")
        parts.append((part, part_piece, first))
    return parts


def _crop_piece(
    frames: Iterator[tuple[int, np.ndarray]],
    piece: Piece,
    stored: int,
    landmarks: np.ndarray,
    boxes: np.ndarray,
    config: ClipConfig,
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Face crops of the piece's first ``stored`` frames from the shared frame stream, their landmarks, sharpness.

    The crop boxes were smoothed within the piece only: smoothing across a cut would drag
    the box toward the other shot's face. Sharpness is measured on crops of the same boxes
    at a fixed size (see :mod:`discohead.data.curation`). None when the stream ends early.
    """
    size = config.image_size
    crops = np.empty((stored, size, size, 3), np.uint8)
    measured = []
    cropped = 0
    for index, frame in frames:
        if index < piece.start:
            continue
        offset = index - piece.start
        crops[offset] = crop_and_resize(frame, boxes[offset], size)
        if offset % SHARPNESS_EVERY == 0:
            sample = crop_and_resize(frame, boxes[offset], curation.SHARPNESS_SIZE)
            measured.append(curation.laplacian_variance(sample))
        cropped += 1
        if cropped == stored:
            break
    if cropped < stored:
        return None
    return crops, landmarks_to_crop(landmarks[:stored], boxes[:stored], size), float(np.median(measured))


def _store_piece(
    record: ClipRecord,
    piece: Piece,
    stored: int,
    cropped: tuple[np.ndarray, np.ndarray],
    waveform: np.ndarray,
    config: ClipConfig,
    split: str | None,
) -> ClipResult:
    """The piece's chunks as shard samples; mel windows from the piece's own ``waveform``."""
    crops, crop_landmarks = cropped
    size = config.image_size
    eye_boxes = eye_box_from_landmarks(torch.from_numpy(crop_landmarks), size).numpy()
    mel = clip_windows(torch.from_numpy(waveform), piece.frames, config.fps, config.mel).numpy().astype(np.float16)

    chunk_frames = config.chunk_frames
    num_chunks = stored // chunk_frames
    if config.split_mode == "clip":
        splits = [split] * num_chunks
        record.split = split
    else:
        splits = time_split(num_chunks, config.train_ratio)
        record.split = "time"
    samples = []
    for chunk, chunk_split in enumerate(splits):
        first = chunk * chunk_frames
        window = slice(first, first + chunk_frames)
        meta = {
            "clip_id": record.clip_id,
            "source": record.source,
            "chunk": chunk,
            "first_frame": first,
            "fps": config.fps,
            "image_size": size,
            "split": chunk_split,
        }
        samples.append(
            (
                chunk_split,
                encode_sample(
                    f"{record.clip_id}_{chunk:04d}",
                    crops[window],
                    mel[window],
                    crop_landmarks[window],
                    eye_boxes[window],
                    meta,
                ),
            )
        )
    record.frames = stored
    record.end = round((piece.start + stored) / config.fps, 3)
    if piece.frames > stored:
        record.notes.append(f"last {piece.frames - stored} frames dropped (not a whole chunk)")
    return ClipResult(record, samples)
