"""Backward for the fused ops: a backward kernel where one exists for the device and dtype, else the gradients
of the op's eager reference.

`register_backward(op_name, reference_fn, kernel_backward)` registers autograd for torch.ops.gpt_fast.<op_name>.
Its backward calls `kernel_backward(grad_output, inputs, needs_input_grad)`, which returns one gradient (or None)
per input, or None as a whole when no backward kernel serves these inputs. Then, and whenever the backward must
itself be differentiable (create_graph=True: the backward kernels have no autograd of their own), it recomputes the
op with gpt_fast.ops.reference and asks autograd for the gradients: correct, not fast.
"""

from __future__ import annotations

from typing import Callable

import torch

from gpt_fast.ops import _library

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def kernel_serves(op_name: str, tensor: torch.Tensor) -> bool:
    """Whether gpt_fast::<op_name> has a kernel for tensor's device type and dtype (float32, bfloat16, float16)."""
    return tensor.dtype in KERNEL_DTYPES and _library.has_kernel(op_name, tensor.device.type)


def _reference_grads(reference_fn: Callable, inputs, grad_output):
    create_graph = torch.is_grad_enabled()  # backward(create_graph=True): the gradients get a graph of their own
    with torch.enable_grad():
        # with create_graph the inputs that require grad are kept, so that the gradients connect to their graph
        args = [
            (a if create_graph and a.requires_grad else a.detach().requires_grad_(True))
            if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in inputs
        ]
        wanted = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        output = reference_fn(*args)
        grads = iter(torch.autograd.grad(output, wanted, grad_output, allow_unused=True,
                                         create_graph=create_graph))
    return tuple(next(grads) if isinstance(a, torch.Tensor) and a.requires_grad else None for a in args)


def register_backward(op_name: str, reference_fn: Callable, kernel_backward: Callable | None = None) -> None:
    """Registers autograd for torch.ops.gpt_fast.<op_name>, whose arguments are those of reference_fn."""

    def setup_context(ctx, inputs, output):
        ctx.inputs = inputs  # tensors and plain scalars; kept as given

    def backward(ctx, grad_output):
        if kernel_backward is not None and not torch.is_grad_enabled():
            grads = kernel_backward(grad_output, ctx.inputs, ctx.needs_input_grad)
            if grads is not None:
                return grads
        return _reference_grads(reference_fn, ctx.inputs, grad_output)

    torch.library.register_autograd(f"gpt_fast::{op_name}", backward, setup_context=setup_context)


def register_reference_backward(op_name: str, reference_fn: Callable) -> None:
    """Registers autograd for torch.ops.gpt_fast.<op_name> computed from the reference alone."""
    register_backward(op_name, reference_fn)
