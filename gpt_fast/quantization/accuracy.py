"""How far a quantized model is from the model it was quantized from, on validation tokens: the perplexity of each,
the mean KL divergence KL(reference || quantized) of the next-token distribution, the share of positions whose
most likely next token agrees, and greedy generation (share of prompts continued identically, and the mean share
of new tokens that match before the first difference). Used by tests/test_quantization_accuracy.py and
benchmarks/quantization_accuracy.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class Comparison:
    reference_perplexity: float
    perplexity: float
    kl: float  # mean over predicted positions of KL(reference || quantized), nats
    top1_agreement: float  # share of positions with the same argmax next token
    greedy_identical: float | None = None  # share of prompts whose greedy continuation is identical
    greedy_prefix: float | None = None  # mean share of new tokens equal before the first difference

    @property
    def perplexity_change(self) -> float:
        """Relative change of the perplexity (0.001 = +0.1%)."""
        return self.perplexity / self.reference_perplexity - 1.0

    def as_dict(self) -> dict:
        return {**asdict(self), "perplexity_change": self.perplexity_change}


def windows(ids: torch.Tensor, length: int) -> torch.Tensor:
    """A 1-D token sequence cut into non-overlapping windows (count, length); the tail that does not fill one is
    dropped."""
    count = ids.numel() // length
    if count == 0:
        raise ValueError(f"need at least {length} validation tokens, got {ids.numel()}")
    return ids[:count * length].view(count, length)


@torch.no_grad()
def compare_models(reference, quantized, batches: torch.Tensor, batch_size: int = 8,
                   prompts: torch.Tensor | None = None, new_tokens: int = 16) -> Comparison:
    """batches: (count, T) token windows; every position but the last predicts the next token. prompts: (P, Tp)
    for the greedy comparison (None skips it)."""
    nll_ref = nll_q = kl = agree = 0.0
    count = 0
    for chunk in batches.split(batch_size):
        targets = chunk[:, 1:].reshape(-1)  # (N,)
        ref = reference(chunk).logits[:, :-1].float().reshape(targets.numel(), -1)  # (N, V)
        logp_ref = torch.log_softmax(ref, dim=-1)
        del ref
        logp_q = torch.log_softmax(quantized(chunk).logits[:, :-1].float().reshape(targets.numel(), -1), dim=-1)
        nll_ref += F.nll_loss(logp_ref, targets, reduction="sum").item()
        nll_q += F.nll_loss(logp_q, targets, reduction="sum").item()
        kl += F.kl_div(logp_q, logp_ref, log_target=True, reduction="sum").item()
        agree += (logp_ref.argmax(-1) == logp_q.argmax(-1)).sum().item()
        count += targets.numel()
    result = Comparison(math.exp(nll_ref / count), math.exp(nll_q / count), kl / count, agree / count)
    if prompts is not None:
        result.greedy_identical, result.greedy_prefix = compare_greedy(reference, quantized, prompts, new_tokens)
    return result


def compare_greedy(reference, quantized, prompts: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(share of prompts continued identically, mean share of new tokens matching before the first difference)."""
    kwargs = dict(attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  do_sample=False)
    with torch.inference_mode():
        ref = reference.generate(prompts, **kwargs)[:, prompts.shape[1]:]  # (P, new_tokens)
        out = quantized.generate(prompts, **kwargs)[:, prompts.shape[1]:]
    same = (ref == out).long().cumprod(dim=1)  # 1 up to the first difference
    return same[:, -1].float().mean().item(), same.float().mean().item()
