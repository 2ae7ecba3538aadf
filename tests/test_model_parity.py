"""The four gpt_fast heads against transformers' OpenAIGPT* classes, for every forward argument and backend.

Each test builds a transformers model with seeded random weights, converts it (`from_transformers`) or round-trips
it through a folder transformers wrote (`save_pretrained` -> gpt_fast `from_pretrained`), and compares outputs.
"""

import copy

import pytest
import torch
import transformers
from accuracy import assert_within_pytorch_error
from conftest import (
    BACKENDS,
    DOUBLE,
    HEADS,
    SEQ_CLS,
    TINY,
    assert_outputs_close,
    forward,
    gpt_fast_class,
    hf_model,
    load_pair,
    random_ids,
    shape_for,
)


@pytest.mark.parametrize("loader", ["from_transformers", "save_load"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", HEADS)
def test_outputs_match_transformers(head, backend, loader, tmp_path):
    hf, ours = load_pair(head, backend, loader, tmp_path)
    ids = random_ids(shape_for(head))
    assert_outputs_close(forward(ours, ids, return_dict=False), forward(hf, ids, return_dict=False))
    everything = dict(output_hidden_states=True, output_attentions=True, return_dict=False)
    theirs = forward(hf, ids, **everything)
    ours_tuple = forward(ours, ids, **everything)
    assert all(item is not None for item in ours_tuple)
    assert len(theirs[-1]) == len(ours_tuple[-1]) == 2  # one attention map per layer
    assert_outputs_close(ours_tuple, theirs)


@pytest.mark.parametrize("head", HEADS)
def test_outputs_readable_by_attribute_key_and_index(head):
    hf, ours = load_pair(head, "sdpa")
    ids = random_ids(shape_for(head))
    theirs, mine = forward(hf, ids, output_hidden_states=True), forward(ours, ids, output_hidden_states=True)
    assert list(mine.keys()) == list(theirs.keys())
    assert "attentions" not in mine and "loss" not in mine and mine.attentions is None
    for i, key in enumerate(theirs.keys()):
        expected = theirs[key] if key != "hidden_states" else theirs[key][-1]
        for value in (mine[key], getattr(mine, key), mine[i]):
            torch.testing.assert_close(value if key != "hidden_states" else value[-1], expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(KeyError):
        mine["attentions"]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", [h for h in HEADS if h != DOUBLE])
def test_padded_batches(head, backend, side):
    hf, ours = load_pair(head, backend)
    lengths, T = [9, 5, 2], 9
    ids = random_ids((3, T))
    mask = torch.zeros(3, T, dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, T - n:] = 1
    ids = ids * mask  # pad id 0 at the padded positions
    theirs = forward(hf, ids, attention_mask=mask, output_hidden_states=True)
    mine = forward(ours, ids, attention_mask=mask, output_hidden_states=True)
    if head == SEQ_CLS:  # one score per row, read at the last real token
        torch.testing.assert_close(mine.logits, theirs.logits, atol=1e-4, rtol=1e-4)
    else:
        real = mask.bool()
        torch.testing.assert_close(mine[0][real], theirs[0][real], atol=1e-4, rtol=1e-4)
    for a, b in zip(mine.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", ["OpenAIGPTModel", "OpenAIGPTLMHeadModel"])
def test_fully_padded_row(head, backend):
    """A row with no real token gives finite outputs and leaves the other rows as transformers computes them.
    (Its own values are not compared: transformers spreads such a row's attention over future positions too.)"""
    hf, ours = load_pair(head, backend)
    ids, mask = random_ids((3, 6)), torch.ones(3, 6, dtype=torch.long)
    ids[1], mask[1] = 0, 0
    mine, theirs = forward(ours, ids, attention_mask=mask)[0], forward(hf, ids, attention_mask=mask)[0]
    assert torch.isfinite(mine).all()
    torch.testing.assert_close(mine[[0, 2]], theirs[[0, 2]], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32, torch.int32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_mask_dtypes(backend, mask_dtype):
    hf, ours = load_pair("OpenAIGPTModel", backend)
    ids, mask = random_ids((2, 6)), torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    real = mask.bool()
    mine = forward(ours, ids, attention_mask=mask.to(mask_dtype))[0]
    torch.testing.assert_close(mine[real], forward(hf, ids, attention_mask=mask)[0][real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_heads_padded_choices(backend):
    """transformers cannot take a (B, C, T) mask; its own modules on the flattened batch are the reference."""
    hf, ours = load_pair(DOUBLE, backend)
    B, C, T = 2, 3, 8
    ids = random_ids((B, C, T))
    mask = (torch.arange(T) < torch.tensor([8, 5, 3, 1, 6, 7]).view(B, C, 1)).long()  # right padding
    ids = ids * mask
    mc_token_ids = mask.sum(-1) - 1  # the last real token of each choice
    mine = forward(ours, ids, attention_mask=mask, mc_token_ids=mc_token_ids)
    with torch.no_grad():
        hidden = hf.transformer(ids.view(-1, T), attention_mask=mask.view(-1, T)).last_hidden_state  # (B*C, T, E)
        hidden = hidden.view(B, C, T, -1)
        expected_lm = hf.lm_head(hidden)
        expected_mc = hf.multiple_choice_head(hidden, mc_token_ids).squeeze(-1)
    real = mask.bool()
    torch.testing.assert_close(mine.logits[real], expected_lm[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mine.mc_logits, expected_mc, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", HEADS)
def test_token_type_ids(head, backend):
    hf, ours = load_pair(head, backend)
    ids, types = random_ids(shape_for(head)), random_ids(shape_for(head), seed=7, low=0)
    assert_outputs_close(forward(ours, ids, token_type_ids=types, return_dict=False),
                         forward(hf, ids, token_type_ids=types, return_dict=False))


@pytest.mark.parametrize("layout", ["(1, T)", "(B, T)"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", HEADS)
def test_position_ids(head, backend, layout):
    if head == DOUBLE and layout == "(B, T)":
        pytest.skip("transformers' double-heads model cannot take per-choice position ids")
    hf, ours = load_pair(head, backend)
    ids = random_ids(shape_for(head))
    T = ids.shape[-1]
    positions = torch.arange(5, 5 + T)[None] if layout == "(1, T)" else random_ids((2, T), vocab=32, seed=3, low=0)
    theirs = forward(hf, ids, position_ids=positions, return_dict=False)
    assert_outputs_close(forward(ours, ids, position_ids=positions, return_dict=False), theirs)
    # the positions really are used: the default ones give a different answer
    assert not torch.allclose(forward(ours, ids, return_dict=False)[0], theirs[0], atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", HEADS)
def test_inputs_embeds(head, backend):
    """Embeddings of the ids given directly give what transformers gives for the ids."""
    hf, ours = load_pair(head, backend)
    ids = random_ids(shape_for(head))
    embeds = hf.get_input_embeddings()(ids).detach()
    assert_outputs_close(forward(ours, inputs_embeds=embeds, return_dict=False),
                         forward(hf, ids, return_dict=False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mc_token_ids(backend):
    hf, ours = load_pair(DOUBLE, backend)
    ids = random_ids((2, 3, 7))
    mc_token_ids = torch.tensor([[0, 3, 6], [2, 2, 5]])
    theirs = forward(hf, ids, mc_token_ids=mc_token_ids)
    mine = forward(ours, ids, mc_token_ids=mc_token_ids)
    torch.testing.assert_close(mine.mc_logits, theirs.mc_logits, atol=1e-4, rtol=1e-4)
    assert mine.mc_logits.shape == (2, 3)
    assert not torch.allclose(forward(ours, ids).mc_logits, theirs.mc_logits, atol=1e-3)


@pytest.mark.parametrize("afn", ["relu", "silu", "swish"])
def test_other_activations(afn):
    hf, ours = load_pair("OpenAIGPTLMHeadModel", "sdpa", afn=afn)
    ids = random_ids((2, 7))
    assert_outputs_close(forward(ours, ids, return_dict=False), forward(hf, ids, return_dict=False))


@pytest.mark.parametrize("summary", [dict(summary_activation="tanh"), dict(summary_proj_to_labels=False),
                                     dict(summary_use_proj=False), dict(summary_first_dropout=0.0)])
def test_multiple_choice_summary_options(summary):
    hf, ours = load_pair(DOUBLE, "sdpa", **summary)
    ids, mc_token_ids = random_ids((2, 3, 7)), torch.tensor([[6, 2, 4], [0, 5, 6]])
    theirs = forward(hf, ids, mc_token_ids=mc_token_ids, return_dict=False)
    assert_outputs_close(forward(ours, ids, mc_token_ids=mc_token_ids, return_dict=False), theirs)


@pytest.mark.parametrize("summary_type", ["first", "last", "mean"])
def test_multiple_choice_summary_types_by_hand(summary_type):
    """transformers' summary reads hidden[:, -1] etc., which for (B, C, T, E) picks a choice, not a token; gpt_fast
    reads per choice (the meaning of the option), checked here by hand on transformers' hidden states."""
    hf, ours = load_pair(DOUBLE, "sdpa", summary_type=summary_type)
    ids = random_ids((2, 3, 7))
    with torch.no_grad():
        hidden = hf.transformer(ids).last_hidden_state  # (B, C, T, E)
        pooled = {"first": hidden[..., 0, :], "last": hidden[..., -1, :], "mean": hidden.mean(dim=-2)}[summary_type]
        expected = hf.multiple_choice_head.summary(pooled).squeeze(-1)  # (B, C)
    torch.testing.assert_close(forward(ours, ids).mc_logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("keep", [1, 3, torch.tensor([2]), torch.tensor([0, 4, 6]),
                                  torch.tensor([True] * 3 + [False] * 4)])
def test_logits_to_keep(keep):
    """An int keeps the last positions; a tensor (positions, or a mask of T) those it indexes, as transformers."""
    hf, ours = load_pair("OpenAIGPTLMHeadModel", "sdpa")
    ids = random_ids((2, 7))
    mine = forward(ours, ids, logits_to_keep=keep).logits
    kept = keep if isinstance(keep, int) else int(keep.sum()) if keep.dtype == torch.bool else keep.numel()
    assert mine.shape == (2, kept, TINY["vocab_size"])
    torch.testing.assert_close(mine, forward(hf, ids, logits_to_keep=keep).logits, atol=1e-4, rtol=1e-4)


def test_bad_logits_to_keep():
    _, ours = load_pair("OpenAIGPTLMHeadModel", "sdpa")
    for bad in (-1, 1.5, True):
        with pytest.raises(TypeError, match="logits_to_keep"):
            ours(random_ids((1, 3)), logits_to_keep=bad)


def with_head_mask_hooks(hf, head_mask):
    """transformers 4.x head masking on a 5.x model: multiply each layer's attention probabilities (after
    dropout) by head_mask[layer] (H,), written as a forward hook on the attention dropout."""
    handles = []
    for layer, block in enumerate(hf.transformer.h if hasattr(hf, "transformer") else hf.h):
        def hook(module, inputs, output, layer=layer):
            return output * head_mask[layer].view(1, -1, 1, 1)
        handles.append(block.attn.attn_dropout.register_forward_hook(hook))
    return handles


@pytest.mark.parametrize("layout", ["per layer", "shared"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", ["OpenAIGPTModel", "OpenAIGPTLMHeadModel"])
def test_head_mask(head, backend, layout):
    hf, ours = load_pair(head, backend)
    ids = random_ids((2, 7))
    per_layer = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 0.25]])  # (n_layer, n_head)
    given = per_layer if layout == "per layer" else per_layer[0]
    handles = with_head_mask_hooks(hf, per_layer if layout == "per layer" else per_layer[0].expand(2, 4))
    try:
        theirs = forward(hf, ids, output_attentions=True, return_dict=False)
    finally:
        for handle in handles:
            handle.remove()
    mine = forward(ours, ids, head_mask=given, output_attentions=True, return_dict=False)
    assert_outputs_close(mine, theirs)
    assert torch.all(mine[-1][0][:, 1] == 0)  # a masked head's probabilities are zero
    plain = forward(ours, ids, return_dict=False)
    assert not torch.allclose(plain[0], mine[0], atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_gpt1_shape_fp32(gpt1_ours, gpt1_hf, backend):
    gpt1_ours.set_attn_implementation(backend)
    ids = random_ids((1, 64), vocab=40478)
    theirs = forward(gpt1_hf, ids).logits
    torch.testing.assert_close(forward(gpt1_ours, ids).logits, theirs, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def gpt1_hf(gpt1_folder):
    return transformers.OpenAIGPTLMHeadModel.from_pretrained(gpt1_folder).eval()


@pytest.fixture(scope="module")
def gpt1_ours(gpt1_folder):
    import gpt_fast

    return gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(gpt1_folder)


@pytest.fixture(scope="module")
def gpt1_bf16_references(gpt1_hf):
    """(ids, transformers' base model in fp64, the same in bf16): last hidden states, computed once."""
    ids = random_ids((1, 32), vocab=40478)
    outputs = []
    for dtype in (torch.float64, torch.bfloat16):
        model = copy.deepcopy(gpt1_hf.transformer).to(dtype)
        outputs.append(forward(model, ids).last_hidden_state)
        del model
    return ids, *outputs


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_gpt1_shape_bf16(gpt1_folder, gpt1_bf16_references, backend):
    """12 layers of bf16: gpt_fast loaded straight into bf16 is about as far from fp64 as transformers in bf16."""
    import gpt_fast

    ids, reference, pytorch_bf16 = gpt1_bf16_references
    ours = gpt_fast.OpenAIGPTModel.from_pretrained(gpt1_folder, dtype=torch.bfloat16, attn_implementation=backend)
    assert_within_pytorch_error(forward(ours, ids).last_hidden_state, reference, pytorch_bf16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", HEADS)
def test_bf16_error_bounded_by_pytorch_bf16_error(head, backend):
    """gpt_fast in bf16 is about as far from an fp64 run as transformers in bf16 is."""
    hf = hf_model(head)
    hf64, hf16 = copy.deepcopy(hf).double(), copy.deepcopy(hf).to(torch.bfloat16)
    ours = gpt_fast_class(head).from_transformers(hf16, attn_implementation=backend).eval()
    assert ours.dtype == torch.bfloat16
    ids = random_ids(shape_for(head, B=2, T=16))
    reference, pytorch_bf16, mine = (forward(m, ids, return_dict=False) for m in (hf64, hf16, ours))
    for index in range(len(reference)):
        assert mine[index].dtype == torch.bfloat16
        assert_within_pytorch_error(mine[index], reference[index], pytorch_bf16[index])
