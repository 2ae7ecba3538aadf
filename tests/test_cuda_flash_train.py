"""The CUDA training attention kernels (gpt_fast::flash_attention_train and flash_attention_backward on "cuda"),
beyond the shared sample checks of tests/test_cuda_ops.py: gradients through autograd against the reference's in
higher precision, the dropout mask against gpt_fast/ops/philox.py (and the CPU kernel's) with its keep rate, the
same mask in forward and backward, determinism, the model's train-mode plan, and bad input. Needs a CUDA GPU and the
extension built with CUDA; skipped cleanly otherwise."""

from __future__ import annotations

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast
from op_samples import padding_mask

from gpt_fast import ops
from gpt_fast.ops import has_kernel, philox, reference
from gpt_fast.ops.kernel_plan import plan_kernels

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not all(has_kernel(op, "cuda") for op in ("flash_attention_train", "flash_attention_backward")),
                       reason="extension built without CUDA"),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DEV = "cuda"


def inputs(B, T, H, D, dtype, kind, seed):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3 * H * D, generator=g).to(dtype)  # (B, T, 3C)
    grad = torch.randn(B, T, H * D, generator=g).to(dtype)  # (B, T, C)
    mask = padding_mask(kind, B, T, g)
    return qkv.to(DEV), None if mask is None else mask.to(DEV), grad.to(DEV)


@pytest.mark.parametrize("B, T, H, D, kind, p", [(2, 1, 3, 64, "none", 0.0), (3, 97, 12, 64, "left", 0.1),
                                                 (2, 200, 3, 80, "random", 0.2), (1, 513, 4, 24, "right", 0.0),
                                                 (2, 130, 2, 3, "left", 0.5)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_autograd_gradients_match_reference(dtype, B, T, H, D, kind, p):
    """out through the op's autograd (the CUDA backward kernel) against the reference's autograd, upcast."""
    qkv, mask, grad = inputs(B, T, H, D, dtype, kind, seed=T + D)
    seed = 77 + T
    x = qkv.clone().requires_grad_(True)
    out, lse = ops.flash_attention_train(x, mask, H, p, seed)
    out.backward(grad)
    q_up, g_up = upcast(qkv, grad, dtype=dtype)
    out_ref, lse_ref = reference.flash_attention_train(q_up, mask, H, p, seed)
    out_same, lse_same = reference.flash_attention_train(qkv, mask, H, p, seed)
    assert_within_pytorch_error(out.detach(), out_ref, out_same)
    assert_within_pytorch_error(lse, lse_ref.double(), lse_same)
    expected = reference.flash_attention_backward(g_up, q_up, None, None, mask, H, p, seed)
    same = reference.flash_attention_backward(grad, qkv, None, None, mask, H, p, seed)
    assert x.grad.dtype == dtype
    assert_within_pytorch_error(x.grad, expected, same)


def test_dropout_mask_is_philox_the_cpu_kernels_and_the_same_in_backward():
    B, H, T, p, seed = 2, 3, 100, 0.25, -12345  # a negative int64: the uint64 2^64 - 12345
    D = T
    qkv = torch.zeros(B, T, 3 * H * D, device=DEV)
    qkv[..., 2 * H * D:] = torch.eye(T, device=DEV).repeat(1, H)[None]  # v[b, j, h, :] = e_j: out = P Z
    out, lse = ops.flash_attention_train(qkv, None, H, p, seed)
    kept = out.view(B, T, H, T).transpose(1, 2) != 0  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=DEV).tril()
    assert torch.equal(kept, philox.keep_mask(seed, (B, H, T, T), p, device=DEV) & causal)
    cpu_out, _ = ops.flash_attention_train(qkv.cpu(), None, H, p, seed)
    assert torch.equal(kept.cpu(), cpu_out.view(B, T, H, T).transpose(1, 2) != 0)
    rate = kept.sum().item() / (B * H * causal.sum().item())
    assert abs(rate - (1 - p)) < 0.01, rate
    grad = torch.eye(T, device=DEV).repeat(1, H)[None].expand(B, -1, -1)  # dO[i, h, :] = e_i
    grad_v = ops.flash_attention_backward(grad, qkv, out, lse, None, H, p, seed)[..., 2 * H * D:]
    assert torch.equal(grad_v.view(B, T, H, T).permute(0, 2, 3, 1) != 0, kept)  # (B, H, i, j)


def test_dropout_scales_kept_probabilities():
    """E[out] = the undropped output: the mean over many seeds approaches it (kept values scaled by 1 / (1 - p))."""
    qkv, _, _ = inputs(1, 16, 1, 32, torch.float32, "none", seed=3)
    clean, _ = ops.flash_attention_train(qkv, None, 1, 0.0, 0)
    mean = torch.stack([ops.flash_attention_train(qkv, None, 1, 0.3, s)[0] for s in range(2000)]).mean(0)
    assert (mean - clean).abs().max().item() < 0.1


def test_backward_is_deterministic():
    qkv, mask, grad = inputs(2, 300, 4, 64, torch.bfloat16, "random", seed=9)
    out, lse = ops.flash_attention_train(qkv, mask, 4, 0.1, 5)
    first = ops.flash_attention_backward(grad, qkv, out, lse, mask, 4, 0.1, 5)
    for _ in range(3):
        assert torch.equal(ops.flash_attention_backward(grad, qkv, out, lse, mask, 4, 0.1, 5), first)


def test_train_mode_with_dropout_keeps_the_fused_attention():
    for dtype in DTYPES:
        plan = plan_kernels(None, torch.device(DEV), dtype, dropout=True, grad=True)
        assert plan.attention == "fused", dtype


def train(*args):
    return torch.ops.gpt_fast.flash_attention_train(*args)


def backward(*args):
    return torch.ops.gpt_fast.flash_attention_backward(*args)


@pytest.mark.parametrize("call, message", [
    (lambda q: train(q.double(), None, 2, 0.0, 0), "qkv must be float32"),
    (lambda q: train(q, None, 2, 1.0, 0), "dropout_p must lie in"),
    (lambda q: train(q, torch.ones(2, 9, dtype=torch.bool), 2, 0.0, 0), "key_padding_mask is on"),
    (lambda q: train(torch.zeros(1, 1, 3 * 65536, device=DEV), None, 65536, 0.0, 0), "at most 65535"),
    (lambda q: backward(q[..., :64], q, q[..., :32], torch.zeros(2, 2, 9, device=DEV), None, 2, 0.0, 0),
     "grad_out must have shape"),
    (lambda q: backward(q[..., :32], q, q[..., :32], torch.zeros(2, 2, 9), None, 2, 0.0, 0), "lse is on"),
])
def test_bad_input(call, message):
    qkv = torch.randn(2, 9, 3 * 2 * 16, device=DEV)
    with pytest.raises(RuntimeError, match=message):
        call(qkv)
