"""The decode step replayed from its recorded operators (gpt_fast/generation/replayed_step.py): the same logits and
tokens as the plain step, bit for bit, on every backend, dtype and quantization, for greedy decoding, sampling,
beam search, padded batches and the server; the replay really runs (the model's Python is not walked again); it is
refused where it would be wrong (host reads, random numbers, forward hooks); and step_replay's argument rules."""

import copy

import pytest
import torch
from conftest import seeded_prompt, tiny_lm_fixtures

from gpt_fast.generation import prompt_lookup, replayed_step
from gpt_fast.generation.decoder import IncrementalDecoder
from gpt_fast.generation.kv_cache import StaticKVCache
from gpt_fast.generation.replayed_step import ReplayedStep
from gpt_fast.models.modeling import Block
from gpt_fast.ops.kernel_plan import plan_kernels

VOCAB, N_POSITIONS = 67, 48
hf, model = tiny_lm_fixtures(11, VOCAB, N_POSITIONS)
BACKENDS = ["eager", "sdpa", "fused"]


def variant(model, backend, dtype=torch.float32, scheme=None):
    out = copy.deepcopy(model).to(dtype)
    out = out if scheme is None else out.quantize(scheme, 32)
    out.set_attn_implementation(backend)
    return out


@pytest.fixture
def block_calls(monkeypatch):
    """Counts Block.forward calls (the model's Python walked for a pass)."""
    count = [0]
    forward = Block.forward

    def counted(self, *args, **kwargs):
        count[0] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Block, "forward", counted)
    return count


def padded_prompt(batch=3, length=9):
    ids = seeded_prompt(VOCAB, length, batch, seed=4)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    return ids, mask


# -- generate: replayed against plain ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, scheme", [(torch.float32, None), (torch.bfloat16, None), (torch.float16, None),
                                           (torch.bfloat16, "int8"), (torch.bfloat16, "int4-a8")])
def test_greedy_equals_plain_steps(model, block_calls, backend, dtype, scheme):
    m = variant(model, backend, dtype, scheme)
    ids, mask = padded_prompt()
    kwargs = dict(attention_mask=mask, max_new_tokens=12, return_dict_in_generate=True, output_logits=True)
    plain = m.generate(ids, step_replay=False, **kwargs)
    walked = block_calls[0]
    replayed = m.generate(ids, **kwargs)
    layers = m.config.n_layer
    # the prefill, the first (binding) step and the recorded one walk the model; the other 9 steps only replay
    assert walked == 12 * layers and block_calls[0] - walked == 3 * layers
    torch.testing.assert_close(replayed.sequences, plain.sequences, rtol=0, atol=0)
    torch.testing.assert_close(replayed.logits, plain.logits, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_and_processors_equal_plain_steps(model, backend):
    m = variant(model, backend)
    ids, mask = padded_prompt()
    kwargs = dict(attention_mask=mask, max_new_tokens=15, do_sample=True, top_k=8, top_p=0.9, temperature=0.8,
                  repetition_penalty=1.3, no_repeat_ngram_size=3, seed=3, return_dict_in_generate=True,
                  output_scores=True)
    plain = m.generate(ids, step_replay=False, **kwargs)
    replayed = m.generate(ids, step_replay=True, **kwargs)
    torch.testing.assert_close(replayed.sequences, plain.sequences, rtol=0, atol=0)
    torch.testing.assert_close(replayed.scores, plain.scores, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_beam_search_equals_plain_steps(model, block_calls, backend):
    m = variant(model, backend)
    ids, mask = padded_prompt(batch=2)
    kwargs = dict(attention_mask=mask, max_new_tokens=10, num_beams=3, num_return_sequences=2,
                  return_dict_in_generate=True, output_scores=True)
    plain = m.generate(ids, step_replay=False, **kwargs)
    walked = block_calls[0]
    replayed = m.generate(ids, **kwargs)
    assert block_calls[0] - walked < walked  # replayed after two steps
    torch.testing.assert_close(replayed.sequences, plain.sequences, rtol=0, atol=0)
    torch.testing.assert_close(replayed.sequences_scores, plain.sequences_scores, rtol=0, atol=0)


def test_prompt_lookup_rounds_without_a_draft_are_replayed(model, block_calls, monkeypatch):
    m = variant(model, "fused")
    ids = seeded_prompt(VOCAB, 8, 1, seed=6)
    expected = m.generate(ids, max_new_tokens=12, step_replay=False)
    walked = block_calls[0]
    monkeypatch.setattr(prompt_lookup, "find_draft", lambda sequence, num_tokens, ngram: [])  # never a draft
    got = m.generate(ids, max_new_tokens=12, prompt_lookup_num_tokens=3)
    assert block_calls[0] - walked == 3 * m.config.n_layer  # the prefill, the binding step, the recorded one
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_returned_cache_equals_plain_steps(model):
    m = variant(model, "fused")
    ids, mask = padded_prompt()
    plain = m.generate(ids, attention_mask=mask, max_new_tokens=8, step_replay=False, return_dict_in_generate=True)
    replayed = m.generate(ids, attention_mask=mask, max_new_tokens=8, return_dict_in_generate=True)
    torch.testing.assert_close(replayed.cache.lengths, plain.cache.lengths, rtol=0, atol=0)
    torch.testing.assert_close(replayed.cache.keys, plain.cache.keys, rtol=0, atol=0)
    torch.testing.assert_close(replayed.cache.values, plain.cache.values, rtol=0, atol=0)


# -- ReplayedStep itself ---------------------------------------------------------------------------------------
def decoder_after_prompt(m, batch=2, length=5):
    plan = plan_kernels(m.attn_implementation, torch.device("cpu"), m.dtype)
    cache = StaticKVCache(m.config.n_layer, batch, m.config.n_head, 32, m.config.n_embd // m.config.n_head,
                          m.dtype, torch.device("cpu"))
    decoder = IncrementalDecoder(m, cache, plan)
    ids = seeded_prompt(VOCAB, length, batch, seed=2)
    decoder.prefill(ids, torch.full((batch,), length), True)
    return decoder


@pytest.mark.parametrize("backend", BACKENDS)
@torch.inference_mode()
def test_each_call_is_a_plain_step_and_keeps_its_logits(model, backend):
    m = variant(model, backend)
    plain, replayed = decoder_after_prompt(m), decoder_after_prompt(m)
    step = ReplayedStep(replayed)
    outputs = []
    for t in range(6):
        tokens = torch.tensor([3 + t, 40 - t])
        expected, got = plain.step(tokens), step(tokens)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        outputs.append((got, expected.clone()))
    assert step.program is not None and step.refused is None
    for got, expected in outputs:  # a later replay makes new tensors: earlier logits are not overwritten
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(replayed.cache.lengths, plain.cache.lengths, rtol=0, atol=0)
    torch.testing.assert_close(replayed.cache.keys, plain.cache.keys, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@torch.inference_mode()
def test_extend_is_replayed_per_token_count(model, block_calls, backend):
    """Speculative decoding's passes of several tokens, with rewinds between them, as the plain extend gives."""
    m = variant(model, backend)
    plain, replayed = decoder_after_prompt(m), decoder_after_prompt(m)
    extend = replayed_step.ReplayedExtend(replayed)
    walked = block_calls[0]
    for t, count in enumerate([3, 2, 3, 3, 2, 3, 2, 3]):
        tokens = (torch.arange(2 * count).reshape(2, count) * (t + 5)) % VOCAB
        torch.testing.assert_close(extend(tokens), plain.extend(tokens), rtol=0, atol=0)
        for decoder in (plain, replayed):
            decoder.rewind(t % 2)
    assert sorted(extend.by_count) == [2, 3] and all(r.program is not None for r in extend.by_count.values())
    assert block_calls[0] - walked == 8 * m.config.n_layer + 2 * 2 * m.config.n_layer  # plain 8, replayed 2 each
    torch.testing.assert_close(replayed.cache.lengths, plain.cache.lengths, rtol=0, atol=0)
    torch.testing.assert_close(replayed.cache.keys, plain.cache.keys, rtol=0, atol=0)
    torch.testing.assert_close(replayed.cache.values, plain.cache.values, rtol=0, atol=0)
    off = replayed_step.ReplayedExtend(decoder_after_prompt(m), enabled=False)
    off(tokens), off(tokens), off(tokens)
    assert not off.by_count


class _StepReading:
    """A decoder whose step does `reads(x)` on its hidden state before returning logits."""

    def __init__(self, model, reads):
        self.model, self.reads = model, reads

    def step(self, tokens):
        x = tokens.float() * 2
        self.reads(x)
        return x + 1


@pytest.mark.parametrize("reads, reason", [
    (lambda x: x.sum().item(), "reads a tensor value"),
    (lambda x: int(x[0]), "reads a tensor value"),
    (lambda x: bool((x > 0).any()), "reads a tensor value"),
    (lambda x: x.tolist(), "reads a tensor value"),
    (lambda x: x.numpy(), "reads a tensor value"),
    (lambda x: torch.rand_like(x), "random numbers"),
    (lambda x: torch.nn.functional.dropout(x, 0.5, training=True), "random numbers"),
])
@torch.inference_mode()
def test_steps_that_cannot_be_replayed_stay_plain(model, reads, reason):
    calls = [0]

    def counted(x):
        calls[0] += 1
        return reads(x)

    step = ReplayedStep(_StepReading(model, counted))
    for t in range(4):
        torch.testing.assert_close(step(torch.tensor([t, 1])), torch.tensor([2.0 * t + 1, 3.0]))
    assert step.program is None and reason in step.refused
    assert calls[0] == 4  # every call ran the step's Python
    required = ReplayedStep(_StepReading(model, reads), required=True)
    required(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="step_replay=True.*" + reason):
        required(torch.tensor([1, 2]))


@torch.inference_mode()
def test_a_step_without_host_reads_is_replayed(model):
    calls = [0]

    def counted(x):
        calls[0] += 1
        return torch.nn.functional.dropout(x, 0.5, training=False)  # not training: no random numbers

    step = ReplayedStep(_StepReading(model, counted))
    for t in range(4):
        torch.testing.assert_close(step(torch.tensor([t, 1])), torch.tensor([2.0 * t + 1, 3.0]))
    assert step.refused is None and calls[0] == 2  # the plain first call and the recorded one


class _ListAndOutStep:
    """A step whose operators take produced tensors inside a list (cat, stack), as out=, and return tuples."""

    def __init__(self, model):
        self.model, self.state = model, torch.zeros(2)

    def step(self, tokens):
        x = tokens.float()
        a, b = torch.split(torch.cat([x, x * 3]), 2)  # (2,), (2,)
        both = torch.stack((a, self.state, b))  # (3, 2)
        out = torch.empty(2)
        torch.add(both[0], both[2], alpha=2, out=out)
        self.state.add_(out)  # state changes in place: each call sees the last one's
        return torch.max(both, dim=0).values + out


@torch.inference_mode()
def test_list_tuple_and_out_arguments(model):
    plain, replayed = _ListAndOutStep(model), _ListAndOutStep(model)
    step = ReplayedStep(replayed)
    for t in range(5):
        tokens = torch.tensor([t, 2 * t + 1])
        torch.testing.assert_close(step(tokens), plain.step(tokens), rtol=0, atol=0)
        torch.testing.assert_close(replayed.state, plain.state, rtol=0, atol=0)
    assert step.refused is None and step.program is not None
    with pytest.raises(ValueError, match=r"tokens of shape \(2,\).*got \(3,\)"):
        step(torch.tensor([1, 2, 3]))


def test_forward_hooks_keep_the_plain_step(model):
    m = variant(model, "fused")
    seen = []
    handle = m.transformer.h[0].register_forward_hook(lambda module, args, out: seen.append(1))
    ids = seeded_prompt(VOCAB, 6, 1, seed=5)
    try:
        m.generate(ids, max_new_tokens=7)
        assert len(seen) == 7  # the prefill and every one of the 6 steps ran the hook
        with pytest.raises(ValueError, match="forward hooks"):
            m.generate(ids, max_new_tokens=7, step_replay=True)
        assert len(seen) == 7  # refused before any work
    finally:
        handle.remove()
    assert replayed_step.refusal_before_recording(m) is not None  # gradients enabled outside generate
    with torch.inference_mode():
        assert replayed_step.refusal_before_recording(m) is None


# -- arguments -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(step_replay="yes"), TypeError, "step_replay"),
    (dict(step_replay=1), TypeError, "step_replay"),
    (dict(step_replay=True, cuda_graph=True), ValueError, "step_replay=True and cuda_graph=True"),
])
def test_bad_step_replay_arguments(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        model.generate(seeded_prompt(VOCAB, 4, 1), max_new_tokens=3, **kwargs)


def test_step_replay_false_walks_the_model_every_step(model, block_calls):
    m = variant(model, "fused")
    m.generate(seeded_prompt(VOCAB, 4, 1), max_new_tokens=6, step_replay=False)
    assert block_calls[0] == 6 * m.config.n_layer
