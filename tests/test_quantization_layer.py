"""Weight-only quantized layers and model.quantize(): every engine against ops/reference.py's linear_quantized, the
model against an unquantized copy holding the dequantized weights, generation, dtype moves, torch.compile and the
errors (unknown scheme, bad group size, quantizing twice, gradients)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import gpt_fast
from gpt_fast.models.linear import Conv1D
from gpt_fast.ops import cpu_isa, has_kernel, reference
from gpt_fast.ops.kernel_plan import AMX_QUANTIZED_ROWS, plan_kernels
from gpt_fast.quantization import QuantizedConv1D, QuantizedLMHead
from gpt_fast.quantization.config import make_config

SCHEMES = [("int8", None), ("int4", 32), ("int4", 64)]
CONFIG = dict(vocab_size=90, n_positions=32, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2)


def tiny(**overrides):
    torch.manual_seed(0)
    return gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**{**CONFIG, **overrides})).eval()


def dequantized_copy(quantized, original):
    """An unquantized model whose every quantized layer holds its dequantized weight (the float32 reference)."""
    model = copy.deepcopy(original).float()
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, QuantizedConv1D):
                model.get_submodule(name).weight.copy_(module.dequantized(torch.float32).t())
        if isinstance(getattr(quantized, "lm_head", None), QuantizedLMHead):
            model.lm_head.weight = torch.nn.Parameter(quantized.lm_head.dequantized(torch.float32))
    return model


@pytest.mark.parametrize("scheme,group", [*SCHEMES, ("int4-a8", 32), ("int8-a8", 32)])
# the kernel engine (<= plan.small_m_rows), dequantize + GEMM (on AMX in bf16 the schemes of plan.quantized_rows
# take the kernel further: 40, 300) and past that (600)
@pytest.mark.parametrize("rows", [1, 5, 40, 300, 600])
@pytest.mark.parametrize("gelu,with_bias", [(False, True), (True, True), (False, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_matches_reference(scheme, group, rows, gelu, with_bias, dtype):
    torch.manual_seed(1)
    conv = Conv1D(96, 128)
    torch.nn.init.normal_(conv.weight, std=0.2)
    torch.nn.init.normal_(conv.bias, std=0.2)
    conv = conv.to(dtype)
    config = make_config(scheme, group)
    layer = QuantizedConv1D.from_conv1d(conv, config)
    q, s, z = reference.quantize_linear_weight(conv.weight, config.bits, group, in_out_layout=True)
    for name, expected in (("qweight", q), ("scales", s), ("zeros", z)):
        got = getattr(layer, name)
        assert (got is None and expected is None) or torch.equal(got, expected), name
    x = torch.randn(rows, 128).to(dtype)
    plan = plan_kernels(None, torch.device("cpu"), dtype)
    with torch.no_grad():
        out = layer(x.view(1, rows, 128), plan, with_bias=with_bias, gelu=gelu).view(rows, 96)
        raised = [r for s, g, r in plan.quantized_rows if (s, g) == (scheme, group or 0)]
        assert layer.engine(plan, rows) == ("kernel" if rows <= max([32, *raised]) else "dequantize")
    expected = reference.linear_quantized(x.float(), q, s, z, config.bits, group,
                                          conv.bias.float() if with_bias or gelu else None, None, gelu,
                                          config.activation_bits or 0)
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.08, rtol=0.02)
    torch.testing.assert_close(out.float(), expected, **tolerance)


@pytest.mark.parametrize("scheme,group", SCHEMES)
@pytest.mark.parametrize("lm_head", [True, False])
def test_model_matches_its_dequantized_weights(scheme, group, lm_head):
    model = tiny()
    quantized = copy.deepcopy(model).quantize(scheme, group or 32, lm_head=lm_head)
    expected_model = dequantized_copy(quantized, model)
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(quantized(ids).logits, expected_model(ids).logits, atol=1e-4, rtol=1e-4)
    kinds = {type(m).__name__ for m in quantized.modules()}
    assert "Conv1D" not in kinds and "QuantizedConv1D" in kinds
    assert isinstance(quantized.lm_head, QuantizedLMHead) == lm_head
    embed = quantized.transformer.tokens_embed.weight
    torch.testing.assert_close(embed, model.transformer.tokens_embed.weight, atol=0, rtol=0)  # kept in the dtype
    assert isinstance(embed, torch.nn.Parameter) and embed.dtype == torch.float32
    assert (quantized.lm_head.weight is embed) == (not lm_head)  # tied only when the head is not quantized
    assert quantized.quantization == make_config(scheme, group or 32, lm_head)
    assert not quantized.training


@pytest.mark.parametrize("scheme,group", [("int8", None), ("int4", 32)])
def test_generation_on_quantized_model(scheme, group):
    """Greedy (batch with left padding), sampling with a seed: the same tokens as the model holding the
    dequantized weights."""
    model = tiny()
    quantized = copy.deepcopy(model).quantize(scheme, group or 32)
    expected_model = dequantized_copy(quantized, model)
    ids = torch.randint(1, CONFIG["vocab_size"], (3, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    greedy = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(quantized.generate(ids, **greedy), expected_model.generate(ids, **greedy))
    sampled = dict(attention_mask=mask, max_new_tokens=8, do_sample=True, top_k=20, seed=3, pad_token_id=0)
    first = quantized.generate(ids, **sampled)
    torch.testing.assert_close(first, quantized.generate(ids, **sampled))
    torch.testing.assert_close(first, expected_model.generate(ids, **sampled))


@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_int8_activations_generation_agrees_with_a_full_forward(weights):
    """int4-a8 / int8-a8 round each row's activations on their own: greedy tokens of the decode steps (one row a
    call, the kernel) are the argmax of one forward over the whole batch (45 rows: the dequantize + GEMM engine),
    and differ from the weight-only scheme's logits (the rounding happens)."""
    model = tiny()
    a8 = copy.deepcopy(model).quantize(f"{weights}-a8", 32)
    ids = torch.randint(1, CONFIG["vocab_size"], (3, 7))
    out = a8.generate(ids, max_new_tokens=8, do_sample=False)  # (3, 15)
    with torch.no_grad():
        logits = a8(out).logits  # (3, 15, V)
        weight_only = copy.deepcopy(model).quantize(weights, 32)(out).logits
    torch.testing.assert_close(logits.argmax(-1)[:, 6:-1], out[:, 7:], rtol=0, atol=0)
    assert (logits - weight_only).abs().max() > 1e-4


def test_state_dict_buffers_and_dtype_moves():
    quantized = tiny().quantize("int4", 32)
    state = quantized.state_dict()
    layer = "transformer.h.0.mlp.c_fc"  # W (256, 64)
    assert state[f"{layer}.qweight"].dtype == torch.uint8 and state[f"{layer}.qweight"].shape == (256, 32)
    assert state[f"{layer}.scales"].dtype == torch.bfloat16 and state[f"{layer}.scales"].shape == (256, 2)
    assert state[f"{layer}.zeros"].shape == (256, 2) and f"{layer}.weight" not in state
    assert state["lm_head.qweight"].shape == (90, 32) and "lm_head.weight" not in state
    before = {k: v.clone() for k, v in state.items()}
    moved = quantized.to(torch.bfloat16)
    after = moved.state_dict()
    for key, value in before.items():
        if key.endswith((".qweight", ".scales", ".zeros")):
            assert torch.equal(after[key], value), key  # the quantized format never changes dtype
        else:
            assert after[key].dtype == torch.bfloat16, key
    assert moved.lm_head.dtype == torch.bfloat16 and moved.lm_head.weight.dtype == torch.bfloat16
    int8_model = tiny().quantize("int8")
    int8 = {k: v.clone() for k, v in int8_model.state_dict().items()}
    assert int8[f"{layer}.qweight"].dtype == torch.int8 and int8[f"{layer}.scales"].shape == (256, 1)
    assert f"{layer}.zeros" not in int8
    half = int8_model.half().state_dict()  # float32 scales stay float32, exactly
    assert half[f"{layer}.scales"].dtype == torch.float32 and torch.equal(half[f"{layer}.scales"],
                                                                          int8[f"{layer}.scales"])
    assert half[f"{layer}.bias"].dtype == torch.float16
    with torch.no_grad():  # a bf16 quantized model runs (kernel and dequantize engines)
        moved.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3)
        moved(torch.randint(0, 90, (2, 30)))


def test_engine_choice():
    layer = QuantizedConv1D.from_conv1d(Conv1D(96, 64), make_config("int8"))
    fused = plan_kernels(None, torch.device("cpu"), torch.float32)
    eager = plan_kernels("eager", torch.device("cpu"), torch.float32)
    float64 = plan_kernels(None, torch.device("cpu"), torch.float64)  # no linear_small_m: the kernel rows stay
    with torch.no_grad():
        assert [layer.engine(fused, rows) for rows in (1, 32, 33)] == ["kernel", "kernel", "dequantize"]
        assert layer.engine(float64, 1) == "kernel" and float64.small_m_rows == 0
        assert layer.engine(eager, 1) == "dequantize" and layer.engine(None, 1) == "dequantize"
    with torch.enable_grad():
        assert layer.engine(fused, 1) == "dequantize"


def test_engine_choice_with_quantized_rows():
    """A plan with AMX's bounds (plan.quantized_rows) sends int8 layers whose in_features is a multiple of 32 to the
    kernel up to 384 rows, int4-a8 g32 up to 64; int4, other widths and group sizes keep 32 rows."""
    bf16 = plan_kernels(None, torch.device("cpu"), torch.bfloat16)
    amx = dataclasses.replace(bf16, quantized_rows=AMX_QUANTIZED_ROWS)
    assert {(s, g): r for s, g, r in AMX_QUANTIZED_ROWS} == {("int8", 0): 384, ("int4-a8", 32): 64}

    def layer(in_features, scheme, group=32):
        return QuantizedConv1D.from_conv1d(Conv1D(96, in_features), make_config(scheme, group))

    with torch.no_grad():
        for quantized, bound in ((layer(64, "int8"), 384), (layer(64, "int4"), 32), (layer(64, "int4-a8"), 64),
                                 (layer(48, "int8"), 32),  # 48 % 32 != 0: no AMX tiles
                                 (layer(64, "int4", 64), 32), (layer(64, "int4-a8", 64), 32)):
            assert [quantized.engine(amx, rows) for rows in (1, 32, bound, bound + 1)] == [
                "kernel", "kernel", "kernel", "dequantize"], (quantized.bits, quantized.group_size, bound)
            assert quantized.engine(dataclasses.replace(bf16, quantized_rows=()), 33) == "dequantize"
    with torch.enable_grad():
        assert layer(64, "int8").engine(amx, 33) == "dequantize"


@pytest.mark.parametrize("isa,dtype", [("amx", torch.bfloat16), ("avx512_bf16", torch.bfloat16),
                                       ("amx", torch.float32)])
def test_plan_has_quantized_rows_only_on_amx_in_bf16(monkeypatch, isa, dtype):
    if isa == "amx" and cpu_isa.detected_level() != "amx":
        pytest.skip(f"this CPU has no AMX (tier {cpu_isa.detected_level()})")
    monkeypatch.setenv(cpu_isa.ENV, isa)
    plan = plan_kernels(None, torch.device("cpu"), dtype)
    on_amx = isa == "amx" and dtype == torch.bfloat16 and has_kernel("linear_quantized", "cpu")
    assert plan.quantized_rows == (AMX_QUANTIZED_ROWS if on_amx else ())
    assert plan_kernels("eager", torch.device("cpu"), dtype).quantized_rows == ()


def test_every_head_has_quantize():
    config = gpt_fast.OpenAIGPTConfig(**CONFIG, pad_token_id=0)
    for cls in (gpt_fast.OpenAIGPTModel, gpt_fast.OpenAIGPTDoubleHeadsModel,
                gpt_fast.OpenAIGPTForSequenceClassification):
        model = cls(copy.deepcopy(config)).eval()
        ids = torch.randint(1, 90, (1, 2, 6)) if cls is gpt_fast.OpenAIGPTDoubleHeadsModel else torch.randint(1, 90,
                                                                                                              (2, 6))
        original = copy.deepcopy(model)
        with torch.no_grad():
            after = model.quantize("int8")(ids)[0]
            expected = dequantized_copy(model, original)(ids)[0]
        torch.testing.assert_close(after, expected, atol=1e-4, rtol=1e-4)
        assert model.quantization.lm_head == hasattr(model, "lm_head")


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown quantization scheme 'int3'"):
        tiny().quantize("int3")
    for bad in (0, 3, -32, None, 32.0):
        with pytest.raises(ValueError, match="positive even int"):
            tiny().quantize("int4", bad)
    gpt1_width = tiny(n_embd=768, n_head=12, n_layer=1, vocab_size=10, n_positions=8)
    with pytest.raises(ValueError, match="does not divide the input width.*768"):
        gpt1_width.quantize("int4", 40)
    assert all(isinstance(m, Conv1D) for m in (gpt1_width.transformer.h[0].attn.c_attn,))  # left untouched
    model = tiny().quantize("int8")
    with pytest.raises(ValueError, match="already quantized"):
        model.quantize("int4")
    with pytest.raises(ValueError, match="quantized model is not supported"):
        model.resize_token_embeddings(100)


def test_gradients_through_quantized_weights_are_refused():
    model = tiny().quantize("int4", 32)
    ids = torch.randint(0, 90, (2, 8))
    model.train()
    with pytest.raises(RuntimeError, match="inference only"):
        model(ids, labels=ids).loss.backward()
    model.eval()
    model.transformer.h[0].attn.c_attn.scales.requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference only"):
        model(ids)
    model.transformer.h[0].attn.c_attn.scales.requires_grad_(False)
    model(ids).logits.sum().backward()  # eval mode with grad on: no gradient reaches a quantized weight
    assert all(b.grad is None for b in model.buffers())
    with torch.no_grad():
        model.train()(ids)  # training mode without gradients (e.g. dropout sampling) is inference


@pytest.mark.slow  # inductor compiles for tens of seconds on 2 shared cores
def test_compiled_quantized_forward_matches_eager():
    model = tiny().quantize("int4", 32)
    ids = torch.randint(0, 90, (2, 12))
    with torch.no_grad():
        expected = model(ids).logits
        compiled = torch.compile(model, fullgraph=True)(ids).logits
    torch.testing.assert_close(compiled, expected, atol=1e-4, rtol=1e-4)


def test_fused_lm_loss_reads_the_dequantized_head():
    model = tiny().quantize("int4", 32)
    ids = torch.randint(0, 90, (2, 16))
    with torch.no_grad():
        fused = model(ids, labels=ids, return_logits=False).loss  # reads lm_head.weight (dequantized)
        plain = model(ids, labels=ids).loss
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


def test_the_packed_weight_is_made_once_per_weight_version(monkeypatch):
    from gpt_fast.quantization import layer as layer_module

    calls = []
    real = layer_module.pack_quantized_weight

    def counting(*args):
        calls.append(args[3])
        return real(*args)

    monkeypatch.setattr(layer_module, "pack_quantized_weight", counting)
    model = tiny().quantize("int4", 32)
    ids = torch.randint(0, 90, (1, 5))
    model.generate(ids, max_new_tokens=6)
    assert len(calls) == 2 * 4 + 1  # every block's four layers and the head, once for all the steps
    model.generate(ids, max_new_tokens=6)
    assert len(calls) == 9
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.scales.mul_(1.0)  # an in-place update: that layer packs again
    model.generate(ids, max_new_tokens=2)
    assert len(calls) == 10


def test_a_forward_passes_its_plan_to_the_quantized_head(monkeypatch):
    """model(ids, logits_to_keep=1): the head's one row takes the decode kernel, as generate's last-token logits do,
    instead of dequantizing the whole (vocab, n_embd) head (calls with more rows than the kernel serves still do)."""
    model = tiny().quantize("int8")
    ids = torch.randint(0, 90, (1, 30))
    with torch.no_grad():
        expected = model(ids).logits[:, -1:]
        monkeypatch.setattr(type(model.lm_head), "dequantized", lambda *a: pytest.fail("the head was dequantized"))
        torch.testing.assert_close(model(ids, logits_to_keep=1).logits, expected, atol=1e-5, rtol=1e-5)
