"""Eager PyTorch reference for every gpt_fast op.

These functions are at once the fallback where a kernel is missing, the oracle the tests compare kernels with
(called on float32 copies of the inputs), and the baseline the benchmarks time. They use plain PyTorch
operations only and work in whatever dtype they are given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpt_fast.ops.layout import merge_heads, split_qkv


def add_layernorm(x, residual, bias, weight, ln_bias, eps: float):
    """layer_norm(x + residual [+ bias]) over the last dim. x, residual: (..., C); bias, weight, ln_bias: (C,)."""
    summed = x + residual if bias is None else x + residual + bias
    return F.layer_norm(summed, (x.shape[-1],), weight, ln_bias, eps)


def bias_gelu(x, bias):
    """gelu_tanh(x + bias); x: (..., N), bias: (N,)."""
    return F.gelu(x + bias, approximate="tanh")


def linear_small_m(x, weight, bias=None, residual=None, gelu: bool = False, in_out_layout: bool = True):
    """[gelu_tanh](x @ W + bias) [+ residual]: linear_small_m's result, computed from the unpacked weight.

    x: (..., K); weight: (K, N) if in_out_layout (Conv1D) else (N, K) (nn.Linear); bias: (N,) or None;
    residual: (..., N) or None.
    """
    w = weight if in_out_layout else weight.t()  # (K, N)
    out = x @ w if bias is None else torch.addmm(bias, x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[1])
    if gelu:
        out = F.gelu(out, approximate="tanh")
    return out if residual is None else out + residual


def pack_linear_weight(weight, in_out_layout: bool):
    """pack_linear_weight's layout: W (K, N) [(N, K) when not in_out_layout] -> (ceil(N / 16), K, 16); block b holds
    columns [16 b, 16 b + 16); the padding past N is -0.0 and W's own -0.0 become +0.0 (the sign marks padding)."""
    w = weight if in_out_layout else weight.t()  # (K, N)
    K, N = w.shape
    blocks = -(-N // 16)
    padded = torch.full((K, blocks * 16), -0.0, dtype=w.dtype, device=w.device)
    padded[:, :N] = w + 0.0  # -0.0 + 0.0 = +0.0
    return padded.view(K, blocks, 16).permute(1, 0, 2).contiguous()  # (NB, K, 16)


def _masked_softmax_attention(q, k, v, allowed):
    """q (B, H, S, D), k and v (B, H, L, D), allowed (B, 1 or H, S, L) bool. A row with nothing allowed gives 0;
    a NaN score among the allowed ones (a NaN or infinity in q or an allowed k) gives NaN, as PyTorch's math does."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, S, L)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)
    return probs @ v  # (B, H, S, D)


def flash_attention(qkv, key_padding_mask, n_head: int):
    """Causal self-attention on the packed c_attn output.

    qkv: (B, T, 3C); key_padding_mask: (B, T) bool (True = attend) or None. Returns (B, T, C).
    Query rows that may attend to no key give zeros.
    """
    B, T, C3 = qkv.shape
    q, k, v = split_qkv(qkv, n_head)  # (B, H, T, D) each
    allowed = torch.ones(T, T, dtype=torch.bool, device=qkv.device).tril()[None, None]  # (1, 1, T, T)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.bool()[:, None, None, :]  # (B, 1, T, T)
    return merge_heads(_masked_softmax_attention(q, k, v, allowed))


def decode_attention(qkv, k_cache, v_cache, cache_lengths, n_head: int):
    """Attention for S new tokens per row over a KV cache, writing the new keys and values into it.

    qkv: (B, S, 3C); k_cache, v_cache: (B, H, Tmax, D), updated in place at [len, len + S) for each row;
    cache_lengths: (B,) int64, tokens already cached per row. New token i of row b attends to [0, len_b + i].
    Returns (B, S, C).
    """
    B, S, C3 = qkv.shape
    Tmax = k_cache.shape[2]
    q, k, v = split_qkv(qkv, n_head)  # (B, H, S, D) each
    positions = cache_lengths.view(B, 1) + torch.arange(S, device=qkv.device)  # (B, S)
    if bool((positions >= Tmax).any()) or bool((cache_lengths < 0).any()):
        raise IndexError(f"decode_attention: cache positions {positions.tolist()} fall outside the cache of {Tmax}")
    rows = torch.arange(B, device=qkv.device).view(B, 1)
    k_cache.permute(0, 2, 1, 3)[rows, positions] = k.permute(0, 2, 1, 3).to(k_cache.dtype)
    v_cache.permute(0, 2, 1, 3)[rows, positions] = v.permute(0, 2, 1, 3).to(v_cache.dtype)
    key_index = torch.arange(Tmax, device=qkv.device)  # (Tmax,)
    allowed = key_index.view(1, 1, 1, Tmax) <= positions.view(B, 1, S, 1)  # (B, 1, S, Tmax)
    out = _masked_softmax_attention(q, k_cache.to(q.dtype), v_cache.to(q.dtype), allowed)
    return merge_heads(out)
