"""Beam search: token-identical to transformers' beam search in fp32 (sequences, sequences_scores, scores,
beam_indices) over EOS, length penalties, early_stopping, num_return_sequences and the processors; beam sampling
too, from the same global seed (both draw with torch.multinomial); padded rows equal their prompt alone; the KV
cache rows are reordered in place; the deferred end check changes nothing."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from conftest import seeded_prompt, tiny_lm_fixtures  # noqa: E402

from gpt_fast.generation.decoder import IncrementalDecoder  # noqa: E402
from gpt_fast.generation.kv_cache import StaticKVCache  # noqa: E402
from gpt_fast.ops.kernel_plan import plan_kernels  # noqa: E402

VOCAB = 41  # small, so that beams meet EOS often


hf, model = tiny_lm_fixtures(3, VOCAB, 40)


def prompt(length, batch=1, seed=1):
    return seeded_prompt(VOCAB, length, batch, seed)


def frequent_token(hf, ids):
    """The token transformers' beam search emits most often, so that with it as EOS beams finish at different
    steps (the random model soon repeats one token)."""
    out = hf.generate(ids, num_beams=3, max_new_tokens=10, do_sample=False)
    return int(out[:, ids.shape[1]:].flatten().mode().values)


def two_frequent_tokens(hf, ids):
    first = frequent_token(hf, ids)
    return [first, frequent_token(hf, torch.cat([ids, torch.full((ids.shape[0], 1), first)], dim=1))]


def assert_same(expected, ours, scores=True):
    torch.testing.assert_close(ours.sequences, expected.sequences, rtol=0, atol=0)
    torch.testing.assert_close(ours.beam_indices, expected.beam_indices.long(), rtol=0, atol=0)
    if scores:
        torch.testing.assert_close(ours.sequences_scores, expected.sequences_scores, rtol=1e-5, atol=1e-5)
        assert len(ours.scores) == len(expected.scores)
        for a, b in zip(ours.scores, expected.scores):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


SETTINGS = [
    dict(num_beams=3),
    dict(num_beams=4, num_return_sequences=3, length_penalty=0.0),
    dict(num_beams=3, length_penalty=2.0, early_stopping="never"),
    dict(num_beams=3, length_penalty=-1.0, early_stopping=True),
    dict(num_beams=2, early_stopping=False, min_new_tokens=3),
    dict(num_beams=3, repetition_penalty=1.4, no_repeat_ngram_size=2),
    dict(num_beams=3, bad_words_ids=[[1], [2, 3]], no_repeat_ngram_size=1),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=[str(s) for s in SETTINGS])
@pytest.mark.parametrize("with_eos", [False, True], ids=["no-eos", "eos"])
def test_beam_search_matches_transformers(hf, model, settings, with_eos):
    ids = prompt(5, batch=2, seed=len(str(settings)))
    kwargs = dict(settings, max_new_tokens=14, return_dict_in_generate=True, output_scores=True)
    if with_eos:
        kwargs.update(eos_token_id=frequent_token(hf, ids), pad_token_id=0)
    expected = hf.generate(ids, do_sample=False, **kwargs)
    ours = model.generate(ids, **kwargs)
    assert_same(expected, ours)
    plain = {k: v for k, v in kwargs.items() if k not in ("return_dict_in_generate", "output_scores")}
    torch.testing.assert_close(model.generate(ids, **plain), expected.sequences, rtol=0, atol=0)


def test_eos_finishes_beams_early_like_transformers(hf, model):
    ids = prompt(4, batch=3, seed=7)
    eos = two_frequent_tokens(hf, ids)
    # a negative length penalty favours short hypotheses: many end at EOS, at different steps
    kwargs = dict(num_beams=4, num_return_sequences=4, max_new_tokens=20, eos_token_id=eos, pad_token_id=0,
                  length_penalty=-2.0,
                  return_dict_in_generate=True, output_scores=True, output_logits=True)
    expected = hf.generate(ids, do_sample=False, **kwargs)
    ours = model.generate(ids, **kwargs)
    assert_same(expected, ours)
    assert (ours.beam_indices == -1).any()  # some hypotheses ended before others
    for a, b in zip(ours.logits, expected.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("interval", [4, 5])
def test_deferred_end_check_changes_nothing(model, hf, interval):
    # on CUDA the end of the search is read on the host every eos_check_interval steps (on CPU too when passed):
    # the steps run past the end must change nothing. A stopping criterion ends the search after 9 of 20 steps.
    from transformers.generation.stopping_criteria import MaxLengthCriteria

    ids = prompt(4, batch=3, seed=7)
    kwargs = dict(num_beams=3, max_new_tokens=20, eos_token_id=two_frequent_tokens(hf, ids), pad_token_id=0,
                  length_penalty=2.0, return_dict_in_generate=True, output_scores=True,
                  stopping_criteria=[MaxLengthCriteria(max_length=4 + 9)])
    expected = hf.generate(ids, do_sample=False, **kwargs)
    assert len(expected.scores) == 9
    assert_same(expected, model.generate(ids, **kwargs))
    assert_same(expected, model.generate(ids, eos_check_interval=interval, **kwargs))


def test_padded_batch_rows_equal_their_prompt_alone(hf, model):
    lengths = [3, 7, 1]
    prompts = [prompt(n, seed=20 + n)[0] for n in lengths]
    T = max(lengths)
    ids, mask = torch.zeros(3, T, dtype=torch.long), torch.zeros(3, T, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, T - len(p):], mask[row, T - len(p):] = p, 1
    eos = frequent_token(hf, prompts[1][None])
    kwargs = dict(num_beams=3, num_return_sequences=2, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    batch = model.generate(ids, attention_mask=mask, **kwargs)
    for row, p in enumerate(prompts):
        alone = hf.generate(p[None], do_sample=False, **kwargs)[:, len(p):]  # (2, new)
        got = batch[2 * row:2 * row + 2, T:]
        torch.testing.assert_close(got[:, :alone.shape[1]], alone, rtol=0, atol=0)
        assert bool((got[:, alone.shape[1]:] == 0).all())  # filled with pad past its own end


def test_cache_rows_are_reordered_in_place(model):
    config = model.config
    cache = StaticKVCache(config.n_layer, 3, config.n_head, 8, config.n_embd // config.n_head, model.dtype,
                          torch.device("cpu"))
    decoder = IncrementalDecoder(model, cache, plan_kernels(None, torch.device("cpu"), model.dtype))
    cache.keys.copy_(torch.randn_like(cache.keys))
    cache.values.copy_(torch.randn_like(cache.values))
    cache.lengths.copy_(torch.tensor([5, 6, 7]))
    keys, values, pointers = cache.keys.clone(), cache.values.clone(), (cache.keys.data_ptr(), cache.values.data_ptr())
    rows = torch.tensor([2, 0, 0])
    decoder.reorder(rows, filled=6)
    assert (cache.keys.data_ptr(), cache.values.data_ptr()) == pointers
    torch.testing.assert_close(cache.keys[:, :, :, :6], keys[:, rows, :, :6], rtol=0, atol=0)
    torch.testing.assert_close(cache.values[:, :, :, :6], values[:, rows, :, :6], rtol=0, atol=0)
    torch.testing.assert_close(cache.lengths, torch.tensor([7, 5, 5]))


def test_custom_processor_and_criteria_in_beam_search(hf, model):
    from transformers.generation.logits_process import LogitsProcessorList, NoRepeatNGramLogitsProcessor
    from transformers.generation.stopping_criteria import MaxLengthCriteria, StoppingCriteriaList

    ids = prompt(5, batch=2, seed=4)
    kwargs = dict(num_beams=3, max_new_tokens=12, eos_token_id=frequent_token(hf, ids), pad_token_id=0)
    processors = LogitsProcessorList([NoRepeatNGramLogitsProcessor(2)])
    criteria = StoppingCriteriaList([MaxLengthCriteria(max_length=12)])
    expected = hf.generate(ids, do_sample=False, logits_processor=processors, stopping_criteria=criteria, **kwargs)
    ours = model.generate(ids, logits_processor=processors, stopping_criteria=criteria, **kwargs)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


BAD = [
    (dict(num_beams=2, num_return_sequences=3), ValueError, "num_return_sequences"),
    (dict(num_beams=2, early_stopping="sometimes"), ValueError, "early_stopping"),
    (dict(num_beams=2, length_penalty="x"), TypeError, "length_penalty"),
    (dict(num_beams=0), ValueError, "num_beams"),
    (dict(num_beams=2, no_repeat_ngram_size=-1), ValueError, "no_repeat_ngram_size"),
    (dict(num_beams=2, bad_words_ids=[1, 2]), TypeError, "bad_words_ids"),
    (dict(num_beams=2, bad_words_ids=[[VOCAB]]), ValueError, "bad_words_ids"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD, ids=[str(k) for k, _, _ in BAD])
def test_bad_beam_arguments_raise(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        model.generate(prompt(3), max_new_tokens=4, **kwargs)


@pytest.mark.parametrize("beams", [1, 3])
def test_no_host_read_per_step_between_end_checks(model, beams):
    # what CUDA does by default (reads the end of the search every 16 steps), asked for on CPU: the host reads of a
    # call must not grow with its steps (the prompt checks and the final truncation read a fixed number)
    from tests.test_decode_host_sync import host_reads

    ids = prompt(4, batch=2, seed=12)
    counts = []
    for new in (4, 10):
        with torch.inference_mode():
            counts.append(len(host_reads(lambda n=new: model.generate(
                ids, num_beams=beams, max_new_tokens=n, eos_token_id=[3, 4], pad_token_id=0, repetition_penalty=1.2,
                no_repeat_ngram_size=2, eos_check_interval=100))))
    assert counts[0] == counts[1] > 0


SAMPLING = [
    dict(num_beams=3),
    dict(num_beams=4, num_return_sequences=2, temperature=0.7, top_k=5, top_p=0.9),
    dict(num_beams=2, top_k=1, top_p=0.5),  # at least #EOS + 1 tokens kept (2 without EOS), as transformers
    dict(num_beams=3, repetition_penalty=1.3, length_penalty=0.5, early_stopping=True),
]


@pytest.mark.parametrize("settings", SAMPLING, ids=[str(s) for s in SAMPLING])
@pytest.mark.parametrize("with_eos", [False, True], ids=["no-eos", "eos"])
def test_beam_sampling_matches_transformers_from_the_same_seed(hf, model, settings, with_eos):
    ids = prompt(5, batch=2, seed=len(str(settings)))
    kwargs = dict(settings, do_sample=True, max_new_tokens=12, return_dict_in_generate=True, output_scores=True)
    if with_eos:
        kwargs.update(eos_token_id=two_frequent_tokens(hf, ids), pad_token_id=0)
    outputs = []
    for seed in range(3):
        torch.manual_seed(seed)
        expected = hf.generate(ids, **kwargs)
        torch.manual_seed(seed)
        ours = model.generate(ids, **kwargs)
        assert_same(expected, ours)
        outputs.append(ours.sequences)
    if settings.get("top_k") != 1:  # (top_k=1 leaves exactly K candidates: nothing to draw)
        assert not all(torch.equal(outputs[0], out) for out in outputs[1:])  # it samples


def test_beam_sampling_with_seed_is_reproducible(model):
    ids = prompt(4, batch=2)
    runs = [model.generate(ids, num_beams=3, do_sample=True, max_new_tokens=8, seed=seed) for seed in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
