"""What the engine reports as it runs (for metrics): a no-op base class; the HTTP layer's Metrics fills it in.

Every method is called from the engine thread except request_rejected (the submitting thread)."""

from __future__ import annotations


class EngineObserver:
    def request_rejected(self, reason: str) -> None:  # "queue_full", "bad_request"
        pass

    def sequence_started(self, queue_seconds: float) -> None:  # given a slot
        pass

    def first_token(self, ttft_seconds: float) -> None:  # from arrival to the first token
        pass

    def step(self, batch_size: int, queue_depth: int, new_tokens: int) -> None:  # after each prefill / decode step
        pass

    def prefix_cache(self, queried: int, hit: int) -> None:  # a prompt of `queried` tokens, `hit` of them cached
        pass

    def speculated(self, drafted: int, kept: int) -> None:  # a speculative round: draft tokens made and kept
        pass

    def sequence_finished(self, reason: str, prompt_tokens: int, output_tokens: int,
                          tpot_seconds: float | None) -> None:
        pass
