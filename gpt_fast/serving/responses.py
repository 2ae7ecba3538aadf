"""OpenAI's response JSON for completions and chat: whole responses, stream chunks, usage and logprobs.

Per choice, a ChoiceState accumulates what the engine's Outputs bring (text, token ids, logprobs). Logprob token
strings are each token decoded alone; text_offset (completions) is the length of the text decoded before it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class ChoiceState:
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)  # sampler.Choice per token, when asked for
    finish_reason: str | None = None
    error: str | None = None
    prompt_logprobs: list | None = None

    def add(self, output) -> None:
        if output.prompt_logprobs is not None:
            self.prompt_logprobs = output.prompt_logprobs
        self.text += output.text
        self.tokens += output.tokens
        self.logprobs += output.logprobs
        if output.finish_reason is not None:
            self.finish_reason = output.finish_reason
            self.error = output.error


class Envelope:
    """id / object / created / model of one response and its chunks."""

    def __init__(self, prefix: str, obj: str, model: str):
        self.id, self.object, self.created, self.model = new_id(prefix), obj, int(time.time()), model

    def wrap(self, choices: list, usage_json: dict | None = None, with_usage_key: bool = False) -> dict:
        body = {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices}
        if usage_json is not None or with_usage_key:
            body["usage"] = usage_json
        return body


def completion_logprobs(tokenizer, tokens: list[int], logprobs: list[float | None], tops: list[dict | None],
                        offset: int = 0, decoded_before: list[int] | None = None) -> dict:
    """The completions `logprobs` object. decoded_before: tokens already handed out (their text is before these)."""
    before = list(decoded_before or [])
    offsets = []
    for token in tokens:
        offsets.append(offset + len(tokenizer.decode(before)))
        before.append(token)
    return {"tokens": [tokenizer.decode([t]) for t in tokens], "token_logprobs": logprobs,
            "top_logprobs": tops, "text_offset": offsets}


def sampled_logprobs(tokenizer, choices: list) -> tuple[list[float], list[dict]]:
    """From sampler.Choice objects: the chosen tokens' logprobs and {token text: logprob} of the top ones."""
    return ([c.logprob for c in choices],
            [{tokenizer.decode([t]): lp for t, lp in c.top} for c in choices])


def chat_logprobs(tokenizer, choices: list) -> dict:
    def entry(token: int, logprob: float) -> dict:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(c.token, c.logprob), "top_logprobs": [entry(t, lp) for t, lp in c.top]}
                        for c in choices]}


def choice_logprobs(tokenizer, tokens: list[int], choices: list, before: list[int], offset: int = 0,
                    prompt: list[int] | None = None, prompt_logprobs: list | None = None) -> dict:
    """The completions `logprobs` of new tokens (their sampler.Choice objects) after `before`, their text offsets
    counted from `offset`; with `prompt` (echo), the prompt's tokens and log-probabilities first."""
    logprobs, tops = sampled_logprobs(tokenizer, choices)
    body = completion_logprobs(tokenizer, tokens, logprobs, tops, offset, before)
    if prompt is None:
        return body
    prompt_tops = [None] + [{tokenizer.decode([t]): lp} for t, lp in zip(prompt[1:], prompt_logprobs[1:])]
    head = completion_logprobs(tokenizer, prompt, list(prompt_logprobs), prompt_tops)
    return {key: head[key] + body[key] for key in body}
