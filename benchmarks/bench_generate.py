"""pytest-benchmark tests for generation (small: GPT-1 width and vocabulary, 2 layers).

    python -m pytest benchmarks/bench_generate.py --benchmark-enable --benchmark-group-by=param:dtype

Same measurements as `gpt-fast bench` (which runs the full 12-layer model and prints ratios and the roofline):
batch-1 generation of 32 new tokens after a 32-token prompt for gpt_fast (each attention backend) and for
transformers' generate, a batch-8 run, and a 512-token prefill.
"""

from __future__ import annotations

import pytest
import torch

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.cli.benchmark import generate_greedy, gpt_fast_backends, make_transformers_model, prefill

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return OpenAIGPTLMHeadModel(OpenAIGPTConfig(n_layer=2)).eval()


def as_dtype(base, dtype_name, backend=None):
    model = OpenAIGPTLMHeadModel(base.config, attn_implementation=backend)
    model.load_state_dict(base.state_dict())
    return model.to(DTYPES[dtype_name]).eval()


def prompt(batch=1, length=32):
    return torch.randint(0, 40478, (batch, length), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("backend", gpt_fast_backends("cpu"))
def test_gpt_fast_generate(benchmark, base, dtype, backend):
    model, ids = as_dtype(base, dtype, backend), prompt()
    out = benchmark.pedantic(generate_greedy, args=(model, ids, NEW_TOKENS), rounds=3, warmup_rounds=1)
    assert out.shape == (1, 32 + NEW_TOKENS)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_transformers_generate(benchmark, base, dtype):
    hf = make_transformers_model(base)
    if hf is None:
        pytest.skip("transformers is not installed")
    hf = hf.to(DTYPES[dtype])
    out = benchmark.pedantic(generate_greedy, args=(hf, prompt(), NEW_TOKENS), rounds=2, warmup_rounds=1)
    assert out.shape == (1, 32 + NEW_TOKENS)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gpt_fast_generate_batch8(benchmark, base, dtype):
    model, ids = as_dtype(base, dtype), prompt(batch=8)
    out = benchmark.pedantic(generate_greedy, args=(model, ids, NEW_TOKENS), rounds=3, warmup_rounds=1)
    assert out.shape == (8, 32 + NEW_TOKENS)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gpt_fast_prefill_512(benchmark, base, dtype):
    model = as_dtype(base, dtype)
    logits = benchmark.pedantic(prefill, args=(model, prompt(length=512)), rounds=3, warmup_rounds=1)
    assert logits.shape == (1, 40478)
