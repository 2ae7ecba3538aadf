"""torch.func (grad, vmap per-sample gradients, jvp), forward-mode AD and double backward through the models, on
every backend, against transformers' model with the same weights; and through the differentiable ops against
reverse mode.

PyTorch's custom ops get no forward-mode derivative (the tangent through gpt_fast's kernels came out zero, with no
error) and functorch's grad / vmap refused them; under these transforms the kernel plan is the plain-PyTorch one
(gpt_fast/ops/func_transforms.py)."""

import copy

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from conftest import BACKENDS, load_pair, random_ids

import gpt_fast

HEAD = "OpenAIGPTLMHeadModel"


def _params(model):
    return {name: p.detach() for name, p in model.named_parameters()}


def _loss(model, **kwargs):
    def loss(params, ids):  # ids (T,): one example
        batch = ids.unsqueeze(0)
        mask = torch.ones_like(batch)  # (transformers reads the ids for padding without one: not under vmap)
        return torch.func.functional_call(model, params, (batch, mask), {"labels": batch, **kwargs}).loss
    return loss


def _directions(params, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(p.shape, generator=generator) for name, p in params.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_func_grad_and_per_sample_gradients_match_transformers(backend):
    hf, ours = load_pair(HEAD, backend)
    ids = random_ids((3, 9))
    theirs = torch.func.vmap(torch.func.grad(_loss(hf)), in_dims=(None, 0))(_params(hf), ids)
    mine = torch.func.vmap(torch.func.grad(_loss(ours)), in_dims=(None, 0))(_params(ours), ids)
    assert mine.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    single = torch.func.grad(_loss(ours))(_params(ours), ids[1])
    torch.testing.assert_close(single["transformer.h.0.attn.c_attn.weight"],
                               theirs["transformer.h.0.attn.c_attn.weight"][1], atol=1e-4, rtol=1e-4)


def test_func_grad_of_the_fused_loss_matches_transformers():
    hf, ours = load_pair(HEAD, "fused")
    ids = random_ids((9,))
    theirs = torch.func.grad(_loss(hf))(_params(hf), ids)
    mine = torch.func.grad(_loss(ours, return_logits=False))(_params(ours), ids)
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_jvp_and_forward_ad_match_transformers(backend):
    hf, ours = load_pair(HEAD, backend)
    ids = random_ids((2, 9))
    tangents = _directions(_params(hf))

    def logits(model):
        return lambda params: torch.func.functional_call(model, params, (ids,)).logits

    _, theirs = torch.func.jvp(logits(hf), (_params(hf),), (tangents,))
    _, mine = torch.func.jvp(logits(ours), (_params(ours),), (tangents,))
    assert theirs.abs().max() > 1e-2  # a tangent that is there to be lost
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
    with forward_ad.dual_level():
        duals = {name: forward_ad.make_dual(p, tangents[name]) for name, p in _params(ours).items()}
        dual_out = torch.func.functional_call(ours, duals, (ids,)).logits
        torch.testing.assert_close(forward_ad.unpack_dual(dual_out).tangent, theirs, atol=1e-4, rtol=1e-4)


def test_a_patched_transformers_model_gives_its_own_tangents():
    """apply_gpt_fast_kernels's layer forwards plan the same way (gpt_fast/patching/forwards.py)."""
    hf, _ = load_pair(HEAD, "eager")
    patched = copy.deepcopy(hf)
    gpt_fast.apply_gpt_fast_kernels(patched)
    ids = random_ids((2, 9))
    tangents = _directions(_params(hf))
    theirs, mine = (torch.func.jvp(lambda p, m=m: torch.func.functional_call(m, p, (ids,)).logits, (_params(m),),
                                   (tangents,))[1] for m in (hf, patched))
    assert theirs.abs().max() > 1e-2
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)


def test_an_out_of_range_id_is_still_refused_under_vmap():
    _, ours = load_pair(HEAD, "fused")
    ids = random_ids((3, 9))
    ids[2, 4] = ours.config.vocab_size + 5
    with pytest.raises(IndexError, match="input_ids holds"):
        torch.func.vmap(torch.func.grad(_loss(ours)), in_dims=(None, 0))(_params(ours), ids)


def _op_cases():
    """(name, op of one tensor x, x): each differentiable op with its other inputs fixed."""
    generator = torch.Generator().manual_seed(0)
    C, n_head = 16, 2
    residual, bias, weight, ln_bias = (torch.randn(*shape, generator=generator) for shape in ((3, C), (C,), (C,), (C,)))
    mask = torch.tensor([[True] * 5, [False, True, True, True, True]])
    rows, qkv = torch.randn(3, C, generator=generator), torch.randn(2, 5, 3 * C, generator=generator)
    ops = gpt_fast.ops
    return [
        ("add_layernorm", lambda x: ops.add_layernorm(x, residual, bias, weight, ln_bias, 1e-5), rows),
        ("add_layernorm", lambda x: ops.add_layernorm(x, x * 0.5, None, weight, ln_bias, 1e-5, 0.3, 11), rows),
        ("bias_gelu", lambda x: ops.bias_gelu(x, bias), rows),
        ("flash_attention", lambda x: ops.flash_attention(x, mask, n_head), qkv),
        ("flash_attention_train", lambda x: ops.flash_attention_train(x, mask, n_head, 0.25, 7)[0], qkv),
    ]


@pytest.mark.parametrize("case", range(len(_op_cases())),
                         ids=["add_layernorm", "add_layernorm_dropout", "bias_gelu", "flash_attention",
                              "flash_attention_train_dropout"])
def test_ops_give_forward_mode_derivatives(case):
    """Each differentiable op's jvp against reverse mode's (torch.autograd.functional.jvp: the double-vjp trick,
    through the op's registered backward), by torch.func.jvp and by forward-mode AD."""
    name, op, x = _op_cases()[case]
    if not gpt_fast.ops.has_kernel(name, "cpu"):
        pytest.skip(f"no CPU kernel for {name}: the op is the reference itself")
    tangent = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    expected = torch.autograd.functional.jvp(op, x, tangent)[1]
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(torch.func.jvp(op, (x,), (tangent,))[1], expected, atol=1e-5, rtol=1e-4)
    with forward_ad.dual_level():
        out = op(forward_ad.make_dual(x, tangent))
        torch.testing.assert_close(forward_ad.unpack_dual(out).tangent, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_matches_transformers(backend):
    """backward(create_graph=True) (gradient penalties, Hessian-vector products): the first gradients equal the
    plain ones and transformers', and a Hessian-vector product through them equals transformers'. The fused ops'
    first gradients had counted the paths from x to the residual twice (both are inputs of add_layernorm).
    PyTorch's CPU SDPA has no second derivative: the "sdpa" backend says so."""
    hf, ours = load_pair(HEAD, backend)
    ids = random_ids((2, 9))
    if backend == "sdpa":
        grads = torch.autograd.grad(ours(ids, labels=ids).loss, list(ours.parameters()), create_graph=True)
        with pytest.raises(RuntimeError, match="_scaled_dot_product_flash_attention_for_cpu_backward is not impl"):
            torch.autograd.grad(grads[0].sum(), list(ours.parameters()), allow_unused=True)
        return
    results = []
    for model in (hf, ours):
        params = list(model.parameters())
        plain = torch.autograd.grad(model(ids, labels=ids).loss, params)
        grads = torch.autograd.grad(model(ids, labels=ids).loss, params, create_graph=True)
        for a, b in zip(grads, plain):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        vector = _directions(dict(model.named_parameters()))
        hvp = torch.autograd.grad(grads, params, [vector[name] for name, _ in model.named_parameters()])
        results.append((grads, hvp))
    for theirs, mine in zip(*results):
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
