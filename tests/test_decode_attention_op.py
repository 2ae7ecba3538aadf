"""gpt_fast::decode_attention (CPU) against gpt_fast.ops.reference.decode_attention: output and cache writes."""

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_fast import ops
from gpt_fast.ops import reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("decode_attention", "cpu"), reason="extension not built")


def make_inputs(B, S, H, D, Tmax, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, S, 3 * H * D, generator=g).to(dtype)  # (B, S, 3C)
    k_cache = torch.randn(B, H, Tmax, D, generator=g).to(dtype)  # (B, H, Tmax, D)
    v_cache = torch.randn(B, H, Tmax, D, generator=g).to(dtype)
    return qkv, k_cache, v_cache


def check(qkv, k_cache, v_cache, lengths, n_head):
    """Runs the op on copies of the caches; compares output with the upcast reference and caches exactly."""
    dtype = qkv.dtype
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    same_dtype = reference.decode_attention(qkv, k_ref, v_ref, lengths, n_head)  # also PyTorch's cache update
    up_qkv, up_k, up_v = upcast(qkv, k_cache, v_cache, dtype=dtype)
    expected = reference.decode_attention(up_qkv, up_k, up_v, lengths, n_head)
    k_out, v_out = k_cache.clone(), v_cache.clone()
    actual = ops.decode_attention(qkv, k_out, v_out, lengths, n_head)
    assert_within_pytorch_error(actual, expected, same_dtype)
    torch.testing.assert_close(k_out, k_ref, rtol=0, atol=0)  # new keys at [len, len + S), the rest untouched
    torch.testing.assert_close(v_out, v_ref, rtol=0, atol=0)
    return actual


@pytest.mark.parametrize("threads", [1, 2])
def test_split_keys_merge(threads, cpu_tier):
    """One (batch, head): the keys are split into chunks whose partial softmax statistics are merged."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        qkv, k_cache, v_cache = make_inputs(1, 2, 1, 64, 2048, torch.float32, seed=5)
        check(qkv, k_cache, v_cache, torch.tensor([1500]), 1)
    finally:
        torch.set_num_threads(old)


def test_non_contiguous_inputs(cpu_tier):
    B, S, H, D, Tmax = 2, 3, 3, 48, 300
    g = torch.Generator().manual_seed(6)
    qkv = torch.randn(B, S + 2, 3 * H * D + 8, generator=g)[:, 1:S + 1, 8:]  # (B, S, 3C), strided
    k_cache = torch.randn(B, Tmax, H, D, generator=g).transpose(1, 2)  # (B, H, Tmax, D), strided
    v_cache = torch.randn(B, Tmax, H, D, generator=g).transpose(1, 2)
    check(qkv, k_cache, v_cache, torch.tensor([10, 200]), H)


def test_sequential_decode_matches_prefill(cpu_tier):
    """Decoding tokens one by one over the cache gives what causal attention gives on the whole sequence."""
    B, T, H, D = 2, 20, 3, 16
    qkv = torch.randn(B, T, 3 * H * D, generator=torch.Generator().manual_seed(7), dtype=torch.float64).float()
    k_cache, v_cache = torch.zeros(B, H, T, D), torch.zeros(B, H, T, D)
    outs = [ops.decode_attention(qkv[:, t:t + 1], k_cache, v_cache, torch.full((B,), t), H) for t in range(T)]
    expected = reference.flash_attention(qkv.double(), None, H)
    torch.testing.assert_close(torch.cat(outs, dim=1).double(), expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 4), S=st.integers(1, 4), H=st.integers(1, 4),
       D=st.sampled_from([1, 8, 16, 24, 48, 64, 80, 128]),
       extra=st.integers(0, 300), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       data=st.data())
def test_fuzz(B, S, H, D, extra, dtype, data):
    Tmax = S + extra
    lengths = data.draw(st.lists(st.integers(0, Tmax - S), min_size=B, max_size=B))
    qkv, k_cache, v_cache = make_inputs(B, S, H, D, Tmax, dtype, seed=data.draw(st.integers(0, 2**31 - 1)))
    check(qkv, k_cache, v_cache, torch.tensor(lengths), H)


def _args(**overrides):
    B, S, H, D, Tmax = 2, 1, 4, 8, 16
    args = dict(qkv=torch.randn(B, S, 3 * H * D), k_cache=torch.zeros(B, H, Tmax, D),
                v_cache=torch.zeros(B, H, Tmax, D),
                cache_lengths=torch.tensor([0, 5]), n_head=H)
    args.update(overrides)
    return args


@pytest.mark.parametrize("bad, error, message", [
    (dict(qkv=torch.randn(1, 96)), RuntimeError, "qkv must have 3 dimensions"),
    (dict(qkv=torch.randn(2, 1, 96, dtype=torch.float64)), RuntimeError, "qkv must be float32, bfloat16 or float16"),
    (dict(qkv=torch.randn(2, 1, 95)), RuntimeError, "qkv's last dimension"),
    (dict(n_head=5), RuntimeError, "n_head"),
    (dict(qkv=torch.randn(2, 1, 3 * 129), n_head=1, k_cache=torch.zeros(2, 1, 16, 129),
          v_cache=torch.zeros(2, 1, 16, 129)), RuntimeError, "head size"),
    (dict(qkv=torch.randn(2, 96, 2).transpose(1, 2)[:, :1]), RuntimeError,
     "qkv must be contiguous in its last dimension"),
    (dict(k_cache=torch.zeros(2, 4, 16)), RuntimeError, "k_cache must have 4 dimensions"),
    (dict(k_cache=torch.zeros(2, 4, 16, 9)), RuntimeError, "k_cache must have shape"),
    (dict(v_cache=torch.zeros(2, 3, 16, 8)), RuntimeError, "v_cache must have shape"),
    (dict(v_cache=torch.zeros(2, 4, 17, 8)), RuntimeError, "v_cache must have k_cache's shape"),
    (dict(k_cache=torch.zeros(2, 4, 16, 8, dtype=torch.bfloat16)), RuntimeError, "k_cache has dtype"),
    (dict(v_cache=torch.zeros(2, 4, 16, 8, dtype=torch.float16)), RuntimeError, "v_cache has dtype"),
    (dict(k_cache=torch.zeros(2, 4, 8, 16).transpose(2, 3)), RuntimeError, "k_cache must be contiguous in its last"),
    (dict(k_cache=torch.zeros(2, 4, 16, 8, device="meta")), RuntimeError, "k_cache must be on"),
    (dict(cache_lengths=torch.tensor([0, 16])), IndexError, r"cache_lengths\[1\] = 16 .* outside the cache"),
    (dict(cache_lengths=torch.tensor([-1, 0])), IndexError, r"cache_lengths\[0\] = -1 .* outside the cache"),
    (dict(cache_lengths=torch.tensor([0, 5], dtype=torch.int32)), RuntimeError, "cache_lengths must be int64"),
    (dict(cache_lengths=torch.tensor([0, 5, 6])), RuntimeError, "cache_lengths must have B = 2"),
    (dict(cache_lengths=torch.tensor([[0, 5]])), RuntimeError, "cache_lengths must have 1 dimensions"),
], ids=["qkv_rank", "qkv_dtype", "not_3C", "n_head_divides", "D_over_128", "qkv_last_stride", "cache_rank",
        "cache_shape", "v_cache_heads", "v_cache_tmax", "k_cache_dtype", "v_cache_dtype", "cache_last_stride",
        "cache_device", "position_past_end", "negative_length", "lengths_dtype", "lengths_size", "lengths_rank"])
def test_bad_input(bad, error, message):
    args = _args(**bad)
    before = args["k_cache"].clone() if args["k_cache"].device.type == "cpu" else None
    with pytest.raises(error, match=message):
        ops.decode_attention(**args)
    if before is not None:
        torch.testing.assert_close(args["k_cache"], before, rtol=0, atol=0)  # nothing written on error
