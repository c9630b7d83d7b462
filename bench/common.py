"""What every benchmark shares: the machine's description and appending a table to docs/benchmarks.md."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

BENCHMARKS_FILE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def machine_description() -> str:
    """One line: CPU, cores, memory, GPU (if any) and software versions."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"{cpu_model()}, {cores} cores, {memory_gib():.0f} GiB RAM"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    else:
        parts.append("no GPU")
    parts.append(
        f"Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    )
    return "; ".join(parts)


def median_seconds(work: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu") -> float:
    """Median wall time of ``work`` over ``repeats`` runs after ``warmup`` untimed ones."""

    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        work()
    synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_gflops(device: str = "cpu", size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """The machine's dense matrix-multiply rate, the yardstick for model throughput."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats, device=device) / 1e9


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def append_report(title: str, body: str, path: Path = BENCHMARKS_FILE) -> None:
    """Append a dated section with the machine's description to docs/benchmarks.md."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"\n## {title} ({stamp})\n\nMachine: {machine_description()}\n\n{body.strip()}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(
            "# Benchmarks\n\nAppended by the scripts in `bench/`; newest last. "
            "Medians of repeated runs; ratios are measured in the same run.\n"
        )
    with path.open("a") as handle:
        handle.write(section)
    print(f"appended to {path}")
