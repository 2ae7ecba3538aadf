"""The gpt_fast ops with CUDA kernels (forward and backward), on device "cuda", over the sample_inputs the CPU tests
use, against gpt_fast.ops.reference (accuracy criterion of tests/accuracy.py),
torch.library.opcheck, and bad input. Needs a CUDA GPU and the extension built with CUDA
(`GPT_FAST_CUDA=1 python setup.py build_ext --inplace`); skipped cleanly otherwise."""

from __future__ import annotations

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast
from op_samples import check_sample, op_arguments, sample_inputs

import gpt_fast.ops  # noqa: F401  (loads the extension and registers the fake kernels)
from gpt_fast.ops import has_kernel, reference

OPS = ["add_layernorm", "bias_gelu", "flash_attention", "decode_attention", "bias_gelu_backward",
       "add_layernorm_backward", "linear_quantized", "pack_quantized_weight", "flash_attention_train",
       "flash_attention_backward"]
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


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_matches_reference(op, dtype):
    """The op's sample_inputs (tests/op_samples.py, shared with the CPU tests) on the GPU."""
    for sample in sample_inputs(op, dtype, DEV):
        check_sample(op, sample)


def padding_mask(B, T):
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, : T // 3] = False  # left padding: the first queries of row 0 see no key
    if B > 1:
        mask[-1, T - T // 4 :] = False  # right padding
    return mask.to(DEV)


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


@pytest.mark.parametrize("op", OPS)
def test_opcheck(op):
    for sample in sample_inputs(op, torch.bfloat16, DEV)[:3]:
        torch.library.opcheck(getattr(gpt_ops, op), op_arguments(op, sample))


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
    (lambda: gpt_ops.bias_gelu_backward(qkv_args(), qkv_args()[:1], torch.zeros(96, device=DEV)), "grad_out shape"),
    (lambda: gpt_ops.bias_gelu_backward(qkv_args().double(), qkv_args().double(), torch.zeros(96, device=DEV).double()),
     "x must be float32"),
    (lambda: gpt_ops.add_layernorm_backward(torch.zeros(2, 7, device=DEV), *(torch.zeros(2, 8, device=DEV),) * 2, None,
                                            torch.zeros(8, device=DEV), 1e-5), "grad_out shape"),
    (lambda: gpt_ops.add_layernorm_backward(*(torch.zeros(2, 8, device=DEV),) * 3, None, torch.zeros(8), 1e-5),
     "weight is on"),
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


@pytest.mark.parametrize("lengths", [[0, 15], [-1, 0], [2**63 - 1, 3], [-(2**63), 2**32 + 1]])
def test_decode_out_of_range_rows_are_nan(lengths):
    """The binding never reads cache_lengths on the host (no sync per decode step): a row whose new positions
    [len, len + S) fall outside the cache (S = 2, Tmax = 16) gets NaN outputs and no cache write; others are
    computed as usual."""
    qkv, k, v, lens, H = decode_args(lengths)
    k.normal_(), v.normal_()
    k0, v0 = k.clone(), v.clone()
    out = gpt_ops.decode_attention(qkv, k, v, lens, H)
    bad = torch.tensor([not 0 <= n <= 14 for n in lengths], device=DEV)
    assert out[bad].isnan().all()
    assert torch.equal(k[bad], k0[bad]) and torch.equal(v[bad], v0[bad])
    if (~bad).any():
        k_ref, v_ref = k0[~bad].clone(), v0[~bad].clone()
        expected = reference.decode_attention(qkv[~bad], k_ref, v_ref, lens[~bad], H)
        torch.testing.assert_close(out[~bad], expected)
        assert torch.equal(k[~bad], k_ref) and torch.equal(v[~bad], v_ref)


@pytest.mark.parametrize("kwargs, error, message", [
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


def quantized_layer(bits, G, N=40, K=64, seed=30):
    from op_samples import _quantized_weight

    q, s, z = _quantized_weight(seed, K, N, bits, G, "cpu")
    return q, s, z


@pytest.mark.parametrize("bits, G, x_bits", [(8, 0, 0), (4, 32, 0), (4, 32, 8), (8, 32, 8)])
def test_quantized_pack_is_the_cpu_bytes_and_runs_in_a_cuda_graph(bits, G, x_bits):
    """The CUDA pack gives the CPU pack's bytes (one layout); linear_quantized captured in a CUDA graph (no host
    sync in its binding, x_bits=8's ATen rounding included) replays to the eager result, which matches the CPU
    kernel's within fp32 rounding."""
    q, s, z = quantized_layer(bits, G)
    cpu_packed = gpt_ops.pack_quantized_weight(q, s, z, bits, G)
    packed = gpt_ops.pack_quantized_weight(q.to(DEV), s.to(DEV), None if z is None else z.to(DEV), bits, G)
    assert torch.equal(packed.cpu(), cpu_packed)
    x = gen(3, 64, dtype=torch.float32, seed=31)
    eager = gpt_ops.linear_quantized(x, packed, 40, bits, G, None, None, True, x_bits)
    torch.testing.assert_close(eager.cpu(), gpt_ops.linear_quantized(x.cpu(), cpu_packed, 40, bits, G, None, None,
                                                                     True, x_bits), rtol=1e-5, atol=1e-5)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gpt_ops.linear_quantized(x, packed, 40, bits, G, None, None, True, x_bits)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


def test_quantized_bad_input():
    q, s, z = quantized_layer(4, 32)
    packed = gpt_ops.pack_quantized_weight(q.to(DEV), s.to(DEV), z.to(DEV), 4, 32)
    x = gen(2, 64, dtype=torch.float32, seed=32)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        gpt_ops.linear_quantized(x, packed, 40, 3, 32, None, None, False)
    with pytest.raises(ValueError, match="packed has shape"):
        gpt_ops.linear_quantized(x, packed, 40, 4, 64, None, None, False)
    with pytest.raises(ValueError, match="packed has shape"):
        gpt_ops.linear_quantized(x, packed, 80, 4, 32, None, None, False)
    with pytest.raises(ValueError, match="packed is on"):
        gpt_ops.linear_quantized(x, packed.cpu(), 40, 4, 32, None, None, False)
