"""The backward kernels against the backward they replace, at GPT-1 shapes (B=4, T=256), measured alternately.

    python benchmarks/bench_backward.py                       # every tier this CPU has, fp32 and bf16
    python benchmarks/bench_backward.py --tiers avx512 --dtypes bf16 --threads 1 --cpu-time

For each op three candidates run in the same rounds:
  recompute   the registered backward before the kernels: the eager reference recomputed and differentiated
              (gpt_fast/ops/_autograd.py's reference path), what a fused forward's backward used to cost
  autograd    PyTorch's own backward of the reference alone (graph built once, retained): the floor a plain
              eager model pays
  <tier>      the backward kernel with the gradients the autograd formula adds (grad_bias, ...), capped at the tier
              with GPT_FAST_CPU_ISA
Ratio = candidate time / kernel time (> 1: the kernel is faster), best of the rounds.

With --dropout, add_layernorm's forward + backward with the residual dropout in the kernels (p = 0.1, Philox mask)
against the same without dropout and against PyTorch's autograd of layer_norm(x + dropout(residual + bias)),
p = 0.1 and 0 (one graph per call, as a training step builds it).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from timing import best_and_median, format_table, machine_description, time_alternating

from gpt_fast import ops
from gpt_fast.ops import _autograd, cpu_isa, reference
from gpt_fast.ops.add_layernorm import _backward as add_layernorm_backward
from gpt_fast.ops.bias_gelu import _backward as bias_gelu_backward

B, T, C = 4, 256, 768
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def bias_gelu_case(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, 4 * C, generator=g).to(dtype)  # the c_fc output (B, T, 4C)
    bias = (0.1 * torch.randn(4 * C, generator=g)).to(dtype)
    grad = torch.randn(B, T, 4 * C, generator=g).to(dtype)
    inputs, needs = (x, bias), (True, True)
    return reference.bias_gelu, inputs, grad, lambda: bias_gelu_backward(grad, inputs, needs)


def add_layernorm_case(dtype):
    g = torch.Generator().manual_seed(1)
    x, res, grad = (torch.randn(B, T, C, generator=g).to(dtype) for _ in range(3))  # (B, T, C) each
    bias, weight, ln_bias = ((1.0 + 0.1 * torch.randn(C, generator=g)).to(dtype) for _ in range(3))
    inputs = (x, res, bias, weight, ln_bias, 1e-5, 0.0, 0)
    needs = (True, True, True, True, True, False, False, False)
    return reference.add_layernorm, inputs, grad, lambda: add_layernorm_backward(grad, inputs, needs)


CASES = {"bias_gelu": bias_gelu_case, "add_layernorm": add_layernorm_case}


def candidates(name, dtype, tiers):
    fn, inputs, grad, kernel = CASES[name](dtype)
    leaves = [t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
              for t in inputs]
    wanted = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    out = fn(*leaves)

    def with_tier(tier):
        def run():
            os.environ[cpu_isa.ENV] = tier
            return kernel()
        return run

    runs = {"recompute": lambda: _autograd._reference_grads(fn, inputs, grad),
            "autograd": lambda: torch.autograd.grad(out, wanted, grad, retain_graph=True)}
    runs.update({tier: with_tier(tier) for tier in tiers})
    return runs


def dropout_candidates(dtype, tiers, p=0.1):
    """add_layernorm forward + backward (all five gradients) per tier with and without dropout, and PyTorch's."""
    g = torch.Generator().manual_seed(2)
    x, res, grad = (torch.randn(B, T, C, generator=g).to(dtype) for _ in range(3))  # (B, T, C) each
    params = [(1.0 + 0.1 * torch.randn(C, generator=g)).to(dtype) for _ in range(3)]  # bias, weight, ln_bias
    leaves = [t.clone().requires_grad_() for t in (x, res, *params)]
    wanted = leaves

    def kernel(tier, dropout_p):
        def run():
            os.environ[cpu_isa.ENV] = tier
            out = ops.add_layernorm(*leaves, 1e-5, dropout_p, 1234)
            return torch.autograd.grad(out, wanted, grad)
        return run

    def pytorch(dropout_p):
        def run():
            xl, rl, bias, weight, ln_bias = leaves
            out = F.layer_norm(xl + F.dropout(rl + bias, dropout_p, training=True), (C,), weight, ln_bias, 1e-5)
            return torch.autograd.grad(out, wanted, grad)
        return run

    runs = {"pytorch p=0.1": pytorch(p), "pytorch p=0": pytorch(0.0)}
    for tier in tiers:
        runs[f"{tier} p=0.1"], runs[f"{tier} p=0"] = kernel(tier, p), kernel(tier, 0.0)
    return runs


def dropout_table(args) -> str:
    rows = []
    for dname in args.dtypes:
        samples = time_alternating(dropout_candidates(DTYPES[dname], args.tiers), repeats=args.repeats,
                                   min_time=args.min_time,
                                   clock=time.process_time if args.cpu_time else time.perf_counter)
        os.environ.pop(cpu_isa.ENV, None)
        best = {name: s["best"] for name, s in best_and_median(samples).items()}
        for tier in args.tiers:
            k, k0 = best[f"{tier} p=0.1"], best[f"{tier} p=0"]
            rows.append([dname, tier, k * 1e3, k0 * 1e3, k / k0, best["pytorch p=0.1"] * 1e3,
                         best["pytorch p=0"] * 1e3, best["pytorch p=0.1"] / k])
    return format_table(["dtype", "tier", "kernel p=0.1 ms", "kernel p=0 ms", "p=0.1 / p=0", "pytorch p=0.1 ms",
                         "pytorch p=0 ms", "pytorch p=0.1 / kernel p=0.1"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    detected = cpu_isa.detected_level()
    level = cpu_isa.LEVELS.index(detected)
    default_tiers = [t for t in ("scalar", "avx2", "avx512") if cpu_isa.LEVELS.index(t) <= level]
    parser.add_argument("--tiers", nargs="+", default=default_tiers)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--ops", nargs="+", default=sorted(CASES), choices=sorted(CASES))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per sample")
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    parser.add_argument("--dropout", action="store_true",
                        help="add_layernorm forward + backward with residual dropout (see above) instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{machine_description()}; detected tier {detected}; B={B}, T={T}, C={C}")
    if args.dropout:
        print(dropout_table(args))
        return
    rows = []
    for name in args.ops:
        for dname in args.dtypes:
            samples = time_alternating(candidates(name, DTYPES[dname], args.tiers), repeats=args.repeats,
                                       min_time=args.min_time,
                                       clock=time.process_time if args.cpu_time else time.perf_counter)
            os.environ.pop(cpu_isa.ENV, None)
            stats = best_and_median(samples)
            for tier in args.tiers:
                k = stats[tier]["best"]
                rows.append([name, dname, tier, k * 1e3, stats["recompute"]["best"] * 1e3,
                             stats["autograd"]["best"] * 1e3, stats["recompute"]["best"] / k,
                             stats["autograd"]["best"] / k])
    print(format_table(["op", "dtype", "tier", "kernel ms", "recompute ms", "autograd ms", "recompute / kernel",
                        "autograd / kernel"], rows))


if __name__ == "__main__":
    main()
