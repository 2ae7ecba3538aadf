"""Prompt lookup decoding in the serving engine (`gpt-fast serve --prompt-lookup-num-tokens N`).

When a decode step has a single decoding sequence (one client at a time: the latency case, where a step reads
every weight for one token), the engine drafts up to N tokens by prompt lookup (generation/prompt_lookup.py: the
tokens that followed an earlier occurrence of the sequence's last n-gram, in its prompt or its own output) and the
model verifies them in one pass over that sequence's cache row. Tokens are then chosen position by position by
the engine's own sampler, exactly as the plain steps choose them (logit_bias, penalties, temperature, top-k/p,
min-p, the request's seeded generator, logprobs; one draw per emitted token, so a seeded request gets the tokens
it gets without speculation, up to the rounding of a several-row pass against a one-row one); each emitted token
goes to the client at once; at the first token that differs from the draft, the rest of the draft is dropped from
the cache. With two or more sequences decoding, the plain batched step runs: every row's step reads the weights
once already, and a verification pass over several rows' drafts would cost more than it saves on a CPU.

Each slot gets an IncrementalDecoder over its own cache row (a view into the engine's one cache) the first time it
speculates, and its verification passes are replayed per number of tokens (replayed_step.ReplayedExtend).
"""

from __future__ import annotations

import torch

from gpt_fast.generation.decoder import IncrementalDecoder
from gpt_fast.generation.prompt_lookup import PromptLookupDrafter
from gpt_fast.generation.replayed_step import ReplayedExtend
from gpt_fast.serving.slots import SlotCache


class PromptLookupSpeculation:
    def __init__(self, model, plan, slots: SlotCache, num_tokens: int, max_ngram_size: int = 2):
        for name, value in (("prompt_lookup_num_tokens", num_tokens), ("max_matching_ngram_size", max_ngram_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.model, self.plan, self.slots = model, plan, slots
        self.num_tokens = num_tokens
        self.max_ngram_size = max_ngram_size
        self.passes: dict[int, tuple[IncrementalDecoder, ReplayedExtend]] = {}  # slot -> its row's decoder

    def draft(self, sequence) -> list[int]:
        """Up to num_tokens draft tokens to follow the sequence's last emitted token ([] when there is no match or
        the request has at most one token left: the last new token is never fed)."""
        if sequence.drafter is None:  # per sequence: its draft length adapts to its own outcomes
            sequence.drafter = PromptLookupDrafter(self.num_tokens, self.max_ngram_size)
        left = sequence.params.max_tokens - len(sequence.output) - 1
        return sequence.drafter.draft(sequence.prompt + sequence.output, left) if left > 0 else []

    def verify(self, sequence, draft: list[int]) -> torch.Tensor:
        """One pass of the model over the sequence's last token and the draft, appended to its cache row ->
        float32 logits (k + 1, V): row i chooses the token after draft[i - 1] (row 0: after the last token)."""
        slot = sequence.slot
        if slot not in self.passes:
            decoder = IncrementalDecoder(self.model, self.slots.row(slot), self.plan)
            self.passes[slot] = decoder, ReplayedExtend(decoder)
        tokens = torch.tensor([[sequence.last_token] + draft], device=self.slots.lengths.device)  # (1, k + 1)
        return self.passes[slot][1](tokens)[0]

    def round(self, sequence, choose, emit) -> tuple[int, int] | None:
        """One speculative round for a decoding sequence: draft, verify, then per position choose(logits (1, V)) ->
        Choice and emit(sequence, choice) (the engine's sampler and emit) until a token differs from the draft or
        the sequence finishes. Returns (drafted, kept), or None when there is no draft (the plain step runs)."""
        draft = self.draft(sequence)
        if not draft:
            return None
        slot = sequence.slot
        logits = self.verify(sequence, draft)  # (k + 1, V)
        for i in range(len(draft) + 1):
            choice = choose(logits[i:i + 1])
            emit(sequence, choice)
            matched = i < len(draft) and choice.token == draft[i]
            if not matched or sequence.slot != slot or sequence.cancelled:  # a miss, the bonus token, or the end
                break
        kept = i + matched  # the drafts emitted as drafted
        if sequence.slot == slot:  # still decoding: the cache keeps the fed token and the kept drafts
            self.slots.lengths[slot] -= len(draft) - kept
        sequence.drafter.update(sequence.prompt + sequence.output, kept, len(draft))
        return len(draft), kept
