"""Philox4x32-10 and the dropout mask of gpt_fast's kernels, in PyTorch: the oracle of csrc/philox.h.

The contract (csrc/philox.h says it the same way): an op call's 64-bit `seed` is the key (low, high 32 bits);
element n of the op's logical tensor (row-major linear index) takes word n % 4 of the Philox block whose counter is
(low 32 bits of n // 4, high 32 bits, 0, 0); it is kept when that word >= floor(p * 2^32), and a kept value is
scaled by 1 / (1 - p). Computed in int64 tensors (a 32 x 32-bit product wraps in int64 but keeps its low 64 bits,
so both halves come out exact), on any device.
"""

from __future__ import annotations

import torch

MUL = (0xD2511F53, 0xCD9E8D57)
WEYL = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10
MASK32 = 0xFFFFFFFF


def philox4x32_10(counter: tuple[torch.Tensor, ...], key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """The four output words (int64 tensors holding uint32 values) for counter words c0..c3 (int64 tensors of one
    shape holding uint32 values) under key (k0, k1)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_ in range(ROUNDS):
        if round_ > 0:
            k0, k1 = (k0 + WEYL[0]) & MASK32, (k1 + WEYL[1]) & MASK32
        p0 = c0 * MUL[0]  # exact low 64 bits of the 64-bit product
        p1 = c2 * MUL[1]
        c0, c1, c2, c3 = (((p1 >> 32) & MASK32) ^ c1 ^ k0, p1 & MASK32,
                          ((p0 >> 32) & MASK32) ^ c3 ^ k1, p0 & MASK32)
    return c0, c1, c2, c3


def seed_key(seed: int) -> tuple[int, int]:
    """The Philox key of a 64-bit seed (a Python int; negative values are taken modulo 2^64)."""
    seed &= (1 << 64) - 1
    return seed & MASK32, seed >> 32


def element_bits(seed: int, index: torch.Tensor) -> torch.Tensor:
    """The 32 random bits (int64 tensor of uint32 values) of each element index (int64 tensor, >= 0)."""
    block = index >> 2
    zeros = torch.zeros_like(block)
    words = torch.stack(philox4x32_10((block & MASK32, block >> 32, zeros, zeros), seed_key(seed)))  # (4, ...)
    return words.gather(0, (index & 3).unsqueeze(0)).squeeze(0)


def dropout_threshold(p: float) -> int:
    """floor(p * 2^32): an element is kept when its bits are >= this. p must lie in [0, 1)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
    return int(p * 4294967296.0)


def keep_mask(seed: int, shape, p: float, device=None) -> torch.Tensor:
    """(shape) bool: which elements of a row-major tensor of this shape the kernels keep under (seed, p)."""
    numel = 1
    for size in shape:
        numel *= int(size)
    index = torch.arange(numel, dtype=torch.int64, device=device).view(tuple(shape))
    return element_bits(seed, index) >= dropout_threshold(p)


def dropout(x: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """x with the kernels' mask applied: kept elements scaled by 1 / (1 - p), the others 0 (x's dtype)."""
    if p == 0.0:
        return x
    keep = keep_mask(seed, x.shape, p, device=x.device)
    return torch.where(keep, x * (1.0 / (1.0 - p)), torch.zeros((), dtype=x.dtype, device=x.device))


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A fresh 64-bit seed from torch's default CPU generator (or `generator`), so torch.manual_seed makes the
    kernels' masks reproducible."""
    return int(torch.randint(-(1 << 63), (1 << 63) - 1, (), dtype=torch.int64, generator=generator))
