"""gpt-fast serve: an OpenAI-compatible HTTP server with continuous batching (gpt_fast/serving)."""

from __future__ import annotations

import os
import time

import torch

from gpt_fast.cli.common import (
    UsageError,
    add_assistant_arguments,
    add_quantization_arguments,
    assistant_kwargs,
    check_assistant_arguments,
    check_model_name,
    load_assistant,
    log,
    non_negative_int,
    positive_int,
    quantization_kwargs,
)
from gpt_fast.generation.pipeline import load_tokenizer
from gpt_fast.models.heads import OpenAIGPTLMHeadModel

SERVE_EXTRA = "gpt-fast serve needs FastAPI and uvicorn: pip install gpt_fast[serve]"


def add_parser(sub) -> None:
    serve = sub.add_parser("serve", help="an OpenAI-compatible server (/v1/completions, /v1/chat/completions)",
                           description="Serves a checkpoint over HTTP with OpenAI's API and continuous batching.")
    serve.add_argument("--model", required=True, help="checkpoint folder (config.json + weights) or hub name")
    serve.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    serve.add_argument("--served-model-name", help="the model name clients pass (default: --model as given)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto (default float32)")
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--max-batch", type=positive_int, default=16, help="sequences decoded together (slots)")
    serve.add_argument("--max-queue", type=positive_int, default=64,
                       help="sequences waiting for a slot; more is a 503 (default 64)")
    serve.add_argument("--prefill-chunk", type=positive_int, default=256, help="prompt tokens per prefill step")
    serve.add_argument("--api-key", default=os.environ.get("GPT_FAST_API_KEY"),
                       help="require 'Authorization: Bearer KEY' on /v1 (default: $GPT_FAST_API_KEY, else none)")
    serve.add_argument("--chat-template", metavar="FILE", help="a Jinja2 chat template (default: 'role: content')")
    serve.add_argument("--prompt-lookup-num-tokens", type=positive_int, metavar="N",
                       help="prompt lookup decoding: each step verifies up to N tokens per sequence copied from "
                            "its text so far (same tokens, fewer passes where the text repeats itself)")
    add_assistant_arguments(serve)
    serve.add_argument("--prefix-cache-size", type=non_negative_int, default=0, metavar="N",
                       help="keep the keys and values of the last N prompts, so that later prompts starting alike "
                            "skip that prefill (each up to 2 x layers x 512 x width values; default 0: off)")
    serve.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    add_quantization_arguments(serve)
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError(SERVE_EXTRA) from None
    from gpt_fast.serving.chat import ChatTemplate  # the serve extra (Jinja2), like the two below
    from gpt_fast.serving.http import build_app
    from gpt_fast.serving.launch import serve_forever

    if not 0 <= args.port < 65536:
        raise UsageError(f"gpt-fast serve: --port must be in [0, 65535], got {args.port}")
    check_model_name(args.model)
    check_assistant_arguments(args, "serve")
    template = ChatTemplate.from_file(args.chat_template) if args.chat_template else ChatTemplate()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    log(f"loading {args.model} ...")
    model = OpenAIGPTLMHeadModel.from_pretrained(args.model, dtype=args.dtype, device=args.device,
                                                 **quantization_kwargs(args))
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    quantized = "" if model.quantization is None else f", {model.quantization.scheme}"
    log(f"loaded in {time.perf_counter() - start:.1f} s ({model.dtype}{quantized}, {model.device})")
    assistant = load_assistant(args)
    app, engine = build_app(model, tokenizer, args.served_model_name or args.model, args.max_batch, args.max_queue,
                            args.prefill_chunk, args.api_key, template, start_engine=False,
                            prompt_lookup_num_tokens=args.prompt_lookup_num_tokens,
                            prefix_cache_size=args.prefix_cache_size, assistant_model=assistant,
                            **assistant_kwargs(args))
    serve_forever(app, engine, args.host, args.port, args.log_level)
    return 0

