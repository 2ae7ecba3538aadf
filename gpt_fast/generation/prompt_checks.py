"""generate()'s prompt checked: input_ids, attention_mask and token_type_ids against the model, and transformers'
rule for a mask left out."""

from __future__ import annotations

import torch

from gpt_fast.models.validation import check_ids_in_range, check_integer_tensor


def check_prompt(model, input_ids, attention_mask):
    """Validates the prompt and returns (input_ids, attention_mask or None) on the model's device."""
    if input_ids is None:
        raise ValueError("generate needs input_ids of shape (batch, prompt_length)")
    check_integer_tensor("input_ids", input_ids)
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError("input_ids must have shape (batch, prompt_length) with both > 0, "
                         f"got {tuple(input_ids.shape)}")
    check_ids_in_range("input_ids", input_ids, model.config.vocab_size)
    device = model.device
    input_ids = input_ids.to(device)
    if attention_mask is None:
        return input_ids, None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has shape "
                         f"{tuple(input_ids.shape)}")
    attention_mask = attention_mask.to(device)
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        raise TypeError(f"attention_mask must hold 0/1 integers or booleans, got dtype {attention_mask.dtype}")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    if not bool((attention_mask != 0).any(dim=1).all()):
        raise ValueError("every row of attention_mask needs at least one real token (a 1)")
    return input_ids, attention_mask.long()


def check_token_type_ids(model, token_type_ids, input_ids):
    """token_type_ids (B, T) like input_ids: embedded with the token embedding, as the model's forward does."""
    if token_type_ids is None:
        return None
    check_integer_tensor("token_type_ids", token_type_ids)
    if tuple(token_type_ids.shape) != tuple(input_ids.shape):
        raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)} but input_ids has shape "
                         f"{tuple(input_ids.shape)}")
    check_ids_in_range("token_type_ids", token_type_ids, model.config.vocab_size)
    return token_type_ids.to(input_ids.device)


def infer_attention_mask(input_ids, request):
    """transformers' rule: padding = pad_token_id when it occurs in the prompt and differs from EOS (request: a
    GenerationRequest)."""
    pad, eos = request.pad_token_id, request.eos_token_ids
    if pad is None or (eos is not None and pad in eos) or not bool((input_ids == pad).any()):
        return None
    mask = (input_ids != pad).long()
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a prompt row holds only pad_token_id; pass an attention_mask")
    return mask
