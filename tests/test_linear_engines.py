"""Conv1D's matmul engines (gpt_fast/models/linear.py) against the eager math, the engine each call gets from the
kernel plan and its row count (whatever ran before), and the packed copies behind them (ops/weight_cache.py)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from accuracy import assert_within_pytorch_error, upcast

from gpt_fast import ops
from gpt_fast.models.linear import Conv1D
from gpt_fast.ops.kernel_plan import SMALL_M_MAX_ROWS, onednn_bf16_usable, plan_kernels
from gpt_fast.ops.weight_cache import PREFIX, clear

SMALL_M = pytest.mark.skipif(not ops.has_kernel("linear_small_m", "cpu"), reason="no CPU linear_small_m kernel built")
ONEDNN = pytest.mark.skipif(not onednn_bf16_usable("cpu"),
                            reason="oneDNN's bf16 GEMM does not run on this CPU (needs AVX-512) or torch lacks oneDNN")


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


def packed_copies(layer):
    return [name for name in layer.__dict__ if name.startswith(PREFIX)]


def plan_for(engine, dtype):
    """A plan that sends every call of the layer to `engine` ("gemm_upcast": "gemm" multiplying in float32)."""
    plan = plan_kernels(None, torch.device("cpu"), dtype)
    rows = {"small_m": 1 << 30, "onednn": 0, "gemm": 0, "gemm_upcast": 0}[engine]
    return dataclasses.replace(plan, small_m_rows=rows, onednn_bf16=engine == "onednn",
                               gemm_upcast=engine == "gemm_upcast")


ENGINES = [pytest.param("small_m", marks=SMALL_M), pytest.param("onednn", marks=ONEDNN), "gemm"]


@pytest.mark.parametrize("engine", [*ENGINES, "gemm_upcast"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias, gelu", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("shape", [(1, 48), (7, 48), (2, 97, 48)])
def test_engine_matches_eager_math(engine, dtype, with_bias, gelu, shape):
    if engine == "onednn" and dtype != torch.bfloat16:
        pytest.skip("the oneDNN engine serves bf16 only")
    layer = make_layer(dtype)
    x = torch.randn(*shape).to(dtype)
    plan = plan_for(engine, dtype)
    assert layer.engine(plan, x.numel() // 48) == engine.removesuffix("_upcast")
    with torch.inference_mode():
        out = layer(x, plan, with_bias=with_bias, gelu=gelu)
    reference, pytorch = expected(layer, x, with_bias, gelu)
    assert out.shape == (*shape[:-1], 80)
    assert_within_pytorch_error(out, reference, pytorch)


@SMALL_M
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_choose_the_engine(dtype):
    layer = make_layer(dtype)
    plan = plan_kernels(None, torch.device("cpu"), dtype)
    assert layer.engine(plan, SMALL_M_MAX_ROWS) == "small_m"
    assert layer.engine(plan, SMALL_M_MAX_ROWS + 1) in ("gemm", "onednn")
    assert layer.engine(None, 1) == "gemm"  # no plan: plain PyTorch
    train = plan_kernels(None, torch.device("cpu"), dtype, grad=True)
    assert layer.engine(train, 1) == "gemm"  # the packed engines have no autograd


@pytest.mark.parametrize("engine", ENGINES)
def test_packs_once_and_repacks_after_an_update(engine):
    if engine == "gemm":
        pytest.skip("the GEMM reads the parameter itself")
    layer = make_layer(torch.bfloat16)
    x = torch.randn(5, 48).to(torch.bfloat16)
    plan = plan_for(engine, torch.bfloat16)
    with torch.inference_mode():
        first = layer(x, plan)
        packed = layer.__dict__[PREFIX + "packed_" + engine][1]
        layer(x, plan)
        assert layer.__dict__[PREFIX + "packed_" + engine][1] is packed  # reused, not rebuilt
    with torch.no_grad():
        layer.weight.mul_(-1.0)  # in place: the cached copy is stale now
    fresh = make_layer(torch.bfloat16)
    fresh.load_state_dict(layer.state_dict())  # the updated weights, nothing cached
    with torch.inference_mode():
        updated = layer(x, plan)
        assert not torch.equal(updated, first)
        torch.testing.assert_close(updated, fresh(x, plan), rtol=0, atol=0)
    clear(layer)
    assert not packed_copies(layer)


@pytest.mark.parametrize("engine", ENGINES)
def test_repacks_after_a_fused_optimizer_step(engine):
    """torch's fused AdamW updates parameters in place without bumping their version counters: the packed copy
    must still be rebuilt (weight_cache counts optimizer steps)."""
    if engine == "gemm":
        pytest.skip("the GEMM reads the parameter itself")
    layer = make_layer(torch.bfloat16)
    x = torch.randn(5, 48).to(torch.bfloat16)
    plan = plan_for(engine, torch.bfloat16)
    with torch.no_grad():
        first = layer(x, plan)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.5, fused=True)
    layer.weight.grad = torch.ones_like(layer.weight)
    version = layer.weight._version
    optimizer.step()
    assert layer.weight._version == version, "fused AdamW bumps versions now: this test no longer covers the hook"
    fresh = make_layer(torch.bfloat16)
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        updated = layer(x, plan)
        assert not torch.equal(updated, first)
        torch.testing.assert_close(updated, fresh(x, plan), rtol=0, atol=0)


@SMALL_M
@ONEDNN
def test_the_engine_and_its_numbers_do_not_depend_on_earlier_calls():
    """A layer's call gives the same result whatever calls came before it: the first generate() and the next, a
    forward before and after generating (the engine once depended on which packed copy the layer held). One copy
    per packed engine, each made once."""
    layer = make_layer(torch.bfloat16)
    plan = plan_kernels(None, torch.device("cpu"), torch.bfloat16)
    many, few = torch.randn(40, 48).to(torch.bfloat16), torch.randn(2, 48).to(torch.bfloat16)
    with torch.inference_mode():
        assert layer.engine(plan, 40) == "onednn" and layer.engine(plan, 2) == "small_m"
        first_many = layer(many, plan, gelu=True)  # oneDNN's GELU epilogue rounds once
        assert layer.packed_engines() == ["onednn"]
        first_few = layer(few, plan)  # a decode step
        assert layer.packed_engines() == ["small_m", "onednn"]
        torch.testing.assert_close(layer(many, plan, gelu=True), first_many, rtol=0, atol=0)
        torch.testing.assert_close(layer(few, plan), first_few, rtol=0, atol=0)
        assert sorted(packed_copies(layer)) == [PREFIX + "packed_onednn", PREFIX + "packed_small_m"]
        other = make_layer(torch.bfloat16)  # the same weights, steps first
        torch.testing.assert_close(other(few, plan), first_few, rtol=0, atol=0)
        torch.testing.assert_close(other(many, plan, gelu=True), first_many, rtol=0, atol=0)
    reference, pytorch = expected(layer, many, True, True)
    assert_within_pytorch_error(first_many, reference, pytorch)


@SMALL_M
def test_weights_made_in_inference_mode():
    """A model loaded under torch.inference_mode has inference tensors (no version counter): still packed once."""
    with torch.inference_mode():
        layer = make_layer(torch.bfloat16)
        x = torch.randn(3, 48).to(torch.bfloat16)
        out = layer(x, plan_for("small_m", torch.bfloat16))
    reference, pytorch = expected(layer, x, True, False)
    assert_within_pytorch_error(out, reference, pytorch)


def test_no_packing_when_autograd_needs_the_graph():
    layer = make_layer(torch.bfloat16)
    x = torch.randn(5, 48).to(torch.bfloat16)
    plan = plan_kernels(None, torch.device("cpu"), torch.bfloat16, grad=True)
    out = layer(x, plan, with_bias=True, gelu=True)  # grad mode on, weight requires grad
    assert out.requires_grad and not packed_copies(layer)
    out.float().sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None


@ONEDNN
def test_narrowing_layers_keep_torch_mm():
    """oneDNN's packed GEMM is slower than torch.mm for layers with fewer outputs than inputs (c_proj)."""
    layer = make_layer(torch.bfloat16, n_in=80, n_out=48)
    plan = plan_for("onednn", torch.bfloat16)
    assert layer.engine(plan, 100) == "gemm"


def test_onednn_follows_the_cpu_tier(monkeypatch):
    """oneDNN's bf16 prepack raises on CPUs below AVX-512: a capped tier must not choose it."""
    from gpt_fast.ops import cpu_isa

    monkeypatch.setenv(cpu_isa.ENV, "avx2")
    assert not onednn_bf16_usable("cpu")
    assert not plan_kernels(None, torch.device("cpu"), torch.bfloat16).onednn_bf16


def _same_as_a_fresh_layer(layer, x, plan, before):
    """The layer's output equals that of a layer loaded with its current weights (nothing cached), and moved."""
    fresh = make_layer(layer.weight.dtype)
    fresh.load_state_dict(layer.state_dict())
    with torch.inference_mode():
        now = layer(x, plan)
        assert not torch.equal(now, before)
        torch.testing.assert_close(now, fresh(x, plan), rtol=0, atol=0)


@pytest.mark.parametrize("engine", [e for e in ENGINES if e != "gemm"])
@pytest.mark.parametrize("update", ["whole", "last_row", "first_row"])
def test_repacks_after_an_update_through_data(engine, update):
    """`param.data` has its own version counter: an in-place update through it bumps nothing, and the probe of
    weight_cache must see it (an EMA swap, a weight interpolation, new token rows filled in after a resize)."""
    layer = make_layer(torch.bfloat16)
    x = torch.randn(5, 48).to(torch.bfloat16)
    plan = plan_for(engine, torch.bfloat16)
    with torch.inference_mode():
        before = layer(x, plan)
    version = layer.weight._version
    rows = {"whole": slice(None), "last_row": slice(-1, None), "first_row": slice(0, 1)}[update]
    layer.weight.data[rows] = 0.5  # Conv1D's weight is (in, out): one input row
    assert layer.weight._version == version, "an update through .data bumps the version now: this test is moot"
    _same_as_a_fresh_layer(layer, x, plan, before)


@SMALL_M
def test_repacks_inference_tensors_updated_in_inference_mode():
    """Inference tensors have no version counter at all; updated in place inside inference mode, the probe sees it."""
    with torch.inference_mode():
        layer = make_layer(torch.bfloat16)
        x = torch.randn(3, 48).to(torch.bfloat16)
        plan = plan_for("small_m", torch.bfloat16)
        before = layer(x, plan)
        layer.weight.mul_(-1.0)
        assert layer.weight.is_inference()
    _same_as_a_fresh_layer(layer, x, plan, before)


@SMALL_M
def test_cache_does_not_keep_a_replaced_weight_alive():
    """The probe reads the weight through a raw view: replacing the weight frees the old one's storage."""
    layer = make_layer(torch.bfloat16)
    x = torch.randn(3, 48).to(torch.bfloat16)
    with torch.inference_mode():
        layer(x, plan_for("small_m", torch.bfloat16))
    storage = layer.weight.untyped_storage()  # one more holder of the old storage: this handle
    layer.weight = torch.nn.Parameter(torch.zeros_like(layer.weight))
    assert torch._C._storage_Use_Count(storage._cdata) == 1  # only this handle


@SMALL_M
@ONEDNN
def test_a_model_gives_the_same_numbers_before_and_after_generating():
    """The first generate() of a bf16 model used to prefill through oneDNN and every later one through PyTorch's
    GEMM (the decode steps' packed copy then took priority), so its tokens could differ from the next call's."""
    from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    torch.manual_seed(0)
    config = OpenAIGPTConfig(vocab_size=97, n_positions=64, n_embd=64, n_layer=2, n_head=2)
    model = OpenAIGPTLMHeadModel(config).to(torch.bfloat16).eval()
    ids = torch.randint(0, 97, (1, 40))  # more rows than linear_small_m takes
    kwargs = dict(max_new_tokens=4, return_dict_in_generate=True, output_logits=True)
    with torch.inference_mode():
        before = model(ids).logits
        first, second = model.generate(ids, **kwargs), model.generate(ids, **kwargs)
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    torch.testing.assert_close(second.logits, first.logits, rtol=0, atol=0)
