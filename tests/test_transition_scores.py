"""compute_transition_scores against transformers' GenerationMixin method: end to end (each library generates and
scores: greedy, sampling's logits, beam search with beams that end early, normalised or not), and on the same
inputs; bad inputs get a clear error."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from conftest import seeded_prompt, tiny_lm_fixtures  # noqa: E402

VOCAB = 41

hf, model = tiny_lm_fixtures(3, VOCAB, 40)

CASES = [
    dict(do_sample=False, output_scores=True),
    dict(do_sample=False, output_scores=True, repetition_penalty=1.5, normalize_logits=True),
    dict(do_sample=False, output_logits=True, normalize_logits=True),
    dict(num_beams=3, num_return_sequences=2, output_scores=True, length_penalty=-2.0, eos=True, ends_early=True),
    dict(num_beams=4, output_scores=True, normalize_logits=True, eos=True),
]


def _scored(generator, ids, case, reference):
    kwargs = {k: v for k, v in case.items() if k not in ("normalize_logits", "eos", "ends_early")}
    if case.get("eos"):  # a frequent token as EOS: beams end at different steps
        greedy = reference.generate(ids, do_sample=False, max_new_tokens=10)[:, ids.shape[1]:]
        kwargs.update(eos_token_id=int(greedy.flatten().mode().values), pad_token_id=0)
    out = generator.generate(ids, max_new_tokens=12, return_dict_in_generate=True, **kwargs)
    scores = out.scores if case.get("output_scores") else out.logits
    return out, generator.compute_transition_scores(out.sequences, scores, getattr(out, "beam_indices", None),
                                                    normalize_logits=case.get("normalize_logits", False))


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_transition_scores_match_transformers(hf, model, case):
    ids = seeded_prompt(VOCAB, 5, 2, seed=4)
    expected_out, expected = _scored(hf, ids, case, hf)
    out, ours = _scored(model, ids, case, hf)
    torch.testing.assert_close(out.sequences, expected_out.sequences, rtol=0, atol=0)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    if case.get("ends_early"):
        assert (out.beam_indices == -1).any() and (ours == 0).any()  # beams that ended early score 0 after
    # the same inputs through transformers' method
    scores = out.scores if case.get("output_scores") else out.logits
    theirs = hf.compute_transition_scores(out.sequences, scores, getattr(out, "beam_indices", None),
                                          normalize_logits=case.get("normalize_logits", False))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_greedy_scores_are_the_chosen_tokens_log_probabilities(model):
    ids = seeded_prompt(VOCAB, 5, 2, seed=5)
    out = model.generate(ids, max_new_tokens=6, return_dict_in_generate=True, output_logits=True)
    scores = model.compute_transition_scores(out.sequences, out.logits, normalize_logits=True)
    with torch.no_grad():
        logits = model(out.sequences).logits[:, ids.shape[1] - 1:-1]  # (B, N, V): each new token's step
    expected = logits.log_softmax(-1).gather(-1, out.sequences[:, ids.shape[1]:, None]).squeeze(-1)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)


def test_bad_inputs_get_clear_errors(model):
    ids = seeded_prompt(VOCAB, 5, 2, seed=6)
    out = model.generate(ids, max_new_tokens=4, return_dict_in_generate=True, output_scores=True)
    with pytest.raises(ValueError, match="per-step tuple"):
        model.compute_transition_scores(out.sequences, None)
    with pytest.raises(ValueError, match="beam_indices must be"):
        model.compute_transition_scores(out.sequences, out.scores, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="steps of scores"):
        model.compute_transition_scores(out.sequences, out.scores * 3)  # 12 steps for 9 tokens
