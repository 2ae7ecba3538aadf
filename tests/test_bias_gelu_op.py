"""gpt_fast::bias_gelu (CPU) against the eager reference gelu_tanh(x + bias)."""

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast

from gpt_fast import ops
from gpt_fast.ops import reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("bias_gelu", "cpu"), reason="extension not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def check(x, bias):
    expected = reference.bias_gelu(*upcast(x, bias, dtype=x.dtype))
    actual = ops.bias_gelu(x, bias)
    assert actual.dtype == x.dtype and actual.is_contiguous()
    assert_within_pytorch_error(actual, expected, reference.bias_gelu(x, bias))


@pytest.mark.parametrize("dtype", DTYPES)
def test_saturated_and_special_values(dtype, cpu_tier):
    x = torch.tensor([-1e4, -100.0, -20.0, -9.0, -3.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 3.0, 9.0, 20.0, 100.0, 1e4,
                      -6.0, 6.0]).to(dtype)
    check(x.view(1, -1), torch.zeros(x.numel(), dtype=dtype))
    out = ops.bias_gelu(torch.tensor([float("nan"), 1.0], dtype=dtype), torch.zeros(2, dtype=dtype))
    assert out[0].isnan() and out[1].isfinite()


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_dims_and_non_contiguous(dtype, cpu_tier):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 3, 7, generator=g).to(dtype).transpose(0, 2)  # (7, 3, 40), strided
    bias = torch.randn(80, generator=g).to(dtype)[::2]  # (40,), stride 2
    assert not x.is_contiguous() and not bias.is_contiguous()
    check(x, bias)


def test_empty():
    assert ops.bias_gelu(torch.empty(0, 8), torch.zeros(8)).shape == (0, 8)


def test_rejects_scalar_x():
    with pytest.raises(RuntimeError, match="x must have at least one dimension"):
        ops.bias_gelu(torch.tensor(1.0), torch.randn(1))


def test_rejects_integer_x():
    with pytest.raises(RuntimeError, match="x must be float32"):
        ops.bias_gelu(torch.ones(2, 4, dtype=torch.int32), torch.ones(4, dtype=torch.int32))


def test_rejects_bias_of_wrong_length():
    with pytest.raises(RuntimeError, match="bias must have 16 elements"):
        ops.bias_gelu(torch.randn(2, 16), torch.randn(15))


def test_rejects_bias_of_wrong_rank():
    with pytest.raises(RuntimeError, match="bias must have 1 dimensions"):
        ops.bias_gelu(torch.randn(2, 16), torch.randn(1, 16))


def test_rejects_bias_of_other_dtype():
    with pytest.raises(RuntimeError, match="bias has dtype"):
        ops.bias_gelu(torch.randn(2, 16), torch.randn(16, dtype=torch.bfloat16))


def test_gradients_match_reference():
    g = torch.Generator().manual_seed(0)
    x, bias, grad_out = torch.randn(4, 24, generator=g), torch.randn(24, generator=g), torch.randn(4, 24, generator=g)
    fused = [x.clone().requires_grad_(), bias.clone().requires_grad_()]
    eager = [x.clone().requires_grad_(), bias.clone().requires_grad_()]
    ops.bias_gelu(*fused).backward(grad_out)
    reference.bias_gelu(*eager).backward(grad_out)
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a.grad, b.grad)
    torch.library.opcheck(torch.ops.gpt_fast.bias_gelu, (x.clone().requires_grad_(), bias.clone().requires_grad_()))
