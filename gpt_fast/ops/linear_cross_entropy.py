"""Fused LM head + cross-entropy: loss(hidden @ weight.T, targets) without the (N, V) logits.

Liger-Kernel's FusedLinearCrossEntropy idea, in ATen: the rows are taken in chunks; for each chunk the logits
(chunk, V) are made in float32, turned in place into the gradient of the loss with respect to them
(softmax - one_hot, scaled), and immediately multiplied back into the gradients of the hidden states
(chunk, C) and of the weight (V, C, accumulated in float32). The backward pass only scales those saved
gradients by the incoming gradient. Peak memory: the weight gradient plus one chunk of logits, instead of the
several (N, V) tensors of `F.cross_entropy(F.linear(hidden, weight), targets)`.

In bfloat16 / float16 the weight gradient is not summed chunk by chunk: that needs float32 GEMMs (a low-precision
GEMM per chunk would round every partial sum), about 2.5x slower than the low-precision GEMM on a CPU with
AVX512-BF16. Instead the rows go in groups of up to GROUP_ELEMENTS logits: one GEMM writes a group's logits into a
(rows, V) buffer of the input dtype, the softmax turns them in place into their gradient, rounded to the input dtype
as autograd rounds it anyway (float32 copies of SOFTMAX_ELEMENTS logits at a time, small enough to stay in the
CPU's cache: at GPT-1's shape 2x faster than 103-row pieces), and the buffer meets the weight and the hidden states
in one GEMM each (float32 accumulation inside, one rounding: what PyTorch's logits path computes). A batch of
more rows than a group sums its groups' weight gradients in float32. The buffer costs 2 bytes per logit of the
group (79 MiB at GPT-1's 1,020 rows x 40,478 tokens), about what the float32 weight-gradient accumulator it
replaces cost. Under autocast the float32 weight is cast inside the autograd Function, and its float32 gradient
is written WEIGHT_BLOCK_ROWS vocabulary rows at a time from a small buffer of the input dtype: the same values as
a (V, C) low-precision gradient cast back by autograd, without that tensor (62 MiB at GPT-1, fresh memory each
step) nor the cast's pass.

The arithmetic follows what PyTorch does for `F.cross_entropy(logits.float(), targets)` with logits in the
input dtype: the logits are the matmul's output rounded to the input dtype, softmax and loss in float32,
the gradient of the logits rounded to the input dtype before it meets the hidden states and the weight.
On a CPU where PyTorch's bf16 / fp16 GEMM is its slow reference loop (cpu_isa.half_gemm_fast: fp16 without
AVX512-FP16, bf16 on AVX2 CPUs) low-precision inputs take the float32 path instead, their gradients cast back by
autograd: ~100x faster there, and the logits are not rounded to the input dtype (not under autocast, whose casts
pick the GEMMs' dtype, as KernelPlan.gemm_upcast).
Written here rather than taken from Liger-Kernel: that library is Triton (GPU only).
"""

from __future__ import annotations

import torch

from gpt_fast.ops import cpu_isa, onednn_linear
from gpt_fast.ops.func_transforms import transforms_active

# float32 logits per chunk: 64 MiB (414 rows at GPT-1's 40,478-token vocabulary). Each chunk re-reads the (V, C)
# weight twice and the float32 weight gradient once: at GPT-1's shape, B*T = 1024, float32, 2 threads (AMD Zen 4)
# forward + backward took 1565-1602 ms in 103-row chunks (2^22 logits), 1330 in 414-row ones, 1261-1280 in 512-row
# ones, against 1362-1369 ms for logits + F.cross_entropy; peak memory 3.4x less than that path at 414 rows (4.6x at
# 103; benchmarks/bench_linear_cross_entropy.py).
CHUNK_ELEMENTS = 1 << 24
GROUP_ELEMENTS = 1 << 26  # low-precision logit gradients per weight-gradient GEMM: 128 MiB in bf16 (1,648 rows)
SOFTMAX_ELEMENTS = 1 << 20  # low-precision path: logits per float32 softmax copy, 4 MiB (25 rows at GPT-1)
WEIGHT_BLOCK_ROWS = 4096  # low-precision path: vocabulary rows per weight-gradient GEMM when that gradient is float32
LOW_PRECISION = (torch.bfloat16, torch.float16)


def default_chunk_rows(vocab_size: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab_size, 1))


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the softmax, the loss and the weight gradient's sums: float32, or float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _logits(hidden, weight):
    """hidden (n, C) @ weight (V, C).T: through oneDNN's float32 GEMM where the models use it (AMD CPUs: 146 against
    233 ms for 414 rows at GPT-1's head, ops/onednn_linear.py), else PyTorch's."""
    if (onednn_linear.usable(hidden.device.type) and onednn_linear.serves(hidden, weight)
            and not torch.compiler.is_compiling()):
        return onednn_linear.matmul_t(hidden, weight)
    return hidden @ weight.t()


def _chunk_loss_and_grad(hidden, weight, targets, ignore_index: int, grad_scale):
    """hidden (n, C), weight (V, C), targets (n,) -> (per-row losses (n,), 0 where ignored; grad_scale times the
    gradient of their sum with respect to the logits (n, V), or None when grad_scale is None), in _stat_dtype."""
    logits = _logits(hidden, weight).to(_stat_dtype(hidden.dtype))  # (n, V); rounded to the input dtype first
    valid = targets != ignore_index  # (n,)
    safe = torch.where(valid, targets, 0)
    target_logits = logits.gather(1, safe[:, None]).squeeze(1)  # (n,)
    row_max = logits.amax(dim=1, keepdim=True)  # (n, 1)
    logits.sub_(row_max).exp_()  # exp(logits - max), in place
    sums = logits.sum(dim=1, keepdim=True)  # (n, 1)
    losses = (row_max.squeeze(1) + sums.squeeze(1).log() - target_logits) * valid
    if grad_scale is None:
        return losses, None
    grad = logits.div_(sums)  # softmax, in place
    grad.scatter_add_(1, safe[:, None], torch.full_like(target_logits[:, None], -1.0))
    grad.mul_(torch.where(valid, grad_scale, 0.0)[:, None])  # ignored rows have no gradient (0, never NaN)
    return losses, grad


def _group_rows(vocab_size: int, chunk_rows: int) -> int:
    """Rows per weight-gradient GEMM: whole chunks, at most GROUP_ELEMENTS logits (at least one chunk)."""
    return chunk_rows * max(1, GROUP_ELEMENTS // max(vocab_size * chunk_rows, 1))


def _logits_to_grad_(logits, targets, ignore_index: int, grad_scale):
    """logits (g, V) in a low-precision dtype, overwritten in place with grad_scale times the gradient of the summed
    losses with respect to them, rounded to that dtype; returns the per-row losses (g,) in float32 (0 where
    ignored). The arithmetic of _chunk_loss_and_grad (float32 softmax), taken SOFTMAX_ELEMENTS logits at a time so
    that each float32 copy stays in the CPU's cache."""
    rows = max(1, SOFTMAX_ELEMENTS // max(logits.shape[1], 1))
    losses = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)  # (g,)
    for start in range(0, logits.shape[0], rows):
        part = slice(start, start + rows)
        chunk = logits[part]  # (n, V), a view of the buffer
        valid = targets[part] != ignore_index  # (n,)
        safe = torch.where(valid, targets[part], 0)[:, None]  # (n, 1)
        scores = chunk.float()  # (n, V)
        target_logits = scores.gather(1, safe).squeeze(1)  # (n,)
        row_max = scores.amax(dim=1, keepdim=True)  # (n, 1)
        scores.sub_(row_max).exp_()
        sums = scores.sum(dim=1, keepdim=True)  # (n, 1)
        losses[part] = (row_max.squeeze(1) + sums.squeeze(1).log() - target_logits) * valid
        scores.div_(sums).scatter_add_(1, safe, torch.full_like(sums, -1.0))  # softmax - one_hot
        chunk.copy_(scores.mul_(torch.where(valid, grad_scale, 0.0)[:, None]))  # one rounding to the input dtype
    return losses


def _weight_grad_into(out, grad_logits, hidden, accumulate: bool) -> None:
    """out (V, C) (+)= grad_logits (g, V).T @ hidden (g, C): GEMMs in the input dtype (one rounding each, as
    PyTorch's), WEIGHT_BLOCK_ROWS vocabulary rows at a time through a small buffer when out is wider (float32),
    so that no (V, C) tensor of the input dtype is made."""
    if out.dtype == hidden.dtype and not accumulate:
        torch.mm(grad_logits.t(), hidden, out=out)
        return
    block = hidden.new_empty((min(WEIGHT_BLOCK_ROWS, out.shape[0]), hidden.shape[1]))  # (b, C)
    for start in range(0, out.shape[0], WEIGHT_BLOCK_ROWS):
        stop = min(start + WEIGHT_BLOCK_ROWS, out.shape[0])
        part = torch.mm(grad_logits[:, start:stop].t(), hidden, out=block[:stop - start])  # (b, g) @ (g, C)
        if accumulate:
            out[start:stop].add_(part)
        else:
            out[start:stop].copy_(part)


def _grouped_loss_and_grads(hidden, weight, targets, ignore_index: int, grad_scale, chunk_rows: int,
                            grad_hidden_wanted: bool, grad_weight_dtype: torch.dtype):
    """The low-precision path with a weight gradient (see the module's docstring): per group of rows, one GEMM
    writes the logits (g, V) into the group's buffer, _logits_to_grad_ turns them into their gradient in place,
    and two GEMMs take it to the gradients. Returns (the summed losses, grad hidden (N, C) or None, grad weight
    (V, C) in grad_weight_dtype, or in float32 when the rows make several groups)."""
    N, V = hidden.shape[0], weight.shape[0]
    group_rows = _group_rows(V, chunk_rows)
    if group_rows < N:  # the groups' weight gradients summed in float32
        grad_weight_dtype = _stat_dtype(hidden.dtype)
    grad_hidden = torch.empty_like(hidden) if grad_hidden_wanted else None
    grad_weight = torch.empty(weight.shape, dtype=grad_weight_dtype, device=weight.device)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    weight_in_dtype = weight.to(hidden.dtype)  # (V, C); the autocast cast, dropped before the last group's
    for group in range(0, N, group_rows):      # weight gradient (it would add to the step's peak)
        rows = slice(group, min(group + group_rows, N))
        grad_logits = torch.mm(hidden[rows], weight_in_dtype.t())  # (g, V): the logits, rounded to the input dtype
        total += _logits_to_grad_(grad_logits, targets[rows], ignore_index, grad_scale).sum()
        if grad_hidden is not None:  # (g, V) @ (V, C)
            torch.mm(grad_logits, weight_in_dtype, out=grad_hidden[rows])
        if rows.stop == N:
            weight_in_dtype = None
        _weight_grad_into(grad_weight, grad_logits, hidden[rows], accumulate=group > 0)
        del grad_logits
    if N == 0:
        grad_weight.zero_()
    return total, grad_hidden, grad_weight


def _loss_and_grads(hidden, weight, targets, ignore_index: int, divisor, chunk_rows: int, grad_hidden_wanted: bool,
                    grad_weight_dtype: torch.dtype | None):
    """The chunk loop. hidden (N, C), weight (V, C) (cast to hidden's dtype here: autocast); divisor a 0-d tensor;
    grad_weight_dtype None when no weight gradient is wanted. Returns (the loss, its gradient for hidden (N, C) in
    hidden's dtype or None, for weight (V, C) or None: in _stat_dtype, or in grad_weight_dtype for bfloat16 /
    float16 inputs whose rows fit one group)."""
    N = hidden.shape[0]
    stat_dtype = _stat_dtype(hidden.dtype)
    grad_weight_wanted = grad_weight_dtype is not None
    grad_scale = 1.0 / divisor if grad_hidden_wanted or grad_weight_wanted else None
    if grad_weight_wanted and hidden.dtype in LOW_PRECISION:
        total, grad_hidden, grad_weight = _grouped_loss_and_grads(hidden, weight, targets, ignore_index, grad_scale,
                                                                  chunk_rows, grad_hidden_wanted, grad_weight_dtype)
        return total / divisor, grad_hidden, grad_weight
    weight = weight.to(hidden.dtype)  # (V, C): autocast's cast
    grad_hidden = torch.empty_like(hidden) if grad_hidden_wanted else None
    grad_weight = torch.empty(weight.shape, dtype=stat_dtype, device=weight.device) if grad_weight_wanted else None
    if grad_weight is not None and N == 0:
        grad_weight.zero_()
    total = torch.zeros((), dtype=stat_dtype, device=hidden.device)
    for start in range(0, N, chunk_rows):
        rows = slice(start, min(start + chunk_rows, N))
        chunk = hidden[rows]
        losses, grad = _chunk_loss_and_grad(chunk, weight, targets[rows], ignore_index, grad_scale)
        total += losses.sum()
        if grad is None:
            continue
        grad = grad.to(hidden.dtype)  # (n, V): as autograd rounds it through logits.float()
        if grad_hidden is not None:
            torch.mm(grad, weight, out=grad_hidden[rows])
        if grad_weight is not None:  # (V, n) @ (n, C), summed over the chunks in stat_dtype (the first one writes)
            grad_t, chunk_t = grad.t().to(stat_dtype), chunk.to(stat_dtype)
            if start:
                grad_weight.addmm_(grad_t, chunk_t)
            else:
                torch.mm(grad_t, chunk_t, out=grad_weight)
            del grad_t
        del grad  # before the next chunk's logits are made: one chunk alive at a time
    return total / divisor, grad_hidden, grad_weight


class LinearCrossEntropy(torch.autograd.Function):
    """loss = reduce(cross_entropy(hidden @ weight.T, targets)) / divisor with gradients made in the forward.
    The weight is cast to hidden's dtype here (autocast), so that its gradient comes out in the weight's own dtype
    without a (V, C) gradient of the cast dtype."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, divisor, chunk_rows: int, want_grad: bool):
        wanted = (want_grad and ctx.needs_input_grad[0], weight.dtype if want_grad and ctx.needs_input_grad[1]
                  else None)
        loss, grad_hidden, grad_weight = _loss_and_grads(hidden, weight, targets, ignore_index, divisor,
                                                         chunk_rows, *wanted)
        if want_grad:
            ctx.save_for_backward(hidden, weight, targets, divisor)  # only for a second backward pass
            ctx.arguments, ctx.gradients = (ignore_index, chunk_rows, *wanted), (grad_hidden, grad_weight)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        # The gradients made in the forward are scaled in place and handed over (a copy of the (V, C) weight
        # gradient would raise the peak); a second backward pass (retain_graph=True, gradcheck) recomputes them.
        grad_hidden, grad_weight = ctx.gradients
        ctx.gradients = (None, None)
        if grad_hidden is None and grad_weight is None:
            hidden, weight, targets, divisor = ctx.saved_tensors
            ignore_index, chunk_rows, *wanted = ctx.arguments
            _, grad_hidden, grad_weight = _loss_and_grads(hidden, weight, targets, ignore_index, divisor,
                                                          chunk_rows, *wanted)
        weight_dtype = ctx.saved_tensors[1].dtype
        unscaled = (grad_loss.device.type == "cpu" and not torch.compiler.is_compiling()
                    and bool(grad_loss == 1))  # loss.backward(): no pass over the gradients
        if grad_hidden is not None and not unscaled:
            grad_hidden = grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight if unscaled else grad_weight.mul_(grad_loss.to(grad_weight.dtype))
            grad_weight = grad_weight.to(weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def _reference_loss(hidden, weight, targets, ignore_index: int, num_items_in_batch):
    """What LinearCrossEntropy computes, through the logits: F.cross_entropy of the logits in float32."""
    logits = torch.nn.functional.linear(hidden, weight).to(_stat_dtype(hidden.dtype))  # (N, V)
    total = torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    divisor = (targets != ignore_index).sum() if num_items_in_batch is None else num_items_in_batch
    return total / divisor


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                         num_items_in_batch=None, chunk_rows: int | None = None) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets, ignore_index) with the (N, V) logits never made whole.

    hidden (N, C) float, weight (V, C) same dtype, targets (N,) integer ids in [0, V) or ignore_index. Returns the
    mean over the counted targets (NaN when none is counted, as F.cross_entropy), or with num_items_in_batch
    (an int or tensor) their sum divided by it. float32 for float32/bfloat16/float16 inputs, float64 for float64.
    Under autocast the inputs are cast to the autocast dtype first, as F.linear would be."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be (N, C) and weight (V, C), got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must have shape ({hidden.shape[0]},), got {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer class ids, got dtype {targets.dtype}")
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    device_type = hidden.device.type
    weight_dtype = weight.dtype
    autocast = torch.is_autocast_enabled(device_type)
    if autocast:
        weight_dtype = torch.get_autocast_dtype(device_type)
        hidden = hidden.to(weight_dtype)  # the weight is cast inside LinearCrossEntropy (its gradient: its dtype)
    if hidden.dtype != weight_dtype:
        raise TypeError(f"hidden and weight must have one dtype, got {hidden.dtype} and {weight.dtype}")
    if (device_type == "cpu" and not autocast and hidden.dtype in LOW_PRECISION
            and not cpu_isa.half_gemm_fast(hidden.dtype)):
        hidden, weight = hidden.float(), weight.float()  # PyTorch's half GEMM is a slow loop here (gradients: cast)
    targets = targets.to(hidden.device)
    if transforms_active():  # torch.func / forward-mode AD: the reference, which they support (func_transforms.py)
        return _reference_loss(hidden, weight, targets, ignore_index, num_items_in_batch)
    V = weight.shape[0]
    if targets.numel() and not torch.compiler.is_compiling():
        counted = targets[targets != ignore_index]
        if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= V):
            bad = int(counted.min()) if int(counted.min()) < 0 else int(counted.max())
            raise IndexError(f"target {bad} is outside the vocabulary [0, {V}) (and is not ignore_index "
                             f"{ignore_index})")
    stat_dtype = _stat_dtype(hidden.dtype)
    if num_items_in_batch is None:
        divisor = (targets != ignore_index).sum().to(stat_dtype)
    else:
        divisor = torch.as_tensor(num_items_in_batch, device=hidden.device).to(stat_dtype)
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(device_type, enabled=False):
        return LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, divisor,
                                        chunk_rows or default_chunk_rows(V), want_grad)
