"""Perplexity of a causal LM over a token stream (`gpt-fast eval`, `gpt_fast.perplexity`).

The stream is read in windows of seq_len tokens starting every `stride` tokens, as transformers' guide "Perplexity
of fixed-length models" reads it: each window scores only the tokens no window before it did (its first seq_len -
stride tokens are context alone). With stride < seq_len every token but the stream's first is scored exactly once,
with at least seq_len - stride tokens before it once the first window is past; stride = seq_len (the default) cuts
the stream into disjoint windows, whose first tokens nothing predicts, so those are not scored (as in the guide).
The result is the summed negative log-likelihood of the scored tokens divided by their count (the guide's loop
weighs each window's mean by one token too few when the windows overlap; the same figure for disjoint ones).

Windows of full length run batch_size at a time (1 on a CPU, 8 on a GPU by default) through the model's fused LM
head + cross-entropy (its forward with return_logits=False: no (B, T, V) logits), in eval and inference mode; the
shorter last window runs alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

CUDA_BATCH = 8  # windows a pass on a GPU


@dataclass(frozen=True)
class PerplexityResult:
    tokens: int  # tokens scored
    nll: float  # their mean negative log-likelihood, in nats per token
    windows: int
    seconds: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll) if self.nll < 700 else math.inf

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.inf


def windows(length: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) of each window: tokens [begin, end) are fed and the last `scored` of them scored (never
    a window's first token: nothing in the window predicts it)."""
    out, scored_to = [], 0
    for begin in range(0, length, stride):
        end = min(begin + seq_len, length)
        out.append((begin, end, end - max(scored_to, begin + 1)))
        scored_to = end
        if end == length:
            break
    return out


def perplexity(model, tokens, seq_len: int | None = None, stride: int | None = None, batch_size: int | None = None,
               progress: bool = False) -> PerplexityResult:
    """tokens: 1-D token ids (a tensor, array or list) -> PerplexityResult. seq_len: the window (default, and at
    most, the model's n_positions); stride: tokens between window starts (default seq_len); batch_size: windows a
    pass (default CUDA_BATCH on a GPU, else 1: on 2 CPU cores 8 windows a pass were no faster, 8% slower in
    float32, benchmarks/bench_perplexity.py)."""
    tokens = torch.as_tensor(tokens)
    if tokens.numel() and (tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool):
        raise TypeError(f"tokens must be integer token ids, got a tensor of {tokens.dtype}")
    tokens = tokens.long().flatten()
    n_positions = model.config.n_positions
    device = next(model.parameters()).device
    seq_len = n_positions if seq_len is None else seq_len
    stride = seq_len if stride is None else stride
    batch_size = (CUDA_BATCH if device.type == "cuda" else 1) if batch_size is None else batch_size
    for name, value, most in (("seq_len", seq_len, n_positions), ("stride", stride, seq_len),
                              ("batch_size", batch_size, None)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (most is not None and value > most):
            bound = "" if most is None else f" and at most {most}"
            raise ValueError(f"{name} must be an int >= 1{bound}, got {value!r}")
    if tokens.numel() < 2:
        raise ValueError(f"perplexity needs at least 2 tokens (the first is never scored), got {tokens.numel()}")
    vocab = model.config.vocab_size
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise ValueError(f"token ids must be in [0, {vocab}); got ids from {int(tokens.min())} to {int(tokens.max())}")
    spans = windows(tokens.numel(), seq_len, stride)
    start, total = time.perf_counter(), 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(spans), desc="perplexity", unit="window",
                                          disable=not progress) as bar:
            for i in range(0, len(spans), batch_size):
                group = spans[i:i + batch_size]
                full = [span for span in group if span[1] - span[0] == seq_len]
                for batch in (full, [span for span in group if span[1] - span[0] != seq_len]):
                    if batch:
                        total += _summed_nll(model, tokens, batch, device)
                bar.update(len(group))
    finally:
        model.train(was_training)
    count = sum(scored for _, _, scored in spans)
    return PerplexityResult(count, total / count, len(spans), time.perf_counter() - start)


def _summed_nll(model, tokens: torch.Tensor, spans: list[tuple[int, int, int]], device) -> float:
    """The summed negative log-likelihood of the spans' scored tokens (spans of one length, run as one batch)."""
    ids = torch.stack([tokens[begin:end] for begin, end, _ in spans]).to(device)  # (b, T)
    labels = ids.clone()
    for row, (begin, end, scored) in enumerate(spans):
        labels[row, :end - begin - scored] = -100  # context only: the shifted loss scores targets 1 .. T - 1
    out = model(ids, labels=labels, num_items_in_batch=1, return_logits=False, return_dict=True)
    return float(out.loss)
