"""The fused LM head + cross-entropy (gpt_fast/ops/linear_cross_entropy.py) against F.linear + F.cross_entropy:
loss and gradients of the hidden states and the weight, with the accuracy rule of tests/accuracy.py. bf16 / fp16
inputs run the low-precision arithmetic on every CPU here (as where PyTorch's half GEMM is fast); its float32
path for CPUs where that GEMM is slow: test_low_precision_on_a_cpu_without_fast_half_gemm."""

import pytest
import torch
import torch.nn.functional as F
from accuracy import assert_within_pytorch_error, upcast
from conftest import gpt_fast_class, hf_model, random_ids

from gpt_fast.ops import cpu_isa
from gpt_fast.ops import linear_cross_entropy as lce
from gpt_fast.ops.linear_cross_entropy import linear_cross_entropy

N, C, V = 45, 24, 67


@pytest.fixture(autouse=True)
def fast_half_gemm(monkeypatch):
    """The low-precision path whatever this CPU's half GEMM (the float32 one is tested below)."""
    monkeypatch.setattr(cpu_isa, "half_gemm_fast", lambda dtype: True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_on_a_cpu_without_fast_half_gemm(dtype, monkeypatch):
    """Where PyTorch's half GEMM is its slow loop, bf16 / fp16 inputs take the float32 path: loss and gradients
    within PyTorch's error, the gradients in the inputs' dtype."""
    monkeypatch.setattr(cpu_isa, "half_gemm_fast", lambda dtype: False)
    hidden, weight, targets = inputs(dtype)
    mine = loss_and_grads(fused, hidden, weight, targets)
    same_dtype = loss_and_grads(pytorch_loss, hidden, weight, targets)
    reference = loss_and_grads(pytorch_loss, *upcast(hidden, weight, dtype=dtype), targets)
    assert mine[1].dtype == mine[2].dtype == dtype
    for actual, ref, theirs in zip(mine, reference, same_dtype):
        assert_within_pytorch_error(actual.to(theirs.dtype), ref, theirs)


def inputs(dtype, seed=0, ignored=True):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=generator).to(dtype)
    weight = (torch.randn(V, C, generator=generator) / C ** 0.5).to(dtype)
    targets = torch.randint(0, V, (N,), generator=generator)
    if ignored:
        targets[5:17] = -100  # more than a whole chunk of 7 rows ignored
        targets[30] = -100
    return hidden, weight, targets


def pytorch_loss(hidden, weight, targets, num_items_in_batch=None):
    """What the LM head computes today: logits in the input dtype, cross-entropy in float32 (or float64)."""
    logits = F.linear(hidden, weight)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets, reduction="sum") / num_items_in_batch


def loss_and_grads(fn, hidden, weight, targets, **kwargs):
    hidden, weight = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss = fn(hidden, weight, targets, **kwargs)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def fused(hidden, weight, targets, num_items_in_batch=None):
    return linear_cross_entropy(hidden, weight, targets, num_items_in_batch=num_items_in_batch, chunk_rows=7)


@pytest.mark.parametrize("num_items_in_batch", [None, 50])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_loss_and_gradients_within_pytorch_error(dtype, num_items_in_batch):
    hidden, weight, targets = inputs(dtype)
    mine = loss_and_grads(fused, hidden, weight, targets, num_items_in_batch=num_items_in_batch)
    same_dtype = loss_and_grads(pytorch_loss, hidden, weight, targets, num_items_in_batch=num_items_in_batch)
    up_hidden, up_weight = upcast(hidden, weight, dtype=dtype)
    reference = loss_and_grads(pytorch_loss, up_hidden, up_weight, targets, num_items_in_batch=num_items_in_batch)
    assert mine[0].dtype == torch.float32 and mine[1].dtype == mine[2].dtype == dtype
    for actual, ref, theirs in zip(mine, reference, same_dtype):  # loss, grad hidden, grad weight
        assert_within_pytorch_error(actual.to(theirs.dtype), ref, theirs)


@pytest.mark.parametrize("group_chunks", [1, 2, 100])  # 1, 2 chunks of 7 rows per group (7, 4 groups), one group
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weight_gradient_groups(dtype, group_chunks, monkeypatch):
    """bf16 / fp16: the logits' gradient kept for one weight-gradient GEMM per group of rows, the groups summed in
    float32; every grouping within PyTorch's error, and a single group is PyTorch's logits path's arithmetic."""
    monkeypatch.setattr(lce, "GROUP_ELEMENTS", group_chunks * 7 * V)
    hidden, weight, targets = inputs(dtype)
    mine = loss_and_grads(fused, hidden, weight, targets)
    same_dtype = loss_and_grads(pytorch_loss, hidden, weight, targets)
    reference = loss_and_grads(pytorch_loss, *upcast(hidden, weight, dtype=dtype), targets)
    groups = -(-N // (7 * group_chunks))
    assert mine[2].dtype == dtype and lce._group_rows(V, 7) == 7 * group_chunks
    for actual, ref, theirs in zip(mine, reference, same_dtype):
        assert_within_pytorch_error(actual.to(theirs.dtype), ref, theirs)
    if groups == 1:  # one rounding of a float32 sum, as PyTorch's GEMM: equal but for the summation order
        torch.testing.assert_close(mine[2], same_dtype[2], rtol=2 * torch.finfo(dtype).eps, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_targets_far_below_the_row_maximum(dtype):
    """A target whose probability underflows float32 (logit hundreds below the row's maximum): its loss is taken from
    the logits (max + log(sum) - logit), finite and as PyTorch's, never -log of an underflowed probability."""
    hidden, weight, targets = inputs(dtype, ignored=False)
    hidden[:3] *= 200  # rows 0-2: logits spread over hundreds
    logits = F.linear(hidden, weight).float()
    targets[:3] = logits[:3].argmin(dim=1)
    assert (logits[:3].amax(1) - logits[:3].amin(1) > 150).all()
    mine = loss_and_grads(fused, hidden, weight, targets, num_items_in_batch=1)
    theirs = loss_and_grads(pytorch_loss, hidden, weight, targets, num_items_in_batch=1)
    assert mine[0].isfinite() and mine[0] > 450
    for actual, expected in zip(mine, theirs):
        torch.testing.assert_close(actual.float(), expected.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_items_in_batch", [None, torch.tensor(50)])
def test_float64_matches_pytorch(num_items_in_batch):
    hidden, weight, targets = inputs(torch.float64)
    mine = loss_and_grads(fused, hidden, weight, targets, num_items_in_batch=num_items_in_batch)
    theirs = loss_and_grads(pytorch_loss, hidden, weight, targets, num_items_in_batch=num_items_in_batch)
    assert mine[0].dtype == torch.float64
    for actual, expected in zip(mine, theirs):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_rows", [1, 7, N, 1000])
def test_chunking_changes_nothing(chunk_rows):
    hidden, weight, targets = inputs(torch.float64)
    whole = loss_and_grads(pytorch_loss, hidden, weight, targets)
    chunked = loss_and_grads(linear_cross_entropy, hidden, weight, targets, chunk_rows=chunk_rows)
    for actual, expected in zip(chunked, whole):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    hidden, weight, targets = inputs(torch.float64)
    hidden, weight, targets = hidden[:9, :5].requires_grad_(), weight[:11, :5].requires_grad_(), targets[:9] % 11
    targets[2] = -100
    assert torch.autograd.gradcheck(lambda h, w: linear_cross_entropy(h, w, targets, chunk_rows=4), (hidden, weight))
    assert torch.autograd.gradcheck(lambda h, w: 3 * linear_cross_entropy(h, w, targets, num_items_in_batch=20,
                                                                          chunk_rows=2), (hidden, weight))


def test_other_ignore_index():
    hidden, weight, targets = inputs(torch.float64)
    targets = torch.where(targets == -100, 3, targets)
    targets[:4] = 3
    mine = loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, ignore_index=3), hidden, weight, targets)
    theirs = loss_and_grads(lambda h, w, t: F.cross_entropy(F.linear(h, w), t, ignore_index=3), hidden, weight,
                            targets)
    for actual, expected in zip(mine, theirs):
        torch.testing.assert_close(actual, expected)


def test_all_targets_ignored_as_pytorch():
    hidden, weight, targets = inputs(torch.float32)
    targets[:] = -100
    mine = loss_and_grads(fused, hidden, weight, targets)
    theirs = loss_and_grads(pytorch_loss, hidden, weight, targets)
    assert mine[0].isnan() and theirs[0].isnan()  # a mean over nothing, as F.cross_entropy
    assert not mine[1].any() and not mine[2].any() and not theirs[1].any()  # and no gradient, never NaN
    loss, grad_hidden, _ = loss_and_grads(fused, hidden, weight, targets, num_items_in_batch=8)
    assert loss == 0 and not grad_hidden.any()


def test_without_gradients():
    hidden, weight, targets = inputs(torch.float32)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, pytorch_loss(hidden, weight, targets))
    weight.requires_grad_()
    linear_cross_entropy(hidden, weight, targets).backward()  # only the weight wants a gradient
    assert weight.grad is not None and hidden.grad is None


def test_autocast_bfloat16_as_pytorch():
    hidden, weight, targets = inputs(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mine = loss_and_grads(fused, hidden, weight, targets)
        theirs = loss_and_grads(pytorch_loss, hidden, weight, targets)
    assert mine[1].dtype == mine[2].dtype == torch.float32
    for actual, expected in zip(mine, theirs):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("change, error, message", [
    (lambda h, w, t: (h[None], w, t), ValueError, "hidden must be"),
    (lambda h, w, t: (h, w[:, 1:], t), ValueError, "hidden must be"),
    (lambda h, w, t: (h, w, t[1:]), ValueError, "targets must have shape"),
    (lambda h, w, t: (h, w, t.float()), TypeError, "integer"),
    (lambda h, w, t: (h, w.double(), t), TypeError, "one dtype"),
    (lambda h, w, t: (h, w, torch.where(t == 0, V, t).index_fill(0, torch.tensor([0]), V)), IndexError, "outside"),
    (lambda h, w, t: (h, w, t.index_fill(0, torch.tensor([1]), -5)), IndexError, "outside"),
])
def test_bad_input_is_a_clear_error(change, error, message):
    with pytest.raises(error, match=message):
        linear_cross_entropy(*change(*inputs(torch.float32)))


def test_bad_chunk_rows():
    with pytest.raises(ValueError, match="chunk_rows"):
        linear_cross_entropy(*inputs(torch.float32), chunk_rows=0)


@pytest.mark.parametrize("loss_kwargs", [{}, {"num_items_in_batch": 17}, {"shift_labels": True}])
def test_lm_head_without_logits(loss_kwargs):
    """model(..., labels, return_logits=False): no logits, the loss and every gradient of the default path."""
    head = gpt_fast_class("OpenAIGPTLMHeadModel")
    model = head.from_transformers(hf_model("OpenAIGPTLMHeadModel"), attn_implementation="sdpa")
    ids = random_ids((3, 9))
    labels = ids.clone()
    labels[1] = -100  # a whole row ignored
    labels[0, :3] = -100
    kwargs = dict(loss_kwargs)
    if kwargs.pop("shift_labels", False):
        kwargs["shift_labels"] = labels
    results = []
    for return_logits in (True, False):
        model.zero_grad()
        out = model(ids, labels=labels, return_logits=return_logits, **kwargs)
        out.loss.backward()
        results.append((out, {name: p.grad.clone() for name, p in model.named_parameters()}))
    (expected, expected_grads), (mine, grads) = results
    assert mine.logits is None and expected.logits is not None
    torch.testing.assert_close(mine.loss, expected.loss, rtol=1e-6, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    as_tuple = model(ids, labels=labels, return_logits=False, return_dict=False, **kwargs)
    assert len(as_tuple) == 1



def test_a_second_backward_recomputes_the_gradients():
    hidden, weight, targets = inputs(torch.float32)
    hidden.requires_grad_(), weight.requires_grad_()
    loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=7)
    first = torch.autograd.grad(2 * loss, (hidden, weight), retain_graph=True)
    second = torch.autograd.grad(loss, (hidden, weight))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, 2 * b)


def test_double_heads_lm_loss_without_logits():
    head = gpt_fast_class("OpenAIGPTDoubleHeadsModel")
    model = head.from_transformers(hf_model("OpenAIGPTDoubleHeadsModel"), attn_implementation="sdpa")
    ids = random_ids((2, 3, 7))
    labels = ids.clone()
    labels[:, 1, :3] = -100
    kwargs = dict(mc_token_ids=torch.tensor([[6, 4, 2], [1, 6, 5]]), labels=labels, mc_labels=torch.tensor([2, 0]))
    results = []
    for return_logits in (True, False):
        model.zero_grad()
        out = model(ids, return_logits=return_logits, **kwargs)
        (out.loss + out.mc_loss).backward()
        results.append((out, {name: p.grad.clone() for name, p in model.named_parameters()}))
    (expected, expected_grads), (mine, grads) = results
    assert mine.logits is None and expected.logits is not None
    torch.testing.assert_close(mine.loss, expected.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mine.mc_logits, expected.mc_logits)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("group_chunks", [1, 2, 100])  # several groups (their float32 sum) or one
@pytest.mark.parametrize("softmax_rows, block_rows", [(3, 16), (1, 67), (1000, 5)])
def test_autocast_softmax_pieces_and_weight_blocks(softmax_rows, block_rows, group_chunks, monkeypatch):
    """bf16 autocast: the softmax taken a few rows at a time in the logits buffer, the float32 weight gradient
    written (or added, group after group) a few vocabulary rows at a time, ragged last pieces; as PyTorch's logits
    path where one group holds every row, within PyTorch's error otherwise."""
    monkeypatch.setattr(lce, "SOFTMAX_ELEMENTS", softmax_rows * V)
    monkeypatch.setattr(lce, "WEIGHT_BLOCK_ROWS", block_rows)
    monkeypatch.setattr(lce, "GROUP_ELEMENTS", group_chunks * 7 * V)
    hidden, weight, targets = inputs(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mine = loss_and_grads(fused, hidden, weight, targets, num_items_in_batch=30)
        theirs = loss_and_grads(pytorch_loss, hidden, weight, targets, num_items_in_batch=30)
    assert mine[1].dtype == mine[2].dtype == torch.float32
    if group_chunks == 100:
        for actual, expected in zip(mine, theirs):
            torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    else:
        reference = loss_and_grads(pytorch_loss, hidden.double(), weight.double(), targets, num_items_in_batch=30)
        for actual, ref, expected in zip(mine, reference, theirs):
            assert_within_pytorch_error(actual, ref, expected)


@pytest.mark.parametrize("autocast", [False, True])
def test_no_rows_low_precision(autocast):
    """No rows at all in bf16 (or under autocast): loss NaN, zero gradients of the weight's dtype."""
    dtype = torch.float32 if autocast else torch.bfloat16
    hidden, weight, targets = (t[:0] if i != 1 else t for i, t in enumerate(inputs(dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, grad_hidden, grad_weight = loss_and_grads(fused, hidden, weight, targets)
    assert loss.isnan() and grad_hidden.shape == (0, C)
    assert grad_weight.dtype == dtype and grad_weight.shape == (V, C) and not grad_weight.any()
