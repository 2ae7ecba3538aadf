"""Conv1D.fused: the "fused" backend's linear layers (oneDNN GEMM on a weight packed once for bf16 on CPU, else
torch GEMM plus the bias_gelu kernel), and the weight cache behind it."""

import pytest
import torch
import torch.nn.functional as F

from accuracy import assert_within_pytorch_error, upcast
from gpt_fast.modeling import Conv1D, onednn_prepacked_usable
from gpt_fast.weight_cache import PREFIX, clear


def make_layer(dtype, n_in=48, n_out=80):
    torch.manual_seed(0)
    layer = Conv1D(n_out, n_in)
    with torch.no_grad():
        layer.weight.normal_(0, 0.2)
        layer.bias.normal_(0, 0.2)
    return layer.to(dtype)


def expected(layer, x, with_bias, gelu):
    """The eager math in the reference dtype and in the layer's own dtype."""
    def run(x, w, b):
        out = x @ w + (b if with_bias or gelu else 0)
        return F.gelu(out, approximate="tanh") if gelu else out
    return run(*upcast(x, layer.weight, layer.bias, dtype=x.dtype)), run(x, layer.weight, layer.bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias, gelu", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("shape", [(1, 48), (7, 48), (2, 97, 48)])
def test_matches_eager_math(dtype, with_bias, gelu, shape):
    layer = make_layer(dtype)
    x = torch.randn(*shape).to(dtype)
    with torch.inference_mode():
        out = layer.fused(x, with_bias=with_bias, gelu=gelu)
    reference, pytorch = expected(layer, x, with_bias, gelu)
    assert out.shape == (*shape[:-1], 80)
    assert_within_pytorch_error(out, reference, pytorch)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN is not built into this torch")
def test_bf16_packs_once_and_repacks_after_an_update():
    layer = make_layer(torch.bfloat16)
    x = torch.randn(5, 48).to(torch.bfloat16)
    with torch.inference_mode():
        assert onednn_prepacked_usable(x, layer.weight)
        first = layer.fused(x, with_bias=True)
        packed = layer.__dict__[PREFIX + "onednn_weight"][1]
        layer.fused(x, with_bias=True)
        assert layer.__dict__[PREFIX + "onednn_weight"][1] is packed  # reused, not rebuilt
    with torch.no_grad():
        layer.weight.mul_(-1.0)  # in place: the cached copy is stale now
    fresh = make_layer(torch.bfloat16)
    fresh.load_state_dict(layer.state_dict())  # the updated weights, nothing cached
    with torch.inference_mode():
        updated = layer.fused(x, with_bias=True)
        assert not torch.equal(updated, first)
        torch.testing.assert_close(updated, fresh.fused(x, with_bias=True), rtol=0, atol=0)
    clear(layer)
    assert not any(name.startswith(PREFIX) for name in layer.__dict__)


def test_no_packing_when_autograd_needs_the_graph():
    layer = make_layer(torch.bfloat16)
    x = torch.randn(5, 48).to(torch.bfloat16)
    out = layer.fused(x, with_bias=True, gelu=True)  # grad mode on, weight requires grad
    assert out.requires_grad and not any(name.startswith(PREFIX) for name in layer.__dict__)
    out.float().sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None


def test_narrowing_layers_keep_torch_mm():
    """oneDNN's packed GEMM is slower than torch.mm for layers with fewer outputs than inputs (c_proj)."""
    layer = make_layer(torch.bfloat16, n_in=80, n_out=48)
    x = torch.randn(5, 80).to(torch.bfloat16)
    with torch.inference_mode():
        assert not onednn_prepacked_usable(x, layer.weight)
        out = layer.fused(x, with_bias=True)
    assert not any(name.startswith(PREFIX) for name in layer.__dict__)
    reference, pytorch = expected(layer, x, True, False)
    assert_within_pytorch_error(out, reference, pytorch)
