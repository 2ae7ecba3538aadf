"""gpt_fast::bias_gelu: gelu_tanh(x + bias), the GPT-1 MLP activation fused with the c_fc bias, and its backward
gpt_fast::bias_gelu_backward (grad_x; grad_bias is grad_x summed over rows, here)."""

from __future__ import annotations

import torch

from gpt_fast.ops import reference
from gpt_fast.ops._autograd import kernel_serves, register_backward
from gpt_fast.ops._library import extension_loaded
from gpt_fast.ops.func_transforms import transforms_active


def _backward(grad_output, inputs, needs_input_grad):
    """bias_gelu's gradients through the backward kernel; None when it does not serve these inputs."""
    x, bias = inputs
    if not kernel_serves("bias_gelu_backward", x):
        return None
    grad_x = torch.ops.gpt_fast.bias_gelu_backward(grad_output, x, bias)  # (..., N)
    # grad_bias: PyTorch's column sum (fp32 accumulation for bf16/fp16), as the reference's autograd takes it. At
    # GPT-1's (1024, 3072), one thread, it costs 0.64 ms (fp32) / 0.3 ms (bf16) next to the kernel's 1.85 / 2.1 ms;
    # fusing it into the kernel (per-task partial rows) could save part of that, not done yet.
    grad_bias = grad_x.reshape(-1, grad_x.shape[-1]).sum(0) if needs_input_grad[1] else None
    return (grad_x if needs_input_grad[0] else None), grad_bias


if extension_loaded():

    @torch.library.register_fake("gpt_fast::bias_gelu")
    def _(x, bias):
        torch._check(bias.dim() == 1 and bias.shape[0] == x.shape[-1], lambda: "bias_gelu: bias must be (N,)")
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("gpt_fast::bias_gelu_backward")
    def _(grad_out, x, bias):
        torch._check(grad_out.shape == x.shape, lambda: "bias_gelu_backward: grad_out must have the shape of x")
        torch._check(bias.dim() == 1 and bias.shape[0] == x.shape[-1], lambda: "bias_gelu_backward: bias must be (N,)")
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    register_backward("bias_gelu", reference.bias_gelu, _backward)


def bias_gelu(x, bias):
    """Fused kernel call. x: (..., N) fp32/bf16/fp16, bias: (N,) same dtype. Returns a contiguous (..., N). Under
    torch.func transforms and forward-mode AD (func_transforms.py), the eager reference."""
    if transforms_active():
        return reference.bias_gelu(x, bias)
    return torch.ops.gpt_fast.bias_gelu(x, bias)


def bias_gelu_backward(grad_out, x, bias):
    """bias_gelu's grad_x: grad_out * gelu_tanh'(x + bias). grad_out, x: (..., N); bias: (N,). Returns a contiguous
    (..., N) in x's dtype (float64 too, on the CPU)."""
    return torch.ops.gpt_fast.bias_gelu_backward(grad_out, x, bias)
