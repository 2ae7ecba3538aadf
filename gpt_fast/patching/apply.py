"""apply_gpt_fast_kernels / revert_gpt_fast_kernels: gpt_fast's kernels inside a live transformers OpenAIGPT model
(Liger-style), and back.

Patched: Attention.forward, MLP.forward and Block.forward (forwards.py) and OpenAIGPTLMHeadModel.generate
(generate.py). With a model, the methods of the transformers modules inside it are replaced on those instances
only (an entry in each instance's __dict__; nothing else changes); without one, on transformers' classes, for every
instance. Patching twice changes nothing; revert removes exactly what apply added.
"""

from __future__ import annotations

import types

from torch import nn

from gpt_fast.models.pretrained import OpenAIGPTPreTrainedModel
from gpt_fast.patching import forwards
from gpt_fast.patching.generate import drop_shared_model, lm_generate
from gpt_fast.patching.originals import is_patch, modeling_openai, patch_class, revert_class


def _patches() -> list[tuple[type, str, types.FunctionType]]:
    """(transformers class, method name, gpt_fast's replacement)."""
    hf = modeling_openai()
    return [(hf.Attention, "forward", forwards.attention_forward), (hf.MLP, "forward", forwards.mlp_forward),
            (hf.Block, "forward", forwards.block_forward), (hf.OpenAIGPTLMHeadModel, "generate", lm_generate)]


def _targets(model) -> list[tuple[nn.Module, str, types.FunctionType]]:
    """The (module, method name, replacement) triples of a model; a clear error if it holds no OpenAIGPT model."""
    if isinstance(model, OpenAIGPTPreTrainedModel):
        raise TypeError(f"{type(model).__name__} is a gpt_fast model: it runs gpt_fast's kernels already; "
                        "apply_gpt_fast_kernels is for transformers' OpenAIGPT* models")
    if not isinstance(model, nn.Module):
        raise TypeError(f"apply_gpt_fast_kernels needs a transformers OpenAIGPT* model, got {type(model).__name__}")
    hf = modeling_openai()
    modules = list(model.modules())
    if not any(isinstance(module, hf.OpenAIGPTModel) for module in modules):
        raise TypeError(f"apply_gpt_fast_kernels needs a transformers OpenAIGPT* model (OpenAIGPTModel, "
                        f"OpenAIGPTLMHeadModel, OpenAIGPTDoubleHeadsModel, OpenAIGPTForSequenceClassification) or "
                        f"a module holding one; {type(model).__name__} holds none")
    patches = _patches()
    return [(module, name, function) for module in modules for cls, name, function in patches
            if isinstance(module, cls)]


def apply_gpt_fast_kernels(model: nn.Module | None = None) -> nn.Module | None:
    """Runs gpt_fast's kernels in a transformers OpenAIGPT* model (or in every one, model=None): attention, MLP
    and the residual-add + LayerNorms of each block, and gpt_fast's generate for the LM head. Returns the model.
    model may also be a module holding one (a PEFT wrapper, your own module): every OpenAIGPT layer in it is
    patched."""
    if model is None:
        for cls, name, function in _patches():
            patch_class(cls, name, function)
        return None
    for module, name, function in _targets(model):
        if not is_patch(module.__dict__.get(name)):
            module.__dict__[name] = types.MethodType(function, module)
    return model


def revert_gpt_fast_kernels(model: nn.Module | None = None) -> nn.Module | None:
    """Undoes apply_gpt_fast_kernels(model) (model=None: undoes the patch of transformers' classes)."""
    if model is None:
        for cls, name, _ in _patches():
            revert_class(cls, name)
        return None
    for module, name, _ in _targets(model):
        if is_patch(module.__dict__.get(name)):
            del module.__dict__[name]
        drop_shared_model(module)
    return model
