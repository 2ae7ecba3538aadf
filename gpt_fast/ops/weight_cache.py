"""Weights kept a second time in the layout a fast kernel wants, cached on the module that owns them.

An entry is rebuilt whenever one of its source tensors changes (new storage, an in-place update, another dtype
or device) and after any torch.optim optimizer step, and the stale copy is dropped before the new one is built.
(PyTorch's fused AdamW/Adam/SGD update parameters in place without bumping their version counters, so a step is
counted through torch.optim's global step hook. An update through `param.data` is invisible to both: call
`clear(model)` after one.) Entries live in the module's __dict__,
outside parameters, buffers and state_dict; each costs as much memory as the weights it copies.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

T = TypeVar("T")
PREFIX = "_gpt_fast_cache_"
_optimizer_steps = [0]  # how many torch.optim steps this process has taken: part of every entry's key


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _optimizer_steps[0] += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def cached_on(module: nn.Module, name: str, sources: list[torch.Tensor], build: Callable[[], T], tag=None) -> T:
    """build(), made once per version of `sources` (and per `tag`: what kind of copy it is) and kept on `module`
    under `name`: one entry per name, so a copy of another tag replaces the one before."""
    name = PREFIX + name
    # The key is built inline (no helper calls, a list compared as is): this runs for every linear layer at every
    # decode step, where each microsecond is a direct loss.
    key = [tag, _optimizer_steps[0]]
    for t in sources:
        # inference tensors (made under torch.inference_mode) have no version counter, and can only be changed in
        # place inside inference mode, where nothing is tracked
        key += (t.data_ptr(), None if t.is_inference() else t._version, t.dtype, t.device)
    entry = module.__dict__.get(name)
    if entry is not None and entry[0] == key:
        return entry[1]
    module.__dict__.pop(name, None)  # free the stale copy first
    value = build()
    module.__dict__[name] = (key, value)
    return value


def clear(module: nn.Module) -> None:
    """Drops every cached copy held by `module` and its children."""
    for child in module.modules():
        for name in [n for n in child.__dict__ if n.startswith(PREFIX)]:
            del child.__dict__[name]
