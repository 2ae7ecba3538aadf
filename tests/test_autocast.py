"""CPU bf16 autocast (what `gpt-fast train --bf16` and transformers' Trainer with bf16=True run): every backend
trains under it, and the kernel backends give the eager backend's loss and gradients. Under autocast the fused
kernels step aside (mixed dtypes), so this guards the plan's choice, not the kernels."""

import pytest
import torch
from conftest import gpt_fast_class, hf_model, random_ids


def loss_and_grads(backend, training: bool):
    model = gpt_fast_class("OpenAIGPTLMHeadModel").from_transformers(
        hf_model("OpenAIGPTLMHeadModel", resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0),
        attn_implementation=backend).train(training)
    ids = random_ids((2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backend", ["sdpa", "fused"])
def test_bf16_autocast_trains_as_eager(backend, training):
    expected_loss, expected = loss_and_grads("eager", training)
    loss, grads = loss_and_grads(backend, training)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-2, atol=1e-2)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=5e-2, atol=5e-2, msg=name)
