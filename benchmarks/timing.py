"""Timing shared by the benchmark CLIs: candidates run alternately (A B C A B C ...) so drift in the machine's
speed hits all of them alike. Each round gives one sample per candidate: the mean time of enough calls to last
about `min_time` (at least one call); callers quote the best and the median of the rounds."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Hashable

import torch

from gpt_fast.cli.machine import cpu_name


def time_alternating(candidates: dict[Hashable, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                     min_time: float = 0.0, clock: Callable[[], float] = time.perf_counter
                     ) -> dict[Hashable, list[float]]:
    """{name: [seconds per call, one per round]}. clock: time.perf_counter, or a CPU-time clock
    (time.process_time, time.thread_time) on a shared machine."""
    calls = {}
    for name, fn in candidates.items():
        for _ in range(warmup):
            fn()
        start = time.perf_counter()
        fn()
        calls[name] = max(1, int(min_time / max(time.perf_counter() - start, 1e-7)))
    samples: dict[Hashable, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = clock()
            for _ in range(calls[name]):
                fn()
            samples[name].append((clock() - start) / calls[name])
    return samples


def best_and_median(samples: dict[Hashable, list[float]]) -> dict[Hashable, dict[str, float]]:
    return {name: {"best": min(s), "median": statistics.median(s)} for name, s in samples.items()}


def machine_description() -> str:
    return f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def format_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-markdown table."""
    cells = [[str(c) for c in header]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |"] + [line(r) for r in cells[1:]])
