"""Every op's argument checks against extreme integers (and extreme eps): each call either raises a clear error
naming the op (RuntimeError, IndexError or ValueError) or succeeds with a correct result, never crashes or writes
out of bounds. Values near the int32 / int64 limits catch size arithmetic that wraps (csrc/checks.h does it in
checked int64). The fake kernels (gpt_fast/ops/*.py) must accept exactly the integer arguments the CPU kernels
accept where they check the same thing. Run under AddressSanitizer by .ci/sanitize.

Also one regression test per bug of issue 11 ("Hardening"): a wrapped cache range check of decode_attention, a
wrapped 3 * n_head in check_packed_qkv, and linear_small_m's out_features not checked against the packed weight.
"""

from __future__ import annotations

import math

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from gpt_fast import ops
from gpt_fast.ops import reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("linear_small_m", "cpu"), reason="extension not built")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXTREMES = [0, 1, -1, 2**31 - 1, 2**31, 2**31 + 1, 2**62, INT64_MAX, INT64_MIN]
# An extreme value or an ordinary small one (so that valid calls are drawn too).
ints = st.sampled_from(EXTREMES) | st.integers(-3, 40)
EPS = [0.0, -0.0, 5e-324, 1e-300, 1e-5, 1e38, 1e39, 1e300, 2.0**63, math.inf, -math.inf, math.nan, -1e-5]
FUZZ = settings(max_examples=60, deadline=None)


def call(op: str, fn):
    """fn() or, when it raised one of the clear errors, None; the message must name the op."""
    try:
        return fn()
    except (RuntimeError, IndexError, ValueError) as error:
        assert op in str(error), f"the error does not name {op}: {error}"
        return None


def fake_accepts(op: str, fn, *tensors) -> bool:
    """Whether the op's fake kernel accepts fn(*fake copies of tensors); a rejection must name the op."""
    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(t) for t in tensors]
        return call(op, lambda: fn(*fakes)) is not None


def divides(n_head: int, C: int) -> bool:
    return 0 < n_head <= C and C % n_head == 0


# --- flash_attention: n_head ------------------------------------------------------------------------------------

@FUZZ
@given(n_head=ints, B=st.integers(1, 2), T=st.integers(1, 5), masked=st.booleans())
def test_flash_attention_n_head(n_head, B, T, masked):
    C = 24  # n_head in {1, 2, 3, 4, 6, 8, 12, 24} is valid, head_dim = 24 / n_head <= 128
    qkv = torch.randn(B, T, 3 * C)
    mask = torch.rand(B, T) < 0.7 if masked else None
    out = call("gpt_fast::flash_attention", lambda: ops.flash_attention(qkv, mask, n_head))
    assert (out is not None) == divides(n_head, C)
    if out is not None:
        expected = reference.flash_attention(*upcast(qkv, mask, dtype=qkv.dtype), n_head)
        assert_within_pytorch_error(out, expected, reference.flash_attention(qkv, mask, n_head))
    assert fake_accepts("flash_attention", lambda q: ops.flash_attention(q, None, n_head), qkv) == divides(n_head, C)


@pytest.mark.parametrize("n_head", EXTREMES)
def test_attention_every_extreme_n_head(n_head):
    qkv = torch.randn(2, 3, 3 * 24)
    out = call("gpt_fast::flash_attention", lambda: ops.flash_attention(qkv, None, n_head))
    assert (out is not None) == (n_head == 1)
    check_decode(n_head, [0, 3], 2)


def test_flash_attention_3_n_head_wrapping_to_a_divisor():
    """3 * n_head wraps to 2 for n_head = (2**64 + 2) / 3; unchecked, 6 % 2 == 0 passed and the kernel ran with
    C = n_head * 3 (heap corruption / SIGSEGV)."""
    n_head = (2**64 + 2) // 3
    with pytest.raises(RuntimeError, match=r"gpt_fast::flash_attention: 3 \* n_head overflows int64"):
        ops.flash_attention(torch.randn(1, 2, 6), None, n_head)
    with pytest.raises(RuntimeError, match=r"gpt_fast::decode_attention: 3 \* n_head overflows int64"):
        ops.decode_attention(torch.randn(1, 2, 6), torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2),
                             torch.tensor([0]), n_head)
    assert not fake_accepts("flash_attention", lambda q: ops.flash_attention(q, None, n_head), torch.randn(1, 2, 6))


@pytest.mark.parametrize("n_head", EXTREMES)
def test_attention_empty_head_dim(n_head):
    """qkv (B, T, 0): no n_head gives head_dim >= 1, so the kernels and the fake kernels reject all of them."""
    qkv, cache = torch.randn(1, 2, 0), torch.zeros(1, 1, 4, 0)
    assert call("gpt_fast::flash_attention", lambda: ops.flash_attention(qkv, None, n_head)) is None
    assert not fake_accepts("flash_attention", lambda q: ops.flash_attention(q, None, n_head), qkv)
    fn = lambda q, k, v, n: ops.decode_attention(q, k, v, n, n_head)  # noqa: E731
    assert call("gpt_fast::decode_attention", lambda: fn(qkv, cache, cache.clone(), torch.tensor([0]))) is None
    assert not fake_accepts("decode_attention", fn, qkv, cache, cache.clone(), torch.tensor([0]))


# --- decode_attention: n_head and every cache length ------------------------------------------------------------

def check_decode(n_head, lengths, S, C=24, Tmax=7):
    """decode_attention either fails with a clear error and leaves the caches alone, or matches the reference
    (output and cache writes); it may succeed only when n_head is valid and every 0 <= len <= Tmax - S."""
    B = len(lengths)
    H = n_head if divides(n_head, C) else 4  # caches laid out for n_head when it is valid
    qkv = torch.randn(B, S, 3 * C)
    k_cache, v_cache = torch.randn(B, H, Tmax, C // H), torch.randn(B, H, Tmax, C // H)
    k_out, v_out = k_cache.clone(), v_cache.clone()
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    out = call("gpt_fast::decode_attention", lambda: ops.decode_attention(qkv, k_out, v_out, lengths_t, n_head))
    valid = divides(n_head, C) and all(0 <= n <= Tmax - S for n in lengths)
    assert (out is not None) == valid, (n_head, lengths, S)
    if out is None:  # nothing written before the error
        assert torch.equal(k_out, k_cache) and torch.equal(v_out, v_cache)
        return
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    same_dtype = reference.decode_attention(qkv, k_ref, v_ref, lengths_t, n_head)
    expected = reference.decode_attention(*upcast(qkv, k_cache, v_cache, dtype=qkv.dtype), lengths_t, n_head)
    assert_within_pytorch_error(out, expected, same_dtype)
    assert torch.equal(k_out, k_ref) and torch.equal(v_out, v_ref)


@FUZZ
@given(n_head=ints, S=st.integers(0, 3), data=st.data())
def test_decode_attention_n_head(n_head, S, data):
    check_decode(n_head, data.draw(st.lists(st.integers(0, 7 - S), min_size=1, max_size=3)), S)


@FUZZ
@given(n_head=st.sampled_from([1, 2, 3, 4, 6, 8, 12, 24]), S=st.integers(0, 3),
       lengths=st.lists(st.sampled_from(EXTREMES) | st.integers(-2, 9), min_size=1, max_size=3))
def test_decode_attention_cache_lengths(n_head, S, lengths):
    check_decode(n_head, lengths, S)


@pytest.mark.parametrize("length", EXTREMES)
@pytest.mark.parametrize("S", [0, 1, 3])
def test_decode_attention_every_extreme_length(length, S):
    check_decode(4, [length], S)
    check_decode(4, [2, length], S)


@pytest.mark.parametrize("B", [1, 2])
def test_decode_attention_length_near_int64_max(B):
    """len + S wrapped for len = 2**63 - 1: the range check passed and the kernel wrote 32 bytes before the cache
    (B = 1 died with SIGFPE). Now an IndexError, and the caches are untouched."""
    lengths = torch.tensor([INT64_MAX, 3][:B])
    qkv = torch.randn(B, 1, 3 * 8)  # n_head 1, head_dim 8
    k_cache, v_cache = torch.zeros(B, 1, 4, 8), torch.zeros(B, 1, 4, 8)
    with pytest.raises(IndexError, match=r"gpt_fast::decode_attention: cache_lengths\[0\] = 9223372036854775807"):
        ops.decode_attention(qkv, k_cache, v_cache, lengths, 1)
    assert not k_cache.any() and not v_cache.any()


@pytest.mark.parametrize("n_head", EXTREMES)
def test_decode_attention_fake_agrees_on_n_head(n_head):
    C = 24
    qkv, cache = torch.randn(2, 1, 3 * C), torch.zeros(2, 4, 8, 6)
    fn = lambda q, k, v, n: ops.decode_attention(q, k, v, n, n_head)  # noqa: E731
    assert fake_accepts("decode_attention", fn, qkv, cache, cache.clone(), torch.tensor([0, 1])) == divides(n_head, C)


# the values check of the out_features fuzz: a few ulp of the output dtype (its rounding, and GELU's approximation)
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
             torch.float16: dict(rtol=2e-3, atol=1e-3)}


# --- linear_small_m: out_features -------------------------------------------------------------------------------

@FUZZ
@given(N=ints, packed_for=st.integers(1, 40), rows=st.integers(1, 3), gelu=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), seed=st.integers(0, 2**32 - 1))
def test_linear_small_m_out_features(N, packed_for, rows, gelu, dtype, seed):
    """The right number of columns with the right values. (Not the kernel's precision: with one or a few outputs
    PyTorch's own error is a poor yardstick — 7e-9 on one GELU value, where the kernel's GELU is a few ulp off —
    and tests/test_op_matrix.py holds every tier to the accuracy rule on shapes made for it.)"""
    K = 24
    generator = torch.Generator().manual_seed(seed)  # drawn by hypothesis, so a failure replays
    x = torch.randn(rows, K, generator=generator).to(dtype)
    weight = (torch.randn(K, packed_for, generator=generator) / K**0.5).to(dtype)
    packed = ops.pack_linear_weight(weight, True)
    out = call("gpt_fast::linear_small_m", lambda: ops.linear_small_m(x, packed, N, None, None, gelu))
    assert (out is not None) == (N == packed_for), (N, packed_for)
    if out is not None:
        expected = reference.linear_small_m(*upcast(x, weight, dtype=dtype), gelu=gelu)
        torch.testing.assert_close(out.double(), expected.double(), **TOLERANCE[dtype])
    # The fake kernel sees shapes only: it accepts every N with the packed number of 16-column blocks.
    same_blocks = N > 0 and -(-N // 16) == -(-packed_for // 16)
    fn = lambda a, w: ops.linear_small_m(a, w, N, None, None, gelu)  # noqa: E731
    assert fake_accepts("linear_small_m", fn, x, packed) == same_blocks


@pytest.mark.parametrize("N", EXTREMES)
def test_linear_small_m_every_extreme_out_features(N):
    """Each extreme once for sure (the fuzz above may miss one): ceil(N / 16) must not overflow near INT64_MAX."""
    x, packed = torch.randn(2, 8), ops.pack_linear_weight(torch.randn(8, 1), True)
    out = call("gpt_fast::linear_small_m", lambda: ops.linear_small_m(x, packed, N))
    assert (out is not None) == (N == 1)


def test_linear_small_m_out_features_must_match_the_packed_weight():
    """Packed for 17 outputs, N = 20 passed the block-count check and returned 20 columns; N = 17 with a weight
    packed for 20 dropped 3. Both are errors now; the right N still works, bias and residual included."""
    x = torch.randn(2, 8)
    packed17 = ops.pack_linear_weight(torch.randn(8, 17), True)
    packed20 = ops.pack_linear_weight(torch.randn(8, 20), True)
    with pytest.raises(RuntimeError, match="gpt_fast::linear_small_m: out_features = 20 is larger than packed_weight"):
        ops.linear_small_m(x, packed17, 20)
    with pytest.raises(RuntimeError, match="gpt_fast::linear_small_m: out_features = 17 is smaller than packed_weight"):
        ops.linear_small_m(x, packed20, 17)
    with pytest.raises(RuntimeError, match="gpt_fast::linear_small_m: out_features = 32 is larger"):
        ops.linear_small_m(x, packed17, 32)  # no padding expected for N = 32, but column 31 is padding
    assert ops.linear_small_m(x, packed17, 17, torch.randn(17), torch.randn(2, 17), True).shape == (2, 17)


def test_linear_small_m_negative_zero_weights():
    """The padding is -0.0 and pack_linear_weight makes the weight's own -0.0 +0.0, so a real column of -0.0
    (here the last one, where the check looks) is still a column: accepted, with the right result."""
    x, weight = torch.randn(2, 8), torch.randn(8, 20)
    weight[:, 19] = -0.0
    packed = ops.pack_linear_weight(weight, True)
    assert not packed[1, :, 3].signbit().any() and packed[1, :, 4:].signbit().all()
    torch.testing.assert_close(ops.linear_small_m(x, packed, 20), x @ weight)
    packed[1, 0, 4:] = 0.0  # +0.0: no longer padding as pack_linear_weight writes it
    with pytest.raises(RuntimeError, match="out_features = 20 is smaller than packed_weight's: its column 20"):
        ops.linear_small_m(x, packed, 20)


# --- linear_quantized / pack_quantized_weight: out_features, bits, group_size -------------------------------------

@FUZZ
@given(N=ints, bits=st.sampled_from([4, 8]) | ints, group_size=st.sampled_from([2, 8, 16]) | ints,
       packed_for=st.integers(1, 40), packed_bits=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1))
def test_linear_quantized_integer_arguments(N, bits, group_size, packed_for, packed_bits, seed):
    """Exactly the arguments the weight was packed for run (group_size is ignored for bits 8) and give the
    dequantize-then-matmul result; every other call is a clear error, and the fake kernel agrees up to the exact N
    within a block of 16 (which only the data, the padding marker, pins down)."""
    K, G = 16, 8
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, K, generator=generator)
    q, s, z = reference.quantize_linear_weight(torch.randn(packed_for, K, generator=generator), packed_bits, G)
    packed = ops.pack_quantized_weight(q, s, z, packed_bits, G)
    out = call("gpt_fast::linear_quantized", lambda: ops.linear_quantized(x, packed, N, bits, group_size))
    valid = N == packed_for and bits == packed_bits and (bits == 8 or group_size == G)
    assert (out is not None) == valid, (N, bits, group_size)
    if valid:
        w = reference.dequantize_linear_weight(q, s, z, bits, G).double()
        torch.testing.assert_close(out.double(), x.double() @ w.t(), rtol=1e-5, atol=1e-5)
    same_blocks = N > 0 and -(-N // 16) == -(-packed_for // 16)
    same_shape = same_blocks and bits == packed_bits and (bits == 8 or group_size == G)
    fn = lambda a, p: ops.linear_quantized(a, p, N, bits, group_size)  # noqa: E731
    assert fake_accepts("linear_quantized", fn, x, packed) == same_shape


@FUZZ
@given(bits=st.sampled_from([4, 8]) | ints, group_size=st.sampled_from([2, 8, 16]) | ints)
def test_pack_quantized_weight_integer_arguments(bits, group_size):
    K = 16
    q8, s8, _ = reference.quantize_linear_weight(torch.randn(5, K), 8)
    q4, s4, z4 = reference.quantize_linear_weight(torch.randn(5, K), 4, 8)
    args = (q8, s8, None) if bits == 8 else (q4, s4, z4)
    out = call("gpt_fast::pack_quantized_weight", lambda: ops.pack_quantized_weight(*args, bits, group_size))
    valid = bits == 8 or (bits == 4 and group_size == 8)  # the scales are per group of 8
    assert (out is not None) == valid, (bits, group_size)


@FUZZ
@given(bits=st.sampled_from([4, 8]) | ints, group_size=st.sampled_from([2, 8, 16]) | ints)
def test_dequantize_linear_weight_integer_arguments(bits, group_size):
    """Exactly the bits and group size the weight was quantized with give the reference's weight; every other call
    is a clear error, and the fake kernel agrees."""
    K = 16
    q8, s8, _ = reference.quantize_linear_weight(torch.randn(5, K), 8)
    q4, s4, z4 = reference.quantize_linear_weight(torch.randn(5, K), 4, 8)
    args = (q8, s8, None) if bits == 8 else (q4, s4, z4)
    fn = lambda *a: ops.dequantize_linear_weight(*a, bits, group_size, torch.float32)  # noqa: E731
    out = call("gpt_fast::dequantize_linear_weight", lambda: fn(*args))
    valid = bits == 8 or (bits == 4 and group_size == 8)  # the scales are per group of 8
    assert (out is not None) == valid, (bits, group_size)
    if valid:
        assert torch.equal(out, reference.dequantize_linear_weight(*args, bits, 8))
    tensors = [t for t in args if t is not None]
    fake_fn = (lambda q, s: fn(q, s, None)) if bits == 8 else fn
    assert fake_accepts("dequantize_linear_weight", fake_fn, *tensors) == valid


@FUZZ
@given(group_size=ints, K=st.sampled_from([1, 6, 16]))
def test_round_activations_group_size(group_size, K):
    x = torch.randn(3, K)
    out = call("gpt_fast::round_activations", lambda: ops.round_activations(x, group_size))
    valid = 0 < group_size and K % group_size == 0
    assert (out is not None) == valid, (group_size, K)
    if valid:
        assert torch.equal(out, reference.round_activations(x, group_size))
    assert fake_accepts("round_activations", lambda t: ops.round_activations(t, group_size), x) == valid


# --- add_layernorm: eps; bias_gelu (no scalar argument): extreme values -----------------------------------------

@pytest.mark.parametrize("eps", EPS, ids=str)
def test_add_layernorm_eps(eps):
    x, res, w, b = torch.randn(3, 10), torch.randn(3, 10), torch.randn(10), torch.randn(10)
    out = call("gpt_fast::add_layernorm", lambda: ops.add_layernorm(x, res, None, w, b, eps))
    assert (out is not None) == (math.isfinite(eps) and eps >= 0)
    if out is not None:
        expected = reference.add_layernorm(*upcast(x, res, None, w, b, dtype=x.dtype), eps)
        assert_within_pytorch_error(out, expected, reference.add_layernorm(x, res, None, w, b, eps))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bias_gelu_extreme_values(dtype):
    # Not -inf: PyTorch's gelu gives NaN (-inf * 0) there, the kernel -inf (the limit is 0); left to the kernel owners.
    big = torch.finfo(dtype).max
    x = torch.tensor([[big, -big, math.inf, 0.0, -0.0, torch.finfo(dtype).tiny]], dtype=dtype)
    out = ops.bias_gelu(x, torch.zeros(x.shape[-1], dtype=dtype))
    expected = reference.bias_gelu(*upcast(x, torch.zeros_like(x[0]), dtype=dtype))
    assert_within_pytorch_error(out, expected, reference.bias_gelu(x, torch.zeros_like(x[0])))
