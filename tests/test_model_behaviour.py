"""gpt_fast models' own behaviour around the forward: the tied LM head, dropout, initialisation, auto classes.

Expected values come from transformers models with the same weights or from the config (initializer_range).
"""

import pytest
import torch
import transformers
from conftest import (
    BACKENDS,
    DOUBLE,
    HEADS,
    SEQ_CLS,
    assert_outputs_close,
    forward,
    gpt_fast_class,
    hf_model,
    load_pair,
    random_ids,
    shape_for,
)


@pytest.mark.parametrize("loader", ["from_transformers", "save_load"])
@pytest.mark.parametrize("head", ["OpenAIGPTLMHeadModel", DOUBLE])
def test_lm_head_is_tied_to_the_token_embedding(head, loader, tmp_path):
    hf, ours = load_pair(head, "sdpa", loader, tmp_path)
    embedding = ours.transformer.tokens_embed.weight
    assert ours.lm_head.weight is embedding or ours.lm_head.weight.data_ptr() == embedding.data_ptr()
    ids = random_ids(shape_for(head))
    with torch.no_grad():  # the same change on both sides must show in both LM heads
        for model in (hf, ours):
            model.transformer.tokens_embed.weight[ids.flatten()[0]] += 0.5
            model.transformer.tokens_embed.weight[3] *= -2.0
    torch.testing.assert_close(ours.lm_head.weight[3], embedding[3])
    assert_outputs_close(forward(ours, ids, return_dict=False), forward(hf, ids, return_dict=False))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", HEADS)
def test_dropout_is_active_in_train_mode_only(head, backend):
    _, ours = load_pair(head, backend)
    ids = random_ids(shape_for(head))
    ours.train()
    torch.manual_seed(0)
    first = forward(ours, ids, return_dict=False)[0]
    second = forward(ours, ids, return_dict=False)[0]
    assert not torch.allclose(first, second)
    ours.eval()
    torch.testing.assert_close(forward(ours, ids, return_dict=False)[0], forward(ours, ids, return_dict=False)[0],
                               rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", HEADS)
def test_train_mode_without_dropout_matches_eval(head, backend):
    """With every dropout probability 0, train mode is the eval-mode function (nothing else changes)."""
    zero = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    hf, ours = load_pair(head, backend, **zero)
    ids = random_ids(shape_for(head))
    assert_outputs_close(forward(ours.train(), ids, return_dict=False), forward(hf, ids, return_dict=False))


@pytest.mark.parametrize("head", HEADS)
def test_initialisation_follows_initializer_range(head):
    import gpt_fast

    std = 0.05
    config = gpt_fast.OpenAIGPTConfig(vocab_size=2000, n_positions=64, n_embd=128, n_layer=2, n_head=4,
                                      initializer_range=std, num_labels=3)
    model = gpt_fast_class(head)(config)
    params = dict(model.named_parameters())
    prefix = "" if head == "OpenAIGPTModel" else "transformer."
    for name in ("tokens_embed.weight", "h.0.attn.c_attn.weight", "h.1.mlp.c_fc.weight", "h.1.mlp.c_proj.weight"):
        weight = params[prefix + name]
        assert abs(weight.std().item() - std) < 0.1 * std, name
        assert abs(weight.mean().item()) < 0.1 * std, name
    for name, param in params.items():
        if ".ln_" in name and name.endswith("weight"):
            assert torch.all(param == 1), name
        elif name.endswith("bias"):
            assert torch.all(param == 0), name
        else:
            assert param.std() > 0.5 * std, name  # every other weight is random, none left at zero


@pytest.mark.parametrize("auto, expected", [
    ("AutoModel", "OpenAIGPTModel"), ("AutoModelForCausalLM", "OpenAIGPTLMHeadModel"),
    ("AutoModelForSequenceClassification", SEQ_CLS), ("AutoModelForMultipleChoice", DOUBLE),
])
def test_auto_classes_resolve_an_openai_gpt_folder(auto, expected, tmp_path):
    import gpt_fast

    hf = hf_model(expected)
    hf.save_pretrained(tmp_path)
    model = getattr(gpt_fast, auto).from_pretrained(tmp_path)
    assert type(model) is gpt_fast_class(expected)
    ids = random_ids(shape_for(expected))
    assert_outputs_close(forward(model, ids, return_dict=False), forward(hf, ids, return_dict=False))


@pytest.mark.parametrize("auto", ["AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"])
def test_auto_classes_refuse_another_model_type(auto, tmp_path):
    import gpt_fast

    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50,
                                                         n_positions=16)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'gpt2'"):
        getattr(gpt_fast, auto).from_pretrained(tmp_path)
