"""gpt_fast::decode_attention: attention of S new tokens per row over a KV cache, updating the cache in place."""

from __future__ import annotations

import torch

from gpt_fast.ops._library import extension_loaded

if extension_loaded():

    # The schema marks k_cache (a!) and v_cache (b!) as mutated in place; the fake kernel leaves them alone
    # (same shapes, same storage) and only describes the new output.
    @torch.library.register_fake("gpt_fast::decode_attention")
    def _(qkv, k_cache, v_cache, cache_lengths, n_head):
        torch._check(qkv.dim() == 3, lambda: "decode_attention: qkv must have 3 dimensions")
        B, S, C3 = qkv.shape
        torch._check(C3 % 3 == 0, lambda: "decode_attention: qkv's last dimension must be 3 * C")
        # As csrc/checks.h (check_packed_qkv) and both backends: 0 < n_head, n_head divides C, head_dim >= 1.
        torch._check(0 < n_head <= C3 // 3 and (C3 // 3) % n_head == 0,
                     lambda: f"decode_attention: n_head must divide C = {C3 // 3} (head_dim >= 1), got {n_head}")
        for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("cache_lengths", cache_lengths)):
            torch._check(t.device == qkv.device, lambda name=name: f"decode_attention: {name} must be on qkv's device")
        return qkv.new_empty((B, S, C3 // 3))


def decode_attention(qkv, k_cache, v_cache, cache_lengths, n_head: int):
    """qkv: (B, S, 3C) for S new tokens; k_cache, v_cache: (B, H, Tmax, D), written at [len, len + S) per row;
    cache_lengths: (B,) int64. Returns (B, S, C); token i of row b attends to cache positions [0, len_b + i]."""
    return torch.ops.gpt_fast.decode_attention(qkv, k_cache, v_cache, cache_lengths, n_head)
