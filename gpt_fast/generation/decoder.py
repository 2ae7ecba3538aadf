"""Runs an OpenAIGPTLMHeadModel incrementally over a StaticKVCache: one prefill pass, then one token per step.

Not a copy of the model: both passes run the model's own layer loop (OpenAIGPTModel.run_layers, one Block body
for every path) under one KernelPlan, and differ from the model's forward only in what the plan cannot say:

- prefill(packed_ids, lengths): positions 0..T-1; each layer's keys and values are written into the cache and the
  prompt attends with the plan's backend (eager / sdpa / fused) under a key-padding mask. Returns the logits at
  each row's last real token, so the last layer computes its keys and values for every position (the cache) but
  its attention, projections and MLP for that token only: ~6% of a 512-token prefill's work saved.
- extend(tokens) / rewind(count): several new tokens per row in one pass, and dropping the last positions again
  (speculative decoding, prompt_lookup.py).
- step(tokens): one new token per row at position = the row's cache length; the attention is the plan's
  decode_attention, which appends the token's key/value at that position and attends over [0, length]. So rows
  of different prompt lengths each see the positions they would see alone.
- CUDAGraphStep: on CUDA, step() captured once into a CUDA graph over static buffers and replayed per token.

Which matmul engine each linear layer uses (linear_small_m for up to 32 rows, so for every step of a batch of up
to 32 and for short prompts; a GEMM otherwise) is decided by the layer from the plan and its row count
(gpt_fast/models/linear.py). At its first step the decoder binds that choice and each layer's packed weight once
(models/linear.py: bind_layers, into a copy of the plan that only step() uses), so a step spends no Python on
choosing engines or checking the packed copies; a weight changed after the first step is not seen by this
decoder (generate() makes a decoder per call). Nothing the loop owns is allocated per step.
"""

from __future__ import annotations

import torch

from gpt_fast.generation.kv_cache import StaticKVCache
from gpt_fast.models.attention import backend_attention
from gpt_fast.models.block_modules import module_by_module
from gpt_fast.models.linear import bind_layers
from gpt_fast.ops import has_kernel
from gpt_fast.ops.kernel_plan import KernelPlan, plan_kernels


def decode_plan(model, device: torch.device) -> KernelPlan:
    """The KernelPlan that decodes `model` on `device`: its attention backend and dtype, no dropout, no gradients,
    and hooks on the blocks' modules at this moment taken into account (models/block_modules.py)."""
    return plan_kernels(model.attn_implementation, device, model.dtype,
                        by_module=module_by_module(model.transformer.h))


class IncrementalDecoder:
    def __init__(self, model, cache: StaticKVCache, plan: KernelPlan):
        self.model = model  # an OpenAIGPTLMHeadModel (transformer + logits)
        self.transformer = model.transformer
        self.cache = cache
        self.plan = plan
        self.step_plan = None  # plan with the layers bound for step()'s row count, made at the first step
        self.n_head = model.config.n_head
        self.step_types = None  # (B,) token type id of every new token (transformers repeats the prompt's last)

    def prefill(self, packed_ids: torch.Tensor, lengths: torch.Tensor, all_full: bool,
                packed_types: torch.Tensor | None = None, step_types: torch.Tensor | None = None) -> torch.Tensor:
        """packed_ids: (B, T), each row's real tokens first; lengths: (B,) real tokens per row (>= 1);
        packed_types (B, T) / step_types (B,): optional token type ids of the prompt / of each new token.
        Fills the cache and returns float32 logits (B, V) at each row's last real token."""
        B, T = packed_ids.shape
        C = self.transformer.config.n_embd
        self.step_types = step_types
        positions = torch.arange(T, device=packed_ids.device)  # (T,)
        x = self.transformer.embed(packed_ids, positions, packed_types)  # (B, T, C)
        key_mask = None if all_full else (positions[None, :] < lengths[:, None]).long()
        rows, last = torch.arange(B, device=x.device), lengths - 1  # (B,) each row's last real position
        final = len(self.transformer.h) - 1

        def attend(i, qkv):  # (B, T, 3C) -> (B, T, C), the prompt's keys and values going into the cache
            self.cache.write_prompt(i, qkv[..., C:2 * C], qkv[..., 2 * C:], self.n_head)
            if i < final:
                return backend_attention(self.plan, qkv, key_mask, self.n_head), None
            # Only the last token's output is wanted from the last block: its query alone over the cache, which
            # decode_attention sees as [0, last) plus this token (whose key and value it writes again, unchanged).
            k_cache, v_cache = self.cache.layers[i]
            return self.plan.decode_attention(qkv[rows, last][:, None], k_cache, v_cache, last, self.n_head), None

        # The last block runs its projections and MLP on each row's last token only (B rows, not B * T).
        x = self.transformer.run_layers(x, self.plan, attend, last_positions=last[:, None])  # (B, 1, C)
        self.cache.lengths.copy_(lengths)
        return self.model.logits(x[:, 0], self.plan).float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) long -> float32 logits (B, V) of the token after each row's new one."""
        lengths, layers, n_head = self.cache.lengths, self.cache.layers, self.n_head  # lengths (B,): the positions
        plan = self.step_plan
        if plan is None:  # after the prefill, whose row count may pick other engines (and pack for them)
            plan = self.step_plan = bind_layers(self.model, self.plan, lengths.shape[0])
        decode_attention = plan.decode_attention
        types = None if self.step_types is None else self.step_types[:, None]
        x = self.transformer.embed(tokens[:, None], lengths[:, None], types)  # (B, 1, C)

        def attend(i, qkv):  # (B, 1, 3C) -> (B, 1, C), appending the token's key and value to the cache
            k_cache, v_cache = layers[i]
            return decode_attention(qkv, k_cache, v_cache, lengths, n_head), None

        x = self.transformer.run_layers(x, plan, attend)
        lengths.add_(1)
        return self.model.logits(x[:, 0], plan).float()  # (B, V)

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, S) long, S new tokens per row at positions length .. length + S - 1 -> float32 logits
        (B, S, V), token s's logits from the cache and the tokens before it (decode_attention with S new tokens,
        the plan's engines for B * S rows). The verification pass of speculative decoding (prompt_lookup.py)."""
        B, S = tokens.shape
        lengths, layers, n_head, plan = self.cache.lengths, self.cache.layers, self.n_head, self.plan
        positions = lengths[:, None] + torch.arange(S, device=tokens.device)  # (B, S)
        types = None if self.step_types is None else self.step_types[:, None].expand(B, S)
        x = self.transformer.embed(tokens, positions, types)  # (B, S, C)

        def attend(i, qkv):  # (B, S, 3C) -> (B, S, C), appending the S keys and values to the cache
            k_cache, v_cache = layers[i]
            return plan.decode_attention(qkv, k_cache, v_cache, lengths, n_head), None

        x = self.transformer.run_layers(x, plan, attend)
        lengths.add_(S)
        return self.model.logits(x, plan).float()  # (B, S, V)

    def rewind(self, count: int) -> None:
        """Forgets the last `count` positions of every row (rejected draft tokens): the next step writes over them."""
        self.cache.lengths.sub_(count)


    def reorder(self, rows: torch.Tensor, filled: int) -> None:
        """Beam search: cache row r takes the keys, values and length of row rows[r], in place in the cache's own
        tensors (so a captured CUDA graph stays valid); one layer and the first `filled` positions at a time."""
        for k_cache, v_cache in self.cache.layers:  # (B, H, Tmax, D) each
            k_cache[:, :, :filled].copy_(k_cache[:, :, :filled].index_select(0, rows))
            v_cache[:, :, :filled].copy_(v_cache[:, :, :filled].index_select(0, rows))
        self.cache.lengths.copy_(self.cache.lengths.index_select(0, rows))
        if self.step_types is not None:
            self.step_types.copy_(self.step_types.index_select(0, rows))


class CUDAGraphStep:
    """IncrementalDecoder.step captured once in a CUDA graph; calling it copies the tokens in and replays.

    The returned logits tensor is the graph's static output buffer: it is overwritten by the next call.
    """

    def __init__(self, decoder: IncrementalDecoder, batch: int):
        device = decoder.cache.keys.device
        self.decoder = decoder
        self.tokens = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) static input
        lengths = decoder.cache.lengths
        saved = lengths.clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: the writes land at each row's next slot, rewritten by the real step
            for _ in range(2):
                decoder.step(self.tokens)
                lengths.copy_(saved)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = decoder.step(self.tokens)  # (B, V) static output
        lengths.copy_(saved)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits


def use_cuda_graph(device: torch.device, requested: bool | None, hooks: bool = False) -> bool:
    """CUDA graphs need a CUDA device and the decode_attention kernel (the reference syncs with the host), and a model
    without forward hooks (models/hooks.py: forward_hooked; a graph would run their Python once, at its capture)."""
    possible = device.type == "cuda" and has_kernel("decode_attention", "cuda")
    if requested and not possible:
        raise ValueError("cuda_graph=True needs a CUDA model and gpt_fast's CUDA decode_attention kernel")
    if requested and hooks:
        raise ValueError("cuda_graph=True: the model has forward hooks, which a CUDA graph would run only once (at "
                         "its capture); remove them or pass cuda_graph=False")
    return possible and not hooks if requested is None else bool(requested)
