"""Quantized checkpoints: save_pretrained writes qweight/scales/zeros and config.json's quantization_config,
from_pretrained rebuilds the quantized model exactly, from_pretrained(quantization=) quantizes after the dtype
conversion, transformers refuses a quantized folder with an error, and malformed folders are clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from quantization_helpers import assert_reloads_exactly, tiny
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import gpt_fast
from gpt_fast.ops import reference
from gpt_fast.quantization import QuantizedConv1D, QuantizedLMHead


@pytest.mark.parametrize("scheme,group,lm_head", [("int8", None, True), ("int4", 32, True), ("int4", 64, False),
                                                   ("int4-a8", 32, True), ("int8-a8", 64, True)])
def test_round_trip(tmp_path, scheme, group, lm_head):
    model = tiny().quantize(scheme, group or 32, lm_head=lm_head)
    model.save_pretrained(tmp_path)
    entry = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    int8 = scheme.startswith("int8")
    assert entry == {"method": "gpt_fast_weight_only", "bits": 8 if int8 else 4, "group_size": group,
                     "lm_head": lm_head, **({"activation_bits": 8} if scheme.endswith("-a8") else {})}
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("transformer.h.1.attn.c_attn.qweight").dtype == (torch.int8 if int8 else torch.uint8)
    assert "transformer.h.0.mlp.c_proj.weight" not in keys and "transformer.h.0.mlp.c_proj.scales" in keys
    assert ("transformer.h.0.mlp.c_proj.zeros" in keys) == (not int8)
    assert ("lm_head.qweight" in keys) == lm_head and "lm_head.weight" not in keys
    assert "transformer.tokens_embed.weight" in keys
    loaded = assert_reloads_exactly(model, tmp_path)
    assert loaded.quantization == model.quantization and loaded.quantization.scheme == scheme
    assert isinstance(loaded.transformer.h[1].mlp.c_fc, QuantizedConv1D)
    assert isinstance(loaded.lm_head, QuantizedLMHead) == lm_head
    if not lm_head:
        assert loaded.lm_head.weight is loaded.transformer.tokens_embed.weight
    ids = torch.randint(0, 90, (2, 9))
    assert torch.equal(loaded.generate(ids, max_new_tokens=5), model.generate(ids, max_new_tokens=5))


def test_from_pretrained_quantizes_after_the_dtype_conversion(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    loaded = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, dtype=torch.bfloat16, quantization="int4",
                                                           quantization_group_size=64)
    assert loaded.quantization.bits == 4 and loaded.quantization.group_size == 64 and loaded.quantization.lm_head
    layer = loaded.transformer.h[0].attn.c_attn
    bf16_weight = model.transformer.h[0].attn.c_attn.weight.to(torch.bfloat16)
    q, s, z = reference.quantize_linear_weight(bf16_weight, 4, 64, in_out_layout=True)
    assert torch.equal(layer.qweight, q) and torch.equal(layer.scales, s) and torch.equal(layer.zeros, z)
    assert layer.bias.dtype == torch.bfloat16 and loaded.transformer.tokens_embed.weight.dtype == torch.bfloat16
    loaded_int8 = gpt_fast.OpenAIGPTModel.from_pretrained(tmp_path, quantization="int8")  # a base model too
    assert loaded_int8.quantization.bits == 8 and not loaded_int8.quantization.lm_head
    unquantized = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, quantization="none")
    assert unquantized.quantization is None


def test_load_errors(tmp_path):
    plain, quantized = tmp_path / "plain", tmp_path / "quantized"
    tiny().save_pretrained(plain)
    tiny().quantize("int8").save_pretrained(quantized)
    with pytest.raises(ValueError, match="unknown quantization scheme 'int3'"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(plain, quantization="int3")
    with pytest.raises(ValueError, match="int4 needs group_size"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(plain, quantization="int4", quantization_group_size=7)
    with pytest.raises(ValueError, match="saved quantized .int8.*cannot be quantized again"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(quantized, quantization="int4")
    # a quantized weight missing from the file cannot be initialised
    state = load_file(str(quantized / "model.safetensors"))
    del state["transformer.h.1.attn.c_proj.qweight"]
    save_file(state, str(quantized / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks transformer.h.1.attn.c_proj.qweight"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(quantized)
    # stored in another dtype than the format's
    state["transformer.h.1.attn.c_proj.qweight"] = torch.zeros(64, 64, dtype=torch.float32)
    save_file(state, str(quantized / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="stored as torch.float32.*needs torch.int8"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"]["activation_bits"] = 4  # no 4-bit activations
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'activation_bits' must be absent .or null., or 8, got 4 with bits 8"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(quantized)
    config["quantization_config"]["activation_bits"] = 8  # int8-a8 without its activations' group
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="int8-a8 needs group_size, a positive even int"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(quantized)
    config["quantization_config"]["bits"] = 5
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: field 'quantization_config'.*'bits' must be one of"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(quantized)
    config["quantization_config"] = {"quant_method": "bitsandbytes"}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="only its own quantized checkpoints"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(quantized)


def test_config_entry_follows_the_layers(tmp_path):
    """A config shared with a quantized model does not make an unquantized model save as quantized."""
    model = tiny()
    other = gpt_fast.OpenAIGPTLMHeadModel(model.config).eval()  # the same config object
    other.quantize("int8")
    assert model.config.quantization_config["bits"] == 8
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    assert gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path).quantization is None


def test_transformers_refuses_a_quantized_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    tiny().quantize("int4", 32).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="quant_method"):
        transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path)
