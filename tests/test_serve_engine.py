"""The serving engine without HTTP: continuous batching over slots, chunked prefill, per-row sampling and seeds,
stop strings, max_tokens, cancellation, the queue bound and request checks. Expected tokens come from
model.generate / the model's forward (the reference), never from the engine itself."""

from __future__ import annotations

import queue
import threading

import pytest
import torch
from conftest import LoRA
from serve_helpers import collect, engine_fixtures, reference_greedy, tiny_model_and_tokenizer, wait

from gpt_fast.serving import BadRequest, ContextTooLong, Engine, QueueFull, SamplingParams
from gpt_fast.serving.observer import EngineObserver


class Recorder(EngineObserver):
    def __init__(self):
        self.batch_sizes = []

    def step(self, batch_size, queue_depth, new_tokens):
        self.batch_sizes.append(batch_size)


model_and_tokenizer, make_engine = engine_fixtures()


def prompt_of(tokenizer, text="hello, my dog is cute. the weather today"):
    return tokenizer(text)["input_ids"]


@pytest.mark.parametrize("chunk", [4, 256])  # a prompt of 11 tokens in three chunks, and in one
def test_greedy_matches_generate_with_chunked_prefill(model_and_tokenizer, make_engine, chunk):
    model, tokenizer = model_and_tokenizer
    prompt = prompt_of(tokenizer)
    engine = make_engine(max_batch=2, prefill_chunk=chunk)
    out = collect(engine, prompt, SamplingParams(max_tokens=12, temperature=0))[0]
    assert out["tokens"] == reference_greedy(model, prompt, 12)
    assert out["finish"] == "length"
    assert out["text"] == tokenizer.decode(out["tokens"])


def steer_c_fc(model):  # a forward hook adding a vector to c_fc's output
    steer = 4.0 * torch.randn(4 * model.config.n_embd, generator=torch.Generator().manual_seed(2))
    model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda module, args, out: out + steer)


def replace_c_fc(model):
    model.transformer.h[0].mlp.c_fc = LoRA(model.transformer.h[0].mlp.c_fc)


@pytest.mark.parametrize("change", [steer_c_fc, replace_c_fc])
def test_a_hooked_or_replaced_block_module_runs_in_the_served_tokens(change):
    """A forward hook on a module inside a block, or a module put in place of a block's layer
    (models/block_modules.py), runs in the engine's prefill chunks and decode steps as in generate(); without it the
    tokens differ."""
    model, tokenizer = tiny_model_and_tokenizer(seed=1)
    prompt = prompt_of(tokenizer)
    plain = reference_greedy(model, prompt, 10)
    change(model)
    expected = reference_greedy(model, prompt, 10)
    assert expected != plain
    engine = Engine(model, tokenizer, max_batch=2, prefill_chunk=4).start()
    try:
        assert collect(engine, prompt, SamplingParams(max_tokens=10, temperature=0))[0]["tokens"] == expected
    finally:
        engine.stop()


def test_requests_joining_a_running_batch_each_get_their_own_greedy_tokens(model_and_tokenizer, make_engine):
    model, tokenizer = model_and_tokenizer
    recorder = Recorder()
    engine = make_engine(max_batch=4, prefill_chunk=4, observer=recorder)
    prompts = [prompt_of(tokenizer, t) for t in ("the cat sat on", "a b c d e f g h i j k l m n", "why", "once upon")]
    sinks = [queue.Queue() for _ in prompts]
    for prompt, sink, n in zip(prompts, sinks, (20, 8, 15, 30)):
        engine.submit(prompt, SamplingParams(max_tokens=n, temperature=0), sink.put)
    results = [wait(sink, 1)[0]["tokens"] for sink in sinks]
    for prompt, tokens in zip(prompts, results):
        assert tokens == reference_greedy(model, prompt, len(tokens))
    assert max(recorder.batch_sizes) > 1  # they really ran together
    assert engine.slots.in_use() == 0
    assert any(step.program is not None for step in engine.decoders.values())  # decode steps were replayed


def test_a_seeded_request_gives_the_same_tokens_alone_or_batched(model_and_tokenizer, make_engine):
    _, tokenizer = model_and_tokenizer
    prompt = prompt_of(tokenizer)
    params = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    alone = collect(make_engine(max_batch=1), prompt, params)[0]["tokens"]

    recorder = Recorder()
    engine = make_engine(max_batch=4, prefill_chunk=4, observer=recorder)
    others = [queue.Queue() for _ in range(3)]
    for i, sink in enumerate(others):  # unseeded neighbours of other lengths and settings, joined before it
        engine.submit(prompt_of(tokenizer, "a different prompt " * (i + 1)),
                      SamplingParams(max_tokens=25, temperature=1.3, presence_penalty=1.0), sink.put)
    batched = collect(engine, prompt, params)[0]["tokens"]
    for sink in others:
        wait(sink, 1)
    assert max(recorder.batch_sizes) > 1
    assert batched == alone
    assert collect(engine, prompt, SamplingParams(max_tokens=20, seed=99))[0]["tokens"] != alone


def test_n_choices_differ_and_top_k_1_is_greedy(model_and_tokenizer, make_engine):
    model, tokenizer = model_and_tokenizer
    prompt = prompt_of(tokenizer)
    engine = make_engine(max_batch=4)
    two = collect(engine, prompt, SamplingParams(max_tokens=10, seed=5), n=2)
    assert two[0]["tokens"] != two[1]["tokens"]
    top1 = collect(engine, prompt, SamplingParams(max_tokens=10, temperature=1.5, top_k=1), n=2)
    assert top1[0]["tokens"] == top1[1]["tokens"] == reference_greedy(model, prompt, 10)
    min_p_1 = collect(engine, prompt, SamplingParams(max_tokens=10, temperature=1.5, min_p=1.0, seed=5), n=2)
    assert min_p_1[0]["tokens"] == min_p_1[1]["tokens"] == top1[0]["tokens"]  # min_p 1 keeps the likeliest only
    wide = collect(engine, prompt, SamplingParams(max_tokens=10, temperature=1.5, min_p=0.001, seed=5), n=2)
    assert wide[0]["tokens"] != wide[1]["tokens"]  # a small min_p still samples


def test_penalties_match_a_reference_processor(model_and_tokenizer, make_engine):
    model, tokenizer = model_and_tokenizer
    prompt = prompt_of(tokenizer)
    presence, frequency = 0.7, 1.3

    def penalise(input_ids, scores):  # OpenAI's penalties on the generated tokens, written out
        generated = input_ids[:, len(prompt):]
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)

    with torch.inference_mode():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=15,
                                  logits_processor=[penalise])[0, len(prompt):].tolist()
    params = SamplingParams(max_tokens=15, temperature=0, presence_penalty=presence, frequency_penalty=frequency)
    out = collect(make_engine(), prompt, params)[0]["tokens"]
    assert out == expected
    assert out != reference_greedy(model, prompt, 15)  # the penalties changed something


def test_logprobs_and_prompt_logprobs_are_the_models(model_and_tokenizer, make_engine):
    model, tokenizer = model_and_tokenizer
    prompt = prompt_of(tokenizer)
    out = collect(make_engine(prefill_chunk=4), prompt,
                  SamplingParams(max_tokens=5, temperature=0, logprobs=3, prompt_logprobs=True))[0]
    full = prompt + out["tokens"]
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), dim=-1)  # (T, V)
    expected_prompt = [logprobs[i - 1, full[i]].item() for i in range(1, len(prompt))]
    assert out["prompt_logprobs"][0] is None
    assert out["prompt_logprobs"][1:] == pytest.approx(expected_prompt, abs=1e-4)
    for step, choice in enumerate(out["logprobs"]):
        row = logprobs[len(prompt) - 1 + step]
        assert choice.logprob == pytest.approx(row[choice.token].item(), abs=1e-4)
        assert [t for t, _ in choice.top] == row.topk(3).indices.tolist()


def test_stop_strings_and_stop_tokens(model_and_tokenizer, make_engine):
    model, tokenizer = model_and_tokenizer
    prompt = prompt_of(tokenizer)
    engine = make_engine()
    free = collect(engine, prompt, SamplingParams(max_tokens=12, temperature=0))[0]
    words = free["text"].split(" ")
    stop = words[2][:3]  # a stop string inside the third word
    cut = collect(engine, prompt, SamplingParams(max_tokens=12, temperature=0, stop=("zzzzzz", stop)))[0]
    assert cut["finish"] == "stop"
    assert cut["text"] == free["text"][:free["text"].index(stop)]
    token = free["tokens"][3]
    by_token = collect(engine, prompt, SamplingParams(max_tokens=12, temperature=0, stop_token_ids=(token,)))[0]
    assert by_token["finish"] == "stop" and by_token["tokens"] == free["tokens"][:free["tokens"].index(token) + 1]
    assert by_token["text"] == tokenizer.decode(by_token["tokens"][:-1])


def test_cancelling_frees_the_slot(model_and_tokenizer, make_engine):
    _, tokenizer = model_and_tokenizer
    engine = make_engine(max_batch=1)
    started = threading.Event()
    handle = engine.submit(prompt_of(tokenizer), SamplingParams(max_tokens=50, temperature=0),
                           lambda out: started.set())
    assert started.wait(10)
    engine.cancel(handle)
    out = collect(engine, prompt_of(tokenizer), SamplingParams(max_tokens=3, temperature=0))[0]  # gets the slot
    assert out["finish"] == "length"
    assert engine.slots.in_use() == 0 and not engine.active


def test_queue_bound_and_requests_that_can_never_run(model_and_tokenizer, make_engine):
    model, tokenizer = model_and_tokenizer
    engine = make_engine(max_batch=1, max_queue=2)
    prompt = prompt_of(tokenizer)
    with pytest.raises(ContextTooLong, match="maximum context length is 64"):
        engine.submit(prompt, SamplingParams(max_tokens=64 - len(prompt) + 1), lambda out: None)
    with pytest.raises(BadRequest, match="empty"):
        engine.submit([], SamplingParams(), lambda out: None)
    with pytest.raises(BadRequest, match="token ids"):
        engine.submit([len(tokenizer)], SamplingParams(), lambda out: None)
    engine.stop()  # nothing runs: the queue fills and stays full
    engine.running = True  # accept submissions without a loop to drain them
    engine.submit(prompt, SamplingParams(), lambda out: None, n=2)
    engine.submit(prompt, SamplingParams(), lambda out: None)  # 3 sequences: one for the free slot, two queued
    with pytest.raises(QueueFull, match="2 of 2 sequences waiting"):
        engine.submit(prompt, SamplingParams(), lambda out: None)


def test_a_burst_as_large_as_the_slots_plus_the_queue_is_accepted(model_and_tokenizer, make_engine):
    """Sequences that arrive together wait in the queue until the loop admits them: the bound counts only those
    that will still wait once the free slots fill, so a burst of max_batch + max_queue is not refused."""
    _, tokenizer = model_and_tokenizer
    engine = make_engine(max_batch=4, max_queue=2)
    engine.stop()
    engine.running = True  # accept submissions without a loop to drain them
    for _ in range(6):
        engine.submit(prompt_of(tokenizer), SamplingParams(), lambda out: None)
    with pytest.raises(QueueFull):
        engine.submit(prompt_of(tokenizer), SamplingParams(), lambda out: None)


@pytest.mark.parametrize("kwargs, param", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=2.5), "temperature"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(top_k=-2), "top_k"), (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=1.5), "max_tokens"), (dict(presence_penalty=3.0), "presence_penalty"),
    (dict(frequency_penalty=float("nan")), "frequency_penalty"), (dict(logprobs=21), "logprobs"),
    (dict(stop=("",)), "stop"), (dict(seed=True), "seed"), (dict(min_p=1.5), "min_p"), (dict(min_p=-0.1), "min_p"),
])
def test_bad_sampling_params_are_bad_requests(kwargs, param):
    with pytest.raises(BadRequest) as error:
        SamplingParams(**kwargs)
    assert error.value.param == param and error.value.status == 400


def test_a_free_slot_below_a_decoding_row_keeps_length_zero(model_and_tokenizer, make_engine):
    _, tokenizer = model_and_tokenizer
    engine = make_engine(max_batch=2)
    lengths_of_slot_0 = []

    def watch(out):  # runs on the engine thread right after each of the long request's steps
        lengths_of_slot_0.append(int(engine.slots.lengths[0]))
        long_outputs.put(out)

    short, long_outputs = queue.Queue(), queue.Queue()
    with engine.wake:  # both queued before the loop admits either: slots 0 and 1
        engine.submit(prompt_of(tokenizer), SamplingParams(max_tokens=2, temperature=0), short.put)
        engine.submit(prompt_of(tokenizer), SamplingParams(max_tokens=30, temperature=0), watch)
    wait(short, 1)
    wait(long_outputs, 1)
    assert lengths_of_slot_0[-10:] == [0] * 10  # the step's write for the free row 0 was undone each time


def test_a_one_token_prompt_with_prompt_logprobs(model_and_tokenizer, make_engine):
    out = collect(make_engine(), [5], SamplingParams(max_tokens=2, temperature=0, logprobs=1, prompt_logprobs=True))
    assert out[0]["prompt_logprobs"] == [None] and len(out[0]["tokens"]) == 2


@pytest.mark.parametrize("max_batch", [4, 2])  # 2: the third choice waits for a slot and prefills its own copy
def test_a_requests_choices_share_one_prefill(model_and_tokenizer, make_engine, monkeypatch, max_batch):
    """A request's choices prefill their prompt once: the others holding a slot copy its cached keys and values and
    prompt log-probabilities and draw their first token from the same logits, so choice i still gives what a
    one-choice request seeded seed + i gives."""
    from gpt_fast.serving import engine as engine_module

    _, tokenizer = model_and_tokenizer
    prompt = prompt_of(tokenizer)
    starts = []
    real = engine_module.prefill_chunk
    monkeypatch.setattr(engine_module, "prefill_chunk", lambda *args, **kw: starts.append(args[5]) or real(*args, **kw))
    engine = make_engine(max_batch=max_batch, prefill_chunk=4)

    def params(seed):
        return SamplingParams(max_tokens=8, temperature=1.0, seed=seed, logprobs=0, prompt_logprobs=True)

    three = collect(engine, prompt, params(7), n=3)
    prefills = starts.count(0)  # chunks starting at position 0: one per prompt prefilled
    assert prefills == (1 if max_batch >= 3 else 2)
    assert len(starts) == prefills * -(-len(prompt) // 4)
    for i in range(3):
        alone = collect(engine, prompt, params(7 + i))[0]
        assert three[i]["tokens"] == alone["tokens"]
        assert three[i]["prompt_logprobs"] == pytest.approx(alone["prompt_logprobs"], abs=1e-5)
        assert [c.logprob for c in three[i]["logprobs"]] == pytest.approx([c.logprob for c in alone["logprobs"]],
                                                                          abs=1e-5)
