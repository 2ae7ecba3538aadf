"""CPU benchmarks of bias_gelu, add_layernorm and linear_small_m against PyTorch's own path, at GPT-1 shapes.

    python benchmarks/bench_linear_small_m.py            # prints the table (fp32 and bf16)
    pytest benchmarks/bench_linear_small_m.py --benchmark-enable   # pytest-benchmark timings of the same cases

Every ratio compares two timings taken in the same run, interleaved (baseline, kernel, baseline, ...) and each the
best of several repeats, so a machine shared with other jobs slows both sides alike. For the small-M linear the
table gives the weight bytes read per second and, for scale, the machine's read bandwidth measured in the same run
(torch.sum over a tensor of the same working-set size, best of before and after the cases).

A decode step reads every layer's weights once (GPT-1: ~240 MB in bf16), so a benchmark that multiplied by one
cache-resident weight would flatter both sides: by default each linear case cycles through copies of its weight
totalling --working-set-mib (256 MiB), the baseline and the kernel alike. On a machine shared with other jobs,
`--threads 1 --cpu-time` measures the per-core cost without the time spent descheduled. Note the CPU's L3 may be
large (this VM reports 480 MiB shared with its host); pass a larger working set to measure DRAM rather than L3.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from timing import time_alternating

from gpt_fast import ops
from gpt_fast.ops import reference

HIDDEN, INNER, VOCAB, PREFILL_ROWS = 768, 3072, 40478, 512
# GPT-1's linear layers: (name, K, N, in_out_layout, gelu). Conv1D weights are (K, N); the tied LM head is (N, K).
LAYERS = [
    ("c_attn", HIDDEN, 3 * HIDDEN, True, False),
    ("attn.c_proj", HIDDEN, HIDDEN, True, False),
    ("mlp.c_fc+gelu", HIDDEN, INNER, True, True),
    ("mlp.c_proj", INNER, HIDDEN, True, False),
    ("lm_head", HIDDEN, VOCAB, False, False),
]


CLOCK = time.perf_counter  # main(--cpu-time) switches to time.process_time


def best_of_interleaved(fns: list[Callable[[], object]], repeats: int = 7, min_seconds: float = 0.02) -> list[float]:
    """Seconds per call of each fn (benchmarks/timing.py, on CLOCK), best repeat kept."""
    samples = time_alternating(dict(enumerate(fns)), repeats, min_time=min_seconds, clock=CLOCK)
    return [min(samples[i]) for i in range(len(fns))]


def read_bandwidth_gbs(working_set_mib: int, repeats: int = 5) -> float:
    """GB/s of torch.sum (all intra-op threads) over a fp32 tensor of working_set_mib."""
    big = torch.ones(working_set_mib * 1024 * 1024 // 4)
    (seconds,) = best_of_interleaved([lambda: big.sum()], repeats=repeats, min_seconds=0.1)
    return big.numel() * 4 / seconds / 1e9


@dataclass
class Row:
    case: str
    baseline: str
    baseline_us: float
    kernel_us: float
    weight_gbs: float | None = None

    @property
    def speedup(self) -> float:
        return self.baseline_us / self.kernel_us


def elementwise_cases(dtype):
    """(case, baseline name, baseline fn, kernel fn) for bias_gelu and add_layernorm at prefill shapes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(PREFILL_ROWS, HIDDEN, generator=g).to(dtype)  # (512, 768)
    w_fc = (torch.randn(HIDDEN, INNER, generator=g) * 0.02).to(dtype)  # (768, 3072) Conv1D
    b_fc = torch.randn(INNER, generator=g).to(dtype)
    h = torch.randn(PREFILL_ROWS, INNER, generator=g).to(dtype)  # (512, 3072) c_fc output
    y = torch.randn(PREFILL_ROWS, HIDDEN, generator=g).to(dtype)
    b, ln_w, ln_b = (torch.randn(HIDDEN, generator=g).to(dtype) for _ in range(3))
    return [
        ("bias_gelu (512, 3072)", "F.gelu(x + b)",
         lambda: reference.bias_gelu(h, b_fc), lambda: ops.bias_gelu(h, b_fc)),
        ("mm + bias_gelu (512x768 @ 768x3072)", "addmm + F.gelu",
         lambda: F.gelu(torch.addmm(b_fc, x, w_fc), approximate="tanh"), lambda: ops.bias_gelu(x @ w_fc, b_fc)),
        ("add_layernorm (512, 768)", "layer_norm(x + y + b)",
         lambda: reference.add_layernorm(x, y, b, ln_w, ln_b, 1e-5),
         lambda: ops.add_layernorm(x, y, b, ln_w, ln_b, 1e-5)),
    ]


def linear_case(name, K, N, in_out_layout, gelu, rows, dtype, working_set_mib=0):
    """(case, baseline name, baseline fn, kernel fn, weight bytes) for one decode linear layer. Each call of either
    fn uses the next of enough weight copies to total working_set_mib (0: one cache-resident copy)."""
    g = torch.Generator().manual_seed(1)
    weight = (torch.randn(K, N, generator=g) * 0.02).to(dtype)  # (K, N)
    if not in_out_layout:
        weight = weight.t().contiguous()  # (N, K), as the token embedding
    nbytes = weight.numel() * weight.element_size()
    copies = max(1, -(-working_set_mib * 1024 * 1024 // nbytes))
    weights = [weight] + [weight.clone() for _ in range(copies - 1)]
    packed = [ops.pack_linear_weight(w, in_out_layout) for w in weights]
    bias = None if not in_out_layout else torch.randn(N, generator=g).to(dtype)
    x = torch.randn(rows, K, generator=g).to(dtype)  # (M, K)
    next_base, next_kern = itertools.cycle(weights).__next__, itertools.cycle(packed).__next__
    if in_out_layout:  # transformers' Conv1D: addmm(bias, x, W)
        baseline_name = "addmm + gelu" if gelu else "addmm"
        baseline = (lambda: F.gelu(torch.addmm(bias, x, next_base()), approximate="tanh")) if gelu else (
            lambda: torch.addmm(bias, x, next_base()))
    else:
        baseline_name, baseline = "F.linear", lambda: F.linear(x, next_base())
    def kernel():
        return ops.linear_small_m(x, next_kern(), N, bias, None, gelu)
    return f"{name} M={rows} ({K}x{N})", baseline_name, baseline, kernel, nbytes


def run_table(dtypes, rows_list=(1, 8), repeats=7, working_set_mib=256) -> None:
    clock = "CPU time (process_time)" if CLOCK is time.process_time else "wall time"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, {clock}, "
          f"linear working set {working_set_mib} MiB per case")
    for dtype in dtypes:
        rows: list[Row] = []
        bandwidth = read_bandwidth_gbs(working_set_mib)
        for case, base_name, base, kern in elementwise_cases(dtype):
            b_s, k_s = best_of_interleaved([base, kern], repeats=repeats)
            rows.append(Row(case, base_name, b_s * 1e6, k_s * 1e6))
        for layer in LAYERS:
            for m in rows_list:
                case, base_name, base, kern, nbytes = linear_case(*layer, m, dtype, working_set_mib)
                b_s, k_s = best_of_interleaved([base, kern], repeats=repeats)
                rows.append(Row(case, base_name, b_s * 1e6, k_s * 1e6, nbytes / k_s / 1e9))
        bandwidth = max(bandwidth, read_bandwidth_gbs(working_set_mib))  # before and after: the better of the two
        print(f"\n{dtype}: read bandwidth (torch.sum, {working_set_mib} MiB) = {bandwidth:.1f} GB/s")
        header = ["case", "baseline", "base us", "ours us", "speedup", "GB/s", "of bw"]
        print("{:40s} {:22s} {:>9s} {:>9s} {:>8s} {:>6s} {:>6s}".format(*header))
        for r in rows:
            gbs = f"{r.weight_gbs:6.1f} {r.weight_gbs / bandwidth:6.0%}" if r.weight_gbs else ""
            print(f"{r.case:40s} {r.baseline:22s} {r.baseline_us:9.1f} {r.kernel_us:9.1f} {r.speedup:7.2f}x {gbs}")


# --- pytest-benchmark: the same cases, one timing each (run with --benchmark-enable) ---------------------------

needs_kernels = pytest.mark.skipif(not ops.has_kernel("linear_small_m", "cpu"), reason="extension not built")
DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16"}


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPE_IDS, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("which", ["baseline", "kernel"])
@pytest.mark.parametrize("index", range(3), ids=["bias_gelu", "mm_bias_gelu", "add_layernorm"])
def test_elementwise(benchmark, dtype, which, index):
    case, _, base, kern = elementwise_cases(dtype)[index]
    benchmark.group = f"{case} {DTYPE_IDS[dtype]}"
    benchmark(base if which == "baseline" else kern)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPE_IDS, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("which", ["baseline", "kernel"])
@pytest.mark.parametrize("rows", [1, 8])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_linear(benchmark, dtype, which, rows, layer):
    case, _, base, kern, _ = linear_case(*layer, rows, dtype)  # one cache-resident weight: quick, see the CLI
    benchmark.group = f"{case} {DTYPE_IDS[dtype]} hot"
    benchmark(base if which == "baseline" else kern)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8], help="decode rows M for the linear cases")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with process_time: on a shared, oversubscribed machine use it with --threads 1, "
                             "so time spent descheduled does not count")
    parser.add_argument("--working-set-mib", type=int, default=256, help="weight copies cycled per linear case")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    dtypes = {"fp32": [torch.float32], "bf16": [torch.bfloat16], "both": [torch.float32, torch.bfloat16]}[args.dtype]
    run_table(dtypes, tuple(args.rows), args.repeats, args.working_set_mib)


if __name__ == "__main__":
    main()
