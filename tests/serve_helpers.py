"""What the serving tests share: a tiny random GPT-1-style model with the packaged GPT-1 tokenizer, saved as a
checkpoint folder, and a helper that runs one request through an Engine and collects its outputs."""

from __future__ import annotations

import logging
import queue
import time

import pytest
import torch

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel, OpenAIGPTTokenizerFast
from gpt_fast.serving import Engine

N_POSITIONS = 64


def tiny_model_and_tokenizer(seed: int = 0):
    tokenizer = OpenAIGPTTokenizerFast.from_pretrained("openai-gpt")  # packaged: no download
    torch.manual_seed(seed)
    config = OpenAIGPTConfig(vocab_size=len(tokenizer), n_positions=N_POSITIONS, n_embd=32, n_layer=2, n_head=2,
                             initializer_range=0.2)  # large enough weights that a wrong attention shows
    return OpenAIGPTLMHeadModel(config).eval(), tokenizer


def engine_fixtures():
    """An engine test module's two fixtures: `model_and_tokenizer` (module-scoped, tiny_model_and_tokenizer()) and
    `make_engine(**engine_options)`, which starts an Engine over them on its own thread and stops every engine it
    made at the test's end. Use: `model_and_tokenizer, make_engine = engine_fixtures()`."""

    @pytest.fixture(scope="module")
    def model_and_tokenizer():
        return tiny_model_and_tokenizer()

    @pytest.fixture
    def make_engine(model_and_tokenizer):
        engines = []

        def make(**kwargs):
            model, tokenizer = model_and_tokenizer
            engine = Engine(model, tokenizer, **kwargs).start()
            engines.append(engine)
            return engine

        yield make
        for engine in engines:
            engine.stop()

    return model_and_tokenizer, make_engine


@pytest.fixture(autouse=True)
def no_failed_steps(caplog):
    """A step that raises is logged and ends its sequences with an error (engine.guarded): none may in a test that
    imports this fixture."""
    yield
    failed = [r for r in caplog.get_records("call") if r.name == "gpt_fast.serving" and r.levelno >= logging.ERROR]
    assert not failed, failed[0].getMessage()


def reference_greedy(model, prompt, n):
    """model.generate's greedy tokens after the prompt (a list of ids): the reference of the engine tests."""
    with torch.inference_mode():
        return model.generate(torch.tensor([prompt]), max_new_tokens=n, step_replay=False)[0, len(prompt):].tolist()


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
