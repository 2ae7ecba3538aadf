"""Which modules inside a block the fused path may look into instead of calling them, and how the blocks call the
others.

The fused block body (models/modeling.py: Block.forward with plan.fuse_modules) does not call every submodule: it
splits c_proj's bias off into add_layernorm with the residual, ln_1/ln_2 and the dropouts are read for their
parameters and p, and mlp.act is folded into c_fc's call as a tanh-GELU epilogue. That is exact only for gpt_fast's
own modules. A module a user put in their place (a LoRA wrapper around c_attn, as PEFT puts there; a Conv1D subclass
with its own forward; RMSNorm for ln_1; another activation for mlp.act; another MLP) must be called as a module,
as transformers' Block calls it. So while any block holds one, the blocks run module by module (plan.fuse_modules
False, as with hooks: models/hooks.py), and `call_linear` calls such a layer with x alone, transformers' call.

A replaced `attn` is refused: gpt_fast's Attention is called through its own interface (the prompt's backend or
a KV cache, models/modeling.py: Attend), which a foreign attention module does not implement.
"""

from __future__ import annotations

import torch
from torch import nn

from gpt_fast.models.hooks import global_hooks, own_hooks

_fusable_types: dict[type, bool] = {}  # class -> whether it declares `fusable` itself (a memo: ~0.1 us a lookup)


def native(module: nn.Module) -> bool:
    """Whether module is one of gpt_fast's own block modules (Attention, MLP, Conv1D, QuantizedConv1D: the class
    itself declares `fusable`), whose insides the fused path may use. Subclasses must declare it themselves: their
    forward is their own."""
    cls = type(module)
    known = _fusable_types.get(cls)
    if known is None:
        known = _fusable_types[cls] = bool(cls.__dict__.get("fusable", False))
    return known


def call_linear(module: nn.Module, x: torch.Tensor, plan) -> torch.Tensor:
    """module(x): with the plan when module is gpt_fast's own layer (its engines follow the plan, and its forward
    takes it), else as transformers calls it."""
    return module(x, plan) if native(module) else module(x)


def fusable_gelu(act: nn.Module) -> bool:
    """Whether mlp.act is the tanh GELU that c_fc's call may apply as its epilogue (bias_gelu)."""
    return type(act) is nn.GELU and act.approximate == "tanh"


def _native_layernorm(module: nn.Module) -> bool:
    params = module._parameters
    return (type(module) is nn.LayerNorm and params.get("weight") is not None and params.get("bias") is not None
            and len(module.normalized_shape) == 1)


def _block_layout(block: nn.Module) -> dict | None:
    """The block's submodules by name (attn, ln_1, mlp, ln_2), looking through wrappers around it that hold one
    module (torch's checkpoint_wrapper, FSDP1's FullyShardedDataParallel); None if there is no such layout."""
    while "attn" not in block._modules or "mlp" not in block._modules:
        children = [child for child in block._modules.values() if child is not None]
        if len(children) != 1:
            return None
        block = children[0]
    return block._modules


def module_by_module(blocks: nn.Module) -> bool:
    """Whether the blocks must call their modules one by one: a hook on a module inside a block, global module hooks
    (models/hooks.py), or a module the fused path cannot stand in for (a replaced one; see the module docstring).
    Only the modules of gpt_fast's own block layout are looked at: below a replaced module nothing needs to be, and
    gpt_fast's own modules have no others. A hook on a block itself does not count: a block is called as a module
    either way. ~35 us over GPT-1's 12 blocks on a 2-core Sapphire Rapids."""
    if global_hooks():
        return True
    for block in blocks._modules.values():
        parts = _block_layout(block)
        if parts is None:  # not a Block: called as a module, whatever it is
            return True
        attn, mlp = parts["attn"], parts["mlp"]
        if not native(attn):
            raise TypeError(f"a block's attn is a {type(attn).__name__}: gpt_fast calls its Attention through its "
                            "own interface (prompt backends, the KV cache). Replace attn.c_attn or attn.c_proj "
                            "instead.")
        if not native(mlp):
            return True
        a, m = attn._modules, mlp._modules
        if not (native(a["c_attn"]) and native(a["c_proj"]) and native(m["c_fc"]) and native(m["c_proj"])
                and _native_layernorm(parts["ln_1"]) and _native_layernorm(parts["ln_2"])
                and type(a["resid_dropout"]) is nn.Dropout and type(m["dropout"]) is nn.Dropout):
            return True
        for module in (attn, mlp, parts["ln_1"], parts["ln_2"], *a.values(), *m.values()):
            if module is not None and own_hooks(module):
                return True
    return False
