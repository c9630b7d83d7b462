"""What a job prints: by default only what a user acts on; ``--verbose`` brings back Ray's and MLflow's own.

A job's useful lines all carry its tag (``[preprocess]``, ``[train affine-dm]``, ``[evaluate]``,
``[generate]``): stage starts and ends, per-clip or per-step progress with rates and ETA, our
warnings, one-line errors and the summary. Around them Ray and MLflow print their internals:
Ray Data's progress tables, raylet and core-worker warnings, deprecation notices, MLflow's
database set-up and per-file download bars, every worker line once per worker or folded by Ray's
dedup. ``quiet`` turns those off with each library's own switch:

- Ray's driver logger (``ray.init(logging_level=...)``) and Ray Data's console handler to ERROR,
  Ray Data's progress output off (``DataContext.enable_progress_bars``);
- MLflow's loggers to WARNING and its artifact download bars off
  (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``); SQLAlchemy's migration notices (alembic) likewise;
- Python's warnings for what libraries deprecate or advise (filters below).

What no switch does: Ray forwards every worker's stdout and stderr to the driver (its own
warnings included), with a ``(Name pid=N)`` prefix and dedup that folds lines of different
workers into "[repeated 4x]". ``forward_worker_lines`` swaps the driver's printer for those lines
(``ray._private.worker.print_to_stdstream``; the public ``log_to_driver`` is all or nothing) for
one that prints a worker's tagged lines once each, without the prefix, and drops the rest (a line
a worker printed twice, as Ray Train's print patch does when MLflow or colorama wrap stdout, is
printed once); Ray 2.60 is pinned by the lock, and a Ray without that function keeps its own
printer and says so once. The driver's C++ core worker writes its log to fd 2 directly:
``filter_native_stderr`` drops those lines (fatal ones pass). With ``--verbose`` none of this is done.

Errors are never hidden: a failed task or worker raises on the driver, which prints its one-line
reason (``pipelines.cli.run_job``) or its traceback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

TAGGED = re.compile(r"^\[(preprocess|train|evaluate|generate)\b")
"""A line a job prints for its user (workers and driver alike)."""

NATIVE_LOG = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWE] \d+ \d+\] \S+\.(cc|h):\d+: ")
"""A line of Ray's C++ log, debug to error (fatal ones stay): ``[2026-12-07 13:02:10,225 E 4758 4758] x.cc:2465: ``"""

QUIET_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_LOGGING_LEVEL": "WARNING"}
"""Read by MLflow when it starts or downloads; set only where the user has not set them."""

QUIET_LOGGERS = {"mlflow": logging.WARNING, "alembic": logging.WARNING, "ray": logging.ERROR}


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also print Ray's and MLflow's own log lines and warnings"
    )


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every Ray job has: where Ray is, and how much it says."""
    where = "Ray cluster to join (default: RAY_ADDRESS, set by `ray job submit`; else a new local Ray)"
    parser.add_argument("--ray-address", default=None, help=where)
    add_verbose_flag(parser)


def quiet(verbose: bool) -> None:
    """Before MLflow logs anything: the libraries' own output off unless ``verbose``."""
    if verbose:
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # What libraries deprecate or advise is for their callers' developers, not for a user of the job.
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(ray|mlflow|torch\w*|pydantic|sqlalchemy)\b")
    warnings.filterwarnings("ignore", message=r"Add type hints to the `predict` method")


def init_ray(address: str | None, verbose: bool, **kwargs: Any) -> None:
    """``ray.init`` for a job: join ``address`` (or RAY_ADDRESS) or start a local Ray, quiet unless ``verbose``."""
    import ray
    import ray.data

    if not verbose:  # quiet() ran already: pipelines.cli.run_job calls it before the job starts
        filter_native_stderr()
        forward_worker_lines()
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, logging_level="WARNING" if verbose else "ERROR", **kwargs)
    if not verbose:
        ray.data.DataContext.get_current().enable_progress_bars = False  # our per-clip and per-step lines instead
        for handler in logging.getLogger("ray.data").handlers:  # the console one; its file log stays complete
            if not isinstance(handler, logging.FileHandler) and type(handler).__name__ != "SessionFileHandler":
                handler.setLevel(logging.ERROR)


def worker_printer() -> Callable[[dict[str, Any], bool], None]:
    """Ray's ``print_to_stdstream``, quiet: a worker's tagged lines once each, no prefix, nothing else."""
    recent: dict[Any, deque[str]] = defaultdict(lambda: deque(maxlen=32))

    def print_ours(batch: dict[str, Any], ignore_prefix: bool = True) -> None:
        if batch.get("pid") in ("raylet", "autoscaler"):
            return
        sink = sys.stderr if batch.get("is_err") else sys.stdout
        seen = recent[(batch.get("ip"), batch.get("pid"))]
        for line in batch.get("lines", []):
            # Ray Train's print patch tees a worker's print to its logger: the same line twice in a row
            if TAGGED.match(line) and line not in seen:
                seen.append(line)
                print(line, file=sink, flush=True)

    return print_ours


def forward_worker_lines() -> None:
    """Before ``ray.init``: the driver prints forwarded worker output with ``worker_printer`` (module docstring)."""
    try:
        from ray._private import worker
    except ImportError:
        worker = None
    if not callable(getattr(worker, "print_to_stdstream", None)):
        print("[discohead] this Ray's log forwarding is not the one of Ray 2.60: its own lines stay", file=sys.stderr)
        return
    worker.print_to_stdstream = worker_printer()


_native_filter: threading.Thread | None = None


def filter_native_stderr() -> None:
    """Drop Ray's C++ log lines (``NATIVE_LOG``) that this process writes to its stderr; pass everything else.

    The driver's core worker logs to file descriptor 2 directly (an error-level notice each time Ray
    Data starts an actor pool, for one), where no Python logging setting reaches; its only switch,
    RAY_BACKEND_LOG_LEVEL, announces itself on stderr in every process. So fd 2 becomes a pipe read
    by a thread that forwards all but those lines; at exit the pipe is drained and fd 2 restored.
    """
    global _native_filter
    if _native_filter is not None:
        return
    original = os.dup(2)
    read_end, write_end = os.pipe()

    def forward(data: bytes) -> None:
        with contextlib.suppress(OSError):  # a closed reader (`| head`): keep draining, or the job would block
            os.write(original, data)

    def relay() -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            if kept := b"".join(line + b"\n" for line in lines if not NATIVE_LOG.match(line)):
                forward(kept)
        if pending and not NATIVE_LOG.match(pending):
            forward(pending)
        os.close(read_end)

    def restore() -> None:  # registered after Ray's own exit handler, so it runs first: Ray stops here
        import ray

        ray.shutdown()
        sys.stderr.flush()
        os.dup2(original, 2)  # closes this process's write end; the relay drains what is left, then ends
        _native_filter.join(timeout=2)

    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    _native_filter = threading.Thread(target=relay, name="discohead-stderr", daemon=True)
    _native_filter.start()
    atexit.register(restore)
