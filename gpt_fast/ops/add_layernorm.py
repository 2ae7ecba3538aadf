"""gpt_fast::add_layernorm: layer_norm(x + dropout(residual [+ bias])), the post-LN step of a GPT-1 block with its
residual dropout, and its backward gpt_fast::add_layernorm_backward (statistics recomputed, the mask redrawn from
the forward's seed; grad_bias is grad_residual summed over rows, here).

The dropout mask is Philox's under the call's seed (csrc/philox.h, oracle gpt_fast/ops/philox.py): element
n = row * C + col of residual is kept when its 32 bits >= floor(p 2^32), and kept values are scaled by 1 / (1 - p).
Callers draw the seed with gpt_fast.ops.philox.draw_seed() (torch's generator: torch.manual_seed reproduces it).
"""

from __future__ import annotations

import math

import torch

from gpt_fast.ops import reference
from gpt_fast.ops._autograd import kernel_serves, register_backward
from gpt_fast.ops._library import extension_loaded
from gpt_fast.ops.func_transforms import transforms_active


def _check_dropout_p(op: str, dropout_p: float) -> None:
    if not (0.0 <= dropout_p < 1.0) or math.isnan(dropout_p):
        raise ValueError(f"gpt_fast::{op}: dropout_p must lie in [0, 1), got {dropout_p}")


def _backward(grad_output, inputs, needs_input_grad):
    """add_layernorm's gradients through the backward kernel; None when it does not serve these inputs."""
    x, residual, bias, weight, ln_bias, eps, dropout_p, seed = inputs
    if not kernel_serves("add_layernorm_backward", x):
        return None
    grad_v, grad_weight, grad_ln_bias, grad_residual = torch.ops.gpt_fast.add_layernorm_backward(
        grad_output, x, residual, bias, weight, eps, dropout_p, seed)
    if dropout_p == 0.0:  # no mask: x's gradient is residual's
        grad_residual = grad_v
    grad_bias = (grad_residual.reshape(-1, grad_residual.shape[-1]).sum(0)
                 if bias is not None and needs_input_grad[2] else None)
    return (grad_v if needs_input_grad[0] else None, grad_residual if needs_input_grad[1] else None, grad_bias,
            grad_weight if needs_input_grad[3] else None, grad_ln_bias if needs_input_grad[4] else None,
            None, None, None)


if extension_loaded():

    @torch.library.register_fake("gpt_fast::add_layernorm")
    def _(x, residual, bias, weight, ln_bias, eps, dropout_p=0.0, seed=0):
        torch._check(residual.shape == x.shape, lambda: "add_layernorm: residual must have the shape of x")
        _check_dropout_p("add_layernorm", dropout_p)
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("gpt_fast::add_layernorm_backward")
    def _(grad_out, x, residual, bias, weight, eps, dropout_p=0.0, seed=0):
        torch._check(residual.shape == x.shape and grad_out.shape == x.shape,
                     lambda: "add_layernorm_backward: grad_out and residual must have the shape of x")
        _check_dropout_p("add_layernorm_backward", dropout_p)
        C = x.shape[-1]
        grad_residual = (torch.empty_like(x, memory_format=torch.contiguous_format) if dropout_p > 0
                         else x.new_empty(0))
        return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(C), x.new_empty(C),
                grad_residual)

    register_backward("add_layernorm", reference.add_layernorm, _backward)


def add_layernorm(x, residual, bias, weight, ln_bias, eps: float, dropout_p: float = 0.0, seed: int = 0):
    """Fused kernel call. x, residual: (..., C); bias (or None), weight, ln_bias: (C,); dropout_p in [0, 1) drops
    elements of residual + bias under Philox's mask for seed. Under torch.func transforms and forward-mode AD
    (which custom ops do not support: func_transforms.py), the eager reference."""
    if transforms_active():
        return reference.add_layernorm(x, residual, bias, weight, ln_bias, eps, dropout_p, seed)
    return torch.ops.gpt_fast.add_layernorm(x, residual, bias, weight, ln_bias, eps, dropout_p, seed)


def add_layernorm_backward(grad_out, x, residual, bias, weight, eps: float, dropout_p: float = 0.0, seed: int = 0):
    """(grad_v, grad_weight, grad_ln_bias, grad_residual) of add_layernorm, v = x + dropout(residual [+ bias]):
    grad_v (..., C) is x's gradient; grad_residual (..., C) = grad_v * keep / (1 - p) residual's, or empty (0,)
    when dropout_p is 0 (grad_v is residual's then); grad_weight, grad_ln_bias (C,). float64 too, on the CPU."""
    return torch.ops.gpt_fast.add_layernorm_backward(grad_out, x, residual, bias, weight, eps, dropout_p, seed)
