"""Assisted decoding in the serving engine (gpt_fast/serving/assistant_drafting.py): every request gets the tokens it
gets without an assistant (model.generate for greedy text, the plain engine for sampling and mixed traffic), with an
assistant whose drafts are all kept (the model's twin) and one whose drafts are mostly rejected (another random
model); every draft is the assistant's own greedy continuation of the text so far (so its cache catch-up and rewind
are right); the passes stay within the cache; bad settings are clear errors."""

from __future__ import annotations

import copy
import queue

import pytest
import torch
from serve_helpers import (
    N_POSITIONS,
    collect,
    engine_fixtures,
    no_failed_steps,  # noqa: F401 - an autouse fixture
    reference_greedy,
    tiny_model_and_tokenizer,
    wait,
)

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.serving import Engine, SamplingParams, assistant_drafting
from gpt_fast.serving.assistant_drafting import AssistantDrafting
from gpt_fast.serving.observer import EngineObserver

REPEATING = "the cat sat on the mat. the cat sat on the mat. the cat sat on"
COUNTING = "one two three one two three one two three one two"


class DraftCounts(EngineObserver):
    def __init__(self):
        self.rounds = []

    def speculated(self, drafted, kept):
        self.rounds.append((drafted, kept))


model_and_tokenizer, make_engine = engine_fixtures()


@pytest.fixture(scope="module")
def assistants(model_and_tokenizer):
    """{"twin": a copy of the model (its greedy drafts are the model's), "other": another random model}."""
    model, _ = model_and_tokenizer
    return {"twin": copy.deepcopy(model), "other": tiny_model_and_tokenizer(seed=1)[0]}


@pytest.fixture
def recorded_drafts(monkeypatch):
    """Every draft AssistantDrafting proposes, with the sequence's tokens before it: [(tokens, draft)]."""
    records = []
    real = AssistantDrafting.drafts

    def drafts(self, sequences, limit):
        texts = [s.prompt + s.output for s in sequences]
        out = real(self, sequences, limit)
        records.extend((text, draft) for text, draft in zip(texts, out) if draft)
        return out

    monkeypatch.setattr(AssistantDrafting, "drafts", drafts)
    return records


@pytest.mark.parametrize("which", ["twin", "other"])
def test_greedy_tokens_are_generates_and_drafts_are_the_assistants_greedy_text(model_and_tokenizer, make_engine,
                                                                                assistants, recorded_drafts, which):
    model, tokenizer = model_and_tokenizer
    assistant = assistants[which]
    prompt = tokenizer(REPEATING)["input_ids"]
    counts = DraftCounts()
    engine = make_engine(max_batch=2, assistant_model=assistant, num_assistant_tokens=4,
                         assistant_confidence_threshold=0.0, observer=counts)
    out = collect(engine, prompt, SamplingParams(max_tokens=40, temperature=0))[0]
    assert out["tokens"] == reference_greedy(model, prompt, 40) and out["finish"] == "length"
    drafted, kept = map(sum, zip(*counts.rounds))
    if which == "twin":
        assert kept == drafted > len(counts.rounds)  # every draft kept (the two-token catch-up taken each round)
    else:
        assert 0 <= kept < drafted / 2
    assert recorded_drafts
    for tokens, draft in recorded_drafts:  # its cache held exactly the text so far
        assert draft == reference_greedy(assistant, tokens, len(draft))
    assert engine.slots.in_use() == 0


def test_seeded_sampling_equals_the_plain_engine(model_and_tokenizer, make_engine, assistants):
    _, tokenizer = model_and_tokenizer
    prompt = tokenizer(COUNTING)["input_ids"]
    params = SamplingParams(max_tokens=30, temperature=0.3, top_k=20, presence_penalty=0.1, logprobs=2, seed=11)
    plain = collect(make_engine(max_batch=1), prompt, params)[0]
    counts = DraftCounts()
    assisted = collect(make_engine(max_batch=1, assistant_model=assistants["twin"], num_assistant_tokens=3,
                                   assistant_confidence_threshold=0.0, observer=counts), prompt, params)[0]
    assert counts.rounds and sum(kept for _, kept in counts.rounds) > 0
    assert (assisted["tokens"], assisted["text"], assisted["finish"]) == (plain["tokens"], plain["text"],
                                                                         plain["finish"])
    for ours, theirs in zip(assisted["logprobs"], plain["logprobs"], strict=True):
        assert ours.logprob == pytest.approx(theirs.logprob, abs=1e-5)


@pytest.mark.parametrize("which", ["twin", "other"])
def test_mixed_traffic_through_few_slots_is_the_plain_engines(model_and_tokenizer, make_engine, assistants,
                                                              recorded_drafts, which):
    """Nine requests through three slots (queueing, joining mid-flight, slots reused, n = 2 choices, a prompt that
    fills the context, max_tokens of 1 and 2, stop tokens and strings, greedy and seeded sampling, the prefix cache):
    each request's choices are the plain engine's, and each draft is the assistant's greedy continuation."""
    _, tokenizer = model_and_tokenizer
    rng = torch.Generator().manual_seed(5)
    long = (tokenizer(REPEATING)["input_ids"] * 4)[:N_POSITIONS - 10]
    requests = [(long, SamplingParams(max_tokens=10, temperature=0), 1)]
    for i in range(8):
        prompt = tokenizer([REPEATING, COUNTING, "once upon a time", "a b c a b c a b"][i % 4])["input_ids"]
        max_tokens = [1, 2][i] if i < 2 else int(torch.randint(3, 25, (1,), generator=rng))
        params = SamplingParams(max_tokens=max_tokens, temperature=0 if i % 3 else 0.5, seed=i,
                                stop_token_ids=(prompt[3],) if i == 5 else (), stop=("three",) if i == 6 else ())
        requests.append((prompt, params, 2 if i in (3, 7) else 1))

    def run(engine):
        sinks = [queue.Queue() for _ in requests]
        engine.call(lambda: [engine.submit(p, params, sink.put, n) for (p, params, n), sink in zip(requests, sinks)])
        return [wait(sink, n) for (_, _, n), sink in zip(requests, sinks)]

    plain = run(make_engine(max_batch=3, max_queue=16))
    assistant = assistants[which]
    engine = make_engine(max_batch=3, max_queue=16, prefix_cache_size=2, assistant_model=assistant,
                         num_assistant_tokens=6, assistant_confidence_threshold=0.0)
    for ours, theirs in zip(run(engine), plain, strict=True):
        for i in theirs:
            assert (ours[i]["tokens"], ours[i]["finish"], ours[i]["text"]) == \
                (theirs[i]["tokens"], theirs[i]["finish"], theirs[i]["text"])
    assert recorded_drafts
    for tokens, draft in recorded_drafts:
        assert draft == reference_greedy(assistant, tokens, len(draft))
    assert engine.slots.in_use() == 0 and engine.slots.lengths.tolist() == [0, 0, 0]


def test_the_assistant_keeps_a_prefix_cache_of_its_own(model_and_tokenizer, make_engine, assistants, recorded_drafts,
                                                       monkeypatch):
    """With prefix_cache_size, the assistant's first catch-up of a prompt that starts like an earlier prompt, or like
    an earlier sequence's whole text (a chat's next turn; that sequence finished in a plain step, its last token
    drafted by no one), prefills only what follows the shared part; the tokens stay generate()'s and every draft
    the assistant's greedy continuation."""
    model, tokenizer = model_and_tokenizer
    assistant = assistants["twin"]
    catch_ups = []  # (start, tokens) of the assistant's prefills
    real = assistant_drafting.prefill_chunk

    def spy(prefilling, plan, slots, slot, ids, start, **kwargs):
        if prefilling is assistant:
            catch_ups.append((start, ids.numel()))
        return real(prefilling, plan, slots, slot, ids, start, **kwargs)

    monkeypatch.setattr(assistant_drafting, "prefill_chunk", spy)
    shared = tokenizer(REPEATING)["input_ids"]  # 18 tokens: prefix_cache.MIN_TOKENS and more
    first, second = shared + tokenizer("once upon a time")["input_ids"], shared + tokenizer("a b c")["input_ids"]
    engine = make_engine(max_batch=1, prefix_cache_size=4, assistant_model=assistant, num_assistant_tokens=4,
                         assistant_confidence_threshold=0.0)
    params = SamplingParams(max_tokens=10, temperature=0)

    def first_catch_up(prompt):  # the prompt's tokens (generate()'s), and its first catch-up; the catch-up covers
        catch_ups.clear()        # the prompt and the prefill's token but the last one fed
        out = collect(engine, prompt, params)[0]
        assert out["tokens"] == reference_greedy(model, prompt, 10)
        start, count = catch_ups[0]
        assert start + count == len(prompt)
        return out["tokens"], start

    tokens, start = first_catch_up(first)
    assert start == 0
    assert first_catch_up(second)[1] == len(shared)
    turn = first + tokens + tokenizer("the end")["input_ids"]  # the next turn: the first sequence's text and more
    assert len(first) < first_catch_up(turn)[1] < len(first) + 10
    assert len(recorded_drafts) >= 6
    for text, draft in recorded_drafts:
        assert draft == reference_greedy(assistant, text, len(draft))


def test_a_draft_ends_at_a_stop_token_and_below_the_confidence_threshold(model_and_tokenizer, make_engine,
                                                                         assistants, recorded_drafts):
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer(REPEATING)["input_ids"]
    free = reference_greedy(model, prompt, 12)
    stop = free[5]  # the sixth token: the first draft (of tokens 2-7) ends there
    engine = make_engine(max_batch=1, assistant_model=assistants["twin"], num_assistant_tokens=8,
                         assistant_confidence_threshold=0.0)
    out = collect(engine, prompt, SamplingParams(max_tokens=12, temperature=0, stop_token_ids=(stop,)))[0]
    assert out["tokens"] == free[:free.index(stop) + 1] and out["finish"] == "stop"
    assert all(stop not in draft[:-1] for _, draft in recorded_drafts)
    assert recorded_drafts[0][1][-1] == stop
    recorded_drafts.clear()
    # a threshold of 1 stops every draft after its first token (no token has all the probability)
    engine = make_engine(max_batch=1, assistant_model=assistants["twin"], num_assistant_tokens=8,
                         assistant_confidence_threshold=1.0)
    assert collect(engine, prompt, SamplingParams(max_tokens=12, temperature=0))[0]["tokens"] == free
    assert recorded_drafts and all(len(draft) == 1 for _, draft in recorded_drafts)


def test_a_heuristic_schedule_adapts_each_sequences_draft_length(model_and_tokenizer, assistants, recorded_drafts):
    model, tokenizer = model_and_tokenizer
    twin = copy.deepcopy(assistants["twin"])
    twin.generation_config.num_assistant_tokens_schedule = "heuristic"  # read from the assistant, as generate does
    engine = Engine(model, tokenizer, max_batch=1, assistant_model=twin, num_assistant_tokens=2,
                    assistant_confidence_threshold=0.0).start()
    try:
        prompt = tokenizer(REPEATING)["input_ids"]
        assert collect(engine, prompt, SamplingParams(max_tokens=30, temperature=0))[0]["tokens"] == \
            reference_greedy(model, prompt, 30)
    finally:
        engine.stop()
    lengths = [len(draft) for _, draft in recorded_drafts]
    assert lengths[:3] == [2, 4, 6]  # +2 after each round that kept every draft


def test_drafting_pauses_while_one_token_drafts_fail(model_and_tokenizer, make_engine, assistants, monkeypatch):
    """One request's drafts made wrong (each token + 1) beside one whose drafts are kept: after four rejected
    one-token drafts the first pauses drafting for 1, 2, 4, 8, 16 ... steps (speculative.DraftPauses) while the other
    keeps the rounds going (so the paused row is fed in them, and must keep its assistant row), catches up when it
    resumes, and both get generate()'s tokens."""
    model, tokenizer = model_and_tokenizer
    vocab = model.config.vocab_size
    paused, other = tokenizer("once upon a time")["input_ids"], tokenizer(REPEATING)["input_ids"]
    real, made = AssistantDrafting.drafts, []

    def wrong(self, sequences, limit):
        drafts = real(self, sequences, limit)
        made.extend((s.prompt + s.output, draft) for s, draft in zip(sequences, drafts) if draft and s.prompt == paused)
        return [[(token + 1) % vocab for token in draft] if s.prompt == paused else draft
                for s, draft in zip(sequences, drafts)]

    monkeypatch.setattr(AssistantDrafting, "drafts", wrong)
    engine = make_engine(max_batch=2, assistant_model=assistants["twin"], num_assistant_tokens=1,
                         assistant_confidence_threshold=0.0)
    sinks = [queue.Queue(), queue.Queue()]
    engine.call(lambda: [engine.submit(p, SamplingParams(max_tokens=n, temperature=0), sink.put)
                         for p, n, sink in ((paused, 56, sinks[0]), (other, 40, sinks[1]))])
    assert wait(sinks[0], 1)[0]["tokens"] == reference_greedy(model, paused, 56)
    assert wait(sinks[1], 1)[0]["tokens"] == reference_greedy(model, other, 40)
    # 55 steps after the prefill's token: drafts at steps 1-4, 6, 9, 14, 23 and 40 (pauses of 1, 2, 4, 8, 16)
    assert len(made) == 9
    for tokens, draft in made:  # after each pause the assistant's row caught up with the tokens emitted meanwhile
        assert draft == reference_greedy(assistants["twin"], tokens, len(draft))


def bigger(model, **changes):
    config = OpenAIGPTConfig(**{**model.config.to_dict(), **changes})
    return OpenAIGPTLMHeadModel(config).eval()


@pytest.mark.parametrize("kwargs, error, match", [
    (lambda m, a: {"assistant_model": a, "prompt_lookup_num_tokens": 2}, ValueError, "not both"),
    (lambda m, a: {"num_assistant_tokens": 2}, ValueError, "need an assistant_model"),
    (lambda m, a: {"assistant_confidence_threshold": 0.5}, ValueError, "need an assistant_model"),
    (lambda m, a: {"num_assistant_tokens_schedule": "heuristic"}, ValueError, "need an assistant_model"),
    (lambda m, a: {"assistant_model": a, "num_assistant_tokens_schedule": "fast"}, ValueError, "must be one of"),
    (lambda m, a: {"assistant_model": a, "num_assistant_tokens": 0}, ValueError, "int >= 1"),
    (lambda m, a: {"assistant_model": a, "assistant_confidence_threshold": 1.5}, ValueError, r"in \[0, 1\]"),
    (lambda m, a: {"assistant_model": m}, ValueError, "the model itself"),
    (lambda m, a: {"assistant_model": "model-name"}, TypeError, "gpt_fast OpenAIGPTLMHeadModel"),
    (lambda m, a: {"assistant_model": bigger(m, vocab_size=m.config.vocab_size - 1)}, ValueError, "vocabulary"),
    (lambda m, a: {"assistant_model": bigger(m, n_positions=N_POSITIONS - 1)}, ValueError, "as many as the model"),
])
def test_bad_settings_are_errors(model_and_tokenizer, assistants, kwargs, error, match):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(error, match=match):
        Engine(model, tokenizer, **kwargs(model, assistants["other"]))
