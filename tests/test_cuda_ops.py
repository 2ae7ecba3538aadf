"""The four gpt_fast ops on device "cuda" against gpt_fast.reference (accuracy criterion of tests/accuracy.py),
torch.library.opcheck, and bad input. Needs a CUDA GPU and the extension built with CUDA
(`GPT_FAST_CUDA=1 python setup.py build_ext --inplace`); skipped cleanly otherwise."""

from __future__ import annotations

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast

import gpt_fast.ops  # noqa: F401  (loads the extension and registers the fake kernels)
from gpt_fast.ops import has_kernel, reference

OPS = ["add_layernorm", "bias_gelu", "flash_attention", "decode_attention"]
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not all(has_kernel(op, "cuda") for op in OPS), reason="extension built without CUDA"),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DEV = "cuda"
gpt_ops = torch.ops.gpt_fast


def gen(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEV)


def check(fn, inputs, dtype, actual):
    assert_within_pytorch_error(actual, fn(*upcast(*inputs, dtype=dtype)), fn(*inputs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, C", [(1, 768), (7, 48), (97, 80), (3, 1), (5, 3000), (513, 768)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_add_layernorm(dtype, rows, C, with_bias):
    x, res, bias, b = (gen(rows, C, dtype=dtype, seed=i) for i in range(4))
    bias, b = bias[0], b[0]
    w = 1 + 0.1 * gen(C, dtype=dtype, seed=5)
    bias = bias if with_bias else None
    def fn(*a):
        return reference.add_layernorm(*a, 1e-5)
    check(fn, [x, res, bias, w, b], dtype, gpt_ops.add_layernorm(x, res, bias, w, b, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3072), (3, 7, 3072), (97, 50), (1, 1), (513, 8)])
def test_bias_gelu(dtype, shape):
    x, bias = 3 * gen(*shape, dtype=dtype, seed=1), gen(shape[-1], dtype=dtype, seed=2)
    check(reference.bias_gelu, [x, bias], dtype, gpt_ops.bias_gelu(x, bias))


def padding_mask(B, T):
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, : T // 3] = False  # left padding: the first queries of row 0 see no key
    if B > 1:
        mask[-1, T - T // 4 :] = False  # right padding
    return mask.to(DEV)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 7, 97, 511, 512, 513])
@pytest.mark.parametrize("B, H, D", [(1, 12, 64), (3, 3, 48), (3, 3, 80), (1, 2, 128)])
@pytest.mark.parametrize("masked", [False, True])
def test_flash_attention(dtype, T, B, H, D, masked):
    qkv = gen(B, T, 3 * H * D, dtype=dtype, seed=T)
    mask = padding_mask(B, T) if masked else None
    def fn(q, m):
        return reference.flash_attention(q, m, H)
    out = gpt_ops.flash_attention(qkv, mask, H)
    check(fn, [qkv, mask], dtype, out)
    if masked and T >= 3:
        assert torch.equal(out[0, : T // 3], torch.zeros_like(out[0, : T // 3]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, S, H, D, Tmax, lengths", [
    (1, 1, 12, 64, 512, [0]),
    (3, 1, 3, 48, 513, [0, 200, 512]),      # splits over the cache (B x H far below the SM count)
    (3, 7, 12, 80, 97, [0, 45, 90]),
    (2, 1, 12, 64, 512, [511, 97]),
    (64, 1, 12, 64, 512, [i * 7 for i in range(64)]),  # enough heads for one split
])
def test_decode_attention(dtype, B, S, H, D, Tmax, lengths):
    qkv = gen(B, S, 3 * H * D, dtype=dtype, seed=1)
    k, v = gen(B, H, Tmax, D, dtype=dtype, seed=2), gen(B, H, Tmax, D, dtype=dtype, seed=3)
    lens = torch.tensor(lengths, dtype=torch.int64, device=DEV)
    k_ref, v_ref, k_out, v_out = k.clone(), v.clone(), k.clone(), v.clone()
    out = gpt_ops.decode_attention(qkv, k_out, v_out, lens, H)
    reference.decode_attention(qkv, k_ref, v_ref, lens, H)
    assert torch.equal(k_out, k_ref) and torch.equal(v_out, v_ref)
    def fn(q, kc, vc):
        return reference.decode_attention(q, kc.clone(), vc.clone(), lens, H)
    check(fn, [qkv, k, v], dtype, out)


def test_decode_then_prefill_agree():
    """Decoding token by token through the cache gives causal attention over the whole prompt."""
    B, T, H, D = 2, 33, 12, 64
    qkv = gen(B, T, 3 * H * D, dtype=torch.float32, seed=4)
    k, v = (torch.zeros(B, H, 64, D, device=DEV) for _ in range(2))
    rows = [gpt_ops.decode_attention(qkv[:, t : t + 1], k, v, torch.full((B,), t, device=DEV), H) for t in range(T)]
    check(lambda q: reference.flash_attention(q, None, H), [qkv], torch.float32, torch.cat(rows, 1))


def test_decode_attention_in_a_cuda_graph():
    """Captured in a CUDA graph (where the binding cannot check lengths on the host) and replayed, decode
    attention gives what it gives eagerly."""
    B, H, D, Tmax = 2, 12, 64, 128
    qkv = gen(B, 1, 3 * H * D, dtype=torch.bfloat16, seed=5)
    k, v = gen(B, H, Tmax, D, dtype=torch.bfloat16, seed=6), gen(B, H, Tmax, D, dtype=torch.bfloat16, seed=7)
    lens = torch.tensor([3, 90], device=DEV)
    k_eager, v_eager = k.clone(), v.clone()
    expected = gpt_ops.decode_attention(qkv, k_eager, v_eager, lens, H)
    gpt_ops.decode_attention(qkv, k.clone(), v.clone(), lens, H)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gpt_ops.decode_attention(qkv, k, v, lens, H)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected) and torch.equal(k, k_eager) and torch.equal(v, v_eager)


@pytest.mark.parametrize("layout", ["strided", "misaligned"])
def test_flash_attention_noncontiguous_and_misaligned_qkv(layout):
    B, T, H, D = 2, 33, 3, 64
    if layout == "strided":  # the first 3C columns of a wider tensor
        qkv = gen(B, T, 4 * H * D, dtype=torch.bfloat16, seed=8)[..., : 3 * H * D]
    else:  # contiguous, but 2 bytes past a 16-byte boundary
        qkv = gen(B * T * 3 * H * D + 8, dtype=torch.bfloat16, seed=8)[1 : 1 + B * T * 3 * H * D].view(B, T, -1)
    def fn(q):
        return reference.flash_attention(q, None, H)
    check(fn, [qkv], torch.bfloat16, gpt_ops.flash_attention(qkv, None, H))


def test_opcheck():
    x = gen(3, 48, dtype=torch.bfloat16, seed=1)
    w = gen(48, dtype=torch.bfloat16, seed=2)
    torch.library.opcheck(gpt_ops.add_layernorm, (x, x.clone(), w, w.clone(), w.clone(), 1e-5))
    torch.library.opcheck(gpt_ops.bias_gelu, (x, w))
    qkv = gen(2, 9, 3 * 2 * 16, dtype=torch.bfloat16, seed=3)
    torch.library.opcheck(gpt_ops.flash_attention, (qkv, torch.ones(2, 9, dtype=torch.bool, device=DEV), 2))
    k, v = gen(2, 2, 16, 16, dtype=torch.bfloat16, seed=4), gen(2, 2, 16, 16, dtype=torch.bfloat16, seed=5)
    lens = torch.tensor([0, 6], device=DEV)
    torch.library.opcheck(gpt_ops.decode_attention, (qkv[:, :1], k, v, lens, 2))


def qkv_args():
    return gen(2, 9, 3 * 2 * 16, dtype=torch.float32, seed=7)


@pytest.mark.parametrize("call, message", [
    (lambda: gpt_ops.flash_attention(qkv_args()[0], None, 2), "qkv must have 3 dimensions"),
    (lambda: gpt_ops.flash_attention(qkv_args().double(), None, 2), "qkv must be float32"),
    (lambda: gpt_ops.flash_attention(qkv_args(), None, 5), "must be 3 \\* n_head \\* head_dim"),
    (lambda: gpt_ops.flash_attention(gen(1, 4, 3 * 2 * 12, dtype=torch.float32, seed=1), None, 2), "multiple of 8"),
    (lambda: gpt_ops.flash_attention(qkv_args(), torch.ones(2, 8, dtype=torch.bool, device=DEV), 2),
     "key_padding_mask must have shape"),
    (lambda: gpt_ops.flash_attention(qkv_args(), torch.ones(2, 9, dtype=torch.bool), 2), "key_padding_mask is on"),
    (lambda: gpt_ops.flash_attention(qkv_args(), torch.ones(2, 9, device=DEV), 2), "key_padding_mask must be bool"),
    (lambda: gpt_ops.flash_attention(torch.zeros(1, 1, 3 * 8 * 65536, device=DEV), None, 65536), "at most 65535"),
    (lambda: gpt_ops.bias_gelu(qkv_args(), torch.zeros(5, device=DEV)), "bias must have 96"),
    (lambda: gpt_ops.add_layernorm(*(torch.zeros(2, 8, device=DEV),) * 2, None, torch.zeros(8, device=DEV),
                                   torch.zeros(8), 1e-5), "ln_bias is on"),
])
def test_bad_input(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def decode_args(lengths, Tmax=16, cache_dtype=torch.float32, cache_shape=None):
    qkv = qkv_args()[:, :2]  # (2, 2, 96): S = 2, H = 2, D = 16
    shape = cache_shape or (2, 2, Tmax, 16)
    k = torch.zeros(shape, dtype=cache_dtype, device=DEV)
    return qkv, k, k.clone(), torch.tensor(lengths, device=DEV), 2


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(lengths=[0, 15]), IndexError, "fall outside the cache"),
    (dict(lengths=[-1, 0]), IndexError, "fall outside the cache"),
    (dict(lengths=[0, 0], cache_dtype=torch.float16), RuntimeError, "k_cache has dtype"),
    (dict(lengths=[0, 0], cache_shape=(2, 3, 16, 16)), RuntimeError, "k_cache must have shape"),
])
def test_decode_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        gpt_ops.decode_attention(*decode_args(**kwargs))


def test_decode_bad_lengths_dtype():
    qkv, k, v, _, H = decode_args([0, 0])
    with pytest.raises(RuntimeError, match="cache_lengths must be int64"):
        gpt_ops.decode_attention(qkv, k, v, torch.tensor([0, 0], dtype=torch.int32, device=DEV), H)
