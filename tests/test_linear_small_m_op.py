"""gpt_fast::pack_linear_weight + gpt_fast::linear_small_m (CPU) against reference.linear on the unpacked weight."""

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast

from gpt_fast import ops
from gpt_fast.ops import reference
from gpt_fast.ops.pack_linear_weight import packed_shape

pytestmark = pytest.mark.skipif(not ops.has_kernel("linear_small_m", "cpu"), reason="extension not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make(rows, K, N, dtype, in_out_layout, seed, with_bias=True, with_residual=False, x_shape=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*(x_shape if x_shape is not None else (rows,)), K, generator=g).to(dtype)
    weight = (torch.randn(K, N, generator=g) / K**0.5).to(dtype)  # (K, N)
    weight = weight if in_out_layout else weight.t().contiguous()  # (N, K) for nn.Linear layout
    bias = torch.randn(N, generator=g).to(dtype) if with_bias else None
    residual = torch.randn(*x.shape[:-1], N, generator=g).to(dtype) if with_residual else None
    return x, weight, bias, residual


def check(x, weight, bias, residual, gelu, in_out_layout):
    N = weight.shape[1] if in_out_layout else weight.shape[0]
    packed = ops.pack_linear_weight(weight, in_out_layout)
    actual = ops.linear_small_m(x, packed, N, bias, residual, gelu)
    upcast_args = upcast(x, weight, bias, residual, dtype=x.dtype)
    expected = reference.linear_small_m(*upcast_args, gelu=gelu, in_out_layout=in_out_layout)
    same_dtype = reference.linear_small_m(x, weight, bias, residual, gelu=gelu, in_out_layout=in_out_layout)
    assert actual.dtype == x.dtype and actual.is_contiguous()
    assert_within_pytorch_error(actual, expected, same_dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vocab_sized_lm_head(dtype, cpu_tier):
    x, w, _, _ = make(1, 768, 40478, dtype, False, 3, with_bias=False)  # tied LM head: (vocab, C)
    check(x, w, None, None, False, in_out_layout=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_dim_input_and_residual(dtype, cpu_tier):
    x, w, b, r = make(None, 96, 50, dtype, True, 4, with_residual=True, x_shape=(3, 5))  # x (3, 5, 96)
    check(x, w, b, r, True, True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_dim_input(dtype, cpu_tier):
    x, w, b, r = make(None, 40, 24, dtype, False, 8, with_residual=True, x_shape=())  # x (40,), residual (24,)
    check(x, w, b, r, False, False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(dtype, cpu_tier):
    x, w, b, r = make(6, 64, 40, dtype, True, 5, with_residual=True)
    x = x.t().contiguous().t()  # (6, 64) column-major
    b = torch.stack([b, b], dim=1)[:, 0]  # (40,), stride 2
    r = torch.stack([r, r], dim=2)[..., 0]  # (6, 40), last-dim stride 2
    assert not (x.is_contiguous() or b.is_contiguous() or r.is_contiguous())
    check(x, w, b, r, True, True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_further_apart_than_k(dtype, cpu_tier):
    x, w, b, _ = make(5, 67, 40, dtype, True, 5)
    wide = torch.zeros(5, 80, dtype=dtype)
    wide[:, 3:70] = x
    strided = wide[:, 3:70]  # (5, 67), rows 80 apart: x's fp32 copy reads each row from its own start
    assert strided.stride() == (80, 1)
    packed = ops.pack_linear_weight(w, True)
    torch.testing.assert_close(ops.linear_small_m(strided, packed, 40, b), ops.linear_small_m(x, packed, 40, b),
                               rtol=0, atol=0)


def test_empty_rows():
    packed = ops.pack_linear_weight(torch.randn(8, 20), True)
    assert ops.linear_small_m(torch.empty(0, 8), packed, 20).shape == (0, 20)


@pytest.mark.parametrize("in_out_layout", [True, False])
def test_packed_layout(in_out_layout):
    w = torch.arange(5 * 37, dtype=torch.float32).view(5, 37)  # (K, N)
    packed = ops.pack_linear_weight(w if in_out_layout else w.t(), in_out_layout)
    assert packed.shape == packed_shape(5, 37) == (3, 5, 16) and packed.is_contiguous()
    for n in (0, 15, 16, 36):
        torch.testing.assert_close(packed[n // 16, :, n % 16], w[:, n])
    assert (packed[2, :, 5:] == 0).all() and packed[2, :, 5:].signbit().all()  # columns 37..47: padding, -0.0
    torch.testing.assert_close(packed, reference.pack_linear_weight(w if in_out_layout else w.t(), in_out_layout))


def test_rejects_unknown_isa(monkeypatch):
    monkeypatch.setenv("GPT_FAST_CPU_ISA", "avx9000")
    with pytest.raises(RuntimeError,
                       match="GPT_FAST_CPU_ISA must be scalar \\(or portable\\), avx2, avx512, avx512_bf16 or amx"):
        ops.linear_small_m(**args())


def test_torch_compile_fullgraph():
    w, b = torch.randn(32, 48), torch.randn(48)
    packed = ops.pack_linear_weight(w, True)
    step = torch.compile(lambda x: ops.linear_small_m(x, packed, 48, b, x[..., :1].expand(-1, 48), True),
                         backend="eager", fullgraph=True)
    x = torch.randn(2, 32)
    torch.testing.assert_close(step(x), ops.linear_small_m(x, packed, 48, b, x[..., :1].expand(-1, 48), True))


# --- bad input: one case per test, each message names the argument ---------------------------------------------

def args(**changes):
    a = dict(x=torch.randn(2, 16), packed_weight=ops.pack_linear_weight(torch.randn(16, 40), True), out_features=40,
             bias=torch.randn(40), residual=torch.randn(2, 40), gelu=False)
    a.update(changes)
    return a


def test_rejects_scalar_x():
    with pytest.raises(RuntimeError, match="x must have at least one dimension"):
        ops.linear_small_m(**args(x=torch.tensor(1.0)))


def test_rejects_integer_x():
    with pytest.raises(RuntimeError, match="x must be float32"):
        ops.linear_small_m(**args(x=torch.ones(2, 16, dtype=torch.int32)))


def test_rejects_unpacked_weight():
    with pytest.raises(RuntimeError, match="packed_weight must have 3 dimensions"):
        ops.linear_small_m(**args(packed_weight=torch.randn(16, 40)))


def test_rejects_packed_weight_of_other_dtype():
    with pytest.raises(RuntimeError, match="packed_weight has dtype"):
        ops.linear_small_m(**args(packed_weight=ops.pack_linear_weight(torch.randn(16, 40).bfloat16(), True)))


def test_rejects_out_features_not_matching_packed_weight():
    with pytest.raises(RuntimeError, match="packed_weight has shape .* out_features=100"):
        ops.linear_small_m(**args(out_features=100, bias=None, residual=None))


def test_rejects_non_positive_out_features():
    with pytest.raises(RuntimeError, match="out_features must be positive"):
        ops.linear_small_m(**args(out_features=0, bias=None, residual=None))


def test_rejects_mismatched_k():
    with pytest.raises(RuntimeError, match="x has K=17 .* packed for 16"):
        ops.linear_small_m(**args(x=torch.randn(2, 17)))


def test_rejects_non_contiguous_packed_weight():
    packed = ops.pack_linear_weight(torch.randn(16, 40), True)
    strided = torch.empty(3, 16, 32)[:, :, ::2]
    strided.copy_(packed)
    with pytest.raises(RuntimeError, match="packed_weight must be contiguous"):
        ops.linear_small_m(**args(packed_weight=strided))


def test_rejects_bias_of_wrong_length():
    with pytest.raises(RuntimeError, match="bias must have 40 elements"):
        ops.linear_small_m(**args(bias=torch.randn(39)))


def test_rejects_bias_of_other_dtype():
    with pytest.raises(RuntimeError, match="bias has dtype"):
        ops.linear_small_m(**args(bias=torch.randn(40, dtype=torch.float64)))


def test_rejects_residual_of_wrong_shape():
    with pytest.raises(RuntimeError, match="residual must have the output shape"):
        ops.linear_small_m(**args(residual=torch.randn(2, 16)))


def test_rejects_residual_of_other_dtype():
    with pytest.raises(RuntimeError, match="residual has dtype"):
        ops.linear_small_m(**args(residual=torch.randn(2, 40).half()))


def test_pack_rejects_wrong_rank():
    with pytest.raises(RuntimeError, match="weight must have 2 dimensions"):
        ops.pack_linear_weight(torch.randn(16), True)


def test_pack_rejects_integer_weight():
    with pytest.raises(RuntimeError, match="weight must be float32"):
        ops.pack_linear_weight(torch.ones(4, 4, dtype=torch.int64), True)


def test_pack_rejects_empty_weight():
    with pytest.raises(RuntimeError, match="weight must be non-empty"):
        ops.pack_linear_weight(torch.randn(0, 4), True)
