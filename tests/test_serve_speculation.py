"""Prompt lookup decoding in the serving engine (gpt_fast/serving/speculation.py): a lone decoding sequence gets the
tokens, log-probabilities and finish it gets without speculation (model.generate for greedy text; the plain engine,
itself tested against generate, for seeded sampling), its drafts are both kept and rejected on the way (so the
cache rewind is exercised); requests decoding side by side are verified together, each getting the plain engine's
output, within the cache's positions and the small-M kernel's rows."""

from __future__ import annotations

import queue

import httpx
import openai
import pytest
import torch
from serve_helpers import (
    N_POSITIONS,
    collect,
    engine_fixtures,
    no_failed_steps,  # noqa: F401 - an autouse fixture
    reference_greedy,
    wait,
)

from gpt_fast.serving import Engine, SamplingParams, speculation
from gpt_fast.serving.observer import EngineObserver

REPEATING = "the cat sat on the mat. the cat sat on the mat. the cat sat on"
COUNTING = "one two three one two three one two three one two"  # whose greedy rounds keep 2 drafts at times


class Events(EngineObserver):
    """The engine's steps and speculative rounds, in order: ("round", drafted, kept) before its ("step", tokens)."""

    def __init__(self):
        self.events = []

    def step(self, batch_size, queue_depth, new_tokens):
        self.events.append(("step", new_tokens))

    def speculated(self, drafted, kept):
        self.events.append(("round", drafted, kept))

    def prefix_cache(self, queried, hit):
        self.events.append(("prefix", queried, hit))

    def rounds(self) -> list[tuple[int, int, int]]:
        """(index of the round's first token in the output, drafted, kept) of each speculative round."""
        out, emitted, pending = [], 0, None
        for event in self.events:
            if event[0] == "prefix":
                continue
            if event[0] == "round":
                pending = event[1:]
            else:
                if pending is not None:
                    out.append((emitted, *pending))
                    pending = None
                emitted += event[1]
        return out


model_and_tokenizer, make_engine = engine_fixtures()


def test_greedy_tokens_are_generates_with_drafts_kept_and_rejected(model_and_tokenizer, make_engine):
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer(REPEATING)["input_ids"]
    events = Events()
    engine = make_engine(max_batch=2, prompt_lookup_num_tokens=4, observer=events)
    out = collect(engine, prompt, SamplingParams(max_tokens=40, temperature=0))[0]
    assert out["tokens"] == reference_greedy(model, prompt, 40)
    assert out["finish"] == "length" and out["text"] == tokenizer.decode(out["tokens"])
    rounds = events.rounds()
    assert any(kept > 0 for _, _, kept in rounds) and any(kept < drafted for _, drafted, kept in rounds)
    assert sum(1 + kept for _, _, kept in rounds) > len(rounds)  # fewer passes than tokens
    assert engine.slots.in_use() == 0
    extend = engine.speculation.passes[1]  # over the slot rows [0, 1)
    assert any(pass_.program is not None for pass_ in extend.by_count.values())  # verification passes replayed


def test_seeded_sampling_with_every_setting_equals_the_plain_engine(model_and_tokenizer, make_engine):
    _, tokenizer = model_and_tokenizer
    prompt = tokenizer(REPEATING)["input_ids"]
    params = SamplingParams(max_tokens=40, temperature=0.1, top_k=40, top_p=0.95, min_p=0.01, presence_penalty=0.05,
                            frequency_penalty=0.02, logit_bias=((prompt[1], 0.5),), logprobs=2, seed=7)
    plain = collect(make_engine(max_batch=1), prompt, params)[0]
    events = Events()
    speculative = collect(make_engine(max_batch=1, prompt_lookup_num_tokens=3, observer=events), prompt, params)[0]
    assert any(kept > 0 for _, _, kept in events.rounds())
    assert speculative["tokens"] == plain["tokens"]
    assert speculative["text"] == plain["text"] and speculative["finish"] == plain["finish"]
    for ours, theirs in zip(speculative["logprobs"], plain["logprobs"], strict=True):
        assert ours.logprob == pytest.approx(theirs.logprob, abs=1e-5)
        assert [t for t, _ in ours.top] == [t for t, _ in theirs.top]


def collect_to_the_end(engine, prompt, params):
    """collect(), then checks that nothing reaches the sink after the finish (once the engine's iteration is over)."""
    outputs = queue.Queue()
    engine.submit(prompt, params, outputs.put)
    result = wait(outputs, 1)[0]
    engine.call(lambda: None)
    assert outputs.empty(), "output after the finish"
    return result


def test_a_sequence_ending_inside_a_kept_draft(model_and_tokenizer, make_engine, monkeypatch):
    """Drafts that are the model's own greedy continuation (every one kept): a stop token or max_tokens reached
    inside a draft ends the sequence there, as the plain engine ends it, with nothing sent after the finish; the
    slot's next request is right."""
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer(REPEATING)["input_ids"]
    free = reference_greedy(model, prompt, 40)

    class Oracle:  # drafts the next `limit` (<= 4) tokens of `free`
        def __init__(self, num_tokens, max_ngram_size):
            pass

        def draft(self, sequence, limit):
            done = len(sequence) - len(prompt)
            return free[done:done + min(limit, 4)]

        def update(self, sequence, kept, drafted):
            pass

    monkeypatch.setattr(speculation, "PromptLookupDrafter", Oracle)
    events = Events()
    engine = make_engine(max_batch=1, prompt_lookup_num_tokens=4, observer=events)
    assert collect_to_the_end(engine, prompt, SamplingParams(max_tokens=40, temperature=0))["tokens"] == free
    # positions of kept drafts with more drafts after them (rounds of 4 drafts and the model's own token)
    inside = [first + j for first, drafted, kept in events.rounds() for j in range(kept) if j + 1 < drafted]
    at = next(i for i in inside if free.index(free[i]) == i)  # whose token is new there
    stopped = collect_to_the_end(engine, prompt, SamplingParams(max_tokens=40, temperature=0,
                                                                stop_token_ids=(free[at],)))
    assert stopped["finish"] == "stop" and stopped["tokens"] == free[:at + 1]
    for n in (at, at + 1, at + 2):
        cut = collect_to_the_end(engine, prompt, SamplingParams(max_tokens=n, temperature=0))
        assert cut["tokens"] == free[:n] and cut["finish"] == "length"
    assert engine.slots.in_use() == 0
    monkeypatch.undo()  # real drafts again
    other = tokenizer("a different prompt, a different prompt")["input_ids"]
    assert collect(engine, other, SamplingParams(max_tokens=20, temperature=0))[0]["tokens"] == \
        reference_greedy(model, other, 20)


def test_concurrent_requests_speculate_together_and_each_gets_the_plain_engines_output(model_and_tokenizer,
                                                                                    make_engine, monkeypatch):
    """Requests of other lengths, settings and finishes decoding side by side: every round verifies all the rows'
    drafts in one pass (no more than the small-M kernel's rows), rows leave it at their own positions, and each
    request's output is the plain engine's."""
    _, tokenizer = model_and_tokenizer
    requests = [(tokenizer(REPEATING)["input_ids"], SamplingParams(max_tokens=30, temperature=0)),
                (tokenizer(COUNTING)["input_ids"], SamplingParams(max_tokens=17, temperature=0.1, seed=3,
                                                                  presence_penalty=0.05, logprobs=1)),
                (tokenizer("once upon a time")["input_ids"], SamplingParams(max_tokens=9, temperature=0)),
                (tokenizer(COUNTING)["input_ids"], SamplingParams(max_tokens=25, temperature=0, stop=("three",)))]

    def run(engine):
        sinks = [queue.Queue() for _ in requests]
        engine.call(lambda: [engine.submit(p, params, sink.put) for (p, params), sink in zip(requests, sinks)])
        return [wait(sink, 1)[0] for sink in sinks]

    plain = run(make_engine(max_batch=4))
    shapes = []
    real_call = speculation.ReplayedExtend.__call__
    monkeypatch.setattr(speculation.ReplayedExtend, "__call__",
                        lambda self, tokens: shapes.append(tuple(tokens.shape)) or real_call(self, tokens))
    events = Events()
    engine = make_engine(max_batch=4, prompt_lookup_num_tokens=8, observer=events)
    speculative = run(engine)
    for ours, theirs in zip(speculative, plain, strict=True):
        assert ours["tokens"] == theirs["tokens"] and ours["finish"] == theirs["finish"]
        assert [c.logprob for c in ours["logprobs"]] == pytest.approx([c.logprob for c in theirs["logprobs"]],
                                                                       abs=1e-5)
    assert any(rows > 1 for rows, _ in shapes)  # rows verified together
    assert all(rows * width <= engine.speculation.max_rows for rows, width in shapes)
    assert any(kept > 0 for _, _, kept in events.rounds())
    assert engine.slots.in_use() == 0
    assert engine.slots.lengths.tolist() == [0] * 4  # finished rows, and free ones below running rows, kept at 0


def test_the_pass_stays_within_the_cache_and_the_small_m_rows(model_and_tokenizer, make_engine, monkeypatch):
    """Every row drafting 8 tokens (never kept), four rows, one of them with few positions left (its prompt +
    max_tokens is the whole context): no pass takes more tokens than the fullest row's cache holds, nor more rows
    than the small-M kernel's, and the outputs are the plain engine's."""
    _, tokenizer = model_and_tokenizer
    vocab = len(tokenizer)
    long = (tokenizer(REPEATING)["input_ids"] * 4)[:N_POSITIONS - 12]
    requests = [(long, SamplingParams(max_tokens=12, temperature=0))] + [
        (tokenizer(text)["input_ids"], SamplingParams(max_tokens=30, temperature=0))
        for text in (COUNTING, "once upon a time", "a b c d e f g")]

    def run(engine):
        sinks = [queue.Queue() for _ in requests]
        engine.call(lambda: [engine.submit(p, params, sink.put) for (p, params), sink in zip(requests, sinks)])
        return [wait(sink, 1)[0]["tokens"] for sink in sinks]

    plain = run(make_engine(max_batch=4))

    class EightWrong:  # 8 drafts of a token the model does not choose next (its last, + 1)
        def __init__(self, num_tokens, max_ngram_size):
            pass

        def draft(self, sequence, limit):
            return [(sequence[-1] + 1) % vocab] * min(limit, 8)

        def update(self, sequence, kept, drafted):
            pass

    monkeypatch.setattr(speculation, "PromptLookupDrafter", EightWrong)
    shapes = []
    real_call = speculation.ReplayedExtend.__call__
    monkeypatch.setattr(speculation.ReplayedExtend, "__call__",
                        lambda self, tokens: shapes.append(tuple(tokens.shape)) or real_call(self, tokens))
    engine = make_engine(max_batch=4, prompt_lookup_num_tokens=8)
    assert run(engine) == plain
    assert max(width for _, width in shapes) == 9  # 8 drafts and the last token, where they fit
    assert all(rows * width <= engine.speculation.max_rows for rows, width in shapes)
    assert any(rows == 4 for rows, _ in shapes)


@pytest.mark.parametrize("kwargs", [{"prompt_lookup_num_tokens": 0}, {"prompt_lookup_num_tokens": True},
                                    {"prompt_lookup_num_tokens": 2, "max_matching_ngram_size": 0}])
def test_bad_settings_are_errors(model_and_tokenizer, kwargs):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="must be an int >= 1"):
        Engine(model, tokenizer, **kwargs)


def test_the_server_counts_draft_tokens(model_and_tokenizer):
    from gpt_fast.serving.http import build_app
    from gpt_fast.serving.launch import BackgroundServer

    model, tokenizer = model_and_tokenizer
    app, _ = build_app(model, tokenizer, "tiny", max_batch=1, max_queue=2, prompt_lookup_num_tokens=4)
    with BackgroundServer(app) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0, timeout=30)
        text = client.completions.create(model="tiny", prompt=REPEATING, max_tokens=30, temperature=0).choices[0].text
        assert text == tokenizer.decode(reference_greedy(model, tokenizer(REPEATING)["input_ids"], 30))
        metrics = httpx.get(running.url + "/metrics", timeout=30).text
    counts = {line.split()[0].removeprefix("gpt_fast_spec_decode_"): float(line.split()[1])
              for line in metrics.splitlines() if line.startswith("gpt_fast_spec_decode_")}
    assert counts["draft_tokens_total"] > counts["accepted_tokens_total"] > 0


def test_mixed_traffic_with_prefix_cache_and_speculation_is_the_plain_engines(model_and_tokenizer, make_engine):
    """Eight requests through three slots at once (queueing, joining mid-flight, n = 2 choices, prompts sharing
    prefixes, greedy and seeded sampling, stop tokens and strings, max_tokens): with the prefix cache and prompt
    lookup together every request's choices are the plain engine's."""
    _, tokenizer = model_and_tokenizer
    shared = tokenizer("you are a helpful assistant. answer in one short sentence, and be polite. question:")
    shared = shared["input_ids"]
    rng = torch.Generator().manual_seed(4)
    requests = []
    for i in range(8):
        own = tokenizer([REPEATING, COUNTING, "once upon a time", "a b c a b c a b"][i % 4])["input_ids"]
        prompt = (shared + own if i % 2 else own)[:40]
        n = 2 if i in (3, 6) else 1
        params = SamplingParams(max_tokens=int(torch.randint(3, 20, (1,), generator=rng)),
                                temperature=0 if i % 3 else 0.3, seed=i, stop_token_ids=(prompt[5],) if i == 5 else (),
                                stop=("three",) if i == 2 else ())
        requests.append((prompt, params, n))

    def run(engine):
        sinks = [queue.Queue() for _ in requests]
        engine.call(lambda: [engine.submit(p, params, sink.put, n) for (p, params, n), sink in zip(requests, sinks)])
        return [wait(sink, n) for (_, _, n), sink in zip(requests, sinks)]

    plain = run(make_engine(max_batch=3, max_queue=16))
    events = Events()
    engine = make_engine(max_batch=3, max_queue=16, prefix_cache_size=4, prompt_lookup_num_tokens=4, observer=events)
    both = run(engine)
    for ours, theirs in zip(both, plain, strict=True):
        for i in theirs:
            assert (ours[i]["tokens"], ours[i]["finish"], ours[i]["text"]) == \
                (theirs[i]["tokens"], theirs[i]["finish"], theirs[i]["text"])
    assert events.rounds() and any(hit for kind, _, hit in (e for e in events.events if e[0] == "prefix"))
    assert engine.slots.in_use() == 0 and engine.slots.lengths.tolist() == [0, 0, 0]
