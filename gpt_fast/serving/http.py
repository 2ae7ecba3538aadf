"""The OpenAI-compatible HTTP server (FastAPI): /v1/completions, /v1/chat/completions, /v1/models, /health,
/metrics, in front of one Engine. Needs `pip install gpt_fast[serve]`.

    app = create_app(engine, tokenizer, "openai-gpt", metrics, api_key=None, chat_template=ChatTemplate())
    uvicorn.run(app, host="127.0.0.1", port=8000)

The app starts the engine's thread when it starts and stops it at shutdown (`gpt-fast serve` runs the engine
on its main thread instead: start_engine=False). Every error is OpenAI's error JSON
with its status: 400 for bad parameters (FastAPI's 422 becomes 400) and prompts over the context, 401 without the
API key when one is set (on /v1 only), 404 for an unknown model or path, 503 when the queue is full. A client that
disconnects cancels its request, freeing its slots.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from gpt_fast.serving.chat import ChatTemplate
from gpt_fast.serving.engine import Engine
from gpt_fast.serving.errors import BadRequest, NotFound, ServingError, Unauthorized
from gpt_fast.serving.handlers import Server, chat_response, completion_response
from gpt_fast.serving.metrics import Metrics
from gpt_fast.serving.protocol import ChatCompletionRequest, CompletionRequest

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")


def error_response(error: ServingError) -> JSONResponse:
    return JSONResponse(error.to_json(), status_code=error.status)


def validation_error(error: RequestValidationError) -> BadRequest:
    problems = error.errors()
    first = problems[0] if problems else {}
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    text = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                     for e in problems[:5])
    return BadRequest(f"invalid request: {text}", where[0] if where else None)


class AuthorizeAndCount:
    """ASGI middleware (pure ASGI, so the handlers' disconnect checks and streams pass straight through): a 401
    without the API key on /v1 when one is set; every response counted by endpoint and status."""

    def __init__(self, app, server: Server, metrics: Metrics):
        self.app, self.server, self.metrics = app, server, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in ENDPOINTS else "other"

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(path, str(message["status"])).inc()
            await send(message)

        if self.server.authorized(Request(scope)):
            return await self.app(scope, receive, counted)
        denied = Unauthorized("a valid API key is needed: Authorization: Bearer <key>", None, "invalid_api_key")
        await error_response(denied)(scope, receive, counted)


def create_app(engine: Engine, tokenizer, model_name: str, metrics: Metrics, api_key: str | None = None,
               chat_template: ChatTemplate | None = None, start_engine: bool = True) -> FastAPI:
    """start_engine: the app starts the engine on a thread of its own at startup and stops it at shutdown; False:
    the caller runs it (`gpt-fast serve` runs Engine.run on the main thread: see gpt_fast/serving/engine.py)."""
    server = Server(engine, tokenizer, model_name, metrics, api_key, chat_template or ChatTemplate())
    metrics.watch(engine)

    @asynccontextmanager
    async def lifespan(app):
        if start_engine:
            engine.start()
        yield
        if start_engine:
            engine.stop()

    app = FastAPI(title="gpt_fast", lifespan=lifespan)
    app.state.server = server

    app.add_middleware(AuthorizeAndCount, server=server, metrics=metrics)

    @app.exception_handler(ServingError)
    async def serving_error(request, error: ServingError):
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error: RequestValidationError):
        return error_response(validation_error(error))

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        kind = NotFound if error.status_code == 404 else BadRequest
        response = error_response(kind(str(error.detail)))
        response.status_code = error.status_code
        return response

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception):
        return error_response(ServingError(f"internal error: {type(error).__name__}"))

    @app.get("/health")
    async def health():
        alive = engine.running and engine.thread is not None and engine.thread.is_alive()
        return JSONResponse({"status": "ok" if alive else "stopped"}, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "gpt_fast", "max_model_len": engine.n_positions}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await completion_response(server, body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await chat_response(server, body, request)

    return app


def build_app(model, tokenizer, model_name: str, max_batch: int = 16, max_queue: int = 64, prefill_chunk: int = 256,
              api_key: str | None = None, chat_template: ChatTemplate | None = None,
              start_engine: bool = True, prompt_lookup_num_tokens: int | None = None,
              prefix_cache_size: int = 0, **speculation) -> tuple[FastAPI, Engine]:
    """An Engine over the model (not started: the app starts it unless start_engine is False) and the app in front
    of it, with its Metrics. prompt_lookup_num_tokens, or assistant_model (num_assistant_tokens,
    assistant_confidence_threshold): the engine's speculation (serving/speculation.py); prefix_cache_size: prompts
    kept for later prompts that start alike (serving/prefix_cache.py)."""
    metrics = Metrics()
    engine = Engine(model, tokenizer, max_batch=max_batch, max_queue=max_queue, prefill_chunk=prefill_chunk,
                    observer=metrics, prompt_lookup_num_tokens=prompt_lookup_num_tokens,
                    prefix_cache_size=prefix_cache_size, **speculation)
    return create_app(engine, tokenizer, model_name, metrics, api_key, chat_template, start_engine), engine
