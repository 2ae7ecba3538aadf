"""gpt_fast::bias_gelu (CPU) against the eager reference gelu_tanh(x + bias)."""

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast
from dispatch_recorder import OpRecorder

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


# --- the backward kernel (gpt_fast::bias_gelu_backward) ---

class _KernelBackward(torch.autograd.Function):
    """The reference forward with the backward kernel as its backward: gradcheck then compares the kernel (float64
    on its scalar path) with finite differences of the forward."""

    @staticmethod
    def forward(ctx, x, bias):
        ctx.save_for_backward(x, bias)
        return reference.bias_gelu(x, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, bias = ctx.saved_tensors
        grad_x = ops.bias_gelu_backward(grad_out, x, bias)
        return grad_x, grad_x.reshape(-1, grad_x.shape[-1]).sum(0)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 3, 17), (5, 33)])
def test_backward_kernel_gradcheck_float64(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = (3 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()
    bias = torch.randn(shape[-1], generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(_KernelBackward.apply, (x, bias))



@pytest.mark.parametrize("dtype", DTYPES)
def test_autograd_runs_the_backward_kernel(dtype, cpu_tier):
    """bias_gelu's registered backward calls the kernel, and its gradients (grad_bias included) are within the
    accuracy rule of the reference's autograd, on every tier."""
    g = torch.Generator().manual_seed(3)
    x, bias = (3 * torch.randn(7, 97, generator=g)).to(dtype), torch.randn(97, generator=g).to(dtype)
    grad_out = torch.randn(7, 97, generator=g).to(dtype)
    fused = [x.clone().requires_grad_(), bias.clone().requires_grad_()]
    with OpRecorder() as rec:
        ops.bias_gelu(*fused).backward(grad_out)
    assert "gpt_fast.bias_gelu_backward.default" in rec.called, rec.called
    exact = [t.clone().requires_grad_() for t in upcast(x, bias, dtype=dtype)]
    reference.bias_gelu(*exact).backward(upcast(grad_out, dtype=dtype)[0])
    same = [x.clone().requires_grad_(), bias.clone().requires_grad_()]
    reference.bias_gelu(*same).backward(grad_out)
    for a, e, s in zip(fused, exact, same):
        assert_within_pytorch_error(a.grad, e.grad, s.grad)


def test_create_graph_takes_the_reference_path():
    """backward(create_graph=True) needs differentiable gradients: the reference's, so second derivatives work."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 8, generator=g, dtype=torch.float32).requires_grad_()
    bias = torch.randn(8, generator=g).requires_grad_()
    (gx,) = torch.autograd.grad(ops.bias_gelu(x, bias).sum(), x, create_graph=True)
    (ggx,) = torch.autograd.grad(gx.sum(), x)
    x2 = x.detach().clone().requires_grad_()
    (ref_gx,) = torch.autograd.grad(reference.bias_gelu(x2, bias.detach()).sum(), x2, create_graph=True)
    (ref_ggx,) = torch.autograd.grad(ref_gx.sum(), x2)
    torch.testing.assert_close(ggx, ref_ggx)


def test_backward_empty():
    assert ops.bias_gelu_backward(torch.empty(0, 8), torch.empty(0, 8), torch.zeros(8)).shape == (0, 8)


@pytest.mark.parametrize("args, message", [
    (lambda: (torch.randn(2, 16), torch.randn(2, 15), torch.randn(15)), "grad_out shape"),
    (lambda: (torch.randn(2, 16, dtype=torch.bfloat16), torch.randn(2, 16), torch.randn(16)), "grad_out has dtype"),
    (lambda: (torch.ones(2, 4, dtype=torch.int32),) * 2 + (torch.ones(4, dtype=torch.int32),), "x must be float32"),
    (lambda: (torch.randn(2, 16), torch.randn(2, 16), torch.randn(15)), "bias must have 16 elements"),
    (lambda: (torch.tensor(1.0), torch.tensor(1.0), torch.randn(1)), "x must have at least one dimension"),
])
def test_backward_rejects_bad_input(args, message):
    with pytest.raises(RuntimeError, match=message):
        ops.bias_gelu_backward(*args())
