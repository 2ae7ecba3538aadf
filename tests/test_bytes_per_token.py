"""The roofline's bytes per decoded token (gpt_fast/cli/benchmark.py bytes_per_token): every weight the step reads
once, the token table whole only when the LM head multiplies by it, and the KV cache, counted by hand here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.cli.benchmark import bytes_per_token

CONFIG = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=96, n_positions=16)


def model(**overrides) -> OpenAIGPTLMHeadModel:
    torch.manual_seed(0)
    return OpenAIGPTLMHeadModel(OpenAIGPTConfig(**CONFIG, **overrides)).eval()


def expected(m, table_rows: int, head_bytes: int, context: float, batch: int = 1) -> float:
    """Blocks' and final weights + table_rows rows of the token table + one position row + head_bytes + KV."""
    t = m.transformer
    size = 4  # float32
    blocks = sum(p.numel() for p in t.h.parameters()) * size
    rows = table_rows * CONFIG["n_embd"] * size + CONFIG["n_embd"] * size
    kv = 2 * CONFIG["n_layer"] * context * CONFIG["n_embd"] * size * batch
    return blocks + rows + head_bytes + kv


class Wrapped(nn.Module):
    """A head wrapped around the tied Linear, as PEFT's LoRA puts one there."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base_layer = base

    def forward(self, x):
        return self.base_layer(x)


def test_tied_head_reads_the_table_once_whole():
    m = model()
    assert m.lm_head.weight.data_ptr() == m.transformer.tokens_embed.weight.data_ptr()
    assert bytes_per_token(m, 10.5) == expected(m, CONFIG["vocab_size"], 0, 10.5)
    assert bytes_per_token(m, 3, batch=4) == expected(m, CONFIG["vocab_size"], 0, 3, batch=4)


def test_untied_head_reads_its_own_weight_and_one_table_row():
    m = model(tie_word_embeddings=False)
    assert m.lm_head.weight.data_ptr() != m.transformer.tokens_embed.weight.data_ptr()
    head = CONFIG["vocab_size"] * CONFIG["n_embd"] * 4
    assert bytes_per_token(m, 7) == expected(m, 1, head, 7)


def test_wrapped_tied_head_still_reads_the_table_whole():
    m = model()
    m.lm_head = Wrapped(m.lm_head)
    assert bytes_per_token(m, 7) == expected(m, CONFIG["vocab_size"], 0, 7)


@pytest.mark.parametrize("lm_head", [True, False])
def test_quantized_head_reads_its_buffers_and_one_table_row(lm_head):
    m = model().quantize("int8", lm_head=lm_head)
    size, C, V, L = 4, CONFIG["n_embd"], CONFIG["vocab_size"], CONFIG["n_layer"]
    # int8: a byte per weight and a float32 scale per output row. Per block c_attn C -> 3C, attn.c_proj C -> C,
    # c_fc C -> 4C, mlp.c_proj 4C -> C: 12 C^2 weights and 9 C rows.
    quantized = L * (12 * C * C + 9 * C * size) + (V * C + V * size if lm_head else 0)
    kept = sum(p.numel() for p in m.transformer.h.parameters()) * size  # biases and LayerNorms stay float32
    assert kept == L * (9 * C + 4 * C) * size
    table = (1 if lm_head else V) * C * size  # an unquantized head stays tied to the table
    kv = 2 * L * 5 * C * size
    assert bytes_per_token(m, 5) == kept + quantized + table + C * size + kv
