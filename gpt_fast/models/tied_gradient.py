"""One (V, C) gradient for the tied token embedding / LM-head weight of a training step, instead of two and their sum.

Autograd gives the tied weight one gradient per use: the LM head's (a dense (V, C) tensor, made first: the loss is
the last thing of the forward) and the token lookup's (embedding_dense_backward: a zeroed (V, C) tensor and the
looked-up rows added into it), then adds the two. On a CPU the zeroed tensor is fresh memory whose pages are faulted
in by the zeroing: measured 45-50 ms of a 2.6 s GPT-1 bf16 training step (one thread), plus the add.

Here the LM head's gradient is handed over instead: the weight reaches the loss through _HandOver, whose backward
keeps the gradient in a TiedGradient and gives the weight nothing; the lookup's backward (_Lookup) adds its rows into
that gradient and gives the weight the sum. The lookup's backward always runs after the loss's (the loss depends on
the lookup's output), so the hand-over is there when the rows are added; without one (a backward pass that does not
go through the loss) the lookup makes its zeroed gradient as F.embedding's backward does. The sum is the same up to
the order of the float additions (the head's gradient + each row in turn, instead of the head's + the rows' sum).

Used only where it cannot change anything else (`share_tied_gradient`): the LM-head model's fused loss, gradients
on, the head tied to a plain nn.Embedding (no padding_idx, max_norm, scale_grad_by_freq, sparse, no module hooks),
not under torch.compile.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks

_ACTIVE: contextvars.ContextVar[TiedGradient | None] = contextvars.ContextVar("gpt_fast_tied_gradient", default=None)


class TiedGradient:
    """The hand-over between one forward's LM-head loss and its token lookup."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight  # the tied parameter (V, C)
        self.looked_up = False  # the forward's token lookup went through _Lookup
        self.grad: torch.Tensor | None = None  # the LM head's gradient (V, C), between the two backward steps


def _plain(embedding: nn.Module) -> bool:
    """An nn.Embedding whose forward is F.embedding(ids, weight) and nothing else (no options, no hooks)."""
    hooks = (embedding._forward_hooks, embedding._forward_pre_hooks, embedding._backward_hooks,
             embedding._backward_pre_hooks, module_hooks._global_forward_hooks,
             module_hooks._global_forward_pre_hooks, module_hooks._global_backward_hooks,
             module_hooks._global_backward_pre_hooks)
    return (type(embedding) is nn.Embedding and embedding.padding_idx is None and embedding.max_norm is None
            and not embedding.scale_grad_by_freq and not embedding.sparse and not any(hooks))


@contextlib.contextmanager
def share_tied_gradient(embedding: nn.Module, head_weight: torch.Tensor, wanted: bool):
    """Within it, the token lookup (embed_tokens) of `embedding` takes part in the hand-over; yields the
    TiedGradient for head_weight_for_loss, or None when the hand-over does not apply."""
    applies = (wanted and torch.is_grad_enabled() and not torch.compiler.is_compiling()
               and head_weight is embedding.weight and head_weight.requires_grad and _plain(embedding))
    box = TiedGradient(head_weight) if applies else None
    token = _ACTIVE.set(box)
    try:
        yield box
    finally:
        _ACTIVE.reset(token)


def embed_tokens(embedding: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """embedding(ids) (..., T) -> (..., T, C); the first lookup inside share_tied_gradient goes through _Lookup."""
    box = _ACTIVE.get()
    if box is None or box.looked_up or embedding.weight is not box.weight:
        return embedding(ids)
    box.looked_up = True
    return _Lookup.apply(ids, embedding.weight, box)


def head_weight_for_loss(box: TiedGradient | None, weight: torch.Tensor) -> torch.Tensor:
    """The weight for the LM-head loss: through _HandOver when the forward's lookup takes the hand-over."""
    if box is None or not box.looked_up or weight is not box.weight:
        return weight
    return _HandOver.apply(weight, box)


class _HandOver(torch.autograd.Function):
    """Identity on the weight; backward: the gradient kept for the lookup, nothing to the weight."""

    @staticmethod
    def forward(ctx, weight, box):
        ctx.box = box
        return weight.view_as(weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        ctx.box.grad = grad  # replaces a hand-over a failed backward pass may have left
        return None, None


class _Lookup(torch.autograd.Function):
    """F.embedding(ids, weight); backward: the rows' gradients added into the handed-over LM-head gradient."""

    @staticmethod
    def forward(ctx, ids, weight, box):
        ctx.save_for_backward(ids)
        ctx.box, ctx.weight_shape, ctx.weight_dtype = box, weight.shape, weight.dtype
        return F.embedding(ids, weight)  # (..., T, C)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # grad_out (..., T, C)
        (ids,) = ctx.saved_tensors
        base, ctx.box.grad = ctx.box.grad, None
        if base is None:  # no hand-over in this backward pass: F.embedding's own gradient
            base = torch.zeros(ctx.weight_shape, dtype=ctx.weight_dtype, device=grad_out.device)
        else:  # (V, C); the loss's own tensor, given up by its backward
            base = base.to(ctx.weight_dtype).contiguous()
        rows = grad_out.reshape(-1, grad_out.shape[-1]).to(ctx.weight_dtype)  # (N, C)
        return None, base.index_add_(0, ids.reshape(-1), rows), None
