"""gpt_fast::flash_attention_train (forward with lse and dropout) and gpt_fast::flash_attention_backward (CPU),
against gpt_fast.ops.reference in higher precision with the accuracy rule (tests/accuracy.py), on every CPU tier;
gradcheck of the kernels' own float64 path; the dropout mask's statistics; bad input."""

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast
from op_samples import padding_mask

from gpt_fast import ops
from gpt_fast.ops import cpu_isa, philox, reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("flash_attention_backward", "cpu"), reason="extension not built")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def inputs(B, T, H, D, dtype, mask_kind="none", seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3 * H * D, generator=g).to(dtype)  # (B, T, 3C)
    grad = torch.randn(B, T, H * D, generator=g).to(dtype)  # (B, T, C)
    return qkv, padding_mask(mask_kind, B, T, g), grad


def check_gradients(qkv, mask, grad, H, p=0.0, seed=0):
    """The kernels' forward (out, lse) and grad_qkv against the reference upcast, within PyTorch's error x 3."""
    dtype = qkv.dtype
    out, lse = ops.flash_attention_train(qkv, mask, H, p, seed)
    q_up, g_up = upcast(qkv, grad, dtype=dtype)
    out_ref, lse_ref = reference.flash_attention_train(q_up, mask, H, p, seed)
    out_same, lse_same = reference.flash_attention_train(qkv, mask, H, p, seed)
    assert_within_pytorch_error(out, out_ref, out_same)
    assert lse.dtype == torch.float32 and lse.shape == (qkv.shape[0], H, qkv.shape[1])
    assert_within_pytorch_error(lse, lse_ref.to(torch.float64), lse_same)
    grad_qkv = ops.flash_attention_backward(grad, qkv, out, lse, mask, H, p, seed)
    expected = reference.flash_attention_backward(g_up, q_up, out_ref, lse_ref, mask, H, p, seed)
    same = reference.flash_attention_backward(grad, qkv, out_same, lse_same, mask, H, p, seed)
    assert grad_qkv.dtype == dtype and grad_qkv.is_contiguous()
    assert_within_pytorch_error(grad_qkv, expected, same)
    return out, lse, grad_qkv


# A covering set over T (1, 7, 64, 65, 97, 130), D (3, 24, 64), H (1, 3, 12), masks and dropout.
CASES = [(1, 1, 1, 64, "none", 0.0), (2, 7, 3, 24, "left", 0.0), (1, 64, 12, 64, "none", 0.1),
         (2, 65, 3, 3, "random", 0.1), (3, 97, 1, 64, "right", 0.0), (2, 130, 3, 24, "left", 0.3),
         (1, 130, 12, 64, "random", 0.0), (2, 97, 12, 3, "none", 0.5)]


@pytest.mark.parametrize("B, T, H, D, mask_kind, p", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_gradients_match_reference(B, T, H, D, mask_kind, p, dtype, cpu_tier):
    qkv, mask, grad = inputs(B, T, H, D, dtype, mask_kind, seed=T + D)
    check_gradients(qkv, mask, grad, H, p, seed=1234 + T)


def test_fully_padded_rows_give_zero_gradient_and_minus_inf_lse(cpu_tier):
    B, T, H, D = 2, 70, 3, 24
    qkv, _, grad = inputs(B, T, H, D, torch.float32, seed=5)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0] = False  # a sequence of padding only
    mask[1, :5] = False  # left padding: queries 0..4 attend no key
    out, lse, grad_qkv = check_gradients(qkv, mask, grad, H, 0.1, seed=7)
    assert lse[0].eq(float("-inf")).all() and lse[1, :, :5].eq(float("-inf")).all() and lse[1, :, 5:].isfinite().all()
    assert out[0].eq(0).all() and grad_qkv[0].eq(0).all()
    C = H * D
    assert grad_qkv[1, :5, :C].eq(0).all()  # dq of the empty rows; their keys are padding: no dk, dv either
    assert grad_qkv[1, :5, C:].eq(0).all()


def test_non_contiguous_qkv_and_grad(cpu_tier):
    B, T, H, D = 2, 77, 3, 24
    g = torch.Generator().manual_seed(3)
    big = torch.randn(B + 1, T + 5, 3 * H * D + 32, generator=g)
    qkv = big[1:, 2:T + 2, 16:16 + 3 * H * D]  # (B, T, 3C) with the strides of a bigger tensor
    grad = torch.randn(B, T, 2 * H * D, generator=g)[..., ::2]  # (B, T, C), stride 2
    check_gradients(qkv, padding_mask("left", B, T, g), grad, H, 0.1, seed=11)


def test_gradcheck_float64():
    """The ops' own backward formula (the float64 scalar path) against numerical derivatives."""
    g = torch.Generator().manual_seed(4)
    for B, T, H, D, kind, p in [(1, 5, 2, 3, "none", 0.0), (2, 6, 1, 4, "left", 0.3), (1, 9, 2, 2, "random", 0.5)]:
        qkv = torch.randn(B, T, 3 * H * D, generator=g, dtype=torch.float64, requires_grad=True)
        mask = padding_mask(kind, B, T, g)
        assert torch.autograd.gradcheck(
            lambda x, mask=mask, H=H, p=p: ops.flash_attention_train(x, mask, H, p, 99)[0], (qkv,))


def test_float64_path_matches_reference():
    qkv, mask, grad = inputs(2, 37, 3, 5, torch.float64, "random", seed=6)
    out, lse = ops.flash_attention_train(qkv, mask, 3, 0.2, 5)
    out_ref, lse_ref = reference.flash_attention_train(qkv, mask, 3, 0.2, 5)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(lse, lse_ref)
    torch.testing.assert_close(ops.flash_attention_backward(grad, qkv, out, lse, mask, 3, 0.2, 5),
                               reference.flash_attention_backward(grad, qkv, out, lse, mask, 3, 0.2, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autograd_runs_the_backward_kernel(dtype, cpu_tier):
    qkv, mask, grad = inputs(2, 40, 3, 24, dtype, "left", seed=8)
    x = qkv.clone().requires_grad_()
    out, lse = ops.flash_attention_train(x, mask, 3, 0.1, 21)
    assert not lse.requires_grad
    out.backward(grad)
    direct = ops.flash_attention_backward(grad, qkv, out.detach(), lse, mask, 3, 0.1, 21)
    torch.testing.assert_close(x.grad, direct, rtol=0, atol=0)


def test_autograd_saves_its_tensors_for_backward():
    """register_backward saves qkv and both outputs with save_for_backward: saved-tensor hooks (activation
    checkpointing) see them, and changing qkv in place after the forward is an error, not a wrong gradient."""
    qkv, _, grad = inputs(1, 9, 2, 4, torch.float32, seed=9)
    x = qkv.clone().requires_grad_()
    y = x * 1.0
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        out, lse = ops.flash_attention_train(y, None, 2, 0.0, 1)
    assert [t.shape for t in packed] == [y.shape, out.shape, lse.shape]
    out, lse = ops.flash_attention_train(y, None, 2, 0.0, 1)
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward(grad)


def test_double_backward_uses_the_reference():
    qkv, _, grad = inputs(1, 9, 2, 4, torch.float64, seed=9)
    assert torch.autograd.gradgradcheck(lambda x: ops.flash_attention_train(x, None, 2, 0.0, 1)[0],
                                        (qkv.requires_grad_(),))


def test_deterministic(cpu_tier):
    qkv, mask, grad = inputs(2, 130, 3, 24, torch.float32, "random", seed=10)
    out, lse = ops.flash_attention_train(qkv, mask, 3, 0.1, 3)
    first = ops.flash_attention_backward(grad, qkv, out, lse, mask, 3, 0.1, 3)
    torch.testing.assert_close(ops.flash_attention_backward(grad, qkv, out, lse, mask, 3, 0.1, 3), first,
                               rtol=0, atol=0)


def test_no_dropout_matches_the_inference_op(cpu_tier, monkeypatch):
    qkv, mask, _ = inputs(2, 97, 3, 64, torch.bfloat16, "left", seed=12)
    out, _ = ops.flash_attention_train(qkv, mask, 3, 0.0, 0)
    if cpu_tier == "amx":  # the inference op's AMX engine (bf16 products on tiles) has no train twin: the train
        monkeypatch.setenv(cpu_isa.ENV, "avx512_bf16")  # kernel runs the fp32 engine, which is what it must match
    torch.testing.assert_close(out, torch.ops.gpt_fast.flash_attention(qkv, mask, 3), rtol=0, atol=0)


# --- dropout statistics ---
def _probabilities_mask(seed, B, H, T, p):
    """Which probabilities the kernel kept, read from the forward: v = identity columns (D = T) make out the
    probabilities themselves (one head's output row i = P[i, :] V = P[i, :])."""
    D = T
    qkv = torch.zeros(B, T, 3 * H * D)
    qkv[..., 2 * H * D:] = torch.eye(T).repeat(1, H)[None]  # v[b, j, h, :] = e_j
    out, _ = ops.flash_attention_train(qkv, None, H, p, seed)  # (B, T, H D): uniform causal probabilities, dropped
    return out.view(B, T, H, T).transpose(1, 2) != 0  # (B, H, T, T)


def test_dropout_mask_is_philox_and_keep_rate(cpu_tier):
    B, H, T, p = 2, 3, 100, 0.25
    kept = _probabilities_mask(1234567, B, H, T, p)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    expected = philox.keep_mask(1234567, (B, H, T, T), p) & causal
    assert torch.equal(kept, expected)
    rate = kept.sum().item() / (B * H * causal.sum().item())
    assert abs(rate - (1 - p)) < 0.01, rate


def test_dropout_same_mask_in_forward_and_backward(cpu_tier):
    """dV = (P Z)^T dO: with dO = e_i rows and v one-hot, the gradient of v shows which (i, j) the backward kept."""
    B, H, T, D, p, seed = 1, 2, 70, 70, 0.3, 42
    qkv = torch.zeros(B, T, 3 * H * D)
    qkv[..., 2 * H * D:] = torch.eye(T).repeat(1, H)[None]
    out, lse = ops.flash_attention_train(qkv, None, H, p, seed)
    forward_kept = out.view(B, T, H, T).transpose(1, 2) != 0  # (B, H, T, T)
    grad = torch.eye(T).repeat(1, H)[None]  # dO[i, h, :] = e_i
    grad_v = ops.flash_attention_backward(grad, qkv, out, lse, None, H, p, seed)[..., 2 * H * D:]
    # grad_v[j, h, d] = sum_i P Z[i, j] dO[i, h, d] = P Z[d, j]
    backward_kept = grad_v.view(B, T, H, T).permute(0, 2, 3, 1) != 0  # (B, H, i, j)
    assert torch.equal(forward_kept, backward_kept)


def test_dropout_reproducible_under_manual_seed_and_new_per_call(cpu_tier):
    qkv, _, _ = inputs(1, 50, 2, 16, torch.float32, seed=13)
    torch.manual_seed(5)
    a = ops.flash_attention_train(qkv, None, 2, 0.5)[0]
    b = ops.flash_attention_train(qkv, None, 2, 0.5)[0]
    torch.manual_seed(5)
    a2 = ops.flash_attention_train(qkv, None, 2, 0.5)[0]
    torch.testing.assert_close(a, a2, rtol=0, atol=0)
    assert not torch.equal(a, b)


# --- bad input ---
def test_bad_input_errors():
    qkv, _, grad = inputs(2, 8, 2, 4, torch.float32)
    out, lse = ops.flash_attention_train(qkv, None, 2, 0.0, 0)
    train, backward = torch.ops.gpt_fast.flash_attention_train, torch.ops.gpt_fast.flash_attention_backward
    with pytest.raises(RuntimeError, match="dropout_p must lie in"):
        train(qkv, None, 2, 1.0, 0)
    with pytest.raises(RuntimeError, match="dropout_p must lie in"):
        train(qkv, None, 2, -0.1, 0)
    with pytest.raises(RuntimeError, match="dropout_p must lie in"):
        backward(grad, qkv, out, lse, None, 2, float("nan"), 0)
    with pytest.raises(RuntimeError, match="qkv must have 3 dimensions"):
        train(qkv[0], None, 2, 0.0, 0)
    with pytest.raises(RuntimeError, match="3 \\* n_head \\* head_dim"):
        train(qkv, None, 5, 0.0, 0)
    with pytest.raises(RuntimeError, match="must be float32, bfloat16, float16 or float64"):
        train(qkv.to(torch.int32), None, 2, 0.0, 0)
    with pytest.raises(RuntimeError, match="head size"):
        train(torch.randn(1, 2, 3 * 129), None, 1, 0.0, 0)
    with pytest.raises(RuntimeError, match="key_padding_mask must have shape"):
        train(qkv, torch.ones(2, 7, dtype=torch.bool), 2, 0.0, 0)
    with pytest.raises(RuntimeError, match="lse must have shape"):
        backward(grad, qkv, out, lse[:, :1], None, 2, 0.0, 0)
    with pytest.raises(RuntimeError, match="lse must be float32"):
        backward(grad, qkv, out, lse.double(), None, 2, 0.0, 0)
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        backward(grad[:, :4], qkv, out, lse, None, 2, 0.0, 0)
    with pytest.raises(RuntimeError, match="out has dtype"):
        backward(grad, qkv, out.to(torch.bfloat16), lse, None, 2, 0.0, 0)
    with pytest.raises(RuntimeError, match="grad_out has dtype"):
        backward(grad.double(), qkv, out, lse, None, 2, 0.0, 0)


# --- the model ---
def test_training_with_dropout_runs_the_fused_kernels():
    """GPT-1 in train mode with attn_pdrop > 0 on the "fused" backend: the forward runs flash_attention_train (dropout
    in the kernel, not SDPA) and the backward flash_attention_backward; the loss falls over a few steps."""
    from dispatch_recorder import OpRecorder

    import gpt_fast

    config = gpt_fast.OpenAIGPTConfig(vocab_size=64, n_positions=24, n_embd=24, n_layer=2, n_head=3, attn_pdrop=0.1,
                                      resid_pdrop=0.1, embd_pdrop=0.1)
    model = gpt_fast.OpenAIGPTLMHeadModel(config, attn_implementation="fused").train()
    ids = torch.randint(0, 64, (3, 24), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(12):
        record = OpRecorder()
        with record:
            loss = model(ids, labels=ids).loss
            loss.backward()
        if step == 0:
            assert "gpt_fast.flash_attention_train.default" in record.called
            assert "gpt_fast.flash_attention_backward.default" in record.called
            assert not any("scaled_dot_product" in name for name in record.called), sorted(set(record.called))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_the_plan_decides_the_training_kernel_and_without_it_the_layer_falls_back(monkeypatch):
    """KernelPlan.attention_train says once per plan whether "fused" has flash_attention_train; the attention layer
    reads it and asks the kernel registry nothing per call. Without the kernel: dropout runs as "sdpa", and with
    gradients alone the inference kernel runs, its backward the eager reference's (same gradients)."""
    from dispatch_recorder import OpRecorder

    from gpt_fast.models.attention import backend_attention
    from gpt_fast.ops import _library
    from gpt_fast.ops.kernel_plan import clear_plans, plan_kernels

    cpu = torch.device("cpu")
    plan = plan_kernels("fused", cpu, torch.float32, dropout=True, grad=True)
    assert plan.attention == "fused" and plan.attention_train
    assert not plan_kernels("sdpa", cpu, torch.float32, grad=True).attention_train
    qkv, mask, grad = inputs(2, 20, 2, 8, torch.float32, "left", seed=15)

    def run(plan, forbid_lookups=False):
        x = qkv.clone().requires_grad_()
        record = OpRecorder()
        with record:
            with monkeypatch.context() as patch:
                if forbid_lookups:
                    patch.setattr(_library, "has_kernel", lambda *args: pytest.fail("has_kernel asked per call"))
                out = backend_attention(plan, x, mask.long(), 2)
            out.backward(grad)
        return x.grad, set(record.called)

    kernel_grad, called = run(plan, forbid_lookups=True)
    assert "gpt_fast.flash_attention_train.default" in called and "gpt_fast.flash_attention_backward.default" in called
    has_kernel = _library.has_kernel
    monkeypatch.setattr(_library, "has_kernel", lambda name, device: name != "flash_attention_train"
                        and has_kernel(name, device))
    clear_plans()
    try:
        assert plan_kernels("fused", cpu, torch.float32, dropout=True, grad=True).attention == "sdpa"
        without = plan_kernels("fused", cpu, torch.float32, grad=True)
        assert without.attention == "fused" and not without.attention_train
        fallback_grad, called = run(without)
    finally:
        clear_plans()
    assert "gpt_fast.flash_attention.default" in called
    assert not any("flash_attention_train" in name or "flash_attention_backward" in name for name in called)
    torch.testing.assert_close(fallback_grad, kernel_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_head", [0, -1, 5, 2**62, 2**63 - 1, -2**63, 3 * 2**61 + 1])
def test_extreme_n_head_is_a_clear_error(n_head):
    qkv, _, grad = inputs(1, 3, 2, 4, torch.float32)  # C = 8: only n_head 1, 2, 4, 8 divide it
    out, lse = ops.flash_attention_train(qkv, None, 2, 0.0, 0)
    with pytest.raises(RuntimeError, match="n_head|head size|overflows"):
        torch.ops.gpt_fast.flash_attention_train(qkv, None, n_head, 0.0, 0)
    with pytest.raises(RuntimeError, match="n_head|head size|overflows"):
        torch.ops.gpt_fast.flash_attention_backward(grad, qkv, out, lse, None, n_head, 0.0, 0)


@pytest.mark.parametrize("seed", [0, -1, -2**63, 2**63 - 1, 2**32, 2**32 - 1])
def test_extreme_seeds_match_the_oracle(seed, cpu_tier):
    """The seed is the Philox key as 64 bits (negative int64 values wrap): each gives the oracle's mask."""
    qkv, mask, grad = inputs(1, 20, 2, 8, torch.float32, "random", seed=14)
    check_gradients(qkv, mask, grad, 2, 0.5, seed=seed)
