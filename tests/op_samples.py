"""One `sample_inputs(op, dtype, device)` per gpt_fast op, feeding every test that runs an op: the CPU accuracy
matrix over kernel tiers (tests/test_op_matrix.py), opcheck, and the CUDA tests (tests/test_cuda_ops.py).

Each Sample holds the arguments of torch.ops.gpt_fast.<op> (for linear_small_m, of the reference: the unpacked
weight, which `op_arguments` packs). Shapes are the awkward ones: 1, 7, 97, 511, 513 rows or tokens, odd widths
and head counts, padded rows (fully padded ones included), empty and long caches.
`check_sample(op, sample)` runs the op and compares it with the eager reference on upcast copies, bounded by a
small multiple of PyTorch's own error in the op's dtype (tests/accuracy.py); in-place cache writes are compared
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accuracy import assert_within_pytorch_error, pytorch_one_thread, upcast

from gpt_fast.ops import reference


@dataclass
class Sample:
    name: str
    args: tuple  # the reference's arguments, tensors on the sample's device

    def __repr__(self) -> str:
        return self.name


def _gen(seed: int):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, dtype, device, scale=1.0, shift=0.0):
        return (shift + scale * torch.randn(*shape, generator=g)).to(dtype).to(device)

    return g, randn


def padding_mask(kind: str, B: int, T: int, g: torch.Generator) -> torch.Tensor | None:
    """(B, T) bool key padding mask, True = attend; row 0 of "left"/"right" is fully padded when B > 1."""
    if kind == "none":
        return None
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    if B > 1:
        lengths[0] = 0
    pos = torch.arange(T)
    if kind == "left":
        return pos[None, :] >= (T - lengths)[:, None]
    if kind == "right":
        return pos[None, :] < lengths[:, None]
    return torch.rand(B, T, generator=g) > 0.3  # "random": holes anywhere


def _add_layernorm(dtype, device):
    # (rows, C, bias, mean, dropout_p, seed); the dropout samples pass (dropout_p, seed), the others the defaults
    cases = [(1, 768, True, 0.0, 0, 0), (7, 48, False, 0.0, 0, 0), (97, 80, True, 0.0, 0, 0), (3, 1, True, 0.0, 0, 0),
             (5, 3000, False, 0.0, 0, 0), (513, 768, True, 0.0, 0, 0),
             (4, 768, True, 300.0, 0, 0),  # large mean, small spread
             (1, 768, True, 0.0, 0.1, 17), (7, 7, True, 0.0, 0.5, -1), (97, 769, False, 0.0, 0.1, 2**63 - 1),
             (2, 1, True, 0.0, 0.3, 5), (513, 768, True, 0.0, 0.1, -(2**63)), (4, 97, True, 300.0, 0.9, 2**32)]
    for i, (rows, C, with_bias, shift, p, seed) in enumerate(cases):
        g, randn = _gen(i)
        x, res = randn(rows, C, dtype=dtype, device=device, shift=shift), randn(rows, C, dtype=dtype, device=device)
        bias = randn(C, dtype=dtype, device=device) if with_bias else None
        weight = randn(C, dtype=dtype, device=device, scale=0.1, shift=1.0)
        args = (x, res, bias, weight, randn(C, dtype=dtype, device=device), 1e-5) + ((p, seed) if p else ())
        yield Sample(f"rows{rows}-C{C}-bias{int(with_bias)}-mean{shift:g}" + (f"-p{p:g}-seed{seed}" if p else ""),
                     args)


def _bias_gelu(dtype, device):
    for i, shape in enumerate([(1, 1), (2, 13), (7, 48), (16, 80), (97, 768), (513, 40), (3, 3072), (3, 5, 24)]):
        g, randn = _gen(i)
        yield Sample("x".join(map(str, shape)), (randn(*shape, dtype=dtype, device=device, scale=3.0),
                                                  randn(shape[-1], dtype=dtype, device=device)))
    # non-finite inputs in full vectors and in row tails: gelu(-inf) is NaN (-inf * 0), gelu(inf) inf, NaN stays
    _, randn = _gen(99)
    x, bias = randn(3, 37, dtype=torch.float32, device="cpu", scale=3.0), randn(37, dtype=torch.float32, device="cpu")
    inf, nan = float("inf"), float("nan")
    x[0, 0], x[0, 20], x[1, 36], x[2, 5], x[2, 17], x[2, 33], x[0, 30] = -inf, inf, -inf, nan, -inf, inf, inf
    bias[30] = -inf  # column 30: -inf everywhere, and inf + -inf = NaN in row 0
    yield Sample("3x37-nonfinite", (x.to(dtype).to(device), bias.to(dtype).to(device)))


# --- backward ops (issue 13): the forward's samples plus a gradient of the output ---
def _bias_gelu_backward(dtype, device):
    for i, sample in enumerate(_bias_gelu(dtype, device)):
        x, bias = sample.args
        _, randn = _gen(200 + i)
        yield Sample(sample.name, (randn(*x.shape, dtype=dtype, device=device), x, bias))


def _add_layernorm_backward(dtype, device):
    for i, sample in enumerate(_add_layernorm(dtype, device)):
        x, res, bias, weight, _, eps, *dropout = sample.args  # dropout: () or (dropout_p, seed)
        _, randn = _gen(300 + i)
        yield Sample(sample.name, (randn(*x.shape, dtype=dtype, device=device), x, res, bias, weight, eps, *dropout))
def _flash_attention_backward(dtype, device):
    """flash_attention_train's samples plus a gradient of out; out and lse from the device's own forward kernel, as
    autograd passes them (the backward recomputes the forward's exact exponents from its lse: T = 1 gives P = 1
    exactly)."""
    for i, sample in enumerate(_flash_attention_train(dtype, device)):
        qkv, mask, H, p, seed = sample.args
        _, randn = _gen(400 + i)
        out, lse = torch.ops.gpt_fast.flash_attention_train(qkv, mask, H, p, seed)
        yield Sample(sample.name, (randn(*out.shape, dtype=dtype, device=device), qkv, out, lse, mask, H, p, seed))
# --- end of backward ops ---


def _flash_attention_train(dtype, device):
    """flash_attention's shapes with dropout (the reference applies the kernels' exact mask) and without."""
    cases = [(1, 1, 3, 48, "none", 0.0), (3, 7, 3, 64, "left", 0.1), (1, 97, 12, 80, "random", 0.1),
             (3, 65, 3, 24, "right", 0.0), (2, 130, 3, 3, "left", 0.1), (1, 257, 2, 64, "none", 0.5)]
    for i, (B, T, H, D, mask, p) in enumerate(cases):
        g, randn = _gen(i)
        qkv = randn(B, T, 3 * H * D, dtype=dtype, device=device)  # (B, T, 3C)
        key_mask = padding_mask(mask, B, T, g)
        yield Sample(f"B{B}-T{T}-H{H}-D{D}-{mask}-p{p}",
                     (qkv, None if key_mask is None else key_mask.to(device), H, p, 1000 + i))


def _flash_attention(dtype, device):
    cases = [(1, 1, 3, 48, "none"), (3, 1, 12, 64, "left"), (3, 7, 3, 64, "left"), (1, 7, 12, 80, "random"),
             (1, 97, 12, 80, "right"), (3, 97, 3, 48, "random"), (3, 511, 3, 64, "left"), (1, 512, 12, 64, "none"),
             (3, 513, 3, 48, "right"), (1, 513, 3, 80, "random")]
    for i, (B, T, H, D, mask) in enumerate(cases):
        g, randn = _gen(i)
        qkv = randn(B, T, 3 * H * D, dtype=dtype, device=device)  # (B, T, 3C)
        key_mask = padding_mask(mask, B, T, g)
        yield Sample(f"B{B}-T{T}-H{H}-D{D}-{mask}", (qkv, None if key_mask is None else key_mask.to(device), H))


def _decode_attention(dtype, device):
    cases = [(1, 1, 12, 64, 512, [0]), (1, 1, 12, 64, 512, [128]), (1, 1, 12, 64, 512, [511]),
             (3, 1, 3, 48, 600, [0, 97, 513]), (3, 3, 3, 80, 520, [7, 517, 0]), (3, 3, 12, 64, 520, [511, 1, 300]),
             (1, 3, 3, 64, 1100, [1000]), (1, 1, 1, 48, 4096, [4000]),
             (8, 1, 12, 64, 600, [128, 0, 512, 5, 97, 300, 511, 1])]
    for i, (B, S, H, D, Tmax, lengths) in enumerate(cases):
        g, randn = _gen(i)
        qkv = randn(B, S, 3 * H * D, dtype=dtype, device=device)  # (B, S, 3C)
        caches = [randn(B, H, Tmax, D, dtype=dtype, device=device) for _ in range(2)]  # (B, H, Tmax, D) each
        yield Sample(f"B{B}-S{S}-H{H}-D{D}-Tmax{Tmax}-len{'_'.join(map(str, lengths))}",
                     (qkv, *caches, torch.tensor(lengths, device=device), H))
    yield from _decode_attention_nonfinite(dtype, device)


def _decode_attention_nonfinite(dtype, device):
    """NaN and inf in queries, cached keys and values. PyTorch's math: a NaN score or a +inf one makes the (token,
    head) NaN; a key whose score is -inf gets weight 0 (the row stays finite), a token whose scores are all -inf is
    NaN; NaN in keys the token does not attend changes nothing. The second case puts a whole split-K chunk (CPU:
    2 chunks of 301 keys with 2 threads) at -inf scores, and NaN in a later chunk."""
    inf, nan = float("inf"), float("nan")
    for i, (B, S, H, D, Tmax, lengths) in enumerate([(3, 2, 3, 64, 300, [150, 40, 0]),
                                                      (1, 1, 2, 48, 700, [600])]):
        _, randn = _gen(50 + i)
        qkv = randn(B, S, 3 * H * D, dtype=torch.float32, device="cpu")  # (B, S, 3C)
        k, v = (randn(B, H, Tmax, D, dtype=torch.float32, device="cpu") for _ in range(2))  # (B, H, Tmax, D)
        C = H * D
        q = qkv[..., :C].unflatten(-1, (H, D))  # (B, S, H, D), a view
        new_k = qkv[..., C:2 * C].unflatten(-1, (H, D))
        if i == 0:
            k[0, 1, 10, 3] = nan  # attended by both tokens of row 0: head 1 NaN
            k[0, 2, 200, :] = nan  # beyond the row's length: never attended
            q[1, 1, 0, 7] = nan  # row 1, token 1, head 0 only
            k[1, 2, 5, 0] = inf  # score +-inf: NaN or weight 0, by the sign of q
            k[1, 0, 7, :] = -inf * q[1, 0, 0].sign()  # token 0: score -inf, weight 0 (token 1: other sign mix)
            v[1, 1, 3, 9] = nan  # a value: NaN through P V
            new_k[2, 0, 0, :] = -inf * q[2, 0, 0].sign()  # row 2 token 0 attends only this key: all -inf, NaN
            q[2, 1, 2, 0] = inf
        else:
            k[0, 1, :320, :] = -inf * q[0, 0, 1].sign()  # a whole chunk (of 2 or 4) scores -inf: weight 0, finite
            k[0, 0, 500, 1] = nan  # in a later chunk
        yield Sample(f"B{B}-S{S}-H{H}-D{D}-Tmax{Tmax}-nonfinite",
                     (qkv.to(dtype).to(device), k.to(dtype).to(device), v.to(dtype).to(device),
                      torch.tensor(lengths, device=device), H))


def _linear_small_m(dtype, device):
    epilogues = [(True, False, False), (False, False, False), (True, True, False), (True, False, True),
                 (False, True, True)]  # (bias, gelu, residual)
    shapes = [(1, 768, 2304), (2, 48, 80), (7, 80, 13), (16, 768, 768), (97, 13, 1), (513, 40, 48), (3, 1, 17),
              (4, 64, 40), (20, 96, 33), (2, 33, 1000), (3, 65, 200),
              # continuous-batching decode: row counts around the kernel's row tiles of <= 8 (equal tiles: 13 = 7 + 6,
              # 17 = 6 + 6 + 5, 31 = 8 + 8 + 8 + 7), odd block counts (a block read alone) and odd K (bf16's last k)
              (5, 40, 35), (8, 130, 70), (13, 96, 50), (17, 129, 70), (31, 64, 100), (32, 256, 96),
              # more than 2 row tiles of 16 with K % 32 == 0: AMX keeps its converted weight tiles (amx_linear.h)
              (48, 96, 40)]
    for i, (rows, K, N) in enumerate(shapes):
        g, randn = _gen(i)
        with_bias, gelu, with_residual = epilogues[i % len(epilogues)]
        in_out = i % 2 == 0  # Conv1D (K, N) and nn.Linear (N, K) layouts
        x = randn(rows, K, dtype=dtype, device=device)
        weight = (torch.randn(K, N, generator=g) / K**0.5).to(dtype).to(device)
        weight = weight if in_out else weight.t().contiguous()
        bias = randn(N, dtype=dtype, device=device) if with_bias else None
        residual = randn(rows, N, dtype=dtype, device=device) if with_residual else None
        yield Sample(f"M{rows}-K{K}-N{N}-bias{int(with_bias)}-gelu{int(gelu)}-res{int(with_residual)}-"
                     f"{'conv1d' if in_out else 'linear'}", (x, weight, bias, residual, gelu, in_out))


def _pack_linear_weight(dtype, device):
    for i, (K, N, in_out) in enumerate([(768, 2304, True), (1, 1, True), (13, 17, False), (96, 40478, False)]):
        _, randn = _gen(i)
        yield Sample(f"K{K}-N{N}-{'conv1d' if in_out else 'linear'}",
                     (randn(*((K, N) if in_out else (N, K)), dtype=dtype, device=device), in_out))


# (rows, K, N, bits, group_size, x layout): GPT-1's shapes and awkward ones (N % 16 != 0, N = 1, groups of 2 k and
# groups longer than the kernels' 64-k inner sums, transposed and 3-D x)
_QUANTIZED = [(1, 768, 2304, 8, 0, "rows"), (1, 768, 2304, 4, 32, "rows"), (7, 64, 17, 4, 64, "t"),
              (97, 32, 3, 8, 0, "rows"), (16, 3072, 40, 4, 64, "rows"), (513, 64, 40, 8, 0, "3d"),
              (2, 64, 40478, 4, 32, "rows"), (5, 768, 1, 8, 0, "t"), (511, 32, 17, 4, 32, "rows"),
              (4, 768, 48, 4, 256, "3d"), (3, 6, 33, 4, 2, "rows"), (16, 3072, 17, 8, 0, "rows"),
              (8, 96, 65, 4, 32, "t"), (2, 40, 200, 8, 0, "3d"), (3, 67, 33, 8, 0, "t")]  # K % 4: a k tail
# x_bits=8 (int4 or int8 weights, x rounded to int8 per group): the VNNI tiles at 1, 3-4 and 5-8 rows, more rows
# (tiles of up to 8), group sizes 32, 64, 256 and 6 (G % 4 != 0: the fp32 tile on the rounded x);
# (rows, K, N, bits, group_size)
_QUANTIZED_A8 = [(1, 768, 2304, 4, 32), (4, 96, 33, 4, 32), (7, 3072, 40, 4, 64), (11, 64, 17, 4, 32),
                 (2, 768, 48, 4, 256), (3, 42, 20, 4, 6), (1, 768, 2304, 8, 32), (6, 96, 33, 8, 32),
                 (3, 3072, 40, 8, 64), (9, 64, 17, 8, 16), (2, 42, 20, 8, 6)]


def _quantized_weight(i, K, N, bits, group_size, device):
    """A random (N, K) weight quantized by the reference (one with an all-constant group and a -0.0 zero/scale)."""
    g = torch.Generator().manual_seed(100 + i)
    w = torch.randn(N, K, generator=g) / K**0.5
    w[0, : max(group_size, 1)] = 0.25  # a constant group: scale 0 (bits 4)
    qweight, scales, zeros = reference.quantize_linear_weight(w, bits, group_size or None)
    if bits == 4:
        zeros[-1, 0] = -0.0  # the weight's own -0.0 must not read as the padding marker
    return qweight.to(device), scales.to(device), None if zeros is None else zeros.to(device)


def _linear_quantized(dtype, device):
    epilogues = [(True, False, False), (False, False, False), (True, True, False), (True, False, True),
                 (False, True, True)]  # (bias, gelu, residual)
    for i, (rows, K, N, bits, group_size, layout) in enumerate(_QUANTIZED):
        g, randn = _gen(i)
        with_bias, gelu, with_residual = epilogues[i % len(epilogues)]
        lead = (rows // 2, 2) if layout == "3d" and rows % 2 == 0 else (rows,)
        x = randn(K, rows, dtype=dtype, device=device).t() if layout == "t" else randn(*lead, K, dtype=dtype,
                                                                                         device=device)
        bias = randn(N, dtype=dtype, device=device) if with_bias else None
        residual = randn(*x.shape[:-1], N, dtype=dtype, device=device) if with_residual else None
        qweight, scales, zeros = _quantized_weight(i, K, N, bits, group_size, device)
        yield Sample(f"M{rows}-K{K}-N{N}-int{bits}{f'-g{group_size}' if bits == 4 else ''}-{layout}-"
                     f"bias{int(with_bias)}-gelu{int(gelu)}-res{int(with_residual)}",
                     (x, qweight, scales, zeros, bits, group_size, bias, residual, gelu, 0))
    for i, (rows, K, N, bits, group_size) in enumerate(_QUANTIZED_A8, start=len(_QUANTIZED)):
        g, randn = _gen(i)
        with_bias, gelu, with_residual = epilogues[i % len(epilogues)]
        x = randn(rows, K, dtype=dtype, device=device)
        bias = randn(N, dtype=dtype, device=device) if with_bias else None
        residual = randn(rows, N, dtype=dtype, device=device) if with_residual else None
        qweight, scales, zeros = _quantized_weight(i, K, N, bits, group_size if bits == 4 else 0, device)
        yield Sample(f"M{rows}-K{K}-N{N}-int{bits}-g{group_size}-a8-bias{int(with_bias)}-gelu{int(gelu)}-"
                     f"res{int(with_residual)}", (x, qweight, scales, zeros, bits, group_size, bias, residual, gelu, 8))


def _pack_quantized_weight(dtype, device):
    """The weight alone (x's dtype does not matter)."""
    for i, (K, N, bits, group_size) in enumerate([(768, 2304, 8, 0), (64, 17, 4, 32), (6, 1, 4, 2),
                                                  (96, 40478, 8, 0), (128, 33, 4, 64)]):
        yield Sample(f"K{K}-N{N}-int{bits}-g{group_size}",
                     (*_quantized_weight(i, K, N, bits, group_size, device), bits, group_size))


def _dequantize_linear_weight(dtype, device):
    """(K, N, bits, group_size): GPT-1's layers, k tails of the 8-k steps (K % 8, groups of 2, 6, 12 k), one
    element; then special scales and zeros: infinities, NaN, values past float16's range and under its normal one."""
    cases = [(768, 3072, 8, 0), (768, 2304, 4, 32), (3072, 40, 4, 64), (67, 33, 8, 0), (513, 7, 8, 0), (1, 1, 8, 0),
             (6, 33, 4, 2), (42, 20, 4, 6), (96, 17, 4, 12), (40, 5, 4, 40)]
    for i, (K, N, bits, group_size) in enumerate(cases):
        yield Sample(f"K{K}-N{N}-int{bits}{f'-g{group_size}' if bits == 4 else ''}",
                     (*_quantized_weight(i, K, N, bits, group_size, device), bits, group_size, dtype))
    special = [float("inf"), float("-inf"), float("nan"), 1e30, 1e-30, 7e4, -0.0]
    for bits, group_size in ((8, 0), (4, 8)):
        qweight, scales, zeros = _quantized_weight(20 + bits, 16, len(special), bits, group_size, device)
        scales[:, 0] = torch.tensor(special, dtype=scales.dtype)
        if zeros is not None:
            zeros[:, 1] = torch.tensor(special[::-1], dtype=zeros.dtype)
        yield Sample(f"special-scales-int{bits}", (qweight, scales, zeros, bits, group_size, dtype))


def _round_activations(dtype, device):
    """(rows, K, group_size): int4-a8's groups of 32 / 64 at awkward row counts, groups of 6 and 1 and a whole row;
    then special groups: all zero, with a NaN, with an infinity, huge and tiny values, exact halves (ties)."""
    cases = [(1, 768, 32), (7, 3072, 64), (97, 96, 6), (513, 64, 32), (3, 40, 40), (2, 5, 1)]
    for i, (rows, K, group_size) in enumerate(cases):
        _, randn = _gen(200 + i)
        yield Sample(f"M{rows}-K{K}-g{group_size}", (randn(rows, K, dtype=dtype, device=device, scale=3.0), group_size))
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(7))
    x[0] = 0.0
    x[1, 3], x[2, 5], x[3, 7] = float("nan"), float("inf"), -float("inf")
    x[4] *= 1e4
    x[5] *= 1e-3
    x[6] = torch.arange(16) - 7.5  # max 8.5: s = 8.5 / 127; (k - 7.5) / s hits no tie, but the next row does
    x[7] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5] * 2)  # s = 1: q = x rounded half to even
    yield Sample("special", (x.to(dtype).to(device), 8))


def quantized_expected(args, dtype):
    """linear_quantized's reference in reference_dtype(dtype) (float64 for float32 x): the weight dequantized
    exactly in that dtype, then the matmul and epilogue in it too. x_bits=8: x rounded (in float32, as the op
    defines it: reference.round_activations) before the upcast."""
    x, qweight, scales, zeros, bits, group_size, bias, residual, gelu, x_bits = args
    target = torch.float64 if dtype == torch.float32 else torch.float32
    if bits == 8:
        w = qweight.to(target) * scales.to(target)
    else:
        N = qweight.shape[0]
        q = torch.stack([qweight & 0xF, qweight >> 4], dim=-1).view(N, -1).to(target)
        w = q * scales.to(target).repeat_interleave(group_size, 1) + zeros.to(target).repeat_interleave(group_size, 1)
    if x_bits == 8:
        x = reference.round_activations(x, group_size)
    x, bias, residual = upcast(x, bias, residual, dtype=dtype)
    return reference.linear_small_m(x, w, bias, residual, gelu, in_out_layout=False)


SAMPLES = {"add_layernorm": _add_layernorm, "bias_gelu": _bias_gelu, "flash_attention": _flash_attention,
           "decode_attention": _decode_attention, "linear_small_m": _linear_small_m,
           "pack_linear_weight": _pack_linear_weight,
           "bias_gelu_backward": _bias_gelu_backward, "add_layernorm_backward": _add_layernorm_backward,
           "linear_quantized": _linear_quantized, "pack_quantized_weight": _pack_quantized_weight,
           "flash_attention_train": _flash_attention_train, "flash_attention_backward": _flash_attention_backward,
           "dequantize_linear_weight": _dequantize_linear_weight, "round_activations": _round_activations}


def sample_inputs(op: str, dtype: torch.dtype, device: str = "cpu") -> list[Sample]:
    return list(SAMPLES[op](dtype, device))


def op_arguments(op: str, sample: Sample) -> tuple:
    """The arguments of torch.ops.gpt_fast.<op> for a sample (linear_small_m gets its weight packed)."""
    if op == "linear_quantized":
        x, qweight, scales, zeros, bits, group_size, bias, residual, gelu, x_bits = sample.args
        packed = torch.ops.gpt_fast.pack_quantized_weight(qweight, scales, zeros, bits, group_size)
        return x, packed, qweight.shape[0], bits, group_size, bias, residual, gelu, x_bits
    if op != "linear_small_m":
        return sample.args
    x, weight, bias, residual, gelu, in_out = sample.args
    N = weight.shape[1] if in_out else weight.shape[0]
    return x, torch.ops.gpt_fast.pack_linear_weight(weight, in_out), N, bias, residual, gelu


def _upcast(args, dtype):
    """Tensors upcast to the reference dtype (tests/accuracy.py); other arguments as they are."""
    return tuple(upcast(a, dtype=dtype)[0] if isinstance(a, torch.Tensor) else a for a in args)


def _cloned(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def check_sample(op: str, sample: Sample) -> None:
    """The kernel's result against the reference on upcast copies (and its cache writes, exactly)."""
    kernel = getattr(torch.ops.gpt_fast, op)
    fn = getattr(reference, op)
    args = sample.args
    dtype = args[0].dtype
    if op in ("pack_linear_weight", "pack_quantized_weight"):  # a pure layout change: exact
        torch.testing.assert_close(kernel(*args), fn(*args), rtol=0, atol=0)
        return
    if op in ("dequantize_linear_weight", "round_activations"):  # the reference's float32 arithmetic: exact
        torch.testing.assert_close(kernel(*args), fn(*args), rtol=0, atol=0, equal_nan=True)
        return
    same_dtype_args = _cloned(args)
    same_dtype = pytorch_one_thread(fn, *same_dtype_args)  # decode_attention: also PyTorch's cache update
    # linear_quantized's reference dequantizes in float32; the oracle dequantizes exactly in the upcast dtype
    expected = quantized_expected(args, dtype) if op == "linear_quantized" else fn(*_upcast(args, dtype))
    op_args = _cloned(op_arguments(op, sample))
    actual = kernel(*op_args)
    if isinstance(actual, tuple):  # backward ops: one gradient per output, each within the rule
        for i, (a, e, s) in enumerate(zip(actual, expected, same_dtype, strict=True)):
            # flash_attention_train's second output is its float32 log-sum-exp
            want = torch.float32 if (op, i) == ("flash_attention_train", 1) else dtype
            assert a.dtype == want and a.is_contiguous(), (i, a.dtype)
            try:
                assert_within_pytorch_error(a, e, s)
            except AssertionError as error:
                raise AssertionError(f"output {i}: {error}") from None
        return
    assert actual.dtype == dtype and actual.is_contiguous()
    assert_within_pytorch_error(actual, expected, same_dtype)
    if op == "decode_attention":  # new keys/values at [len, len + S), the rest of the caches untouched
        torch.testing.assert_close(op_args[1], same_dtype_args[1], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(op_args[2], same_dtype_args[2], rtol=0, atol=0, equal_nan=True)
