"""The LM head's loss without its logits: the shift of shifted_lm_loss (models/heads.py) over the fused LM-head +
cross-entropy of ops/linear_cross_entropy.py. What `model(..., labels=..., return_logits=False)` runs."""

from __future__ import annotations

import torch

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
