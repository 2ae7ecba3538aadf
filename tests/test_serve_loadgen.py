"""The load generator of benchmarks/bench_serve.py (gpt_fast/serving/loadgen.py) against a tiny server: every
request completes with as many streamed tokens as its usage says, and the statistics are computed as documented."""

from __future__ import annotations

import asyncio

import pytest
from serve_helpers import tiny_model_and_tokenizer

from gpt_fast.serving.http import build_app
from gpt_fast.serving.launch import BackgroundServer
from gpt_fast.serving.loadgen import RequestRecord, random_requests, run_load, stats_ms, summarize


@pytest.mark.parametrize("rate, concurrency", [(None, 3), (200.0, None)])
def test_load_against_a_tiny_server(rate, concurrency):
    model, tokenizer = tiny_model_and_tokenizer()
    app, _ = build_app(model, tokenizer, "tiny", max_batch=2, max_queue=16)
    specs = random_requests(6, len(tokenizer), (4, 12), (3, 20), seed=0)
    with BackgroundServer(app) as server:
        result = asyncio.run(run_load(server.url, "tiny", specs, rate=rate, concurrency=concurrency, max_seconds=60))
    assert result["requests_completed"] == 6 and result["requests_failed"] == 0
    assert result["output_tokens"] == sum(s.max_tokens for s in specs)
    assert result["ttft_ms"]["median"] > 0 and result["tpot_ms"]["p99"] >= result["tpot_ms"]["median"]


def test_statistics():
    assert stats_ms([0.001, 0.002, 0.003]) == pytest.approx({"mean": 2.0, "median": 2.0, "p99": 3.0})
    done = RequestRecord(ok=True, ttft=0.1, latency=0.5, itl=[0.2, 0.2], output_tokens=3, tokens_seen=3)
    failed = RequestRecord(ok=False, status=503)
    result = summarize([done, failed], 2.0, 2, None, 2)
    assert result["tpot_ms"]["mean"] == pytest.approx(200.0)
    assert result["output_tok_s"] == pytest.approx(1.5) and result["failed_statuses"] == {"503": 1}
