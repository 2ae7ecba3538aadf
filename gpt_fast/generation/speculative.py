"""Speculative decoding for generate(): draft tokens from a cheap source, verified by the model in one pass.

Two draft sources share the verification loop below: prompt lookup (`prompt_lookup_num_tokens`, prompt_lookup.py:
tokens copied from the sequence itself) and an assistant model (`assistant_model`, assistant.py: a smaller model
with the same vocabulary decoding greedily on its own KV cache). A drafter has two methods:

- draft(sequence, limit) -> list[int]: up to `limit` draft tokens to follow `sequence` (the real tokens so far);
  [] when it has none (the round is then a plain step);
- update(sequence, kept, drafted): after the verification, `kept` of the `drafted` tokens were accepted and
  `sequence` has grown by kept + 1 tokens (the accepted drafts and the model's own next token).

One pass of the model over the last emitted token and the k draft tokens (IncrementalDecoder.extend: k + 1 rows
through the same kernels, which read the weights once, so the pass costs far less than k + 1 steps) gives the
logits at k + 1 positions. Tokens are then chosen position by position exactly as generate() chooses them one step
at a time (the same processors, the same greedy argmax or draw from the same generator); while the chosen token
equals the draft token the next position's logits are already there, and at the first difference the rest of the
draft is dropped from the cache (rewind). So the output is the one plain decoding gives (up to the rounding of a
k + 1-row pass against a 1-row one), with fewer passes of the model where the drafts are right.

With do_sample this acceptance rule (keep a draft token when the model's own draw equals it) gives plain
sampling's draws for a given seed; transformers' assisted sampling uses the speculative-sampling rule instead (same
distribution, other draws, more drafts kept at high temperature).
"""

from __future__ import annotations

from typing import Callable

import torch


def speculative_decode(decoder, step: Callable, extend: Callable, token: torch.Tensor, sequence: list[int],
                       emitted: int, max_new: int, drafter, emit: Callable, finished: Callable) -> int:
    """Continues a batch-of-one generation whose last emitted token is `token` (1,), `emitted` tokens so far, the
    real tokens so far in `sequence` (appended to). step(tokens) / extend(tokens) are decoder.step / decoder.extend
    or what stands for them (replayed: replayed_step.py); step is for rounds without a draft. emit(logits (1, V),
    step) -> (1,) chooses and records the token of a step, as generate()'s loop does; finished(step) says whether
    generation stops after it. Returns the number of emitted tokens; decoder.rewind drops rejected drafts."""
    while emitted < max_new and not finished(emitted - 1):
        draft = drafter.draft(sequence, max_new - emitted - 1)  # the last new token is never fed: no draft for it
        if not draft:  # nothing to verify: a plain step
            token = emit(step(token), emitted)
            emitted += 1
            sequence.append(int(token[0]))
            continue
        fed = torch.tensor([[int(token[0])] + draft], device=token.device)  # (1, k + 1)
        logits = extend(fed)  # (1, k + 1, V)
        for i in range(len(draft) + 1):
            token = emit(logits[:, i], emitted)
            emitted += 1
            chosen = int(token[0])
            sequence.append(chosen)
            if i == len(draft) or chosen != draft[i] or finished(emitted - 1):
                decoder.rewind(len(draft) - i)  # the cache keeps the fed token and the accepted drafts
                drafter.update(sequence, i, len(draft))
                break
    return emitted


def next_draft_length(length: int, kept: int, drafted: int, most: int | None) -> int:
    """transformers' "heuristic" schedule: 2 more after a pass that kept every draft token (up to `most`, if given),
    1 fewer (down to 1) after one that dropped some; so text whose drafts keep failing pays for a 2-row pass per
    token, not an N + 1-row one."""
    if kept == drafted:
        return length + 2 if most is None else min(most, length + 2)
    return max(1, length - 1)


MAX_PAUSE = 16  # the most rounds drafting pauses for after drafts keep failing
MISSES_BEFORE_PAUSE = 4  # drafts of the shortest length rejected in a row before drafting pauses


class DraftPauses:
    """When a drafter's drafts keep failing: after MISSES_BEFORE_PAUSE drafts of its shortest length rejected in a
    row (one token, or any length for a drafter whose length does not adapt: shrinks=False), each further one
    pauses drafting for 1, then 2, 4, ... up to MAX_PAUSE rounds (plain steps: a pass that keeps nothing costs more
    than a step, and an assistant's drafts cost its steps too); a kept draft ends the pauses. So text whose drafts
    keep failing pays for one such round every MAX_PAUSE steps, not every step, while drafts kept now and then are
    not paused. The tokens are plain decoding's either way."""

    def __init__(self):
        self.paused = 0  # rounds left without drafting
        self.pause = 0  # the length of the last pause (0: none since a draft was kept)
        self.misses = 0  # drafts of the shortest length rejected in a row

    def skip(self) -> bool:
        """True when this round drafts nothing (one round of a pause spent)."""
        if self.paused:
            self.paused -= 1
            return True
        return False

    def update(self, kept: int, drafted: int, shrinks: bool = True) -> None:
        if kept:
            self.pause = self.misses = 0
        elif drafted == 1 or not shrinks:  # a draft that cannot shrink further
            self.misses += 1
            if self.misses >= MISSES_BEFORE_PAUSE:
                self.pause = self.paused = min(2 * self.pause or 1, MAX_PAUSE)
