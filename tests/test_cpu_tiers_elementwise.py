"""add_layernorm and bias_gelu on every CPU tier (GPT_FAST_CPU_ISA = scalar, avx2, avx512) in one process.

The other op tests run the best tier this CPU has (or the one GPT_FAST_CPU_ISA names for the whole run); these
cases pin each tier in turn, at row widths around the 8- and 16-lane vector sizes (tails) and with a large row
mean (the statistics' accuracy). A tier the CPU lacks runs the best lower one, so the test still passes there.
"""

import pytest
import torch

from accuracy import assert_within_pytorch_error, upcast
from gpt_fast import ops, reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("add_layernorm", "cpu"), reason="extension not built")

TIERS = ["scalar", "avx2", "avx512"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
WIDTHS = [1, 7, 8, 9, 15, 16, 17, 24, 775]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_add_layernorm_tier(tier, dtype, offset, monkeypatch):
    monkeypatch.setenv("GPT_FAST_CPU_ISA", tier)
    g = torch.Generator().manual_seed(len(tier))
    for width in WIDTHS:
        x, res = ((torch.randn(5, width, generator=g) + offset).to(dtype) for _ in range(2))
        bias, w, b = (torch.randn(width, generator=g).to(dtype) for _ in range(3))
        for with_bias in (bias, None):
            expected = reference.add_layernorm(*upcast(x, res, with_bias, w, b, dtype=dtype), 1e-5)
            actual = ops.add_layernorm(x, res, with_bias, w, b, 1e-5)
            assert_within_pytorch_error(actual, expected, reference.add_layernorm(x, res, with_bias, w, b, 1e-5))


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gelu_tier(tier, dtype, monkeypatch):
    monkeypatch.setenv("GPT_FAST_CPU_ISA", tier)
    g = torch.Generator().manual_seed(len(tier))
    for width in WIDTHS + [3072]:
        x = (torch.randn(6, width, generator=g) * 4).to(dtype)  # GELU's curved part and both saturated tails
        bias = torch.randn(width, generator=g).to(dtype)
        expected = reference.bias_gelu(*upcast(x, bias, dtype=dtype))
        assert_within_pytorch_error(ops.bias_gelu(x, bias), expected, reference.bias_gelu(x, bias))


@pytest.mark.parametrize("tier", TIERS)
def test_bias_gelu_saturates(tier, monkeypatch):
    monkeypatch.setenv("GPT_FAST_CPU_ISA", tier)
    x = torch.tensor([[-1e4, -100.0, -20.0, 20.0, 100.0, 1e4, 0.0, 1.0, -1.0]])
    out = ops.bias_gelu(x, torch.zeros(9))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :6], torch.tensor([0.0, 0.0, 0.0, 20.0, 100.0, 1e4]), atol=1e-30, rtol=1e-6)
    torch.testing.assert_close(out, reference.bias_gelu(x.double(), torch.zeros(9, dtype=torch.float64)).float())
