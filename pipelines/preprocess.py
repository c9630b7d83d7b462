"""Preprocessing job: raw talking-head videos to face-cropped WebDataset shards.

    python pipelines/preprocess.py --input SRC [--input SRC ...] --output DEST [options]
    ray job submit --address http://HEAD:8265 -- python pipelines/preprocess.py ...

Run directly it starts a local Ray; under ``ray job submit`` it joins the cluster. The
work itself lives in ``discohead.data``; this file only wires it into Ray Data:
list inputs -> process videos into segment clips (actor pool, one landmark model per
actor) -> write shards (a Datasink packing clips into tars) -> manifest. See
docs/preprocessing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import ray
from ray.data import Datasink
from ray.data.block import BlockAccessor

from discohead import flags
from discohead.contracts import MANIFEST_NAME, SPLITS, STATS_NAME, ClipConfig
from discohead.data.clips import SKIP_REASONS, assign_clip_splits, clip_id_for, process_video, resume_state
from discohead.data.curation import STATS_PLOT_NAME, stage_throughput, stats_files, write_stats
from discohead.data.landmarks import BackendUnavailable, load_landmark_backend
from discohead.data.lock import DestLock
from discohead.data.shards import ShardWriterTask, load_commits, remove_outputs
from discohead.data.sources import fetch_to_local, is_url, list_sources
from discohead.data.video import MediaError, ffmpeg_timeout
from discohead.manifest import ClipRecord, Manifest, ShardFormatError, config_hash, settings_json
from discohead.metric_networks import SYNCNET, syncnet_metric
from discohead.pretrained import PretrainedWeightsUnavailable
from discohead.storage import filesystem_for, s3_options
from discohead.tracking import DataRun, flat_params, requested_tracking_uri, without_credentials
from pipelines.cli import UsageError, run_job
from pipelines.console import add_job_flags, init_ray


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The job's own flags, and one flag per :class:`ClipConfig` field (its defaults, its help)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="SRC",
        help="folder, glob, list file (.txt) or s3:// prefix; repeatable",
    )
    parser.add_argument("--output", required=True, metavar="DEST", help="local folder or s3:// prefix")
    parser.add_argument(
        "--landmarks",
        default="auto",
        choices=("auto", "dlib", "face-alignment"),
        help="landmark backend (default: auto)",
    )
    parser.add_argument(
        "--shard-size-mb", type=float, default=256.0, help="target size of one tar shard (default: 256)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="clip-processing actors (default: one per CPU of the cluster)"
    )
    parser.add_argument(
        "--s3-endpoint",
        default=None,
        help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL from the environment)",
    )
    parser.add_argument(
        "--ffmpeg-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="kill an ffmpeg run after this many seconds and skip its clip as `timeout` (default: 60 + 10 x "
        "--max-seconds; not a shard setting, so changing it does not invalidate DEST)",
    )
    parser.add_argument(
        "--syncnet-weights",
        default=None,
        metavar="PATH",
        help="syncnet_v2.model for --av-method syncnet (default: DISCOHEAD_SYNCNET_WEIGHTS, else the torch hub "
        "cache); on a cluster the path must exist on every node",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete what earlier runs wrote to DEST (the files its manifest and commits list) and redo every clip",
    )
    parser.add_argument(
        "--break-lock",
        action="store_true",
        help="take DEST's lock from a job that is gone (its process ended, or no heartbeat for 15 min)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI to log the run's settings, dataset statistics and stats.json/stats.png to "
        "(default: MLFLOW_TRACKING_URI; with neither, nothing is logged)",
    )
    parser.add_argument(
        "--experiment",
        default="discohead-preprocess",
        help="MLflow experiment of that run (default: discohead-preprocess)",
    )
    add_job_flags(parser)
    flags.add_flags(parser.add_argument_group("shard settings (recorded in the manifest)"), ClipConfig)
    args = parser.parse_args(argv)
    try:
        args.config = flags.build(ClipConfig, ClipConfig(), flags.given(args, ClipConfig))
    except ValueError as error:
        parser.error(str(error))
    if args.ffmpeg_timeout is not None and not args.ffmpeg_timeout > 0:
        parser.error(f"--ffmpeg-timeout must be positive, not {args.ffmpeg_timeout:g}")
    if args.config.av_method == "syncnet":  # a missing or wrong file is refused here, not in every worker
        try:
            args.syncnet_weights = str(SYNCNET.locate(args.syncnet_weights))
        except PretrainedWeightsUnavailable as error:
            parser.error(str(error))
    try:  # out-of-range values stop here, not in the workers
        flags.check_range("--shard-size-mb", args.shard_size_mb, 0, 1 << 20, above=True)
        flags.check_range("--workers", args.workers, 1)
    except ValueError as error:
        parser.error(str(error))
    return args


def storage_options_from(args: argparse.Namespace) -> dict[str, Any]:
    """fsspec options for s3:// paths (the endpoint; credentials stay in the environment)."""
    return s3_options("s3://", args.s3_endpoint)


def options_for(url: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    return storage_options if url.startswith("s3://") else {}


# --- Ray Data stages ---------------------------------------------------------------


def list_input(row: dict[str, Any], storage_options: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage 1: one ``--input`` value to the files it names.

    A miss becomes a ``not_found`` row, an input (or an entry of a list file) that cannot
    be read an ``unreadable_input`` row. Each file carries a ``key``, its real path (on
    the node that listed it), so the driver keeps one name per file across inputs.
    """
    spec = row["input"]
    try:
        found, problems = list_sources(spec, options_for(spec, storage_options))
    except (OSError, ValueError) as error:
        return [
            {
                "input": spec,
                "source": None,
                "key": None,
                "reason": "unreadable_input",
                "error": f"{type(error).__name__}: {error}",
            }
        ]
    rows = [
        {"input": problem.entry, "source": None, "key": None, "reason": problem.reason, "error": problem.detail}
        for problem in problems
    ]
    if not found and not problems:
        return [{"input": spec, "source": None, "key": None, "reason": "not_found", "error": "matches no file"}]
    return rows + [
        {"input": spec, "source": s, "key": s if is_url(s) else os.path.realpath(s), "reason": None, "error": None}
        for s in found
    ]


class ClipProcessor:
    """Stages 2-7 for one video per call, a row per segment; the landmark model loads once per actor.

    Rows come out as segments finish (a generator under ``flat_map``), so a long video
    never holds more than one segment's crops.
    """

    def __init__(
        self,
        backend_name: str,
        config: ClipConfig,
        storage_options: dict[str, Any],
        ffmpeg_timeout_s: float | None = None,
        syncnet_weights: str | None = None,
    ):
        import torch

        torch.set_num_threads(1)
        self.backend, _ = load_landmark_backend(backend_name)
        self.syncnet = syncnet_metric(syncnet_weights) if config.av_method == "syncnet" else None
        self.config = config
        self.storage_options = storage_options
        self.ffmpeg_timeout_s = ffmpeg_timeout_s

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        source, clip_id = row["source"], row["clip_id"]
        started_at = started = time.time()
        yielded = 0
        with tempfile.TemporaryDirectory(prefix="discohead-clip-") as scratch:
            try:
                local = fetch_to_local(source, scratch, options_for(source, self.storage_options))
                if not os.path.exists(local):
                    raise MediaError("not_found", "the file does not exist")
                results = process_video(
                    local,
                    source,
                    clip_id,
                    self.backend,
                    self.config,
                    row["split"] or None,
                    ffmpeg_timeout_s=self.ffmpeg_timeout_s,
                    done=set(row["done"]),
                    syncnet=self.syncnet,
                )
                for result in results:
                    yield self.row(result.record, result.samples, started_at, started)
                    started = time.time()
                    yielded += 1
                return
            except MediaError as error:
                record = ClipRecord(clip_id, source, "skipped", error.reason, error.detail)
            except OSError as error:
                record = ClipRecord(clip_id, source, "skipped", "unreadable_input", f"{type(error).__name__}: {error}")
            except Exception as error:  # one odd file must not stop the job; the manifest says what happened
                record = ClipRecord(clip_id, source, "skipped", "failed", f"{type(error).__name__}: {error}")
        if yielded:  # segments already went out: the failure is on the video's log line, its next run redoes the rest
            print(f"[preprocess] {clip_id}: stopped after {yielded} segments ({record.detail})", flush=True)
            return
        yield self.row(record, [], started_at, started)

    @staticmethod
    def row(record: ClipRecord, samples: list, started_at: float, started: float) -> dict[str, Any]:
        """One output row: a segment's record and its encoded samples; its time is since the previous row."""
        elapsed = time.time() - started
        record.started_at, record.seconds = round(started_at, 3), round(elapsed, 3)
        outcome = f"{record.frames} frames" if record.status == "ok" else f"skipped ({record.reason}: {record.detail})"
        print(f"[preprocess] {record.clip_id}: {outcome} in {elapsed:.1f}s", flush=True)
        return {"clip_id": record.clip_id, "record": json.dumps(record.to_json()), "payload": pickle.dumps(samples)}


class ShardDatasink(Datasink):
    """Stage 8: each write task packs its clips into tars and commits them (see discohead.data.shards)."""

    def __init__(self, dest: str, storage_options: dict[str, Any], run_id: str, target_bytes: int, config_hash: str):
        self.dest = dest
        self.storage_options = storage_options
        self.run_id = run_id
        self.target_bytes = target_bytes
        self.config_hash = config_hash

    @property
    def min_bytes_per_write(self) -> int:
        return self.target_bytes

    def write(self, blocks, ctx) -> str:
        """Write this task's clips; returns, as JSON, the commit name and the task's seconds, segments and
        stored frames (the driver rereads all commits; the rest is the stage's throughput).

        The writer's staging folder is removed if anything fails (a local temporary folder
        for object storage, which no later run would clean).
        """
        started, segments, frames = time.perf_counter(), 0, 0
        with ShardWriterTask(
            self.dest, self.storage_options, f"{self.run_id}-{ctx.task_idx:05d}", self.target_bytes
        ) as writer:
            for block in blocks:
                for row in BlockAccessor.for_block(block).iter_rows(public_row_format=True):
                    record = ClipRecord(**json.loads(row["record"]))
                    writer.add_clip(record, pickle.loads(row["payload"]))
                    segments, frames = segments + 1, frames + record.frames * record.stored
            name = writer.commit(extra={"config_hash": self.config_hash})["name"]
        seconds = round(time.perf_counter() - started, 3)
        return json.dumps({"name": name, "seconds": seconds, "segments": segments, "frames": frames})

    def on_write_complete(self, write_result) -> None:
        """On the driver, once every write task is done: their returns, for :func:`stage_throughput`."""
        self.results = [json.loads(value) for value in write_result.write_returns if value]


# --- driver ------------------------------------------------------------------------


def resolve_backend(name: str) -> str:
    try:
        backend, reasons = load_landmark_backend(name)
    except BackendUnavailable as error:
        raise UsageError(f"no landmark backend can run here: {error}") from None
    for reason in reasons:
        print(f"[preprocess] landmark backend unavailable: {reason}")
    print(f"[preprocess] landmark backend: {backend.name}")
    return backend.name


def list_inputs(inputs: list[str], storage_options: dict[str, Any]) -> tuple[list[str], list[ClipRecord]]:
    rows = (
        ray.data.from_items([{"input": spec} for spec in inputs])
        .flat_map(list_input, fn_kwargs={"storage_options": storage_options})
        .take_all()
    )
    sources, skipped, seen = [], [], set()
    for row in rows:
        if row["source"] is None:
            skipped.append(ClipRecord(None, row["input"], "skipped", row["reason"], row["error"]))
        elif row["key"] not in seen:  # one file named by two inputs (or two names) is one clip
            seen.add(row["key"])
            sources.append(row["source"])
    return sources, skipped


def print_summary(
    manifest: Manifest,
    decoded_frames: int,
    stored_frames: int,
    process_seconds: float,
    wall_seconds: float,
    workers: int,
) -> None:
    totals = manifest.totals
    print("[preprocess] summary")
    chunks = (
        f"{totals.chunks['train']} train / {totals.chunks['test']} test chunks of {manifest.config.chunk_frames} frames"
    )
    print(f"  clips written   {totals.clips} ({chunks})")
    print(f"  clips skipped   {totals.skipped}")
    for reason, count in totals.skipped_by_reason.items():
        print(f"    {reason:<16}{count:>4}  {SKIP_REASONS.get(reason, '')}")
    print(f"  frames          {totals.frames} ({totals.seconds / 60:.2f} min of video)")
    rate = decoded_frames / process_seconds if process_seconds > 0 else 0.0
    print(
        f"  this run        {decoded_frames} frames decoded ({stored_frames} stored) in {process_seconds:.1f}s = "
        f"{rate:.1f} frames/s ({rate / workers:.1f} per worker)"
    )
    print(f"  wall time       {wall_seconds:.1f}s including Ray start-up and listing")


def read_commits(fs, root: str) -> list[dict[str, Any]]:
    """The complete commits under DEST (repairing what a crash left); a damaged one is a one-line error."""
    try:
        return load_commits(fs, root)
    except ShardFormatError as error:
        raise UsageError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    """The job, holding DEST's lock throughout: a second job writing DEST is refused in one line."""
    storage_options = storage_options_from(args)
    fs, root = filesystem_for(args.output, options_for(args.output, storage_options))
    tracking = DataRun(requested_tracking_uri(args.tracking_uri), args.experiment)
    with DestLock(fs, root, args.output, break_stale=args.break_lock) as lock, tracking:
        return write_dest(args, lock, tracking)


def write_dest(args: argparse.Namespace, lock: DestLock, tracking: DataRun) -> int:
    """The job's work; ``tracking`` (MLflow, when a tracking URI is set) gets a run once the settings are known."""
    started = time.time()
    config: ClipConfig = args.config
    storage_options = storage_options_from(args)
    dest_options = options_for(args.output, storage_options)
    fs, root = filesystem_for(args.output, dest_options)
    if args.overwrite:
        removed = remove_outputs(fs, root, args.output)
        print(f"[preprocess] --overwrite: deleted {len(removed)} files of earlier runs from {args.output}")
    commits = read_commits(fs, root)  # before Ray starts: a damaged DEST is refused at once

    init_ray(args.ray_address, args.verbose)
    cpus = ray.cluster_resources().get("CPU", 1)
    backend_name = resolve_backend(args.landmarks)
    digest = config_hash(settings_json(config, backend_name))

    other = {commit.get("config_hash") for commit in commits} - {digest}
    if other:
        raise UsageError(
            f"{args.output} holds shards made with other settings (config {sorted(other)[0]}); use --overwrite or "
            "another --output"
        )

    run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    params = {
        **flat_params(settings_json(config, backend_name)),
        "data_config_hash": digest,
        "output": without_credentials(args.output),
        "inputs": ", ".join(without_credentials(spec) for spec in args.input)[:5000],
    }
    if tracking.start(run_id, params):
        where = f"experiment {args.experiment!r} at {without_credentials(tracking.uri or '')}"
        print(f"[preprocess] MLflow run {tracking.run_id} ({where})")
    listing_started = time.perf_counter()
    sources, listing_skips = list_inputs(args.input, storage_options)
    listing_seconds = time.perf_counter() - listing_started
    clip_ids = {source: clip_id_for(source) for source in sources}
    splits = (
        assign_clip_splits(sorted(clip_ids.values()), config.train_ratio, config.seed)
        if config.split_mode == "clip"
        else {}
    )
    done, committed = resume_state(clip for commit in commits for clip in commit["clips"])
    todo = [
        {
            "source": s,
            "clip_id": clip_ids[s],
            "split": splits.get(clip_ids[s], ""),
            "done": sorted(committed.get(clip_ids[s], ())),
        }
        for s in sources
        if clip_ids[s] not in done
    ]
    print(
        f"[preprocess] {len(sources)} input files: {len(sources) - len(todo)} already done, {len(todo)} to process "
        f"on {cpus:g} CPUs"
    )

    workers = args.workers or max(1, int(cpus))
    processed_frames, decoded_frames, process_seconds = 0, 0, 0.0
    this_run: list[dict[str, Any]] = []
    writes: list[dict[str, Any]] = []
    if todo:
        process_started = time.perf_counter()
        dataset = ray.data.from_items(todo, override_num_blocks=len(todo)).flat_map(
            ClipProcessor,
            fn_constructor_kwargs={
                "backend_name": backend_name,
                "config": config,
                "storage_options": storage_options,
                "ffmpeg_timeout_s": args.ffmpeg_timeout,
                "syncnet_weights": args.syncnet_weights,
            },
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        sink = ShardDatasink(args.output, dest_options, run_id, int(args.shard_size_mb * 1024 * 1024), digest)
        dataset.write_datasink(sink, ray_remote_args={"num_cpus": 0})
        process_seconds = time.perf_counter() - process_started
        writes = getattr(sink, "results", [])
        commits = read_commits(fs, root)
        this_run = [clip for commit in commits if commit["name"].startswith(run_id) for clip in commit["clips"]]
        processed_frames = sum(clip["frames"] for clip in this_run)
        decoded_frames = sum(clip.get("decoded_frames", 0) for clip in this_run)

    elapsed = time.time() - started
    run_info = {
        "id": run_id,
        "inputs": args.input,
        "resumed_clips": len(sources) - len(todo),
        "processed_clips": len(todo),
        "workers": workers,
        "cluster_cpus": cpus,
        "ffmpeg_timeout_s": args.ffmpeg_timeout or ffmpeg_timeout(config.max_video_seconds),
        "processed_frames": processed_frames,
        "decoded_frames": decoded_frames,
        "process_seconds": round(process_seconds, 3),
        "wall_seconds": round(elapsed, 3),
    }
    manifest = Manifest.build(config, backend_name, commits, listing_skips, run_info)
    throughput = stage_throughput(listing_seconds, len(sources), this_run, writes, process_seconds, elapsed, workers)
    lock.check()
    stats = write_stats(manifest, args.output, dest_options, throughput)
    manifest.write(args.output, dest_options)
    print_summary(manifest, decoded_frames, processed_frames, process_seconds, elapsed, workers)
    print(
        f"  curation        {stats['hours_decoded']:.3f} h decoded, {stats['hours_kept']:.3f} h kept in "
        f"{stats['segments_kept']} segments (distributions in {STATS_NAME}, histograms in {STATS_PLOT_NAME})"
    )
    if tracking.run_id:
        tracking.finish(stats, stats_files(manifest, stats), "no clip was written" if not manifest.totals.clips else "")
        print(
            f"[preprocess] logged the settings, statistics, {STATS_NAME} and {STATS_PLOT_NAME} to MLflow run "
            f"{tracking.run_id}"
        )
    if manifest.totals.clips == 0:
        print(
            f"[preprocess] error: no clip was written; the reasons are in {args.output.rstrip('/')}/{MANIFEST_NAME}",
            file=sys.stderr,
        )
        return 1
    print(f"[preprocess] wrote {args.output.rstrip('/')}/{{{','.join(SPLITS)}}}/*.tar and {MANIFEST_NAME}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (`ray job stop`, a scheduler) ends the job like an error, so DEST's lock is released;
    # ray.init installs the same handler, this covers the seconds before it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return run_job("preprocess", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
