"""generate()'s further transformers processors and sampling filters against transformers: sequence_bias,
forced_bos_token_id, forced_eos_token_id, exponential_decay_length_penalty, suppress_tokens, begin_suppress_tokens,
renormalize_logits, encoder_repetition_penalty, prefix_allowed_tokens_fn (greedy and beam search: tokens and
scores), min_p, typical_p, epsilon_cutoff, eta_cutoff, top_h (transformers' warpers on the same scores), their bad
values, the options that change nothing (low_memory, cache_implementation, ...), and that none of them reads a
value on the host."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from conftest import seeded_prompt, tiny_lm_fixtures  # noqa: E402
from transformers.generation.logits_process import (  # noqa: E402
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    TopHLogitsWarper,
    TypicalLogitsWarper,
)

import gpt_fast  # noqa: E402
from gpt_fast.generation.arguments import parse_generation_kwargs  # noqa: E402
from gpt_fast.generation.processors import ExtraProcessors, TokenHistory  # noqa: E402
from gpt_fast.generation.sampling import SamplingConfig, TokenSelector  # noqa: E402

VOCAB = 53
hf, model = tiny_lm_fixtures(6, VOCAB, 40)


def allowed_after(batch_index, ids):
    """A prefix_allowed_tokens_fn: a few tokens that depend on the prompt's index and the last token."""
    return [int(ids[-1]) % 7 + 1, 10 + batch_index, 20, 31 + int(ids[-1]) % 3]

SETTINGS = [
    dict(sequence_bias={(5,): 8.0, (11, 12): 9.0, (3, 4, 9): -2.5}),
    dict(sequence_bias=[[[7], 6.0], [[2, 30], 12.0]], repetition_penalty=1.3),
    dict(forced_eos_token_id=4, eos_token_id=4, pad_token_id=0),
    dict(forced_eos_token_id=[4, 6], eos_token_id=[4, 6], pad_token_id=0),
    dict(exponential_decay_length_penalty=(2, 1.9), eos_token_id=9, pad_token_id=0),
    dict(suppress_tokens=[1, 2, 3, 17], no_repeat_ngram_size=2),
    dict(begin_suppress_tokens=[5, 8, 21]),
    dict(renormalize_logits=True, bad_words_ids=[[6]]),
    dict(forced_bos_token_id=13, begin_suppress_tokens=[7], remove_invalid_values=True),
    dict(encoder_repetition_penalty=1.8),
    dict(encoder_repetition_penalty=0.6, repetition_penalty=1.2),
    dict(prefix_allowed_tokens_fn=allowed_after, min_new_tokens=2, eos_token_id=20, pad_token_id=0),
]


def prompt(length, batch=1, seed=1):
    return seeded_prompt(VOCAB, length, batch, seed)


def generate_both(hf, model, ids, mask, settings, **extra):
    kwargs = dict(settings, max_new_tokens=10, return_dict_in_generate=True, output_scores=True, **extra)
    return hf.generate(ids, attention_mask=mask, do_sample=False, **kwargs), model.generate(
        ids, attention_mask=mask, **kwargs)


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("settings", SETTINGS, ids=range(len(SETTINGS)))
def test_processors_match_transformers_and_change_the_output(hf, model, settings, beams):
    one_token = "forced_bos_token_id" in settings  # transformers forces the BOS after a one-token prompt only
    ids = prompt(1 if one_token else 6, batch=3, seed=len(str(settings)))
    mask = torch.ones_like(ids)
    if not one_token:
        mask[0, :2] = 0  # left padding
    expected, ours = generate_both(hf, model, ids, mask, settings, num_beams=beams)
    torch.testing.assert_close(ours.sequences, expected.sequences, rtol=0, atol=0)
    for a, b in zip(ours.scores, expected.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    plain = {k: v for k, v in settings.items() if k in ("eos_token_id", "pad_token_id")}
    _, without = generate_both(hf, model, ids, mask, plain, num_beams=beams)
    assert any(not torch.equal(a, b) for a, b in zip(ours.scores, without.scores)), "the setting changed nothing"


FILTERS = [  # (SamplingConfig field, value, transformers' warper)
    ("min_p", 0.2, lambda keep: MinPLogitsWarper(0.2, min_tokens_to_keep=keep)),
    ("typical_p", 0.7, lambda keep: TypicalLogitsWarper(0.7, min_tokens_to_keep=keep)),
    ("epsilon_cutoff", 0.02, lambda keep: EpsilonLogitsWarper(0.02, min_tokens_to_keep=keep)),
    ("eta_cutoff", 0.05, lambda keep: EtaLogitsWarper(0.05, min_tokens_to_keep=keep)),
]


@pytest.mark.parametrize("keep", [1, 3])
@pytest.mark.parametrize("field, value, warper", FILTERS, ids=[f[0] for f in FILTERS])
def test_sampling_filters_match_transformers_warpers(field, value, warper, keep):
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(2)) * 3
    logits[0, :VOCAB - 1] = -30.0 - torch.arange(VOCAB - 1.0)  # one token holds the mass: `keep` says how many stay
    config = SamplingConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                            eos_blocked_steps=0, min_tokens_to_keep=keep, **{field: value})
    selector = TokenSelector(config, None, 5, VOCAB, torch.device("cpu"), None)
    ours = selector.process(logits.clone(), 0)
    expected = warper(keep)(None, logits.clone())
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert int(torch.isfinite(ours[0]).sum()) == keep and (torch.isfinite(ours).sum(dim=-1) >= keep).all()


@pytest.mark.parametrize("top_h", [0.3, 0.8, 1.0])
def test_top_h_matches_transformers(top_h):
    logits = torch.randn(5, 150, generator=torch.Generator().manual_seed(3)) * 2  # more than its 100 candidates
    logits[1, 7] = 40.0  # one token holds nearly all the mass
    logits[2, :20] = float("-inf")  # masked by an earlier processor
    config = SamplingConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                            eos_blocked_steps=0, top_h=top_h)
    ours = TokenSelector(config, None, 5, 150, torch.device("cpu"), None).process(logits.clone(), 0)
    torch.testing.assert_close(ours, TopHLogitsWarper(top_h)(None, logits.clone()), rtol=0, atol=0)
    assert (torch.isfinite(ours).sum(dim=-1) <= 100).all()  # at most its 100 candidates stay


def test_top_h_in_generate_matches_transformers(hf, model):
    ids = prompt(5, batch=2, seed=6)
    kwargs = dict(do_sample=True, top_h=0.4, top_k=0, max_new_tokens=8, return_dict_in_generate=True,
                  output_scores=True)
    expected, ours = (m.generate(ids, **kwargs) for m in (hf, model))
    kept = torch.isfinite(ours.scores[0])  # the first step's filtered scores (the samples, and so the rest, differ)
    torch.testing.assert_close(kept, torch.isfinite(expected.scores[0]))
    assert 0 < int(kept.sum()) < kept.numel()


def test_options_that_change_nothing(model):
    ids = prompt(4, batch=2)
    plain = model.generate(ids, max_new_tokens=5)
    same = model.generate(ids, max_new_tokens=5, low_memory=True, cache_implementation="static", compile_config=None,
                          disable_compile=True, synced_gpus=False, past_key_values=None,
                          position_ids=None)
    torch.testing.assert_close(same, plain, rtol=0, atol=0)


def test_sampling_with_filters_runs_and_renormalizes(model):
    ids = prompt(5, batch=2)
    out = model.generate(ids, do_sample=True, seed=3, max_new_tokens=6, min_p=0.1, typical_p=0.9,
                         epsilon_cutoff=0.001, eta_cutoff=0.001, renormalize_logits=True, output_scores=True,
                         return_dict_in_generate=True)
    for scores in out.scores:  # log-probabilities: each row's exp sums to 1
        torch.testing.assert_close(scores.exp().sum(dim=-1), torch.ones(2), rtol=1e-5, atol=1e-5)
    again = model.generate(ids, do_sample=True, seed=3, max_new_tokens=6, min_p=0.1, typical_p=0.9,
                           epsilon_cutoff=0.001, eta_cutoff=0.001, renormalize_logits=True)
    torch.testing.assert_close(again, out.sequences, rtol=0, atol=0)


def test_a_generation_config_carries_them(hf, model):
    ids = prompt(6, batch=2, seed=4)
    settings = dict(suppress_tokens=[3, 4], sequence_bias={(9,): 5.0}, forced_eos_token_id=2, eos_token_id=2)
    config = gpt_fast.GenerationConfig(**settings, max_new_tokens=7)
    expected = hf.generate(ids, generation_config=transformers.GenerationConfig(**settings, max_new_tokens=7))
    torch.testing.assert_close(model.generate(ids, generation_config=config), expected, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(min_p=1.5), ValueError, "min_p"),
    (dict(typical_p=0.0), ValueError, "typical_p"),
    (dict(epsilon_cutoff=1.0), ValueError, "epsilon_cutoff"),
    (dict(eta_cutoff=-0.1), ValueError, "eta_cutoff"),
    (dict(renormalize_logits="yes"), TypeError, "renormalize_logits"),
    (dict(sequence_bias={}), TypeError, "sequence_bias"),
    (dict(sequence_bias={(): 1.0}), TypeError, "sequence_bias"),
    (dict(sequence_bias={(1,): "x"}), TypeError, "sequence_bias"),
    (dict(sequence_bias={(VOCAB,): 1.0}), ValueError, "outside the vocabulary"),
    (dict(exponential_decay_length_penalty=(2, 1.5)), ValueError, "eos_token_id"),
    (dict(exponential_decay_length_penalty=(2,), eos_token_id=1), TypeError, "start_index, decay_factor"),
    (dict(exponential_decay_length_penalty=(-1, 1.5), eos_token_id=1), ValueError, "start_index"),
    (dict(forced_bos_token_id=[1, 2]), TypeError, "forced_bos_token_id"),
    (dict(forced_eos_token_id=VOCAB), ValueError, "forced_eos_token_id"),
    (dict(suppress_tokens=[1, -1]), ValueError, "suppress_tokens"),
    (dict(begin_suppress_tokens="3"), TypeError, "begin_suppress_tokens"),
    (dict(top_h=0.0), ValueError, "top_h"),
    (dict(top_h=1.5), ValueError, "top_h"),
    (dict(encoder_repetition_penalty=0.0), ValueError, "encoder_repetition_penalty"),
    (dict(prefix_allowed_tokens_fn=[1, 2]), TypeError, "prefix_allowed_tokens_fn"),
    (dict(prefix_allowed_tokens_fn=lambda b, ids: []), ValueError, "returned no tokens"),
    (dict(synced_gpus=True), NotImplementedError, "synced_gpus"),
    (dict(cache_implementation="quantized"), ValueError, "quantized cache"),
    (dict(past_key_values=((torch.zeros(1),) * 2,)), TypeError, "past_key_values must be the cache"),
    (dict(position_ids=torch.arange(3)[None]), NotImplementedError, "position_ids"),
    (dict(low_memory="yes"), TypeError, "low_memory"),
])
def test_bad_values_raise(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        model.generate(prompt(3), max_new_tokens=2, **kwargs)


def test_empty_suppress_lists_suppress_nothing(model):
    ids = prompt(4, batch=2)
    torch.testing.assert_close(model.generate(ids, max_new_tokens=5, suppress_tokens=[], begin_suppress_tokens=[]),
                               model.generate(ids, max_new_tokens=5), rtol=0, atol=0)


def test_they_read_nothing_on_the_host(model):
    from tests.test_decode_host_sync import host_reads

    request = parse_generation_kwargs(model, 4, dict(
        max_new_tokens=6, eos_token_id=3, do_sample=True, sequence_bias={(5,): 1.0, (7, 9): 2.0},
        forced_eos_token_id=3, exponential_decay_length_penalty=(0, 1.5), suppress_tokens=[1], min_p=0.1,
        begin_suppress_tokens=[2], typical_p=0.9, epsilon_cutoff=0.01, eta_cutoff=0.01, renormalize_logits=True,
        encoder_repetition_penalty=1.3, top_h=0.9))
    history = TokenHistory(prompt(4, batch=2), torch.tensor([4, 2]), 6)
    extra = ExtraProcessors(request, history, torch.device("cpu"), prompt(4, batch=2), VOCAB)
    selector = TokenSelector(request.sampling, torch.tensor([3]), 2, VOCAB, torch.device("cpu"), None)
    logits = torch.randn(2, VOCAB)

    def steps():
        for step in (0, 5):  # the begin-suppressed step and the forced-EOS step
            tokens = selector.select(selector.process(logits.clone(), step, extra))
            history.append(tokens)

    assert host_reads(steps) == []


@pytest.mark.parametrize("settings", [dict(), dict(num_beams=3), dict(do_sample=True, top_k=5)])
def test_max_time_stops_as_transformers(hf, model, settings):
    """max_time=0: the time is up at the first check, after the first new token; a long max_time changes nothing."""
    ids = prompt(5, batch=2)
    outputs = []
    for generate in (lambda **kw: hf.generate(ids, pad_token_id=0, **kw), lambda **kw: model.generate(ids, **kw)):
        torch.manual_seed(0)
        stopped = generate(max_new_tokens=6, min_new_tokens=6, max_time=0.0, **settings)
        torch.manual_seed(0)
        outputs.append((stopped, generate(max_new_tokens=6, max_time=600.0, **settings)))
    (theirs_stopped, theirs_full), (stopped, full) = outputs
    assert stopped.shape == theirs_stopped.shape == (2, 6)
    assert full.shape == theirs_full.shape == (2, 11)
    if not settings.get("do_sample"):  # sampling draws differ between the two libraries
        torch.testing.assert_close(stopped, theirs_stopped, rtol=0, atol=0)
        torch.testing.assert_close(full, theirs_full, rtol=0, atol=0)


@pytest.mark.parametrize("value, error", [(-1.0, ValueError), ("1", TypeError), (True, TypeError)])
def test_bad_max_time_raises(model, value, error):
    with pytest.raises(error, match="max_time"):
        model.generate(prompt(3), max_new_tokens=2, max_time=value)


@pytest.mark.parametrize("options", [dict(do_sample=True, num_return_sequences=2), dict(num_beams=3),
                                     dict(num_beams=3, num_return_sequences=2)])
def test_prefix_fn_gets_each_rows_prompt_index_as_transformers(hf, model, options):
    calls = {}
    for name, m in (("theirs", hf), ("ours", model)):
        seen = calls[name] = []

        def allowed(batch_index, ids, seen=seen):
            seen.append((batch_index, len(ids)))
            return [5, 6, 7]

        out = m.generate(prompt(4, batch=2), max_new_tokens=3, prefix_allowed_tokens_fn=allowed, **options)
        assert set(out[:, 4:].flatten().tolist()) <= {5, 6, 7}, name
    assert calls["ours"] == calls["theirs"]
