"""gpt_fast's CPU kernels on each instruction-set tier against PyTorch, in one run, measured alternately.

    python benchmarks/bench_cpu_tiers.py --tiers avx2 scalar --threads 1 --cpu-time
    python benchmarks/bench_cpu_tiers.py --tiers avx2 avx512 avx512_bf16 --dtype bf16 --linear-rows 1 --only M=
    python benchmarks/bench_cpu_tiers.py --tiers avx2 avx512 avx512_bf16 --dtype bf16 --generate --only generate
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_cpu_tiers.py --tiers avx2   # AVX2 box

Cases are bench_attention.py's (flash and decode attention vs SDPA as the model calls it) and bench_linear_small_m.py's
elementwise ones (bias_gelu vs F.gelu(x + b), add_layernorm vs layer_norm(x + y + b)), and with --linear-rows its
linear_small_m cases (vs addmm / F.linear), with --generate whole-model greedy generation (vs the eager
backend). Each tier caps the kernels through GPT_FAST_CPU_ISA, set per call, so all tiers and PyTorch alternate in
the same rounds. PyTorch's own
kernels pick their instruction set once per process: to compare with PyTorch as it runs on an AVX2-only CPU, cap
it too with ATEN_CPU_CAPABILITY=avx2 (and oneDNN's ONEDNN_MAX_CPU_ISA=AVX2, MKL's MKL_ENABLE_INSTRUCTIONS=AVX2).
Ratio = PyTorch time / kernel time, best of the rounds.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import bench_attention
import bench_linear_small_m
import torch
from timing import time_alternating


def generate_case(dtype, prompt=32, new_tokens=32):
    """(PyTorch fn, kernel fn): greedy generation at the GPT-1 shape (random weights) on the eager backend (PyTorch
    only) and on the default one (every kernel: decode steps are the small-M linears plus decode attention)."""
    from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel
    from gpt_fast.cli.benchmark import generate_greedy

    torch.manual_seed(0)
    model = OpenAIGPTLMHeadModel(OpenAIGPTConfig()).eval().to(dtype)
    ids = torch.randint(0, model.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(0))

    def run(backend):
        model.set_attn_implementation(backend)
        return generate_greedy(model, ids, new_tokens)

    return (lambda: run("eager")), (lambda: run(None))


def cases(dtypes, linear_rows=(), generate=False):
    """{name: (pytorch fn, kernel fn)}; linear_rows: also linear_small_m at GPT-1's layers with these M (each
    cycling through 256 MiB of weight copies, as bench_linear_small_m.py does); generate: also whole-model greedy
    generation (generate_case)."""
    out = {}
    for name, (make, args) in bench_attention.CASES.items():
        if any(name.endswith(d) for d in dtypes):
            case = make(*args)
            out[name] = (case["sdpa"], case["ours"])
    for d in dtypes:
        for name, _, base, kern in bench_linear_small_m.elementwise_cases(bench_attention.DTYPES[d]):
            if not name.startswith("mm "):
                out[f"{name} {d}"] = (base, kern)
        for layer, rows in itertools.product(bench_linear_small_m.LAYERS, linear_rows):
            name, _, base, kern, _ = bench_linear_small_m.linear_case(*layer, rows, bench_attention.DTYPES[d], 256)
            out[f"{name.split(' (')[0]} {d}"] = (base, kern)
        if generate:
            out[f"GPT-1 generate 32+32 {d}"] = generate_case(bench_attention.DTYPES[d])
    return out


def capped(tier, fn):
    def run():
        os.environ["GPT_FAST_CPU_ISA"] = tier
        return fn()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", nargs="+", default=["avx2"], help="GPT_FAST_CPU_ISA values to compare")
    parser.add_argument("--dtype", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cpu-time", action="store_true", help="thread CPU time (needs --threads 1)")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--linear-rows", type=int, nargs="*", default=[],
                        help="also linear_small_m at GPT-1's layers with these decode rows M (e.g. 1)")
    parser.add_argument("--generate", action="store_true",
                        help="also the whole model: greedy 32 + 32 tokens, eager backend vs the kernels")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time and torch.get_num_threads() != 1:
        parser.error("--cpu-time measures one thread only; use it with --threads 1")
    clock = time.thread_time if args.cpu_time else time.perf_counter
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '(default)')}, "
          f"{'thread CPU' if args.cpu_time else 'wall'} time, best of {args.rounds} rounds")
    head = f"{'case':<30}{'PyTorch':>11}" + "".join(f"{t:>12}{'ratio':>7}" for t in args.tiers)
    print(head + "\n" + "-" * len(head))
    for name, (base, kern) in cases(args.dtype, args.linear_rows, args.generate).items():
        if args.only not in name:
            continue
        cands = {"pytorch": base, **{t: capped(t, kern) for t in args.tiers}}
        t = time_alternating(cands, args.rounds, warmup=1, min_time=0.02, clock=clock)
        best = {k: min(v) * 1e6 for k, v in t.items()}
        print(f"{name:<30}{best['pytorch']:>9.1f}us"
              + "".join(f"{best[k]:>10.1f}us{best['pytorch'] / best[k]:>6.2f}x" for k in args.tiers), flush=True)


if __name__ == "__main__":
    main()
