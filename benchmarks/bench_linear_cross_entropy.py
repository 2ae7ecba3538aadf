"""Fused LM head + cross-entropy (gpt_fast/ops/linear_cross_entropy.py) against logits + F.cross_entropy: peak
memory and time of forward + backward, B*T rows against the GPT-1 head (V=40478, C=768), in one run.

    python benchmarks/bench_linear_cross_entropy.py [--rows 1024] [--dtypes float32 bfloat16] [--repeats 5]
    pytest benchmarks/bench_linear_cross_entropy.py     # pytest-benchmark, one row per path and dtype

Peak memory: each path runs in a fresh subprocess, once to warm up, then its peak RSS counter is reset
(/proc/self/clear_refs) and it runs again; the figure is the peak's growth over the RSS before that call (inputs
made, no gradients yet), so the weight's gradient counts for both. The baseline keeps its logits alive until
after backward, as a model's output does. PyTorch has no allocator statistics for CPU tensors, hence RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timing import best_and_median, format_table, machine_description, time_alternating

from gpt_fast.cli.machine import reset_peak_rss, status_bytes
from gpt_fast.ops.linear_cross_entropy import linear_cross_entropy

VOCAB, WIDTH = 40478, 768
PATHS = ("logits + F.cross_entropy", "fused")


def make_inputs(rows: int, dtype: torch.dtype):
    torch.manual_seed(0)
    hidden = torch.randn(rows, WIDTH, dtype=dtype, requires_grad=True)
    weight = (0.02 * torch.randn(VOCAB, WIDTH)).to(dtype).requires_grad_()
    targets = torch.randint(0, VOCAB, (rows,))
    return hidden, weight, targets


def step(path: str, hidden, weight, targets) -> None:
    """Forward + backward; gradients cleared first."""
    hidden.grad = weight.grad = None
    if path == "fused":
        linear_cross_entropy(hidden, weight, targets).backward()
        return
    logits = F.linear(hidden, weight)  # (rows, V) in the input dtype, kept as a model's output keeps it
    F.cross_entropy(logits.float(), targets).backward()
    del logits


def measure_peak(path: str, rows: int, dtype_name: str) -> int:
    """In this process: the peak RSS growth (bytes) of one step after a warm-up step."""
    hidden, weight, targets = make_inputs(rows, getattr(torch, dtype_name))
    step(path, hidden, weight, targets)
    hidden.grad = weight.grad = None
    reset_peak_rss()
    before = status_bytes("VmRSS")
    step(path, hidden, weight, targets)
    return status_bytes("VmHWM") - before


def peak_in_subprocess(path: str, rows: int, dtype_name: str) -> int:
    out = subprocess.run([sys.executable, __file__, "--peak-of", path, "--rows", str(rows), "--dtypes", dtype_name],
                         check=True, capture_output=True, text=True, cwd=Path(__file__).parent)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def run(rows: int, dtypes: list[str], repeats: int) -> str:
    table = []
    for dtype_name in dtypes:
        inputs = make_inputs(rows, getattr(torch, dtype_name))
        calls = {path: (lambda path=path, inputs=inputs: step(path, *inputs)) for path in PATHS}
        times = best_and_median(time_alternating(calls, repeats=repeats))
        peaks = {path: peak_in_subprocess(path, rows, dtype_name) for path in PATHS}
        base_time, base_peak = times[PATHS[0]]["median"], peaks[PATHS[0]]
        for path in PATHS:
            table.append([dtype_name, path, peaks[path] / 2**20, base_peak / peaks[path], times[path]["median"] * 1e3,
                          base_time / times[path]["median"]])
    header = ["dtype", "path", "peak MiB", "memory saving (x)", "median ms", "speed (x)"]
    return (f"LM head + cross-entropy, forward + backward, N={rows}, V={VOCAB}, C={WIDTH}; {machine_description()}"
            f"\n\n" + format_table(header, table))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("path", PATHS)
def test_linear_cross_entropy(benchmark, dtype, path):
    inputs = make_inputs(1024, getattr(torch, dtype))
    benchmark(step, path, *inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024, help="B*T")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-of", choices=PATHS, help=argparse.SUPPRESS)  # the subprocess's job
    args = parser.parse_args()
    if args.peak_of:
        print(json.dumps({"peak": measure_peak(args.peak_of, args.rows, args.dtypes[0])}))
        return
    print(run(args.rows, args.dtypes, args.repeats))


if __name__ == "__main__":
    main()
