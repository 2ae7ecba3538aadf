"""Fully masked query rows as transformers gives them, on every attention backend.

With left padding, a padding position's causal window holds only padded keys. transformers' OpenAIGPT attention
adds -1e4 to causally masked scores and dtype.min to padded ones, so such a row attends uniformly to the sequence's
unpadded keys (all after it); in a sequence with no real token, uniformly to every key. gpt_fast's kernels see
such a row as attending nothing (zeros); gpt_fast.models.attention.fill_fully_masked_rows sets it after them.
Checked against transformers on the same random weights: hidden states at every position (padding included), the
loss with labels = ids and -100 at padding, and the gradients, for the eager, sdpa and fused backends.
"""

import pytest
import torch
from conftest import BACKENDS, gpt_fast_class, hf_model, random_ids

from gpt_fast.models.attention import backend_attention, fill_fully_masked_rows
from gpt_fast.ops.kernel_plan import plan_kernels

pytest.importorskip("transformers")

T = 12
PADS = [5, 0, 11, 12]  # left padding per row: row 1 has none, row 2 one real token, row 3 no real token


def left_padded_batch():
    ids = random_ids((len(PADS), T), seed=3)
    mask = torch.ones(len(PADS), T, dtype=torch.long)
    for row, pads in enumerate(PADS):
        ids[row, :pads], mask[row, :pads] = 0, 0  # pad id 0
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def run(model, ids, mask, labels):
    out = model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    return torch.stack(out.hidden_states).double(), out.loss.double()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_left_padded_batch_matches_transformers(backend, dtype):
    hf = hf_model("OpenAIGPTLMHeadModel")
    ids, mask, labels = left_padded_batch()
    with torch.no_grad():
        exact_states, exact_loss = run(hf.double(), ids, mask, labels)  # transformers in float64: the oracle
        hf_states, hf_loss = run(hf.to(dtype), ids, mask, labels)  # transformers' own error in this dtype
        ours = gpt_fast_class("OpenAIGPTLMHeadModel").from_transformers(hf, attn_implementation=backend).eval()
        states, loss = run(ours.to(dtype), ids, mask, labels)
    if dtype == torch.float32:
        torch.testing.assert_close(states, hf_states, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(loss, hf_loss, atol=1e-5, rtol=1e-5)
    state_bound = 3 * (hf_states - exact_states).abs().max().item() + 1e-5
    assert (states - exact_states).abs().max().item() <= state_bound
    assert abs(loss - exact_loss).item() <= 3 * abs(hf_loss - exact_loss).item() + 1e-5, (loss, hf_loss, exact_loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_transformers(backend):
    hf = hf_model("OpenAIGPTLMHeadModel")
    ours = gpt_fast_class("OpenAIGPTLMHeadModel").from_transformers(hf, attn_implementation=backend).eval()
    ids, mask, labels = left_padded_batch()
    hf(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    ours(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    theirs = dict(hf.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, theirs[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_fill_sets_only_fully_masked_rows():
    """The fill itself, on a kernel output: rows with no key to attend get the mean of v over the unpadded keys
    (over all keys when there is none); every other row is left as it is."""
    B, C = 3, 4
    qkv = torch.randn(B, 5, 3 * C, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[0, 0, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    out = torch.full((B, 5, C), 7.0)
    v = qkv[..., 2 * C:]
    expected = out.clone()
    expected[0, :2] = (v[0, 2] + v[0, 4]) / 2
    expected[2] = v[2].mean(dim=0)
    torch.testing.assert_close(fill_fully_masked_rows(out, qkv, mask), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_query_in_a_fully_masked_row_stays_nan(backend):
    """A NaN query at a padding position makes that row NaN (as transformers' math does), after the fill too."""
    H, D = 2, 4
    qkv = torch.randn(2, 6, 3 * H * D, generator=torch.Generator().manual_seed(1))
    qkv[0, 1, D + 1] = float("nan")  # row 0, position 1 (padding), head 1's query
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    plan = plan_kernels(backend, qkv.device, qkv.dtype)
    out = backend_attention(plan, qkv, mask, H).view(2, 6, H, D)
    assert out[0, 1, 1].isnan().all() and not out[0, 1, 0].isnan().any()
    assert not out[0, [0, 2, 3, 4, 5]].isnan().any() and not out[1].isnan().any()
