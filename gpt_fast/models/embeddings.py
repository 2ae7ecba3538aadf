"""Resizing the token embedding (after `tokenizer.add_special_tokens(...)` or `add_tokens(...)`), as transformers'
`resize_token_embeddings` does: the old rows are kept, config.vocab_size follows, a tied LM head stays tied and an
untied one is resized with it.

New rows: with mean_resizing (the default) every new row is the mean of the old rows, the centre of the
distribution transformers samples them from (its covariance is scaled by 1e-9, so the draws differ from the mean by
noise of that order); without it they are drawn normal(0, initializer_range), as freshly built weights are.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _check_count(name: str, value, least: int) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
        raise ValueError(f"{name} must be None or an int >= {least}, got {value!r}")


def _new_rows(old: torch.Tensor, count: int, mean_resizing: bool, std: float) -> torch.Tensor:
    """count fresh rows for a (N, C) weight, float32 statistics, returned in old's dtype and device."""
    if mean_resizing and old.shape[0] > 0:
        return old.detach().float().mean(0, keepdim=True).expand(count, -1).to(old.dtype)
    return torch.empty(count, old.shape[1], dtype=old.dtype, device=old.device).normal_(0.0, std)


def _resized_weight(old: torch.Tensor, rows: int, mean_resizing: bool, std: float) -> torch.Tensor:
    kept = min(rows, old.shape[0])
    weight = old.detach()[:kept]
    if rows > kept:
        weight = torch.cat([weight, _new_rows(old, rows - kept, mean_resizing, std)])
    return weight.clone()


def resize_token_embeddings(model, new_num_tokens: int | None, pad_to_multiple_of: int | None,
                            mean_resizing: bool) -> nn.Embedding:
    """Resizes model's token embedding to new_num_tokens rows (rounded up to pad_to_multiple_of) and returns it.
    None for both returns the current embedding unchanged."""
    _check_count("new_num_tokens", new_num_tokens, 1)
    _check_count("pad_to_multiple_of", pad_to_multiple_of, 1)
    embedding = model.get_input_embeddings()
    if new_num_tokens is None and pad_to_multiple_of is None:
        return embedding
    rows = embedding.num_embeddings if new_num_tokens is None else new_num_tokens
    if pad_to_multiple_of is not None:
        rows = math.ceil(rows / pad_to_multiple_of) * pad_to_multiple_of
    config = model.config
    if config.pad_token_id is not None and config.pad_token_id >= rows:
        raise ValueError(f"cannot shrink the vocabulary to {rows}: config.pad_token_id is {config.pad_token_id}")
    std = config.initializer_range
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    new_embedding = nn.Embedding(rows, embedding.embedding_dim, device=embedding.weight.device,
                                 dtype=embedding.weight.dtype)
    new_embedding.weight = nn.Parameter(_resized_weight(embedding.weight, rows, mean_resizing, std),
                                        requires_grad=embedding.weight.requires_grad)
    model.base_model.tokens_embed = new_embedding
    if head is not None and not tied:
        new_head = nn.Linear(head.in_features, rows, bias=head.bias is not None, device=head.weight.device,
                             dtype=head.weight.dtype)
        new_head.weight = nn.Parameter(_resized_weight(head.weight, rows, mean_resizing, std),
                                       requires_grad=head.weight.requires_grad)
        if head.bias is not None:
            bias = torch.zeros(rows, dtype=head.bias.dtype, device=head.bias.device)
            bias[:min(rows, head.bias.shape[0])] = head.bias.detach()[:rows]
            new_head.bias = nn.Parameter(bias, requires_grad=head.bias.requires_grad)
        model.lm_head = new_head
    for module in model.modules():  # the head and its base model share one config, but be explicit
        if getattr(module, "config", None) is not None:
            module.config.vocab_size = rows
    model.tie_weights()
    return model.get_input_embeddings()
