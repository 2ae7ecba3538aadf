"""Prompt lookup decoding (transformers' `prompt_lookup_num_tokens`): speculative decoding whose draft tokens are
copied from the sequence itself, so no draft model runs.

Each round looks for the sequence's last n tokens (n = max_matching_ngram_size down to 1) earlier in the sequence;
the tokens that followed the earliest match are the draft. One pass of the model over the last emitted token and the
k draft tokens (IncrementalDecoder.extend: k + 1 rows through the same kernels, which read the weights once, so the
pass costs far less than k + 1 steps) gives the logits at k + 1 positions. Tokens are then chosen position by
position exactly as generate() chooses them one step at a time (the same processors, the same greedy argmax or
draw from the same generator); while the chosen token equals the draft token the next position's logits are
already there, and at the first difference the rest of the draft is dropped from the cache (rewind). So the
output is the one plain decoding gives (up to the rounding of a k + 1-row pass against a 1-row one), with fewer
passes where the text repeats what came before (summaries, edits, code, extraction).
"""

from __future__ import annotations

from typing import Callable

import torch


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


def speculative_decode(decoder, step: Callable, token: torch.Tensor, sequence: list[int], emitted: int, max_new: int,
                       num_tokens: int, max_ngram_size: int, emit: Callable, finished: Callable) -> int:
    """Continues a batch-of-one generation whose last emitted token is `token` (1,), `emitted` tokens so far, the
    real tokens so far in `sequence` (appended to). step(tokens) is decoder.step or what stands for it (a replayed
    step: replayed_step.py), for rounds without a draft. emit(logits (1, V), step) -> (1,) chooses and records the token
    of a step, as generate()'s loop does; finished(step) says whether generation stops after it. Returns the number
    of emitted tokens.

    The draft length adapts as transformers' "heuristic" schedule for draft models: it starts at num_tokens, grows
    by 2 (up to num_tokens) after a pass whose drafts were all kept and shrinks by 1 (down to 1) after one that
    dropped some, so that text whose drafts keep failing pays for a 2-row pass per token, not an N + 1-row one."""
    length = num_tokens
    while emitted < max_new and not finished(emitted - 1):
        draft = find_draft(sequence, min(length, max_new - emitted - 1), max_ngram_size)
        if not draft:  # nothing to verify: a plain step
            token = emit(step(token), emitted)
            emitted += 1
            sequence.append(int(token[0]))
            continue
        fed = torch.tensor([[int(token[0])] + draft], device=token.device)  # (1, k + 1)
        logits = decoder.extend(fed)  # (1, k + 1, V)
        for i in range(len(draft) + 1):
            token = emit(logits[:, i], emitted)
            emitted += 1
            chosen = int(token[0])
            sequence.append(chosen)
            if i == len(draft) or chosen != draft[i] or finished(emitted - 1):
                decoder.rewind(len(draft) - i)  # the cache keeps the fed token and the accepted drafts
                length = min(num_tokens, length + 2) if i == len(draft) else max(1, length - 1)
                break
    return emitted
