"""Convergence (Liger-Kernel's test): a small model trained 32 AdamW steps on fixed data, dropout 0, float32, on the
"fused" backend (gpt_fast's flash attention, add_layernorm and bias_gelu kernels) and on "eager" (transformers'
math): the per-step losses within rtol 2e-5 and the final parameters within atol 5e-3.

The fused add_layernorm, bias_gelu and attention run their backward kernels (gpt_fast::add_layernorm_backward,
bias_gelu_backward, flash_attention_backward; checked below): this test guards the kernels' forward and backward
over a whole training run (errors that compound through 32 updates)."""

import pytest
import torch
from dispatch_recorder import OpRecorder

import gpt_fast
from gpt_fast.ops import has_kernel

STEPS = 32
CONFIG = dict(vocab_size=128, n_positions=16, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, attn_pdrop=0.0,
              embd_pdrop=0.0)



def run(backend: str, initial_state: dict, batches: list[torch.Tensor], record: OpRecorder | None = None):
    model = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**CONFIG), attn_implementation=backend)
    model.load_state_dict(initial_state)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    losses = []
    for step in range(STEPS):
        ids = batches[step % len(batches)]
        loss = model(ids, labels=ids).loss
        if record is not None and step == 0:
            with record:
                loss.backward()
        else:
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, dict(model.named_parameters())


@pytest.mark.slow  # ~10-15 s on 2 shared cores
@pytest.mark.skipif(not has_kernel("flash_attention", "cpu"), reason="no CPU kernels built")
def test_fused_and_eager_backends_train_alike():
    torch.manual_seed(0)
    initial = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**CONFIG)).state_dict()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, CONFIG["vocab_size"], (4, 16), generator=generator) for _ in range(4)]
    record = OpRecorder()
    fused_losses, fused_params = run("fused", initial, batches, record)
    backward_kernels = {f"gpt_fast.{op}_backward.default" for op in ("add_layernorm", "bias_gelu", "flash_attention")}
    assert backward_kernels <= set(record.called), sorted(set(record.called))
    eager_losses, eager_params = run("eager", initial, batches)
    assert fused_losses[-1] < fused_losses[0] - 0.5  # it learned (the batches are memorised)
    torch.testing.assert_close(torch.tensor(fused_losses), torch.tensor(eager_losses), rtol=2e-5, atol=0)
    for name, param in fused_params.items():
        torch.testing.assert_close(param, eager_params[name], rtol=0, atol=5e-3, msg=name)
