"""The decode step's bound layers (gpt_fast/models/linear.py: bind_layers, made once per IncrementalDecoder): each
bound call gives exactly what the layer's own forward gives under the unbound plan, every linear layer of a decode
step is bound, a decoder's steps match a decoder without binding bit for bit, and a weight changed between two
generate() calls is seen by the second (the model's forward over the sequence agrees)."""

import copy

import pytest
import torch
from conftest import seeded_prompt, tiny_lm_fixtures

from gpt_fast import ops
from gpt_fast.generation import decoder as decoder_module
from gpt_fast.models.linear import Conv1D, bind_layers, project_to_vocab
from gpt_fast.ops.kernel_plan import SMALL_M_MAX_ROWS, plan_kernels
from gpt_fast.quantization.layer import QuantizedLinear

VOCAB, N_POSITIONS = 61, 40
hf, model = tiny_lm_fixtures(7, VOCAB, N_POSITIONS)

pytestmark = pytest.mark.skipif(not ops.has_kernel("linear_small_m", "cpu"), reason="no CPU linear_small_m kernel")
SCHEMES = [None, "int8", "int4"]


def variant(model, dtype, scheme):
    out = copy.deepcopy(model).to(dtype)
    return out if scheme is None else out.quantize(scheme, 32)


def linear_layers(model):
    return [m for m in model.modules() if isinstance(m, (Conv1D, QuantizedLinear))] + [model.lm_head]


def unbound(layer, x, plan, with_bias, gelu):
    if isinstance(layer, torch.nn.Linear):  # the unquantized LM head
        return project_to_vocab(layer, x, plan)
    if isinstance(layer, QuantizedLinear) and not hasattr(layer, "bias"):  # QuantizedLMHead
        return layer(x, plan)
    return layer(x, plan, with_bias=with_bias, gelu=gelu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("rows", [1, 3, SMALL_M_MAX_ROWS])
@torch.inference_mode()
def test_bound_calls_are_the_layers_own(model, dtype, scheme, rows):
    m = variant(model, dtype, scheme)
    plan = plan_kernels(None, torch.device("cpu"), dtype)
    bound = bind_layers(m, plan, rows)
    assert plan.bound_layers is None  # the memoised plan is left alone
    assert set(bound.bound_layers) == set(linear_layers(m))  # every linear layer of a step
    torch.manual_seed(rows)
    for layer in linear_layers(m):
        K = layer.in_features if isinstance(layer, QuantizedLinear) else (
            layer.weight.shape[0] if isinstance(layer, Conv1D) else layer.weight.shape[1])
        x = torch.randn(rows, 1, K, dtype=dtype)
        head = layer is m.lm_head
        for with_bias, gelu in ([(False, False)] if head else [(True, False), (False, False), (True, True)]):
            bias = None if head or not (with_bias or gelu) else layer.bias
            got = bound.bound_layers[layer](x, bias, gelu)
            assert torch.equal(got, unbound(layer, x, plan, with_bias, gelu)), (layer, with_bias, gelu)
            # and the layer's forward under the bound plan takes that call
            assert torch.equal(unbound(layer, x, bound, with_bias, gelu), got)


@torch.inference_mode()
def test_nothing_is_bound_where_no_packed_engine_serves(model):
    plan = plan_kernels(None, torch.device("cpu"), torch.float32)
    assert bind_layers(model, plan, SMALL_M_MAX_ROWS + 1).bound_layers == {}  # the GEMMs: nothing packed
    eager = plan_kernels("eager", torch.device("cpu"), torch.float32)
    assert bind_layers(variant(model, torch.float32, "int8"), eager, 1).bound_layers == {}  # the reference path


@pytest.mark.parametrize("scheme", SCHEMES)
def test_steps_match_a_decoder_without_binding(model, scheme, monkeypatch):
    m = variant(model, torch.bfloat16, scheme)
    prompt = seeded_prompt(VOCAB, 6, batch=2)
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, output_logits=True,
                  return_dict_in_generate=True)
    bound = m.generate(prompt, **kwargs)
    monkeypatch.setattr(decoder_module, "bind_layers", lambda model, plan, rows: plan)
    plain = m.generate(prompt, **kwargs)
    assert torch.equal(bound.sequences, plain.sequences)
    for a, b in zip(bound.logits, plain.logits, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_weight_changed_between_requests_is_seen(model, scheme):
    m = variant(model, torch.float32, scheme)
    prompt = seeded_prompt(VOCAB, 5)
    kwargs = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    m.generate(prompt, **kwargs)  # binds (and packs) the weights of the moment
    with torch.no_grad():  # an in-place update of the first block's MLP (a bias: quantized layers share it)
        m.transformer.h[0].mlp.c_fc.bias.add_(0.5)
        if scheme is None:
            m.transformer.h[0].mlp.c_fc.weight.mul_(-1.0)
            m.lm_head.weight.mul_(0.5)
    again = m.generate(prompt, **kwargs)
    with torch.inference_mode():  # the model's own forward over the sequence: no cache, no binding
        reference = m(again.sequences).logits[0, prompt.shape[1] - 1:-1]  # (steps, V)
    assert len(again.logits) == reference.shape[0]
    for step, logits in enumerate(again.logits):
        torch.testing.assert_close(logits[0], reference[step], atol=1e-4, rtol=1e-4)
