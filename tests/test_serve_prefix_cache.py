"""The serving engine's prompt prefix cache (gpt_fast/serving/prefix_cache.py): a prompt that starts like an earlier
one is prefilled from after the shared prefix, and its tokens and log-probabilities are generate()'s / the engine
without the cache's; entries are kept, extended and evicted as the module says; bad sizes are errors."""

from __future__ import annotations

import pytest
from serve_helpers import collect, engine_fixtures, reference_greedy

from gpt_fast.serving import Engine, SamplingParams
from gpt_fast.serving.observer import EngineObserver
from gpt_fast.serving.prefix_cache import MIN_TOKENS, common_prefix

SHARED = ("you are a helpful assistant. answer the question below in one short sentence, and be polite about "
          "it. question:")


class Lookups(EngineObserver):
    def __init__(self):
        self.lookups = []  # (prompt tokens, tokens found cached)

    def prefix_cache(self, queried, hit):
        self.lookups.append((queried, hit))


model_and_tokenizer, make_engine = engine_fixtures()


@pytest.mark.parametrize("chunk", [4, 256])  # the rest of the prompt in several chunks after the prefix, or one
def test_a_prompt_sharing_a_prefix_skips_it_and_gets_generates_tokens(model_and_tokenizer, make_engine, chunk):
    model, tokenizer = model_and_tokenizer
    shared = tokenizer(SHARED)["input_ids"]
    assert len(shared) >= MIN_TOKENS
    lookups = Lookups()
    engine = make_engine(max_batch=2, prefill_chunk=chunk, prefix_cache_size=4, observer=lookups)
    prefilled = []
    for question in (" what is the capital of france?", " how tall is a giraffe?", " what is the capital of spain?"):
        prompt = shared + tokenizer(question)["input_ids"]
        out = collect(engine, prompt, SamplingParams(max_tokens=10, temperature=0))[0]
        assert out["tokens"] == reference_greedy(model, prompt, 10)
        prefilled.append(lookups.lookups[-1])
    first, second, third = prefilled
    assert first[1] == 0  # nothing cached yet
    assert second[1] >= len(shared)  # the shared instructions (and anything the questions share) came from the cache
    assert third[1] > second[1]  # " what is the capital of" too, from the first question's entry
    assert len(engine.prefix_cache.entries) == 3


def test_logprobs_with_a_cached_prefix_are_the_plain_engines(model_and_tokenizer, make_engine):
    _, tokenizer = model_and_tokenizer
    prompt = tokenizer(SHARED + " what is the capital of france?")["input_ids"]
    params = SamplingParams(max_tokens=8, temperature=0.7, seed=5, logprobs=3)
    plain = collect(make_engine(max_batch=1), prompt, params)[0]
    lookups = Lookups()
    engine = make_engine(max_batch=1, prefix_cache_size=2, observer=lookups)
    collect(engine, prompt, params)  # stores the prompt
    cached = collect(engine, prompt, params)[0]  # every prompt token but the last from the cache
    assert lookups.lookups[-1] == (len(prompt), len(prompt) - 1)
    assert cached["tokens"] == plain["tokens"]
    for ours, theirs in zip(cached["logprobs"], plain["logprobs"], strict=True):
        assert ours.logprob == pytest.approx(theirs.logprob, abs=1e-5)
        assert [t for t, _ in ours.top] == [t for t, _ in theirs.top]
    with_prompt_logprobs = SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=True)
    looked_up = len(lookups.lookups)
    out = collect(engine, prompt, with_prompt_logprobs)[0]  # needs every position's logits: prefilled whole
    assert len(lookups.lookups) == looked_up  # no lookup
    expected = collect(make_engine(max_batch=1), prompt, with_prompt_logprobs)[0]["prompt_logprobs"]
    assert out["prompt_logprobs"][0] is None and out["prompt_logprobs"][1:] == pytest.approx(expected[1:], abs=1e-5)


def test_entries_are_kept_extended_and_evicted(model_and_tokenizer, make_engine):
    _, tokenizer = model_and_tokenizer
    engine = make_engine(max_batch=1, prefix_cache_size=2)
    cache = engine.prefix_cache
    base = tokenizer(SHARED)["input_ids"]
    longer = base + tokenizer(" and more words")["input_ids"]
    others = [tokenizer(f"{word} " * 20)["input_ids"] for word in ("apple", "pear")]
    params = SamplingParams(max_tokens=1, temperature=0)
    collect(engine, base, params)
    collect(engine, longer, params)  # extends base: its entry replaces base's
    assert list(cache.entries) == [tuple(longer)]
    collect(engine, base, params)  # held by longer's entry: nothing new
    assert list(cache.entries) == [tuple(longer)]
    collect(engine, tokenizer("too short")["input_ids"], params)  # under MIN_TOKENS: not kept
    for prompt in others:
        collect(engine, prompt, params)
    assert list(cache.entries) == [tuple(p) for p in others]  # two entries, least recently used evicted
    apple, pear = others
    branch = apple[:MIN_TOKENS + 2] + tokenizer(" banana")["input_ids"]  # shares 18 tokens with apple's entry
    collect(engine, branch, params)  # apple's entry, just used, outlives pear's
    assert list(cache.entries) == [tuple(apple), tuple(branch)]
    k, v = cache.entries[tuple(apple)][0]
    assert k.shape == v.shape == (2, len(apple), 16)  # (H, L, D) of the first layer


def test_common_prefix():
    assert common_prefix((1, 2, 3, 4), (1, 2, 9), 10) == 2
    assert common_prefix((1, 2, 3), (1, 2, 3), 2) == 2
    assert common_prefix((5,), (1, 2), 10) == 0
    assert common_prefix(tuple(range(100)), tuple(range(57)) + (0,), 100) == 57


@pytest.mark.parametrize("size", [-1, True, 1.5])
def test_bad_sizes_are_errors(model_and_tokenizer, size):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="prefix_cache_size must be an int >= 1"):
        Engine(model, tokenizer, prefix_cache_size=size)


def test_a_next_turn_finds_the_previous_answer_cached(model_and_tokenizer, make_engine):
    """A finished sequence leaves its prompt and generated tokens in the cache: the next turn of a conversation,
    which repeats them, is prefilled from after them, and gets generate()'s tokens."""
    model, tokenizer = model_and_tokenizer
    lookups = Lookups()
    engine = make_engine(max_batch=1, prefix_cache_size=2, observer=lookups)
    first = tokenizer(SHARED + " what is the capital of france?")["input_ids"]
    answer = collect(engine, first, SamplingParams(max_tokens=8, temperature=0))[0]["tokens"]
    second = first + answer + tokenizer(" and of spain?")["input_ids"]
    reply = collect(engine, second, SamplingParams(max_tokens=8, temperature=0))[0]["tokens"]
    assert reply == reference_greedy(model, second, 8)
    assert lookups.lookups[-1] == (len(second), len(first) + len(answer) - 1)  # all but the answer's last token
    assert list(engine.prefix_cache.entries) == [tuple(second + reply[:-1])]  # one entry: the conversation so far
