"""Hooks and computed weights on the blocks' modules work as in transformers' model, on every backend: forward hooks
see each module's own output (activation capture), hooks that change an output steer the logits and generate()'s
tokens, pre-hooks, backward hooks and global hooks run, and layers whose weight is computed (torch.nn.utils
parametrize, prune) multiply by it. The fused path (add_layernorm taking c_proj's bias, the GELU inside c_fc) runs
only while no block module has hooks (gpt_fast/models/hooks.py, ops/kernel_plan.py: hooked)."""

import pytest
import torch
from conftest import BACKENDS, load_pair, random_ids
from dispatch_recorder import OpRecorder
from torch.nn.modules.module import register_module_forward_hook
from torch.nn.utils import parametrize, prune

from gpt_fast.ops import has_kernel

HEAD = "OpenAIGPTLMHeadModel"
# Modules of a block that both models call once per block. transformers' mlp.act is one instance shared by all blocks
# (its hook sees every block's call); its eager attention also calls attn.attn_dropout, which gpt_fast's does not.
CALLED = ("attn", "attn.c_attn", "attn.c_proj", "attn.resid_dropout", "ln_1", "mlp", "mlp.c_fc", "mlp.act",
          "mlp.c_proj", "mlp.dropout", "ln_2")
STEERED = ("ln_1", "ln_2", "mlp", "mlp.c_fc", "attn.c_proj", "mlp.c_proj")


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@pytest.fixture
def handles():
    """Hook handles removed after the test: transformers' mlp.act is one module for all its models (ACT_FNS), so a
    hook left on it would reach every later test's transformers model."""
    registered = []
    yield registered
    for handle in registered:
        handle.remove()


def _capture(model, layer: int, handles: list) -> dict:
    """{module name: [its outputs]} for every CALLED module of block `layer`, by forward hooks."""
    seen = {}
    for name in CALLED:
        handles.append(model.transformer.h[layer].get_submodule(name).register_forward_hook(
            lambda module, args, out, name=name: seen.setdefault(name, []).append(_first(out))))
    return seen


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_hooks_see_each_modules_own_output(backend, handles):
    hf, ours = load_pair(HEAD, backend)
    ids = random_ids((2, 7))
    # the last block: transformers' shared act module runs for it last
    theirs, mine = _capture(hf, 1, handles), _capture(ours, 1, handles)
    torch.testing.assert_close(_logits(ours, ids), _logits(hf, ids), atol=1e-4, rtol=1e-4)
    assert set(mine) == set(CALLED) and all(len(calls) == 1 for calls in mine.values())
    for name in CALLED:
        torch.testing.assert_close(mine[name][0], theirs[name][-1], atol=1e-4, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("name", STEERED)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hook_that_changes_an_output_steers_logits_and_tokens(backend, name):
    hf, ours = load_pair(HEAD, backend)
    ids = random_ids((1, 5))
    width = hf.transformer.h[0].get_submodule(name)(torch.zeros(1, 1, 32 if name != "mlp.c_proj" else 128)).shape[-1]
    steer = 3.0 * torch.randn(width, generator=torch.Generator().manual_seed(7))
    for model in (hf, ours):
        model.transformer.h[0].get_submodule(name).register_forward_hook(lambda module, args, out: out + steer)
    torch.testing.assert_close(_logits(ours, ids), _logits(hf, ids), atol=1e-4, rtol=1e-4)
    expected = hf.generate(ids, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(ours.generate(ids, max_new_tokens=6), expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pre_hooks_backward_hooks_and_global_hooks_run(backend):
    hf, ours = load_pair(HEAD, backend, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    ids = random_ids((2, 7))
    grads_out = {}
    for tag, model in (("theirs", hf), ("ours", ours)):
        model.transformer.h[0].ln_1.register_forward_pre_hook(lambda module, args: (args[0] * 0.5,))
        model.transformer.h[1].mlp.register_full_backward_hook(
            lambda module, grad_in, grad_out, tag=tag: grads_out.__setitem__(tag, grad_out[0]))
        model.train()
    losses = [model(ids, labels=ids).loss for model in (hf, ours)]
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(grads_out["ours"], grads_out["theirs"], atol=1e-5, rtol=1e-4)
    for (name, theirs), mine in zip(hf.named_parameters(), ours.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    norms = {}
    handle = register_module_forward_hook(
        lambda module, args, out: norms.__setitem__(id(module), 1) if isinstance(module, torch.nn.LayerNorm) else None)
    try:
        for model in (hf, ours):
            norms.clear()
            _logits(model.eval(), ids)
            assert len(norms) == 4  # every block's two LayerNorms were called
    finally:
        handle.remove()


@pytest.mark.skipif(not has_kernel("add_layernorm", "cpu"), reason="no CPU add_layernorm kernel built")
def test_the_fused_kernels_run_exactly_while_no_block_module_has_hooks():
    _, ours = load_pair(HEAD, "fused")
    ids = random_ids((2, 7))

    def kernels():
        with OpRecorder() as record:
            _logits(ours, ids)
            ours.generate(ids, max_new_tokens=2)
        return {"gpt_fast.add_layernorm.default", "gpt_fast.bias_gelu.default"} & set(record.called)

    assert kernels()
    on_block = ours.transformer.h[0].register_forward_hook(lambda module, args, out: None)
    assert kernels()  # a block is called as a module either way
    handle = ours.transformer.h[1].mlp.c_fc.register_forward_hook(lambda module, args, out: None)
    assert not kernels()
    handle.remove()
    on_block.remove()
    assert kernels()


class Scaled(torch.nn.Module):
    def forward(self, weight):
        return 1.5 * weight


def _parametrize(model):  # no hooks: the fused path runs, reading the computed tensors
    parametrize.register_parametrization(model.transformer.h[0].mlp.c_fc, "weight", Scaled())
    parametrize.register_parametrization(model.transformer.h[0].attn.c_proj, "bias", Scaled())
    parametrize.register_parametrization(model.transformer.h[1].ln_2, "weight", Scaled())
    return "transformer.h.0.mlp.c_fc.parametrizations.weight.original"


def _prune(model):  # pruning's forward pre-hook: the blocks run module by module
    prune.l1_unstructured(model.transformer.h[1].attn.c_attn, "weight", amount=0.5)
    return "transformer.h.1.attn.c_attn.weight_orig"


@pytest.mark.parametrize("change", [_parametrize, _prune], ids=["parametrize", "prune"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_parametrized_and_pruned_layers_multiply_by_their_computed_weight(backend, change):
    hf, ours = load_pair(HEAD, backend, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    ids = random_ids((1, 6))
    name = [change(model) for model in (hf, ours)][0]
    torch.testing.assert_close(_logits(ours, ids), _logits(hf, ids), atol=1e-4, rtol=1e-4)
    expected = hf.generate(ids, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(ours.generate(ids, max_new_tokens=6), expected, rtol=0, atol=0)
    for model in (hf, ours):
        model.train()(ids, labels=ids).loss.backward()
    theirs, mine = hf.get_parameter(name).grad, ours.get_parameter(name).grad
    assert mine is not None and mine.abs().max() > 0
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
