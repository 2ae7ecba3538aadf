"""SamplingParams: what one sequence of a serving request asks for, checked at once (BadRequest on bad values).

OpenAI's meanings: temperature 0 is greedy; top_p 1 and top_k 0 (or -1, vLLM's "off") switch those filters off,
as min_p 0 does (vLLM's min_p, after top-k and top-p);
presence / frequency penalties in [-2, 2] are subtracted from the logits of tokens already generated (not the
prompt's, as vLLM does): logit -= presence * (count > 0) + frequency * count. `stop` strings end the text before
the stop string; `stop_token_ids` end it after that token (not included in the text). `logprobs` (0..20) asks for the
chosen token's log-probability and that many top alternatives, from the model's raw distribution. `logit_bias`
((token id, bias) pairs, bias in [-100, 100], OpenAI's range) is added to those tokens' logits before the
penalties, the greedy pick and sampling (not to the log-probabilities reported): -100 bans a token in practice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpt_fast.serving.errors import BadRequest

MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # vLLM's extension: drop tokens below min_p x the likeliest's probability; 0 = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None  # None: none; k: the chosen token's and the top k
    prompt_logprobs: bool = False  # echo + logprobs: the prompt's tokens' log-probabilities too
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias); the ids are checked against the vocabulary

    def __post_init__(self):
        check_number("max_tokens", self.max_tokens, 1, None, integer=True)
        check_number("temperature", self.temperature, 0.0, 2.0)
        check_number("top_p", self.top_p, 0.0, 1.0)
        if self.top_p == 0.0:
            raise BadRequest("top_p must be in (0, 1], got 0", "top_p")
        check_number("top_k", self.top_k, -1, None, integer=True)
        check_number("min_p", self.min_p, 0.0, 1.0)
        check_number("presence_penalty", self.presence_penalty, -2.0, 2.0)
        check_number("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.seed is not None:
            check_number("seed", self.seed, -(2 ** 63), 2 ** 64 - 1, integer=True)
        if self.logprobs is not None:
            check_number("logprobs", self.logprobs, 0, MAX_LOGPROBS, integer=True)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise BadRequest("stop must be non-empty strings", "stop")
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in self.stop_token_ids):
            raise BadRequest("stop_token_ids must be non-negative integers", "stop_token_ids")
        for token, bias in self.logit_bias:
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                raise BadRequest(f"logit_bias keys must be token ids (non-negative integers), got {token!r}",
                                 "logit_bias")
            check_number("logit_bias", bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def effective_top_k(self) -> int:
        return max(self.top_k, 0)

    @property
    def penalised(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def check_number(name: str, value, low, high, integer: bool = False) -> None:
    """value must be a (finite) number in [low, high] (either bound None = open); integer: an int, not a bool."""
    kind = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise BadRequest(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{name} must be finite, got {value!r}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise BadRequest(f"{name} must be {span}, got {value!r}", name)
