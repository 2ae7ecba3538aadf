"""gpt_fast::add_layernorm: layer_norm(x + residual [+ bias]), the post-LN step of a GPT-1 block, and its backward
gpt_fast::add_layernorm_backward (statistics recomputed; grad_bias is grad_v summed over rows, here)."""

from __future__ import annotations

import torch

from gpt_fast.ops import reference
from gpt_fast.ops._autograd import kernel_serves, register_backward
from gpt_fast.ops._library import extension_loaded


def _backward(grad_output, inputs, needs_input_grad):
    """add_layernorm's gradients through the backward kernel; None when it does not serve these inputs."""
    x, residual, bias, weight, ln_bias, eps = inputs
    if not kernel_serves("add_layernorm_backward", x):
        return None
    grad_v, grad_weight, grad_ln_bias = torch.ops.gpt_fast.add_layernorm_backward(grad_output, x, residual, bias,
                                                                                  weight, eps)
    grad_bias = grad_v.reshape(-1, grad_v.shape[-1]).sum(0) if bias is not None and needs_input_grad[2] else None
    return (grad_v if needs_input_grad[0] else None, grad_v if needs_input_grad[1] else None, grad_bias,
            grad_weight if needs_input_grad[3] else None, grad_ln_bias if needs_input_grad[4] else None, None)


if extension_loaded():

    @torch.library.register_fake("gpt_fast::add_layernorm")
    def _(x, residual, bias, weight, ln_bias, eps):
        torch._check(residual.shape == x.shape, lambda: "add_layernorm: residual must have the shape of x")
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("gpt_fast::add_layernorm_backward")
    def _(grad_out, x, residual, bias, weight, eps):
        torch._check(residual.shape == x.shape and grad_out.shape == x.shape,
                     lambda: "add_layernorm_backward: grad_out and residual must have the shape of x")
        C = x.shape[-1]
        return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(C), x.new_empty(C))

    register_backward("add_layernorm", reference.add_layernorm, _backward)


def add_layernorm(x, residual, bias, weight, ln_bias, eps: float):
    """Fused kernel call. x, residual: (..., C); bias (or None), weight, ln_bias: (C,)."""
    return torch.ops.gpt_fast.add_layernorm(x, residual, bias, weight, ln_bias, eps)


def add_layernorm_backward(grad_out, x, residual, bias, weight, eps: float):
    """(grad_v, grad_weight, grad_ln_bias) of add_layernorm, v = x + residual [+ bias]: grad_v (..., C) is the
    gradient of x and of residual; grad_weight, grad_ln_bias (C,). float64 too, on the CPU."""
    return torch.ops.gpt_fast.add_layernorm_backward(grad_out, x, residual, bias, weight, eps)
