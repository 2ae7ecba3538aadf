"""The LM heads' losses: shifted_lm_loss over logits; fused_shifted_lm_loss, the same without the logits (the fused
LM-head + cross-entropy of ops/linear_cross_entropy.py: what `model(..., labels=..., return_logits=False)` runs);
causal_lm_loss, transformers' `model.loss_function` signature over shifted_lm_loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt_fast.models.validation import check_integer_tensor, check_same_shape
from gpt_fast.ops.linear_cross_entropy import linear_cross_entropy


def shifted_rows(x: torch.Tensor, labels, shift_labels=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of x (..., T, F) that predict a token and their targets: (N, F) and (N,). Row t predicts labels'
    token t + 1; shift_labels (..., T), already aligned with x, is used as it is instead."""
    if shift_labels is not None:
        check_same_shape("shift_labels", shift_labels, x.shape[:-1], "the input")
        check_integer_tensor("shift_labels", shift_labels)
        return x.reshape(-1, x.shape[-1]), shift_labels.reshape(-1)
    check_same_shape("labels", labels, x.shape[:-1], "the input")
    check_integer_tensor("labels", labels)
    return x[..., :-1, :].reshape(-1, x.shape[-1]), labels[..., 1:].reshape(-1)


def fused_shifted_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels, num_items_in_batch=None,
                          ignore_index: int = -100, shift_labels=None) -> torch.Tensor:
    """The loss shifted_lm_loss(hidden @ weight.T, labels, upcast=True, ...) gives, the logits never made whole.
    hidden (..., T, C), weight (V, C), labels (..., T) (or shift_labels, already aligned with the hidden states)."""
    rows, targets = shifted_rows(hidden, labels, shift_labels)  # (N, C), (N,)
    return linear_cross_entropy(rows, weight, targets, ignore_index, num_items_in_batch)


def shifted_lm_loss(logits, labels, upcast: bool, num_items_in_batch=None, ignore_index: int = -100,
                    shift_labels=None):
    """Cross-entropy of token t+1 given tokens <= t, skipping targets equal to ignore_index. logits: (..., T, V).

    The mean over the counted targets; with num_items_in_batch (what transformers' Trainer passes: the targets
    of the whole accumulated batch) their sum divided by it instead. shift_labels: targets already aligned with
    the logits (..., T), used instead of shifting labels."""
    flat_logits, targets = shifted_rows(logits, labels, shift_labels)  # (N, V), (N,)
    if upcast:
        flat_logits = flat_logits.float()
    targets = targets.to(logits.device)
    if num_items_in_batch is None:
        return F.cross_entropy(flat_logits, targets, ignore_index=ignore_index)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(logits.device)
    return F.cross_entropy(flat_logits, targets, ignore_index=ignore_index, reduction="sum") / num_items_in_batch


def causal_lm_loss(logits: torch.Tensor, labels, vocab_size: int | None = None, num_items_in_batch=None,
                   ignore_index: int = -100, shift_labels=None, **kwargs) -> torch.Tensor:
    """transformers' ForCausalLMLoss, what its `model.loss_function` returns: logits (..., T, V) in float32, token
    t + 1 the target of position t (or shift_labels, already aligned), the mean over the counted targets or their
    sum over num_items_in_batch. vocab_size, when given, must be the logits' last dimension; other keywords are
    ignored, as there."""
    if vocab_size is not None and vocab_size != logits.shape[-1]:
        raise ValueError(f"loss_function: vocab_size={vocab_size} but the logits have {logits.shape[-1]} entries "
                         "per position")
    return shifted_lm_loss(logits, labels, True, num_items_in_batch, ignore_index, shift_labels)
