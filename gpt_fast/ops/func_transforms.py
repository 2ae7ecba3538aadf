"""torch.func's transforms (grad, vmap, jvp, jacrev, hessian, functional_call under them) and forward-mode AD
(torch.autograd.forward_ad) see gpt_fast's kernels as PyTorch custom ops, which they do not fully support: a custom
op gets no forward-mode derivative (its tangent comes out as zero, silently), and functorch's grad and vmap need
rules that torch.library's registration does not give. So while one of them is active the kernel plan is the
plain-PyTorch one (ops/kernel_plan.py) and the fused loss its reference: the same math, which every transform
supports. Reading a tensor's values (the models' input checks) needs the tensor under vmap's wrapper.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad


def transforms_active() -> bool:
    """Whether a torch.func transform or a forward-mode AD level (forward_ad.dual_level) is active. False while
    torch.compile traces (it runs the transforms itself, on the traced graph)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._are_functorch_transforms_active() or getattr(forward_ad, "_current_level", -1) >= 0


def plain_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor under torch.func's wrappers: under vmap, all the examples, whose values can be read."""
    while torch._C._functorch.is_functorch_wrapped_tensor(tensor):
        tensor = torch._C._functorch.get_unwrapped(tensor)
    return tensor
