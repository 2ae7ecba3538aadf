"""gpt_fast::pack_quantized_weight + gpt_fast::linear_quantized (CPU): the special cases the shared samples
(tests/op_samples.py, run on every tier by tests/test_op_matrix.py) do not cover: the layout against the reference
packer, GPT-1's LM head, empty rows, torch.compile, gradients, and bad input (one case per test, each a clear
error naming the op; a device mismatch is tested in tests/test_cuda_ops.py)."""

import pytest
import torch
from accuracy import assert_within_pytorch_error
from op_samples import quantized_expected

from gpt_fast import ops
from gpt_fast.ops import cpu_isa, reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("linear_quantized", "cpu"), reason="extension not built")


def layer(N=40, K=64, bits=4, G=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, s, z = reference.quantize_linear_weight(torch.randn(N, K, generator=g), bits, G or None)
    return q, s, z, ops.pack_quantized_weight(q, s, z, bits, G)


@pytest.mark.parametrize("bits, G", [(8, 0), (4, 32), (4, 64)])
def test_vocab_sized_lm_head(bits, G, cpu_tier):
    q, s, z, packed = layer(40478, 768, bits, G, seed=1)
    x = torch.randn(1, 768, dtype=torch.bfloat16)
    args = (x, q, s, z, bits, G, None, None, False, 0)
    assert_within_pytorch_error(ops.linear_quantized(x, packed, 40478, bits, G), quantized_expected(args, x.dtype),
                                reference.linear_quantized(*args))


# Every row-tile size of the vector tiers (1-8 rows, 9 = 5 + 4, 17 = 6 + 6 + 5), with 10 blocks (149 columns: two
# groups of 4 streams side by side and 2 blocks alone on one thread), K with a k tail (int8 70 = 64 + 6, 35 pairs) and
# an odd K (int8 67: the fp32 path for a bf16 x), int8 96 (K % 32 == 0: the AMX tiles from 4 rows, 17 = 16 + 1 rows),
# int4 groups of 32, 64 and 6 (3 pairs: an odd pair count per group)
@pytest.mark.parametrize("bits, G, K", [(8, 0, 70), (8, 0, 67), (8, 0, 96), (4, 32, 96), (4, 64, 192), (4, 6, 42)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_every_row_tile_against_the_float64_reference(bits, G, K, dtype, cpu_tier):
    N = 149
    q, s, z, packed = layer(N, K, bits, G, seed=3)
    for M in [*range(1, 10), 17]:
        x, bias = torch.randn(M, K, dtype=dtype), torch.randn(N, dtype=dtype)
        args = (x, q, s, z, bits, G, bias, None, M % 2 == 0, 0)
        actual = ops.linear_quantized(x, packed, N, bits, G, bias, None, M % 2 == 0)
        assert_within_pytorch_error(actual, quantized_expected(args, dtype), reference.linear_quantized(*args))


# x_bits=8: every row tile (int8: 5-8 rows take 2 blocks a tile), the same columns; int4 G 32, 64, 12 and 96 (the
# byte tiles where the CPU has them; the AVX2 one sums in int16 over at most 32 k: 96 is three such sums, 12 a
# partial one), 6 (G % 4 != 0: the fp32 tile on the rounded x); int8 (x's groups alone) G 32, 4, 192 (one group a
# row) and 6
@pytest.mark.parametrize("bits, G, K", [(4, 32, 96), (4, 64, 192), (4, 12, 48), (4, 96, 192), (4, 6, 42),
                                        (8, 32, 96), (8, 4, 40), (8, 192, 192), (8, 6, 42)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_int8_activations_every_row_tile_against_the_float64_reference(bits, G, K, dtype, cpu_tier):
    N = 149
    q, s, z, packed = layer(N, K, bits, G if bits == 4 else 0, seed=4)
    for M in [*range(1, 10), 17]:
        x, bias = torch.randn(M, K, dtype=dtype), torch.randn(N, dtype=dtype)
        args = (x, q, s, z, bits, G, bias, None, M % 2 == 0, 8)
        actual = ops.linear_quantized(x, packed, N, bits, G, bias, None, M % 2 == 0, x_bits=8)
        assert_within_pytorch_error(actual, quantized_expected(args, dtype), reference.linear_quantized(*args))


@pytest.mark.parametrize("G", [32, 64, 96])
def test_int8_activations_largest_sums_are_exact(G, cpu_tier):
    """The largest products every step: q = 15 or 0 and x = +-127 (scale 1), so the byte tiles' partial sums reach
    their bounds (the AVX2 tile's int16 sums: 8 steps of 2 * 15 * 127 = 30480 < 2^15). Integers all the way: exact."""
    N, K = 40, 2 * G
    qweight = torch.zeros(N, K // 2, dtype=torch.uint8)
    qweight[: N // 2] = 0xFF  # q = 15 in both nibbles of the first half of the columns
    scales, zeros = torch.ones(N, K // G, dtype=torch.bfloat16), torch.full((N, K // G), -8.0, dtype=torch.bfloat16)
    packed = ops.pack_quantized_weight(qweight, scales, zeros, 4, G)
    x = torch.stack([torch.full((K,), 127.0), torch.full((K,), -127.0), torch.tensor([127.0, -127.0]).repeat(G)])
    w = reference.dequantize_linear_weight(qweight, scales, zeros, 4, G).double()  # 7 or -8
    out = ops.linear_quantized(x, packed, N, 4, G, x_bits=8)
    assert torch.equal(out.double(), x.double() @ w.t())


@pytest.mark.parametrize("G", [32, 96])
def test_int8_activations_largest_int8_sums_are_exact(G, cpu_tier):
    """int8 weights: q = +-127 (and -128, which the format holds though quantize never writes it) and x = +-127
    (scale 1) at every k, the largest sums the VNNI tile's int32 group sums hold (with its +128 offset on q) and the
    AVX2 tile's int16 pair sums (|q| 128 times 127, twice); integers all the way (K 128 127 < 2^24): exact."""
    N, K = 40, 2 * G
    qweight = torch.full((N, K), 127, dtype=torch.int8)
    qweight[N // 2:] = -127
    qweight[-4:] = -128
    scales = torch.ones(N, 1)
    packed = ops.pack_quantized_weight(qweight, scales, None, 8, 0)
    x = torch.stack([torch.full((K,), 127.0), torch.full((K,), -127.0), torch.tensor([127.0, -127.0]).repeat(G)])
    out = ops.linear_quantized(x, packed, N, 8, G, x_bits=8)
    assert torch.equal(out.double(), x.double() @ qweight.double().t())


@pytest.mark.parametrize("bits", [4, 8])
def test_int8_activations_round_ties_to_even_and_keep_nan(bits, cpu_tier):
    """Rows built so that x / scale falls exactly on .5 (the scale of each group is 1: max |x| = 127), an all-zero
    group, and groups holding NaN or an infinity (NaN out, only in that row)."""
    N, K, G = 16, 32, 8
    q, s, z, packed = layer(N, K, bits, G if bits == 4 else 0, seed=5)
    ties = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5] * 4)
    rounded = torch.tensor([127.0, 0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 4.0] * 4)
    x = torch.stack([ties, torch.zeros(K), ties.clone().index_fill_(0, torch.tensor([9]), float("nan")),
                     ties.clone().index_fill_(0, torch.tensor([30]), float("-inf"))])
    assert torch.equal(reference.round_activations(x[:2], G), torch.stack([rounded, torch.zeros(K)]))
    w = reference.dequantize_linear_weight(q, s, z, bits, G).double()
    out = ops.linear_quantized(x, packed, N, bits, G, x_bits=8)
    torch.testing.assert_close(out[0].double(), rounded.double() @ w.t(), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[1], torch.zeros(N))
    assert out[2:].isnan().all()


@pytest.mark.parametrize("bits", [4, 8])
def test_int8_activations_change_the_result(bits):
    """x_bits=8 rounds x: its result differs from the weight-only one by about the rounding's size, not by fp32
    noise (the kernel does not ignore the argument)."""
    q, s, z, packed = layer(64, 256, bits, 32 if bits == 4 else 0, seed=6)
    x = torch.randn(3, 256)
    exact, rounded = (ops.linear_quantized(x, packed, 64, bits, 32, x_bits=b) for b in (0, 8))
    scale = x.abs().amax() / 127
    assert (exact - rounded).abs().max() > 1e-3 * scale * 256**0.5


def has_x16_tile(tier: str) -> bool:
    """Whether weight-only int8 with a bf16 x takes int8_tile_dpwssd from 5 rows (K % 32 == 0) at this tier."""
    flags = (cpu_isa.cpuinfo_field("flags") or "").split()
    return tier in ("avx512", "avx512_bf16") and "avx512_vnni" in flags and "avx512vbmi" in flags


def x16_rounded(x: torch.Tensor) -> torch.Tensor:
    """int8_tile_dpwssd.h's x16, in float64: each group of 32 of a row rounded (half to even) to a multiple of
    2^(E - 14), E the exponent of its largest |x| (at least -113)."""
    groups = x.double().reshape(x.shape[0], -1, 32)
    exponent = torch.frexp(groups.abs().amax(-1, keepdim=True))[1] - 1  # largest in [2^E, 2^(E + 1))
    step = torch.ldexp(torch.ones_like(groups[..., :1]), exponent.clamp(min=-113) - 14)
    return (torch.round(groups / step) * step).reshape(x.shape)


@pytest.mark.parametrize("M", [5, 8, 17])
def test_int8_with_bf16_rows_holds_x_in_16_bits_from_5_rows(M, cpu_tier):
    """From 5 bf16 rows on AVX512_VNNI the int8 tile holds x as 16-bit integers per group of 32: exact for x within
    2^7 of its group's largest, smaller ones rounded to 2^-15 of it. Built so that the rounding shows: each group's
    first x is 2^14 (the step becomes 1) with zero weights, the others in +-[1, 2) (rounded to +-1 or +-2)."""
    N, K = 40, 96
    weight = torch.randn(N, K, generator=torch.Generator().manual_seed(7))
    weight[:, ::32] = 0.0
    q, s, z = reference.quantize_linear_weight(weight, 8, None)
    packed = ops.pack_quantized_weight(q, s, z, 8, 0)
    g = torch.Generator().manual_seed(8)
    x = ((1 + torch.rand(M, K, generator=g)) * torch.randn(M, K, generator=g).sign()).bfloat16()
    x[:, ::32] = 2.0**14
    x[0, 32:64] = 0.0  # an all-zero group, and one of subnormal floats (its step clamped to 2^-127): no NaN from them
    x[1, 64:96] *= 2.0**-130
    actual = ops.linear_quantized(x, packed, N, 8, 0)
    rounded = x16_rounded(x).bfloat16()  # +-1, +-2 and 2^14: exact in bf16
    exact_args, rounded_args = ((v, q, s, z, 8, 0, None, None, False, 0) for v in (x, rounded))
    exact, expected = quantized_expected(exact_args, x.dtype), quantized_expected(rounded_args, x.dtype)
    assert (expected - exact).abs().max() > 0.1 * exact.abs().max()  # the rounding is visible at this output
    if has_x16_tile(cpu_tier):
        assert_within_pytorch_error(actual, expected, reference.linear_quantized(*rounded_args))
    else:
        assert_within_pytorch_error(actual, exact, reference.linear_quantized(*exact_args))


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_int8_with_bf16_rows_keeps_infinities_and_nan(value, cpu_tier):
    """A group holding an infinity or NaN is not rounded to 16 bits (the call takes the bf16 tile): the same
    infinities and NaN as the reference."""
    q, s, z, packed = layer(N=40, K=96, bits=8, G=0, seed=9)
    x = torch.randn(8, 96, generator=torch.Generator().manual_seed(10)).bfloat16()
    x[3, 40] = value
    args = (x, q, s, z, 8, 0, None, None, False, 0)
    actual = ops.linear_quantized(x, packed, 40, 8, 0)
    assert_within_pytorch_error(actual, quantized_expected(args, x.dtype), reference.linear_quantized(*args))
    assert not actual[3].isfinite().any() and actual[torch.arange(8) != 3].isfinite().all()


@pytest.mark.parametrize("x_bits", [0, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_strided_x_gives_the_contiguous_result(x_bits, dtype, cpu_tier):
    # x's fp32 copy: contiguous rows (any row stride) 8 values a step on the vector tiers, other strides one by one
    _, _, _, packed = layer(N=40, K=70, bits=8, G=0)
    wide = torch.randn(5, 80, generator=torch.Generator().manual_seed(1)).to(dtype)
    x = wide[:, 3:73]  # (5, 70), rows 80 apart
    column_major = x.t().contiguous().t()
    assert x.stride() == (80, 1) and column_major.stride() == (1, 5)
    group = 14 if x_bits else 0  # x's groups: 5 of 14 (not a multiple of 8: the rounding's tails too)
    expected = torch.ops.gpt_fast.linear_quantized(x.contiguous(), packed, 40, 8, group, None, None, False, x_bits)
    for strided in (x, column_major):
        actual = torch.ops.gpt_fast.linear_quantized(strided, packed, 40, 8, group, None, None, False, x_bits)
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_pack_unpacks_to_the_dequantized_weight():
    for bits, G in [(8, 0), (4, 2), (4, 32)]:
        q, s, z, packed = layer(33, 64, bits, G)
        assert torch.equal(packed, reference.pack_quantized_weight(q, s, z, bits, G))
        assert torch.equal(reference.dequantize_packed_weight(packed, 33, bits, G),
                           reference.dequantize_linear_weight(q, s, z, bits, G))


def test_empty_rows_give_an_empty_result():
    *_, packed = layer()
    out = ops.linear_quantized(torch.randn(0, 3, 64), packed, 40, 4, 32)
    assert out.shape == (0, 3, 40)


@pytest.mark.parametrize("x_bits", [0, 8])
def test_torch_compile_fullgraph(x_bits):
    q, s, z, packed = layer(48, 32, 4, 32)
    b = torch.randn(48)
    def step(x):
        return ops.linear_quantized(x, packed, 48, 4, 32, b, x[..., :1].expand(-1, 48), True, x_bits)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 32)
    torch.testing.assert_close(compiled(x), step(x))


def test_gradients_flow_to_x_bias_and_residual():
    q, s, z, packed = layer(24, 32, 8, 0)
    g = torch.Generator().manual_seed(2)
    x, b, r = (torch.randn(*shape, generator=g).requires_grad_() for shape in [(3, 32), (24,), (3, 24)])
    ops.linear_quantized(x, packed, 24, 8, 0, b, r, True).square().sum().backward()
    w = reference.dequantize_linear_weight(q, s, z, 8)
    x2, b2, r2 = (t.detach().clone().requires_grad_() for t in (x, b, r))
    torch.nn.functional.gelu(x2 @ w.t() + b2, approximate="tanh").add(r2).square().sum().backward()
    # The gradients pass through the forward's value (square), which the kernel sums in another order than the
    # reference matmul: a few fp32 ulps of the output apart, so a few ulps of tolerance.
    for got, want in [(x.grad, x2.grad), (b.grad, b2.grad), (r.grad, r2.grad)]:
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)


def test_int8_activations_pass_the_gradient_straight_through():
    """d/dx of sum(x_bits=8's output) is the weight's column sums, as without the rounding (straight through)."""
    q, s, z, packed = layer(24, 64, 4, 32)
    x = torch.randn(3, 64, requires_grad=True)
    ops.linear_quantized(x, packed, 24, 4, 32, x_bits=8).sum().backward()
    w = reference.dequantize_linear_weight(q, s, z, 4, 32)
    torch.testing.assert_close(x.grad, w.sum(0).expand(3, -1), rtol=1e-5, atol=1e-5)


# --- bad input: one case per test, each message names the op and the argument -----------------------------------

def call(**changes):
    q, s, z, packed = layer()
    a = dict(x=torch.randn(2, 64), packed=packed, out_features=40, bits=4, group_size=32, bias=None, residual=None,
             gelu=False, x_bits=0)
    a.update(changes)
    return torch.ops.gpt_fast.linear_quantized(*a.values())


@pytest.mark.parametrize("changes, message", [
    (dict(bits=3), "bits must be 4 or 8"),
    (dict(x_bits=4), "x_bits must be 0"),
    (dict(x_bits=-1), "x_bits must be 0"),
    (dict(group_size=0), "even positive group_size dividing"),
    (dict(group_size=31), "even positive group_size dividing"),
    (dict(group_size=48), "even positive group_size dividing"),
    (dict(group_size=64), "packed has shape"),                     # another group size than packed for
    (dict(bits=8), "packed has shape"),                            # int4 bytes read as int8
    (dict(out_features=17), "packed has shape"),                   # another block count
    (dict(out_features=39), "smaller than packed's"),              # same block count, N off by one
    (dict(out_features=41), "larger than packed's"),
    (dict(out_features=0), "out_features must be positive"),
    (dict(out_features=-5), "out_features must be positive"),
    (dict(x=torch.randn(2, 32)), "packed has shape"),              # x's K differs
    (dict(x=torch.randn(2, 0)), "non-empty last dimension"),
    (dict(x=torch.randn(2, 64).double()), "x must be float32, bfloat16 or float16"),
    (dict(x=torch.ones(2, 64, dtype=torch.int32)), "x must be float32, bfloat16 or float16"),
    (dict(x=torch.tensor(1.0)), "at least one dimension"),
    (dict(packed=torch.zeros(3, 2, 320)), "contiguous uint8 3-D"),
    (dict(packed=torch.zeros(3, 2, 320, dtype=torch.uint8)[..., ::2].repeat_interleave(2, -1).transpose(0, 1)),
     "contiguous uint8 3-D"),
    (dict(packed=torch.zeros(3, 2, 320, dtype=torch.uint8)), "than packed's"),  # not from the packer: no marker
    (dict(bias=torch.randn(39)), "bias must have 40 elements"),
    (dict(bias=torch.randn(40).bfloat16()), "bias has dtype"),
    (dict(residual=torch.randn(2, 39)), "residual must have the output shape"),
    (dict(residual=torch.randn(2, 40).half()), "residual has dtype"),
])
def test_linear_quantized_bad_input(changes, message):
    with pytest.raises((ValueError, RuntimeError), match=message):  # ValueError, or checks.h's RuntimeError
        call(**changes)


@pytest.mark.parametrize("group_size", [0, 31, 48, -2])
def test_int8_with_int8_activations_needs_a_group_dividing_k(group_size):
    """bits=8 ignores group_size with x as it is, but x_bits=8 rounds x per group of it: it must be even, positive
    and divide K, as int4's."""
    *_, packed = layer(40, 64, 8, 0)
    x = torch.randn(2, 64)
    assert ops.linear_quantized(x, packed, 40, 8, group_size).shape == (2, 40)  # x_bits=0: ignored
    message = r"x_bits=8 \(x's groups\) needs an even positive group_size dividing in_features K=64"
    with pytest.raises((ValueError, RuntimeError), match=message):
        torch.ops.gpt_fast.linear_quantized(x, packed, 40, 8, group_size, None, None, False, 8)


def pack(**changes):
    q, s, z, _ = layer()
    a = dict(qweight=q, scales=s, zeros=z, bits=4, group_size=32)
    a.update(changes)
    return torch.ops.gpt_fast.pack_quantized_weight(*a.values())


@pytest.mark.parametrize("changes, message", [
    (dict(bits=2), "bits must be 4 or 8"),
    (dict(group_size=30), "even positive group_size dividing"),
    (dict(group_size=-32), "even positive group_size dividing"),
    (dict(qweight=layer()[0].to(torch.int8)), "bits=4 needs a uint8 qweight"),
    (dict(qweight=torch.zeros(40, 0, dtype=torch.uint8)), "qweight must be non-empty"),
    (dict(qweight=torch.zeros(40, 32, 1, dtype=torch.uint8)), "qweight must have 2 dimensions"),
    (dict(scales=layer()[1].float()), "bfloat16 scales of shape"),
    (dict(scales=layer()[1][:, :1]), "bfloat16 scales of shape"),
    (dict(zeros=None), "bits=4 needs zeros"),
    (dict(zeros=layer()[2][:39]), "bfloat16 zeros of shape"),
    (dict(bits=8), "bits=8 needs an int8 qweight"),
    (dict(bits=8, qweight=layer(bits=8)[0]), "bits=8 needs float32 scales"),
    (dict(bits=8, qweight=layer(bits=8)[0], scales=layer(bits=8)[1]), "zeros must be None"),
])
def test_pack_quantized_weight_bad_input(changes, message):
    with pytest.raises((ValueError, RuntimeError), match=message):
        pack(**changes)
