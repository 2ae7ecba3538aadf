"""Module hooks, which a fused path would skip: forward (pre-)hooks and backward hooks on a module, or on every
module (torch.nn.modules.module's global ones). While a block's submodules carry any, the blocks run module by
module (models/block_modules.py: module_by_module; ops/kernel_plan.py: by_module), so that each hook sees the calls
and tensors it sees in transformers' model: activation capture, steering and patching hooks, pruning's pre-hooks."""

from __future__ import annotations

from typing import Callable

from torch import nn
from torch.nn.modules import module as torch_module


def global_hooks() -> bool:
    """Whether hooks registered for every nn.Module (register_module_forward_hook, ...) exist."""
    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
                or torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks)


def own_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def hooked(module: nn.Module) -> bool:
    """Whether calling the module runs hooks (its own or global ones)."""
    return own_hooks(module) or global_hooks()


def _any_below(roots, has: Callable[[nn.Module], bool]) -> bool:
    """Whether `has` holds for a module among roots or below them: a walk over _modules, about 3x faster than
    module.modules()."""
    stack = list(roots)
    while stack:
        current = stack.pop()
        if has(current):
            return True
        stack.extend(child for child in current._modules.values() if child is not None)
    return False


def forward_hooked(model: nn.Module) -> bool:
    """Whether any module of model, or nn.Module globally, has forward (pre-)hooks: Python that must run at every
    call, which a replayed decode step or a CUDA graph would run once (generation/replayed_step.py, decoder.py)."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return _any_below((model,), lambda module: bool(module._forward_hooks or module._forward_pre_hooks))
