"""transformers' weight initialisation for GPT-1, shared by the models and the checkpoint loader."""

from __future__ import annotations

import torch
from torch import nn

# what transformers' OpenAIGPT _init_weights initialises in a module it did not build (a custom head's)
INITIALISED_TYPES = (nn.Linear, nn.Embedding, nn.LayerNorm)


def initialize_parameter(name: str, param: torch.Tensor, std: float, owner: nn.Module | None = None) -> None:
    """transformers' rule: LayerNorm weight 1 (a gpt_fast `ln_*`, or any nn.LayerNorm owner), every bias 0, every
    other weight normal(0, std), an nn.Embedding owner's padding row 0."""
    with torch.no_grad():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            param.zero_()
        elif leaf == "weight" and (".ln_" in f".{name}" or isinstance(owner, nn.LayerNorm)):
            param.fill_(1.0)
        else:
            param.normal_(0.0, std)
            if isinstance(owner, nn.Embedding) and owner.padding_idx is not None and leaf == "weight":
                param[owner.padding_idx].zero_()
