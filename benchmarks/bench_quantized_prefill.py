"""Prefill engine of the quantized layers: per call, dequantize the whole weight to the model dtype + the GEMM
(QuantizedConv1D's "dequantize" engine: gpt_fast::dequantize_linear_weight's kernel, for int4-a8 after
gpt_fast::round_activations, and for comparison the same from PyTorch ops) against ops.linear_quantized over the
packed weight (the "kernel" engine), at the GPT-1 layer shapes, measured alternately; also the unquantized GEMM for
scale.

    python benchmarks/bench_quantized_prefill.py [--rows 512] [--dtype bf16] [--repeats 5]

The quantized layers take the kernel for rows <= plan.small_m_rows and dequantize + GEMM above; rerun this once
linear_quantized has a compiled kernel (without one it falls back to the float32 eager reference).
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import best_and_median, format_table, machine_description, time_alternating

from gpt_fast.models.linear import gemm
from gpt_fast.ops import has_kernel, reference, round_activations
from gpt_fast.ops.dequantize_linear_weight import dequantize_linear_weight, pytorch_dequantize
from gpt_fast.ops.linear_quantized import linear_quantized, pack_quantized_weight, quantize_linear_weight

SHAPES = {"c_attn": (768, 2304), "attn.c_proj": (768, 768), "c_fc": (768, 3072), "mlp.c_proj": (3072, 768)}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def candidates(x, weight, bits: int, group: int | None, x_bits: int = 0) -> dict:
    """The ways to compute x (rows, K) @ weight (K, N) + bias at the weight's quantization; x_bits=8 (int4-a8): x
    rounded per group first (gpt_fast::round_activations, or the reference's PyTorch ops for the "pytorch" row)."""
    N, dtype = weight.shape[1], x.dtype
    bias = torch.zeros(N, dtype=dtype)
    q, s, z = quantize_linear_weight(weight, bits, group, in_out_layout=True)
    packed = pack_quantized_weight(q, s, z, bits, group)
    w_model = weight.to(dtype)

    def engine(dequantize, rounding):
        def call():
            a = rounding(x, group).to(dtype) if x_bits else x
            return gemm(a, dequantize(q, s, z, bits, group, dtype).t(), bias, None)
        return call

    return {
        "dequantize+gemm": engine(dequantize_linear_weight, round_activations),
        "pytorch dequantize+gemm": engine(pytorch_dequantize, reference.round_activations),
        "linear_quantized": lambda: linear_quantized(x, packed, N, bits, group, bias, x_bits=x_bits),
        "unquantized gemm": lambda: gemm(x, w_model, bias, None),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the process's CPU time (steadier on a shared machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    print(f"{machine_description()}; linear_quantized kernel: {has_kernel('linear_quantized', 'cpu')}; "
          f"{args.rows} rows, {args.dtype}, {args.clock} clock; ms per call, best / median of {args.repeats}")
    rows, names = [], []
    for scheme, bits, group, x_bits in (("int8", 8, None, 0), ("int4 g32", 4, 32, 0), ("int4-a8 g32", 4, 32, 8)):
        for name, (K, N) in SHAPES.items():
            weight = torch.randn(K, N) * 0.02  # (in, out), as Conv1D holds it
            calls = candidates(torch.randn(args.rows, K, dtype=dtype), weight, bits, group, x_bits)
            stats = best_and_median(time_alternating(calls, repeats=args.repeats, min_time=0.05, clock=clock))
            names = list(calls)
            rows.append([scheme, name]
                        + [f"{stats[c]['best'] * 1e3:.2f} / {stats[c]['median'] * 1e3:.2f}" for c in calls])
    print(format_table(["scheme", "layer", *names], rows))


if __name__ == "__main__":
    main()
