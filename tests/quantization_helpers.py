"""Shared by the quantization tests: the tiny model they quantize and the exact save/load round trip check."""

from __future__ import annotations

import torch

import gpt_fast

CONFIG = dict(vocab_size=90, n_positions=32, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2)


def tiny(cls=gpt_fast.OpenAIGPTLMHeadModel, dtype=torch.float32):
    """The same seeded tiny GPT-1 (width 64: int4 groups of 32 and 64 divide it) in eval mode."""
    torch.manual_seed(0)
    return cls(gpt_fast.OpenAIGPTConfig(**CONFIG)).to(dtype).eval()


def assert_reloads_exactly(model, folder) -> gpt_fast.OpenAIGPTLMHeadModel:
    """from_pretrained(folder), where model was saved, rebuilds it exactly: the same quantization, state dict
    (keys, dtypes, values) and logits. Returns the loaded model."""
    loaded = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(folder)
    assert loaded.quantization == model.quantization
    expected, got = model.state_dict(), loaded.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    return loaded
