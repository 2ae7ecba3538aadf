"""generate(ids, past_key_values=out.cache): continuing from a cache an earlier generate() returned
(gpt_fast/generation/cache_reuse.py). The tokens and scores are those of a generate() over the whole of ids (the
reference), on every backend and decoding mode; the cache passed in is left as it was and really used (a corrupted
one changes the tokens); bad caches are errors."""

from __future__ import annotations

import copy

import pytest
import torch

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.generation.decoder import IncrementalDecoder

VOCAB = 99


@pytest.fixture(scope="module", params=["eager", "sdpa", "fused"])
def model(request):
    torch.manual_seed(0)
    config = OpenAIGPTConfig(vocab_size=VOCAB, n_positions=80, n_embd=32, n_layer=2, n_head=2,
                             initializer_range=0.2)  # large enough weights that the cached keys and values matter
    return OpenAIGPTLMHeadModel(config, attn_implementation=request.param).eval()


def ids(batch, length, seed):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def first_turn(model, batch=1):
    out = model.generate(ids(batch, 10, 0), max_new_tokens=8, return_dict_in_generate=True)
    return out, torch.cat([out.sequences, ids(batch, 5, 1)], dim=1)  # the next turn: the text so far + 5 tokens


def test_a_next_turn_continues_from_the_returned_cache(model, monkeypatch):
    out, turn = first_turn(model)
    kept = [t.clone() for t in (out.cache.keys, out.cache.values, out.cache.lengths)]
    kwargs = dict(max_new_tokens=12, output_scores=True, return_dict_in_generate=True)
    expected = model.generate(turn, **kwargs)
    prefills = []
    real_prefill = IncrementalDecoder.prefill
    monkeypatch.setattr(IncrementalDecoder, "prefill", lambda self, *a, **k: prefills.append(1) or
                        real_prefill(self, *a, **k))
    got = model.generate(turn, past_key_values=out.cache, **kwargs)
    assert prefills == []  # only the 5 new prompt tokens ran, through extend
    torch.testing.assert_close(got.sequences, expected.sequences, rtol=0, atol=0)
    for ours, theirs in zip(got.scores, expected.scores, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    for before, after in zip(kept, (out.cache.keys, out.cache.values, out.cache.lengths)):
        assert torch.equal(before, after)  # the cache passed in is left as it was
    third = torch.cat([got.sequences, ids(1, 3, 2)], dim=1)  # and the new one continues again
    torch.testing.assert_close(model.generate(third, max_new_tokens=6, past_key_values=got.cache),
                               model.generate(third, max_new_tokens=6), rtol=0, atol=0)


def test_the_cache_is_really_used(model):
    out, turn = first_turn(model)
    with torch.inference_mode():  # generate's tensors are inference tensors
        out.cache.values[:, :, :, :4].normal_(generator=torch.Generator().manual_seed(3))  # not the text's now
    kwargs = dict(max_new_tokens=2, output_scores=True, return_dict_in_generate=True)
    corrupted = model.generate(turn, past_key_values=out.cache, **kwargs).scores[0]
    assert (corrupted - model.generate(turn, **kwargs).scores[0]).abs().max() > 1e-2


@pytest.mark.parametrize("kwargs", [dict(num_beams=3), dict(do_sample=True, seed=5, num_return_sequences=3),
                                    dict(prompt_lookup_num_tokens=3)])
def test_beams_sampling_and_prompt_lookup(model, kwargs):
    out, turn = first_turn(model)
    torch.testing.assert_close(model.generate(turn, max_new_tokens=10, past_key_values=out.cache, **kwargs),
                               model.generate(turn, max_new_tokens=10, **kwargs), rtol=0, atol=0)


def test_a_batch_and_one_cache_row_for_every_prompt(model):
    out, turn = first_turn(model, batch=2)  # unpadded: both rows hold the same length
    torch.testing.assert_close(model.generate(turn, max_new_tokens=8, past_key_values=out.cache),
                               model.generate(turn, max_new_tokens=8), rtol=0, atol=0)
    sampled = dict(max_new_tokens=8, do_sample=True, seed=2, num_return_sequences=2)  # rows 0, 0, 1, 1
    torch.testing.assert_close(model.generate(turn, past_key_values=out.cache, **sampled),
                               model.generate(turn, **sampled), rtol=0, atol=0)
    single, shared = first_turn(model)
    both = torch.cat([shared, torch.cat([shared[:, :-5], ids(1, 5, 9)], dim=1)])  # one prefix, two continuations
    torch.testing.assert_close(model.generate(both, max_new_tokens=8, past_key_values=single.cache),
                               model.generate(both, max_new_tokens=8), rtol=0, atol=0)


def test_bad_caches_are_errors(model):
    out, turn = first_turn(model)
    with pytest.raises(ValueError, match="at least one more"):
        model.generate(turn[:, :out.cache.get_seq_length()], past_key_values=out.cache)
    with pytest.raises(ValueError, match="unpadded prompt"):
        mask = torch.ones_like(turn)
        mask[0, 0] = 0
        model.generate(turn, attention_mask=mask, past_key_values=out.cache)
    with pytest.raises(ValueError, match="rows for 2 prompt rows"):
        three, _ = first_turn(model, batch=3)
        model.generate(turn.repeat(2, 1), past_key_values=three.cache)
    padded = model.generate(ids(2, 6, 4), attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6]),
                            max_new_tokens=3, return_dict_in_generate=True)
    with pytest.raises(ValueError, match="different lengths"):
        model.generate(torch.cat([padded.sequences, ids(2, 2, 5)], dim=1), past_key_values=padded.cache)
    with pytest.raises(TypeError, match="the cache a gpt_fast generate"):
        model.generate(turn, past_key_values=tuple(out.cache))
    with pytest.raises(NotImplementedError, match="token_type_ids"):
        model.generate(turn, token_type_ids=torch.zeros_like(turn), past_key_values=out.cache)
    other = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=VOCAB, n_positions=80, n_embd=32, n_layer=3, n_head=2))
    with pytest.raises(ValueError, match="layers, heads"):
        other.generate(turn, past_key_values=out.cache)
    with pytest.raises(ValueError, match="layers, heads"):
        copy.deepcopy(model).to(torch.bfloat16).generate(turn, past_key_values=out.cache)
