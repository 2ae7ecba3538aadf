"""Prometheus metrics of one server (prometheus_client, on a registry of its own, no global state): HTTP requests
by endpoint and status, prompt / generated tokens, queue depth and batch size (read from the engine when
scraped), time to first token and time per output token histograms, draft tokens verified and kept (prompt
lookup decoding), prompt tokens looked up in and found in the prefix cache. It is the engine's observer.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gpt_fast.serving.observer import EngineObserver

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics(EngineObserver):
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gpt_fast_http_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.rejected = Counter("gpt_fast_requests_rejected", "Requests refused by the engine", ["reason"],
                                registry=r)
        self.finished = Counter("gpt_fast_sequences_finished", "Sequences finished, by finish reason", ["reason"],
                                registry=r)
        self.prompt_tokens = Counter("gpt_fast_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter("gpt_fast_generation_tokens", "Tokens generated", registry=r)
        self.queue_depth = Gauge("gpt_fast_queue_depth", "Sequences waiting for a slot", registry=r)
        self.batch_size = Gauge("gpt_fast_batch_size", "Sequences holding a slot", registry=r)
        self.step_batch = Histogram("gpt_fast_step_batch_size", "Rows per engine step", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.ttft = Histogram("gpt_fast_time_to_first_token_seconds", "Arrival to first token", registry=r,
                              buckets=TTFT_BUCKETS)
        self.tpot = Histogram("gpt_fast_time_per_output_token_seconds", "Per token after the first, per sequence",
                              registry=r, buckets=TPOT_BUCKETS)
        self.draft_tokens = Counter("gpt_fast_spec_decode_draft_tokens", "Draft tokens verified (prompt lookup)",
                                    registry=r)
        self.accepted_tokens = Counter("gpt_fast_spec_decode_accepted_tokens",
                                       "Draft tokens the model kept (prompt lookup)", registry=r)
        self.prefix_queries = Counter("gpt_fast_prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                      registry=r)
        self.prefix_hits = Counter("gpt_fast_prefix_cache_hits", "Prompt tokens found in the prefix cache",
                                   registry=r)
        self.queue_time = Histogram("gpt_fast_queue_time_seconds", "Arrival to getting a slot", registry=r,
                                    buckets=TTFT_BUCKETS)

    def watch(self, engine) -> None:
        self.queue_depth.set_function(engine.queue_depth)
        self.batch_size.set_function(engine.batch_size)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- EngineObserver --
    def request_rejected(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def sequence_started(self, queue_seconds: float) -> None:
        self.queue_time.observe(queue_seconds)

    def first_token(self, ttft_seconds: float) -> None:
        self.ttft.observe(ttft_seconds)

    def step(self, batch_size: int, queue_depth: int, new_tokens: int) -> None:
        self.step_batch.observe(batch_size)
        self.generation_tokens.inc(new_tokens)

    def prefix_cache(self, queried: int, hit: int) -> None:
        self.prefix_queries.inc(queried)
        self.prefix_hits.inc(hit)

    def speculated(self, drafted: int, kept: int) -> None:
        self.draft_tokens.inc(drafted)
        self.accepted_tokens.inc(kept)

    def sequence_finished(self, reason, prompt_tokens, output_tokens, tpot_seconds) -> None:
        self.finished.labels(reason).inc()
        self.prompt_tokens.inc(prompt_tokens)
        if tpot_seconds is not None:
            self.tpot.observe(tpot_seconds)
