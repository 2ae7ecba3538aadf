"""The LM head's loss without its logits: the shift of shifted_lm_loss (models/heads.py) over the fused LM-head +
cross-entropy of ops/linear_cross_entropy.py. What `model(..., labels=..., return_logits=False)` runs."""

from __future__ import annotations

import torch

from gpt_fast.models.validation import check_integer_tensor, check_same_shape
from gpt_fast.ops.linear_cross_entropy import linear_cross_entropy


def fused_shifted_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels, num_items_in_batch=None,
                          ignore_index: int = -100, shift_labels=None) -> torch.Tensor:
    """The loss shifted_lm_loss(hidden @ weight.T, labels, upcast=True, ...) gives, the logits never made whole.
    hidden (..., T, C), weight (V, C), labels (..., T) (or shift_labels, already aligned with the hidden states)."""
    if shift_labels is not None:
        check_same_shape("shift_labels", shift_labels, hidden.shape[:-1], "the input")
        check_integer_tensor("shift_labels", shift_labels)
        rows, targets = hidden.reshape(-1, hidden.shape[-1]), shift_labels.reshape(-1)
    else:
        check_same_shape("labels", labels, hidden.shape[:-1], "the input")
        check_integer_tensor("labels", labels)
        rows = hidden[..., :-1, :].reshape(-1, hidden.shape[-1])  # (N, C)
        targets = labels[..., 1:].reshape(-1)
    return linear_cross_entropy(rows, weight, targets, ignore_index, num_items_in_batch)
