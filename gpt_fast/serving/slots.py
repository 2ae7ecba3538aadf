"""The engine's slot-based KV cache: one StaticKVCache of `max_batch` rows at the model's full context, where each
row (slot) holds one sequence with its own length; slots are lent to sequences and given back when they finish.

A decode step runs over the rows [0, hi) (hi = one past the highest slot in use): `rows(hi)` gives the cache view
IncrementalDecoder.step reads (lengths and per-layer keys / values, all views into the one cache, made once per hi).
Free slots are lent lowest first so that hi stays small. A free slot's length is 0, so the step's write for a row
that is not decoding lands in that row's own next position and never past the cache.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from gpt_fast.generation.kv_cache import StaticKVCache


@dataclass
class CacheRows:
    """rows [0, hi) of a StaticKVCache, in the shape IncrementalDecoder reads: lengths (hi,), layers [(k, v)] of
    (hi, H, Tmax, D) each."""

    lengths: torch.Tensor
    layers: list


class SlotCache:
    def __init__(self, config, max_batch: int, dtype: torch.dtype, device: torch.device):
        self.cache = StaticKVCache.for_model(config, max_batch, config.n_positions, dtype, device)
        self.max_batch = max_batch
        self.free = list(range(max_batch))  # a heap: lowest slot first
        self.views: dict[int, CacheRows] = {}

    @property
    def lengths(self) -> torch.Tensor:  # (max_batch,)
        return self.cache.lengths

    @property
    def layers(self) -> list:
        return self.cache.layers

    @property
    def max_length(self) -> int:
        return self.cache.max_length

    def in_use(self) -> int:
        return self.max_batch - len(self.free)

    def acquire(self) -> int | None:
        """The lowest free slot (its length 0), or None when all are taken."""
        return heapq.heappop(self.free) if self.free else None

    def release(self, slot: int) -> None:
        self.cache.lengths[slot] = 0
        heapq.heappush(self.free, slot)

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Slot target takes slot source's first `length` keys and values and that length (a shared prompt)."""
        for k_cache, v_cache in self.cache.layers:  # (B, H, Tmax, D)
            k_cache[target, :, :length].copy_(k_cache[source, :, :length])
            v_cache[target, :, :length].copy_(v_cache[source, :, :length])
        self.cache.lengths[target] = length

    def rows(self, hi: int) -> CacheRows:
        if hi not in self.views:
            self.views[hi] = CacheRows(self.cache.lengths[:hi], [(k[:hi], v[:hi]) for k, v in self.cache.layers])
        return self.views[hi]
