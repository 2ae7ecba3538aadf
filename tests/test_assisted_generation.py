"""Assisted decoding (generate(..., assistant_model=...), gpt_fast/generation/assistant.py): the model's output
against plain decoding (greedy, seeded sampling, EOS, padding, every backend), the assistant's drafts against its
own greedy decoding from scratch (so its cache is kept in step with the sequence), the draft length's settings and
schedules, the patched transformers path, and every refusal. Passes are counted per model, so that a test cannot
pass by never speculating."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_speculative_sampling_is_plain

from gpt_fast import GenerationConfig, OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.generation.assistant import AssistantDrafter
from gpt_fast.generation.decoder import IncrementalDecoder

VOCAB = 11
INIT = 0.5  # large weights: the greedy text varies (at GPT-1's 0.02 a random model repeats one token)


def make_model(layers, width, heads, seed, backend="fused", positions=96):
    torch.manual_seed(seed)
    config = OpenAIGPTConfig(vocab_size=VOCAB, n_positions=positions, n_embd=width, n_layer=layers, n_head=heads,
                             initializer_range=INIT)
    return OpenAIGPTLMHeadModel(config, attn_implementation=backend).eval()


@pytest.fixture(scope="module", params=["eager", "sdpa", "fused"])
def model(request):
    return make_model(3, 48, 3, 0, request.param)


@pytest.fixture(scope="module")
def assistant():
    """A small model of its own: its drafts are mostly wrong."""
    return make_model(1, 24, 2, 1)


@pytest.fixture(scope="module")
def twin(model):
    """The model with its weights perturbed: it agrees with the model on ~60% of the tokens, so some drafts are kept
    and some dropped."""
    twin = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.005)
    return twin


@pytest.fixture
def passes(monkeypatch):
    """The several-token passes and single steps of each model, by id(model), during generate (all of them with
    step_replay=False; a replayed pass does not call the decoder)."""
    counts = {}
    extend, step = IncrementalDecoder.extend, IncrementalDecoder.step

    def counted(kind, real):
        def run(self, tokens):
            key = (id(self.model), kind)
            counts[key] = counts.get(key, 0) + 1
            return real(self, tokens)
        return run

    monkeypatch.setattr(IncrementalDecoder, "extend", counted("extend", extend))
    monkeypatch.setattr(IncrementalDecoder, "step", counted("step", step))
    return counts


@pytest.fixture
def drafts(monkeypatch):
    """Each draft as (the sequence it followed, the draft tokens, the assistant's training flag)."""
    made = []
    real = AssistantDrafter.draft

    def draft(self, sequence, limit):
        tokens = real(self, sequence, limit)
        if tokens:  # [] is the last token's round (never fed, so never drafted)
            made.append((list(sequence), tokens, self.model.training))
        return tokens

    monkeypatch.setattr(AssistantDrafter, "draft", draft)
    return made


def prompt(length=12, seed=0, batch=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- the model's output -------------------------------------------------------------------------------------------
def test_greedy_tokens_are_plain_decodings_and_passes_are_saved(model, assistant, twin, passes):
    for seed in range(3):
        ids = prompt(seed=seed)
        expected = model.generate(ids, max_new_tokens=40, step_replay=False)
        for helper in (assistant, twin):
            got = model.generate(ids, max_new_tokens=40, assistant_model=helper, num_assistant_tokens=4,
                                 step_replay=False)
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
    passes[(id(model), "step")] -= 3 * 39  # less the plain loops' steps
    model_passes = passes[(id(model), "extend")] + passes[(id(model), "step")]
    assert passes[(id(model), "extend")] > 0 and model_passes < 2 * 3 * 39  # the twin's drafts saved passes
    assert passes[(id(assistant), "step")] > 0 and passes[(id(twin), "step")] > 0  # both drafted


def test_a_copy_of_the_model_has_every_draft_kept(model, passes):
    twin = copy.deepcopy(model)
    ids = prompt(seed=4)
    expected = model.generate(ids, max_new_tokens=31)
    passes.clear()
    got = model.generate(ids, max_new_tokens=31, assistant_model=twin, num_assistant_tokens=5,
                         assistant_confidence_threshold=0, step_replay=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert passes[(id(model), "extend")] == 5  # 1 token from the prefill, then 5 passes of 5 drafts + 1 each: 31
    assert (id(model), "step") not in passes


def test_drafts_are_the_assistants_own_greedy_continuations(model, twin, drafts):
    """Each round the assistant's cache holds the sequence so far (the kept drafts, without the dropped ones)."""
    ids = prompt(seed=1)
    model.generate(ids, max_new_tokens=60, assistant_model=twin, num_assistant_tokens=3,
                   num_assistant_tokens_schedule="heuristic_transient", assistant_confidence_threshold=0)
    assert len(drafts) > 5
    for sequence, tokens, _ in drafts:
        alone = twin.generate(torch.tensor([sequence]), max_new_tokens=len(tokens))[0, len(sequence):]
        assert tokens == alone.tolist()
    kept = [len(following) - len(sequence) - 1 for (sequence, _, _), (following, _, _) in zip(drafts, drafts[1:])]
    lengths = [len(tokens) for _, tokens, _ in drafts[:-1]]
    assert any(k == n for k, n in zip(kept, lengths)) and any(k < n for k, n in zip(kept, lengths))


@pytest.mark.parametrize("length, schedule, rounds", [
    (1, "constant", 11),  # 79 steps after the prefill's token: rounds at steps 1-4, 6, 9, 14, 23, 40, 57 and 74
    (3, "constant", 11),  # a constant length never shrinks: its misses count whatever their length
    (3, "heuristic_transient", 13),  # drafts of 3, 2, 1, 1, 1, 1, then 1 after pauses of 1, 2, 4, 8, 16, 16, 16
])
def test_drafting_pauses_while_drafts_fail(model, monkeypatch, passes, length, schedule, rounds):
    """Every draft made wrong (each token + 1): after four rejected drafts of the shortest length drafting pauses
    for 1, 2, 4, 8, 16, 16 ... steps (speculative.DraftPauses); the assistant catches up when it resumes (its drafts
    stay its own greedy continuations) and the tokens stay plain decoding's."""
    copy_ = copy.deepcopy(model)
    real, made = AssistantDrafter.draft, []

    def wrong(self, sequence, limit):
        tokens = real(self, sequence, limit)
        if tokens:
            made.append((list(sequence), tokens))
        return [(token + 1) % VOCAB for token in tokens]

    monkeypatch.setattr(AssistantDrafter, "draft", wrong)
    ids = prompt(seed=2)
    expected = model.generate(ids, max_new_tokens=80, step_replay=False)
    passes.clear()
    got = model.generate(ids, max_new_tokens=80, assistant_model=copy_, num_assistant_tokens=length,
                         num_assistant_tokens_schedule=schedule, assistant_confidence_threshold=0, step_replay=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert passes[(id(model), "extend")] == rounds
    assert passes[(id(model), "extend")] + passes[(id(model), "step")] == 79
    for sequence, tokens in made:
        alone = copy_.generate(torch.tensor([sequence]), max_new_tokens=len(tokens))[0, len(sequence):]
        assert tokens == alone.tolist()


def test_sampling_draws_what_plain_sampling_draws(model, twin, passes):
    # tolerance: these large weights give logits up to ~7
    assert_speculative_sampling_is_plain(model, prompt(), 1e-4, assistant_model=twin)
    assert passes[(id(model), "extend")] > 0


def test_eos_ends_the_generation_and_the_draft(model, drafts):
    ids = prompt(seed=2)
    twin = copy.deepcopy(model)  # drafts what the model emits, so the EOS is drafted too
    kwargs = dict(max_new_tokens=50)
    text = model.generate(ids, **kwargs)[0, 12:].tolist()
    eos = next(t for i, t in enumerate(text) if i >= 10 and t not in text[:i])  # first emitted after 10 steps
    expected = model.generate(ids, eos_token_id=eos, **kwargs)
    got = model.generate(ids, eos_token_id=eos, assistant_model=twin, num_assistant_tokens=8,
                         assistant_confidence_threshold=0, **kwargs)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert int(got[0, -1]) == eos
    assert all(eos not in tokens[:-1] for _, tokens, _ in drafts)
    assert any(tokens[-1] == eos and len(tokens) < 8 for _, tokens, _ in drafts)


def test_padded_prompt_and_the_last_position(model, assistant):
    ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt(9, seed=4)], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 9)], dim=1).long()
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=30)
    got = model.generate(ids, attention_mask=mask, max_new_tokens=30, assistant_model=assistant)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    long_prompt = prompt(90, seed=1)  # 90 + 7 new = n_positions + 1: the last new token is never fed
    torch.testing.assert_close(model.generate(long_prompt, max_new_tokens=7, assistant_model=assistant),
                               model.generate(long_prompt, max_new_tokens=7), rtol=0, atol=0)


# -- the draft length ---------------------------------------------------------------------------------------------
def test_confidence_threshold_ends_drafts_early(model, assistant, drafts):
    ids = prompt(seed=3)
    model.generate(ids, max_new_tokens=30, assistant_model=assistant, num_assistant_tokens=6,
                   assistant_confidence_threshold=0)
    assert max(len(tokens) for _, tokens, _ in drafts) == 6
    drafts.clear()
    model.generate(ids, max_new_tokens=30, assistant_model=assistant, num_assistant_tokens=6,
                   assistant_confidence_threshold=1.0)  # no token is that sure: one draft token a round
    assert drafts and all(len(tokens) == 1 for _, tokens, _ in drafts)


def test_schedules_and_the_assistants_generation_config(model, drafts):
    ids = prompt(seed=4)
    twin = copy.deepcopy(model)  # every draft kept: the heuristic schedule grows by 2 a round
    twin.generation_config = GenerationConfig(num_assistant_tokens=2, assistant_confidence_threshold=0.0)
    model.generate(ids, max_new_tokens=30, assistant_model=twin)  # constant: the assistant's config's 2
    assert [len(t) for _, t, _ in drafts[:3]] == [2, 2, 2]
    drafts.clear()
    model.generate(ids, max_new_tokens=30, assistant_model=twin, num_assistant_tokens_schedule="heuristic_transient")
    assert [len(t) for _, t, _ in drafts[:3]] == [2, 4, 6]
    assert twin.generation_config.num_assistant_tokens == 2  # not written back
    twin.generation_config.num_assistant_tokens_schedule = "heuristic"
    model.generate(ids, max_new_tokens=10, assistant_model=twin)
    assert twin.generation_config.num_assistant_tokens > 2  # written back for the next call, as transformers does
    drafts.clear()
    model.generate(ids, max_new_tokens=10, assistant_model=twin, num_assistant_tokens=3)  # the argument comes first
    assert len(drafts[0][1]) == 3


def test_the_assistants_mode_is_restored(model, assistant, drafts):
    assistant.train()
    try:
        model.generate(prompt(), max_new_tokens=8, assistant_model=assistant)
        assert drafts and not any(training for _, _, training in drafts)  # drafted in eval mode (no dropout)
        assert assistant.training and all(module.training for module in assistant.modules())
    finally:
        assistant.eval()


# -- transformers' models -----------------------------------------------------------------------------------------
def test_transformers_model_patched_takes_a_transformers_assistant(passes):
    pytest.importorskip("transformers")
    from conftest import tiny_lm

    from gpt_fast import apply_gpt_fast_kernels, revert_gpt_fast_kernels

    hf, hf_assistant = tiny_lm(3, VOCAB, 64), tiny_lm(4, VOCAB, 64)
    ids = prompt(seed=6)
    expected = hf.generate(ids, do_sample=False, max_new_tokens=30)  # transformers' own greedy loop
    apply_gpt_fast_kernels(hf)
    try:
        got = hf.generate(ids, do_sample=False, max_new_tokens=30, assistant_model=hf_assistant)
    finally:
        revert_gpt_fast_kernels(hf)
    assert any(kind == "extend" for _, kind in passes)  # gpt_fast's generate ran, with drafts to verify
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# -- refusals -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_assistant_tokens=0), ValueError, "int >= 1"),
    (dict(num_assistant_tokens="3"), ValueError, "int >= 1"),
    (dict(num_assistant_tokens_schedule="fast"), ValueError, "one of"),
    (dict(assistant_confidence_threshold=1.5), ValueError, r"\[0, 1\]"),
    (dict(num_beams=2), ValueError, "beam search"),
    (dict(cuda_graph=True), ValueError, "CUDA graph"),
    (dict(prompt_lookup_num_tokens=3), ValueError, "not both"),
    (dict(do_sample=True, num_return_sequences=2), ValueError, "batch size 1"),
])
def test_bad_arguments(model, assistant, kwargs, error, match):
    with pytest.raises(error, match=match):
        model.generate(prompt(), max_new_tokens=5, assistant_model=assistant, **kwargs)


def test_bad_assistants(model):
    with pytest.raises(ValueError, match="batch size 1"):
        model.generate(prompt(batch=2), max_new_tokens=5, assistant_model=make_model(1, 24, 2, 1))
    with pytest.raises(ValueError, match="the model itself"):
        model.generate(prompt(), max_new_tokens=5, assistant_model=model)
    with pytest.raises(TypeError, match="gpt_fast OpenAIGPTLMHeadModel"):
        model.generate(prompt(), max_new_tokens=5, assistant_model=torch.nn.Linear(2, 2))
    other = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=VOCAB + 1, n_positions=96, n_embd=24, n_layer=1,
                                                 n_head=2))
    with pytest.raises(ValueError, match="same tokenizer"):
        model.generate(prompt(), max_new_tokens=5, assistant_model=other)
    with pytest.raises(ValueError, match="holds 16 positions"):
        model.generate(prompt(), max_new_tokens=10, assistant_model=make_model(1, 24, 2, 1, positions=16))
    with pytest.raises(ValueError, match="one device"):
        model.generate(prompt(), max_new_tokens=5, assistant_model=make_model(1, 24, 2, 1).to("meta"))


def test_generate_batch_takes_an_assistant(model, assistant):
    """generate_batch runs the engine's assisted rounds (tests/test_generate_batch.py checks them in depth)."""
    prompts = [[1, 2, 3], [4, 5]]
    plain = model.generate_batch(prompts, max_new_tokens=6)
    assisted = model.generate_batch(prompts, max_new_tokens=6, assistant_model=assistant, num_assistant_tokens=3)
    assert {k: v.generated_tokens for k, v in assisted.items()} == {k: v.generated_tokens for k, v in plain.items()}
