"""gpt_fast::round_activations: x (..., K) as float32 with each group of group_size consecutive values rounded to
int8 by its own scale s = max |x| / 127 (q = round half to even (x / s) in [-127, 127], x = q * s; an all-zero group
stays 0, a group holding a NaN or an infinity becomes NaN): the activations of int4-a8 and int8-a8, which the
quantized layers' "dequantize" engine (gpt_fast/quantization/layer.py) rounds before its GEMM as the decode kernel
rounds them before its byte products. Bit for bit reference.round_activations. A CPU kernel
(csrc/cpu/round_activations.cpp: the loop linear_quantized rounds x with, plain C++ for the baseline and AVX2
intrinsics); other devices, and builds without the extension, run the reference's PyTorch ops.
"""

from __future__ import annotations

import torch

from gpt_fast.ops import reference
from gpt_fast.ops._library import extension_loaded, has_kernel

if extension_loaded():

    @torch.library.register_fake("gpt_fast::round_activations")
    def _(x, group_size):
        torch._check(x.dim() >= 1, lambda: "round_activations: x must have at least one dimension (..., K)")
        torch._check(group_size > 0 and x.shape[-1] % group_size == 0,
                     lambda: f"round_activations: group_size must be positive and divide K={x.shape[-1]}")
        return x.new_empty(x.shape, dtype=torch.float32)


def round_activations(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """x rounded per group (see the module docstring), float32; the kernel where the device has one."""
    if has_kernel("round_activations", x.device.type):
        return torch.ops.gpt_fast.round_activations(x, group_size)
    return reference.round_activations(x, group_size)
