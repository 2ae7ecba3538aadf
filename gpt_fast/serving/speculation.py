"""Speculative decoding in the serving engine: `gpt-fast serve --prompt-lookup-num-tokens N` (PromptLookupDrafting,
here) or `--assistant-model DIR` (AssistantDrafting, assistant_drafting.py).

Each decode step, every decoding sequence drafts tokens: by prompt lookup (generation/prompt_lookup.py: the tokens
that followed an earlier occurrence of its last n-gram, in its prompt or its own output), or from a smaller model
with the same vocabulary. When at least one has a draft, the step is a verification pass instead:
IncrementalDecoder.extend over the slot rows [0, hi) with S tokens per row (each row's last token, its draft, and
padding where its draft is shorter), which reads the weights once for all hi * S rows. Tokens are then chosen
position by position, for the rows still on their drafts, by the engine's own sampler, exactly as plain steps choose
them (logit_bias, penalties, temperature, top-k/p, min-p, each request's seeded generator with one draw per emitted
token, logprobs): so a request gets the tokens it gets without speculation, up to the rounding of a several-row pass
against a one-row one. Each emitted token goes to its client at once. A row leaves the round at its first token that
differs from its draft (the model's own choice is emitted), after its last draft (the model's next token comes
free), or when it finishes; its cache keeps the fed last token and the drafts it kept, every other row's length is
restored.

S is bounded so that no row's positions run past the cache (prompts still prefilling included) and hi * S stays
within the small-M kernel's rows (plan.small_m_rows; 32 with the fused kernels): past that the pass would take the
GEMM path and cost more than it saves. Prompt lookup's draft length adapts per sequence to its own outcomes
(transformers' heuristic schedule, 1 to N). The passes are replayed per (hi, S) (replayed_step.ReplayedExtend).
"""

from __future__ import annotations

import torch

from gpt_fast.generation.decoder import IncrementalDecoder
from gpt_fast.generation.prompt_lookup import PromptLookupDrafter
from gpt_fast.generation.replayed_step import ReplayedExtend
from gpt_fast.serving.assistant_drafting import AssistantDrafting
from gpt_fast.serving.slots import SlotCache

DEFAULT_MAX_ROWS = 32  # hi * S when the plan has no small-M kernel (PyTorch's paths)


class PromptLookupDrafting:
    """Each sequence drafts alone, with its own PromptLookupDrafter (its draft length adapts to its own outcomes)."""

    def __init__(self, num_tokens: int, max_ngram_size: int = 2):
        for name, value in (("prompt_lookup_num_tokens", num_tokens), ("max_matching_ngram_size", max_ngram_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.num_tokens = num_tokens
        self.max_ngram_size = max_ngram_size

    def drafts(self, sequences: list, limit: int) -> list[list[int]]:
        """Up to `limit` draft tokens per sequence to follow its last emitted token ([] when there is no match or
        the request has at most one token left: the last new token is never fed)."""
        return [self.draft(sequence, min(limit, sequence.tokens_left())) for sequence in sequences]

    def draft(self, sequence, limit: int) -> list[int]:
        if limit < 1:
            return []
        if sequence.drafter is None:
            sequence.drafter = PromptLookupDrafter(self.num_tokens, self.max_ngram_size)
        return sequence.drafter.draft(sequence.prompt + sequence.output, limit)

    def update(self, sequences: list, slots: list[int], drafts: list[list[int]], kept: list[int]) -> None:
        for sequence, draft, count in zip(sequences, drafts, kept):
            if draft:
                sequence.drafter.update(sequence.prompt + sequence.output, count, len(draft))

    def finished(self, sequence) -> None:
        """Nothing to keep: prompt lookup holds no cache."""


def speculation_for(model, plan, slots: SlotCache, lookup: int | None, ngram: int, assistant,
                    assistant_tokens: int | None, confidence: float | None, schedule: str | None,
                    prefix_cache_size: int = 0) -> Speculation | None:
    """The engine's speculation: prompt lookup (lookup drafts a round), an assistant model (with a prefix cache of
    prefix_cache_size entries, as the engine's), or None."""
    if assistant is None:
        if (assistant_tokens, confidence, schedule) != (None, None, None):
            raise ValueError("num_assistant_tokens, assistant_confidence_threshold and num_assistant_tokens_schedule "
                             "need an assistant_model")
        return None if lookup is None else Speculation(model, plan, slots, PromptLookupDrafting(lookup, ngram))
    if lookup is not None:
        raise ValueError("pass prompt_lookup_num_tokens or assistant_model, not both: a round has one drafter")
    drafting = AssistantDrafting(model, assistant, slots.max_batch, assistant_tokens, confidence, schedule,
                                 prefix_cache_size)
    return Speculation(model, plan, slots, drafting)


class Speculation:
    """The verification rounds; `drafting` (PromptLookupDrafting or AssistantDrafting) proposes the drafts:
    drafts(sequences, limit) -> a list of at most `limit` tokens per sequence, update(sequences, slots, drafts,
    kept) hears each row's outcome once its tokens are emitted (a row whose sequence.slot is no longer its slot
    has finished), and finished(sequence) hears of a sequence's end, in a round or not, before its slot is
    released."""

    def __init__(self, model, plan, slots: SlotCache, drafting):
        self.model, self.plan, self.slots = model, plan, slots
        self.drafting = drafting
        self.max_rows = plan.small_m_rows or DEFAULT_MAX_ROWS
        self.passes: dict[int, ReplayedExtend] = {}  # hi -> the verification pass over the slot rows [0, hi)

    def round(self, sequences: list, select, emit) -> tuple[int, int] | None:
        """One decode step as a speculative round for the decoding `sequences`: select(logits (R, V), rows) ->
        Choices and emit(sequence, choice) are the engine's sampler and emit. Returns (drafted, kept) over the
        rows, or None when no row has a draft or the pass would not fit (the plain step runs)."""
        slots = [s.slot for s in sequences]
        hi = max(slots) + 1
        lengths = self.slots.lengths[:hi]  # (hi,)
        saved = lengths.tolist()
        widest = min(self.slots.max_length - max(saved), self.max_rows // hi)  # tokens a row the pass can take
        if widest < 2:  # no room for a draft token: no drafting either
            return None
        drafts = self.drafting.drafts(sequences, widest - 1)
        S = 1 + max(map(len, drafts))
        if S < 2:
            return None
        fed = torch.zeros(hi, S, dtype=torch.long)  # (hi, S) rows not decoding, and short drafts, padded with 0
        for slot, sequence, draft in zip(slots, sequences, drafts):
            fed[slot, :1 + len(draft)] = torch.tensor([sequence.last_token] + draft)
        logits = self.pass_for(hi)(fed.to(lengths.device))  # (hi, S, V)
        kept = self.choose(sequences, slots, drafts, logits, select, emit)
        final = list(saved)  # rows not decoding keep their length
        for slot, sequence, count in zip(slots, sequences, kept):
            final[slot] = saved[slot] + 1 + count if sequence.slot == slot else 0  # 0: finished, slot given back
        lengths.copy_(torch.tensor(final))
        self.drafting.update(sequences, slots, drafts, kept)
        return sum(map(len, drafts)), sum(kept)

    def finished(self, sequence) -> None:
        """A sequence ends, before its slot is released (the engine's emit)."""
        self.drafting.finished(sequence)

    @staticmethod
    def choose(sequences, slots, drafts, logits, select, emit) -> list[int]:
        """Emits tokens position by position for the rows still on their drafts; returns each row's kept drafts."""
        kept = [0] * len(sequences)
        on = list(range(len(sequences)))  # rows still on their drafts
        for i in range(logits.shape[1]):
            rows = torch.tensor([slots[j] for j in on], device=logits.device)
            still = []
            for j, choice in zip(on, select(logits[rows, i], [sequences[j] for j in on])):
                sequence = sequences[j]
                emit(sequence, choice)
                matched = i < len(drafts[j]) and choice.token == drafts[j][i]
                kept[j] = i + matched  # the drafts emitted as drafted
                if matched and sequence.slot == slots[j] and not sequence.cancelled:
                    still.append(j)
            on = still
            if not on:
                break
        return kept

    def pass_for(self, hi: int) -> ReplayedExtend:
        if hi not in self.passes:
            self.passes[hi] = ReplayedExtend(IncrementalDecoder(self.model, self.slots.rows(hi), self.plan))
        return self.passes[hi]
