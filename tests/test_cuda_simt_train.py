"""The CUDA training attention kernels (csrc/cuda/flash_attention_train.cu, flash_attention_backward.cu and their
headers) run on CPU threads through the SIMT test layer (tests/simt/simt.h, harness tests/simt/run_train_kernels.cpp),
built with g++ under ThreadSanitizer and UBSan as tests/test_cuda_simt.py builds its harness. Checked against
gpt_fast.ops.reference with the accuracy criterion of tests/accuracy.py: out and lse of the forward, grad_qkv of the
backward fed the forward's own out and lse (as autograd passes them); the dropout mask bit for bit against
gpt_fast/ops/philox.py, the same in forward and backward; fully padded rows; a removed __syncthreads() caught."""

from __future__ import annotations

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast
from test_cuda_simt import gen, load, pytestmark, run, save, start_build  # noqa: F401  (pytestmark: marks and skips)

from gpt_fast.ops import philox, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


DROPPED_BARRIERS = (11, 13, 15)  # GF_DROP_SYNC values of test_layer_catches_a_missing_syncthreads


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The harness and its copies with one barrier removed, compiling side by side (test_cuda_simt.start_build)."""
    folder = tmp_path_factory.mktemp("simt_train")
    started = {"harness": start_build(folder / "run_train_kernels", source="run_train_kernels.cpp")}
    for barrier in DROPPED_BARRIERS:
        started[barrier] = start_build(folder / f"run_train_kernels_nosync{barrier}", f"-DGF_DROP_SYNC={barrier}",
                                       source="run_train_kernels.cpp")
    yield started
    for future in started.values():
        future.cancel()


@pytest.fixture(scope="module")
def harness(builds):
    return builds["harness"].result()


def padding(kind, B, T):
    """(B, T) bool, True = attend: "left" pads the start of row 0 (its first queries see no key) and, with B > 1,
    the whole of the last row (fully padded); "right" pads the end of row 0."""
    if kind == "none":
        return None
    mask = torch.ones(B, T, dtype=torch.bool)
    if kind == "left":
        mask[0, : max(1, T // 3)] = False
        if B > 1:
            mask[-1] = False
    else:
        mask[0, T - max(1, T // 4):] = False
    return mask


def forward(binary, folder, qkv, mask, H, p, seed):
    """The kernel's (out (B, T, C), lse (B, H, T))."""
    B, T, C3 = qkv.shape
    D = C3 // (3 * H)
    save(folder, qkv=qkv, **({"mask": mask} if mask is not None else {}))
    run(binary, folder, "flash_attention_train", qkv.dtype, B, T, H, D, int(mask is not None), p, seed % 2**64)
    return load(folder, "out", qkv.dtype, (B, T, H * D)), load(folder, "lse", torch.float32, (B, H, T))


def backward(binary, folder, grad, qkv, out, lse, mask, H, p, seed):
    B, T, C3 = qkv.shape
    save(folder, qkv=qkv, grad_out=grad, out=out, lse=lse, **({"mask": mask} if mask is not None else {}))
    run(binary, folder, "flash_attention_backward", qkv.dtype, B, T, H, C3 // (3 * H), int(mask is not None), p,
        seed % 2**64)
    return load(folder, "grad_qkv", qkv.dtype, (B, T, C3))


# T 1, 7, 33 (two query tiles of the dK/dV pass), 65 (three key tiles); D 8, 64, 24 and 80 (padded to 128: the
# two-rows-per-warp layout of the backward); H 1-3; padding; p 0 and 0.2; seeds past 2^63.
CASES = [(1, 1, 1, 64, "none", 0.0, 0), (2, 7, 3, 8, "left", 0.2, 2**63 + 5), (1, 33, 2, 64, "right", 0.2, 7),
         (2, 33, 1, 80, "left", 0.0, 0), (1, 65, 1, 8, "none", 0.2, -3), (1, 65, 2, 24, "left", 0.2, 11)]


@pytest.mark.parametrize("B, T, H, D, kind, p, seed", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_forward_and_backward_match_reference(harness, tmp_path, dtype, B, T, H, D, kind, p, seed):
    qkv = gen(B, T, 3 * H * D, dtype=dtype, seed=T + D)
    grad = gen(B, T, H * D, dtype=dtype, seed=T + D + 1)
    mask = padding(kind, B, T)
    out, lse = forward(harness, tmp_path, qkv, mask, H, p, seed)
    q_up, g_up = upcast(qkv, grad, dtype=dtype)
    out_ref, lse_ref = reference.flash_attention_train(q_up, mask, H, p, seed)
    out_same, lse_same = reference.flash_attention_train(qkv, mask, H, p, seed)
    assert_within_pytorch_error(out, out_ref, out_same)
    assert_within_pytorch_error(lse, lse_ref.to(torch.float64), lse_same)
    if mask is not None:  # rows with no key to attend: zeros and lse -inf
        empty = ~(mask[:, None, :].expand(B, T, T).tril().any(-1))  # (B, T)
        assert torch.equal(out[empty], torch.zeros_like(out[empty]))
        assert (lse.transpose(1, 2)[empty] == float("-inf")).all()
    grad_qkv = backward(harness, tmp_path, grad, qkv, out, lse, mask, H, p, seed)
    expected = reference.flash_attention_backward(g_up, q_up, out_ref, lse_ref, mask, H, p, seed)
    same = reference.flash_attention_backward(grad, qkv, out_same, lse_same, mask, H, p, seed)
    assert_within_pytorch_error(grad_qkv, expected, same)


def test_dropout_mask_is_philox_in_forward_and_backward(harness, tmp_path):
    """q = k = 0 makes the probabilities uniform over the causal window and v = identity columns (D = T) makes out
    the dropped probabilities themselves: the kept set must be gpt_fast/ops/philox.py's mask, bit for bit. With
    dO = identity rows, grad_v[j, d] = (P Z)[d, j] shows which elements the backward kept: the same ones."""
    B, H, T, p, seed = 1, 2, 40, 0.2, 2**40 + 17
    D = T
    qkv = torch.zeros(B, T, 3 * H * D)
    qkv[..., 2 * H * D:] = torch.eye(T).repeat(1, H)[None]  # v[b, j, h, :] = e_j
    out, lse = forward(harness, tmp_path, qkv, None, H, p, seed)
    kept = out.view(B, T, H, T).transpose(1, 2) != 0  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    assert torch.equal(kept, philox.keep_mask(seed, (B, H, T, T), p) & causal)
    rate = kept.sum().item() / (B * H * causal.sum().item())
    assert abs(rate - (1 - p)) < 0.05, rate
    grad = torch.eye(T).repeat(1, H)[None]  # dO[i, h, :] = e_i
    grad_v = backward(harness, tmp_path, grad, qkv, out, lse, None, H, p, seed)[..., 2 * H * D:]
    assert torch.equal(grad_v.view(B, T, H, T).permute(0, 2, 3, 1) != 0, kept)  # (B, H, i, j)


def test_one_key_rows_give_exactly_zero_score_gradient(harness, tmp_path):
    """T = 1: P = 1 exactly (the backward recomputes the forward's score and lse bit for bit), dP = Delta, so dQ and
    dK are exact zeros, as PyTorch's softmax backward gives; dV = dO."""
    qkv = gen(3, 1, 3 * 2 * 40, dtype=torch.float32, seed=3)
    grad = gen(3, 1, 2 * 40, dtype=torch.float32, seed=4)
    out, lse = forward(harness, tmp_path, qkv, None, 2, 0.0, 0)
    grad_qkv = backward(harness, tmp_path, grad, qkv, out, lse, None, 2, 0.0, 0)
    assert torch.equal(grad_qkv[..., :160], torch.zeros(3, 1, 160))
    assert torch.equal(grad_qkv[..., 160:], grad)


@pytest.mark.parametrize("barrier, op", [(11, "flash_attention_train"), (13, "flash_attention_backward"),
                                         (15, "flash_attention_backward")])
def test_layer_catches_a_missing_syncthreads(builds, tmp_path, barrier, op):
    """The training kernels built with one barrier removed (GF_DROP_SYNC: 11 the forward's tile landed, 13 the
    dK/dV pass's query tile landed, 15 the dQ pass's key tile landed): ThreadSanitizer reports the race, or the
    result is wrong."""
    broken = builds[barrier].result()
    B, T, H, D, dtype = 1, 40, 1, 64, torch.bfloat16
    qkv, grad = gen(B, T, 3 * H * D, dtype=dtype, seed=12), gen(B, T, H * D, dtype=dtype, seed=13)
    out_ref, lse_ref = reference.flash_attention_train(qkv.double(), None, H, 0.0, 0)
    save(tmp_path, qkv=qkv, grad_out=grad, out=out_ref.to(dtype), lse=lse_ref)
    res = run(broken, tmp_path, op, dtype, B, T, H, D, 0, 0.0, 0, check=False)
    if res.returncode != 0:
        assert "ThreadSanitizer: data race" in res.stderr, res.stderr[-3000:]
        return
    if op == "flash_attention_train":
        actual = load(tmp_path, "out", dtype, (B, T, H * D))
        expected, same = out_ref, reference.flash_attention_train(qkv, None, H, 0.0, 0)[0]
    else:
        actual = load(tmp_path, "grad_qkv", dtype, (B, T, 3 * H * D))
        expected = reference.flash_attention_backward(grad.double(), qkv.double(), None, None, None, H, 0.0, 0)
        same = reference.flash_attention_backward(grad, qkv, None, None, None, H, 0.0, 0)
    with pytest.raises(AssertionError):
        assert_within_pytorch_error(actual, expected, same)
