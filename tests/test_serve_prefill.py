"""Chunked prefill's row buckets (gpt_fast/serving/prefill.py): chunks longer than linear_small_m's limit run padded
to a multiple of ROW_BUCKET rows, and the engine's tokens stay model.generate's (the reference) with the padding."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import collect, tiny_model_and_tokenizer

from gpt_fast.serving import Engine, SamplingParams
from gpt_fast.serving import prefill as prefill_module
from gpt_fast.serving.prefill import ROW_BUCKET, padded_rows


def test_padded_rows_rounds_up_above_the_small_m_limit_within_the_room():
    assert ROW_BUCKET == 16
    assert [padded_rows(r, 32, 512) for r in (1, 7, 32)] == [1, 7, 32]  # linear_small_m: no GEMM shapes to bound
    assert [padded_rows(r, 32, 512) for r in (33, 47, 48, 49, 255, 256)] == [48, 48, 48, 64, 256, 256]
    assert padded_rows(45, 32, 46) == 46 and padded_rows(45, 32, 45) == 45  # never past the cache / positions


@pytest.mark.parametrize("chunk", [256, 40])  # 45 prompt tokens: one chunk padded to 48; chunks of 40 (-> 48) and 5
def test_padded_prefill_gives_generates_greedy_tokens(monkeypatch, chunk):
    model, tokenizer = tiny_model_and_tokenizer()
    prompt = [int(t) for t in torch.randint(0, len(tokenizer), (45,), generator=torch.Generator().manual_seed(3))]
    calls, real = [], prefill_module.padded_rows

    def spy(*args):
        calls.append((args[0], real(*args)))
        return calls[-1][1]

    monkeypatch.setattr(prefill_module, "padded_rows", spy)
    engine = Engine(model, tokenizer, max_batch=2, prefill_chunk=chunk).start()
    try:
        out = collect(engine, prompt, SamplingParams(max_tokens=12, temperature=0, logprobs=1, prompt_logprobs=True))[0]
    finally:
        engine.stop()
    assert calls == ([(45, 48)] if chunk == 256 else [(40, 48), (5, 5)])  # the padding did run
    with torch.inference_mode():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=12)[0, len(prompt):].tolist()
        logits = model(torch.tensor([prompt])).logits[0].float().log_softmax(-1)  # (T, V)
    assert out["tokens"] == expected
    reference = [None] + [logits[i, prompt[i + 1]].item() for i in range(len(prompt) - 1)]
    assert out["prompt_logprobs"][0] is None
    torch.testing.assert_close(torch.tensor(out["prompt_logprobs"][1:]), torch.tensor(reference[1:]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("prompt_logprobs", [False, True])
@pytest.mark.parametrize("chunk", [256, 40])  # 45 tokens: one chunk (padded to 48); chunks of 40 (-> 48) and 5
def test_last_layer_runs_on_the_chunks_last_token_unless_prompt_logprobs(chunk, prompt_logprobs):
    """Without prompt_logprobs only a chunk's last token leaves the last layer (its projections and MLP run on one
    row; keys and values still for every position); the tokens stay model.generate's either way."""
    model, tokenizer = tiny_model_and_tokenizer()
    prompt = [int(t) for t in torch.randint(0, len(tokenizer), (45,), generator=torch.Generator().manual_seed(5))]
    rows = {"first": [], "last": []}  # rows reaching the first and the last block's c_fc, per call
    hooks = [block.mlp.c_fc.register_forward_pre_hook(
        lambda module, args, key=key: rows[key].append(args[0].numel() // args[0].shape[-1]) and None)
        for key, block in (("first", model.transformer.h[0]), ("last", model.transformer.h[-1]))]
    engine = Engine(model, tokenizer, max_batch=2, prefill_chunk=chunk).start()
    try:
        out = collect(engine, prompt, SamplingParams(max_tokens=6, temperature=0, logprobs=1,
                                                     prompt_logprobs=prompt_logprobs))[0]
    finally:
        engine.stop()
        for hook in hooks:
            hook.remove()
    with torch.inference_mode():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=6)[0, len(prompt):].tolist()
        first = model(torch.tensor([prompt])).logits[0, -1].float().log_softmax(-1)[expected[0]].item()
    assert out["tokens"] == expected
    assert out["logprobs"][0].logprob == pytest.approx(first, abs=1e-4)  # the first token's, from the last layer's row
    chunks = [48] if chunk == 256 else [48, 5]  # the rows each chunk runs with (padded)
    assert rows["first"][:len(chunks)] == chunks
    assert rows["last"][:len(chunks)] == (chunks if prompt_logprobs else [1] * len(chunks))
