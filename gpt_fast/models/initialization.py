"""transformers' weight initialisation for GPT-1, shared by the models and the checkpoint loader."""

from __future__ import annotations

import torch


def initialize_parameter(name: str, param: torch.Tensor, std: float) -> None:
    """transformers' rule: LayerNorm weight 1, every bias 0, every other weight normal(0, std)."""
    with torch.no_grad():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            param.zero_()
        elif ".ln_" in f".{name}" and leaf == "weight":
            param.fill_(1.0)
        else:
            param.normal_(0.0, std)
