"""gpt_fast::add_layernorm (CPU) against the eager reference layer_norm(x + residual [+ bias])."""

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast
from dispatch_recorder import OpRecorder

from gpt_fast import ops
from gpt_fast.ops import reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("add_layernorm", "cpu"), reason="extension not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make(shape, dtype, seed, with_bias=True, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    width = shape[-1]
    x, res = ((torch.randn(*shape, generator=g) + offset).to(dtype) for _ in range(2))
    bias, w, b = (torch.randn(width, generator=g).to(dtype) for _ in range(3))
    return x, res, (bias if with_bias else None), w, b


def check(x, res, bias, w, b, eps=1e-5):
    expected = reference.add_layernorm(*upcast(x, res, bias, w, b, dtype=x.dtype), eps)
    actual = ops.add_layernorm(x, res, bias, w, b, eps)
    assert actual.dtype == x.dtype and actual.shape == x.shape
    assert_within_pytorch_error(actual, expected, reference.add_layernorm(x, res, bias, w, b, eps))


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_dims_and_non_contiguous(dtype, cpu_tier):
    x, res, bias, w, b = make((40, 3, 5), dtype, 2)
    x, res = x.transpose(0, 2), res.transpose(0, 2)  # (5, 3, 40), strided
    bias, w, b = make((5, 80), dtype, 3)[2:]
    bias, w, b = bias[::2], w[::2], b[::2]  # (40,) each, stride 2
    assert not (x.is_contiguous() or w.is_contiguous())
    check(x, res, bias, w, b)


def test_empty_rows():
    out = ops.add_layernorm(torch.empty(0, 8), torch.empty(0, 8), None, torch.ones(8), torch.zeros(8), 1e-5)
    assert out.shape == (0, 8)


@pytest.mark.parametrize("bad, message", [
    (dict(residual=torch.randn(2, 8)), "residual shape"),
    (dict(residual=torch.randn(2, 16, dtype=torch.float64)), "residual has dtype"),
    (dict(weight=torch.randn(7)), "weight must have 16"),
    (dict(weight=torch.randn(1, 16)), "weight must have 1 dimensions"),
    (dict(ln_bias=torch.randn(16, dtype=torch.float64)), "ln_bias has dtype"),
    (dict(bias=torch.randn(15)), "bias must have 16"),
    (dict(x=torch.randint(0, 3, (2, 16)), residual=torch.randint(0, 3, (2, 16))), "x must be float32"),
    (dict(x=torch.tensor(1.0), residual=torch.tensor(1.0)), "x must have at least one dimension"),
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


# --- the backward kernel (gpt_fast::add_layernorm_backward) ---

class _KernelBackward(torch.autograd.Function):
    """The reference forward with the backward kernel as its backward: gradcheck then compares the kernel (float64
    on its scalar path) with finite differences of the forward."""

    @staticmethod
    def forward(ctx, x, res, bias, w, b):
        ctx.save_for_backward(x, res, bias, w)
        return reference.add_layernorm(x, res, bias, w, b, 1e-5)

    @staticmethod
    def backward(ctx, grad_out):
        x, res, bias, w = ctx.saved_tensors
        dv, dw, db, _ = ops.add_layernorm_backward(grad_out, x, res, bias, w, 1e-5)
        return dv, dv, dv.reshape(-1, dv.shape[-1]).sum(0), dw, db


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 3, 17), (5, 33)])
def test_backward_kernel_gradcheck_float64(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x, res = (torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    bias, w, b = (torch.randn(shape[-1], generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    assert torch.autograd.gradcheck(_KernelBackward.apply, (x, res, bias, w, b))



@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_autograd_runs_the_backward_kernel(dtype, with_bias, cpu_tier):
    """add_layernorm's registered backward calls the kernel, and every gradient (x, residual, bias, weight,
    ln_bias) is within the accuracy rule of the reference's autograd, on every tier."""
    inputs = [t for t in make((7, 97), dtype, 5, with_bias=with_bias)]
    grad_out = torch.randn(7, 97, generator=torch.Generator().manual_seed(6)).to(dtype)
    def leaves(ts):
        return [None if t is None else t.clone().requires_grad_() for t in ts]
    fused = leaves(inputs)
    with OpRecorder() as rec:
        ops.add_layernorm(*fused, 1e-5).backward(grad_out)
    assert "gpt_fast.add_layernorm_backward.default" in rec.called, rec.called
    exact = leaves(upcast(*inputs, dtype=dtype))
    reference.add_layernorm(*exact, 1e-5).backward(upcast(grad_out, dtype=dtype)[0])
    same = leaves(inputs)
    reference.add_layernorm(*same, 1e-5).backward(grad_out)
    for a, e, s in zip(fused, exact, same):
        if a is not None:
            assert_within_pytorch_error(a.grad, e.grad, s.grad)


def test_backward_empty_rows():
    dv, dw, db, dr = ops.add_layernorm_backward(torch.empty(0, 8), torch.empty(0, 8), torch.empty(0, 8), None,
                                                torch.ones(8), 1e-5, 0.1, 3)
    assert dv.shape == (0, 8) and torch.equal(dw, torch.zeros(8)) and torch.equal(db, torch.zeros(8))
    assert dr.shape == (0, 8)
    assert ops.add_layernorm(torch.empty(0, 8), torch.empty(0, 8), None, torch.ones(8), torch.zeros(8), 1e-5, 0.1,
                             3).shape == (0, 8)


@pytest.mark.parametrize("bad, message", [
    (dict(grad_out=torch.randn(2, 8)), "grad_out shape"),
    (dict(residual=torch.randn(2, 16, dtype=torch.bfloat16)), "residual has dtype"),
    (dict(weight=torch.randn(7)), "weight must have 16"),
    (dict(bias=torch.randn(15)), "bias must have 16"),
    (dict(x=torch.randint(0, 3, (2, 16)), residual=torch.randint(0, 3, (2, 16)), grad_out=torch.randint(0, 3, (2, 16))),
     "x must be float32"),
    (dict(eps=float("nan")), "eps must be"),
])
def test_backward_bad_input(bad, message):
    args = dict(grad_out=torch.randn(2, 16), x=torch.randn(2, 16), residual=torch.randn(2, 16), bias=None,
                weight=torch.randn(16), eps=1e-5)
    args.update(bad)
    with pytest.raises(RuntimeError, match=message):
        ops.add_layernorm_backward(**args)
