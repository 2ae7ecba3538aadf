"""Eager PyTorch reference for every gpt_fast op.

These functions are at once the fallback where a kernel is missing, the oracle the tests compare kernels with
(called on float32 copies of the inputs), and the baseline the benchmarks time. They use plain PyTorch
operations only and work in whatever dtype they are given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpt_fast.ops import philox
from gpt_fast.ops.layout import merge_heads, split_qkv


def add_layernorm(x, residual, bias, weight, ln_bias, eps: float, dropout_p: float = 0.0, seed: int = 0):
    """layer_norm(x + dropout(residual [+ bias])) over the last dim. x, residual: (..., C); bias, weight, ln_bias:
    (C,). The dropout is the kernels' Philox mask under seed (gpt_fast.ops.philox, element n = row * C + col)."""
    if dropout_p == 0.0:
        summed = x + residual if bias is None else x + residual + bias
    else:
        summed = x + philox.dropout(residual if bias is None else residual + bias, seed, dropout_p)
    return F.layer_norm(summed, (x.shape[-1],), weight, ln_bias, eps)


def add_layernorm_backward(grad_out, x, residual, bias, weight, eps: float, dropout_p: float = 0.0, seed: int = 0):
    """add_layernorm's (grad_v, grad_weight, grad_ln_bias, grad_residual): autograd of the reference add_layernorm,
    v = x + dropout(residual [+ bias]). grad_v is x's gradient; grad_residual residual's (summed over rows:
    bias's), or empty (0,) when dropout_p is 0 (grad_v is residual's then)."""
    with torch.enable_grad():
        x_, w_ = x.detach().requires_grad_(True), weight.detach().requires_grad_(True)
        r_ = residual.detach().requires_grad_(True)
        ln_bias = torch.zeros_like(w_, requires_grad=True)  # its value does not enter any gradient
        out = add_layernorm(x_, r_, None if bias is None else bias.detach(), w_, ln_bias, eps, dropout_p, seed)
        grad_v, grad_w, grad_b, grad_r = torch.autograd.grad(out, (x_, w_, ln_bias, r_), grad_out)
    return grad_v, grad_w, grad_b, (grad_r if dropout_p != 0.0 else grad_r.new_empty(0))


def bias_gelu(x, bias):
    """gelu_tanh(x + bias); x: (..., N), bias: (N,)."""
    return F.gelu(x + bias, approximate="tanh")


def bias_gelu_backward(grad_out, x, bias):
    """bias_gelu's grad_x: autograd of the reference bias_gelu. grad_out, x: (..., N); bias: (N,)."""
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        (grad_x,) = torch.autograd.grad(bias_gelu(x_, bias.detach()), x_, grad_out)
    return grad_x


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


def flash_attention_train(qkv, key_padding_mask, n_head: int, dropout_p: float, seed: int):
    """flash_attention for training: (out (B, T, C), lse (B, H, T) float32), lse the log-sum-exp of each row's
    scaled scores over the keys it attends, in base 2 (log2 sum_j exp(s_ij) = logsumexp / ln 2; -inf when none).
    Dropout: the probabilities (B, H, T, T) times gpt_fast.ops.philox's mask under (seed, dropout_p), scaled by
    1 / (1 - dropout_p): the kernels' exact mask."""
    B, T, C3 = qkv.shape
    q, k, v = split_qkv(qkv, n_head)  # (B, H, T, D) each
    allowed = torch.ones(T, T, dtype=torch.bool, device=qkv.device).tril()[None, None]  # (1, 1, T, T)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.bool()[:, None, None, :]  # (B, 1, T, T)
    scores = ((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
    lse = (torch.logsumexp(scores, dim=-1) * math.log2(math.e)).float()  # (B, H, T), base 2
    probs = torch.softmax(scores, dim=-1).masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)  # (B, H, T, T)
    if dropout_p > 0.0:
        probs = philox.dropout(probs, seed, dropout_p)
    return merge_heads(probs @ v), lse


def flash_attention_backward(grad_out, qkv, out, lse, key_padding_mask, n_head: int, dropout_p: float, seed: int):
    """flash_attention_backward's grad_qkv (B, T, 3C): autograd of the reference flash_attention_train's out (out and
    lse are the saved forward results, which the reference recomputes)."""
    with torch.enable_grad():
        qkv_ = qkv.detach().requires_grad_(True)
        result, _ = flash_attention_train(qkv_, key_padding_mask, n_head, dropout_p, seed)
        (grad_qkv,) = torch.autograd.grad(result, qkv_, grad_out)
    return grad_qkv


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


# Weight-only quantization (issue 15). The logical format, which checkpoints store and every kernel reads through
# its own packing, for a weight W of shape (N, K) = (out_features, in_features):
#   bits=8: qweight int8 (N, K); scales float32 (N, 1); zeros None.      W[n, k] = qweight[n, k] * scales[n, 0]
#           symmetric per output channel: scale = max|W[n, :]| / 127, q = round(W / scale) in [-127, 127].
#   bits=4: qweight uint8 (N, K // 2), k = 2j in the low nibble of byte j and k = 2j + 1 in the high one;
#           scales, zeros bfloat16 (N, K // G) for groups of G consecutive k (G divides K; 32 or 64 in practice).
#                                                                         W[n, k] = q[n, k] * scales[n, g] + zeros[n, g]
#           asymmetric round-to-nearest: zero = bf16(min of the group), scale = bf16((max - zero) / 15),
#           q = round((W - zero) / scale) clamped to [0, 15] (a constant group has scale 0 and q = 0).
QUANTIZATION_BITS = (8, 4)


def quantize_linear_weight(weight, bits: int, group_size: int | None = None, in_out_layout: bool = False):
    """W (N, K) [(K, N) when in_out_layout, transformers' Conv1D] -> (qweight, scales, zeros) as described above.
    group_size is ignored for bits=8 (one scale per output channel) and required for bits=4."""
    w = (weight.t() if in_out_layout else weight).detach().to(torch.float32)  # (N, K)
    N, K = w.shape
    if bits == 8:
        scales = (w.abs().amax(dim=1, keepdim=True) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)  # (N, 1)
        q = torch.round(w / scales).clamp_(-127, 127).to(torch.int8)
        return q.contiguous(), scales.contiguous(), None
    if bits != 4:
        raise ValueError(f"quantize_linear_weight: bits must be one of {QUANTIZATION_BITS}, got {bits}")
    if not group_size or group_size <= 0 or K % group_size or group_size % 2:
        raise ValueError(f"quantize_linear_weight: bits=4 needs an even group_size dividing in_features={K}, "
                         f"got {group_size}")
    groups = w.view(N, K // group_size, group_size)  # (N, G, group)
    zeros = groups.amin(dim=2).to(torch.bfloat16)  # (N, G)
    scales = ((groups.amax(dim=2) - zeros.float()) / 15.0).to(torch.bfloat16)  # (N, G)
    safe = torch.where(scales == 0, torch.ones_like(scales), scales).float()
    q = torch.round((groups - zeros.float()[..., None]) / safe[..., None]).clamp_(0, 15).to(torch.uint8)
    q = q.view(N, K // 2, 2)
    packed = q[..., 0] | (q[..., 1] << 4)  # (N, K // 2)
    return packed.contiguous(), scales.contiguous(), zeros.contiguous()


def dequantize_linear_weight(qweight, scales, zeros, bits: int, group_size: int | None = None,
                             dtype: torch.dtype = torch.float32):
    """The (N, K) weight that (qweight, scales, zeros) stands for (quantize_linear_weight's format): q * scale
    [+ zero] in float32, then rounded to dtype. Also gpt_fast::dequantize_linear_weight's reference."""
    if bits == 8:
        return (qweight.to(torch.float32) * scales.to(torch.float32)).to(dtype)
    N, half = qweight.shape
    q = torch.stack([qweight & 0xF, qweight >> 4], dim=-1).view(N, 2 * half).to(torch.float32)  # (N, K)
    expand = lambda t: t.to(torch.float32).repeat_interleave(group_size, dim=1)  # noqa: E731  (N, G) -> (N, K)
    return (q * expand(scales) + expand(zeros)).to(dtype)


def round_activations(x, group_size: int):
    """x (..., K) as float32 with each group of group_size consecutive k rounded to int8 by its own scale
    s = max |x| / 127 (float32): q = round half to even (x / s) in [-127, 127], x replaced by q * s. An all-zero
    group stays 0; a group holding a NaN or an infinity becomes NaN. linear_quantized's x_bits=8 (int4 or int8
    weights with int8 activations: the kernels then multiply bytes, csrc/cpu/int4_tile_vnni.h, int8_tile_vnni.h)."""
    xf = x.to(torch.float32)
    groups = xf.reshape(-1, group_size)  # (M K / G, G)
    scale = groups.abs().amax(dim=1, keepdim=True) / 127.0  # (M K / G, 1)
    scale = torch.where(torch.isfinite(scale), scale, torch.nan)
    # q * scale below is 0 for an all-zero group and NaN for a NaN scale whatever q is there (q is finite: clamped)
    q = torch.round(groups / torch.where(scale > 0, scale, 1.0)).clamp_(-127, 127)
    return q.mul_(scale).reshape(xf.shape)


def linear_quantized(x, qweight, scales, zeros, bits: int, group_size: int | None = None, bias=None, residual=None,
                     gelu: bool = False, x_bits: int = 0):
    """[gelu_tanh](x @ dequantize(W).T + bias) [+ residual]: the quantized linear layer's result in x's dtype,
    computed in float32 from the dequantized weight. x: (..., K); bias: (N,) or None; residual: (..., N) or None.
    x_bits=8: x rounded by round_activations per group of group_size first (bits=8: x's group alone)."""
    w = dequantize_linear_weight(qweight, scales, zeros, bits, group_size)  # (N, K)
    out = (round_activations(x, group_size) if x_bits == 8 else x.to(torch.float32)) @ w.t()
    if bias is not None:
        out = out + bias.to(torch.float32)
    if gelu:
        out = F.gelu(out, approximate="tanh")
    if residual is not None:
        out = out + residual.to(torch.float32)
    return out.to(x.dtype)


def pack_quantized_weight(qweight, scales, zeros, bits: int, group_size: int | None = None):
    """The byte layout gpt_fast::pack_quantized_weight makes (csrc/cpu/quantized_layout.h), built with plain tensor
    ops: columns in blocks of 16, each block one uint8 stream.
    bits=8: (ceil(N/16), K + 4, 16): K rows of 16 int8 weights (one per column), then the 16 float32 scales.
    bits=4: (ceil(N/16), K/G, 8 G + 64): per group G/2 rows of 16 bytes (byte j = column j's k pair, low nibble first),
    then the group's 16 bfloat16 scales and 16 bfloat16 zeros. Columns past N: q = 0, scale 0, and -0.0 as the int8
    scale / the int4 zeros (the marker linear_quantized checks out_features against; the weight's own -0.0 there
    become +0.0)."""
    N = qweight.shape[0]
    NB = -(-N // 16)

    def padded(t, value):  # (N, C) -> (16 NB, C), rows past N = value
        out = torch.full((16 * NB, t.shape[1]), value, dtype=t.dtype, device=t.device)
        out[:N] = t
        return out

    if bits == 8:
        K = qweight.shape[1]
        q = padded(qweight, 0).view(NB, 16, K).transpose(1, 2).contiguous().view(torch.uint8)  # (NB, K, 16)
        s = padded(scales + 0.0, -0.0).reshape(NB, 16).contiguous().view(torch.uint8).view(NB, 4, 16)
        return torch.cat([q, s], dim=1)
    G = group_size
    groups = 2 * qweight.shape[1] // G
    q = padded(qweight, 0).view(NB, 16, groups, G // 2).permute(0, 2, 3, 1).reshape(NB, groups, 8 * G)

    def per_group(t, value):  # (N, groups) bf16 -> (NB, groups, 32) bytes
        return padded(t, value).view(NB, 16, groups).transpose(1, 2).contiguous().view(torch.uint8)

    return torch.cat([q, per_group(scales, 0.0), per_group(zeros + 0.0, -0.0)], dim=2)


def dequantize_packed_weight(packed, out_features: int, bits: int, group_size: int | None = None):
    """The float32 (N, K) weight a pack_quantized_weight result stands for (its inverse, then dequantized)."""
    NB, rows, width = packed.shape
    if bits == 8:
        K = rows - 4
        q = packed[:, :K].contiguous().view(torch.int8).transpose(1, 2).reshape(16 * NB, K)  # (16 NB, K)
        s = packed[:, K:].contiguous().view(torch.float32).reshape(16 * NB, 1)
        return (q.to(torch.float32) * s)[:out_features]
    G, groups = group_size, rows
    q = packed[..., :8 * G].reshape(NB, groups, G // 2, 16)  # byte (b, g, p, j)
    q = torch.stack([q & 0xF, q >> 4], dim=3).permute(0, 4, 1, 2, 3).reshape(16 * NB, groups * G)  # (16 NB, K)
    tail = packed[..., 8 * G:].contiguous().view(torch.bfloat16).view(NB, groups, 2, 16)  # (b, g, scale|zero, j)
    s, z = (tail[:, :, i].permute(0, 2, 1).reshape(16 * NB, groups).to(torch.float32).repeat_interleave(G, dim=1)
            for i in range(2))
    return (q.to(torch.float32) * s + z)[:out_features]
