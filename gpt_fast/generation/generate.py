"""generate(): transformers-compatible text generation over a static KV cache.

Same argument names, defaults and results as transformers' `generate` for a decoder-only model (greedy, sampling,
or beam search in beam_search.py): returns the (B * num_return_sequences, T + new) sequences, or with
`return_dict_in_generate=True` a GenerateOutput holding them and the per-step `scores` (processed) and `logits`
(raw), and `attentions` / `hidden_states` when asked. Arguments are checked in arguments.py; keyword arguments
override `generation_config=`'s set fields, which override model.generation_config's, as in transformers 5.x.
Differences, all on purpose:
- each row's positions come from its own attention mask (position = real tokens before it), so a row of a padded
  batch (left- or right-padded) generates exactly what its prompt generates alone; transformers' OpenAIGPT uses
  0..T-1 for every row whatever the padding.
- one prefill pass, then one token per step through decode_attention over the cache (transformers re-runs the
  whole sequence per token for this model); on CUDA the step is a replayed CUDA graph and EOS is checked on the
  host only every `eos_check_interval` steps (default 16; on other devices every step unless it is passed), so
  the loop never waits for the device otherwise.
- generation runs in inference mode without dropout, whatever model.training says.
- `seed=` (an int) or `generator=` (a torch.Generator on the model's device) make sampling reproducible.
- `prompt_lookup_num_tokens=N` or `assistant_model=small_model` (one sequence): speculative decoding, drafts copied
  from the text (prompt_lookup.py) or decoded by the smaller model (assistant.py), verified several tokens a pass
  (speculative.py); the tokens are those of the one-token loop.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from gpt_fast.generation.arguments import GENERATE_KWARGS, GenerationRequest, parse_generation_kwargs
from gpt_fast.generation.assistant import AssistantDrafter
from gpt_fast.generation.beam_search import beam_search
from gpt_fast.generation.config import as_generation_config
from gpt_fast.generation.inspection import step_outputs
from gpt_fast.generation.kv_cache import CacheOutputMixin, StaticKVCache
from gpt_fast.generation.prepared import first_done, prepare
from gpt_fast.generation.processors import stop_flags
from gpt_fast.generation.prompt_checks import check_prompt, check_token_type_ids, infer_attention_mask
from gpt_fast.generation.prompt_lookup import PromptLookupDrafter
from gpt_fast.generation.replayed_step import ReplayedExtend
from gpt_fast.generation.speculative import speculative_decode
from gpt_fast.models.outputs import ModelOutput

__all__ = ["GENERATE_KWARGS", "GenerateOutput", "GenerationRequest", "generate", "parse_generation_kwargs"]


@dataclass
class GenerateOutput(CacheOutputMixin, ModelOutput):
    """As transformers' GenerateDecoderOnlyOutput: sequences (B, T + new); scores / logits: one (B, V) per step;
    attentions / hidden_states: per step, the model's per-layer tuples over the sequence so far; cache (alias
    past_key_values): the request's StaticKVCache (kv_cache.py) unless use_cache=False."""

    sequences: torch.Tensor = None
    scores: tuple | None = None
    logits: tuple | None = None
    attentions: tuple | None = None
    hidden_states: tuple | None = None
    cache: StaticKVCache | None = None


# -- the loop -----------------------------------------------------------------------------------------------------
@torch.inference_mode()
def generate(model, input_ids=None, attention_mask=None, generation_config=None, **kwargs):
    """Generates continuations of input_ids (B, T). See the module docstring; arguments as transformers'.
    The model runs in eval mode (no dropout) for the call and gets its own mode back afterwards. It runs in the
    model's dtype: an enclosing torch.autocast region does not apply (the KV cache and the decode kernels hold the
    model's dtype; to generate in bfloat16, convert the model with .to(torch.bfloat16))."""
    if not (hasattr(model, "transformer") and hasattr(model, "lm_head")):
        raise TypeError(f"generate needs a language model with an LM head, got {type(model).__name__}")
    if "inputs" in kwargs:  # transformers' name of the prompt
        if input_ids is not None:
            raise ValueError("pass the prompt as input_ids or inputs, not both")
        input_ids = kwargs.pop("inputs")
    kwargs = merge_generation_config(model, generation_config, kwargs)
    with eval_modes(model, kwargs.get("assistant_model")), torch.autocast(model.device.type, enabled=False):
        return _generate(model, input_ids, attention_mask, kwargs)


@contextlib.contextmanager
def eval_modes(*models):
    """The models (those that are nn.Modules; others are left to the argument checks) in eval mode inside, each of
    their modules back in its own mode afterwards."""
    models = [m for m in models if isinstance(m, torch.nn.Module)]
    modes = [(module, module.training) for m in models for module in m.modules()]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def merge_generation_config(model, generation_config, kwargs: dict) -> dict:
    """As transformers 5.x: kwargs > generation_config's set fields > model.generation_config's > global defaults."""
    if generation_config is not None:
        generation_config = as_generation_config(generation_config, "generation_config")
    model_config = getattr(model, "generation_config", None)
    merged = {} if model_config is None else model_config.generate_kwargs()
    if generation_config is not None:
        merged.update(generation_config.generate_kwargs())
    return {**merged, **kwargs}


def _generate(model, input_ids, attention_mask, kwargs: dict):
    input_ids, attention_mask = check_prompt(model, input_ids, attention_mask)
    types = check_token_type_ids(model, kwargs.pop("token_type_ids", None), input_ids)
    request = parse_generation_kwargs(model, input_ids.shape[1], kwargs)
    if types is not None and request.reused_cache is not None:
        raise NotImplementedError("past_key_values with token_type_ids is not supported: pass the whole sequence")
    if attention_mask is None:
        attention_mask = infer_attention_mask(input_ids, request)
    if request.num_beams > 1:

        return beam_search(model, input_ids, attention_mask, types, request)
    rows = request.num_return_sequences
    if types is not None and rows > 1:
        types = types.repeat_interleave(rows, dim=0)
    p = prepare(model, input_ids, attention_mask, request, rows)
    input_ids, selector, eos_ids = p.input_ids, p.selector, p.eos_ids
    B, T = input_ids.shape
    speculative = request.prompt_lookup_num_tokens is not None or request.assistant is not None
    if speculative and B != 1:
        name = "assistant_model" if request.assistant is not None else "prompt_lookup_num_tokens"
        raise ValueError(f"{name} needs one sequence (batch size 1, one returned sequence), got {B} rows; "
                         "transformers' assisted generation has the same rule")
    max_new = request.max_new_tokens
    generated = torch.full((B, max_new), request.pad_token_id or 0, dtype=torch.long, device=input_ids.device)
    unfinished = torch.ones(B, dtype=torch.bool, device=input_ids.device)
    alive = torch.ones(max_new, dtype=torch.bool, device=input_ids.device)  # alive[s]: a row unfinished after step s
    criteria = request.stopping_criteria
    tracking = eos_ids is not None or bool(criteria)
    streamer = request.streamer
    if streamer is not None:
        streamer.put(input_ids.cpu())
    logits = p.first_logits(types, attention_mask is None)  # (B, V) float32
    scores_out, logits_out = [], []

    def emit(logits: torch.Tensor, step: int) -> torch.Tensor:  # logits (B, V) -> the step's tokens (B,), recorded
        nonlocal unfinished
        if request.output_logits:
            logits_out.append(logits.clone())
        scores = selector.process(logits, step, p.extra,
                                  lambda s=step: torch.cat([input_ids, generated[:, :s]], dim=1))
        if request.output_scores:
            scores_out.append(scores.clone())
        tokens = selector.select(scores)  # (B,)
        if eos_ids is not None:
            tokens = torch.where(unfinished, tokens, request.pad_token_id)
            unfinished &= ~torch.isin(tokens, eos_ids)
        generated[:, step] = tokens
        if criteria:
            so_far = tuple(scores_out) if request.output_scores and request.return_dict_in_generate else None
            unfinished &= ~stop_flags(criteria, torch.cat([input_ids, generated[:, :step + 1]], dim=1), so_far)
        if tracking:
            alive[step] = unfinished.any()
        selector.add_tokens(tokens)
        if p.history is not None:
            p.history.append(tokens)
        if streamer is not None:
            streamer.put(tokens.cpu())
        return tokens

    if speculative and max_new > 0:
        prompt = p.packed[:, :int(p.lengths[0])]  # (1, L) the real tokens
        tokens = emit(logits, 0)
        drafter = make_drafter(request, prompt, T + max_new)
        step = p.decoder.step if p.graph else p.step_function(1)  # no CUDA graph beside passes of several tokens
        extend = ReplayedExtend(p.decoder, enabled=not p.graph and p.step_replay is not False)
        steps = speculative_decode(p.decoder, step, extend, tokens, prompt[0].tolist() + [int(tokens[0])], 1,
                                   max_new, drafter, emit, lambda s: tracking and not bool(alive[s]))
        if request.assistant is not None:
            drafter.finish()
    else:
        steps = decode_one_by_one(p, emit, logits, max_new, tracking, alive, streamer is not None)
    selector.check_valid()
    if tracking and steps > 0:  # deferred checks: keep up to the step where every row had finished
        steps = first_done(alive, steps)
    if streamer is not None:
        streamer.end()
    sequences = torch.cat([input_ids, generated[:, :steps]], dim=1)  # (B, T + steps)
    if not request.return_dict_in_generate:
        return sequences

    attentions, hidden = step_outputs(model, request, [sequences[:, :T + s] for s in range(steps)],
                                      p.attention_mask, types)
    return GenerateOutput(sequences=sequences,
                          scores=tuple(scores_out[:steps]) if request.output_scores else None,
                          logits=tuple(logits_out[:steps]) if request.output_logits else None,
                          attentions=attentions, hidden_states=hidden,
                          cache=p.decoder.cache if request.use_cache else None)


def make_drafter(request, prompt: torch.Tensor, capacity: int):
    """The draft source of a speculative request (speculative.py): prompt lookup or the assistant model."""
    if request.assistant is None:
        return PromptLookupDrafter(request.prompt_lookup_num_tokens, request.max_matching_ngram_size)
    replay = request.step_replay is not False
    return AssistantDrafter(request.assistant, prompt, capacity, request.eos_token_ids, replay)


def decode_one_by_one(p, emit, logits: torch.Tensor, max_new: int, tracking: bool, alive: torch.Tensor,
                      streaming: bool) -> int:
    """The plain loop: one token per step (a replayed CUDA graph where p.graph), EOS read on the host every
    p.check_every steps (every step with a streamer). Returns the number of steps run."""
    step_fn = None  # made after the first token is out, so a CUDA graph capture does not delay it
    steps = 0
    for step in range(max_new):
        tokens = emit(logits, step)
        steps = step + 1
        if (tracking and steps % p.check_every == 0) or streaming:  # where the loop syncs anyway
            p.selector.check_valid()
            if tracking and not bool(alive[step]):
                break
        if steps < max_new:
            if step_fn is None:
                step_fn = p.step_function(tokens.shape[0])
            logits = step_fn(tokens)
    return steps
