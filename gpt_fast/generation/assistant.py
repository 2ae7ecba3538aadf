"""Assisted decoding (transformers' `generate(..., assistant_model=small_model)`): speculative decoding
(speculative.py) whose draft tokens come from a smaller model with the same vocabulary.

The assistant decodes greedily on a static KV cache of its own (IncrementalDecoder, as the model does): it is
prefilled with the prompt once, then each round it is fed the tokens the model emitted since its last round (usually
one; extend() when there are more), and steps on its own argmax up to `num_assistant_tokens` times, stopping early
after a token whose probability is below `assistant_confidence_threshold` or after an EOS token. After the model's
verification the assistant's cache is rewound to the drafts the model kept, so nothing is recomputed; while its
drafts keep failing it pauses (speculative.DraftPauses). The model's output is plain decoding's whatever the
assistant drafts; the assistant only decides how many passes of the model it takes.

Settings, as transformers names them: `num_assistant_tokens` (drafts a round; default the assistant's
generation_config's, else 20), `num_assistant_tokens_schedule` ("constant", the default; "heuristic": +2 after a
round that kept every draft, -1 otherwise, the final value written to the assistant's generation_config for its
next call, as transformers does; "heuristic_transient": the same, not written back), `assistant_confidence_threshold`
(default 0.4; 0 drafts the full count). Differences from transformers: the threshold is fixed (transformers tunes it
from the drafts' outcomes when scikit-learn is installed); the assistant drafts from its raw logits (transformers
applies the model's logits processors to them); an explicit argument of generate() takes precedence over the
assistant's generation_config (transformers reads these from the assistant's only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt_fast.generation.decoder import IncrementalDecoder, decode_plan
from gpt_fast.generation.kv_cache import StaticKVCache
from gpt_fast.generation.replayed_step import ReplayedExtend, ReplayedStep
from gpt_fast.generation.speculative import DraftPauses, next_draft_length

SCHEDULES = ("constant", "heuristic", "heuristic_transient")
DEFAULT_NUM_TOKENS = 20  # transformers' global defaults
DEFAULT_SCHEDULE = "constant"
DEFAULT_CONFIDENCE = 0.4


@dataclass(frozen=True)
class AssistantSettings:
    model: object  # a gpt_fast OpenAIGPTLMHeadModel
    num_tokens: int
    schedule: str
    confidence_threshold: float

    def after_round(self, length: int, pauses: DraftPauses, kept: int, drafted: int) -> int:
        """A round's outcome for one sequence's drafting (generate's AssistantDrafter, the server's rows): its pauses
        hear it (every rejected draft counts when the length does not adapt) and the next draft length returned,
        which only the "heuristic" schedules change."""
        adapts = self.schedule != "constant"
        pauses.update(kept, drafted, shrinks=adapts)
        return next_draft_length(length, kept, drafted, None) if adapts else length


def assistant_settings(model, get, needed_positions: int) -> AssistantSettings | None:
    """generate()'s assistant arguments checked (get(name) reads them), or None without an assistant_model.
    needed_positions: the positions the request feeds (prompt + new tokens - 1)."""
    from gpt_fast.models.heads import OpenAIGPTLMHeadModel  # models import generation: resolved at call time

    assistant = get("assistant_model")
    if assistant is None:
        return None
    if not isinstance(assistant, OpenAIGPTLMHeadModel):
        raise TypeError(f"assistant_model must be a gpt_fast OpenAIGPTLMHeadModel, got {type(assistant).__name__} "
                        "(load it with gpt_fast.OpenAIGPTLMHeadModel.from_pretrained; a transformers model patched "
                        "by gpt_fast's apply_gpt_fast_kernels takes a transformers assistant)")
    if assistant is model:
        raise ValueError("assistant_model is the model itself: its drafts would cost as much as the model's own "
                         "steps; pass a smaller model")
    if assistant.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"assistant_model has a vocabulary of {assistant.config.vocab_size} tokens and the model "
                         f"{model.config.vocab_size}: assisted decoding needs the same tokenizer (transformers' "
                         "assistant_tokenizer, for assistants with another one, is not supported)")
    if assistant.device != model.device:
        raise ValueError(f"assistant_model is on {assistant.device} and the model on {model.device}; move them to "
                         "one device")
    if needed_positions > assistant.config.n_positions:
        raise ValueError(f"assistant_model holds {assistant.config.n_positions} positions and this request needs "
                         f"{needed_positions} (prompt + max_new_tokens - 1); shorten it or pass a longer assistant")
    num_tokens, schedule, threshold = (get(name) for name in (
        "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold"))
    own = assistant.generation_config
    num_tokens = _first(num_tokens, own.num_assistant_tokens, DEFAULT_NUM_TOKENS)
    schedule = _first(schedule, own.num_assistant_tokens_schedule, DEFAULT_SCHEDULE)
    threshold = _first(threshold, own.assistant_confidence_threshold, DEFAULT_CONFIDENCE)
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_assistant_tokens must be an int >= 1, got {num_tokens!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"num_assistant_tokens_schedule must be one of {SCHEDULES}, got {schedule!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"assistant_confidence_threshold must be a number in [0, 1], got {threshold!r}")
    return AssistantSettings(assistant, num_tokens, schedule, float(threshold))


def _first(*values):
    return next(value for value in values if value is not None)


class AssistantDrafter:
    """Drafts with the assistant on its own cache (see the module docstring). prompt: (1, L) the prompt's real
    tokens; capacity: the positions its cache holds; eos_ids: the request's EOS ids (a draft stops after one)."""

    def __init__(self, settings: AssistantSettings, prompt: torch.Tensor, capacity: int, eos_ids, replay: bool):
        model = self.model = settings.model
        self.settings = settings
        device = prompt.device
        cache = StaticKVCache.for_model(model.config, 1, capacity, model.dtype, device)
        self.decoder = IncrementalDecoder(model, cache, decode_plan(model, device))
        self.decoder.prefill(prompt, torch.tensor([prompt.shape[1]], device=device), True)
        self.step = ReplayedStep(self.decoder) if replay else self.decoder.step
        self.extend = ReplayedExtend(self.decoder, enabled=replay)
        self.cached = prompt.shape[1]  # the sequence's tokens in the cache
        self.base = 0  # the sequence's length when the last draft began
        self.eos = set() if eos_ids is None else set(eos_ids)
        self.length = settings.num_tokens
        self.pauses = DraftPauses()

    def draft(self, sequence: list[int], limit: int) -> list[int]:
        limit = min(limit, self.length)
        if limit < 1 or self.pauses.skip():  # paused: the tokens emitted meanwhile are fed at the next draft
            return []
        new = sequence[self.cached:]  # (>= 1) the tokens emitted since the last round
        self.base = len(sequence)
        device = self.decoder.cache.lengths.device
        if len(new) == 1:
            logits = self.step(torch.tensor(new, device=device))  # (1, V)
        else:
            logits = self.extend(torch.tensor([new], device=device))[:, -1]  # (1, V)
        drafts, threshold = [], self.settings.confidence_threshold
        while True:
            top, token = logits[0].max(-1)
            drafts.append(int(token))
            if len(drafts) == limit or drafts[-1] in self.eos:
                break
            if threshold > 0 and float((logits[0] - top).exp().sum()) > 1 / threshold:  # its probability < threshold
                break
            logits = self.step(token[None])
        self.cached = self.base + len(drafts) - 1  # the last draft is not fed
        return drafts

    def update(self, sequence: list[int], kept: int, drafted: int) -> None:
        valid = self.base + min(kept, drafted - 1)  # the fed drafts that the model kept
        self.decoder.rewind(self.cached - valid)
        self.cached = valid
        self.length = self.settings.after_round(self.length, self.pauses, kept, drafted)

    def finish(self) -> None:
        """After the generation: a "heuristic" schedule's draft length is kept by the assistant for its next call."""
        if self.settings.schedule == "heuristic":
            self.model.generation_config.num_assistant_tokens = self.length
