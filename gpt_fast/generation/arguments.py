"""generate()'s arguments: checked against transformers' rules, with transformers' defaults, into one
GenerationRequest. A GenerationConfig (generation/config.py) supplies defaults that keyword arguments override."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt_fast.generation.assistant import AssistantSettings, assistant_settings
from gpt_fast.generation.kv_cache import StaticKVCache
from gpt_fast.generation.processors import MaxTimeCriteria
from gpt_fast.generation.sampling import SamplingConfig
from gpt_fast.generation.stop_strings import StopStringCriteria
from gpt_fast.generation.watermark import watermark_settings

# transformers' arguments that choose how it runs, not what it computes; gpt_fast has one static KV cache and
# decides compilation itself (checked by _no_effect: values transformers would refuse, or would compute otherwise
# with, are refused)
NO_EFFECT_KWARGS = ("low_memory", "cache_implementation", "compile_config", "disable_compile", "synced_gpus",
                    "position_ids")  # the last: None only
# past_key_values (a StaticKVCache to continue from: cache_reuse.py) is checked by refusal() too
SAME_RESULT_CACHES = (None, "dynamic", "static", "offloaded", "offloaded_static", "sliding_window", "hybrid")
DEFAULT_NEW_TOKENS = 20  # transformers' GenerationConfig.max_length default, counted as new tokens (5.x)
GENERATE_KWARGS = (
    "max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample", "temperature", "top_k", "top_p",
    "repetition_penalty", "num_return_sequences", "eos_token_id", "pad_token_id", "generator", "seed", "streamer",
    "output_scores", "output_logits", "return_dict_in_generate", "use_cache", "cuda_graph", "step_replay",
    "eos_check_interval",
    "num_beams", "length_penalty", "early_stopping", "no_repeat_ngram_size", "bad_words_ids",
    "remove_invalid_values", "logits_processor", "stopping_criteria", "output_attentions", "output_hidden_states",
    "token_type_ids", "stop_strings", "tokenizer", "prompt_lookup_num_tokens", "max_matching_ngram_size",
    "sequence_bias", "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
    "renormalize_logits", "max_time", "watermarking_config", "top_h", "encoder_repetition_penalty",
    "prefix_allowed_tokens_fn", "assistant_model", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "assistant_confidence_threshold", "past_key_values", *NO_EFFECT_KWARGS,
)


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
    eos_check_interval: int | None  # None: 16 on CUDA, every step elsewhere
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    remove_invalid_values: bool = False
    logits_processor: tuple = ()
    stopping_criteria: tuple = ()
    output_attentions: bool = False
    output_hidden_states: bool = False
    use_cache: bool = True  # False gives the same tokens (the cache is how gpt_fast decodes) but returns no cache
    prompt_lookup_num_tokens: int | None = None  # draft tokens per verification (prompt_lookup.py), None = off
    max_matching_ngram_size: int = 2  # longest n-gram the prompt lookup matches (transformers' default)
    assistant: AssistantSettings | None = None  # assisted decoding's draft model and settings (assistant.py)
    step_replay: bool | None = None  # decode steps re-run from their recorded operators (replayed_step.py); None: auto
    sequence_bias: tuple = ()  # ((token ids, ...), bias) pairs
    forced_bos_token_id: int | None = None
    forced_eos_token_ids: tuple[int, ...] | None = None
    exponential_decay: tuple[int, float] | None = None  # (start, factor): EOS boosted after `start` new tokens
    suppress_tokens: tuple[int, ...] | None = None
    begin_suppress_tokens: tuple[int, ...] | None = None
    watermark: dict | None = None  # watermarking_config's checked fields (watermark.py)
    encoder_repetition_penalty: float = 1.0  # the prompt's tokens made more likely (processors.py); 1.0 = off
    prefix_allowed_tokens_fn: object | None = None  # fn(batch index, sequence so far) -> allowed token ids
    reused_cache: object | None = None  # past_key_values: a StaticKVCache to continue from (cache_reuse.py)


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


def _bad_words(value, vocab_size, eos):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(w, (list, tuple)) for w in value):
        raise TypeError(f"bad_words_ids must be a non-empty list of lists of token ids, got {value!r}")
    words = tuple(_token_ids("bad_words_ids", list(w), vocab_size) for w in value)
    return tuple(w for w in words if not (len(w) == 1 and eos is not None and w[0] in eos)) or None  # as transformers


def _sequence_bias(value, vocab_size) -> tuple:
    """transformers' forms: {(ids, ...): bias} or [[[ids, ...], bias], ...] -> ((ids, ...), bias) pairs."""
    if value is None:
        return ()
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, (list, tuple)) or not pairs or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], (list, tuple))
            and isinstance(pair[1], (int, float)) and not isinstance(pair[1], bool) for pair in pairs):
        raise TypeError("sequence_bias must be a non-empty dict {(token ids): bias} or list [[[token ids], bias]], "
                        f"got {value!r}")
    return tuple((_token_ids("sequence_bias", list(ids), vocab_size), float(bias)) for ids, bias in pairs)


def _exponential_decay(value, eos):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError(f"exponential_decay_length_penalty must be (start_index, decay_factor), got {value!r}")
    if eos is None:
        raise ValueError("exponential_decay_length_penalty raises the EOS scores: it needs an eos_token_id")
    return _int("exponential_decay_length_penalty's start_index", value[0], 0), _float(
        "exponential_decay_length_penalty's decay_factor", value[1], float("-inf"), float("inf"))


def _callables(name, value, signature):
    if value is None:
        return ()
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not all(callable(item) for item in items):
        raise TypeError(f"{name} must be a list of callables {signature}, got {value!r}")
    return tuple(items)


def _stopping_criteria(get) -> tuple:
    """The caller's stopping_criteria, then max_time's and the stop_strings' (transformers': stop_strings need
    tokenizer=)."""
    criteria = _callables("stopping_criteria", get("stopping_criteria"), "criteria(input_ids, scores)")
    if get("max_time") is not None:
        criteria += (MaxTimeCriteria(_float("max_time", get("max_time"), 0.0, float("inf"), low_open=False)),)
    if get("stop_strings") is not None:
        criteria += (StopStringCriteria(get("tokenizer"), get("stop_strings")),)
    return criteria


def _lengths(get, prompt_length, n_positions):
    max_new, max_length = _int("max_new_tokens", get("max_new_tokens"), 1), _int("max_length", get("max_length"), 1)
    if prompt_length > n_positions:
        raise ValueError(f"the prompt has {prompt_length} tokens, more than the model's n_positions={n_positions}")
    if max_new is None and max_length is not None:
        if max_length <= prompt_length:
            raise ValueError(f"the prompt has {prompt_length} tokens but max_length is {max_length}: nothing to "
                             "generate; raise max_length or set max_new_tokens")
        max_new = max_length - prompt_length
    elif max_new is None:  # transformers: 20 new tokens, the total capped at the model's n_positions
        max_new = min(prompt_length + DEFAULT_NEW_TOKENS, n_positions) - prompt_length
        if max_new == 0:  # transformers raises here too (its max_length equals the prompt length)
            raise ValueError(f"the prompt has {prompt_length} tokens, the model's maximum (n_positions): the default "
                             "max_length leaves nothing to generate; set max_new_tokens")
    # the last new token is never fed back, so it needs no position: prompt + new may reach n_positions + 1
    if prompt_length + max_new > n_positions + 1:
        raise ValueError(f"the prompt ({prompt_length} tokens) plus {max_new} new tokens exceeds the model's "
                         f"maximum of n_positions={n_positions} tokens (+ the last new token, never fed back)")
    return max_new


def parse_generation_kwargs(model, prompt_length: int, kwargs: dict) -> GenerationRequest:
    """Checks every argument against transformers' rules and fills in their defaults."""
    unknown = sorted(set(kwargs) - set(GENERATE_KWARGS))
    if unknown:
        raise TypeError(f"generate() got unexpected arguments {unknown}; it takes {', '.join(GENERATE_KWARGS)}")
    config = model.config
    get = kwargs.get
    _no_effect(get)
    max_new = _lengths(get, prompt_length, config.n_positions)
    min_new = _int("min_new_tokens", get("min_new_tokens"), 0)
    min_length = _int("min_length", get("min_length", 0), 0, allow_none=False)
    # transformers: min_new_tokens, when given, replaces min_length (min_length = prompt + min_new_tokens)
    eos_blocked_steps = min_new if min_new is not None else min_length - prompt_length

    do_sample = _bool("do_sample", get("do_sample", False))
    temperature = _float("temperature", get("temperature", 1.0), 0.0, float("inf"))
    top_k = _int("top_k", get("top_k", 50), 0) or 0
    top_p = _float("top_p", get("top_p", 1.0), 0.0, 1.0, low_open=False)
    penalty = _float("repetition_penalty", get("repetition_penalty", 1.0), 0.0, float("inf"))
    num_beams = _int("num_beams", get("num_beams", 1), 1, allow_none=False)
    num_return = _int("num_return_sequences", get("num_return_sequences", 1), 1, allow_none=False)
    if num_beams > 1:
        if num_return > num_beams:
            raise ValueError(f"num_return_sequences={num_return} must be <= num_beams={num_beams}")
        if get("streamer") is not None:
            raise ValueError("streamer cannot be used with beam search (num_beams > 1), as in transformers")
    elif num_return > 1 and not do_sample:
        raise ValueError(f"num_return_sequences={num_return} needs do_sample=True or num_beams >= "
                         f"{num_return} (greedy decoding gives one sequence per prompt)")
    length_penalty = _float("length_penalty", get("length_penalty", 1.0), float("-inf"), float("inf"))
    early_stopping = get("early_stopping", False)
    if early_stopping not in (True, False, "never") or not isinstance(early_stopping, (bool, str)):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    ngram = _int("no_repeat_ngram_size", get("no_repeat_ngram_size", 0), 0, allow_none=False)

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
    cuda_graph = get("cuda_graph")
    if cuda_graph is not None:
        _bool("cuda_graph", cuda_graph)
    lookup = _int("prompt_lookup_num_tokens", get("prompt_lookup_num_tokens"), 1)
    ngram_size = _int("max_matching_ngram_size", get("max_matching_ngram_size"), 1)
    assistant = assistant_settings(model, get, prompt_length + max_new - 1)
    if lookup is not None and assistant is not None:
        raise ValueError("pass prompt_lookup_num_tokens or assistant_model (two sources of draft tokens), not both")
    speculating = "prompt_lookup_num_tokens" if lookup is not None else "assistant_model" if assistant else None
    if speculating and num_beams > 1:
        raise ValueError(f"{speculating} cannot be used with beam search (num_beams > 1), as in transformers")
    step_replay = get("step_replay")
    if step_replay is not None:
        _bool("step_replay", step_replay)
    if step_replay and cuda_graph:
        raise ValueError("step_replay=True and cuda_graph=True both choose how decode steps run; pass one")
    if speculating and cuda_graph:
        raise ValueError(f"{speculating} runs without a CUDA graph (its steps change length); drop cuda_graph=True")

    # transformers: beam sampling keeps at least one token more than there are EOS ids (2 without EOS) in top-k/p
    keep = (len(eos) + 1 if eos is not None else 2) if num_beams > 1 else 1
    min_p = get("min_p")
    sampling = SamplingConfig(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=penalty, eos_blocked_steps=eos_blocked_steps,
                              min_tokens_to_keep=keep,
                              min_p=0.0 if min_p is None else _float("min_p", min_p, 0.0, 1.0, low_open=False),
                              typical_p=_float("typical_p", get("typical_p", 1.0), 0.0, 1.0),
                              epsilon_cutoff=_cutoff("epsilon_cutoff", get("epsilon_cutoff", 0.0)),
                              eta_cutoff=_cutoff("eta_cutoff", get("eta_cutoff", 0.0)),
                              renormalize=_bool("renormalize_logits", get("renormalize_logits", False)),
                              top_h=0.0 if get("top_h") is None else _float("top_h", get("top_h"), 0.0, 1.0))
    forced_bos = _token_ids("forced_bos_token_id", get("forced_bos_token_id"), config.vocab_size)
    if forced_bos is not None and len(forced_bos) != 1:
        raise TypeError(f"forced_bos_token_id must be a single token id, got {forced_bos}")
    return GenerationRequest(
        max_new_tokens=max_new, sampling=sampling, num_return_sequences=num_return, eos_token_ids=eos,
        pad_token_id=pad, generator=generator, streamer=streamer,
        output_scores=_bool("output_scores", get("output_scores", False)),
        output_logits=_bool("output_logits", get("output_logits", False)),
        return_dict_in_generate=_bool("return_dict_in_generate", get("return_dict_in_generate", False)),
        cuda_graph=cuda_graph, eos_check_interval=_int("eos_check_interval", get("eos_check_interval"), 1),
        num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
        no_repeat_ngram_size=ngram, bad_words_ids=_bad_words(get("bad_words_ids"), config.vocab_size, eos),
        remove_invalid_values=_bool("remove_invalid_values", get("remove_invalid_values", False)),
        logits_processor=_callables("logits_processor", get("logits_processor"), "processor(input_ids, scores)"),
        stopping_criteria=_stopping_criteria(get), watermark=watermark_settings(get("watermarking_config")),
        output_attentions=_bool("output_attentions", get("output_attentions", False)),
        output_hidden_states=_bool("output_hidden_states", get("output_hidden_states", False)),
        use_cache=_bool("use_cache", get("use_cache", True)), prompt_lookup_num_tokens=lookup,
        max_matching_ngram_size=2 if ngram_size is None else ngram_size, assistant=assistant, step_replay=step_replay,
        sequence_bias=_sequence_bias(get("sequence_bias"), config.vocab_size),
        forced_bos_token_id=None if forced_bos is None else forced_bos[0],
        forced_eos_token_ids=_token_ids("forced_eos_token_id", get("forced_eos_token_id"), config.vocab_size),
        exponential_decay=_exponential_decay(get("exponential_decay_length_penalty"), eos),
        suppress_tokens=_token_list("suppress_tokens", get("suppress_tokens"), config.vocab_size),
        begin_suppress_tokens=_token_list("begin_suppress_tokens", get("begin_suppress_tokens"), config.vocab_size),
        encoder_repetition_penalty=_float("encoder_repetition_penalty", get("encoder_repetition_penalty", 1.0), 0.0,
                                          float("inf")),
        prefix_allowed_tokens_fn=_callable("prefix_allowed_tokens_fn", get("prefix_allowed_tokens_fn")),
        reused_cache=get("past_key_values"))


def _callable(name, value):
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a function (batch index, input_ids) -> allowed token ids, got {value!r}")
    return value


def refusal(get) -> Exception | None:
    """The error for a NO_EFFECT_KWARGS value gpt_fast refuses where transformers honours it (ZeRO-3's synced
    steps, a quantized cache), or a past_key_values that is not a gpt_fast cache (patching/generate.py hands such
    calls to transformers' generate), else None."""
    if get("synced_gpus"):
        return NotImplementedError("synced_gpus=True (generation with ZeRO-3 / FSDP-sharded weights over several "
                                   "processes) is not supported by gpt_fast: generate on one process's whole model")
    if get("cache_implementation") not in SAME_RESULT_CACHES:
        return ValueError(f"cache_implementation={get('cache_implementation')!r}: gpt_fast decodes with its own "
                          f"static KV cache, which gives the results of {SAME_RESULT_CACHES[1:]}; a quantized cache "
                          "(which would change them) is not supported")
    if get("past_key_values") is not None and not isinstance(get("past_key_values"), StaticKVCache):
        return TypeError(f"past_key_values must be the cache a gpt_fast generate() returned (output.cache), got "
                         f"{type(get('past_key_values')).__name__}; or pass the whole sequence as input_ids")
    if get("position_ids") is not None:
        return NotImplementedError("position_ids: gpt_fast's generate numbers each row's tokens from 0, skipping "
                                   "padding (as transformers does from the attention mask); other positions are "
                                   "not supported")
    return None


def _no_effect(get) -> None:
    """NO_EFFECT_KWARGS: checked, then dropped."""
    error = refusal(get)
    if error is not None:
        raise error
    for name in ("low_memory", "disable_compile", "synced_gpus"):
        if get(name) is not None:
            _bool(name, get(name))


def _token_list(name, value, vocab_size):
    """Token ids, where an empty list means none (transformers' processor then suppresses nothing)."""
    return None if isinstance(value, (list, tuple)) and not value else _token_ids(name, value, vocab_size)


def _cutoff(name, value) -> float:
    """epsilon_cutoff / eta_cutoff: 0 is off, as in transformers; otherwise inside (0, 1)."""
    value = _float(name, value, 0.0, 1.0, low_open=False)
    if value == 1.0:
        raise ValueError(f"{name} must lie in [0, 1) (0: off), got {value}")
    return value
