"""gpt_fast::flash_attention (CPU) against gpt_fast.ops.reference.flash_attention."""

import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast
from hypothesis import given, settings
from hypothesis import strategies as st
from op_samples import padding_mask

from gpt_fast import ops
from gpt_fast.ops import reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("flash_attention", "cpu"), reason="extension not built")


def check(qkv, mask, n_head):
    dtype = qkv.dtype
    expected = reference.flash_attention(*upcast(qkv, dtype=dtype), mask, n_head)
    actual = ops.flash_attention(qkv, mask, n_head)
    assert_within_pytorch_error(actual, expected, reference.flash_attention(qkv, mask, n_head))
    return actual


# A covering set rather than the cross product: every T, B, H, D, dtype and mask kind appears.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fully_padded_rows_give_zeros(dtype, cpu_tier):
    g = torch.Generator().manual_seed(1)
    B, T, H, D = 2, 70, 3, 64
    qkv = torch.randn(B, T, 3 * H * D, generator=g).to(dtype)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0] = False        # a whole sequence of padding
    mask[1, :5] = False    # left padding: the first 5 queries see no key
    out = ops.flash_attention(qkv, mask, H)
    assert not out.isnan().any()
    torch.testing.assert_close(out[0], torch.zeros_like(out[0]), rtol=0, atol=0)
    torch.testing.assert_close(out[1, :5], torch.zeros_like(out[1, :5]), rtol=0, atol=0)
    assert out[1, 5:].abs().sum() > 0


def test_head_size_128_and_odd(cpu_tier):
    g = torch.Generator().manual_seed(2)
    check(torch.randn(2, 70, 3 * 2 * 128, generator=g), None, 2)
    check(torch.randn(2, 70, 3 * 3 * 5, generator=g), padding_mask("random", 2, 70, g), 3)


@pytest.mark.parametrize("dtype, D", [(torch.float32, 48), (torch.bfloat16, 48), (torch.bfloat16, 64)])
def test_non_contiguous_qkv(dtype, D, cpu_tier):
    g = torch.Generator().manual_seed(3)
    B, T, H = 2, 77, 3
    big = torch.randn(B + 1, T + 5, 3 * H * D + 32, generator=g).to(dtype)
    qkv = big[1:, 2:T + 2, 16:16 + 3 * H * D]  # (B, T, 3C) with strides of the bigger tensor
    assert not qkv.is_contiguous()
    check(qkv, padding_mask("left", B, T, g), H)
    torch.testing.assert_close(ops.flash_attention(qkv, None, H), ops.flash_attention(qkv.contiguous(), None, H),
                               rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 150), H=st.integers(1, 4),
       D=st.sampled_from([1, 8, 16, 24, 48, 64, 80, 128]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       mask_kind=st.sampled_from(["none", "left", "right", "random"]), seed=st.integers(0, 2**31 - 1))
def test_fuzz(B, T, H, D, dtype, mask_kind, seed):
    g = torch.Generator().manual_seed(seed)
    check(torch.randn(B, T, 3 * H * D, generator=g).to(dtype), padding_mask(mask_kind, B, T, g), H)


def _args(**overrides):
    args = dict(qkv=torch.randn(2, 5, 3 * 4 * 8), key_padding_mask=None, n_head=4)
    args.update(overrides)
    return args


@pytest.mark.parametrize("bad, message", [
    (dict(qkv=torch.randn(5, 96)), "qkv must have 3 dimensions"),
    (dict(qkv=torch.randn(2, 5, 96, dtype=torch.float64)), "qkv must be float32, bfloat16 or float16"),
    (dict(qkv=torch.randint(0, 3, (2, 5, 96))), "qkv must be float32, bfloat16 or float16"),
    (dict(qkv=torch.randn(2, 5, 95)), "qkv's last dimension"),
    (dict(n_head=5), "n_head"),
    (dict(n_head=0), "n_head"),
    (dict(qkv=torch.randn(2, 5, 3 * 129), n_head=1), "head size"),
    (dict(qkv=torch.randn(2, 96, 5).transpose(1, 2)), "qkv must be contiguous in its last dimension"),
    (dict(key_padding_mask=torch.ones(2, 6, dtype=torch.bool)), "key_padding_mask must have shape"),
    (dict(key_padding_mask=torch.ones(2, 5)), "key_padding_mask must be bool"),
    (dict(key_padding_mask=torch.ones(2, 5, 1, dtype=torch.bool)), "key_padding_mask must have 2 dimensions"),
    (dict(key_padding_mask=torch.ones(2, 5, dtype=torch.bool, device="meta")), "key_padding_mask must be on"),
], ids=["rank", "float64", "int", "not_3C", "n_head_divides", "n_head_zero", "D_over_128", "last_stride",
        "mask_shape", "mask_dtype", "mask_rank", "mask_device"])
def test_bad_input(bad, message):
    with pytest.raises(RuntimeError, match=message):
        ops.flash_attention(**_args(**bad))
