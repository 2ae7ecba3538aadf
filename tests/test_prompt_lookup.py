"""Prompt lookup decoding (generate(prompt_lookup_num_tokens=...), gpt_fast/generation/prompt_lookup.py): the draft
search, the decoder's several-token pass against one token at a time, and generate's output against plain decoding
(greedy and sampling, with EOS, processors, padding, every backend), with the verification passes counted so that a
test cannot pass by never speculating."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_speculative_sampling_is_plain

from gpt_fast import GenerationConfig, OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.generation.arguments import parse_generation_kwargs
from gpt_fast.generation.decoder import IncrementalDecoder
from gpt_fast.generation.prepared import prepare
from gpt_fast.generation.prompt_lookup import find_draft

VOCAB = 11  # few tokens: greedy text soon repeats itself, so drafts are found and mostly accepted


@pytest.fixture(scope="module", params=["eager", "sdpa", "fused"])
def model(request):
    torch.manual_seed(0)
    config = OpenAIGPTConfig(vocab_size=VOCAB, n_positions=96, n_embd=48, n_layer=2, n_head=3)
    return OpenAIGPTLMHeadModel(config, attn_implementation=request.param).eval()


@pytest.fixture
def passes(monkeypatch):
    """Counts the decoder's several-token passes and single steps during generate (all of them with
    step_replay=False; a replayed pass does not call the decoder)."""
    counts = {"extend": 0, "step": 0}
    extend, step = IncrementalDecoder.extend, IncrementalDecoder.step

    def counted_extend(self, tokens):
        counts["extend"] += 1
        return extend(self, tokens)

    def counted_step(self, tokens):
        counts["step"] += 1
        return step(self, tokens)

    monkeypatch.setattr(IncrementalDecoder, "extend", counted_extend)
    monkeypatch.setattr(IncrementalDecoder, "step", counted_step)
    return counts


def prompt(length=12, seed=0, batch=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- the draft ----------------------------------------------------------------------------------------------------
def test_find_draft_takes_the_earliest_match_of_the_longest_ngram():
    seq = [5, 1, 2, 7, 8, 3, 1, 2, 9, 4, 1, 2]
    assert find_draft(seq, 3, 2) == [7, 8, 3]  # (1, 2) first at 1..2
    assert find_draft(seq, 10, 2) == [7, 8, 3, 1, 2, 9, 4, 1, 2]  # as many as follow, the tail included
    assert find_draft([4, 2, 9, 1, 2, 9, 3, 2, 9], 2, 3) == [1, 2]  # (2, 9) has no earlier 3-gram: n = 2
    assert find_draft([3, 2, 9, 4, 1, 9], 2, 2) == [4, 1]  # (1, 9) never occurred before: n = 1 finds 9
    assert find_draft([6, 1, 9, 2, 3, 1, 9], 1, 3) == [2]


def test_find_draft_finds_nothing():
    assert find_draft([1, 2, 3, 4], 5, 2) == []  # 4 never occurred before
    assert find_draft([7], 5, 2) == []
    assert find_draft([], 5, 2) == []
    assert find_draft([2, 2], 3, 2) == [2]  # the earlier 2 is followed by the tail's 2


def brute_force_draft(sequence, num_tokens, max_ngram_size):
    """The rule written out: every window, earliest first, longest n first."""
    length = len(sequence)
    for n in range(min(max_ngram_size, length - 1), 0, -1):
        for start in range(length - n):
            if sequence[start:start + n] == sequence[length - n:]:
                return sequence[start + n:start + n + num_tokens]
    return []


def test_find_draft_against_the_rule_written_out():
    generator = torch.Generator().manual_seed(0)
    for trial in range(300):
        length = int(torch.randint(0, 40, (1,), generator=generator))
        vocab = int(torch.randint(1, 6, (1,), generator=generator))
        sequence = torch.randint(0, vocab, (length,), generator=generator).tolist()
        num_tokens, ngram = trial % 5 + 1, trial % 4 + 1
        assert find_draft(sequence, num_tokens, ngram) == brute_force_draft(sequence, num_tokens, ngram), sequence


# -- the several-token pass -------------------------------------------------------------------------------------
def test_extend_gives_the_logits_of_one_token_at_a_time_and_rewind_forgets(model):
    ids = prompt(7)
    with torch.inference_mode():
        request = parse_generation_kwargs(model, 7, dict(max_new_tokens=8))
        one, many = (prepare(model, ids, None, request, 1) for _ in range(2))
        one.first_logits(None, True), many.first_logits(None, True)
        fed = torch.tensor([[3, 8, 1, 5]])
        expected = torch.stack([one.decoder.step(fed[:, s]) for s in range(4)], dim=1)  # (1, 4, V)
        got = many.decoder.extend(fed)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert int(many.decoder.cache.lengths[0]) == 11
        many.decoder.rewind(2)  # forget 1 and 5, feed 6 instead: as if 3, 8, 6 had been fed
        one.decoder.rewind(2)
        torch.testing.assert_close(many.decoder.step(torch.tensor([6])), one.decoder.step(torch.tensor([6])),
                                   rtol=1e-5, atol=1e-5)
        assert int(many.decoder.cache.lengths[0]) == 10


# -- generate -----------------------------------------------------------------------------------------------------
# A random model's greedy text soon repeats one token; its earliest 1-gram match lies in the prompt, so with n = 1
# every draft is rejected: the tokens must still be plain decoding's, and no pass is saved.
@pytest.mark.parametrize("num_tokens, ngram, saves", [(1, 2, True), (3, 2, True), (8, 1, False), (4, 3, True)])
def test_greedy_tokens_are_plain_decodings(model, passes, num_tokens, ngram, saves):
    for seed in range(3):
        ids = prompt(seed=seed)
        expected = model.generate(ids, max_new_tokens=40, step_replay=False)  # 39 counted steps
        got = model.generate(ids, max_new_tokens=40, prompt_lookup_num_tokens=num_tokens,
                             max_matching_ngram_size=ngram, step_replay=False)  # every pass counted
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    speculative = passes["extend"] + passes["step"] - 3 * 39  # less the three plain loops' steps
    assert passes["extend"] > 0 and (speculative < 3 * 39) == saves


def test_sampling_draws_what_plain_sampling_draws(model, passes):
    assert_speculative_sampling_is_plain(model, prompt(), 1e-5, prompt_lookup_num_tokens=4)
    assert passes["extend"] > 0


def test_eos_processors_and_returned_cache(model, passes):
    ids = prompt(seed=2)
    kwargs = dict(max_new_tokens=50, repetition_penalty=1.3, no_repeat_ngram_size=4)
    text = model.generate(ids, **kwargs)[0, 12:].tolist()
    eos = next(t for i, t in enumerate(text) if i >= 10 and t not in text[:i])  # first emitted after 10 steps
    kwargs.update(eos_token_id=eos, return_dict_in_generate=True)
    expected = model.generate(ids, **kwargs)
    got = model.generate(ids, prompt_lookup_num_tokens=5, **kwargs)
    assert passes["extend"] > 0
    torch.testing.assert_close(got.sequences, expected.sequences, rtol=0, atol=0)
    assert int(got.sequences[0, -1]) == eos
    length = int(expected.cache.lengths[0])  # the fed positions: every token but the last
    assert int(got.cache.lengths[0]) == length == got.sequences.shape[1] - 1
    for (k1, v1), (k2, v2) in zip(got.cache, expected.cache):
        torch.testing.assert_close(k1[..., :length, :], k2[..., :length, :], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v1[..., :length, :], v2[..., :length, :], rtol=1e-5, atol=1e-5)


def test_padded_prompt_and_the_last_position(model):
    ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt(9, seed=4)], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 9)], dim=1).long()
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=30)
    got = model.generate(ids, attention_mask=mask, max_new_tokens=30, prompt_lookup_num_tokens=6)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    long_prompt = prompt(90, seed=1)  # 90 + 7 new = n_positions + 1: the last new token is never fed
    torch.testing.assert_close(model.generate(long_prompt, max_new_tokens=7, prompt_lookup_num_tokens=10),
                               model.generate(long_prompt, max_new_tokens=7), rtol=0, atol=0)


def test_draft_length_shrinks_while_drafts_fail_and_grows_back(model, monkeypatch):
    from gpt_fast.generation import prompt_lookup

    asked, wrong_calls = [], [10 ** 6]
    real = prompt_lookup.find_draft

    def draft(sequence, num_tokens, max_ngram_size):  # the first wrong_calls drafts wrong (not the repeated token)
        asked.append(num_tokens)
        if len(asked) <= wrong_calls[0]:
            return [(sequence[-1] + 1) % VOCAB] * num_tokens
        return real(sequence, num_tokens, max_ngram_size)

    monkeypatch.setattr(prompt_lookup, "find_draft", draft)
    ids = prompt(seed=0)  # its greedy text repeats one token from the first step (see the greedy test)
    expected = model.generate(ids, max_new_tokens=30)
    torch.testing.assert_close(model.generate(ids, max_new_tokens=30, prompt_lookup_num_tokens=5), expected,
                               rtol=0, atol=0)
    assert asked[:7] == [5, 4, 3, 2, 1, 1, 1]  # each pass keeps no draft token
    asked.clear()
    wrong_calls[0] = 3
    torch.testing.assert_close(model.generate(ids, max_new_tokens=30, prompt_lookup_num_tokens=5), expected,
                               rtol=0, atol=0)
    assert asked[:6] == [5, 4, 3, 2, 4, 5]  # then the repeating text's drafts, all kept: + 2 a pass, up to 5


def test_drafting_pauses_while_one_token_drafts_fail(model, passes, monkeypatch):
    """Every draft wrong: once the draft has shrunk to one token and MISSES_BEFORE_PAUSE (4) of those were rejected,
    each rejected draft pauses drafting for twice as many steps as the last pause (1, 2, 4, ..., up to MAX_PAUSE);
    the tokens stay plain decoding's."""
    from gpt_fast.generation import prompt_lookup

    monkeypatch.setattr(prompt_lookup, "find_draft",
                        lambda sequence, num_tokens, ngram: [(sequence[-1] + 1) % VOCAB] * num_tokens)
    ids = prompt(length=8, seed=0)
    expected = model.generate(ids, max_new_tokens=80, step_replay=False)
    passes.update(extend=0, step=0)
    got = model.generate(ids, max_new_tokens=80, prompt_lookup_num_tokens=3, step_replay=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # drafts of 3, 2, 1, 1, 1, 1, then 1 after pauses of 1, 2, 4, 8, 16, 16, 16: 79 steps hold 13 passes
    assert passes["extend"] == 6 + 7 and passes["extend"] + passes["step"] == 79


def test_generation_config_field(model, passes):
    config = GenerationConfig(prompt_lookup_num_tokens=3, max_new_tokens=20)
    assert model.generate(prompt(), generation_config=config).shape == (1, 32)
    assert passes["extend"] > 0


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompt_lookup_num_tokens=0), ValueError, ">= 1"),
    (dict(prompt_lookup_num_tokens="3"), TypeError, "must be an int"),
    (dict(prompt_lookup_num_tokens=3, max_matching_ngram_size=0), ValueError, ">= 1"),
    (dict(prompt_lookup_num_tokens=3, num_beams=2), ValueError, "beam search"),
    (dict(prompt_lookup_num_tokens=3, cuda_graph=True), ValueError, "CUDA graph"),
    (dict(prompt_lookup_num_tokens=3, do_sample=True, num_return_sequences=2), ValueError, "batch size 1"),
])
def test_bad_arguments(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        model.generate(prompt(), max_new_tokens=5, **kwargs)


def test_batch_of_two_is_refused(model):
    with pytest.raises(ValueError, match="batch size 1"):
        model.generate(prompt(batch=2), max_new_tokens=5, prompt_lookup_num_tokens=3)


def test_transformers_model_patched_takes_it_with_transformers_greedy_tokens(passes):
    transformers = pytest.importorskip("transformers")
    from conftest import tiny_lm

    from gpt_fast import apply_gpt_fast_kernels, revert_gpt_fast_kernels

    hf = tiny_lm(3, VOCAB, 64)
    ids = prompt(seed=6)
    expected = hf.generate(ids, do_sample=False, max_new_tokens=30)  # transformers' own greedy loop
    apply_gpt_fast_kernels(hf)
    try:
        got = hf.generate(ids, do_sample=False, max_new_tokens=30,
                          generation_config=transformers.GenerationConfig(prompt_lookup_num_tokens=4))
    finally:
        revert_gpt_fast_kernels(hf)
    assert passes["extend"] > 0  # gpt_fast's generate ran, with prompt lookup
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
