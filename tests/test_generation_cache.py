"""generate()'s `cache` (alias past_key_values) where transformers 5.24 returns its Cache: present with
return_dict_in_generate unless use_cache=False (as transformers), holding each layer's keys and values of the fed
tokens (checked against transformers' own projections); the model's forward takes use_cache and ignores it, as
transformers' does."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from conftest import seeded_prompt, tiny_lm_fixtures  # noqa: E402

VOCAB = 41


hf, model = tiny_lm_fixtures(3, VOCAB, 40)


def projected_keys_values(hf, ids, layer):
    """transformers' keys and values of layer `layer` for the sequence ids (B, T): each (B, H, T, D)."""
    captured = {}
    handle = hf.transformer.h[layer].attn.c_attn.register_forward_hook(lambda m, i, o: captured.update(qkv=o))
    with torch.no_grad():
        hf(ids)
    handle.remove()
    C, H = hf.config.n_embd, hf.config.n_head
    _, k, v = captured["qkv"].split(C, dim=2)
    return [t.view(*t.shape[:2], H, C // H).transpose(1, 2) for t in (k, v)]


@pytest.mark.parametrize("settings", [dict(), dict(num_beams=2)], ids=["greedy", "beams"])
def test_cache_is_returned_as_transformers_returns_it(hf, model, settings):
    ids = seeded_prompt(VOCAB, 5, 2)
    kwargs = dict(settings, max_new_tokens=4, return_dict_in_generate=True)
    expected = hf.generate(ids, do_sample=False, **kwargs)
    ours = model.generate(ids, **kwargs)
    assert list(ours.keys()) == list(expected.keys())
    assert ours.past_key_values is ours.cache
    without = model.generate(ids, use_cache=False, **kwargs)
    assert list(without.keys()) == list(hf.generate(ids, do_sample=False, use_cache=False, **kwargs).keys())
    assert without.cache is None


def test_cache_holds_the_keys_and_values_of_the_fed_tokens(hf, model):
    ids = seeded_prompt(VOCAB, 5, 2)
    out = model.generate(ids, max_new_tokens=4, return_dict_in_generate=True)
    fed = out.sequences[:, :-1]  # the last new token is never fed back
    cache = out.cache
    assert len(cache) == hf.config.n_layer and cache.get_seq_length() == fed.shape[1]
    assert len(cache.to_legacy_cache()) == hf.config.n_layer
    for layer in range(hf.config.n_layer):
        keys, values = cache[layer]
        expected_keys, expected_values = projected_keys_values(hf, fed, layer)
        torch.testing.assert_close(keys, expected_keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(values, expected_values, rtol=1e-5, atol=1e-5)


def test_forward_takes_use_cache_and_ignores_it_as_transformers(hf, model):
    ids = seeded_prompt(VOCAB, 6, 2)
    with torch.no_grad():
        expected = hf(ids, use_cache=True)
        ours = model(ids, use_cache=True)
    assert list(ours.keys()) == list(expected.keys())
    torch.testing.assert_close(ours.logits, expected.logits, rtol=1e-4, atol=1e-4)
