"""The load generator of benchmarks/bench_serve.py (gpt_fast/serving/loadgen.py) against a tiny server: every
request completes with as many streamed tokens as its usage says, and the statistics are computed as documented."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from serve_helpers import SlowTokenizer, tiny_model_and_tokenizer

from gpt_fast.serving.engine import RequestHandle
from gpt_fast.serving.http import build_app
from gpt_fast.serving.launch import BackgroundServer
from gpt_fast.serving.loadgen import RequestRecord, random_requests, run_load, stats_ms, summarize
from gpt_fast.serving.sequence import Sequence
from gpt_fast.serving.streams import RequestStream


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


def test_the_serve_benchmark_end_to_end(tmp_path):
    """benchmarks/bench_serve.py's code (a server child process, batch-1 generate, HTTP batch-1, one concurrency
    level, two Poisson runs) on a 2-layer model with GPT-1's vocabulary."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "serve.json"
    result = subprocess.run([sys.executable, "benchmarks/bench_serve.py", "--tiny", "--num-prompts", "3",
                             "--concurrency", "2", "--rate", "200", "--rate-runs", "2", "--max-seconds", "60",
                             "--dtype", "float32", "--json", str(out)],
                            cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["http_batch1"]["requests_completed"] == 4
    run = report["runs"][0]
    assert run["concurrency"] == 2 and run["requests_completed"] == 3 and run["requests_failed"] == 0
    assert 0 < run["http_thread_cpu_share"] < 1
    assert report["ratios"][0]["output_tok_s_over_batch1"] > 0
    assert report["generate_batch1"]["used"]["tok_s"] > 0
    assert [r["rate"] for r in report["runs"]] == [None, 200.0, 200.0]  # --rate-runs: two Poisson runs
    assert all(r["requests_failed"] == 0 for r in report["runs"])


def test_overload_fails_only_with_503_and_loses_no_tokens():
    """20 requests at once against 2 slots and a queue of 2, each token 20 ms slower: the ones that do not fit are
    503 (queue_full), every other one streams exactly its max_tokens, as its usage says."""
    model, tokenizer = tiny_model_and_tokenizer()
    app, engine = build_app(model, SlowTokenizer(tokenizer), "tiny", max_batch=2, max_queue=2)
    specs = random_requests(20, len(tokenizer), (4, 12), (10, 20), seed=1)
    with BackgroundServer(app) as server:
        result = asyncio.run(run_load(server.url, "tiny", specs, concurrency=20, max_seconds=60))
    assert set(result["failed_statuses"]) == {"503"}
    assert result["requests_completed"] + result["requests_failed"] == 20 and result["requests_completed"] >= 4
    assert engine.slots.in_use() == 0


def _live(*types) -> int:
    gc.collect()
    return sum(issubclass(type(o), types) for o in gc.get_objects())


def _settles_to(count, expected: int, seconds: float = 5.0) -> int:
    """count() once it is at most expected, or its last value after `seconds` (a response's last objects may be
    dropped by the server thread just after the client has read the end of the stream)."""
    deadline = time.monotonic() + seconds
    while (value := count()) > expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_memory_stays_flat_over_repeated_overload():
    """Six waves of 20 requests at once against 2 slots and a queue of 2 (most refused with 503): after the warm-up
    wave, no sequence, request handle, stream or tensor outlives its request, and the Python heap (server and load
    generator, tracemalloc) grows less than 64 KiB over waves 2-6. Library caches (regex, weak sets) add ~5 KiB a
    wave, settling; a planted leak of 1 KiB per submitted request (~25 KiB a wave) fails it."""
    model, tokenizer = tiny_model_and_tokenizer()
    app, engine = build_app(model, SlowTokenizer(tokenizer), "tiny", max_batch=2, max_queue=2)
    heap, tensors = [], []
    requests_before = _live(Sequence, RequestHandle, RequestStream)  # other tests' objects not yet collected
    with BackgroundServer(app) as server:
        tracemalloc.start()
        try:
            for wave in range(6):
                specs = random_requests(20, len(tokenizer), (4, 12), (3, 8), seed=wave)
                result = asyncio.run(run_load(server.url, "tiny", specs, concurrency=20, max_seconds=60))
                assert set(result["failed_statuses"]) <= {"503"} and result["requests_completed"] >= 4
                assert engine.slots.in_use() == 0
                assert _settles_to(lambda: _live(Sequence, RequestHandle, RequestStream), requests_before) \
                    <= requests_before
                tensors.append(_live(torch.Tensor))
                heap.append(tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
    assert max(tensors[1:]) == min(tensors[1:]), tensors
    assert max(heap[2:]) - min(heap[1:]) < 64 * 1024, heap  # bytes; the first wave warms caches up


def test_a_run_where_nothing_completed_prints_without_a_tpot():
    """Under overload every request may be refused (503): the run's line must not fail on the missing median."""
    from gpt_fast.cli.serve_benchmark import run_line

    refused = RequestRecord()
    refused.status = 503
    summary = summarize([refused], 30.0, 1, 4.0, None)
    assert summary["tpot_ms"]["median"] is None
    assert run_line(summary) == "rate=4.0 concurrency=None: 0.0 output tok/s, median TPOT -, 1 failed"
