"""A load generator for an OpenAI-compatible completions server, after vLLM's benchmark_serving.py: streaming
requests with random token-id prompts, sent at Poisson arrivals of a given rate or at a fixed concurrency,
bounded in requests and in time. Reports request throughput, output tokens/s, and mean / median / p99 of time to
first token (TTFT), time per output token after the first (TPOT, per request) and inter-token latency (ITL, every
gap between streamed tokens), plus how many requests failed and with which HTTP status.

    specs = random_requests(64, vocab=40478, prompt=(32, 256), output=(64, 256), seed=0)
    result = asyncio.run(run_load(url, "model", specs, rate=None, concurrency=16, max_seconds=120))
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx


@dataclass
class RequestSpec:
    prompt: list[int]
    max_tokens: int


@dataclass
class RequestRecord:
    ok: bool = False
    status: int | None = None
    ttft: float | None = None
    latency: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    tokens_seen: int = 0  # tokens counted from the streamed chunks (checks the final usage: none lost or duplicated)

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2 or self.ttft is None or self.latency is None:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def random_requests(count: int, vocab: int, prompt: tuple[int, int], output: tuple[int, int], seed: int = 0):
    rng = random.Random(seed)
    return [RequestSpec([rng.randrange(vocab) for _ in range(rng.randint(*prompt))], rng.randint(*output))
            for _ in range(count)]


async def one_request(client: httpx.AsyncClient, url: str, model: str, spec: RequestSpec) -> RequestRecord:
    record = RequestRecord()
    body = {"model": model, "prompt": spec.prompt, "max_tokens": spec.max_tokens, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as response:
            record.status = response.status_code
            if response.status_code != 200:
                await response.aread()
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    record.output_tokens = chunk["usage"]["completion_tokens"]
                if not chunk.get("choices"):
                    continue
                now = time.perf_counter()
                record.tokens_seen += 1  # the server sends one chunk per token
                if last is None:
                    record.ttft = now - start
                else:
                    record.itl.append(now - last)
                last = now
        record.latency = time.perf_counter() - start
        record.ok = record.output_tokens == record.tokens_seen == spec.max_tokens
    except httpx.HTTPError:
        record.status = record.status or -1
    return record


async def run_load(url: str, model: str, specs: list[RequestSpec], rate: float | None = None,
                   concurrency: int | None = None, max_seconds: float = 120.0, seed: int = 0) -> dict:
    """rate: Poisson arrivals per second (None: all at once); concurrency: at most this many in flight."""
    rng = random.Random(seed)
    limit = asyncio.Semaphore(concurrency or len(specs))
    deadline = time.perf_counter() + max_seconds
    timeout = httpx.Timeout(max_seconds + 30, connect=10)
    limits = httpx.Limits(max_connections=concurrency or len(specs), max_keepalive_connections=concurrency or 64)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        async def limited(spec):
            async with limit:
                if time.perf_counter() > deadline:
                    return None
                return await one_request(client, url, model, spec)

        start = time.perf_counter()
        tasks = []
        for spec in specs:
            tasks.append(asyncio.ensure_future(limited(spec)))
            if rate:
                await asyncio.sleep(rng.expovariate(rate))
            if time.perf_counter() > deadline:
                break
        done, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - time.perf_counter()) + 30)
        for task in pending:
            task.cancel()
        duration = time.perf_counter() - start
    records = [t.result() for t in done if not t.cancelled() and t.result() is not None]
    return summarize(records, duration, len(specs), rate, concurrency)


def stats_ms(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "median": None, "p99": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"mean": 1e3 * statistics.fmean(ordered), "median": 1e3 * statistics.median(ordered), "p99": 1e3 * p99}


def summarize(records: list[RequestRecord], duration: float, sent: int, rate, concurrency) -> dict:
    ok = [r for r in records if r.ok]
    output = sum(r.output_tokens for r in ok)
    return {
        "rate": rate, "concurrency": concurrency, "requests_planned": sent, "requests_completed": len(ok),
        "requests_failed": len(records) - len(ok),
        "failed_statuses": dict(Counter(str(r.status) for r in records if not r.ok)),
        "duration_s": duration, "request_throughput": len(ok) / duration, "output_tok_s": output / duration,
        "output_tokens": output, "ttft_ms": stats_ms([r.ttft for r in ok]),
        "tpot_ms": stats_ms([r.tpot for r in ok if r.tpot is not None]),
        "itl_ms": stats_ms([gap for r in ok for gap in r.itl]),
    }


