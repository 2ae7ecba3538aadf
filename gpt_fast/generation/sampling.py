"""Next-token selection: transformers' logits processors (same order, same math) and device-side sampling.

Per step, on float32 scores (B, V), in transformers' order:
  repetition penalty -> min length / min new tokens (EOS masked) -> [sampling only] temperature -> top-h -> top-k
  -> top-p.
Then greedy argmax, or a sample from softmax(scores). Sampling uses the exponential-race form
(argmax(p / E) with E ~ Exp(1) i.i.d., which draws index i with probability p_i) so it needs no host sync and no
multinomial kernel, and runs inside a CUDA stream without stalls. Everything works in place on buffers that are
allocated once per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """Validated selection settings of one request (see generation.parse_generation_kwargs)."""

    do_sample: bool
    temperature: float
    top_k: int  # 0 = off
    top_p: float  # 1.0 = off
    repetition_penalty: float  # 1.0 = off
    eos_blocked_steps: int  # EOS is masked while step < this (min_length / min_new_tokens)
    min_tokens_to_keep: int = 1  # the filters keep at least this many tokens (beam sampling: #EOS + 1)
    min_p: float = 0.0  # 0 = off
    typical_p: float = 1.0  # 1.0 = off
    epsilon_cutoff: float = 0.0  # 0 = off
    eta_cutoff: float = 0.0  # 0 = off
    renormalize: bool = False  # log_softmax after every other processor (greedy too)
    top_h: float = 0.0  # 0 = off


class TokenSelector:
    """Turns raw logits into the next token of every row, keeping the penalty state across steps.

    eos_ids: (E,) long on the device or None. history: (B, V) bool of tokens seen so far per row (for the
    repetition penalty), seeded with each row's real prompt tokens.
    """

    def __init__(self, config: SamplingConfig, eos_ids: torch.Tensor | None, batch: int, vocab_size: int,
                 device: torch.device, generator: torch.Generator | None):
        self.config = config
        self.eos_ids = eos_ids
        self.generator = generator
        self.seen = None
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros(batch, vocab_size, dtype=torch.bool, device=device)  # (B, V)
        self.noise = torch.empty(batch, vocab_size, dtype=torch.float32, device=device) if config.do_sample else None
        self.invalid = torch.zeros((), dtype=torch.bool, device=device)  # () a sampled row had no valid probabilities

    def check_valid(self) -> None:
        """Raises if a sampled step had no valid probabilities (reads one device value: call where the loop syncs)."""
        if self.config.do_sample and bool(self.invalid):
            raise RuntimeError("sampling met scores that are all -inf or NaN in a row (probabilities contain inf, NaN "
                               "or nothing to draw from), e.g. from a temperature so small that logits / "
                               "temperature overflow; transformers' multinomial raises here too")

    def add_prompt(self, packed_ids: torch.Tensor, lengths: torch.Tensor) -> None:
        """Marks each row's real prompt tokens as seen. packed_ids: (B, T) real tokens first; lengths: (B,)."""
        if self.seen is None:
            return
        T = packed_ids.shape[1]
        real = torch.arange(T, device=packed_ids.device)[None, :] < lengths[:, None]  # (B, T)
        ids = torch.where(real, packed_ids, packed_ids[:, :1])  # padding -> the row's first real token
        self.seen.scatter_(1, ids, True)

    def add_tokens(self, tokens: torch.Tensor) -> None:
        """tokens: (B,) the tokens just emitted (padding included, as transformers' input_ids hold them)."""
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row r takes the penalty state of row rows[r] (in place)."""
        if self.seen is not None:
            self.seen.copy_(self.seen.index_select(0, rows))

    def process(self, logits: torch.Tensor, step: int, extra=None, input_ids=None) -> torch.Tensor:
        """logits: (B, V) float32, modified in place and returned as the processed scores. extra: the request's
        ExtraProcessors (processors.py), run at their places in transformers' order; input_ids: a callable giving
        the sequences so far for the caller's processors."""
        cfg = self.config
        scores = logits if extra is None else extra.first(logits)
        if self.seen is not None:
            penalised = torch.where(scores < 0, scores * cfg.repetition_penalty, scores / cfg.repetition_penalty)
            scores = torch.where(self.seen, penalised, scores)
        if extra is not None:
            scores = extra.before_min_length(scores)
        if self.eos_ids is not None and step < cfg.eos_blocked_steps:
            scores.index_fill_(1, self.eos_ids, float("-inf"))
        if extra is not None:
            scores = extra.after_min_length(scores, input_ids, step)
        if not cfg.do_sample:
            return self._last(scores, extra, input_ids)
        if cfg.temperature != 1.0:
            scores.div_(cfg.temperature)
        if cfg.top_h:
            scores = filter_top_h(scores, cfg.top_h)
        if cfg.top_k:
            k = min(max(cfg.top_k, cfg.min_tokens_to_keep), scores.shape[-1])
            kth = torch.topk(scores, k, dim=-1).values[:, -1:]  # (B, 1)
            scores.masked_fill_(scores < kth, float("-inf"))
        if cfg.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False)  # (B, V) ascending
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = cumulative <= (1 - cfg.top_p)
            drop_sorted[:, -cfg.min_tokens_to_keep:] = False  # always keep the most likely token(s)
            scores.masked_fill_(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
        keep = cfg.min_tokens_to_keep
        if cfg.min_p:
            scores = filter_min_p(scores, cfg.min_p, keep)
        if cfg.typical_p < 1.0:
            scores = filter_typical(scores, cfg.typical_p, keep)
        if cfg.epsilon_cutoff:
            scores = filter_below(scores, scores.softmax(dim=-1) < cfg.epsilon_cutoff, keep)
        if cfg.eta_cutoff:
            scores = filter_below(scores, scores.softmax(dim=-1) < eta_threshold(scores, cfg.eta_cutoff), keep)
        return self._last(scores, extra, input_ids)

    def _last(self, scores: torch.Tensor, extra, input_ids) -> torch.Tensor:
        """The watermark (extra.last), then renormalize_logits: the end of transformers' processor list."""
        if extra is not None:
            scores = extra.last(scores, input_ids)
        return scores.log_softmax(dim=-1) if self.config.renormalize else scores

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """scores: (B, V) processed -> (B,) long."""
        if not self.config.do_sample:  # max's indices = argmax's (first of ties), ~3x faster on CPU
            return scores.max(dim=-1).indices
        probs = torch.softmax(scores, dim=-1)  # (B, V)
        # a row whose scores are all -inf (or hold NaN / +inf) has no distribution: noted on the device, read by the
        # loop where it already syncs (transformers' multinomial raises at once)
        self.invalid |= ~torch.isfinite(probs).all()
        self.noise.exponential_(generator=self.generator)
        return (probs / self.noise).max(dim=-1).indices


# -- the further sampling filters, transformers' warpers (same math); scores (B, V) -> filtered scores -----------------
def filter_min_p(scores: torch.Tensor, min_p: float | torch.Tensor, keep: int) -> torch.Tensor:
    """Drops tokens less likely than min_p (a float, or (B, 1) per row) times the most likely one, keeping the
    `keep` most likely."""
    probs = scores.softmax(dim=-1)
    drop = probs < min_p * probs.amax(dim=-1, keepdim=True)
    drop.scatter_(-1, torch.topk(probs, min(keep, probs.shape[-1]), dim=-1).indices, False)
    return scores.masked_fill(drop, float("-inf"))


def filter_top_h(scores: torch.Tensor, top_h: float, top_n: int = 100) -> torch.Tensor:
    """Top-H: among the top_n most likely tokens, keeps them in order while their cumulative entropy terms
    (-p log p over the top_n's own distribution) stay within top_h times its entropy; the most likely always."""
    top_scores, top_index = torch.topk(scores, min(top_n, scores.shape[-1]), dim=-1)  # (B, n) sorted
    distribution = torch.distributions.Categorical(logits=top_scores, validate_args=False)
    probs = distribution.probs
    kept = torch.cumsum(-probs * torch.log(probs), dim=-1) <= (distribution.entropy() * top_h)[:, None]
    kept[:, 0] = True
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top_index, kept)
    return scores.masked_fill(~keep, float("-inf"))


def filter_typical(scores: torch.Tensor, mass: float, keep: int) -> torch.Tensor:
    """Locally typical sampling: keeps the tokens whose surprise is closest to the entropy, up to `mass`."""
    log_probs = scores.log_softmax(dim=-1)
    entropy = -(log_probs * log_probs.exp()).nansum(-1, keepdim=True)  # (B, 1)
    distance, order = torch.sort((-log_probs - entropy).abs(), descending=False)
    cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1).clamp_(max=distance.shape[-1] - 1)  # (B,)
    drop_sorted = distance > distance.gather(1, last.view(-1, 1))
    drop_sorted[..., :keep] = False
    return scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))


def eta_threshold(scores: torch.Tensor, eta: float) -> torch.Tensor:
    """min(eta, sqrt(eta) * exp(-entropy)) per row (B, 1): eta sampling's probability floor."""
    eta_t = torch.tensor(eta, device=scores.device)
    entropy = torch.distributions.Categorical(logits=scores, validate_args=False).entropy()  # no host check
    return torch.min(eta_t, torch.sqrt(eta_t) * torch.exp(-entropy))[..., None]


def filter_below(scores: torch.Tensor, below: torch.Tensor, keep: int) -> torch.Tensor:
    """Drops the tokens marked `below` (epsilon / eta sampling) unless they are among the `keep` most likely."""
    kth = torch.topk(scores, min(keep, scores.shape[-1]))[0][..., -1, None]
    return scores.masked_fill(below & (scores < kth), float("-inf"))
