"""stop_strings (with tokenizer=): token-identical to transformers' generate on the same weights in greedy and beam
search, a stop string spanning a token boundary included; sampled runs stop exactly where transformers'
StopStringCriteria first fires on their own tokens; bad arguments are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from conftest import seeded_prompt, tiny_lm_fixtures  # noqa: E402
from transformers.generation.stopping_criteria import StopStringCriteria  # noqa: E402

import gpt_fast  # noqa: E402
from gpt_fast import OpenAIGPTTokenizerFast  # noqa: E402

VOCAB = 40478
TOKENIZER_FILES = Path(gpt_fast.__file__).parent / "tokenization" / "data"


hf, model = tiny_lm_fixtures(7, VOCAB, 64)


@pytest.fixture(scope="module")
def tokenizers():
    return OpenAIGPTTokenizerFast.from_pretrained("openai-gpt"), transformers.OpenAIGPTTokenizer.from_pretrained(
        str(TOKENIZER_FILES))


@pytest.fixture(scope="module")
def texts(tokenizers):
    """transformers' text of each token id (what its stop-string matching reads)."""
    tokens, ids = StopStringCriteria.clean_tokenizer_vocab(tokenizers[1])
    return dict(zip(ids, tokens))


def stop_strings_for(free, T, texts):
    """Stop strings that transformers' run meets: one spanning the boundary between two new tokens (the end of the
    3rd and the start of the 4th) of row 0, and one that is the 6th new token's text of the last row."""
    first, second = texts[int(free[0, T + 2])], texts[int(free[0, T + 3])]
    assert len(first) >= 2 and len(second) >= 2, (first, second)
    return [first[-2:] + second[:2], texts[int(free[-1, T + 5])].strip()]


@pytest.mark.parametrize("settings", [dict(), dict(num_beams=3, num_return_sequences=2)], ids=["greedy", "beams"])
@pytest.mark.parametrize("eos", [None, 5], ids=["no-eos", "eos"])
def test_stop_strings_match_transformers(hf, model, tokenizers, texts, settings, eos):
    ids = seeded_prompt(VOCAB, 4, batch=2, seed=3)
    kwargs = dict(settings, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    free = hf.generate(ids, do_sample=False, **kwargs)
    stops = stop_strings_for(free, ids.shape[1], texts)
    in_prompt = texts[int(ids[0, -1])].strip()  # matched before the new tokens: must not stop the run
    for stop_strings in (stops[:1], stops, stops[1], [in_prompt]):
        expected = hf.generate(ids, do_sample=False, stop_strings=stop_strings, tokenizer=tokenizers[1], **kwargs)
        if stop_strings is stops:  # every row meets one: the run changes
            assert expected.shape != free.shape or not torch.equal(expected, free)
        ours = model.generate(ids, stop_strings=stop_strings, tokenizer=tokenizers[0], **kwargs)
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    config = gpt_fast.GenerationConfig(stop_strings=stops[:1], **kwargs)  # stop_strings in a GenerationConfig
    torch.testing.assert_close(model.generate(ids, generation_config=config, tokenizer=tokenizers[0]),
                               hf.generate(ids, do_sample=False, stop_strings=stops[:1], tokenizer=tokenizers[1],
                                           **kwargs), rtol=0, atol=0)


def test_sampled_runs_stop_where_transformers_criteria_first_fires(model, tokenizers, texts):
    ids, T = seeded_prompt(VOCAB, 4, batch=3, seed=4), 4
    kwargs = dict(max_new_tokens=12, do_sample=True, seed=0, eos_token_id=5, pad_token_id=0)
    free = model.generate(ids, **kwargs)  # the same draws: each row's tokens agree until it stops
    stops = [texts[int(free[0, 8])][-2:] + texts[int(free[0, 9])][:1], texts[int(free[2, 11])].strip()]
    out = model.generate(ids, stop_strings=stops, tokenizer=tokenizers[0], **kwargs)
    criteria = StopStringCriteria(tokenizers[1], stops)
    ends = []
    for row in range(ids.shape[0]):  # where the row should end: transformers' criteria (or EOS) on its tokens
        hits = [t for t in range(T + 1, free.shape[1] + 1)
                if bool(criteria(free[row:row + 1, :t], None)[0]) or int(free[row, t - 1]) == 5]
        ends.append(hits[0] if hits else free.shape[1])
        assert torch.equal(out[row, :ends[-1]], free[row, :ends[-1]])
        assert bool((out[row, ends[-1]:] == 0).all())
    assert out.shape[1] == max(ends) and min(ends) < free.shape[1]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(stop_strings=["the"]), ValueError, "tokenizer"),
    (dict(stop_strings=[""], tokenizer="tok"), ValueError, "empty"),
    (dict(stop_strings=[3]), TypeError, "stop_strings"),
    (dict(stop_strings="the", tokenizer="not a tokenizer"), TypeError, "tokenizer"),
    (dict(stop_strings="\u4e00\u4e01", tokenizer="tok"), ValueError, "no token"),
])
def test_bad_stop_strings_are_clear_errors(model, tokenizers, kwargs, error, match):
    if kwargs.get("tokenizer") == "tok":
        kwargs = dict(kwargs, tokenizer=tokenizers[0])
    with pytest.raises(error, match=match):
        model.generate(seeded_prompt(VOCAB, 3), max_new_tokens=2, **kwargs)
