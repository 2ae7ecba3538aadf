"""Backward for the fused ops: a backward kernel where one exists for the device and dtype, else the gradients
of the op's eager reference.

`register_backward(op_name, reference_fn, kernel_backward)` registers autograd for torch.ops.gpt_fast.<op_name>.
Its backward calls `kernel_backward(grad_output, inputs, needs_input_grad)`, which returns one gradient (or None)
per input, or None as a whole when no backward kernel serves these inputs. Then, and whenever the backward must
itself be differentiable (create_graph=True: the backward kernels have no autograd of their own), it recomputes the
op with gpt_fast.ops.reference and asks autograd for the gradients: correct, not fast.

An op with tuple outputs names the ones that carry gradients (`differentiable_outputs`, indices; the others are
marked non-differentiable): its reference returns the same tuple, its outputs are saved for the backward, and
`kernel_backward(grad_outputs, inputs, needs_input_grad, outputs)` gets the grads of the differentiable outputs (a
tuple, in that order) and the op's saved outputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from gpt_fast.ops import _library

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def kernel_serves(op_name: str, tensor: torch.Tensor) -> bool:
    """Whether gpt_fast::<op_name> has a kernel for tensor's device type and dtype (float32, bfloat16, float16)."""
    return tensor.dtype in KERNEL_DTYPES and _library.has_kernel(op_name, tensor.device.type)


def _reference_grads(reference_fn: Callable, inputs, grad_output, differentiable_outputs: Sequence[int] | None = None):
    """Input gradients of reference_fn(*inputs) by autograd. grad_output: the output's gradient, or with
    differentiable_outputs (reference_fn returns a tuple) the tuple of those outputs' gradients."""
    create_graph = torch.is_grad_enabled()  # backward(create_graph=True): the gradients get a graph of their own
    with torch.enable_grad():
        # with create_graph the inputs that require grad enter as views of themselves, so that the gradients
        # connect to their graph; a view, not the input itself, because autograd.grad with respect to the input
        # would also sum the paths from one input to another (the model's residual is a function of x), counting
        # them twice once autograd adds the input gradients up
        args = [
            (a.view_as(a) if create_graph and a.requires_grad else a.detach().requires_grad_(True))
            if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in inputs
        ]
        wanted = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        output = reference_fn(*args)
        if differentiable_outputs is not None:
            output = [output[i] for i in differentiable_outputs]
        grads = iter(torch.autograd.grad(output, wanted, grad_output, allow_unused=True,
                                         create_graph=create_graph))
    return tuple(next(grads) if isinstance(a, torch.Tensor) and a.requires_grad else None for a in args)


def register_backward(op_name: str, reference_fn: Callable, kernel_backward: Callable | None = None,
                      differentiable_outputs: Sequence[int] | None = None) -> None:
    """Registers autograd for torch.ops.gpt_fast.<op_name>, whose arguments are those of reference_fn.
    differentiable_outputs: for an op with tuple outputs, the indices of those that carry gradients."""
    tuple_outputs = differentiable_outputs is not None

    def setup_context(ctx, inputs, output):
        # tensors go through save_for_backward (version checks, saved-tensor hooks such as checkpointing's), the
        # other arguments (None, numbers) are kept as given
        ctx.is_tensor = [isinstance(a, torch.Tensor) for a in inputs]
        ctx.others = [None if t else a for a, t in zip(inputs, ctx.is_tensor)]
        tensors = [a for a, t in zip(inputs, ctx.is_tensor) if t]
        if tuple_outputs:
            ctx.mark_non_differentiable(*(o for i, o in enumerate(output) if i not in differentiable_outputs))
            tensors += list(output)
        ctx.save_for_backward(*tensors)

    def backward(ctx, *grad_outputs):
        saved = iter(ctx.saved_tensors)
        inputs = tuple(next(saved) if t else a for a, t in zip(ctx.others, ctx.is_tensor))
        grads = tuple(grad_outputs[i] for i in differentiable_outputs) if tuple_outputs else grad_outputs[0]
        if kernel_backward is not None and not torch.is_grad_enabled():
            extra = (tuple(saved),) if tuple_outputs else ()  # the op's outputs
            kernel_grads = kernel_backward(grads, inputs, ctx.needs_input_grad, *extra)
            if kernel_grads is not None:
                return kernel_grads
        return _reference_grads(reference_fn, inputs, grads, differentiable_outputs)

    torch.library.register_autograd(f"gpt_fast::{op_name}", backward, setup_context=setup_context)


def register_reference_backward(op_name: str, reference_fn: Callable) -> None:
    """Registers autograd for torch.ops.gpt_fast.<op_name> computed from the reference alone."""
    register_backward(op_name, reference_fn)
