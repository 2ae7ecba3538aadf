"""The tied LM-head / token-embedding weight's one gradient (gpt_fast/models/tied_gradient.py): the fused loss's
gradient handed over to the token lookup, which adds its rows into it. Every gradient as the plain path gives it
(the same model with the hand-over off), the hand-over really taken (no embedding_dense_backward), and each case
where it must not apply or finds nothing to take."""

import contextlib

import pytest
import torch
from conftest import gpt_fast_class, hf_model, random_ids
from dispatch_recorder import OpRecorder

import gpt_fast.models.heads as heads
from gpt_fast.models import tied_gradient


@contextlib.contextmanager
def _never(*args):
    yield None


def lm_model(**overrides):
    model = gpt_fast_class("OpenAIGPTLMHeadModel").from_transformers(hf_model("OpenAIGPTLMHeadModel", **overrides),
                                                                     attn_implementation="sdpa")
    return model.eval()  # no dropout: the runs compared must be the same arithmetic


def step_grads(model, run, plain: bool, monkeypatch) -> dict:
    """run(model) -> a loss; its backward's gradients, with the hand-over on or (plain) off."""
    with monkeypatch.context() as patch:
        if plain:
            patch.setattr(heads, "share_tied_gradient", _never)
        model.zero_grad(set_to_none=True)
        run(model).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(mine: dict, plain: dict):
    assert mine.keys() == plain.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(mine[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def fused_loss(ids, **kwargs):
    return lambda model: model(ids, labels=ids, return_logits=False, **kwargs).loss


@pytest.mark.parametrize("autocast", [False, True])
def test_gradients_as_the_plain_path(autocast, monkeypatch):
    model, ids = lm_model(), random_ids((2, 9))
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        plain = step_grads(model, fused_loss(ids), True, monkeypatch)
        mine = step_grads(model, fused_loss(ids), False, monkeypatch)
    assert model.lm_head.weight is model.transformer.tokens_embed.weight
    assert_same_grads(mine, plain)


def test_the_hand_over_is_taken():
    """With the hand-over only the position embedding runs embedding_dense_backward (the token embedding's zeroed
    (V, C) gradient is never made); the logits path runs it for both."""
    model, ids = lm_model(), random_ids((2, 9))
    counts = []
    for return_logits in (False, True):
        loss = model(ids, labels=ids, return_logits=return_logits).loss
        with OpRecorder() as recorder:
            loss.backward()
        counts.append(sum("embedding_dense_backward" in op for op in recorder.called))
    assert counts == [1, 2]


@pytest.mark.parametrize("case", ["token_type_ids", "num_items_in_batch", "two_micro_batches", "untied"])
def test_other_steps_as_the_plain_path(case, monkeypatch):
    model, ids = lm_model(), random_ids((2, 9))
    if case == "token_type_ids":  # a second lookup of the tied weight, by F.embedding's own backward
        run = fused_loss(ids, token_type_ids=random_ids((2, 9), seed=3))
    elif case == "num_items_in_batch":
        run = fused_loss(ids, num_items_in_batch=7)
    elif case == "two_micro_batches":  # two forwards, two hand-overs, one backward
        other = random_ids((2, 9), seed=5)
        run = lambda m: fused_loss(ids)(m) + 0.5 * fused_loss(other)(m)  # noqa: E731
    else:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        run = fused_loss(ids)
    assert_same_grads(step_grads(model, run, False, monkeypatch), step_grads(model, run, True, monkeypatch))


def test_backward_without_the_loss_finds_no_hand_over(monkeypatch):
    """A backward pass that does not go through the loss: the lookup makes F.embedding's own gradient."""
    model, ids = lm_model(), random_ids((2, 9))

    def run(m):
        out = m(ids, labels=ids, return_logits=False, output_hidden_states=True)
        return out.hidden_states[-1].square().sum()
    assert_same_grads(step_grads(model, run, False, monkeypatch), step_grads(model, run, True, monkeypatch))


def test_a_second_backward_pass():
    model, ids = lm_model(), random_ids((2, 9))
    weight = model.lm_head.weight
    loss = model(ids, labels=ids, return_logits=False).loss
    first = torch.autograd.grad(2 * loss, weight, retain_graph=True)[0]
    second = torch.autograd.grad(loss, weight)[0]
    torch.testing.assert_close(first, 2 * second)


@pytest.mark.parametrize("change", ["padding_idx", "hook", "no_grad_weight", "inputs_embeds"])
def test_not_applied_where_it_could_change_something(change, monkeypatch):
    model, ids = lm_model(), random_ids((2, 9))
    embedding, called = model.transformer.tokens_embed, []
    run = fused_loss(ids)
    if change == "padding_idx":
        embedding.padding_idx = 0
    elif change == "hook":
        embedding.register_forward_hook(lambda *args: called.append(1))
    elif change == "no_grad_weight":
        embedding.weight.requires_grad_(False)
    else:
        run = lambda m: m(inputs_embeds=m.transformer.tokens_embed(ids), labels=ids,  # noqa: E731
                          return_logits=False).loss
    applied = []
    original = tied_gradient.head_weight_for_loss
    monkeypatch.setattr(heads, "head_weight_for_loss",
                        lambda box, w: applied.append(box is not None and box.looked_up) or original(box, w))
    mine = step_grads(model, run, False, monkeypatch)
    assert applied == [False]
    assert called == ([1] if change == "hook" else [])
    assert_same_grads(mine, step_grads(model, run, True, monkeypatch))
