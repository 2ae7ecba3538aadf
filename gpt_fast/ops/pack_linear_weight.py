"""gpt_fast::pack_linear_weight: a linear layer's weight repacked once for linear_small_m.

W of logical shape (K, N) = (in_features, out_features) becomes a contiguous (ceil(N / 16), K, 16) tensor of W's
dtype: block b holds columns [16 b, 16 b + 16) for every k, the padding past N is -0.0 and W's own -0.0 become +0.0,
so linear_small_m can check the N it is given (see csrc/cpu/linear_layout.h; reference.pack_linear_weight builds
the same layout in PyTorch).
"""

from __future__ import annotations

import torch

from gpt_fast.ops._library import extension_loaded

BLOCK_N = 16  # output columns per packed block


def packed_shape(in_features: int, out_features: int) -> tuple[int, int, int]:
    """Shape of pack_linear_weight's result for a (K, N) = (in_features, out_features) layer."""
    return (-(-out_features // BLOCK_N), in_features, BLOCK_N)


if extension_loaded():

    @torch.library.register_fake("gpt_fast::pack_linear_weight")
    def _(weight, in_out_layout):
        torch._check(weight.dim() == 2, lambda: "pack_linear_weight: weight must be 2-D")
        K, N = weight.shape if in_out_layout else (weight.shape[1], weight.shape[0])
        return weight.new_empty(packed_shape(K, N))


def pack_linear_weight(weight: torch.Tensor, in_out_layout: bool) -> torch.Tensor:
    """Repack once at load time. weight: (K, N) if in_out_layout (transformers' Conv1D: c_attn, c_proj, c_fc),
    else (N, K) (nn.Linear; the tied LM head, i.e. the (vocab, C) token embedding). Returns (ceil(N/16), K, 16)."""
    return torch.ops.gpt_fast.pack_linear_weight(weight, in_out_layout)
