"""gpt_fast::bias_gelu: gelu_tanh(x + bias), the GPT-1 MLP activation fused with the c_fc bias."""

from __future__ import annotations

import torch

from gpt_fast.ops import reference
from gpt_fast.ops._autograd import register_reference_backward
from gpt_fast.ops._library import extension_loaded

if extension_loaded():

    @torch.library.register_fake("gpt_fast::bias_gelu")
    def _(x, bias):
        torch._check(bias.dim() == 1 and bias.shape[0] == x.shape[-1], lambda: "bias_gelu: bias must be (N,)")
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    register_reference_backward("bias_gelu", reference.bias_gelu)


def bias_gelu(x, bias):
    """Fused kernel call. x: (..., N) fp32/bf16/fp16, bias: (N,) same dtype. Returns a contiguous (..., N)."""
    return torch.ops.gpt_fast.bias_gelu(x, bias)
