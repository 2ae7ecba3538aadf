"""What the serving tests share: a tiny random GPT-1-style model with the packaged GPT-1 tokenizer, saved as a
checkpoint folder, and a helper that runs one request through an Engine and collects its outputs."""

from __future__ import annotations

import queue
import time

import torch

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel, OpenAIGPTTokenizerFast

N_POSITIONS = 64


def tiny_model_and_tokenizer(seed: int = 0):
    tokenizer = OpenAIGPTTokenizerFast.from_pretrained("openai-gpt")  # packaged: no download
    torch.manual_seed(seed)
    config = OpenAIGPTConfig(vocab_size=len(tokenizer), n_positions=N_POSITIONS, n_embd=32, n_layer=2, n_head=2,
                             initializer_range=0.2)  # large enough weights that a wrong attention shows
    return OpenAIGPTLMHeadModel(config).eval(), tokenizer


def save_checkpoint(folder):
    model, tokenizer = tiny_model_and_tokenizer()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def collect(engine, prompt, params, n: int = 1, timeout: float = 30.0):
    """Submits a request and waits for all its choices: {index: {"tokens", "text", "logprobs", "finish",
    "prompt_logprobs"}}."""
    outputs = queue.Queue()
    engine.submit(prompt, params, outputs.put, n)
    return wait(outputs, n, timeout)


def wait(outputs: queue.Queue, n: int, timeout: float = 30.0):
    result = {i: {"tokens": [], "text": "", "logprobs": [], "finish": None, "prompt_logprobs": None}
              for i in range(n)}
    finished = 0
    while finished < n:
        out = outputs.get(timeout=timeout)
        choice = result[out.index]
        choice["tokens"] += out.tokens
        choice["text"] += out.text
        choice["logprobs"] += out.logprobs
        if out.prompt_logprobs is not None:
            choice["prompt_logprobs"] = out.prompt_logprobs
        if out.finish_reason is not None:
            choice["finish"] = out.finish_reason
            finished += 1
    return result


class SlowTokenizer:
    """The checkpoint's tokenizer, 20 ms slower per decode: the engine decodes once per token, so requests last."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def decode(self, *args, **kwargs):
        time.sleep(0.02)
        return self.tokenizer.decode(*args, **kwargs)
