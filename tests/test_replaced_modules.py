"""Block modules a user replaced, as fine-tuning recipes do: a LoRA wrapper around a linear layer (what PEFT puts
there), a Conv1D subclass with its own forward, another norm, another activation, another MLP. Each must run its
own forward, as in transformers' Block, on every backend, in forward, generate() and the gradients; a replaced
attention module is refused with the reason (gpt_fast/models/block_modules.py)."""

import pytest
import torch
from conftest import BACKENDS, LoRA, load_pair, random_ids
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    apply_activation_checkpointing,
    checkpoint_wrapper,
)

from gpt_fast.models.block_modules import module_by_module
from gpt_fast.models.linear import Conv1D
from gpt_fast.models.modeling import Block

LM = "OpenAIGPTLMHeadModel"
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


class Doubled(nn.Module):
    """2 * inner(x): an unmistakable change of any module's output."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 2 * self.inner(x)


class DoublingConv1D(Conv1D):  # a subclass whose forward differs (and takes gpt_fast's arguments)
    def forward(self, x, *args, **kwargs):
        return 2 * super().forward(x, *args, **kwargs)


class RMSNorm(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(width, generator=torch.Generator().manual_seed(3)))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight


def lora(block, name):
    parent, attr = (block.attn, "c_attn") if name == "c_attn" else (
        (block.attn, "c_proj") if name == "attn.c_proj" else (block.mlp, name.removeprefix("mlp.")))
    setattr(parent, attr, LoRA(getattr(parent, attr)))


def doubling_subclass(block, ours):
    old = block.mlp.c_fc
    if ours:  # gpt_fast's model: a Conv1D subclass; transformers': the same function through a wrapper
        layer = DoublingConv1D(old.weight.shape[1], old.weight.shape[0]).to(old.weight.dtype)
        layer.load_state_dict(old.state_dict())
        block.mlp.c_fc = layer
    else:
        block.mlp.c_fc = Doubled(old)


REPLACEMENTS = {
    "lora c_attn": lambda block, ours: lora(block, "c_attn"),
    "lora attn.c_proj": lambda block, ours: lora(block, "attn.c_proj"),
    "lora mlp.c_fc": lambda block, ours: lora(block, "mlp.c_fc"),
    "lora mlp.c_proj": lambda block, ours: lora(block, "mlp.c_proj"),
    "conv1d subclass": doubling_subclass,
    "rmsnorm ln_1": lambda block, ours: setattr(block, "ln_1", RMSNorm(block.ln_1.weight.shape[0])),
    "ln_2 without affine": lambda block, ours: setattr(block, "ln_2", nn.LayerNorm(block.ln_2.weight.shape[0],
                                                                                  elementwise_affine=False)),
    "relu act": lambda block, ours: setattr(block.mlp, "act", nn.ReLU()),
    "erf gelu act": lambda block, ours: setattr(block.mlp, "act", nn.GELU()),
    "silu act": lambda block, ours: setattr(block.mlp, "act", nn.SiLU()),
    "wrapped mlp": lambda block, ours: setattr(block, "mlp", Doubled(block.mlp)),
    "wrapped resid_dropout": lambda block, ours: setattr(block.attn, "resid_dropout", Doubled(nn.Identity())),
}


def replaced_pair(backend, replacement, dtype=torch.float32, **overrides):
    hf, ours = load_pair(LM, backend, **overrides)
    hf, ours = hf.to(dtype), ours.to(dtype)
    for model, is_ours in ((hf, False), (ours, True)):
        REPLACEMENTS[replacement](model.transformer.h[-1], is_ours)
    return hf, ours


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("replacement", REPLACEMENTS)
def test_replaced_modules_run_their_forward(backend, replacement):
    hf, ours = replaced_pair(backend, replacement)
    untouched = load_pair(LM, backend)[1]
    ids = random_ids((2, 9))
    with torch.no_grad():
        got, expected, before = ours(ids).logits, hf(ids).logits, untouched(ids).logits
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    assert (got - before).abs().max() > 1e-4  # the replacement really changes the numbers (erf GELU: by ~3e-4)
    prompt = ids[:1, :5]
    assert torch.equal(ours.generate(prompt, max_new_tokens=6), hf.generate(prompt, max_new_tokens=6, pad_token_id=0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("replacement", ["lora c_attn", "lora mlp.c_fc", "lora mlp.c_proj"])
def test_replaced_modules_in_bfloat16(backend, replacement):
    hf, ours = replaced_pair(backend, replacement, torch.bfloat16)
    hf32, _ = replaced_pair(backend, replacement)
    ids = random_ids((2, 9))
    with torch.no_grad():
        got, theirs, reference = ours(ids).logits, hf(ids).logits, hf32(ids).logits
    # within a small multiple of transformers' own bf16 error
    assert (got.float() - reference).abs().max() <= 3 * (theirs.float() - reference).abs().max() + 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_lora_gradients_match_transformers(backend):
    """The fine-tuning case: base weights frozen, the LoRA factors trained."""
    hf, ours = load_pair(LM, backend, **NO_DROPOUT)
    for model in (hf, ours):
        for block in model.transformer.h:
            lora(block, "c_attn")
            lora(block, "mlp.c_fc")
        model.requires_grad_(False)
        for name, param in model.named_parameters():
            param.requires_grad_(name.endswith((".A", ".B")))
        model.train()
    ids = random_ids((2, 9))
    losses = [model(ids, labels=ids).loss for model in (hf, ours)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    theirs = {name: p.grad for name, p in hf.named_parameters() if p.requires_grad}
    ours_grads = {name: p.grad for name, p in ours.named_parameters() if p.requires_grad}
    assert theirs.keys() == ours_grads.keys() and len(theirs) == 8
    for name, grad in theirs.items():
        torch.testing.assert_close(ours_grads[name], grad, atol=1e-4, rtol=1e-4, msg=name)


def test_the_blocks_fuse_again_once_the_modules_are_gpt_fasts():
    _, ours = load_pair(LM, "fused")
    blocks = ours.transformer.h
    assert not module_by_module(blocks)
    original = blocks[0].mlp.c_fc
    blocks[0].mlp.c_fc = LoRA(original)
    assert module_by_module(blocks)
    blocks[0].mlp.c_fc = original
    assert not module_by_module(blocks)


def test_a_replaced_attention_is_refused():
    _, ours = load_pair(LM, "fused")
    ours.transformer.h[0].attn = Doubled(ours.transformer.h[0].attn)
    with pytest.raises(TypeError, match="attn is a Doubled.*Replace attn.c_attn or attn.c_proj"):
        ours(random_ids((1, 4)))


def test_blocks_wrapped_by_torchs_checkpoint_wrapper_still_fuse():
    """apply_activation_checkpointing wraps each Block in a CheckpointWrapper (FSDP1 in its own wrapper): the layout
    is looked for through such one-module wrappers, so the blocks keep their fused body, and the numbers hold."""
    hf, ours = load_pair(LM, "fused", **NO_DROPOUT)
    apply_activation_checkpointing(ours, checkpoint_wrapper_fn=checkpoint_wrapper,
                                   check_fn=lambda module: isinstance(module, Block))
    assert type(ours.transformer.h[0]).__name__ == "CheckpointWrapper"
    assert not module_by_module(ours.transformer.h)
    ids = random_ids((2, 9))
    losses = []
    for model in (hf.train(), ours.train()):
        loss = model(ids, labels=ids).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.lm_head.weight.grad, hf.lm_head.weight.grad, atol=1e-4, rtol=1e-4)
    inner = ours.transformer.h[1]._checkpoint_wrapped_module
    inner.mlp.c_fc = LoRA(inner.mlp.c_fc)
    assert module_by_module(ours.transformer.h)  # a replaced module inside a wrapped block still counts
