"""Head layout of the attention tensors, shared by the reference ops and the model's attention backends."""

from __future__ import annotations

import torch


def split_heads(packed: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) -> (B, H, T, D), a view."""
    B, T, C = packed.shape
    return packed.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H * D)."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


def split_qkv(qkv: torch.Tensor, n_head: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The packed c_attn output (B, T, 3C) -> q, k, v, each (B, H, T, D)."""
    return tuple(split_heads(part, n_head) for part in qkv.split(qkv.shape[-1] // 3, dim=-1))
