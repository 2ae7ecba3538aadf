"""Continuing from a cache a previous generate() returned: `generate(ids, past_key_values=out.cache)`, where the
first L tokens of every row of ids are the L tokens that cache holds (a conversation's earlier turns, a shared
instruction prefix), so only ids[:, L:] are run through the model before decoding.

transformers' recipe for prompt reuse passes a Cache the same way (its OpenAIGPT models cannot: their forward fills
no cache). Here the cache is gpt_fast's StaticKVCache from `generate(..., return_dict_in_generate=True).cache`
(also `.past_key_values`): it holds the prompt and every new token but the last, each row's real tokens first. It is
copied into the request's own cache and left as it was (transformers' Cache is extended in place, so its recipe
deep-copies it first; here that is not needed). The rows must hold the same length L, with at least one token of
ids after them, the prompt unpadded, and the cache one of this model's layout (layers, heads, width, dtype,
device); its rows are one per prompt row, or one for all. Keys and values depend only on the tokens up to their
position, so the result is the one a generate() over the whole of ids gives, up to the rounding of the passes
that computed them. Whether ids really starts with the cached tokens is the caller's to ensure, as in
transformers.
"""

from __future__ import annotations

import torch

from gpt_fast.generation.kv_cache import StaticKVCache


def check_reused_cache(cache: StaticKVCache, model, input_ids: torch.Tensor, attention_mask) -> None:
    """Checks the cache against the call: this model's layout, 1 or B rows, one length L in every row, at least one
    token of input_ids (B, T) after it, no padding."""
    B, T = input_ids.shape
    config = model.config
    expected = (config.n_layer, config.n_head, config.n_embd // config.n_head, model.dtype, input_ids.device)
    keys = cache.keys  # (n_layer, rows, H, Tmax, D)
    got = (keys.shape[0], keys.shape[2], keys.shape[4], keys.dtype, keys.device)
    if got != expected:
        raise ValueError(f"past_key_values holds (layers, heads, head width, dtype, device) {got}, and this model "
                         f"decodes with {expected}: pass a cache a generate() of this model returned")
    if keys.shape[1] not in (1, B):
        raise ValueError(f"past_key_values has {keys.shape[1]} rows for {B} prompt rows (one per row, or one for all)")
    lengths = cache.lengths
    L = int(lengths[0]) if lengths.numel() else 0
    if not bool((lengths == L).all()):
        raise ValueError(f"past_key_values rows hold different lengths {lengths.tolist()}; continuing needs one "
                         "length for every row")
    if not 0 < L < T:
        raise ValueError(f"past_key_values holds {L} tokens per row and input_ids {T}: input_ids must be the cached "
                         "tokens followed by at least one more")
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        raise ValueError("past_key_values needs an unpadded prompt (an attention mask of ones)")


def continue_from(decoder, cache: StaticKVCache, packed: torch.Tensor) -> torch.Tensor:
    """Copies the (checked) cache's L positions into the decoder's cache (its rows repeated to the decoder's) and
    runs the tokens after them, packed[:, L:] (R, T - L): float32 logits (R, V) after the last."""
    length = int(cache.lengths[0])
    rows = decoder.cache.lengths.shape[0]
    pick = torch.arange(rows, device=packed.device) * cache.keys.shape[1] // rows  # (R,) the source row of each
    for (k, v), (k_from, v_from) in zip(decoder.cache.layers, cache.layers):  # (B, H, Tmax, D)
        k[:, :, :length].copy_(k_from[pick, :, :length])
        v[:, :, :length].copy_(v_from[pick, :, :length])
    decoder.cache.lengths.fill_(length)
    return decoder.extend(packed[:, length:])[:, -1]  # (R, V)
