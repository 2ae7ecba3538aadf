"""gpt_fast::linear_small_m: the decode-time (few-row) linear layer, over a weight made by pack_linear_weight.

At decode a GPT-1 step multiplies 1 to ~16 rows by every weight matrix, so it is bound by reading the weights.
linear_small_m reads each weight once, at memory bandwidth, from a layout made once at load time by
pack_linear_weight, and applies bias, tanh-GELU and a residual add in registers before its only store:

    out = [gelu_tanh](x @ W + bias) [+ residual]

The packed layout is pack_linear_weight's (ops/pack_linear_weight.py): the padding past N is -0.0 and the weight's
own -0.0 become +0.0, so the sign bit marks the padding and linear_small_m checks that out_features is the N the
weight was packed for (a wrong N is a RuntimeError, not extra or missing columns). Both ops take tensors and plain
scalars only and have fake kernels, so they trace under torch.compile.

When to use it (measured on the 2-core Sapphire Rapids VM, see benchmarks/bench_linear_small_m.py): decode, M = 1 to 16
rows, where it is bound by the weight read (bf16 with AMX up to 16 rows; fp32 with AVX-512 FMAs drifts toward
compute-bound from M ~ 8). Prefill (many rows) should use a GEMM (torch.addmm / mm) plus bias_gelu: larger M works
but re-reads each weight block once per 8 (or, with AMX, 16) rows.

Kernel paths are chosen at run time: AMX tdpbf16ps (bf16, >= 4 rows, K % 32 == 0, CPUs with AMX), vdpbf16ps (bf16,
AVX512_BF16), AVX-512 FMA (fp32, bf16, fp16), or a portable scalar loop. The environment variable
GPT_FAST_CPU_ISA caps the choice (csrc/cpu/cpu_isa.h; "avx2" runs the scalar loop here; the tests compare every
path).
"""

from __future__ import annotations

import torch

from gpt_fast.ops._library import extension_loaded
from gpt_fast.ops.pack_linear_weight import BLOCK_N, packed_shape

if extension_loaded():

    @torch.library.register_fake("gpt_fast::linear_small_m")
    def _(x, packed_weight, out_features, bias, residual, gelu):
        # The shape checks of the CPU kernel; the exact N (from the -0.0 padding) needs the data, so only the
        # kernel checks it.
        torch._check(out_features > 0, lambda: f"linear_small_m: out_features must be positive, got {out_features}")
        torch._check(packed_weight.dim() == 3, lambda: "linear_small_m: packed_weight must be 3-D")
        torch._check(packed_weight.shape[0] == -(-out_features // BLOCK_N) and packed_weight.shape[2] == BLOCK_N,
                     lambda: f"linear_small_m: packed_weight has shape {tuple(packed_weight.shape)} but "
                             f"out_features={out_features} needs {packed_shape(x.shape[-1], out_features)}")
        torch._check(packed_weight.shape[1] == x.shape[-1], lambda: "linear_small_m: x and packed_weight differ in K")
        return x.new_empty((*x.shape[:-1], out_features))


def linear_small_m(x, packed_weight, out_features: int, bias=None, residual=None, gelu: bool = False):
    """[gelu_tanh](x @ W + bias) [+ residual] with W packed by pack_linear_weight.

    x: (..., K), any strides, fp32/bf16/fp16; packed_weight: same dtype; bias: (N,) or None;
    residual: (..., N) or None. fp32 accumulation. Returns a contiguous (..., N) in x's dtype.
    """
    return torch.ops.gpt_fast.linear_small_m(x, packed_weight, out_features, bias, residual, gelu)
