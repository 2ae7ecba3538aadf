"""Decode linear layers on the CPU: linear_small_m (bf16, fp32 weights) against linear_quantized (int8, int4 with
groups of 32 and 64, and int8 and int4 g32 with x rounded to int8 per group of 32: the int8-a8 and int4-a8
schemes), at GPT-1's decode shapes (768->2304, 768->768, 768->3072 + GELU, 3072->768, the LM head 768->40478) and
M = 1, 8, 16 rows.

    python benchmarks/bench_linear.py                 # the best tier this CPU has
    python benchmarks/bench_linear.py --isa avx2      # the AVX2 tier (same as GPT_FAST_CPU_ISA=avx2)
    python benchmarks/bench_linear.py --threads 1 --cpu-time   # per-core cost on a machine shared with other jobs

Per case and candidate: time per call (best of the interleaved rounds, benchmarks/timing.py), the bytes of packed
weight it reads (scales and zeros included), those bytes per second, that as a fraction of the read bandwidth
measured in the same run (torch.sum over --working-set-mib, as bench_linear_small_m.read_bandwidth_gbs: the
roofline), and the speed relative to bf16 (t_bf16 / t). Every candidate cycles through copies of its packed weight
totalling --working-set-mib, so that the weights come from memory as in a decode step, not from cache. x is bf16
for the bf16 and quantized candidates, fp32 for fp32. Calls run under torch.inference_mode, as generate() makes them.

Measured on the 2-core AMD EPYC (Zen 5) VM shared with other jobs, `--threads 1 --cpu-time --working-set-mib 128
--repeats 3` (one core; its read roofline 31-32 GB/s), speed vs bf16 linear_small_m / % of the roofline:

| layer, M                   | tier        | int8        | int4 g32    | int4 g64    |
| -------------------------- | ----------- | ----------- | ----------- | ----------- |
| c_fc 768->3072 + GELU, 1   | avx512_bf16 | 1.61x / 71% | 1.86x / 51% | 1.81x / 45% |
| LM head 768->40478, 1      | avx512_bf16 | 1.61x / 74% | 1.79x / 51% | 1.83x / 47% |
| c_attn 768->2304, 8        | avx512_bf16 | 1.47x / 42% | 1.58x / 28% | 1.68x / 27% |
| LM head 768->40478, 8      | avx512_bf16 | 1.30x / 46% | 1.38x / 30% | 1.47x / 29% |
| LM head 768->40478, 16     | avx512_bf16 | 1.02x / 20% | 1.16x / 14% | 1.26x / 14% |
| c_fc 768->3072 + GELU, 1   | avx2        | 1.69x / 63% | 1.39x / 32% | 1.41x / 29% |
| LM head 768->40478, 1      | avx2        | 1.63x / 64% | 1.37x / 34% | 1.45x / 32% |
| LM head 768->40478, 8      | avx2        | 1.14x / 16% | 0.92x / 8%  | 0.84x / 7%  |

On one core the quantized kernels are bound by their instructions, not the memory (bf16 reaches 88-96% of the
roofline at M = 1; int8 71-80%, int4 45-55% on AVX-512, ~30% on AVX2); with both cores sharing the bandwidth each
needs about half of it (not measurable here: the machine was loaded ~9 on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import time

import bench_linear_small_m
import torch
from bench_linear_small_m import LAYERS, best_of_interleaved, read_bandwidth_gbs
from timing import format_table, machine_description

from gpt_fast import ops
from gpt_fast.ops import cpu_isa, reference

# a8: x rounded to int8 per group of 32 (int4-a8, int8-a8)
CANDIDATES = ["bf16", "fp32", "int8", "int8 a8", "int4 g32", "int4 g64", "int4 g32 a8"]


def cycled(make, working_set_mib: int):
    """A list of copies of make()'s tensor totalling working_set_mib, and its bytes."""
    first = make()
    nbytes = first.numel() * first.element_size()
    copies = max(1, -(-working_set_mib * 1024 * 1024 // nbytes))
    return [first] + [first.clone() for _ in range(copies - 1)], nbytes


def candidate(name, weight, K, N, rows, gelu, working_set_mib):
    """(call, bytes read per call) for one candidate; weight (N, K) fp32."""
    state = {"i": 0}

    def nxt(copies):
        state["i"] = (state["i"] + 1) % len(copies)
        return copies[state["i"]]

    if name in ("bf16", "fp32"):
        dtype = torch.bfloat16 if name == "bf16" else torch.float32
        copies, nbytes = cycled(lambda: ops.pack_linear_weight(weight.to(dtype), False), working_set_mib)
        x, bias = torch.randn(rows, K, dtype=dtype), torch.randn(N, dtype=dtype)
        return (lambda: ops.linear_small_m(x, nxt(copies), N, bias, None, gelu)), nbytes
    x_bits = 8 if name.endswith(" a8") else 0
    bits, group = (8, 32 if x_bits else None) if name.startswith("int8") else (4, int(name.split()[1][1:]))
    q, s, z = reference.quantize_linear_weight(weight, bits, group)
    copies, nbytes = cycled(lambda: ops.pack_quantized_weight(q, s, z, bits, group), working_set_mib)
    x, bias = torch.randn(rows, K, dtype=torch.bfloat16), torch.randn(N, dtype=torch.bfloat16)
    return (lambda: ops.linear_quantized(x, nxt(copies), N, bits, group, bias, None, gelu, x_bits)), nbytes


def run(rows_list, repeats, working_set_mib):
    print(f"# {machine_description()}; tier {cpu_isa.level()}; weights cycled over {working_set_mib} MiB per "
          "candidate", flush=True)
    bandwidth = read_bandwidth_gbs(working_set_mib)
    table = []
    for (layer, K, N, _, gelu), rows in ((layer, rows) for layer in LAYERS for rows in rows_list):
        weight = torch.randn(N, K) / K**0.5
        calls = [candidate(name, weight, K, N, rows, gelu, working_set_mib) for name in CANDIDATES]
        with torch.inference_mode():  # as generate() calls them (no autograd dispatch: ~5 us less per call)
            times = best_of_interleaved([fn for fn, _ in calls], repeats=repeats)
        for name, (_, nbytes), t in zip(CANDIDATES, calls, times):
            table.append([f"{layer} {K}->{N}", rows, name, t * 1e6, nbytes / 1e6, nbytes / t / 1e9, 0.0,
                          times[0] / t])
        del calls
        print(f"  {layer} M={rows} done", flush=True)
    bandwidth = max(bandwidth, read_bandwidth_gbs(working_set_mib))  # before and after: the better
    for row in table:
        row[6] = f"{row[5] / bandwidth:.0%}"
    print(f"\nread bandwidth (torch.sum, {working_set_mib} MiB): {bandwidth:.1f} GB/s\n")
    print(format_table(["layer", "M", "weights", "us", "MB read", "GB/s", "of roofline", "x bf16"], table))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--working-set-mib", type=int, default=256)
    parser.add_argument("--isa", choices=list(cpu_isa.LEVELS), help="cap the CPU tier (sets GPT_FAST_CPU_ISA)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time on the process's CPU clock (with --threads 1: per-core cost on a shared machine)")
    args = parser.parse_args()
    if args.cpu_time:
        bench_linear_small_m.CLOCK = time.process_time
    if args.isa:
        os.environ[cpu_isa.ENV] = args.isa
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.rows, args.repeats, args.working_set_mib)


if __name__ == "__main__":
    main()
