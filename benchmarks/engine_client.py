"""What the serving-engine benchmarks (bench_serve_speculation.py, bench_serve_prefix_cache.py, bench_serve_assisted.py
and more) share: the random models they serve and running an engine's loop on the main thread, as `gpt-fast serve` does
(gpt_fast/serving/engine.py says why), while a client on another thread sends the requests."""

from __future__ import annotations

import argparse
import threading

import torch

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.serving import Engine

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def random_model(dtype: torch.dtype, tiny: bool) -> OpenAIGPTLMHeadModel:
    """GPT-1's shape (tiny: 2 layers x 64 wide, the same vocabulary, for the tests) with seeded random weights."""
    torch.manual_seed(0)
    shape = {"n_layer": 2, "n_embd": 64, "n_head": 2} if tiny else {}
    return OpenAIGPTLMHeadModel(OpenAIGPTConfig(**shape)).to(dtype).eval()


def random_assistant(dtype: torch.dtype, n_layer: int, n_embd: int, n_head: int, seed: int | None = None):
    """A small model with GPT-1's vocabulary and positions, random weights (seeded when seed is given), to serve as
    an assistant model beside random_model's."""
    if seed is not None:
        torch.manual_seed(seed)
    return OpenAIGPTLMHeadModel(OpenAIGPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head)).to(dtype).eval()


def with_client(engine: Engine, client) -> dict:
    """Runs the engine's loop on this thread while client(engine, result) runs on another and fills `result`; the
    engine stops when the client returns or fails. Returns result (a RuntimeError if the client left it empty)."""
    result = {}

    def run_client() -> None:
        try:
            client(engine, result)
        finally:
            engine.stop()

    engine.run(on_start=lambda: threading.Thread(target=run_client, daemon=True).start())
    if not result:
        raise RuntimeError("the requests did not finish")
    return result


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="2 layers x 64 wide (tests)")


def apply_threads(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
