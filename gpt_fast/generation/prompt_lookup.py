"""Prompt lookup decoding (transformers' `prompt_lookup_num_tokens`): speculative decoding (speculative.py) whose
draft tokens are copied from the sequence itself, so no draft model runs.

Each round looks for the sequence's last n tokens (n = max_matching_ngram_size down to 1) earlier in the sequence;
the tokens that followed the earliest match are the draft. The model verifies them in one pass and keeps the ones
it would have chosen itself, so the output is plain decoding's, with fewer passes where the text repeats what came
before (summaries, edits, code, extraction).
"""

from __future__ import annotations

from gpt_fast.generation.speculative import DraftPauses, next_draft_length


def find_draft(sequence: list[int], num_tokens: int, max_ngram_size: int) -> list[int]:
    """Up to num_tokens tokens that followed the earliest earlier occurrence of the sequence's last n tokens, for the
    largest n <= max_ngram_size that occurs; [] when none does (as transformers' PromptLookupCandidateGenerator)."""
    length = len(sequence)
    for n in range(min(max_ngram_size, length - 1), 0, -1):
        tail = sequence[length - n:]
        start = -1
        while True:  # candidate windows from list.index (C speed: ~10 us for 511 tokens without a match)
            try:
                start = sequence.index(tail[0], start + 1, length - n)  # windows ending before the tail's position
            except ValueError:
                break
            if sequence[start:start + n] == tail:
                return sequence[start + n:start + n + num_tokens]
    return []


class PromptLookupDrafter:
    """Drafts with find_draft. The draft length adapts as transformers' "heuristic" schedule for draft models
    (speculative.next_draft_length), between 1 and num_tokens, and drafting pauses while one-token drafts keep
    failing (speculative.DraftPauses; on the Shakespeare model's text the passes per token were 0.69 / 0.50 / 0.42
    at N = 2 / 4 / 8 without pauses, 0.71 / 0.51 / 0.42 with; pausing after every miss gave 0.63 / 0.59 / 0.43).
    The tokens are plain decoding's either way."""

    def __init__(self, num_tokens: int, max_ngram_size: int):
        self.num_tokens = num_tokens
        self.max_ngram_size = max_ngram_size
        self.length = num_tokens
        self.pauses = DraftPauses()

    def draft(self, sequence: list[int], limit: int) -> list[int]:
        if self.pauses.skip():
            return []
        return find_draft(sequence, min(self.length, limit), self.max_ngram_size)

    def update(self, sequence: list[int], kept: int, drafted: int) -> None:
        self.pauses.update(kept, drafted)
        self.length = next_draft_length(self.length, kept, drafted, self.num_tokens)
