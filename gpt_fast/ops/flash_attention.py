"""gpt_fast::flash_attention: causal self-attention on the packed c_attn output (B, T, 3C) -> (B, T, C)."""

from __future__ import annotations

import torch

from gpt_fast.ops import reference
from gpt_fast.ops._autograd import register_reference_backward
from gpt_fast.ops._library import extension_loaded

if extension_loaded():

    @torch.library.register_fake("gpt_fast::flash_attention")
    def _(qkv, key_padding_mask, n_head):
        torch._check(qkv.dim() == 3, lambda: "flash_attention: qkv must have 3 dimensions")
        B, T, C3 = qkv.shape
        torch._check(C3 % 3 == 0, lambda: "flash_attention: qkv's last dimension must be 3 * C")
        # As csrc/checks.h (check_packed_qkv) and both backends: 0 < n_head, n_head divides C, head_dim >= 1.
        torch._check(0 < n_head <= C3 // 3 and (C3 // 3) % n_head == 0,
                     lambda: f"flash_attention: n_head must divide C = {C3 // 3} (head_dim >= 1), got {n_head}")
        if key_padding_mask is not None:
            torch._check(key_padding_mask.device == qkv.device,
                         lambda: "flash_attention: key_padding_mask must be on qkv's device")
        return qkv.new_empty((B, T, C3 // 3))

    register_reference_backward("flash_attention", reference.flash_attention)


def flash_attention(qkv, key_padding_mask, n_head: int):
    """Causal attention. qkv: (B, T, 3C) = q | k | v; key_padding_mask: (B, T) bool (True = attend) or None.
    Returns (B, T, C); query rows with no key to attend give zeros."""
    return torch.ops.gpt_fast.flash_attention(qkv, key_padding_mask, n_head)
