"""transformers' model utilities on gpt_fast's models, each against transformers on the same weights where it has
them: loss_function, dummy_inputs, add_model_tags / model_tags, get_parameter_or_buffer; and dequantize() undoing
quantize() (push_to_hub: tests/test_hub_upload.py)."""

import pytest
import torch
from conftest import HEADS, SEQ_CLS, TINY, gpt_fast_class, hf_model, load_pair, random_ids

import gpt_fast
from gpt_fast.models.linear import Conv1D

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("head", [h for h in HEADS if h != SEQ_CLS])
def test_loss_function_is_transformers(head):
    hf, ours = load_pair(head, "sdpa")
    logits = torch.randn(2, 7, TINY["vocab_size"], dtype=torch.bfloat16)
    labels = random_ids((2, 7))
    labels[0, :3] = -100
    shifted = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)
    other_ignored = labels.clamp(min=0)  # ignore_index=5 instead of -100
    for targets, kwargs in ((labels, {}), (labels, {"num_items_in_batch": torch.tensor(9)}),
                            (labels, {"shift_labels": shifted}), (other_ignored, {"ignore_index": 5})):
        expected = hf.loss_function(logits, targets, TINY["vocab_size"], **kwargs)
        got = ours.loss_function(logits, targets, TINY["vocab_size"], **kwargs)
        assert got.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="vocab_size=98"):
        ours.loss_function(logits, labels, TINY["vocab_size"] - 1)


@pytest.mark.parametrize("num_labels, labels", [(3, torch.tensor([2, 0])), (1, torch.tensor([0.5, -1.0])),
                                                (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))])
def test_sequence_classification_loss_function_is_transformers(num_labels, labels):
    hf, ours = load_pair(SEQ_CLS, "sdpa", num_labels=num_labels)
    pooled = torch.randn(2, num_labels)
    expected = hf.loss_function(labels, pooled, hf.config)
    got = ours.loss_function(labels, pooled, ours.config)
    assert ours.config.problem_type == hf.config.problem_type is not None  # both set it from the labels
    torch.testing.assert_close(got, expected)
    if labels.dtype == torch.long:
        kwargs = {"num_items_in_batch": 4, "ignore_index": 0}
        torch.testing.assert_close(ours.loss_function(labels, pooled, ours.config, **kwargs),
                                   hf.loss_function(labels, pooled, hf.config, **kwargs))


def test_dummy_inputs_model_tags_and_get_parameter_or_buffer():
    hf, ours = load_pair("OpenAIGPTLMHeadModel", "sdpa")
    assert ours.dummy_inputs.keys() == hf.dummy_inputs.keys()
    assert torch.equal(ours.dummy_inputs["input_ids"], hf.dummy_inputs["input_ids"])
    ours(**ours.dummy_inputs)
    assert ours.model_tags is None and hf.model_tags is None
    for tags in ("trl", ["sft", "trl"], ["new"]):
        ours.add_model_tags(tags)
        hf.add_model_tags(tags)
    assert ours.model_tags == hf.model_tags == ["trl", "sft", "new"]
    name = "transformer.h.1.attn.c_attn.weight"
    assert ours.get_parameter_or_buffer(name) is dict(ours.named_parameters())[name]
    with pytest.raises(AttributeError, match="no parameter or buffer 'transformer.h.1.attn.nothing'"):
        ours.get_parameter_or_buffer("transformer.h.1.attn.nothing")


@pytest.mark.parametrize("scheme, lm_head", [("int8", True), ("int4", True), ("int8", False)])
def test_dequantize_undoes_quantize(scheme, lm_head, tmp_path):
    float_model = gpt_fast_class("OpenAIGPTLMHeadModel")(gpt_fast.OpenAIGPTConfig(**TINY)).eval()
    model = gpt_fast_class("OpenAIGPTLMHeadModel")(gpt_fast.OpenAIGPTConfig(**TINY)).eval()
    model.load_state_dict(float_model.state_dict())
    model.quantize(scheme, group_size=32, lm_head=lm_head)
    dequantized_weights = {name: model.get_submodule(name).weight.clone() for name in
                           ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj")}
    assert model.dequantize() is model
    assert model.quantization is None and not hasattr(model.config, "quantization_config")
    for name, weight in dequantized_weights.items():
        layer = model.get_submodule(name)
        assert type(layer) is Conv1D and torch.equal(layer.weight, weight)  # the codes times the scales, kept
        assert not torch.equal(layer.weight, float_model.get_submodule(name).weight)
    assert model.lm_head.weight is model.transformer.tokens_embed.weight  # tied again: the float head exactly
    ids = random_ids((2, 9))
    with torch.no_grad():
        error = (model(ids).logits - float_model(ids).logits).abs().max()
    assert 0 < error < (0.05 if scheme == "int8" else 0.5)
    model.train()
    model(ids, labels=ids).loss.backward()  # trainable again
    assert model.transformer.h[0].attn.c_attn.weight.grad is not None
    model.save_pretrained(tmp_path)  # a plain checkpoint, which transformers loads to the same logits
    hf = transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model.eval()(ids).logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not quantized"):
        model.dequantize()


def test_hf_reference_model_is_used():  # the fixtures compare with transformers' own classes
    assert type(hf_model("OpenAIGPTLMHeadModel")).__module__.startswith("transformers")
