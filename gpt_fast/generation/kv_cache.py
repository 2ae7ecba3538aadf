"""The static KV cache of one generation request.

Allocated once per request at its final length and never resized: keys and values are (n_layer, B, H, Tmax, D),
and `lengths` (B,) int64 counts the tokens cached per row. Each row's real tokens are packed at the start of its
row (prompt padding is dropped when the prompt is written), so a row's length is also the position of its next
token and exactly decode_attention's `cache_lengths`.

generate(..., return_dict_in_generate=True) returns it as `cache` (alias `past_key_values`), where transformers
returns its own Cache: `len(cache)` layers, `cache[i]` = that layer's (keys, values), each (B, H, L, D) with L the
longest row's length, `get_seq_length()` = L, `to_legacy_cache()` = the tuple of them. Row b holds its real tokens
at positions [0, lengths[b]) (padding dropped); positions past a row's length hold nothing meaningful. A later
generate(ids, past_key_values=cache) continues from it (cache_reuse.py).
"""

from __future__ import annotations

import torch

from gpt_fast.ops.layout import split_heads


class StaticKVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, max_length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        if max_length <= 0:
            raise ValueError(f"max_length of the KV cache must be positive, got {max_length}")
        shape = (n_layer, batch, n_head, max_length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, H, Tmax, D)
        self.values = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, H, Tmax, D)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
        # per-layer views, made once so the decode loop does no indexing
        self.layers = [(self.keys[i], self.values[i]) for i in range(n_layer)]  # (B, H, Tmax, D) each

    @classmethod
    def for_model(cls, config, rows: int, max_length: int, dtype: torch.dtype, device: torch.device) -> "StaticKVCache":
        """A cache of `rows` rows of `max_length` positions for a model of `config` (its layers, heads, head width)."""
        return cls(config.n_layer, rows, config.n_head, max_length, config.n_embd // config.n_head, dtype, device)

    @property
    def max_length(self) -> int:
        return self.keys.shape[3]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The longest row's cached length (transformers' Cache.get_seq_length; every layer holds the same)."""
        return int(self.lengths.max()) if self.lengths.numel() else 0

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s (keys, values), each (B, H, L, D) up to the longest row's length L."""
        length = self.get_seq_length()
        k_cache, v_cache = self.layers[layer]
        return k_cache[:, :, :length], v_cache[:, :, :length]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def to_legacy_cache(self) -> tuple:
        """((keys, values) per layer), the tuple format of transformers' older past_key_values."""
        return tuple(self)

    def write_prompt(self, layer: int, k: torch.Tensor, v: torch.Tensor, n_head: int) -> None:
        """Stores a packed prompt's keys and values at positions [0, T). k, v: (B, T, C) slices of the qkv."""
        T = k.shape[1]
        if T > self.max_length:
            raise ValueError(f"prompt of {T} tokens does not fit the KV cache of {self.max_length}")
        k_cache, v_cache = self.layers[layer]
        k_cache[:, :, :T].copy_(split_heads(k, n_head))  # (B, H, T, D)
        v_cache[:, :, :T].copy_(split_heads(v, n_head))


class CacheOutputMixin:
    """Gives a generate() output transformers' deprecated name `past_key_values` for its `cache` field."""

    @property
    def past_key_values(self):
        return self.cache
