"""Timing shared by the benchmark CLIs: candidates run alternately (A B C A B C ...) so drift in the machine's
speed hits all of them alike; each figure is the best and the median of the repeats."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch


def time_alternating(candidates: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                     inner: int = 1) -> dict[str, dict[str, float]]:
    """{name: {"best": s, "median": s}} per call of each candidate, `inner` calls per timed sample."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: {"best": min(s), "median": statistics.median(s)} for name, s in samples.items()}


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def format_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-markdown table."""
    cells = [[str(c) for c in header]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |"] + [line(r) for r in cells[1:]])
