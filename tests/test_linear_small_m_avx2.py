"""The AVX2 tier of gpt_fast::linear_small_m (csrc/cpu/linear_small_m_avx2.cpp) against reference.linear.

Under GPT_FAST_CPU_ISA=avx2 on a CPU with AVX2 + FMA + F16C (elsewhere the cap runs the portable loop and these
still check it). The shapes reach each of the tier's tile shapes: 1 row with 4 blocks side by side, 2-3 rows with 2,
4-6 rows with 1, 7+ rows split into equal row tiles; N past a block (tails of 1..15 columns), K around the 64-k chunk
and bf16 whose even/odd column order is undone in the epilogue.
"""

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast

from gpt_fast import ops
from gpt_fast.ops import reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("linear_small_m", "cpu"), reason="extension not built")


def run(rows, K, N, dtype, seed, bias=True, gelu=False, residual=False, in_out_layout=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, K, generator=g).to(dtype)  # (M, K)
    w = (torch.randn(K, N, generator=g) / K**0.5).to(dtype)  # (K, N)
    w = w if in_out_layout else w.t().contiguous()
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    r = torch.randn(rows, N, generator=g).to(dtype) if residual else None
    actual = ops.linear_small_m(x, ops.pack_linear_weight(w, in_out_layout), N, b, r, gelu)
    expected = reference.linear_small_m(*upcast(x, w, b, r, dtype=dtype), gelu=gelu, in_out_layout=in_out_layout)
    same_dtype = reference.linear_small_m(x, w, b, r, gelu=gelu, in_out_layout=in_out_layout)
    assert actual.dtype == dtype and actual.shape == (rows, N)
    assert_within_pytorch_error(actual, expected, same_dtype)


@pytest.fixture(autouse=True)
def avx2(monkeypatch):
    monkeypatch.setenv("GPT_FAST_CPU_ISA", "avx2")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 33])
@pytest.mark.parametrize("K, N", [(1, 17), (2, 33), (63, 80), (64, 13), (65, 200), (129, 1000), (768, 150)])
def test_tiles_match_reference(dtype, rows, K, N):
    run(rows, K, N, dtype, seed=rows * 1000 + K + N, bias=True, gelu=True, residual=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("epilogue", [(False, False, False), (True, False, False), (False, True, False),
                                      (False, False, True)], ids=lambda e: "bias%d-gelu%d-res%d" % e)
@pytest.mark.parametrize("N", [16, 47, 200])  # not N = 1 here: 3 outputs are too few for the 3x-PyTorch rule
def test_epilogues(dtype, epilogue, N):
    bias, gelu, residual = epilogue
    run(3, 96, N, dtype, seed=N, bias=bias, gelu=gelu, residual=residual, in_out_layout=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gelu_saturates(dtype):
    # pre-activations of +-100 and more: GELU must give v and -0, not inf/NaN from the exp's range
    x = torch.tensor([[1.0], [-1.0]]).to(dtype)  # (2, 1)
    w = torch.tensor([[100.0, -100.0, 300.0, -300.0, 0.0, 1e-3, 5.0, -5.0]]).to(dtype)  # (1, 8)
    out = ops.linear_small_m(x, ops.pack_linear_weight(w, True), 8, None, None, True)
    expected = reference.linear_small_m(x.float(), w.float(), gelu=True).to(dtype)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=2 * torch.finfo(dtype).eps, atol=1e-6)
