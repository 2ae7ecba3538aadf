"""gpt_fast::add_layernorm against the eager reference (placeholder coverage; the CPU kernel issue extends it)."""

import pytest
import torch

from accuracy import assert_within_pytorch_error, upcast
from gpt_fast import ops, reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("add_layernorm", "cpu"), reason="extension not built")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, width", [(1, 768), (7, 48), (97, 80), (3, 1)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_reference(dtype, rows, width, with_bias):
    g = torch.Generator().manual_seed(rows * width)
    x, res = (torch.randn(rows, width, generator=g).to(dtype) for _ in range(2))
    bias, w, b = (torch.randn(width, generator=g).to(dtype) for _ in range(3))
    bias = bias if with_bias else None
    expected = reference.add_layernorm(*upcast(x, res, bias, w, b, dtype=dtype), 1e-5)
    assert_within_pytorch_error(ops.add_layernorm(x, res, bias, w, b, 1e-5), expected,
                                reference.add_layernorm(x, res, bias, w, b, 1e-5))


def test_opcheck():
    x, res = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    torch.library.opcheck(torch.ops.gpt_fast.add_layernorm, (x, res, torch.randn(16), torch.randn(16), torch.randn(16), 1e-5))


@pytest.mark.parametrize("bad, message", [
    (dict(residual=torch.randn(2, 8)), "residual shape"),
    (dict(weight=torch.randn(7)), "weight must have 16"),
    (dict(ln_bias=torch.randn(16, dtype=torch.float64)), "ln_bias has dtype"),
    (dict(x=torch.randint(0, 3, (2, 16)), residual=torch.randint(0, 3, (2, 16))), "x must be float32"),
    (dict(eps=-1.0), "eps must be"),
])
def test_bad_input(bad, message):
    args = dict(x=torch.randn(2, 16), residual=torch.randn(2, 16), bias=None, weight=torch.randn(16),
                ln_bias=torch.randn(16), eps=1e-5)
    args.update(bad)
    with pytest.raises(RuntimeError, match=message):
        ops.add_layernorm(**args)


def test_gradients_match_reference():
    g = torch.Generator().manual_seed(0)
    shapes = ((3, 5, 16), (3, 5, 16), (16,), (16,), (16,))
    inputs = [torch.randn(*s, generator=g) for s in shapes]
    fused = [t.clone().requires_grad_() for t in inputs]
    eager = [t.clone().requires_grad_() for t in inputs]
    grad_out = torch.randn(3, 5, 16, generator=g)
    ops.add_layernorm(*fused, 1e-5).backward(grad_out)
    reference.add_layernorm(*eager, 1e-5).backward(grad_out)
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a.grad, b.grad)
