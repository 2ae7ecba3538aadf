"""Checks on the arguments of the models' forward: each failure is a ValueError/TypeError naming the argument."""

from __future__ import annotations

import torch

from gpt_fast.ops.func_transforms import plain_tensor


def check_integer_tensor(name: str, tensor: torch.Tensor | None) -> None:
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids (torch.long), got dtype {tensor.dtype}")


def check_ids_in_range(name: str, ids: torch.Tensor | None, upper: int) -> None:
    """ids must lie in [0, upper). One device-to-host sync; the generation loop skips it, and so does
    torch.compile, which cannot trace a check on tensor values."""
    if ids is None or ids.numel() == 0 or torch.compiler.is_compiling():
        return
    ids = plain_tensor(ids)  # under vmap: every example's ids
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= upper:
        bad = low if low < 0 else high
        raise IndexError(f"{name} holds {bad}, outside [0, {upper})")


def check_binary_mask(name: str, mask: torch.Tensor) -> None:
    """A padding mask holds 0 (padding) and 1 (attend) only: bool, integers 0/1, or floats 0.0/1.0. transformers
    uses it as a 0/1 multiplier, so any other value (0.5, 2, -1, NaN) is refused rather than read as 1. One
    device-to-host sync, skipped under torch.compile like check_ids_in_range."""
    if mask.is_complex():
        raise TypeError(f"{name} must hold 0/1 (bool, integer or float), got dtype {mask.dtype}")
    if mask.dtype == torch.bool or mask.numel() == 0 or torch.compiler.is_compiling():
        return
    mask = plain_tensor(mask)
    other = (mask != 0) & (mask != 1)
    if bool(other.any()):
        value = mask[other][0].item()
        raise ValueError(f"{name} must hold only 0 (padding) and 1 (attend), got {value!r} (dtype {mask.dtype}); "
                         f"a float mask is not a weighting: pass 0/1")


def check_same_shape(name: str, tensor: torch.Tensor | None, shape: torch.Size, what: str = "input_ids") -> None:
    if tensor is not None and tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} but {what} has shape {tuple(shape)}")


def check_per_token(name: str, tensor: torch.Tensor | None, shape: torch.Size) -> None:
    """A per-token tensor (attention_mask, token_type_ids) has the input's shape (..., T), or that shape
    flattened to (N, T) as transformers takes them for multiple choice: (batch * num_choices, T)."""
    if tensor is None or tuple(tensor.shape) == tuple(shape):
        return
    flat = (shape.numel() // shape[-1] if shape[-1] else 0, shape[-1])
    if tuple(tensor.shape) != flat:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} but the input has shape {tuple(shape)} "
                         f"(also accepted: the flattened {flat})")


def check_model_inputs(config, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids):
    """Validates the inputs of OpenAIGPTModel.forward and returns the input shape (..., T)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds" if input_ids is None else
                         "You cannot specify both input_ids and inputs_embeds at the same time")
    if input_ids is not None:
        check_integer_tensor("input_ids", input_ids)
        if input_ids.dim() < 1:
            raise ValueError(f"input_ids must have at least one dimension (..., T), got shape {tuple(input_ids.shape)}")
        check_ids_in_range("input_ids", input_ids, config.vocab_size)
        shape = input_ids.shape
    else:
        if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
            raise TypeError("inputs_embeds must be a floating-point tensor of shape (..., T, n_embd)")
        if inputs_embeds.dim() < 2 or inputs_embeds.shape[-1] != config.n_embd:
            raise ValueError(f"inputs_embeds must have shape (..., T, {config.n_embd}), "
                             f"got {tuple(inputs_embeds.shape)}")
        shape = inputs_embeds.shape[:-1]
    T = shape[-1]
    if T > config.n_positions:
        raise ValueError(f"sequence length {T} exceeds the model's maximum of n_positions={config.n_positions}")
    if T == 0:
        raise ValueError("the input sequence is empty (T = 0)")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        check_per_token("attention_mask", attention_mask, shape)
        check_binary_mask("attention_mask", attention_mask)
    check_integer_tensor("token_type_ids", token_type_ids)
    check_per_token("token_type_ids", token_type_ids, shape)
    check_ids_in_range("token_type_ids", token_type_ids, config.vocab_size)
    check_integer_tensor("position_ids", position_ids)
    if position_ids is not None:
        if position_ids.shape[-1] != T or position_ids.numel() not in (T, shape.numel()):
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected (T,), (1, T) or "
                             f"the input's shape {tuple(shape)}")
        check_ids_in_range("position_ids", position_ids, config.n_positions)
    return shape
