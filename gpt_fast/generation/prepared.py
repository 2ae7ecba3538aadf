"""A generation request made ready for a decoding loop: the prompt packed for the static KV cache (each row's real
tokens first), the cache, the incremental decoder under one KernelPlan, token selection and the extra processors.
Shared by greedy/sampling (generate.py) and beam search (beam_search.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt_fast.generation.arguments import GenerationRequest
from gpt_fast.generation.cache_reuse import check_reused_cache, continue_from
from gpt_fast.generation.decoder import CUDAGraphStep, IncrementalDecoder, decode_plan, use_cuda_graph
from gpt_fast.generation.kv_cache import StaticKVCache
from gpt_fast.generation.processors import ExtraProcessors, TokenHistory
from gpt_fast.generation.replayed_step import ReplayedStep, refusal_before_recording
from gpt_fast.generation.sampling import TokenSelector
from gpt_fast.models.hooks import forward_hooked


@dataclass
class Prepared:
    """A request's prompt, packed for the cache, and the objects every decoding loop shares."""

    input_ids: torch.Tensor  # (R, T) as passed (padding included), repeated per returned sequence / beam
    attention_mask: torch.Tensor | None  # (R, T)
    packed: torch.Tensor  # (R, T) each row's real tokens first
    lengths: torch.Tensor  # (R,)
    decoder: IncrementalDecoder
    selector: TokenSelector
    extra: ExtraProcessors
    history: TokenHistory | None
    eos_ids: torch.Tensor | None
    graph: bool
    check_every: int
    order: torch.Tensor | None  # (R, T) the gather that packed the prompt, None when nothing is padded
    step_replay: bool | None  # the request's: None = replay the decode step where it can be, False = never
    reused_cache: StaticKVCache | None  # past_key_values: the cache the prompt's first tokens come from (checked)

    def step_function(self, batch: int):
        """What runs each decode step after the first token: a CUDA graph (p.graph), the step replayed from its
        recorded operators (replayed_step.py), or decoder.step itself (step_replay=False)."""
        if self.graph:
            return CUDAGraphStep(self.decoder, batch)
        if self.step_replay is False:
            return self.decoder.step
        return ReplayedStep(self.decoder, required=bool(self.step_replay))

    def first_logits(self, types, all_full) -> torch.Tensor:
        if self.reused_cache is not None:
            return continue_from(self.decoder, self.reused_cache, self.packed)
        packed_types = None if types is None else types.gather(1, self.order) if self.order is not None else types
        step_types = None if types is None else types[:, -1].clone()
        return self.decoder.prefill(self.packed, self.lengths, all_full, packed_types, step_types)


def prepare(model, input_ids, attention_mask, request: GenerationRequest, rows_per_prompt: int):
    device, config = input_ids.device, model.config
    if request.reused_cache is not None:
        check_reused_cache(request.reused_cache, model, input_ids, attention_mask)
    if rows_per_prompt > 1:
        input_ids = input_ids.repeat_interleave(rows_per_prompt, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(rows_per_prompt, dim=0)
    B, T = input_ids.shape
    order = None
    if attention_mask is None:
        packed, lengths = input_ids, torch.full((B,), T, dtype=torch.long, device=device)
    else:  # each row's real tokens first, in order: the cache then holds no padding
        order = torch.argsort((attention_mask == 0).to(torch.int8), dim=1, stable=True)  # (B, T)
        packed, lengths = input_ids.gather(1, order), attention_mask.sum(dim=1)
    # cuda_graph=True that cannot be honoured raises here; step_replay=True takes the place of a CUDA graph
    graph = use_cuda_graph(device, False if request.step_replay else request.cuda_graph, forward_hooked(model))
    if request.step_replay and (reason := refusal_before_recording(model)) is not None:  # before any work
        raise ValueError(f"step_replay=True: the decode step cannot be replayed: {reason}")
    plan = decode_plan(model, device)
    cache = StaticKVCache.for_model(config, B, T + request.max_new_tokens, model.dtype, device)
    eos_ids = None if request.eos_token_ids is None else torch.tensor(request.eos_token_ids, device=device)
    selector = TokenSelector(request.sampling, eos_ids, B, config.vocab_size, device, request.generator)
    selector.add_prompt(packed, lengths)
    history = TokenHistory(packed, lengths, request.max_new_tokens) if ExtraProcessors.needs_history(request) else None
    interval = request.eos_check_interval
    check_every = interval if interval is not None else (16 if device.type == "cuda" else 1)
    extra = ExtraProcessors(request, history, device, input_ids, config.vocab_size)
    return Prepared(input_ids, attention_mask, packed, lengths, IncrementalDecoder(model, cache, plan), selector,
                    extra, history, eos_ids, graph, check_every, order, request.step_replay, request.reused_cache)


def first_done(alive: torch.Tensor, steps: int) -> int:
    """The number of steps up to and including the first after which no row was alive (else steps)."""
    done = (~alive[:steps]).nonzero()
    return int(done[0, 0]) + 1 if done.numel() else steps
