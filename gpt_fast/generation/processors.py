"""The logits processors beyond sampling.py's: no_repeat_ngram_size, bad_words_ids, remove_invalid_values,
encoder_repetition_penalty, prefix_allowed_tokens_fn, and the caller's own `logits_processor` / `stopping_criteria`
callables (transformers' call signatures); max_time's stopping criterion.

The n-gram and bad-word rules read each row's token history as that row alone would have it (TokenHistory: the real
prompt tokens packed first, then the new tokens), so a row of a padded batch is processed as its prompt alone; the
caller's callables get transformers' view instead: the prompt as passed (padding included) and the new tokens.
Everything runs on the device without reading a value on the host.
"""

from __future__ import annotations

import time

import torch

from gpt_fast.generation.watermark import Watermark

NEG_INF = float("-inf")


class TokenHistory:
    """ids (R, T + N): each row's real prompt tokens first, then its new tokens; lengths (R,) tokens held per row."""

    def __init__(self, packed_ids: torch.Tensor, lengths: torch.Tensor, max_new: int):
        R, T = packed_ids.shape
        self.ids = torch.zeros(R, T + max_new, dtype=torch.long, device=packed_ids.device)
        self.ids[:, :T] = packed_ids
        self.lengths = lengths.clone()

    def append(self, tokens: torch.Tensor) -> None:  # tokens (R,)
        self.ids.scatter_(1, self.lengths[:, None], tokens[:, None])
        self.lengths.add_(1)

    def reorder(self, rows: torch.Tensor) -> None:  # in place: row r takes the history of row rows[r]
        self.ids.copy_(self.ids.index_select(0, rows))
        self.lengths.copy_(self.lengths.index_select(0, rows))

    def last(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's last n tokens (R, n) and whether the row holds that many (R,)."""
        start = self.lengths[:, None] - n + torch.arange(n, device=self.ids.device)[None, :]  # (R, n)
        return self.ids.gather(1, start.clamp(min=0)), self.lengths >= n


def ban_repeated_ngrams(scores: torch.Tensor, history: TokenHistory, n: int) -> None:
    """Sets to -inf, per row, every token that would complete an n-gram the row already holds (in place)."""
    R, V = scores.shape
    ids, lengths = history.ids, history.lengths
    windows = ids.unfold(1, n, 1)  # (R, W, n): the n-gram starting at each position
    starts = torch.arange(windows.shape[1], device=ids.device)
    suffix, long_enough = history.last(n - 1)  # (R, n-1): what the next token would extend
    match = (windows[..., :-1] == suffix[:, None, :]).all(dim=-1)  # (R, W)
    match &= (starts[None, :] + n <= lengths[:, None]) & long_enough[:, None]
    banned = torch.zeros(R, V + 1, dtype=torch.bool, device=ids.device)  # column V takes the non-matches
    banned.scatter_(1, torch.where(match, windows[..., -1], V), True)
    scores.masked_fill_(banned[:, :V], NEG_INF)


class BadWords:
    """bad_words_ids: single tokens are always banned; a longer sequence bans its last token right after the
    row's history ends with the rest of it."""

    def __init__(self, words: tuple[tuple[int, ...], ...], device: torch.device):
        single = [w[0] for w in words if len(w) == 1]
        self.single = torch.tensor(single, dtype=torch.long, device=device) if single else None
        self.multi = [(torch.tensor(w[:-1], dtype=torch.long, device=device), w[-1]) for w in words if len(w) > 1]

    def __call__(self, scores: torch.Tensor, history: TokenHistory) -> None:
        if self.single is not None:
            scores.index_fill_(1, self.single, NEG_INF)
        for prefix, last in self.multi:
            tail, long_enough = history.last(prefix.shape[0])
            hit = (tail == prefix[None, :]).all(dim=-1) & long_enough  # (R,)
            scores[:, last] = torch.where(hit, NEG_INF, scores[:, last])


class SequenceBias:
    """sequence_bias: a single token's bias is always added; a longer sequence's is added to its last token right
    after the row's history ends with the rest of it (several biases on one token add up, as in transformers)."""

    def __init__(self, biases: tuple, vocab_size: int, device: torch.device):
        self.single = torch.zeros(vocab_size, dtype=torch.float32, device=device)  # (V,)
        for ids, bias in biases:
            if len(ids) == 1:
                self.single[ids[0]] = bias
        self.multi = [(torch.tensor(ids[:-1], dtype=torch.long, device=device),
                       torch.tensor([ids[-1]], dtype=torch.long, device=device), bias)
                      for ids, bias in biases if len(ids) > 1]

    def __call__(self, scores: torch.Tensor, history: TokenHistory | None) -> torch.Tensor:
        bias = self.single.expand_as(scores).clone()  # (R, V)
        for prefix, last, value in self.multi:
            tail, long_enough = history.last(prefix.shape[0])
            hit = (tail == prefix[None, :]).all(dim=-1) & long_enough  # (R,)
            bias.index_add_(1, last, torch.where(hit, value, 0.0)[:, None])
        return scores + bias


def force_tokens(scores: torch.Tensor, token_ids: tuple[int, ...]) -> torch.Tensor:
    """Every score -inf but the given tokens' 0 (forced_bos_token_id / forced_eos_token_id)."""
    forced = torch.full_like(scores, NEG_INF)
    forced[:, list(token_ids)] = 0
    return forced


def decay_length_penalty(scores: torch.Tensor, eos: tuple[int, ...], factor: float, steps_past: int) -> torch.Tensor:
    """exponential_decay_length_penalty: the EOS scores grow by |score| * (factor ** steps_past - 1)."""
    columns = list(eos)
    eos_scores = scores[:, columns]  # (R, E)
    penalty = (eos_scores.abs() * (pow(factor, steps_past) - 1)).masked_fill(~torch.isfinite(eos_scores), 0.0)
    penalties = torch.zeros_like(scores)
    penalties[:, columns] = penalty
    return scores + penalties


def remove_invalid_values(scores: torch.Tensor) -> torch.Tensor:
    """NaN -> 0, +inf / -inf -> the dtype's largest / lowest finite value (transformers' InfNanRemove)."""
    info = torch.finfo(scores.dtype)
    return torch.nan_to_num(scores, nan=0.0, posinf=info.max, neginf=info.min)


class ExtraProcessors:
    """The processors of one request, in transformers' order around sampling.py's: `first` (sequence_bias) before
    the repetition penalty, `before_min_length` (n-grams, bad words) after it, `after_min_length` (forced BOS / EOS,
    invalid values, the length penalty's EOS boost, suppressed tokens, then the caller's processors) after the EOS
    mask of min_length, before temperature / top-k / top-p. prompt_length: T, the prompt as passed (padding
    included): transformers counts the steps of the forced and begin-suppressed tokens from it."""

    def __init__(self, request, history: TokenHistory | None, device: torch.device, prompt_ids: torch.Tensor,
                 vocab_size: int):
        """prompt_ids: (R, T) the prompt as passed (padding included), one row per returned sequence / beam."""
        prompt_length = prompt_ids.shape[1]
        self.prompt_ids = prompt_ids if request.encoder_repetition_penalty != 1.0 else None
        self.ngram = request.no_repeat_ngram_size
        self.bad_words = BadWords(request.bad_words_ids, device) if request.bad_words_ids else None
        self.sequence_bias = (SequenceBias(request.sequence_bias, vocab_size, device) if request.sequence_bias
                              else None)
        self.remove_invalid = request.remove_invalid_values
        self.custom = request.logits_processor
        self.history = history
        self.request = request
        self.prompt_length = prompt_length
        self.suppress = (None if request.suppress_tokens is None
                         else torch.tensor(request.suppress_tokens, dtype=torch.long, device=device))
        self.begin_suppress = (None if request.begin_suppress_tokens is None
                               else torch.tensor(request.begin_suppress_tokens, dtype=torch.long, device=device))
        # transformers: the first new token, or the second after a forced BOS on a one-token prompt
        self.begin_step = 1 if prompt_length == 1 and request.forced_bos_token_id is not None else 0
        self.watermark = None if request.watermark is None else Watermark(request.watermark, vocab_size, device)

    @staticmethod
    def needs_history(request) -> bool:
        return bool(request.no_repeat_ngram_size or request.bad_words_ids
                    or any(len(ids) > 1 for ids, _ in request.sequence_bias))

    def first(self, scores: torch.Tensor) -> torch.Tensor:
        """sequence_bias, then encoder_repetition_penalty (before the repetition penalty)."""
        if self.sequence_bias is not None:
            scores = self.sequence_bias(scores, self.history)
        if self.prompt_ids is not None:
            scores = penalise_prompt_tokens(scores, self.prompt_ids, self.request.encoder_repetition_penalty)
        return scores

    def before_min_length(self, scores: torch.Tensor) -> torch.Tensor:
        if self.ngram:
            ban_repeated_ngrams(scores, self.history, self.ngram)
        if self.bad_words is not None:
            self.bad_words(scores, self.history)
        return scores

    def last(self, scores: torch.Tensor, input_ids) -> torch.Tensor:
        """After the sampling filters, before renormalize_logits: the watermark (watermark.py)."""
        return scores if self.watermark is None else self.watermark(input_ids(), scores)

    def after_min_length(self, scores: torch.Tensor, input_ids, step: int) -> torch.Tensor:
        """input_ids: a callable giving transformers' view of the sequences so far (made only when needed); step:
        the new token's index."""
        request = self.request
        if request.prefix_allowed_tokens_fn is not None:  # a prompt's rows: its beams or its returned sequences
            rows = max(request.num_beams, request.num_return_sequences)
            scores = allow_prefix_tokens(scores, input_ids(), request.prefix_allowed_tokens_fn, rows)
        if request.forced_bos_token_id is not None and self.prompt_length + step == 1:
            scores = force_tokens(scores, (request.forced_bos_token_id,))
        if request.forced_eos_token_ids is not None and step == request.max_new_tokens - 1:
            scores = force_tokens(scores, request.forced_eos_token_ids)
        if self.remove_invalid:
            scores = remove_invalid_values(scores)
        if request.exponential_decay is not None and step > request.exponential_decay[0]:
            start, factor = request.exponential_decay
            scores = decay_length_penalty(scores, request.eos_token_ids, factor, step - start)
        if self.suppress is not None:
            scores = scores.index_fill(1, self.suppress, NEG_INF)
        if self.begin_suppress is not None and step == self.begin_step:
            scores = scores.index_fill(1, self.begin_suppress, NEG_INF)
        if self.custom:
            ids = input_ids()
            for processor in self.custom:
                scores = processor(ids, scores)
                if not isinstance(scores, torch.Tensor):
                    raise TypeError(f"logits processor {processor!r} must return the scores tensor, got "
                                    f"{type(scores).__name__}")
        return scores


def penalise_prompt_tokens(scores: torch.Tensor, prompt_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """encoder_repetition_penalty (transformers' EncoderRepetitionPenaltyLogitsProcessor; for a decoder-only model
    the "encoder input" is the prompt as passed): the prompt's tokens made more likely, a score s becoming s / p
    (s >= 0) or s * p (s < 0) with p = 1 / penalty, once however often the token occurs. prompt_ids: (R, T)."""
    boost = 1 / penalty
    prompt_scores = scores.gather(1, prompt_ids)
    prompt_scores = torch.where(prompt_scores < 0, prompt_scores * boost, prompt_scores / boost)
    return scores.scatter(1, prompt_ids, prompt_scores)


def allow_prefix_tokens(scores: torch.Tensor, input_ids: torch.Tensor, allowed_fn, group: int) -> torch.Tensor:
    """prefix_allowed_tokens_fn (transformers' PrefixConstrainedLogitsProcessor): row r, of prompt r // group, keeps
    only the tokens allowed_fn(prompt index, its sequence so far) lists; where every row of a prompt has only -inf
    left among its allowed tokens, those tokens get score 0, so the constraint still holds. One call per row and
    step, on the host, as in transformers."""
    mask = torch.full_like(scores, NEG_INF)
    for row in range(scores.shape[0]):
        allowed = allowed_fn(row // group, input_ids[row])
        if len(allowed) == 0:
            raise ValueError(f"prefix_allowed_tokens_fn returned no tokens for batch index {row // group}: the "
                             "constraint cannot be met")
        mask[row, allowed] = 0
    processed = scores + mask
    unsatisfiable = processed.amax(dim=-1).isneginf().view(-1, group).all(dim=-1, keepdim=True)
    return torch.where(unsatisfiable.repeat_interleave(group, dim=0), mask, processed)


def stop_flags(criteria: tuple, input_ids: torch.Tensor, scores) -> torch.Tensor | None:
    """ORs the caller's stopping criteria into a (R,) bool tensor; a criterion may return a bool or a tensor."""
    if not criteria:
        return None
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for criterion in criteria:
        result = criterion(input_ids, scores)
        done = done | torch.as_tensor(result, device=input_ids.device).to(torch.bool)
    return done


class MaxTimeCriteria:
    """generate(max_time=seconds), as transformers': every row stops once that long has passed since generate()
    began, checked after each new token (so at least one is made). A wall-clock read, no device sync."""

    def __init__(self, max_time: float):
        self.deadline = time.perf_counter() + max_time

    def __call__(self, input_ids: torch.Tensor, scores) -> bool:
        return time.perf_counter() > self.deadline
