"""Activation checkpointing keeps the attention kernels' outputs (gpt_fast/models/checkpointing.py): the kernel runs
once per checkpointed block and step instead of twice, the gradients are a plain step's (dropout inside the kernel
included), and keep_attention=False, a context_fn of the caller's, and reentrant checkpointing are honoured."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gpt_fast
from gpt_fast.models.checkpointing import attention_kernels
from gpt_fast.ops._library import extension_loaded

CONFIG = dict(vocab_size=61, n_positions=32, n_embd=24, n_layer=3, n_head=3)
needs_extension = pytest.mark.skipif(not extension_loaded(), reason="gpt_fast's extension is not built")


class CountAttentionKernels(TorchDispatchMode):
    """Counts the calls that reach the attention kernels' dispatch (a kept output does not)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func in attention_kernels()
        return func(*args, **(kwargs or {}))


def gradients(model, ids, checkpointing: dict | None = None):
    """(kernel calls, {name: grad}) of one loss.backward() with dropout drawn from seed 3; checkpointing: the
    arguments of gradient_checkpointing_enable, or None for none."""
    model.zero_grad(set_to_none=True)
    if checkpointing is not None:
        model.gradient_checkpointing_enable(**checkpointing)
    else:
        model.gradient_checkpointing_disable()
    torch.manual_seed(3)
    with CountAttentionKernels() as counter:
        model(ids, labels=ids).loss.backward()
    return counter.calls, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("backend, dropout", [
    pytest.param("fused", 0.2, marks=needs_extension), ("sdpa", 0.0)], ids=["fused, dropout", "sdpa"])
def test_kept_attention_runs_once_and_gives_a_plain_steps_gradients(backend, dropout):
    torch.manual_seed(0)
    config = gpt_fast.OpenAIGPTConfig(**CONFIG, attn_pdrop=dropout, resid_pdrop=dropout, embd_pdrop=dropout)
    model = gpt_fast.OpenAIGPTLMHeadModel(config, attn_implementation=backend).train()
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 19), generator=torch.Generator().manual_seed(1))
    layers = CONFIG["n_layer"]
    plain_calls, plain = gradients(model, ids)
    assert plain_calls == layers  # the kernel this backend runs is one the policy names
    for settings, calls in [(dict(), layers), (dict(keep_attention=False), 2 * layers),
                            (dict(every_n_layers=2, keep_attention=False), layers + 2)]:
        checkpointed_calls, checkpointed = gradients(model, ids, settings)
        assert checkpointed_calls == calls, settings
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_the_callers_context_fn_and_reentrant_checkpointing_are_honoured():
    torch.manual_seed(0)
    config = gpt_fast.OpenAIGPTConfig(**CONFIG, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)  # sdpa's kernel
    model = gpt_fast.OpenAIGPTLMHeadModel(config, attn_implementation="sdpa").train()
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 9))
    _, plain = gradients(model, ids)
    used = []

    def context_fn():
        used.append(1)
        return torch.utils.checkpoint.noop_context_fn()

    calls, custom = gradients(model, ids, dict(gradient_checkpointing_kwargs={"context_fn": context_fn}))
    assert used and calls == 2 * CONFIG["n_layer"]  # the caller's context_fn, which keeps nothing
    _, reentrant = gradients(model, ids, dict(gradient_checkpointing_kwargs={"use_reentrant": True}))
    assert "context_fn" not in model.base_model.gradient_checkpointing["kwargs"]  # reentrant takes none
    for name in plain:
        torch.testing.assert_close(custom[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(reentrant[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
