"""What activation checkpointing keeps of a Block instead of recomputing it: the attention kernels' outputs.

A checkpointed Block runs its forward a second time in the backward pass. Attention is the costliest part of that
recompute for its size: O(B H T^2 D) work whose results (out (B, T, C) and the log-sum-exp (B, H, T)) are a few
MiB. keep_attention_outputs() is a `context_fn` for torch.utils.checkpoint (non-reentrant) that keeps exactly those
results, through PyTorch's selective activation checkpointing, and recomputes everything else (the GEMMs,
layernorms, GELU, dropout), as PyTorch's own training recipes keep their flash-attention outputs.

For GPT-1 at B=4, T=256 that is 19 MB across the 12 blocks; on a 2-core Sapphire Rapids the checkpointed bf16
step went from 1.28x to 1.23x the plain step's time (docs/training.md; benchmarks/bench_train_step.py). The
dropout inside the attention kernel stays the same: its seed is drawn outside the kernel, again in the recompute
from the same restored generator, and the backward regenerates the mask from it.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import create_selective_checkpoint_contexts

from gpt_fast.ops._library import extension_loaded


@functools.cache
def attention_kernels() -> tuple:
    """The attention ops whose outputs a checkpointed Block keeps: gpt_fast's training kernel, and the fused kernels
    that torch's scaled_dot_product_attention dispatches to on the CPU and on CUDA. (Eager attention's ops, and
    sdpa's math fallback, are recomputed: the probabilities are (B, H, T, T).)"""
    kernels = [torch.ops.gpt_fast.flash_attention_train.default] if extension_loaded() else []
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"):
        if hasattr(torch.ops.aten, name):
            kernels.append(getattr(torch.ops.aten, name).default)
    return tuple(kernels)


def keep_attention_outputs():
    """A context_fn for torch.utils.checkpoint.checkpoint(use_reentrant=False): the attention kernels' outputs
    are saved in the forward and reused by the recompute; every other op is recomputed."""
    return create_selective_checkpoint_contexts(list(attention_kernels()))
