"""gpt_fast::linear_small_m: the decode-time (few-row) linear layer, over a weight made by pack_linear_weight.

At decode a GPT-1 step multiplies 1 to ~16 rows by every weight matrix, so it is bound by reading the weights.
linear_small_m reads each weight once, at memory bandwidth, from a layout made once at load time by
pack_linear_weight, and applies bias, tanh-GELU and a residual add in registers before its only store:

    out = [gelu_tanh](x @ W + bias) [+ residual]

The packed layout is pack_linear_weight's (ops/pack_linear_weight.py). Both ops take tensors and plain scalars
only and have fake kernels, so they trace under torch.compile.

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

if extension_loaded():

    @torch.library.register_fake("gpt_fast::linear_small_m")
    def _(x, packed_weight, out_features, bias, residual, gelu):
        torch._check(packed_weight.dim() == 3, lambda: "linear_small_m: packed_weight must be 3-D")
        torch._check(packed_weight.shape[1] == x.shape[-1], lambda: "linear_small_m: x and packed_weight differ in K")
        return x.new_empty((*x.shape[:-1], out_features))


def linear_small_m(x, packed_weight, out_features: int, bias=None, residual=None, gelu: bool = False):
    """[gelu_tanh](x @ W + bias) [+ residual] with W packed by pack_linear_weight.

    x: (..., K), any strides, fp32/bf16/fp16; packed_weight: same dtype; bias: (N,) or None;
    residual: (..., N) or None. fp32 accumulation. Returns a contiguous (..., N) in x's dtype.
    """
    return torch.ops.gpt_fast.linear_small_m(x, packed_weight, out_features, bias, residual, gelu)
