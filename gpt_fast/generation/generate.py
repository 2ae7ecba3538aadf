"""generate(): transformers-compatible text generation over a static KV cache.

Same argument names, defaults and results as transformers' `generate` for a decoder-only model (greedy or
sampling; no beam search): returns the (B * num_return_sequences, T + new) sequences, or with
`return_dict_in_generate=True` a GenerateOutput holding them and the per-step `scores` (processed) and `logits`
(raw). Differences, all on purpose:
- each row's positions come from its own attention mask (position = real tokens before it), so a row of a padded
  batch (left- or right-padded) generates exactly what its prompt generates alone; transformers' OpenAIGPT uses
  0..T-1 for every row whatever the padding.
- one prefill pass, then one token per step through decode_attention over the cache (transformers re-runs the
  whole sequence per token for this model); on CUDA the step is a replayed CUDA graph and EOS is checked on the
  host only every `eos_check_interval` steps (default 16), so the loop never waits for the device otherwise.
- generation runs in inference mode without dropout, whatever model.training says.
- `seed=` (an int) or `generator=` (a torch.Generator on the model's device) make sampling reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt_fast.generation.decoder import CUDAGraphStep, IncrementalDecoder, use_cuda_graph
from gpt_fast.generation.kv_cache import StaticKVCache
from gpt_fast.generation.sampling import SamplingConfig, TokenSelector
from gpt_fast.models.outputs import ModelOutput
from gpt_fast.models.validation import check_ids_in_range, check_integer_tensor
from gpt_fast.ops.kernel_plan import plan_kernels

DEFAULT_NEW_TOKENS = 20  # transformers' GenerationConfig.max_length default, counted as new tokens (5.x)
GENERATE_KWARGS = (
    "max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample", "temperature", "top_k", "top_p",
    "repetition_penalty", "num_return_sequences", "eos_token_id", "pad_token_id", "generator", "seed", "streamer",
    "output_scores", "output_logits", "return_dict_in_generate", "use_cache", "cuda_graph", "eos_check_interval",
)


@dataclass
class GenerateOutput(ModelOutput):
    """As transformers' GenerateDecoderOnlyOutput: sequences (B, T + new); scores / logits: one (B, V) per step."""

    sequences: torch.Tensor = None
    scores: tuple | None = None
    logits: tuple | None = None


@dataclass(frozen=True)
class GenerationRequest:
    max_new_tokens: int
    sampling: SamplingConfig
    num_return_sequences: int
    eos_token_ids: tuple[int, ...] | None
    pad_token_id: int | None
    generator: torch.Generator | None
    streamer: object | None
    output_scores: bool
    output_logits: bool
    return_dict_in_generate: bool
    cuda_graph: bool | None
    eos_check_interval: int


# -- argument checks ----------------------------------------------------------------------------------------------
def _int(name, value, low, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _float(name, value, low, high, low_open=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (low < value if low_open else low <= value) or not value <= high:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def _bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _token_ids(name, value, vocab_size):
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    ids = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(ids, (list, tuple)) or not ids or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise TypeError(f"{name} must be a token id (int) or a non-empty list of them, got {value!r}")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"{name} {bad} lies outside the vocabulary [0, {vocab_size})")
    return tuple(ids)


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


def parse_generation_kwargs(model, prompt_length: int, kwargs: dict) -> GenerationRequest:
    """Checks every argument against transformers' rules and fills in their defaults."""
    unknown = sorted(set(kwargs) - set(GENERATE_KWARGS))
    if unknown:
        raise TypeError(f"generate() got unexpected arguments {unknown}; it takes {', '.join(GENERATE_KWARGS)}")
    config = model.config
    get = kwargs.get
    n_positions = config.n_positions
    max_new, max_length = _int("max_new_tokens", get("max_new_tokens"), 1), _int("max_length", get("max_length"), 1)
    if max_new is None and max_length is not None:
        if max_length <= prompt_length:
            raise ValueError(f"the prompt has {prompt_length} tokens but max_length is {max_length}: nothing to "
                             "generate; raise max_length or set max_new_tokens")
        max_new = max_length - prompt_length
    elif max_new is None:  # transformers: 20 new tokens, capped at the model's maximum length
        max_new = min(prompt_length + DEFAULT_NEW_TOKENS, n_positions) - prompt_length
    if prompt_length + max_new > n_positions:
        raise ValueError(f"the prompt ({prompt_length} tokens) plus {max_new} new tokens exceeds the model's "
                         f"maximum of n_positions={n_positions} tokens")
    min_new = _int("min_new_tokens", get("min_new_tokens"), 0)
    min_length = _int("min_length", get("min_length", 0), 0, allow_none=False)
    # transformers: min_new_tokens, when given, replaces min_length (min_length = prompt + min_new_tokens)
    eos_blocked_steps = min_new if min_new is not None else min_length - prompt_length

    do_sample = _bool("do_sample", get("do_sample", False))
    temperature = _float("temperature", get("temperature", 1.0), 0.0, float("inf"))
    top_k = _int("top_k", get("top_k", 50), 0) or 0
    top_p = _float("top_p", get("top_p", 1.0), 0.0, 1.0, low_open=False)
    penalty = _float("repetition_penalty", get("repetition_penalty", 1.0), 0.0, float("inf"))
    num_return = _int("num_return_sequences", get("num_return_sequences", 1), 1, allow_none=False)
    if num_return > 1 and not do_sample:
        raise ValueError(f"num_return_sequences={num_return} needs do_sample=True (greedy decoding gives one "
                         "sequence per prompt)")

    eos = _token_ids("eos_token_id", get("eos_token_id", config.eos_token_id), config.vocab_size)
    pad = _token_ids("pad_token_id", get("pad_token_id", config.pad_token_id), config.vocab_size)
    if pad is not None and len(pad) != 1:
        raise TypeError(f"pad_token_id must be a single token id, got {pad}")
    pad = pad[0] if pad is not None else (eos[0] if eos is not None else None)  # transformers: pad = eos

    generator, seed = get("generator"), get("seed")
    if generator is not None and seed is not None:
        raise ValueError("pass generator or seed, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != model.device.type:
            raise ValueError(f"generator is on {generator.device} but the model is on {model.device}")
    if seed is not None:
        _int("seed", seed, 0)
        generator = torch.Generator(model.device).manual_seed(seed)
    streamer = get("streamer")
    if streamer is not None and not all(callable(getattr(streamer, name, None)) for name in ("put", "end")):
        raise TypeError("streamer must have put(token_ids) and end() methods (like transformers' streamers)")
    if not get("use_cache", True):
        raise ValueError("use_cache=False is not supported: gpt_fast always decodes over its static KV cache")
    cuda_graph = get("cuda_graph")
    if cuda_graph is not None:
        _bool("cuda_graph", cuda_graph)

    sampling = SamplingConfig(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=penalty,
                              eos_blocked_steps=eos_blocked_steps)
    return GenerationRequest(
        max_new_tokens=max_new, sampling=sampling, num_return_sequences=num_return, eos_token_ids=eos,
        pad_token_id=pad, generator=generator, streamer=streamer,
        output_scores=_bool("output_scores", get("output_scores", False)),
        output_logits=_bool("output_logits", get("output_logits", False)),
        return_dict_in_generate=_bool("return_dict_in_generate", get("return_dict_in_generate", False)),
        cuda_graph=cuda_graph, eos_check_interval=_int("eos_check_interval", get("eos_check_interval", 16), 1))


def infer_attention_mask(input_ids, request: GenerationRequest):
    """transformers' rule: padding = pad_token_id when it occurs in the prompt and differs from EOS."""
    pad, eos = request.pad_token_id, request.eos_token_ids
    if pad is None or (eos is not None and pad in eos) or not bool((input_ids == pad).any()):
        return None
    mask = (input_ids != pad).long()
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a prompt row holds only pad_token_id; pass an attention_mask")
    return mask


# -- the loop -----------------------------------------------------------------------------------------------------
@torch.inference_mode()
def generate(model, input_ids=None, attention_mask=None, **kwargs):
    """Generates continuations of input_ids (B, T). See the module docstring; arguments as transformers'.
    The model runs in eval mode (no dropout) for the call and gets its own mode back afterwards."""
    if not (hasattr(model, "transformer") and hasattr(model, "lm_head")):
        raise TypeError(f"generate needs a language model with an LM head, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        return _generate(model, input_ids, attention_mask, kwargs)
    finally:
        model.train(was_training)


def _generate(model, input_ids, attention_mask, kwargs: dict):
    input_ids, attention_mask = check_prompt(model, input_ids, attention_mask)
    request = parse_generation_kwargs(model, input_ids.shape[1], kwargs)
    if attention_mask is None:
        attention_mask = infer_attention_mask(input_ids, request)
    if request.num_return_sequences > 1:
        input_ids = input_ids.repeat_interleave(request.num_return_sequences, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(request.num_return_sequences, dim=0)

    device, config = input_ids.device, model.config
    B, T = input_ids.shape
    max_new = request.max_new_tokens
    if attention_mask is None:
        packed, lengths, all_full = input_ids, torch.full((B,), T, dtype=torch.long, device=device), True
    else:  # each row's real tokens first, in order: the cache then holds no padding
        order = torch.argsort((attention_mask == 0).to(torch.int8), dim=1, stable=True)  # (B, T)
        packed, lengths, all_full = input_ids.gather(1, order), attention_mask.sum(dim=1), False

    graph = use_cuda_graph(device, request.cuda_graph)  # raises if cuda_graph=True cannot be honoured
    plan = plan_kernels(model.attn_implementation, device, model.dtype)  # no dropout, no gradients
    cache = StaticKVCache(config.n_layer, B, config.n_head, T + max_new, config.n_embd // config.n_head,
                          model.dtype, device)
    decoder = IncrementalDecoder(model, cache, plan)
    eos_ids = None if request.eos_token_ids is None else torch.tensor(request.eos_token_ids, device=device)
    selector = TokenSelector(request.sampling, eos_ids, B, config.vocab_size, device, request.generator)
    selector.add_prompt(packed, lengths)

    generated = torch.full((B, max_new), request.pad_token_id or 0, dtype=torch.long, device=device)  # (B, N)
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    alive = torch.ones(max_new, dtype=torch.bool, device=device)  # alive[s]: a row is unfinished after step s
    streamer = request.streamer
    if streamer is not None:
        streamer.put(input_ids.cpu())
    logits = decoder.prefill(packed, lengths, all_full)  # (B, V) float32
    step_fn = None  # made after the first token is out, so a CUDA graph capture does not delay it
    check_every = request.eos_check_interval if device.type == "cuda" else 1
    scores_out, logits_out, steps = [], [], 0
    for step in range(max_new):
        if request.output_logits:
            logits_out.append(logits.clone())
        scores = selector.process(logits, step)
        if request.output_scores:
            scores_out.append(scores.clone())
        tokens = selector.select(scores)  # (B,)
        if eos_ids is not None:
            tokens = torch.where(unfinished, tokens, request.pad_token_id)
            unfinished &= ~torch.isin(tokens, eos_ids)
            alive[step] = unfinished.any()
        generated[:, step] = tokens
        selector.add_tokens(tokens)
        steps = step + 1
        if streamer is not None:
            streamer.put(tokens.cpu())
        if eos_ids is not None and (steps % check_every == 0 or streamer is not None) and not bool(alive[step]):
            break
        if steps < max_new:
            if step_fn is None:
                step_fn = CUDAGraphStep(decoder, B) if graph else decoder.step
            logits = step_fn(tokens)
    if eos_ids is not None and steps > 0:  # deferred checks: keep up to the step where every row had finished
        done = (~alive[:steps]).nonzero()
        if done.numel():
            steps = int(done[0, 0]) + 1
    if streamer is not None:
        streamer.end()
    sequences = torch.cat([input_ids, generated[:, :steps]], dim=1)  # (B, T + steps)
    if not request.return_dict_in_generate:
        return sequences
    return GenerateOutput(sequences=sequences,
                          scores=tuple(scores_out[:steps]) if request.output_scores else None,
                          logits=tuple(logits_out[:steps]) if request.output_logits else None)
