"""The tied LM head in state dicts: held once, under the token embedding's key, as transformers writes checkpoints.

A model whose LM head is the token embedding (GPT-1's default) gives `state_dict()` without "lm_head.weight": two
names for one tensor make `safetensors.torch.save_file` refuse the dict, and transformers' Trainer saves every model
that is not a transformers PreTrainedModel exactly so (its checkpoints crashed at the first save). load_state_dict
takes a dict with or without that key: when it is absent, the embedding's tensor fills it (so strict loading of a
gpt_fast state dict works, and a transformers state dict, which has both, loads as before). An untied or quantized
head keeps its own key. transformers' model loads such a dict with strict=False (its head is tied too).
"""

from __future__ import annotations

from torch import nn

HEAD, EMBEDDING = "lm_head.weight", "transformer.tokens_embed.weight"


def is_tied(model: nn.Module) -> bool:
    head, base = getattr(model, "lm_head", None), getattr(model, "transformer", None)
    return isinstance(head, nn.Linear) and base is not None and head.weight is base.tokens_embed.weight


def drop_tied_head(model: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: the tied head's key removed (the embedding's holds the tensor)."""
    if is_tied(model) and prefix + EMBEDDING in state_dict:
        state_dict.pop(prefix + HEAD, None)


def fill_tied_head(model: nn.Module, state_dict: dict, prefix: str, local_metadata, strict, missing_keys,
                   unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: a tied model's head key, when absent, taken from the embedding's. A model configured
    tied whose tie was broken by moving it (`to_empty()` after building on the meta device makes each module's
    tensors anew) is tied again first, as the dict describes it."""
    if prefix + HEAD in state_dict or prefix + EMBEDDING not in state_dict:
        return
    if not is_tied(model) and hasattr(model, "tie_weights"):
        model.tie_weights()  # (which ties only a plain nn.Linear head of a model configured tied)
    if is_tied(model):
        state_dict[prefix + HEAD] = state_dict[prefix + EMBEDDING]


def register(model: nn.Module) -> None:
    model.register_state_dict_post_hook(drop_tied_head)
    model.register_load_state_dict_pre_hook(fill_tied_head)


def full_state_dict(model: nn.Module) -> dict:
    """model.state_dict() with the tied head's key too (what a checkpoint file may name)."""
    state = model.state_dict()
    if is_tied(model):
        state[HEAD] = state[EMBEDDING]
    return state
