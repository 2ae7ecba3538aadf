"""model.generate_batch (gpt_fast/serving/batch.py): transformers' continuous-batching call answered by the serving
engine. Greedy tokens, ids and order against transformers' generate_batch and against generate() per prompt; EOS;
sampling with a seed; log-probabilities; timestamps; the model's mode; every refusal."""

import functools
import threading

import pytest
import torch

import gpt_fast
from gpt_fast.serving import batch
from gpt_fast.serving import engine as engine_module

transformers = pytest.importorskip("transformers")

CONFIG = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=48, initializer_range=1.0)
PROMPTS = [[1, 2, 3], [40], [5] * 30, [9, 8, 7, 6, 5, 4]]  # greedy: req_1 gives 40, 40, 54, ...; req_3 4, 39, ...


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    theirs = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**CONFIG)).eval()
    return theirs, gpt_fast.OpenAIGPTLMHeadModel.from_transformers(theirs)


def tokens(result: dict) -> dict:
    return {key: out.generated_tokens for key, out in result.items()}


@pytest.mark.parametrize("eos", [None, 54])
def test_greedy_matches_transformers_generate_batch(pair, eos):
    theirs, ours = pair
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, **({} if eos is None else
                                                                             {"eos_token_id": eos}))
    expected = theirs.generate_batch(PROMPTS, generation_config=transformers.GenerationConfig(**settings))
    result = ours.generate_batch(PROMPTS, generation_config=transformers.GenerationConfig(**settings))
    assert list(result) == list(expected) == [f"req_{i}" for i in range(len(PROMPTS))]
    assert tokens(result) == tokens(expected)
    assert all(out.prompt_ids == PROMPTS[i] and out.status == "finished" and out.is_finished() and out.error is None
               for i, out in enumerate(result.values()))
    if eos is not None:  # EOS ends the sequence and is kept, as transformers keeps it
        assert result["req_1"].generated_tokens == [40, 40, 54]


@pytest.mark.parametrize("max_batch", [1, 3, 16])
def test_each_prompt_gets_what_generate_gives_it_alone(pair, max_batch):
    """Sequences join and leave the decode batch (max_batch 1: one after another; 3: a queue)."""
    _, ours = pair
    result = ours.generate_batch(PROMPTS, max_new_tokens=9, max_batch=max_batch)
    for i, prompt in enumerate(PROMPTS):
        alone = ours.generate(torch.tensor([prompt]), max_new_tokens=9)[0, len(prompt):].tolist()
        assert result[f"req_{i}"].generated_tokens == alone


def test_sampling_with_a_seed_repeats_and_orders_children_first(pair):
    _, ours = pair
    kwargs = dict(do_sample=True, top_k=0, num_return_sequences=3, seed=5, max_new_tokens=6, temperature=1.5)
    first, again = ours.generate_batch(PROMPTS[:2], **kwargs), ours.generate_batch(PROMPTS[:2], **kwargs)
    assert list(first) == ["req_0__child#0", "req_0__child#1", "req_0", "req_1__child#0", "req_1__child#1", "req_1"]
    assert tokens(first) == tokens(again)
    assert len({tuple(out.generated_tokens) for out in first.values()}) > 2  # the sequences differ
    other = ours.generate_batch(PROMPTS[:2], **dict(kwargs, seed=6))
    assert tokens(other) != tokens(first)


def test_logprobs_and_timestamps(pair):
    _, ours = pair
    config = transformers.ContinuousBatchingConfig(return_logprobs=True)
    result = ours.generate_batch(PROMPTS[:2], continuous_batching_config=config, max_new_tokens=5,
                                 record_timestamps=True)
    for i, prompt in enumerate(PROMPTS[:2]):
        out = result[f"req_{i}"]
        run = ours.generate(torch.tensor([prompt]), max_new_tokens=5, output_logits=True,
                            return_dict_in_generate=True)
        expected = [torch.log_softmax(step[0].float(), -1)[token].item()
                    for step, token in zip(run.logits, out.generated_tokens)]
        assert out.logprobs == pytest.approx(expected, abs=1e-5)
        assert len(out.timestamps) == 5 and out.timestamps == sorted(out.timestamps)
        assert out.created_time <= out.lifespan[0] <= out.lifespan[1]
    assert ours.generate_batch(PROMPTS[:1], max_new_tokens=2)["req_0"].logprobs == []  # not asked for


def test_the_model_keeps_its_mode_and_no_inputs_give_nothing(pair):
    _, ours = pair
    ours.train()
    try:
        ours.generate_batch(PROMPTS[:1], max_new_tokens=2)
        assert ours.training
    finally:
        ours.eval()
    assert ours.generate_batch([]) == {}


@pytest.mark.parametrize("args, kwargs, error, match", [
    ("not a list", {}, TypeError, "list of prompts"),
    ([[1, 2], 3], {}, TypeError, "list of prompts"),
    ([[]], {}, ValueError, "non-empty"),
    ([[1, True]], {}, ValueError, "token ids"),
    ([[1, 64]], {}, ValueError, r"integers in \[0, 64\)"),
    ([[1] * 49], {}, ValueError, "n_positions"),
    ([[1] * 40], dict(max_new_tokens=20), ValueError, "n_positions"),
    ([[1]], dict(max_batch=0), ValueError, "max_batch"),
    ([[1]], dict(repetition_penalty=1.3), NotImplementedError, "repetition_penalty"),
    ([[1]], dict(num_beams=2), NotImplementedError, "num_beams"),
    ([[1]], dict(no_repeat_ngram_size=2), NotImplementedError, "no_repeat_ngram_size"),
    ([[1]], dict(do_sample=True, temperature=3.0), ValueError, "temperature"),
    ([[1]], dict(num_return_sequences=2), ValueError, "do_sample"),
    ([[1]], dict(top_p=1.5), ValueError, "top_p"),
    ([[1]], dict(max_new_token=3), TypeError, "unexpected arguments"),
    ([[1]], dict(suppress_tokens=torch.tensor([1])), NotImplementedError, "suppress_tokens"),
])
def test_bad_requests_are_refused_before_any_work(pair, args, kwargs, error, match):
    _, ours = pair
    with pytest.raises(error, match=match):
        ours.generate_batch(args, **kwargs)


def test_neutral_values_of_unsupported_settings_are_accepted(pair):
    _, ours = pair
    plain = ours.generate_batch(PROMPTS[:2], max_new_tokens=4)
    same = ours.generate_batch(PROMPTS[:2], max_new_tokens=4, repetition_penalty=1.0, num_beams=1,
                               logits_processor=[], persistent_manager=True, warmup=False)
    assert tokens(same) == tokens(plain)


@pytest.mark.parametrize("speculation", ["prompt lookup", "assistant"])
def test_speculative_decoding_gives_the_plain_tokens_in_fewer_passes(pair, monkeypatch, speculation):
    """prompt_lookup_num_tokens, or assistant_model (the model's twin: every draft kept): the engine's rounds run
    over the decoding rows, and each sequence's tokens are the plain run's (greedy, and sampled with a seed)."""
    import copy

    from gpt_fast.serving import speculation as speculation_module

    _, ours = pair
    outcomes = []
    real = speculation_module.Speculation.round
    monkeypatch.setattr(speculation_module.Speculation, "round",
                        lambda self, *args: outcomes.append(real(self, *args)) or outcomes[-1])
    kwargs = (dict(prompt_lookup_num_tokens=3) if speculation == "prompt lookup" else
              dict(assistant_model=copy.deepcopy(ours), num_assistant_tokens=3, assistant_confidence_threshold=0.0))
    for settings in (dict(max_new_tokens=12), dict(max_new_tokens=8, do_sample=True, seed=3, num_return_sequences=2)):
        outcomes.clear()
        fast = ours.generate_batch(PROMPTS, max_batch=3, **settings, **kwargs)
        assert tokens(fast) == tokens(ours.generate_batch(PROMPTS, max_batch=3, **settings))
        kept = [outcome[1] for outcome in outcomes if outcome is not None]
        assert kept and sum(kept) > 0


def test_an_assistants_settings_without_one(pair):
    _, ours = pair
    plain = ours.generate_batch(PROMPTS[:2], max_new_tokens=4)
    defaults = dict(num_assistant_tokens=20, assistant_confidence_threshold=0.4,
                    num_assistant_tokens_schedule="constant")
    assert tokens(ours.generate_batch(PROMPTS[:2], max_new_tokens=4, **defaults)) == tokens(plain)
    with pytest.raises(ValueError, match="need an assistant_model"):
        ours.generate_batch(PROMPTS[:2], max_new_tokens=4, num_assistant_tokens=5)
    with pytest.raises(ValueError, match="int >= 1"):
        ours.generate_batch(PROMPTS[:2], max_new_tokens=4, prompt_lookup_num_tokens=0)


def run_with_deadline(fn, seconds=60):
    """fn()'s exception (or None); fails instead of hanging when fn does not return in time."""
    caught = []

    def target():
        try:
            fn()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            caught.append(error)
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "generate_batch hung"
    return caught[0] if caught else None


def test_a_failing_step_raises_after_the_run(pair, monkeypatch):
    _, ours = pair
    monkeypatch.setattr(ours, "logits", lambda *args: 1 / 0)  # the engine's first-token logits
    error = run_with_deadline(lambda: ours.generate_batch(PROMPTS[:2], max_new_tokens=3))
    assert isinstance(error, RuntimeError) and "2 of 2 sequences failed" in str(error)
    assert "ZeroDivisionError" in str(error)


def test_an_output_that_cannot_be_recorded_stops_the_run(pair, monkeypatch):
    """The engine cancels a sequence whose sink raises: generate_batch must end, not wait for it."""
    _, ours = pair
    monkeypatch.setattr(batch._Collector, "record", lambda self, out, output: 1 / 0)
    error = run_with_deadline(lambda: ours.generate_batch(PROMPTS[:2], max_new_tokens=3))
    assert isinstance(error, RuntimeError) and isinstance(error.__cause__, ZeroDivisionError)


def test_whole_prompts_are_prefilled_together_and_long_ones_in_chunks(pair, monkeypatch):
    """prefill_first: the prompts that fit a chunk (8 tokens here) in one batched pass, one per request (a
    request's other sequences share its prompt); the 30-token prompt chunk by chunk; tokens as generate's."""
    _, ours = pair
    together, real = [], engine_module.prefill_together

    def spy(model, plan, cache, slots, prompts):
        together.append([len(p) for p in prompts])
        return real(model, plan, cache, slots, prompts)

    monkeypatch.setattr(engine_module, "prefill_together", spy)
    monkeypatch.setattr(batch, "Engine", functools.partial(engine_module.Engine, prefill_chunk=8))
    result = ours.generate_batch(PROMPTS, max_new_tokens=6)
    assert together == [[3, 1, 6]]
    for i, prompt in enumerate(PROMPTS):
        alone = ours.generate(torch.tensor([prompt]), max_new_tokens=6)[0, len(prompt):].tolist()
        assert result[f"req_{i}"].generated_tokens == alone
    together.clear()
    sampled = ours.generate_batch(PROMPTS[:2], max_new_tokens=3, do_sample=True, num_return_sequences=2, seed=0)
    assert together == [[3, 1]] and len(sampled) == 4
