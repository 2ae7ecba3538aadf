"""The completions and chat handlers behind http.py: prompts tokenized and checked, the request submitted to the
engine as a RequestStream, and the answer built as one JSON body or as server-sent event chunks (responses.py).

A client that disconnects cancels its request: a stream's generator is closed by the server, which cancels in
its `finally`; a whole-body request polls for the disconnect while it waits.
"""

from __future__ import annotations

import asyncio
import json
import secrets

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from gpt_fast.serving.chat import ChatTemplate
from gpt_fast.serving.engine import Engine
from gpt_fast.serving.errors import BadRequest, ContextTooLong, NotFound, ServingError
from gpt_fast.serving.metrics import Metrics
from gpt_fast.serving.protocol import ChatCompletionRequest, CompletionRequest
from gpt_fast.serving.responses import (
    ChoiceState,
    Envelope,
    chat_logprobs,
    choice_logprobs,
    usage,
)
from gpt_fast.serving.streams import RequestStream

DISCONNECT_POLL_S = 0.25


class Server:
    """The handlers' shared state: one per app (no module-level state)."""

    def __init__(self, engine: Engine, tokenizer, model_name: str, metrics: Metrics, api_key: str | None,
                 chat_template: ChatTemplate):
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.metrics, self.api_key, self.chat_template = metrics, api_key, chat_template

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise NotFound(f"the model {name!r} does not exist; this server serves {self.model_name!r}", "model",
                           "model_not_found")

    def authorized(self, request: Request) -> bool:
        if self.api_key is None or not request.url.path.startswith("/v1"):
            return True
        given = request.headers.get("authorization", "")
        return secrets.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())

    def tokenize(self, prompt) -> tuple[list[list[int]], list[str]]:
        """A completions prompt (string, strings, ids, lists of ids) -> token ids and text of each prompt."""
        if isinstance(prompt, str):
            prompt = [prompt]
        elif prompt and isinstance(prompt[0], int):
            prompt = [prompt]
        if not prompt:
            raise BadRequest("the prompt is empty", "prompt")
        ids = [self.tokenizer(p)["input_ids"] if isinstance(p, str) else list(p) for p in prompt]
        vocab = self.engine.config.vocab_size
        if any(not 0 <= t < vocab for row in ids for t in row):
            raise BadRequest(f"prompt token ids must be in [0, {vocab})", "prompt")
        return ids, [p if isinstance(p, str) else self.tokenizer.decode(p) for p in prompt]

    def check_count(self, sequences: int) -> None:
        if sequences > self.engine.max_queue:
            raise BadRequest(f"the request asks for {sequences} sequences (prompts x n); this server queues at most "
                             f"{self.engine.max_queue}", "n")


async def collect(request: Request, stream: RequestStream, choices: int) -> list[ChoiceState] | None:
    """Every choice's outputs, or None when the client went away first (its request is then cancelled)."""
    states = [ChoiceState() for _ in range(choices)]

    async def consume():
        async for index, output in stream.outputs():
            states[index].add(output)

    task = asyncio.ensure_future(consume())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                task.result()
                break
            if await request.is_disconnected():
                return None
    finally:
        if not task.done():
            task.cancel()
            stream.cancel()
    failed = next((s.error for s in states if s.finish_reason == "error"), None)
    if failed:
        raise ServingError(failed)
    return states


def sse(stream: RequestStream, chunks) -> StreamingResponse:
    """Server-sent events of the chunks, then [DONE]; a client that goes away cancels the request."""
    async def body():
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            stream.cancel()

    return StreamingResponse(body(), media_type="text/event-stream")



# -- /v1/completions ------------------------------------------------------------------------------------------------
async def completion_response(server: Server, body: CompletionRequest, request: Request):
    server.check_model(body.model)
    ids, texts = server.tokenize(body.prompt)
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    ranking = body.candidates > body.n  # best_of: every candidate's chosen-token logprobs are needed
    logprobs = 0 if ranking and body.logprobs is None else body.logprobs
    params = body.sampling_params(max_tokens, logprobs, prompt_logprobs=body.echo and body.logprobs is not None)
    server.check_count(len(ids) * body.candidates)
    stream = RequestStream(server.engine, ids, params, body.candidates)
    envelope = Envelope("cmpl", "text_completion", server.model_name)
    if body.stream:
        return sse(stream, completion_chunks(server, body, stream, envelope, ids, texts))
    states = await collect(request, stream, len(ids) * body.candidates)
    if states is None:
        return Response(status_code=499)  # the client is gone: nobody reads this
    generated = sum(len(s.tokens) for s in states)  # every candidate's tokens count, as OpenAI bills them
    if ranking:
        states = best_choices(states, body.candidates, body.n)
    choices = []
    for index, state in enumerate(states):
        p = index // body.n
        echo = texts[p] if body.echo else ""
        logprobs = None
        if body.logprobs is not None:
            logprobs = choice_logprobs(server.tokenizer, state.tokens, state.logprobs, [], len(echo),
                                       ids[p] if body.echo else None, state.prompt_logprobs)
        choices.append({"index": index, "text": echo + state.text, "logprobs": logprobs,
                        "finish_reason": state.finish_reason})
    return envelope.wrap(choices, usage(sum(map(len, ids)), generated))


def best_choices(states: list[ChoiceState], candidates: int, n: int) -> list[ChoiceState]:
    """Of each prompt's `candidates` states (consecutive), the n with the highest mean log-probability per
    generated token (OpenAI's best_of rule; ties keep the earlier), best first."""
    def score(state: ChoiceState) -> float:
        return sum(c.logprob for c in state.logprobs) / max(len(state.logprobs), 1)

    best = []
    for start in range(0, len(states), candidates):
        group = states[start:start + candidates]
        best += sorted(group, key=score, reverse=True)[:n]
    return best


async def completion_chunks(server: Server, body: CompletionRequest, stream: RequestStream, envelope: Envelope,
                            ids: list[list[int]], texts: list[str]):
    sent: dict[int, list[int]] = {}  # choice index -> its tokens handed out so far
    generated = 0
    async for index, output in stream.outputs():
        if output.error:
            yield ServingError(output.error).to_json()
            continue
        p = index // body.n
        first = index not in sent
        before = sent.setdefault(index, [])
        echo = texts[p] if body.echo and first else ""
        logprobs = None
        if body.logprobs is not None:
            logprobs = choice_logprobs(server.tokenizer, output.tokens, output.logprobs, before,
                                       len(texts[p]) if body.echo else 0, ids[p] if echo else None,
                                       output.prompt_logprobs)
        before += output.tokens
        generated += len(output.tokens)
        yield envelope.wrap([{"index": index, "text": echo + output.text, "logprobs": logprobs,
                              "finish_reason": output.finish_reason}], None, body.include_usage)
    if body.include_usage:
        yield envelope.wrap([], usage(sum(map(len, ids)), generated))


# -- /v1/chat/completions -------------------------------------------------------------------------------------------
async def chat_response(server: Server, body: ChatCompletionRequest, request: Request):
    server.check_model(body.model)
    text = server.chat_template.render([{"role": m.role, "content": m.text()} for m in body.messages])
    ids = server.tokenizer(text)["input_ids"]
    if not ids:
        raise BadRequest("the chat template made an empty prompt from these messages", "messages")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens is None:  # the rest of the context
        max_tokens = server.engine.n_positions - len(ids)
        if max_tokens < 1:
            raise ContextTooLong(f"the messages make a prompt of {len(ids)} tokens; this model's maximum context "
                                 f"length is {server.engine.n_positions} tokens", "messages")
    params = body.sampling_params(max_tokens, (body.top_logprobs or 0) if body.logprobs else None)
    server.check_count(body.n)
    stream = RequestStream(server.engine, [ids], params, body.n)
    if body.stream:
        envelope = Envelope("chatcmpl", "chat.completion.chunk", server.model_name)
        return sse(stream, chat_chunks(server, body, stream, envelope, len(ids)))
    states = await collect(request, stream, body.n)
    if states is None:
        return Response(status_code=499)
    choices = [{"index": i, "message": {"role": "assistant", "content": s.text},
                "logprobs": chat_logprobs(server.tokenizer, s.logprobs) if body.logprobs else None,
                "finish_reason": s.finish_reason} for i, s in enumerate(states)]
    envelope = Envelope("chatcmpl", "chat.completion", server.model_name)
    return envelope.wrap(choices, usage(len(ids), sum(len(s.tokens) for s in states)))


async def chat_chunks(server: Server, body: ChatCompletionRequest, stream: RequestStream, envelope: Envelope,
                      prompt_tokens: int):
    started: set[int] = set()
    generated = 0
    async for index, output in stream.outputs():
        if output.error:
            yield ServingError(output.error).to_json()
            continue
        delta = {}
        if index not in started:
            started.add(index)
            delta["role"] = "assistant"
        if output.text or "role" in delta:
            delta["content"] = output.text
        generated += len(output.tokens)
        logprobs = chat_logprobs(server.tokenizer, output.logprobs) if body.logprobs else None
        yield envelope.wrap([{"index": index, "delta": delta, "logprobs": logprobs,
                              "finish_reason": output.finish_reason}], None, body.include_usage)
    if body.include_usage:
        yield envelope.wrap([], usage(prompt_tokens, generated))
