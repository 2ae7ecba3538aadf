"""Accuracy of weight-only quantization on a trained model (issue 15's targets).

A GPT-1-architecture model (2 layers, width 128, 4 heads, 64 positions) is trained here, 300 AdamW steps on a
deterministic word-level corpus with real structure (tests/quantization_corpus.py), then quantized and compared
with itself unquantized on held-out text (quantization/accuracy.py): validation perplexity change, mean KL
divergence KL(reference || quantized) of the next-token distribution, greedy continuations identical.

Thresholds (the issue's targets where it sets them):
- int8, LM head quantized or not: perplexity <= +0.1%, KL <= 2e-4, >= 90% of greedy continuations identical;
- int4 group 32, LM head quantized or not: perplexity <= +1%, KL <= 5e-3;
- int4 group 64 (no issue target; twice group 32's budget): perplexity <= +2%, KL <= 1e-2;
- int4-a8 group 32 (int4 weights, int8 activations): int4's targets, and at most 1.2x int4 g32's KL;
- int8-a8 group 32 (int8 weights, int8 activations per group of 32): int8's targets, and a KL other than int8's.
Measured when written (float32, reference perplexity 6.98): int8 +0.009% / KL 9.4e-6 (head quantized), -0.006% /
1.2e-6 (head in float32); int4 g32 +0.15% / KL 1.3e-3 (head quantized), +0.08% / 2.5e-4 (head in float32); int4
g64 +0.30% / KL 1.7e-3; int4-a8 g32 (x rounded to int8 per group too; 2026-12-03) +0.19% / KL 1.34e-3 against
int4 g32's +0.18% / 1.32e-3 in the same run; int8-a8 g32 (2026-12-07) +0.008% / KL 2.3e-5 against int8's
+0.009% / 9.4e-6 (g64: +0.026% / 2.3e-5, g128 +0.038% / 3.0e-5). Greedy continuations identical: 100% for int8,
int8-a8 and int4 g32 with the head in float32, 6% (g32) and 31% (g64) with the head in int4: the corpus has many
near-ties (any of ten nouns) that a perturbed head flips. The test prints the figures (pytest -s).

GPTQ (method="gptq", calibration: 32 windows of the training corpus, never the validation text) must beat round to
nearest in KL by a wide margin (at most 0.3x its KL) for int4 g32 with the head quantized or not and for int8, and
keep >= 80% of greedy continuations identical. Measured when written: int4 KL 1.5e-4 against round to nearest's
1.3e-3 (head int4; perplexity -0.06% against +0.15%; greedy identical 88% against 6%) and 3.0e-5 against 2.5e-4
(head in float32); int8 6.9e-7 against 9.4e-6. Without the error compensation (int4: only the bf16-aware range
search; int8: round to nearest itself) the int4 KL is 8.2e-4 and 2.2e-4: the 0.3x bound fails.
"""

from __future__ import annotations

import copy

import pytest
import torch
from quantization_corpus import VOCAB, corpus

import gpt_fast
from gpt_fast.quantization.accuracy import compare_models, windows

T = 64
STEPS = 300
TARGETS = {  # (scheme, group, lm_head) -> (max perplexity change, max mean KL, min greedy identical share)
    ("int8", None, True): (1e-3, 2e-4, 0.9),
    ("int8", None, False): (1e-3, 2e-4, 0.9),
    ("int4", 32, True): (1e-2, 5e-3, None),
    ("int4", 32, False): (1e-2, 5e-3, None),
    ("int4", 64, True): (2e-2, 1e-2, None),
    ("int4-a8", 32, True): (1e-2, 5e-3, None),  # int4 g32's targets (the rounding of x adds little: below)
    ("int8-a8", 32, True): (1e-3, 2e-4, 0.9),  # int8's targets
}


def train_model() -> gpt_fast.OpenAIGPTLMHeadModel:
    torch.manual_seed(0)
    config = gpt_fast.OpenAIGPTConfig(vocab_size=len(VOCAB), n_positions=T, n_embd=128, n_layer=2, n_head=4,
                                      resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0)
    model = gpt_fast.OpenAIGPTLMHeadModel(config, attn_implementation="eager").train()  # eager: fastest backward
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=STEPS, pct_start=0.1)
    text = corpus(200_000, seed=1)
    generator = torch.Generator().manual_seed(3)
    for _ in range(STEPS):
        starts = torch.randint(0, text.numel() - T, (16,), generator=generator)
        ids = torch.stack([text[s:s + T] for s in starts])  # (16, T)
        model(ids, labels=ids, return_logits=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
    model.set_attn_implementation(None)
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is several times faster than two
    try:
        yield train_model()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # ~40-60 s on 2 shared cores
def test_quantized_models_stay_within_the_targets(trained):
    validation = windows(corpus(16 * T, seed=2), T)  # (16, T), text the model never saw
    prompts = validation[:, :16]
    figures = {}
    for scheme, group, lm_head in TARGETS:
        quantized = copy.deepcopy(trained).quantize(scheme, group or 32, lm_head=lm_head)
        result = compare_models(trained, quantized, validation, prompts=prompts, new_tokens=16)
        figures[(scheme, group, lm_head)] = result
        print(f"{scheme} group {group} lm_head {lm_head}: perplexity {result.reference_perplexity:.4f} -> "
              f"{result.perplexity:.4f} ({100 * result.perplexity_change:+.3f}%), KL {result.kl:.2e}, top-1 "
              f"{result.top1_agreement:.3f}, greedy identical {result.greedy_identical:.2f}")
    reference_perplexity = next(iter(figures.values())).reference_perplexity
    assert reference_perplexity < 9.0  # it learned (uniform over the vocabulary would be 107)
    for key, (max_change, max_kl, min_greedy) in TARGETS.items():
        result = figures[key]
        assert result.perplexity_change <= max_change, (key, result)
        assert result.kl <= max_kl, (key, result)
        if min_greedy is not None:
            assert result.greedy_identical >= min_greedy, (key, result)
    # int4 is measurably worse than int8 (the comparison sees the quantization at all)
    assert figures[("int4", 32, True)].kl > 10 * figures[("int8", None, True)].kl
    # int8 activations on top of int4 weights: a different model (x is rounded), within 1.2x int4's KL
    a8, int4 = figures[("int4-a8", 32, True)], figures[("int4", 32, True)]
    assert a8.kl != int4.kl and a8.kl <= 1.2 * int4.kl, (a8, int4)
    # and on top of int8 weights: a different model from weight-only int8's, within int8's targets above
    assert figures[("int8-a8", 32, True)].kl != figures[("int8", None, True)].kl


@pytest.mark.slow  # ~50 s with the training (shared with the test above when both run)
def test_gptq_beats_round_to_nearest(trained):
    validation = windows(corpus(16 * T, seed=2), T)  # (16, T), text the model never saw
    calibration = windows(corpus(32 * T, seed=1), T)  # (32, T): the training corpus (seed 1)
    prompts = validation[:, :16]
    for scheme, lm_head, max_ratio in (("int4", True, 0.3), ("int4", False, 0.3), ("int8", True, 0.3)):
        rtn = copy.deepcopy(trained).quantize(scheme, 32, lm_head=lm_head)
        gptq = copy.deepcopy(trained).quantize(scheme, 32, lm_head=lm_head, method="gptq", calibration=calibration)
        assert gptq.quantization == rtn.quantization
        plain = compare_models(trained, rtn, validation, prompts=prompts, new_tokens=16)
        ours = compare_models(trained, gptq, validation, prompts=prompts, new_tokens=16)
        print(f"{scheme} g32 lm_head {lm_head}: round to nearest perplexity {100 * plain.perplexity_change:+.3f}% KL "
              f"{plain.kl:.2e} greedy {plain.greedy_identical:.2f}; GPTQ {100 * ours.perplexity_change:+.3f}% KL "
              f"{ours.kl:.2e} greedy {ours.greedy_identical:.2f}")
        assert ours.kl <= max_ratio * plain.kl, (scheme, lm_head, plain, ours)
        assert ours.perplexity_change <= max(plain.perplexity_change, 1e-3), (scheme, lm_head, plain, ours)
        assert ours.greedy_identical >= 0.8, (scheme, lm_head, ours)
