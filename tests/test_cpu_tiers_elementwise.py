"""add_layernorm and bias_gelu on every CPU tier this CPU can execute (the cpu_tier fixture), at the row widths
around the 8- and 16-lane vector sizes of the AVX2 and AVX-512 paths (tails), with and without a large row mean,
and GELU's saturation at large |x|: cases the op matrix (tests/test_op_matrix.py) does not have.
"""

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast

from gpt_fast import ops
from gpt_fast.ops import reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("add_layernorm", "cpu"), reason="extension not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
WIDTHS = [1, 7, 8, 9, 15, 16, 17, 24, 775]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_add_layernorm_tier(cpu_tier, dtype, offset):
    g = torch.Generator().manual_seed(len(cpu_tier))
    for width in WIDTHS:
        x, res = ((torch.randn(5, width, generator=g) + offset).to(dtype) for _ in range(2))
        bias, w, b = (torch.randn(width, generator=g).to(dtype) for _ in range(3))
        for with_bias in (bias, None):
            expected = reference.add_layernorm(*upcast(x, res, with_bias, w, b, dtype=dtype), 1e-5)
            actual = ops.add_layernorm(x, res, with_bias, w, b, 1e-5)
            assert_within_pytorch_error(actual, expected, reference.add_layernorm(x, res, with_bias, w, b, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gelu_tier(cpu_tier, dtype):
    g = torch.Generator().manual_seed(len(cpu_tier))
    for width in WIDTHS + [3072]:
        x = (torch.randn(6, width, generator=g) * 4).to(dtype)  # GELU's curved part and both saturated tails
        bias = torch.randn(width, generator=g).to(dtype)
        expected = reference.bias_gelu(*upcast(x, bias, dtype=dtype))
        assert_within_pytorch_error(ops.bias_gelu(x, bias), expected, reference.bias_gelu(x, bias))


def test_bias_gelu_saturates(cpu_tier):
    x = torch.tensor([[-1e4, -100.0, -20.0, 20.0, 100.0, 1e4, 0.0, 1.0, -1.0]])
    out = ops.bias_gelu(x, torch.zeros(9))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :6], torch.tensor([0.0, 0.0, 0.0, 20.0, 100.0, 1e4]), atol=1e-30, rtol=1e-6)
    torch.testing.assert_close(out, reference.bias_gelu(x.double(), torch.zeros(9, dtype=torch.float64)).float())
