"""Issue 11's edges of generate(): sampling with no valid probabilities raises (every step on CPU, at the loop's
deferred checks otherwise); the prompt-length limits are transformers'; the deferred EOS truncation (CUDA's
eos_check_interval, here passed explicitly on CPU) gives what checking every step gives."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from conftest import seeded_prompt, tiny_lm_fixtures  # noqa: E402

from gpt_fast import GenerationConfig  # noqa: E402

VOCAB, N_POSITIONS = 53, 24


hf, model = tiny_lm_fixtures(5, VOCAB, N_POSITIONS)


def prompt(length, batch=1, seed=1):
    return seeded_prompt(VOCAB, length, batch, seed)


@pytest.mark.parametrize("interval", [None, 4])
def test_sampling_without_valid_probabilities_raises(hf, model, interval):
    ids = prompt(4, batch=2)
    with pytest.raises(RuntimeError, match="inf"):  # transformers: multinomial's error
        hf.generate(ids, do_sample=True, temperature=1e-40, max_new_tokens=6)
    kwargs = {} if interval is None else dict(eos_check_interval=interval)
    with pytest.raises(RuntimeError, match="all -inf or NaN"):
        model.generate(ids, do_sample=True, temperature=1e-40, max_new_tokens=6, seed=0, **kwargs)


def test_bad_words_banning_every_token_raises_when_sampling(model):
    ids = prompt(3)
    with pytest.raises(RuntimeError, match="all -inf or NaN"):
        model.generate(ids, do_sample=True, max_new_tokens=2, bad_words_ids=[[i] for i in range(VOCAB)], seed=0)


def test_prompt_of_n_positions_tokens(hf, model):
    ids = prompt(N_POSITIONS)
    with pytest.raises(ValueError, match="max_length"):  # the default max_length is the prompt's length
        hf.generate(ids, do_sample=False)
    with pytest.raises(ValueError, match="n_positions"):
        model.generate(ids)
    # one new token needs no new position: transformers gives it, so does gpt_fast
    expected = hf.generate(ids, do_sample=False, max_new_tokens=1)
    torch.testing.assert_close(model.generate(ids, max_new_tokens=1), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="n_positions"):
        model.generate(ids, max_new_tokens=2)


@pytest.mark.parametrize("length", [N_POSITIONS - 1, N_POSITIONS - 6])
def test_prompt_plus_new_may_reach_n_positions_plus_one(hf, model, length):
    ids = prompt(length, batch=2, seed=length)
    new = N_POSITIONS + 1 - length
    expected = hf.generate(ids, do_sample=False, max_new_tokens=new)
    assert expected.shape[1] == N_POSITIONS + 1
    torch.testing.assert_close(model.generate(ids, max_new_tokens=new), expected, rtol=0, atol=0)
    torch.testing.assert_close(model.generate(ids, max_length=N_POSITIONS + 1), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="n_positions"):
        model.generate(ids, max_new_tokens=new + 1)


def test_prompt_longer_than_n_positions_raises(model):
    with pytest.raises(ValueError, match="n_positions"):
        model.generate(prompt(N_POSITIONS + 1), max_new_tokens=1)


@pytest.mark.parametrize("interval", [3, 7])
def test_deferred_eos_truncation_on_cpu(hf, model, interval):
    # rows finish at different steps; the host sees it only every `interval` steps and truncates afterwards
    ids = prompt(3, batch=3, seed=11)
    free = hf.generate(ids, do_sample=False, max_new_tokens=16)
    eos = sorted({int(free[row, 3 + 1 + row]) for row in range(3)})  # row r emits one by its step r + 2
    kwargs = dict(max_new_tokens=16, eos_token_id=eos, pad_token_id=0)
    expected = hf.generate(ids, do_sample=False, **kwargs)
    assert expected.shape[1] < 3 + 16 - interval  # every row ended early: the loop ran past the end
    every_step = model.generate(ids, **kwargs)
    deferred = model.generate(ids, eos_check_interval=interval, **kwargs)
    torch.testing.assert_close(every_step, expected, rtol=0, atol=0)
    torch.testing.assert_close(deferred, expected, rtol=0, atol=0)
    out = model.generate(ids, eos_check_interval=interval, return_dict_in_generate=True, output_scores=True, **kwargs)
    assert len(out.scores) == expected.shape[1] - 3


def test_the_prompt_may_be_passed_as_inputs_as_in_transformers(hf, model):
    ids = prompt(5, batch=2)
    expected = hf.generate(inputs=ids, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(model.generate(inputs=ids, max_new_tokens=4), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not both"):
        model.generate(ids, inputs=ids, max_new_tokens=4)


def test_positional_order_is_transformers(hf, model):
    """generate(prompt, generation_config, ...) as transformers' (a mask in second place is a clear error)."""
    ids = prompt(5, batch=2)
    expected = hf.generate(ids, transformers.GenerationConfig(max_new_tokens=3, do_sample=False))
    torch.testing.assert_close(model.generate(ids, GenerationConfig(max_new_tokens=3)), expected,
                               rtol=0, atol=0)
    with pytest.raises(TypeError, match="generation_config"):
        model.generate(ids, torch.ones_like(ids))
