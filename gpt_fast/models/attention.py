"""Causal self-attention backends on the packed c_attn output, and the choice between them.

- "eager": transformers' reference math (scores, -1e4 causal masking, additive padding mask, softmax, dropout,
  head mask); the only backend that can return the attention probabilities.
- "sdpa":  torch.nn.functional.scaled_dot_product_attention.
- "fused": gpt_fast's flash-attention kernels (gpt_fast::flash_attention; in training gpt_fast::flash_attention_train
  with dropout inside the kernel and gpt_fast::flash_attention_backward in autograd).

NaN or infinity in a query, or in a key a row attends, makes that row NaN on every backend (the fused kernels of
both "sdpa" and "fused" drop NaN scores; ops/flash_attention.py: propagate_nonfinite marks the rows after them).

Fully masked query rows (with left padding, a padding position whose causal window holds only padded keys) come
out as transformers' masks make them on every backend: the eager math adds -1e4 to causally masked scores and
dtype.min to padded ones, so such a row's softmax is uniform over the keys that are not padded (all after it), or,
in a sequence with no real token at all, over every key. The kernels of "sdpa" and "fused" see such a row as
attending nothing; `fill_fully_masked_rows` sets it after them (`after_kernel`: one place for both backends, CPU
and CUDA, forward and backward).

Which one runs is the KernelPlan's `attention` (gpt_fast/ops/kernel_plan.py), decided once per forward, and for
"fused" in training its `attention_train` (whether flash_attention_train exists for the device and dtype).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpt_fast.ops import philox
from gpt_fast.ops.flash_attention import propagate_nonfinite
from gpt_fast.ops.kernel_plan import KernelPlan
from gpt_fast.ops.layout import merge_heads, split_qkv


def padding_to_additive(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 mask -> (B, 1, 1, T) additive mask: 0 where attended, dtype's minimum where padded."""
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def eager_attention(qkv, attention_mask, n_head: int, dropout_p: float, head_mask=None):
    """transformers' math. qkv: (B, T, 3C); attention_mask: (B, T) 1/0 or None; head_mask: (H,) or None.

    Returns (out (B, T, C), probs (B, H, T, T)).
    """
    T = qkv.shape[1]
    q, k, v = split_qkv(qkv, n_head)  # (B, H, T, D) each
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(v.shape[-1])  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=scores.dtype, device=scores.device).tril()
    scores = scores * causal + -1e4 * (1 - causal)
    if attention_mask is not None:
        scores = scores + padding_to_additive(attention_mask, scores.dtype)
    probs = torch.softmax(scores, dim=-1)
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
    if head_mask is not None:
        probs = probs * head_mask.view(1, -1, 1, 1).to(probs.dtype)
    return merge_heads(probs @ v), probs


def sdpa_attention(qkv, attention_mask, n_head: int, dropout_p: float):
    """torch SDPA. qkv: (B, T, 3C); attention_mask: (B, T) 1/0 or None. Returns (B, T, C)."""
    T = qkv.shape[1]
    q, k, v = split_qkv(qkv, n_head)  # (B, H, T, D) each
    if attention_mask is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    else:
        causal = torch.ones(T, T, dtype=torch.bool, device=qkv.device).tril()  # (T, T)
        padding = padding_to_additive(attention_mask, q.dtype)  # (B, 1, 1, T)
        bias = padding.masked_fill(~causal, float("-inf"))  # (B, 1, T, T); the diagonal is always finite
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    return after_kernel(merge_heads(out), qkv, attention_mask, n_head)


def fill_fully_masked_rows(out, qkv, attention_mask):
    """out (B, T, C) from a kernel, with each query row that may attend no key (attention_mask (B, T) 1/0: no 1 in
    [0, i]) replaced by transformers' value there: the mean of v over the row's unpadded keys, or over all keys
    when the sequence has none (float32 and bfloat16 exactly so; in float16 transformers' -1e4 + dtype.min
    overflows to -inf and an all-padding sequence's rows depend on its scores). O(B T C) ATen ops, no host
    synchronisation; differentiable (no gradient reaches out at those rows, as none reaches q and k there).
    """
    C = qkv.shape[-1] // 3
    mask = attention_mask.bool()  # (B, T)
    empty = ~mask.cumsum(dim=1, dtype=torch.int32).bool()  # (B, T): no attended key at or before the row
    keys = mask | ~mask.any(dim=1, keepdim=True)  # (B, T): the unpadded keys, or all of them
    weights = keys.to(out.dtype) / keys.sum(dim=1, keepdim=True).to(out.dtype)  # (B, T): uniform over keys
    fill = torch.bmm(weights[:, None, :], qkv[..., 2 * C:])  # (B, 1, C): weights (B, 1, T) @ v (B, T, C)
    return torch.where(empty[..., None], fill, out)


def after_kernel(out, qkv, attention_mask, n_head: int):
    """What the "sdpa" and "fused" backends do after their kernel (out (B, T, C)): fully masked rows as
    transformers gives them, then NaN in the rows whose query or attended key is not finite (the kernels drop NaN
    scores; a fully masked row keeps the NaN of its own query)."""
    if attention_mask is not None:
        out = fill_fully_masked_rows(out, qkv, attention_mask)
    return propagate_nonfinite(out, qkv, attention_mask, n_head)


def fused_attention(qkv, attention_mask, n_head: int, dropout_p: float = 0.0, train_kernel: bool = False):
    """gpt_fast's kernel. qkv: (B, T, 3C); attention_mask: (B, T) 1/0 or None. Returns (B, T, C).

    With dropout (dropout_p > 0), or when gradients reach qkv, the training kernel gpt_fast::flash_attention_train
    runs where it exists for the device (train_kernel: the KernelPlan's attention_train): dropout on the
    probabilities inside the kernel (a fresh seed from torch's generator per call: gpt_fast.ops.philox.draw_seed) and
    the backward kernel in autograd. Otherwise the inference kernel (its autograd is the eager reference's)."""
    key_padding_mask = None if attention_mask is None else attention_mask.bool()
    train = dropout_p > 0.0 or (torch.is_grad_enabled() and qkv.requires_grad)
    if train and train_kernel:
        seed = philox.draw_seed() if dropout_p > 0.0 else 0
        out, _ = torch.ops.gpt_fast.flash_attention_train(qkv, key_padding_mask, n_head, float(dropout_p), seed)
    elif dropout_p > 0.0:  # no training kernel for this device (the KernelPlan does not pick "fused" then)
        return sdpa_attention(qkv, attention_mask, n_head, dropout_p)
    else:
        out = torch.ops.gpt_fast.flash_attention(qkv, key_padding_mask, n_head)
    return after_kernel(out, qkv, attention_mask, n_head)


def backend_attention(plan: KernelPlan, qkv, attention_mask, n_head: int, dropout_p: float = 0.0):
    """The plan's attention backend's output (B, T, C) for qkv (B, T, 3C); attention_mask: (B, T) 1/0 or None."""
    if plan.attention == "eager":
        return eager_attention(qkv, attention_mask, n_head, dropout_p)[0]
    if plan.attention == "fused":
        return fused_attention(qkv, attention_mask, n_head, dropout_p, plan.attention_train)
    return sdpa_attention(qkv, attention_mask, n_head, dropout_p)
