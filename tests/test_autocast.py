"""CPU bf16 autocast (what `gpt-fast train --bf16` and transformers' Trainer with bf16=True run): every backend
trains under it, and the kernel backends give the eager backend's loss and gradients. Under autocast the fused
kernels keep running (add_layernorm and bias_gelu cast their other inputs to their first input's dtype, see
gpt_fast/ops/kernel_plan.py), and generate runs in the model's dtype whatever autocast says."""

import pytest
import torch
from conftest import gpt_fast_class, has_kernel, hf_model, random_ids
from dispatch_recorder import OpRecorder


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


@pytest.mark.skipif(not (has_kernel("add_layernorm", "cpu") and has_kernel("bias_gelu", "cpu")),
                    reason="the extension's CPU kernels are not built")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernels_run_under_autocast(dtype):
    model = gpt_fast_class("OpenAIGPTLMHeadModel").from_transformers(
        hf_model("OpenAIGPTLMHeadModel"), attn_implementation="fused").eval()
    ids = random_ids((2, 12))
    with torch.autocast("cpu", dtype=dtype), OpRecorder() as recorder:
        logits = model(ids).logits
    assert "gpt_fast.add_layernorm.default" in recorder.called
    assert "gpt_fast.bias_gelu.default" in recorder.called
    # under autograd the fused attention runs its training kernel (it saves the log-sum-exp for the backward)
    assert {"gpt_fast.flash_attention.default", "gpt_fast.flash_attention_train.default"} & set(recorder.called)
    with torch.autocast("cpu", dtype=dtype):
        expected = model.float().eval()(ids, output_attentions=True).logits  # output_attentions: module math
    assert logits.dtype == expected.dtype
    torch.testing.assert_close(logits, expected, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("prompt", [7, 40])  # 40: past linear_small_m's rows, the prefill takes the GEMMs
def test_generate_ignores_autocast(prompt):
    model = gpt_fast_class("OpenAIGPTLMHeadModel").from_transformers(
        hf_model("OpenAIGPTLMHeadModel", n_positions=64)).eval()
    ids = random_ids((1, prompt))
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(tokens, expected)
