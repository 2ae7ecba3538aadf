"""Assisted decoding in the serving engine (`gpt-fast serve --assistant-model DIR`): the drafts of speculation.py's
rounds come from a smaller model with the same vocabulary, decoding greedily for every drafting row at once.

The assistant has a SlotCache of its own, one row per engine slot (a sequence has the same slot number in both).
A round, over the slot rows [0, hi):
1. catch-up: a drafting sequence with more than two tokens its assistant row has not seen (its prompt, on its first
   round) has all but the last of them prefilled into its row (serving/prefill.py's prefill_chunk);
2. one batched pass feeds each drafting row its unseen tokens, one or two (two after a round whose drafts were all
   kept: the last draft, never fed, and the model's next token): a step, or an extend of two tokens a row with the
   shorter rows padded; each row's last fed token gives its first draft;
3. batched steps then feed every row its latest draft, greedily (argmax), until every row has stopped: a row stops
   after its draft length (num_assistant_tokens; "heuristic" schedules adapt it per sequence, +2 after a round that
   kept every draft, -1 otherwise, as generate does), its limit (the room the verification pass has, and the tokens
   its request has left), a stop token of its request, or a draft whose probability under the assistant is below
   assistant_confidence_threshold (0 drafts the full length).
After the model's verification each row's assistant length is set to the tokens it has seen that the model kept, so
the drafts past the first rejected one are forgotten and nothing is recomputed. With the engine's prefix cache on
(prefix_cache_size), the assistant keeps one of its own (prefix_cache.py, the same size): a first catch-up starts
after the longest prefix an earlier sequence left there, its prefilled text is stored, and so is a finished
sequence's text (a chat's next turn repeats it). While a sequence's drafts keep
failing it pauses drafting (speculative.DraftPauses, as generate's drafters do), and catches up when it resumes. A
decoding row that does not draft this round keeps its assistant length; rows of no decoding sequence (prefilling or
free) are set to 0, so that the round's writes for them stay inside the cache, and a sequence catches up from its
prompt at its first draft. Every position a round writes is below the model's own bound for the verification pass
(speculation.py), and the assistant holds at least as many positions as the model. Steps and extends are replayed
per hi (replayed_step.py), as the engine's own steps are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gpt_fast.generation.assistant import assistant_settings
from gpt_fast.generation.decoder import IncrementalDecoder, decode_plan
from gpt_fast.generation.replayed_step import ReplayedExtend, ReplayedStep
from gpt_fast.generation.speculative import DraftPauses
from gpt_fast.serving.prefill import prefill_chunk
from gpt_fast.serving.prefix_cache import PrefixCache
from gpt_fast.serving.slots import SlotCache


@dataclass
class AssistantRow:
    """A sequence's state in the assistant: the tokens of it that its assistant row holds, its draft length, and
    the last round's (sequence length before drafting, drafts fed)."""

    cached: int
    length: int
    base: int = 0
    fed: int = 0
    pauses: DraftPauses = field(default_factory=DraftPauses)


class AssistantDrafting:
    def __init__(self, model, assistant, max_batch: int, num_tokens: int | None = None,
                 confidence_threshold: float | None = None, schedule: str | None = None, prefix_cache_size: int = 0):
        given = {"assistant_model": assistant, "num_assistant_tokens": num_tokens,
                 "num_assistant_tokens_schedule": schedule, "assistant_confidence_threshold": confidence_threshold}
        self.settings = assistant_settings(model, given.get, 0)  # generate()'s checks and defaults
        if assistant.config.n_positions < model.config.n_positions:
            raise ValueError(f"assistant_model holds {assistant.config.n_positions} positions and the served model "
                             f"{model.config.n_positions}: the assistant must hold as many as the model")
        self.assistant = assistant.eval()
        device = next(assistant.parameters()).device
        self.plan = decode_plan(assistant, device)
        self.slots = SlotCache(assistant.config, max_batch, assistant.dtype, device)
        self.prefix_cache = PrefixCache(self.slots, prefix_cache_size) if prefix_cache_size else None
        self.steps: dict[int, ReplayedStep] = {}  # hi -> the assistant's step over its rows [0, hi)
        self.extends: dict[int, ReplayedExtend] = {}

    def drafts(self, sequences: list, limit: int) -> list[list[int]]:
        """Up to min(limit, each row's draft length and tokens left) greedy drafts per sequence."""
        slots = [s.slot for s in sequences]
        hi = max(slots) + 1
        limits = [0] * hi  # (hi,) each row's most drafts this round; 0: not drafting
        starts = [0] * hi  # each row's assistant length before the batched pass
        unseen: list[list[int]] = [[] for _ in range(hi)]  # the tokens each drafting row is fed first
        for slot, sequence in zip(slots, sequences):
            if sequence.drafter is None:
                sequence.drafter = AssistantRow(cached=0, length=self.settings.num_tokens)
            row = sequence.drafter
            starts[slot] = row.cached  # a row that does not draft this round keeps what its assistant row holds
            limits[slot] = 0 if row.pauses.skip() else min(limit, sequence.tokens_left(), row.length)
            if limits[slot] < 1:  # paused, or one token left (the sequence ends at its next token)
                continue
            tokens = sequence.prompt + sequence.output
            if row.cached == 0 and self.prefix_cache is not None:  # its first catch-up: any prefix kept earlier
                row.cached = self.prefix_cache.restore(slot, tokens)  # at most len(tokens) - 1; 0: none
            new = tokens[row.cached:]
            if len(new) > 2:
                prefill_chunk(self.assistant, self.plan, self.slots, slot,
                              torch.tensor(new[:-1], device=self.slots.lengths.device), row.cached, all_rows=False)
                row.cached, new = len(tokens) - 1, new[-1:]
                if self.prefix_cache is not None:
                    self.prefix_cache.store(slot, tokens[:row.cached])
            starts[slot], unseen[slot] = row.cached, new
            row.base = len(tokens)
        if not any(limits):  # no pass: every row's assistant length stays
            return [[] for _ in sequences]
        logits = self.first_pass(hi, starts, unseen)  # (hi, V)
        drafts = self.greedy(hi, logits, limits, [(slot, s.params.stop_token_ids) for slot, s in zip(slots, sequences)])
        for slot, sequence in zip(slots, sequences):
            sequence.drafter.fed = max(len(drafts[slot]) - 1, 0)
        return [drafts[slot] for slot in slots]

    def first_pass(self, hi: int, starts: list[int], unseen: list[list[int]]) -> torch.Tensor:
        """Feeds each row its unseen tokens at its start (rows not drafting: token 0, over nothing they keep) ->
        logits (hi, V) after each row's last one; leaves each row's length just past its fed tokens."""
        device = self.slots.lengths.device
        lengths = self.slots.lengths[:hi]
        lengths.copy_(torch.tensor(starts))
        S = max(map(len, unseen))
        fed = torch.zeros(hi, S, dtype=torch.long)  # (hi, S)
        for slot, tokens in enumerate(unseen):
            fed[slot, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        if S == 1:
            return self.step(hi, fed[:, 0].to(device))
        if hi not in self.extends:
            self.extends[hi] = ReplayedExtend(IncrementalDecoder(self.assistant, self.slots.rows(hi), self.plan))
        logits = self.extends[hi](fed.to(device))  # (hi, 2, V)
        last = torch.tensor([max(len(tokens), 1) - 1 for tokens in unseen], device=device)  # (hi,)
        lengths.copy_(torch.tensor([start + max(len(tokens), 1) for start, tokens in zip(starts, unseen)]))
        return logits[torch.arange(hi, device=device), last]

    def greedy(self, hi: int, logits: torch.Tensor, limits: list[int], stops: list[tuple]) -> list[list[int]]:
        """The rows' greedy drafts, one batched step per draft after the first, until every row has stopped."""
        threshold = self.settings.confidence_threshold
        drafts: list[list[int]] = [[] for _ in range(hi)]
        going = {slot: set(stop_ids) for slot, stop_ids in stops if limits[slot] > 0}
        while True:
            top, tokens = logits.max(-1)  # (hi,)
            chosen = tokens.tolist()
            unsure = ((logits - top[:, None]).exp().sum(-1) > 1 / threshold).tolist() if threshold > 0 else None
            for slot in list(going):
                drafts[slot].append(chosen[slot])
                if len(drafts[slot]) == limits[slot] or chosen[slot] in going[slot] or (unsure and unsure[slot]):
                    del going[slot]
            if not going:
                return drafts
            logits = self.step(hi, tokens)

    def step(self, hi: int, tokens: torch.Tensor) -> torch.Tensor:
        if hi not in self.steps:
            self.steps[hi] = ReplayedStep(IncrementalDecoder(self.assistant, self.slots.rows(hi), self.plan))
        return self.steps[hi](tokens)

    def update(self, sequences: list, slots: list[int], drafts: list[list[int]], kept: list[int]) -> None:
        """Each drafting row keeps, in the assistant, the tokens it has seen that the model kept; a row that did not
        draft keeps what it held; rows of no decoding sequence (and finished ones) 0."""
        hi = max(slots) + 1
        lengths = [0] * hi
        for slot, sequence, draft, count in zip(slots, sequences, drafts, kept):
            row = sequence.drafter
            if sequence.slot != slot:  # finished: its slot given back
                continue
            if draft:
                row.cached = row.base + min(count, row.fed)
                row.length = self.settings.after_round(row.length, row.pauses, count, len(draft))
            lengths[slot] = row.cached
        self.slots.lengths[:hi].copy_(torch.tensor(lengths))

    def finished(self, sequence) -> None:
        """A sequence ends (its slot not yet released): with a prefix cache, the text its assistant row holds is kept
        for a later sequence that starts with it."""
        row = sequence.drafter
        if self.prefix_cache is not None and isinstance(row, AssistantRow):
            self.prefix_cache.store(sequence.slot, (sequence.prompt + sequence.output)[:row.cached])
