"""generate_batch(): transformers' continuous-batching call (`model.generate_batch(inputs, generation_config,
max_new_tokens=...)`) run by gpt_fast's serving engine (engine.py) on the calling thread.

Each prompt (a list of token ids) and each of its num_return_sequences is one engine sequence; they join the decode
batch as slots free up, up to `max_batch` at a time. The result is transformers' shape: a dict from request id to an
output with `generated_tokens` (EOS included when it ended the sequence), in the order transformers returns them
(prompt i is "req_i"; its extra sequences "req_i__child#j" come first, then "req_i"). Greedy tokens equal
generate()'s for each prompt alone.

The generation settings are generate()'s (keyword arguments over generation_config over model.generation_config,
checked by the same rules); the engine selects with max_new_tokens / max_length, do_sample, temperature (up to 2,
the server's range), top_k, top_p, min_p, eos_token_id, num_return_sequences and seed (sequence j of a prompt draws
from seed + j). A setting that would change the tokens otherwise (beam search, repetition_penalty, processors,
min_length, ...) is a NotImplementedError naming it. Speculative decoding (prompt_lookup_num_tokens, or
assistant_model with its settings) runs as the server runs it, for every decoding row (serving/speculation.py).
`continuous_batching_config.return_logprobs=True` gives each token's log-probability under the model's raw
distribution (transformers' is the processed one; the same for greedy decoding without processors). A sequence that
fails raises a RuntimeError after the run (transformers logs it and returns the failed output).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gpt_fast.generation.arguments import GENERATE_KWARGS, NO_EFFECT_KWARGS, parse_generation_kwargs
from gpt_fast.generation.config import DEFAULTS
from gpt_fast.generation.generate import eval_modes, merge_generation_config
from gpt_fast.serving.engine import Engine
from gpt_fast.serving.errors import ServingError
from gpt_fast.serving.params import SamplingParams

# generate() arguments the engine honours; the others must be unset or at their default
ENGINE_ARGS = ("max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "min_p", "eos_token_id",
               "pad_token_id", "num_return_sequences", "seed", "use_cache", *NO_EFFECT_KWARGS)
NO_EFFECT = ("persistent_manager", "warmup")  # transformers' options for its own manager and CUDA graphs
# speculative decoding, for the engine's rounds over every decoding row (serving/speculation.py)
SPECULATION_ARGS = ("prompt_lookup_num_tokens", "max_matching_ngram_size", "assistant_model", "num_assistant_tokens",
                    "assistant_confidence_threshold", "num_assistant_tokens_schedule")


@dataclass
class BatchOutput:
    """One sequence's result, with the fields of transformers' continuous-batching GenerationOutput."""

    request_id: str
    prompt_ids: list[int]
    generated_tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # with continuous_batching_config.return_logprobs
    error: str | None = None
    status: str = "pending"  # "finished" or "failed" once done
    created_time: float = field(default_factory=time.perf_counter)
    lifespan: tuple[float, float] = (-1.0, -1.0)  # (first token, end), perf_counter seconds
    timestamps: list[float] | None = None  # each token's perf_counter time, with record_timestamps=True

    def is_finished(self) -> bool:
        return self.status in ("finished", "failed")

    def add(self, output, record_timestamps: bool) -> bool:
        """Takes an engine Output of this sequence; True when it ended the sequence."""
        now = time.perf_counter()
        if not self.generated_tokens and output.tokens:
            self.lifespan = (now, -1.0)
        self.generated_tokens.extend(output.tokens)
        self.logprobs.extend(choice.logprob for choice in output.logprobs)
        if record_timestamps:
            self.timestamps = self.timestamps if self.timestamps is not None else []
            self.timestamps.extend([now] * len(output.tokens))
        if output.finish_reason is None:
            return False
        self.status = "failed" if output.finish_reason == "error" else "finished"
        self.error, self.lifespan = output.error, (self.lifespan[0], now)
        return True


def generate_batch(model, inputs, generation_config=None, continuous_batching_config=None,
                   record_timestamps: bool = False, progress_bar: bool = False, max_batch: int = 16,
                   **kwargs) -> dict[str, BatchOutput]:
    for name in NO_EFFECT:
        kwargs.pop(name, None)
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer (sequences decoded together), got {max_batch!r}")
    prompts = _prompts(inputs)
    if not prompts:
        return {}
    kwargs = merge_generation_config(model, generation_config, kwargs)
    speculation = speculation_settings(kwargs)
    refuse_unsupported(kwargs)
    logprobs = 0 if getattr(continuous_batching_config, "return_logprobs", False) else None
    requests = [(prompt, sampling_params(model, prompt, kwargs, logprobs)) for prompt in prompts]
    n = requests[0][1][1]
    ids = [[f"req_{i}"] + [f"req_{i}__child#{j}" for j in range(n - 1)] for i in range(len(requests))]  # by index
    # id -> BatchOutput, in transformers' order: a prompt's extra sequences, then its own
    outputs = {key: BatchOutput(key, list(prompt)) for prompt, keys in zip(prompts, ids) for key in keys[1:] + keys[:1]}
    _run(model, requests, ids, outputs, max_batch, record_timestamps, progress_bar, speculation)
    failed = {key: out.error for key, out in outputs.items() if out.status == "failed"}
    if failed:
        raise RuntimeError(f"generate_batch: {len(failed)} of {len(outputs)} sequences failed: {failed}")
    return outputs


def _prompts(inputs) -> list[list[int]]:
    if not isinstance(inputs, (list, tuple)) or any(not isinstance(p, (list, tuple)) for p in inputs):
        raise TypeError("generate_batch takes a list of prompts, each a list of token ids (as transformers'), got "
                        f"{type(inputs).__name__}")
    for i, prompt in enumerate(inputs):
        if not prompt or any(not isinstance(t, int) or isinstance(t, bool) for t in prompt):
            raise ValueError(f"prompt {i} must be a non-empty list of token ids (ints), got {list(prompt)[:8]}")
    return [list(p) for p in inputs]


def speculation_settings(kwargs: dict) -> dict:
    """The speculative-decoding settings taken out of kwargs, as Engine arguments; an assistant model's settings
    left at their defaults are dropped when no assistant_model is given (a generation_config may carry them)."""
    taken = {name: kwargs.pop(name) for name in SPECULATION_ARGS if kwargs.get(name) is not None}
    if "assistant_model" not in taken:
        taken = {name: value for name, value in taken.items()
                 if not (name.startswith(("num_assistant", "assistant_")) and value == DEFAULTS.get(name))}
    return taken


def refuse_unsupported(kwargs: dict) -> None:
    """A generate() setting the engine does not apply, set to anything but its neutral value, is refused (unknown
    names are left to parse_generation_kwargs's TypeError)."""
    for name, value in kwargs.items():
        if name in ENGINE_ARGS or name not in GENERATE_KWARGS:
            continue
        neutral = (value is None or (isinstance(value, (list, tuple)) and not value)
                   or (isinstance(value, (bool, int, float, str)) and value == DEFAULTS.get(name)))
        if not neutral:
            raise NotImplementedError(f"generate_batch: {name}={value!r} is not supported (the continuous-batching "
                                      "engine samples with temperature, top_k, top_p and min_p only); use "
                                      "generate() for it")


def sampling_params(model, prompt: list[int], kwargs: dict, logprobs: int | None) -> tuple[SamplingParams, int]:
    """(the prompt's SamplingParams, its number of sequences), with generate()'s checks and defaults."""
    request = parse_generation_kwargs(model, len(prompt), kwargs)
    sampling = request.sampling
    try:
        params = SamplingParams(
            max_tokens=request.max_new_tokens, temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_p=sampling.top_p, top_k=sampling.top_k, min_p=sampling.min_p, seed=kwargs.get("seed"),
            stop_token_ids=tuple(request.eos_token_ids or ()), logprobs=logprobs)
    except ServingError as error:
        raise ValueError(f"generate_batch: {error.message}") from None
    return params, request.num_return_sequences


def _run(model, requests, ids, outputs, max_batch, record_timestamps, progress_bar, speculation: dict) -> None:
    """Submits every request, then runs the engine on this thread until every sequence has ended."""
    total = sum(n for _, (_, n) in requests)
    collector = _Collector(outputs, total, record_timestamps, _progress(total) if progress_bar else None)

    def submit_all():
        for (prompt, (params, n)), request_ids in zip(requests, ids):
            collector.engine.submit(prompt, params, collector.sink_for(request_ids), n=n)

    try:
        with eval_modes(model):  # the engine puts the model in eval mode; each module's own mode comes back
            collector.engine = Engine(model, None, max_batch=min(max_batch, total), max_queue=total,
                                      prefill_first=True, **speculation)
            collector.engine.run(on_start=submit_all)
    except ServingError as error:
        raise ValueError(f"generate_batch: {error.message}") from None
    finally:
        if collector.bar is not None:
            collector.bar.close()
    if collector.broken:
        raise RuntimeError("generate_batch: recording an output failed") from collector.broken[0]


class _Collector:
    """The engine's sinks (called on its thread, the caller's): each Output into its BatchOutput; the engine stops
    once every sequence has ended."""

    def __init__(self, outputs: dict, total: int, record_timestamps: bool, bar):
        self.outputs, self.remaining, self.record_timestamps, self.bar = outputs, total, record_timestamps, bar
        self.engine: Engine | None = None
        self.broken: list[BaseException] = []

    def sink_for(self, request_ids: list[str]):
        def sink(output):
            try:
                self.record(self.outputs[request_ids[output.index]], output)
            except BaseException as error:  # else the engine cancels the sequence and waits for it forever
                self.broken.append(error)
                self.engine.stop()
        return sink

    def record(self, out: BatchOutput, output) -> None:
        if not out.add(output, self.record_timestamps):
            return
        self.remaining -= 1
        if self.bar is not None:
            self.bar.update(1)
        if self.remaining == 0:
            self.engine.stop()  # from the engine's thread: the loop ends after this step


def _progress(total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("generate_batch(progress_bar=True) needs tqdm: pip install tqdm") from None
    return tqdm(total=total, desc=f"Solving {total} requests", unit="request")
