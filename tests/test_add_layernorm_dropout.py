"""gpt_fast::add_layernorm and add_layernorm_backward with residual dropout: layer_norm(x + dropout(residual +
bias)), the mask Philox's under the call's seed (csrc/philox.h; oracle gpt_fast.ops.philox). On every CPU tier
(each draws the bits with its own code: scalar, 8 or 16 Philox blocks side by side), against the reference fed the
same mask: forward, backward (grad_x, grad_weight, grad_ln_bias, grad_residual) and autograd; gradcheck in float64;
opcheck with autograd; the mask itself (the same in the forward and the backward, the oracle's, per seed, keep
rate); bad dropout_p."""

import math

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast
from dispatch_recorder import OpRecorder
from torch._subclasses.fake_tensor import FakeTensorMode

from gpt_fast import ops
from gpt_fast.ops import philox, reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("add_layernorm", "cpu"), reason="extension not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(r, c) for r in (1, 7, 97) for c in (1, 7, 768, 769)]  # rows * C % 4 != 0 for most rows of 7, 769
SEEDS = [12345, -1, 2**63 - 1, -(2**63)]  # -1: every key bit set


def make(rows, C, dtype, seed, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    x, res, grad = (torch.randn(rows, C, generator=g).to(dtype) for _ in range(3))
    bias, w, b = (torch.randn(C, generator=g).to(dtype) for _ in range(3))
    w = 1 + 0.1 * w
    return x, res, (bias if with_bias else None), w, b, grad


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_and_backward_match_the_reference(dtype, cpu_tier):
    for i, (rows, C) in enumerate(SHAPES):
        x, res, bias, w, b, grad = make(rows, C, dtype, i, with_bias=i % 2 == 0)
        p, seed = (0.1, 0.5, 0.9)[i % 3], SEEDS[i % 4]
        where = f"rows {rows} C {C} p {p} seed {seed} on {cpu_tier}"
        out = ops.add_layernorm(x, res, bias, w, b, 1e-5, p, seed)
        expected = reference.add_layernorm(*upcast(x, res, bias, w, b, dtype=dtype), 1e-5, p, seed)
        same = reference.add_layernorm(x, res, bias, w, b, 1e-5, p, seed)
        assert out.dtype == dtype and out.shape == x.shape, where
        assert_within_pytorch_error(out, expected, same)
        actual = ops.add_layernorm_backward(grad, x, res, bias, w, 1e-5, p, seed)
        expected = reference.add_layernorm_backward(*upcast(grad, x, res, bias, w, dtype=dtype), 1e-5, p, seed)
        same = reference.add_layernorm_backward(grad, x, res, bias, w, 1e-5, p, seed)
        for k, (a, e, s) in enumerate(zip(actual, expected, same, strict=True)):
            assert a.dtype == dtype and a.shape == e.shape, (where, k)
            try:
                assert_within_pytorch_error(a, e, s)
            except AssertionError as error:
                raise AssertionError(f"{where}, output {k}: {error}") from None


def test_zero_p_is_the_op_without_dropout(cpu_tier):
    x, res, bias, w, b, grad = make(7, 769, torch.float32, 3)
    without = ops.add_layernorm(x, res, bias, w, b, 1e-5)
    assert torch.equal(ops.add_layernorm(x, res, bias, w, b, 1e-5, 0.0, 99), without)
    with_seed = ops.add_layernorm_backward(grad, x, res, bias, w, 1e-5, 0.0, 99)
    without = ops.add_layernorm_backward(grad, x, res, bias, w, 1e-5)
    assert with_seed[3].shape == (0,) and without[3].shape == (0,)
    for a, e in zip(with_seed[:3], without[:3]):
        assert torch.equal(a, e)


def observed_masks(shape, p, seed, dtype=torch.float32):
    """(forward's mask, backward's mask) as the kernels apply them: with x = 0, residual = 1 and an identity
    LayerNorm, a kept element is the row's only positive values; the backward keeps where grad_residual != 0."""
    rows, C = shape
    x, res, w, b = torch.zeros(shape, dtype=dtype), torch.ones(shape, dtype=dtype), torch.ones(C, dtype=dtype), \
        torch.zeros(C, dtype=dtype)
    forward = ops.add_layernorm(x, res, None, w, b, 1e-5, p, seed) > 0
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grad_v, _, _, grad_residual = ops.add_layernorm_backward(grad, torch.randn(shape, dtype=dtype), res, None, w,
                                                             1e-5, p, seed)
    assert (grad_v != 0).all()
    return forward, grad_residual != 0


@pytest.mark.parametrize("shape", [(97, 769), (5, 7)])
def test_same_mask_forward_and_backward_as_the_oracle(shape, cpu_tier):
    for seed in SEEDS:
        forward, backward = observed_masks(shape, 0.5, seed)
        expected = philox.keep_mask(seed, shape, 0.5)
        rows_mixed = expected.any(1) & ~expected.all(1)  # rows all kept or all dropped show no positive value
        assert torch.equal(forward[rows_mixed], expected[rows_mixed]), (seed, cpu_tier)
        assert torch.equal(backward, expected), (seed, cpu_tier)


def test_seeds_give_different_masks_and_the_keep_rate(cpu_tier):
    shape = (64, 1024)
    masks = {seed: observed_masks(shape, 0.1, seed)[1] for seed in (1, 2, 2**32 + 1)}
    assert not torch.equal(masks[1], masks[2]) and not torch.equal(masks[1], masks[2**32 + 1])
    for p in (0.1, 0.5, 0.9):
        kept = observed_masks(shape, p, 7)[1].double().mean().item()
        sigma = math.sqrt(p * (1 - p) / (shape[0] * shape[1]))
        assert abs(kept - (1 - p)) < 5 * sigma, (p, kept)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_autograd_runs_the_backward_kernel(dtype, with_bias, cpu_tier):
    """Every gradient (x, residual, bias, weight, ln_bias) through the registered backward (the kernel) against
    the reference's autograd with the same mask."""
    x, res, bias, w, b, grad = make(7, 97, dtype, 5, with_bias=with_bias)
    inputs = [x, res, bias, w, b]

    def leaves(ts):
        return [None if t is None else t.clone().requires_grad_() for t in ts]
    fused = leaves(inputs)
    with OpRecorder() as rec:
        ops.add_layernorm(*fused, 1e-5, 0.25, 77).backward(grad)
    assert "gpt_fast.add_layernorm_backward.default" in rec.called, rec.called
    exact = leaves(upcast(*inputs, dtype=dtype))
    reference.add_layernorm(*exact, 1e-5, 0.25, 77).backward(upcast(grad, dtype=dtype)[0])
    same = leaves(inputs)
    reference.add_layernorm(*same, 1e-5, 0.25, 77).backward(grad)
    for a, e, s in zip(fused, exact, same):
        if a is not None:
            assert_within_pytorch_error(a.grad, e.grad, s.grad)


class _KernelBackward(torch.autograd.Function):
    """The reference forward (Philox mask) with the backward kernel (float64, scalar path) as its backward."""

    @staticmethod
    def forward(ctx, x, res, bias, w, b, p, seed):
        ctx.save_for_backward(x, res, bias, w)
        ctx.p, ctx.seed = p, seed
        return reference.add_layernorm(x, res, bias, w, b, 1e-5, p, seed)

    @staticmethod
    def backward(ctx, grad_out):
        x, res, bias, w = ctx.saved_tensors
        dv, dw, db, dr = ops.add_layernorm_backward(grad_out, x, res, bias, w, 1e-5, ctx.p, ctx.seed)
        return dv, dr, dr.reshape(-1, dr.shape[-1]).sum(0), dw, db, None, None


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 3, 17), (5, 33)])
def test_backward_kernel_gradcheck_float64(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x, res = (torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    bias, w, b = (torch.randn(shape[-1], generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    assert torch.autograd.gradcheck(_KernelBackward.apply, (x, res, bias, w, b, 0.3, 2024))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck_with_dropout(dtype):
    x, res, bias, w, b, grad = make(7, 97, dtype, 8)
    leaves = [t.clone().requires_grad_() for t in (x, res, bias, w, b)]
    torch.library.opcheck(torch.ops.gpt_fast.add_layernorm, (*leaves, 1e-5, 0.1, -5))
    torch.library.opcheck(torch.ops.gpt_fast.add_layernorm_backward, (grad, x, res, bias, w, 1e-5, 0.1, -5))


BAD_P = [-0.1, -0.0 - 1e-300, 1.0, 1.5, math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("p", BAD_P)
def test_bad_dropout_p(p):
    x, res, bias, w, b, grad = make(2, 16, torch.float32, 9)
    with pytest.raises(RuntimeError, match="gpt_fast::add_layernorm: dropout_p must lie in \\[0, 1\\)"):
        ops.add_layernorm(x, res, bias, w, b, 1e-5, p, 1)
    with pytest.raises(RuntimeError, match="gpt_fast::add_layernorm_backward: dropout_p must lie in \\[0, 1\\)"):
        ops.add_layernorm_backward(grad, x, res, bias, w, 1e-5, p, 1)
    with FakeTensorMode() as mode, pytest.raises(ValueError, match="dropout_p must lie in"):
        ops.add_layernorm(*(mode.from_tensor(t) for t in (x, res, bias, w, b)), 1e-5, p, 1)
    with pytest.raises(ValueError, match="dropout probability must lie in"):
        reference.add_layernorm(x, res, bias, w, b, 1e-5, p, 1)
