"""The request bodies of the OpenAI-compatible endpoints (pydantic, as FastAPI validates them) and their mapping
to SamplingParams. Unknown fields are ignored (as OpenAI-compatible servers do); fields that would change the
result and are not supported (suffix; tools, functions, a tool_choice that would call one, a
JSON response_format, output modalities other than text) are a 400, not silently dropped.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from gpt_fast.serving.errors import BadRequest
from gpt_fast.serving.params import SamplingParams

Prompt = Union[str, list[str], list[int], list[list[int]]]


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """The fields completions and chat share."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float | None = None  # None: 1
    top_p: float | None = None
    top_k: int | None = None  # an extension (vLLM's): 0 or -1 = off
    min_p: float | None = None  # an extension (vLLM's): 0 = off
    n: int = 1
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # an extension (vLLM's)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def check_unsupported(self) -> None:
        if self.n < 1:
            raise BadRequest(f"n must be at least 1, got {self.n}", "n")
        if self.stream_options is not None and not self.stream:
            raise BadRequest("stream_options is only allowed when stream is true", "stream_options")

    def sampling_params(self, max_tokens: int, logprobs: int | None, prompt_logprobs: bool = False) -> SamplingParams:
        self.check_unsupported()
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens, temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0, min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0, frequency_penalty=self.frequency_penalty or 0.0,
            seed=self.seed, stop=stop, stop_token_ids=tuple(self.stop_token_ids or ()), logprobs=logprobs,
            prompt_logprobs=prompt_logprobs, logit_bias=self.bias_pairs())

    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """logit_bias's JSON object (token ids as strings, OpenAI's form) as (token id, bias) pairs."""
        pairs = []
        for key, bias in (self.logit_bias or {}).items():
            if not key.strip().lstrip("-").isdigit():
                raise BadRequest(f"logit_bias keys must be token ids, got {key!r}", "logit_bias")
            pairs.append((int(key), bias))
        return tuple(pairs)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingFields):
    prompt: Prompt
    max_tokens: int | None = 16  # OpenAI's default for completions
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if self.suffix:
            raise BadRequest("suffix is not supported by this server", "suffix")
        if self.best_of is not None and self.best_of < self.n:
            raise BadRequest(f"best_of must be at least n ({self.n}), got {self.best_of}", "best_of")
        if self.stream and self.candidates > self.n:
            raise BadRequest("best_of greater than n cannot be streamed (the best are known only at the end)",
                             "best_of")

    @property
    def candidates(self) -> int:
        """Sequences generated per prompt: best_of (the n with the highest log-probability per token are
        returned), else n."""
        return self.n if self.best_of is None else self.best_of


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None  # None: the rest of the context
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list | None = None
    functions: list | None = None  # the deprecated form of tools
    tool_choice: str | dict | None = None
    response_format: dict | None = None
    modalities: list[str] | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if self.tools:
            raise BadRequest("tools are not supported by this server", "tools")
        if self.functions:
            raise BadRequest("functions are not supported by this server", "functions")
        if self.tool_choice not in (None, "none", "auto"):  # with no tools, nothing can be called
            raise BadRequest(f"tool_choice {self.tool_choice!r} needs tools, which this server does not support",
                             "tool_choice")
        if self.response_format not in (None, {"type": "text"}):
            raise BadRequest("response_format other than {'type': 'text'} (JSON output) is not supported by this "
                             "server", "response_format")
        if self.modalities not in (None, ["text"]):
            raise BadRequest("this server answers with text only (modalities ['text'])", "modalities")
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequest("top_logprobs needs logprobs to be true", "top_logprobs")
