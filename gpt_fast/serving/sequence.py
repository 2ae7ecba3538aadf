"""One sequence of a serving request (one of its `n` choices) as the engine tracks it, and the Output events it
hands to the request's sink.

A sequence waits in the queue, holds a cache slot while its prompt is prefilled (a chunk at a time) and while it
decodes, and gives the slot back when it finishes (max_tokens, a stop string or stop token) or is cancelled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

import torch

from gpt_fast.serving.params import SamplingParams
from gpt_fast.serving.sampler import Choice
from gpt_fast.serving.text import IncrementalText


class State(Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODING = "decoding"
    FINISHED = "finished"


@dataclass
class Output:
    """What a sequence produced since its last Output. finish_reason: None while running, else "length" or "stop"
    (or "error" / "cancelled", with `error` set for the former)."""

    index: int  # the choice index within its request
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[Choice] = field(default_factory=list)  # one per token, when the params asked for them
    finish_reason: str | None = None
    prompt_logprobs: list[float | None] | None = None  # with the first Output, when asked for
    error: str | None = None


class Sequence:
    def __init__(self, index: int, prompt: list[int], params: SamplingParams, sink, tokenizer, device):
        self.index = index
        self.prompt = prompt
        self.params = params
        self.sink = sink  # called from the engine thread with each Output
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()
        else:  # choice i of a seeded request draws from seed + i
            self.generator.manual_seed((params.seed + index) % 2 ** 64)
        self.text = IncrementalText(tokenizer, params.stop)
        self.state = State.WAITING
        self.slot: int | None = None
        self.prefilled = 0  # prompt tokens in the cache
        self.siblings: list[Sequence] = [self]  # the request's n choices of this prompt (one list, shared)
        self.output: list[int] = []
        self.prompt_logprobs: list[float | None] | None = [None] if params.prompt_logprobs else None
        self.cancelled = False
        self.arrived = time.perf_counter()
        self.first_token_at: float | None = None
        self.drafter = None  # its drafting state, once the engine speculates for it (speculation.py)

    @property
    def last_token(self) -> int:
        return self.output[-1]

    def tokens_left(self) -> int:
        """The draft tokens it may still take: max_tokens less those emitted and the next one (the last new token
        is never fed to the model)."""
        return self.params.max_tokens - len(self.output) - 1
