"""Backward for the fused ops, computed by differentiating their eager reference.

The kernels are forward-only; registering this lets a fused forward sit inside an autograd graph (for example
a model called without torch.no_grad()). The backward recomputes the op with gpt_fast.ops.reference and asks autograd
for the gradients: correct, not fast. Training runs should use the "sdpa" backend.
"""

from __future__ import annotations

from typing import Callable

import torch


def register_reference_backward(op_name: str, reference_fn: Callable) -> None:
    """Registers autograd for torch.ops.gpt_fast.<op_name>, whose arguments are those of reference_fn."""

    def setup_context(ctx, inputs, output):
        ctx.inputs = inputs  # tensors and plain scalars; kept as given

    def backward(ctx, grad_output):
        with torch.enable_grad():
            args = [
                a.detach().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in ctx.inputs
            ]
            wanted = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            output = reference_fn(*args)
            grads = iter(torch.autograd.grad(output, wanted, grad_output, allow_unused=True))
        return tuple(next(grads) if isinstance(a, torch.Tensor) and a.requires_grad else None for a in args)

    torch.library.register_autograd(f"gpt_fast::{op_name}", backward, setup_context=setup_context)
