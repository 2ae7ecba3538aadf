"""generate() on a model left in train mode: no dropout during the call, and the mode given back afterwards.

generate switches the model to eval for the call. Without that, the "eager" backend (and any path without the
fused kernels) would apply the model's dropout layers to the prompt and every step, so two calls would differ.
Checked on both sides of the small-M threshold (prompts and batches of more than 32 rows run the GEMMs).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import BACKENDS

from gpt_fast import OpenAIGPTLMHeadModel
from gpt_fast.ops.kernel_plan import SMALL_M_MAX_ROWS

VOCAB = 97


@pytest.fixture(scope="module")
def hf():
    torch.manual_seed(0)
    config = transformers.OpenAIGPTConfig(vocab_size=VOCAB, n_positions=96, n_embd=48, n_layer=2, n_head=3,
                                          resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    return transformers.OpenAIGPTLMHeadModel(config).eval()


def prompt(batch, length, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def run(model, ids):
    out = model.generate(ids, max_new_tokens=5, return_dict_in_generate=True, output_logits=True)
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch, length", [(1, SMALL_M_MAX_ROWS + 8), (SMALL_M_MAX_ROWS + 4, 3),
                                           (SMALL_M_MAX_ROWS + 2, SMALL_M_MAX_ROWS + 3)])
def test_generate_in_train_mode_applies_no_dropout(hf, backend, batch, length):
    model = OpenAIGPTLMHeadModel.from_transformers(hf, attn_implementation=backend).train()
    ids = prompt(batch, length)
    torch.manual_seed(0)
    first = run(model, ids)
    assert model.training and all(m.training for m in model.modules())  # the mode comes back
    torch.manual_seed(1)  # another random state: dropout, if any were applied, would draw other masks
    again = run(model, ids)
    assert model.training
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.eval()
    in_eval = run(model, ids)
    assert not model.training and not any(m.training for m in model.modules())  # eval stays eval
    for a, b in zip(first, in_eval):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    expected = hf.generate(ids, max_new_tokens=5, do_sample=False)  # transformers in eval mode
    torch.testing.assert_close(first[0], expected, rtol=0, atol=0)


def test_mode_is_restored_when_generate_raises(hf):
    model = OpenAIGPTLMHeadModel.from_transformers(hf, attn_implementation="eager").train()
    with pytest.raises(ValueError):
        model.generate(prompt(2, 4), max_new_tokens=5, top_p=2.0, do_sample=True)
    assert model.training and all(m.training for m in model.modules())


def test_mixed_modes_are_restored(hf):
    """A model in train mode with one submodule frozen in eval keeps that mixture."""
    model = OpenAIGPTLMHeadModel.from_transformers(hf, attn_implementation="eager").train()
    model.transformer.h[0].eval()
    model.generate(prompt(1, 4), max_new_tokens=2)
    assert model.training and model.transformer.h[1].training
    assert not any(m.training for m in model.transformer.h[0].modules())
