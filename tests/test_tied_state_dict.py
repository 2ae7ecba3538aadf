"""The tied LM head is held once in state dicts (gpt_fast/models/tied_state_dict.py): safetensors can save the dict,
strict loading takes it back (tied again), transformers' dict (both keys) loads, an untied or quantized head keeps
its own key, and a prefix (a wrapping module) is followed."""

import pytest
import safetensors.torch
import torch

import gpt_fast

CONFIG = dict(vocab_size=61, n_positions=16, n_embd=24, n_layer=1, n_head=3)


def model(cls="OpenAIGPTLMHeadModel", **overrides):
    torch.manual_seed(len(overrides))
    return getattr(gpt_fast, cls)(gpt_fast.OpenAIGPTConfig(**CONFIG, **overrides))


@pytest.mark.parametrize("cls", ["OpenAIGPTLMHeadModel", "OpenAIGPTDoubleHeadsModel"])
def test_a_tied_head_is_held_once_and_loads_back_tied(cls, tmp_path):
    source, target = model(cls), model(cls, initializer_range=0.5)
    state = source.state_dict()
    assert "lm_head.weight" not in state and "transformer.tokens_embed.weight" in state
    safetensors.torch.save_file(state, str(tmp_path / "m.safetensors"))  # refused with the head's key too
    target.load_state_dict(safetensors.torch.load_file(str(tmp_path / "m.safetensors")), strict=True)
    assert target.lm_head.weight is target.transformer.tokens_embed.weight
    torch.testing.assert_close(target.lm_head.weight, source.lm_head.weight, rtol=0, atol=0)


def test_transformers_state_dicts_load_both_ways():
    transformers = pytest.importorskip("transformers")
    theirs = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**CONFIG))
    ours = model()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # both keys: one tensor
    torch.testing.assert_close(ours.lm_head.weight, theirs.lm_head.weight, rtol=0, atol=0)
    result = theirs.load_state_dict(model(initializer_range=0.3).state_dict(), strict=False)
    assert result.missing_keys == ["lm_head.weight"] and result.unexpected_keys == []
    assert theirs.lm_head.weight is theirs.transformer.tokens_embed.weight  # still tied: loaded through the table


def test_untied_and_quantized_heads_keep_their_key():
    untied = model(tie_word_embeddings=False)
    assert "lm_head.weight" in untied.state_dict()
    quantized = model()
    quantized.quantize("int8", lm_head=True)
    assert any(key.startswith("lm_head.") for key in quantized.state_dict())


def test_a_wrapping_modules_prefix_is_followed():
    wrapper = torch.nn.ModuleDict({"inner": model()})
    state = wrapper.state_dict()
    assert "inner.lm_head.weight" not in state and "inner.transformer.tokens_embed.weight" in state
    fresh = torch.nn.ModuleDict({"inner": model(initializer_range=0.5)})
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh["inner"].lm_head.weight, wrapper["inner"].lm_head.weight, rtol=0, atol=0)


@pytest.mark.parametrize("cls", ["OpenAIGPTLMHeadModel", "OpenAIGPTDoubleHeadsModel"])
def test_a_model_built_on_the_meta_device_loads_and_is_tied_again(cls):
    """PyTorch's deferred initialisation: build on "meta", to_empty() (which makes each module's tensors anew, so
    the head is no longer the table), load_state_dict. The model comes back tied, with the source's outputs."""
    source = model(cls).eval()
    with torch.device("meta"):
        target = model(cls)
    target = target.to_empty(device="cpu")
    assert target.lm_head.weight is not target.transformer.tokens_embed.weight
    target.load_state_dict(source.state_dict(), strict=True)
    assert target.lm_head.weight is target.transformer.tokens_embed.weight
    ids = torch.randint(0, CONFIG["vocab_size"], (1, 3, 5) if "Double" in cls else (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(ids).logits, source(ids).logits, rtol=0, atol=0)
    if cls == "OpenAIGPTLMHeadModel":  # the generation prefill's positions too
        torch.testing.assert_close(target.generate(ids, max_new_tokens=4), source.generate(ids, max_new_tokens=4))
    untied = model(cls, tie_word_embeddings=False)  # configured untied: its head keeps its own key and tensor
    with pytest.raises(RuntimeError, match="Missing key.*lm_head.weight"):
        untied.load_state_dict(source.state_dict(), strict=True)
