"""Attention with a NaN or infinity in q or k, and padding masks that are not 0/1.

The fused backend's kernel drops NaN scores in its online softmax; gpt_fast.ops.flash_attention marks the affected
rows NaN after it (ops/flash_attention.py: propagate_nonfinite), so a query row is NaN when its query, or a key
it attends, is not finite, as PyTorch's attention math gives. Compared here with the eager reference, PyTorch's
SDPA and transformers. Masks: transformers multiplies by the mask, so only 0/1 values are accepted.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS, DOUBLE, HEADS, gpt_fast_class, hf_model, random_ids, shape_for

from gpt_fast import ops
from gpt_fast.models.attention import eager_attention, sdpa_attention
from gpt_fast.ops import reference
from gpt_fast.ops.layout import merge_heads, split_qkv

needs_kernel = pytest.mark.skipif(not ops.has_kernel("flash_attention", "cpu"), reason="no CPU flash_attention")
B, T, H, D = 2, 9, 3, 8
C = H * D
PART = {"q": 0, "k": C}


def broken_qkv(part, position, value, head=1, dtype=torch.float32, seed=0):
    qkv = torch.randn(B, T, 3 * C, generator=torch.Generator().manual_seed(seed)).to(dtype)
    qkv[0, position, PART[part] + head * D + 2] = value  # row 0, one element of one head
    return qkv


def nan_rows(out):
    """(B, T, H) bool: which (row, position, head) outputs hold a NaN."""
    return out.view(B, T, H, D).isnan().any(dim=-1)


def expected_rows(part, position, head=1, mask=None):
    """The rule: a bad query poisons its own row; a bad key poisons every later row that attends it."""
    rows = torch.zeros(B, T, H, dtype=torch.bool)
    if part == "q":
        rows[0, position, head] = True
    elif mask is None or mask[0, position]:
        rows[0, position:, head] = True
    return rows


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("part, position", [("q", 0), ("q", 4), ("k", 0), ("k", 4), ("k", T - 1)])
def test_fused_rows_with_a_bad_query_or_key_are_nan(part, position, value, dtype):
    qkv = broken_qkv(part, position, value, dtype=dtype)
    out = ops.flash_attention(qkv, None, H)
    assert torch.equal(nan_rows(out), expected_rows(part, position))
    good = ~expected_rows(part, position)[..., None].expand(B, T, H, D).reshape(B, T, C)
    clean = qkv.clone()
    clean[0, position, PART[part] + D + 2] = 0.0
    # every row that does not see the bad element is what it is without it
    torch.testing.assert_close(out[good], ops.flash_attention(clean, None, H)[good], rtol=0, atol=0)


@needs_kernel
@pytest.mark.parametrize("part, position", [("q", 0), ("q", 3), ("k", 0), ("k", 5)])
def test_fused_nan_matches_pytorch(part, position):
    """NaN: the same rows as the reference and as the sdpa backend, between what PyTorch's paths give. A NaN query:
    eager's rows (PyTorch's SDPA CPU kernel drops it). A NaN key: every row PyTorch's SDPA kernel makes NaN, and no
    row eager keeps finite (eager and SDPA's math path also poison the rows before the key, which do not attend it,
    by adding its scores to their -inf or -1e4 mask; SDPA's CPU kernel keeps row 0 finite when key 0 is NaN)."""
    qkv = broken_qkv(part, position, float("nan"))
    fused = nan_rows(ops.flash_attention(qkv, None, H))
    assert torch.equal(fused, nan_rows(reference.flash_attention(qkv, None, H)))
    assert torch.equal(fused, nan_rows(sdpa_attention(qkv, None, H, 0.0)))
    eager = nan_rows(eager_attention(qkv, None, H, 0.0)[0])
    if part == "q":
        assert torch.equal(fused, eager)
    else:
        q, k, v = split_qkv(qkv, H)
        pytorch_sdpa = nan_rows(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))
        assert not (pytorch_sdpa & ~fused).any()
        assert not (fused & ~eager).any()


@needs_kernel
@pytest.mark.parametrize("padded", [True, False])
def test_a_padded_key_is_never_attended(padded):
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :3] = False  # left padding of row 0
    qkv = broken_qkv("k", 1 if padded else 5, float("nan"))
    out = ops.flash_attention(qkv, mask, H)
    assert torch.equal(nan_rows(out), expected_rows("k", 1 if padded else 5, mask=mask))
    assert torch.equal(nan_rows(out), nan_rows(reference.flash_attention(qkv, mask, H)))


@needs_kernel
def test_fully_padded_rows_still_give_zeros():
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[1] = True
    out = ops.flash_attention(broken_qkv("k", 2, float("nan")), mask, H)
    assert torch.equal(out[0], torch.zeros(T, C))


def test_reference_keeps_nan_but_zeros_rows_with_nothing_to_attend():
    """The reference used to turn every NaN probability into 0 (nan_to_num), hiding NaN like the kernel."""
    qkv = broken_qkv("q", 4, float("nan"))
    assert torch.equal(nan_rows(reference.flash_attention(qkv, None, H)), expected_rows("q", 4))
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[1] = True
    assert torch.equal(reference.flash_attention(torch.randn(B, T, 3 * C), mask, H)[0], torch.zeros(T, C))


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_with_nan_keys_is_nan_like_transformers(backend):
    """A NaN in one key column of layer 0's c_attn: transformers' output is NaN everywhere; so is every backend's
    (the fused one used to give finite logits)."""
    hf = hf_model("OpenAIGPTLMHeadModel")
    with torch.no_grad():
        hf.transformer.h[0].attn.c_attn.weight[5, C + 3] = float("nan")
    ours = gpt_fast_class("OpenAIGPTLMHeadModel").from_transformers(hf, attn_implementation=backend).eval()
    ids = random_ids((2, 7))
    with torch.no_grad():
        theirs, mine = hf(ids).logits, ours(ids).logits
    assert theirs.isnan().all()
    assert torch.equal(mine.isnan(), theirs.isnan())


# -- masks -----------------------------------------------------------------------------------------------------
BAD_MASK_VALUES = [0.5, 2.0, -1.0, float("nan"), float("inf")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", BAD_MASK_VALUES)
@pytest.mark.parametrize("head", [h for h in HEADS if h != DOUBLE])
def test_float_mask_that_is_not_0_or_1_is_refused(head, value, backend):
    ours = gpt_fast_class(head).from_transformers(hf_model(head), attn_implementation=backend).eval()
    mask = torch.ones(shape_for(head))
    mask[1, 2] = value
    with pytest.raises(ValueError, match=r"attention_mask must hold only 0 \(padding\) and 1"):
        ours(random_ids(shape_for(head)), attention_mask=mask)


def test_double_heads_mask_checked_too():
    ours = gpt_fast_class(DOUBLE).from_transformers(hf_model(DOUBLE)).eval()
    mask = torch.ones(shape_for(DOUBLE))
    mask[0, 1, 2] = 0.5
    with pytest.raises(ValueError, match="attention_mask"):
        ours(random_ids(shape_for(DOUBLE)), attention_mask=mask)


@pytest.mark.parametrize("mask_dtype", [torch.long, torch.int32, torch.uint8])
def test_integer_mask_other_than_0_or_1_is_refused(mask_dtype):
    ours = gpt_fast_class("OpenAIGPTModel").from_transformers(hf_model("OpenAIGPTModel")).eval()
    mask = torch.ones(2, 7, dtype=mask_dtype)
    mask[0, 3] = 2
    with pytest.raises(ValueError, match="attention_mask.*got 2"):
        ours(random_ids((2, 7)), attention_mask=mask)


def test_complex_mask_is_refused():
    ours = gpt_fast_class("OpenAIGPTModel").from_transformers(hf_model("OpenAIGPTModel")).eval()
    with pytest.raises(TypeError, match="attention_mask"):
        ours(random_ids((2, 7)), attention_mask=torch.ones(2, 7, dtype=torch.complex64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.float16, torch.bool, torch.long, torch.int8])
def test_0_1_masks_of_every_dtype_match_transformers(mask_dtype, backend):
    hf = hf_model("OpenAIGPTLMHeadModel")
    ours = gpt_fast_class("OpenAIGPTLMHeadModel").from_transformers(hf, attn_implementation=backend).eval()
    ids = random_ids((2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 5:] = 0
    with torch.no_grad():
        mine = ours(ids, attention_mask=mask.to(mask_dtype)).logits
        theirs = hf(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(mine[real], theirs[real], atol=1e-4, rtol=1e-4)
