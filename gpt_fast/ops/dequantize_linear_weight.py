"""gpt_fast::dequantize_linear_weight: the (N, K) weight a weight-only quantized linear layer stands for, in a float
dtype, made in one pass for a call that runs the GEMM on it (the quantized layers' "dequantize" engine: prefills
longer than the decode kernels serve, gpt_fast/quantization/layer.py).

From the logical format (reference.quantize_linear_weight's): bits=8: qweight int8 (N, K), scales float32 (N, 1);
bits=4: qweight uint8 (N, K // 2) (low nibble first), scales and zeros bfloat16 (N, K // group_size). W = q * scale
(+ zero), the product and the sum each rounded in float32, then rounded to dtype: bit for bit
reference.dequantize_linear_weight(...).to(dtype). A CPU kernel (csrc/cpu/dequantize_linear_weight.cpp; tiers AVX2,
scalar); other devices, and builds without the extension, run the same arithmetic as PyTorch ops.
"""

from __future__ import annotations

import torch

from gpt_fast.ops._library import extension_loaded, has_kernel

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

if extension_loaded():

    @torch.library.register_fake("gpt_fast::dequantize_linear_weight")
    def _(qweight, scales, zeros, bits, group_size, dtype):
        torch._check(bits in (4, 8), lambda: f"dequantize_linear_weight: bits must be 4 or 8, got {bits}")
        torch._check(qweight.dim() == 2, lambda: "dequantize_linear_weight: qweight must be 2-D")
        torch._check(dtype in DTYPES, lambda: f"dequantize_linear_weight: dtype must be one of {DTYPES}, got {dtype}")
        N, K = qweight.shape[0], qweight.shape[1] * (2 if bits == 4 else 1)
        if bits == 8:
            torch._check(tuple(scales.shape) == (N, 1) and zeros is None,
                         lambda: "dequantize_linear_weight: bits=8 needs scales (N, 1) and no zeros")
        else:
            torch._check(group_size > 0 and group_size % 2 == 0 and K % group_size == 0,
                         lambda: f"dequantize_linear_weight: bits=4 needs an even group_size dividing K={K}")
            groups = (N, K // group_size)
            torch._check(zeros is not None and tuple(scales.shape) == groups and tuple(zeros.shape) == groups,
                         lambda: f"dequantize_linear_weight: bits=4 needs scales and zeros of shape {groups}")
        return qweight.new_empty((N, K), dtype=dtype)


def dequantize_linear_weight(qweight, scales, zeros, bits: int, group_size: int | None, dtype: torch.dtype):
    """W (N, K) in dtype (see the module docstring); the kernel where the device has one, else PyTorch ops."""
    if has_kernel("dequantize_linear_weight", qweight.device.type):
        return torch.ops.gpt_fast.dequantize_linear_weight(qweight, scales, zeros, bits, group_size or 0, dtype)
    return pytorch_dequantize(qweight, scales, zeros, bits, group_size, dtype)


def pytorch_dequantize(qweight, scales, zeros, bits: int, group_size: int | None, dtype: torch.dtype):
    """The same result from PyTorch ops, with fewer passes than reference.dequantize_linear_weight (no
    repeat_interleave of the scales and zeros to (N, K): they broadcast over (N, K / G, G) in place)."""
    if bits == 8:  # qweight int8 (N, K), scales float32 (N, 1)
        return (qweight.to(torch.float32) * scales).to(dtype)
    N, half = qweight.shape
    K = 2 * half
    q = torch.stack((qweight & 0xF, qweight >> 4), dim=-1)  # (N, K // 2, 2) uint8
    w = q.view(N, K // group_size, group_size).to(torch.float32)  # (N, groups, G)
    w.mul_(scales.to(torch.float32).unsqueeze(-1)).add_(zeros.to(torch.float32).unsqueeze(-1))
    return w.view(N, K).to(dtype)
