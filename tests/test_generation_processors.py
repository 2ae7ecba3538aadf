"""generate()'s further processors and inputs against transformers (greedy, fp32): no_repeat_ngram_size,
bad_words_ids, remove_invalid_values, the caller's logits_processor / stopping_criteria (transformers' own objects
and plain callables), token_type_ids, output_attentions / output_hidden_states, use_cache=False; and the n-gram /
bad-word processors read nothing on the host."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from conftest import seeded_prompt, tiny_lm_fixtures  # noqa: E402
from transformers.generation.logits_process import (  # noqa: E402
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)
from transformers.generation.stopping_criteria import MaxLengthCriteria, StoppingCriteria  # noqa: E402

from gpt_fast.generation.arguments import parse_generation_kwargs  # noqa: E402
from gpt_fast.generation.processors import ExtraProcessors, TokenHistory  # noqa: E402
from gpt_fast.generation.sampling import SamplingConfig, TokenSelector  # noqa: E402

VOCAB = 53


hf, model = tiny_lm_fixtures(4, VOCAB, 32)


def prompt(length, batch=1, seed=1):
    return seeded_prompt(VOCAB, length, batch, seed)


class StopOnToken(StoppingCriteria):
    """Stops a row once it emits `token` (a per-row bool tensor, transformers' protocol)."""

    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


SETTINGS = [
    dict(no_repeat_ngram_size=1),
    dict(no_repeat_ngram_size=3),
    dict(bad_words_ids=[[5], [7, 9], [1, 2, 3]], repetition_penalty=1.2),
    dict(remove_invalid_values=True, bad_words_ids=[[4]]),
    dict(logits_processor=LogitsProcessorList([NoRepeatNGramLogitsProcessor(2)])),
    dict(logits_processor=[RepetitionPenaltyLogitsProcessor(1.5), lambda ids, scores: scores * 2.0]),
    dict(stopping_criteria=[MaxLengthCriteria(max_length=10)]),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=range(len(SETTINGS)))
def test_processors_match_transformers(hf, model, settings):
    ids = prompt(5, batch=3, seed=len(str(settings)))
    kwargs = dict(settings, max_new_tokens=16, return_dict_in_generate=True, output_scores=True)
    expected = hf.generate(ids, do_sample=False, **kwargs)
    ours = model.generate(ids, **kwargs)
    torch.testing.assert_close(ours.sequences, expected.sequences, rtol=0, atol=0)
    for a, b in zip(ours.scores, expected.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_stopping_criteria_per_row_like_transformers(hf, model):
    ids = prompt(4, batch=3, seed=3)
    free = hf.generate(ids, do_sample=False, max_new_tokens=12)
    token = int(free[1, 4 + 2])
    for extra in (dict(), dict(eos_token_id=int(free[0, 4 + 5]), pad_token_id=0)):
        kwargs = dict(max_new_tokens=12, stopping_criteria=[StopOnToken(token)], **extra)
        expected = hf.generate(ids, do_sample=False, **kwargs)
        torch.testing.assert_close(model.generate(ids, **kwargs), expected, rtol=0, atol=0)
        torch.testing.assert_close(model.generate(ids, eos_check_interval=5, **kwargs), expected, rtol=0, atol=0)


def test_token_type_ids_match_transformers(hf, model):
    ids, types = prompt(5, batch=2, seed=5), prompt(5, batch=2, seed=6)
    expected = hf.generate(ids, token_type_ids=types, do_sample=False, max_new_tokens=10)
    assert not torch.equal(expected, hf.generate(ids, do_sample=False, max_new_tokens=10))  # they matter
    torch.testing.assert_close(model.generate(ids, token_type_ids=types, max_new_tokens=10), expected, rtol=0, atol=0)
    beams = dict(num_beams=3, max_new_tokens=8)
    torch.testing.assert_close(model.generate(ids, token_type_ids=types, **beams),
                               hf.generate(ids, token_type_ids=types, do_sample=False, **beams), rtol=0, atol=0)
    with pytest.raises(ValueError, match="token_type_ids"):
        model.generate(ids, token_type_ids=types[:, :3])


@pytest.mark.parametrize("beams", [1, 2])
def test_attentions_and_hidden_states_match_transformers(hf, model, beams):
    ids = prompt(4, batch=2, seed=8)
    kwargs = dict(max_new_tokens=5, num_beams=beams, return_dict_in_generate=True, output_attentions=True,
                  output_hidden_states=True)
    expected = hf.generate(ids, do_sample=False, **kwargs)
    ours = model.generate(ids, **kwargs)
    torch.testing.assert_close(ours.sequences, expected.sequences, rtol=0, atol=0)
    for name in ("attentions", "hidden_states"):
        theirs, mine = getattr(expected, name), getattr(ours, name)
        assert len(mine) == len(theirs) == 5
        for step_theirs, step_mine in zip(theirs, mine):
            assert len(step_mine) == len(step_theirs)
            for a, b in zip(step_mine, step_theirs):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_use_cache_false_gives_the_same_tokens(model):
    ids = prompt(4, batch=2)
    torch.testing.assert_close(model.generate(ids, use_cache=False, max_new_tokens=8),
                               model.generate(ids, max_new_tokens=8), rtol=0, atol=0)


def test_bad_processors_raise(model):
    with pytest.raises(TypeError, match="logits_processor"):
        model.generate(prompt(3), max_new_tokens=2, logits_processor=[3])
    with pytest.raises(TypeError, match="scores tensor"):
        model.generate(prompt(3), max_new_tokens=2, logits_processor=[lambda ids, scores: None])


def test_ngram_and_bad_word_processors_read_nothing_on_the_host(model):
    from tests.test_decode_host_sync import host_reads

    request = parse_generation_kwargs(model, 4, dict(max_new_tokens=6, no_repeat_ngram_size=2, eos_token_id=3,
                                                     bad_words_ids=[[5], [7, 9]], remove_invalid_values=True))
    history = TokenHistory(prompt(4, batch=2), torch.tensor([4, 2]), 6)
    extra = ExtraProcessors(request, history, torch.device("cpu"), prompt(4, batch=2), VOCAB)
    selector = TokenSelector(SamplingConfig(False, 1.0, 0, 1.0, 1.3, 2), torch.tensor([3]), 2, VOCAB,
                             torch.device("cpu"), None)
    logits = torch.randn(2, VOCAB)

    def one_step():
        tokens = selector.select(selector.process(logits.clone(), 1, extra))
        history.append(tokens)
        history.reorder(torch.tensor([1, 1]))

    assert host_reads(one_step) == []
