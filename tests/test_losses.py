"""Losses of the three task heads against transformers and against the formulas written out here."""

import pytest
import torch
import torch.nn.functional as F
from conftest import gpt_fast_class, hf_model, random_ids

LM, DOUBLE, SEQ_CLS = "OpenAIGPTLMHeadModel", "OpenAIGPTDoubleHeadsModel", "OpenAIGPTForSequenceClassification"


def pair(head, backend="sdpa", **overrides):
    hf = hf_model(head, **overrides)
    return hf, gpt_fast_class(head).from_transformers(hf, attn_implementation=backend).eval()


def forward(model, *args, **kwargs):
    with torch.no_grad():
        return model(*args, **kwargs)


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_shifted_lm_loss_ignores_minus_100(backend):
    hf, ours = pair(LM, backend)
    ids = random_ids((3, 9))
    labels = ids.clone()
    labels[0, 4:] = -100
    labels[2, :2] = -100
    theirs, mine = forward(hf, ids, labels=labels), forward(ours, ids, labels=labels)
    V = theirs.logits.shape[-1]
    by_hand = F.cross_entropy(theirs.logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    close(mine.loss, by_hand)
    close(mine.loss, theirs.loss)
    assert mine.loss.shape == ()
    as_tuple = forward(ours, ids, labels=labels, return_dict=False)
    assert len(as_tuple) == len(forward(hf, ids, labels=labels, return_dict=False)) == 2
    close(as_tuple[0], theirs.loss)
    close(as_tuple[1], theirs.logits)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_lm_loss_gradients_match_transformers(backend):
    hf, ours = pair(LM, backend, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf.train(), ours.train()
    ids = random_ids((2, 8))
    hf(ids, labels=ids).loss.backward()
    ours(ids, labels=ids).loss.backward()
    theirs = dict(hf.named_parameters())
    for name, param in ours.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, theirs[name].grad, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_double_heads_losses():
    hf, ours = pair(DOUBLE)
    ids = random_ids((2, 3, 7))
    labels = ids.clone()
    labels[:, 1, :3] = -100
    mc_token_ids, mc_labels = torch.tensor([[6, 4, 2], [1, 6, 5]]), torch.tensor([2, 0])
    kwargs = dict(mc_token_ids=mc_token_ids, labels=labels, mc_labels=mc_labels)
    theirs, mine = forward(hf, ids, **kwargs), forward(ours, ids, **kwargs)
    close(mine.mc_loss, F.cross_entropy(theirs.mc_logits, mc_labels))
    V = theirs.logits.shape[-1]
    lm_by_hand = F.cross_entropy(theirs.logits[..., :-1, :].reshape(-1, V), labels[..., 1:].reshape(-1))
    close(mine.loss, lm_by_hand)
    close(mine.loss, theirs.loss)
    close(mine.mc_loss, theirs.mc_loss)
    for kwargs in (dict(mc_token_ids=mc_token_ids, mc_labels=mc_labels), dict(labels=labels)):
        ours_tuple, their_tuple = forward(ours, ids, **kwargs, return_dict=False), forward(hf, ids, **kwargs,
                                                                                            return_dict=False)
        assert len(ours_tuple) == len(their_tuple) == 3
        for a, b in zip(ours_tuple, their_tuple):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def padded(side, T=8, lengths=(8, 5, 3)):
    ids = random_ids((len(lengths), T))
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    if side == "left":
        mask = mask.flip(-1)
    return ids * mask, mask  # pad id 0 where padded


@pytest.mark.parametrize("side", ["right", "left"])
def test_classification_reads_the_last_real_token(side):
    hf, ours = pair(SEQ_CLS, num_labels=3)
    ids, mask = padded(side)
    mine = forward(ours, ids, attention_mask=mask)
    close(mine.logits, forward(hf, ids, attention_mask=mask).logits)
    # by hand: each row alone, unpadded (at the positions it had), scored at its last token
    for row in range(ids.shape[0]):
        real = mask[row].bool()
        alone, positions = ids[row][real][None], torch.arange(ids.shape[1])[real][None]
        close(mine.logits[row], forward(hf, alone, position_ids=positions).logits[0])


CASES = {  # name: (num_labels, problem_type given, labels, the loss by hand from the pooled logits)
    "regression, one label": (1, None, torch.tensor([0.5, -1.0, 2.0]),
                              lambda logits, y: F.mse_loss(logits.squeeze(-1), y)),
    "regression, three outputs": (3, "regression", torch.randn(3, 3, generator=torch.Generator().manual_seed(0)),
                                  F.mse_loss),
    "single label, inferred": (3, None, torch.tensor([2, 0, 1]), F.cross_entropy),
    "single label, given": (4, "single_label_classification", torch.tensor([3, 0, 1]), F.cross_entropy),
    "multi label, inferred": (3, None, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]),
                              F.binary_cross_entropy_with_logits),
}


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("case", list(CASES))
def test_classification_losses(case, side):
    num_labels, problem_type, labels, by_hand = CASES[case]
    hf, ours = pair(SEQ_CLS, num_labels=num_labels, problem_type=problem_type)
    ids, mask = padded(side)
    theirs = forward(hf, ids, attention_mask=mask, labels=labels)
    mine = forward(ours, ids, attention_mask=mask, labels=labels)
    close(mine.logits, theirs.logits)
    close(mine.loss, by_hand(theirs.logits, labels))
    close(mine.loss, theirs.loss)
    assert ours.config.problem_type == hf.config.problem_type  # an inferred problem type is recorded, as there
    as_tuple = forward(ours, ids, attention_mask=mask, labels=labels, return_dict=False)
    assert len(as_tuple) == 2
    close(as_tuple[0], theirs.loss)


def test_classification_without_pad_id_needs_batch_of_one():
    hf, ours = pair(SEQ_CLS, pad_token_id=None)
    ids = random_ids((2, 6))
    with pytest.raises(ValueError, match="padding token"):
        forward(ours, ids)
    with pytest.raises(ValueError, match="padding token"):
        forward(hf, ids)
    close(forward(ours, ids[:1]).logits, forward(hf, ids[:1]).logits)  # the last token of a single row


def test_classification_with_inputs_embeds_reads_the_last_position():
    hf, ours = pair(SEQ_CLS)
    ids, mask = padded("right")
    embeds = hf.get_input_embeddings()(ids).detach()
    mine = forward(ours, inputs_embeds=embeds, attention_mask=mask)
    close(mine.logits, forward(hf, inputs_embeds=embeds, attention_mask=mask).logits)
