"""Runs an OpenAIGPTLMHeadModel incrementally over a StaticKVCache: one prefill pass, then one token per step.

This is not a copy of the model: it calls the model's own modules (each Block's c_attn, c_proj, LayerNorms and
MLP, the embeddings and the LM head) and differs from OpenAIGPTModel.forward only in where keys and values go
and in the attention it calls:

- prefill(packed_ids, lengths): the whole (packed, right-padded) prompt in one pass; each layer's keys and
  values are written into the cache, and the prompt's attention is the model's backend (eager / sdpa / fused
  flash attention) with a key-padding mask. Returns the logits at each row's last real token. A short prompt
  (B * T <= SMALL_M_MAX_ROWS) reads its weights through linear_small_m like the steps (bf16, 8 tokens: 14.7 ms
  instead of 21.1 ms through the GEMMs), a longer one goes through the Blocks' modules.
- step(tokens): one new token per row; gpt_fast::decode_attention (kernel when built for the device, else the
  reference) appends its key/value at the row's length and attends over [0, length]. Positions come from the
  cache lengths, so rows of different prompt lengths each see the positions they would see alone.
- decode-time kernels: when gpt_fast's small-M linear kernel (linear_small_m) is built for the device and the
  batch has at most SMALL_M_MAX_ROWS rows, every step-time matmul reads weights repacked once for it (cached on the
  model, rebuilt when a weight changes), with bias, GELU and the residual add in the kernel; add_layernorm /
  bias_gelu kernels are used where built.
- CUDAGraphStep: on CUDA, step() captured once into a CUDA graph over static buffers and replayed per token.

Everything per layer that does not change between steps (modules, cache views, kernel choice) is bound once in
__init__; the step loop allocates only what the ops themselves return (nothing at all under a CUDA graph).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from gpt_fast import ops, reference
from gpt_fast.attention import backend_attention
from gpt_fast.kv_cache import StaticKVCache
from gpt_fast.modeling import kernel_or_reference
from gpt_fast.weight_cache import cached_on


SMALL_M_MAX_ROWS = 32  # rows (B at a step, B * T at the prefill) up to which the weights are read by linear_small_m


def packed_decode_weights(model) -> list:
    """[(c_attn, attn.c_proj, c_fc, mlp.c_proj) packed, per layer] + [lm_head packed], made once per weight
    version and cached on the model (gpt_fast/weight_cache.py; the copy doubles the weights' memory)."""
    blocks = model.transformer.h
    weights = [w for b in blocks for w in (b.attn.c_attn.weight, b.attn.c_proj.weight, b.mlp.c_fc.weight,
                                            b.mlp.c_proj.weight)] + [model.lm_head.weight]

    def build():
        with torch.no_grad():
            packed = [ops.pack_linear_weight(w, True) for w in weights[:-1]]
            layers = [tuple(packed[4 * i:4 * i + 4]) for i in range(len(blocks))]
            return layers + [ops.pack_linear_weight(weights[-1], False)]  # the LM head: nn.Linear layout (V, C)

    return cached_on(model, "decode_weights", weights, build)


class PackedLayer(NamedTuple):
    """One Block's step-time tensors, bound once per request: its KV cache, its weights packed for linear_small_m
    ((N / 16, K, 16), see pack_linear_weight) and the Block's own biases and LayerNorm parameters."""

    k_cache: torch.Tensor  # (B, H, Tmax, D)
    v_cache: torch.Tensor  # (B, H, Tmax, D)
    c_attn: torch.Tensor  # packed (C -> 3C)
    c_attn_bias: torch.Tensor  # (3C,)
    attn_proj: torch.Tensor  # packed (C -> C)
    attn_proj_bias: torch.Tensor  # (C,)
    ln_1: tuple  # (weight (C,), bias (C,), eps)
    c_fc: torch.Tensor  # packed (C -> 4C)
    c_fc_bias: torch.Tensor  # (4C,)
    act: Callable | None  # the MLP activation when it is not tanh-GELU (which the kernel applies itself)
    mlp_proj: torch.Tensor  # packed (4C -> C)
    mlp_proj_bias: torch.Tensor  # (C,)
    ln_2: tuple  # (weight (C,), bias (C,), eps)

    @classmethod
    def bind(cls, block, k_cache, v_cache, packed: tuple, gelu: bool) -> "PackedLayer":
        attn, mlp = block.attn, block.mlp
        w_attn, w_proj, w_fc, w_fc2 = packed
        return cls(k_cache, v_cache, w_attn, attn.c_attn.bias, w_proj, attn.c_proj.bias,
                   (block.ln_1.weight, block.ln_1.bias, block.ln_1.eps), w_fc, mlp.c_fc.bias,
                   None if gelu else mlp.act, w_fc2, mlp.c_proj.bias,
                   (block.ln_2.weight, block.ln_2.bias, block.ln_2.eps))


class IncrementalDecoder:
    def __init__(self, model, cache: StaticKVCache, backend: str, fused_ln: bool):
        transformer = model.transformer
        self.cache = cache
        self.n_head = model.config.n_head
        self.backend = backend
        self.tokens_embed = transformer.tokens_embed
        self.positions_embed = transformer.positions_embed
        self.lm_head = model.lm_head
        device_type = cache.keys.device.type
        self.decode_attention = (ops.decode_attention if ops.has_kernel("decode_attention", device_type)
                                 else reference.decode_attention)
        self.fused_ln = fused_ln
        self.layers = [(block, k_cache, v_cache) for block, (k_cache, v_cache) in zip(transformer.h, cache.layers)]
        # step(tokens (B,) long) -> float32 logits (B, V) of the token after each row's new one
        self.step = self._step_modules
        self.logits = self._logits_modules  # (B, C) -> float32 (B, V)
        self.packed_layers = None
        # The small-M kernel reads the weights at about the memory bandwidth, 1.05-1.1x PyTorch's GEMM for one fp32
        # row, 1.5-3x for bf16 and for several rows, with bias/GELU/residual fused in; past ~32 rows a GEMM wins
        # (benchmarks/bench_linear.py --rows 1 8 32 64).
        rows = cache.lengths.shape[0]
        if ops.has_kernel("linear_small_m", device_type) and rows <= SMALL_M_MAX_ROWS:
            packed = packed_decode_weights(model)
            gelu = model.config.afn == "gelu"
            self.packed_layers = [PackedLayer.bind(block, k_cache, v_cache, weights, gelu)
                                  for (block, k_cache, v_cache), weights in zip(self.layers, packed[:-1])]
            self.packed_lm_head = packed[-1]
            self.logits = self._logits_packed
            self.step_add_layernorm = kernel_or_reference("add_layernorm", device_type)
            self.step = self._step_packed

    def prefill(self, packed_ids: torch.Tensor, lengths: torch.Tensor, all_full: bool) -> torch.Tensor:
        """packed_ids: (B, T), each row's real tokens first; lengths: (B,) real tokens per row (>= 1).

        Fills the cache and returns float32 logits (B, V) at each row's last real token. A prompt of at most
        SMALL_M_MAX_ROWS tokens in all reads its weights through linear_small_m, as the steps do; a longer one goes
        through the Blocks' own (GEMM) modules.
        """
        B, T = packed_ids.shape
        C = self.tokens_embed.weight.shape[1]
        x = self.tokens_embed(packed_ids) + self.positions_embed.weight[:T]  # (B, T, C)
        key_mask = None if all_full else (torch.arange(T, device=x.device)[None, :] < lengths[:, None]).long()
        small = self.packed_layers is not None and B * T <= SMALL_M_MAX_ROWS
        for i, (block, _, _) in enumerate(self.layers):
            def attend(qkv):  # (B, T, 3C) -> (B, T, C), writing the prompt's keys and values into the cache
                k = reference.split_heads(qkv[..., C:2 * C], self.n_head)  # (B, H, T, D)
                v = reference.split_heads(qkv[..., 2 * C:], self.n_head)  # (B, H, T, D)
                self.cache.write_prompt(i, k, v)
                return backend_attention(self.backend, qkv, key_mask, self.n_head)

            if small:
                x = self._packed_block(x, self.packed_layers[i], attend)
            else:
                c_attn = block.attn.c_attn
                qkv = c_attn.fused(x, with_bias=True) if self.fused_ln else c_attn(x)  # (B, T, 3C)
                x = block.finish(x, attend(qkv), self.fused_ln)
        self.cache.lengths.copy_(lengths)
        last = x[torch.arange(B, device=x.device), lengths - 1]  # (B, C)
        return self.logits(last)

    def _step_modules(self, tokens: torch.Tensor) -> torch.Tensor:
        """step() through the Blocks' modules (no linear_small_m kernel for the device, or more rows than it suits)."""
        lengths = self.cache.lengths  # (B,) = the new token's position in each row
        x = (self.tokens_embed(tokens) + self.positions_embed(lengths))[:, None, :]  # (B, 1, C)
        for block, k_cache, v_cache in self.layers:
            qkv = block.attn.c_attn(x)  # (B, 1, 3C)
            a = self.decode_attention(qkv, k_cache, v_cache, lengths, self.n_head)  # (B, 1, C)
            x = block.finish(x, a, self.fused_ln)
        lengths.add_(1)
        return self.logits(x[:, 0])  # (B, V)

    def _logits_modules(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.lm_head.weight).float()

    def _step_packed(self, tokens: torch.Tensor) -> torch.Tensor:
        """step() with every matmul in linear_small_m over the packed weights."""
        lengths, n_head, decode_attention = self.cache.lengths, self.n_head, self.decode_attention
        x = (self.tokens_embed(tokens) + self.positions_embed(lengths))[:, None, :]  # (B, 1, C)
        for layer in self.packed_layers:
            x = self._packed_block(x, layer, lambda qkv: decode_attention(qkv, layer.k_cache, layer.v_cache,
                                                                          lengths, n_head))
        lengths.add_(1)
        return self.logits(x[:, 0])  # (B, V)

    def _packed_block(self, x: torch.Tensor, layer: PackedLayer, attend) -> torch.Tensor:
        """Block.forward on few rows with every matmul in linear_small_m. x: (B, T, C); attend(qkv (B, T, 3C))
        -> (B, T, C) is the attention, keys and values going into the cache."""
        linear, add_layernorm = ops.linear_small_m, self.step_add_layernorm
        C = x.shape[-1]
        qkv = linear(x, layer.c_attn, 3 * C, layer.c_attn_bias, None, False)  # (B, T, 3C)
        n = add_layernorm(x, linear(attend(qkv), layer.attn_proj, C, None, None, False), layer.attn_proj_bias,
                          *layer.ln_1)  # (B, T, C)
        if layer.act is None:  # tanh-GELU in the kernel
            h = linear(n, layer.c_fc, 4 * C, layer.c_fc_bias, None, True)  # (B, T, 4C)
        else:
            h = layer.act(linear(n, layer.c_fc, 4 * C, layer.c_fc_bias, None, False))
        return add_layernorm(n, linear(h, layer.mlp_proj, C, None, None, False), layer.mlp_proj_bias,
                             *layer.ln_2)  # (B, T, C)

    def _logits_packed(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head through linear_small_m also after prefill (the last token of each row): 1.9x F.linear's
        read of the 62 MB bf16 head for one row, so it shortens the time to the first token too."""
        return ops.linear_small_m(x, self.packed_lm_head, self.lm_head.weight.shape[0], None, None, False).float()


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


def use_cuda_graph(device: torch.device, requested: bool | None) -> bool:
    """CUDA graphs need a CUDA device and the decode_attention kernel (the reference syncs with the host)."""
    possible = device.type == "cuda" and ops.has_kernel("decode_attention", "cuda")
    if requested and not possible:
        raise ValueError("cuda_graph=True needs a CUDA model and gpt_fast's CUDA decode_attention kernel")
    return possible if requested is None else bool(requested)
