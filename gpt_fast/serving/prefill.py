"""Chunked prefill of one slot: a prompt's tokens [start, start + c) run through the model's own layer loop
(OpenAIGPTModel.run_layers), their keys and values written into the slot's cache row at those positions.

The first chunk (start 0) attends with the plan's backend (eager / sdpa / fused, causal, no mask), as
IncrementalDecoder.prefill does; a later chunk attends over the slot's cached prefix plus itself with SDPA under an
offset causal mask (query i sees keys [0, start + i]). So a long prompt is prefilled a chunk at a time between
decode steps, and running rows wait for at most one chunk.

A chunk of more rows than the plan's linear_small_m takes runs padded to a multiple of ROW_BUCKET rows (token 0 at
the positions after the chunk, room permitting), so that its GEMMs come in a few shapes: oneDNN and PyTorch's
ideep keep a primitive per GEMM shape (up to 1024 each, by default), and prompts of every length from 33 to 256
tokens grew a GPT-1 server's heap by ~670 MB over 720 requests, still growing, against a flat heap once 14
shapes are cached. The padded rows come after the real ones, so causal attention keeps them out of every real
row; their keys and values land past the slot's length, where the next decode steps overwrite them before any
row reads them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt_fast.generation.decoder import IncrementalDecoder
from gpt_fast.generation.kv_cache import StaticKVCache
from gpt_fast.models.attention import backend_attention
from gpt_fast.ops.kernel_plan import KernelPlan
from gpt_fast.ops.layout import merge_heads, split_heads, split_qkv
from gpt_fast.serving.slots import SlotCache

ROW_BUCKET = 16


def padded_rows(rows: int, small_rows: int, room: int) -> int:
    """The rows a chunk of `rows` tokens runs with: rounded up to a multiple of ROW_BUCKET above small_rows (the
    plan's linear_small_m limit, which needs no GEMM), never past `room` positions."""
    if rows <= small_rows:
        return rows
    return max(rows, min(-(-rows // ROW_BUCKET) * ROW_BUCKET, room))


def prefill_chunk(model, plan: KernelPlan, cache: SlotCache, slot: int, ids: torch.Tensor, start: int,
                  all_rows: bool = True) -> torch.Tensor:
    """ids: (c,) long, the prompt's tokens at positions [start, start + c). Fills the slot's cache there, sets its
    length to start + c, and returns the last layer's hidden states (c, C); with all_rows=False only the chunk's
    last token's, (1, C): the last layer then runs its attention, projections and MLP on that token alone (its keys
    and values still for every position), as IncrementalDecoder.prefill does."""
    transformer = model.transformer
    n_head = model.config.n_head
    C = model.config.n_embd
    c = ids.shape[0]
    rows = padded_rows(c, plan.small_m_rows, cache.max_length - start)
    if rows > c:
        ids = F.pad(ids, (0, rows - c))  # (rows,)
    end = start + rows
    positions = torch.arange(start, end, device=ids.device)  # (rows,) absolute positions
    x = transformer.embed(ids[None], positions)  # (1, c, C)
    if start:
        visible = torch.arange(end, device=ids.device)[None, :] <= positions[:, None]  # (c, end)

    final = None if all_rows else len(transformer.h) - 1
    if not all_rows:  # the chunk's last real token: its index in the chunk (1, 1) and its cache position (1,)
        last = torch.tensor([[c - 1]], device=ids.device)
        last_position = torch.tensor([start + c - 1], device=ids.device)

    def attend(i, qkv):  # (1, c, 3C) -> (1, c, C), or (1, 1, C) for the last token alone in the final layer
        k_cache, v_cache = cache.layers[i]  # (B, H, Tmax, D)
        k_cache[slot, :, start:end].copy_(split_heads(qkv[..., C:2 * C], n_head)[0])  # (H, c, D)
        v_cache[slot, :, start:end].copy_(split_heads(qkv[..., 2 * C:], n_head)[0])
        if i == final:  # its query over [0, start + c - 1) plus itself (whose key and value it writes again)
            return plan.decode_attention(qkv[:, c - 1:c], k_cache[slot:slot + 1], v_cache[slot:slot + 1],
                                         last_position, n_head), None
        if not start:
            return backend_attention(plan, qkv, None, n_head), None
        q = split_qkv(qkv, n_head)[0]  # (1, H, c, D)
        keys, values = k_cache[slot:slot + 1, :, :end], v_cache[slot:slot + 1, :, :end]  # (1, H, end, D)
        return merge_heads(F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)), None

    hidden = transformer.run_layers(x, plan, attend, last_positions=None if all_rows else last)  # (1, rows or 1, C)
    cache.lengths[slot] = start + c
    return hidden[0, :c]


def prefill_together(model, plan: KernelPlan, cache: SlotCache, slots: list[int],
                     prompts: list[list[int]]) -> torch.Tensor:
    """Whole prompts of several slots in one batched pass: IncrementalDecoder.prefill over a StaticKVCache of their
    own (the prompts right-padded to the longest, masked), whose keys and values are then copied into the slots'
    rows (the padded positions' land past each slot's length, where decode steps overwrite them). Sets the slots'
    lengths; returns the first new token's float32 logits (b, V), one row per prompt. For the engine's
    prefill_first mode (generate_batch), where every request arrives at once: one pass instead of one per prompt."""
    device = cache.lengths.device
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long, device=device)  # (b, T)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)] = torch.tensor(prompt, device=device)
    lengths = torch.tensor([len(p) for p in prompts], device=device)  # (b,)
    own = StaticKVCache.for_model(model.config, len(prompts), T, cache.layers[0][0].dtype, device)
    logits = IncrementalDecoder(model, own, plan).prefill(ids, lengths, all_full=bool((lengths == T).all()))
    rows = torch.tensor(slots, device=device)
    for (keys, values), (own_keys, own_values) in zip(cache.layers, own.layers):  # (B, H, Tmax, D) <- (b, H, T, D)
        keys[rows, :, :T] = own_keys
        values[rows, :, :T] = own_values
    cache.lengths[rows] = lengths
    return logits


def whole_prompts(prefilling: list, chunk: int) -> list:
    """Of the prefilling sequences, those whose whole prompt fits one chunk and has not begun, one per request (its
    other choices then share that prompt) and none asking for the prompt's log-probabilities: prefill_together's."""
    chosen, requests = [], set()
    for sequence in prefilling:
        if (sequence.prefilled == 0 and len(sequence.prompt) <= chunk and sequence.prompt_logprobs is None
                and id(sequence.siblings) not in requests):
            requests.add(id(sequence.siblings))
            chosen.append(sequence)
    return chosen
