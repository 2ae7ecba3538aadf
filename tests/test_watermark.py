"""generate(watermarking_config=...) against transformers' WatermarkLogitsProcessor (gpt_fast/generation/
watermark.py): the same tokens and scores for both seeding schemes, greedy, beam search and sampling, a dict or
transformers' WatermarkingConfig, and the bad fields."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from conftest import seeded_prompt, tiny_lm_fixtures  # noqa: E402

VOCAB = 61
hf, model = tiny_lm_fixtures(4, VOCAB, 40)
CONFIGS = [dict(bias=6.0), dict(bias=6.0, context_width=2, greenlist_ratio=0.5),
           dict(bias=6.0, seeding_scheme="selfhash"), dict(bias=6.0, seeding_scheme="selfhash", context_width=3)]


@pytest.mark.parametrize("settings", [dict(), dict(num_beams=3), dict(do_sample=True, top_k=10)],
                         ids=["greedy", "beams", "sampling"])
@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_watermarked_tokens_and_scores_match_transformers(hf, model, config, settings):
    ids = seeded_prompt(VOCAB, 5, batch=2)
    kwargs = dict(max_new_tokens=8, return_dict_in_generate=True, output_scores=True, **settings)
    outputs = []
    for generate in (lambda **kw: hf.generate(ids, pad_token_id=0, **kw), lambda **kw: model.generate(ids, **kw)):
        torch.manual_seed(0)
        marked = generate(watermarking_config=dict(config), **kwargs)
        torch.manual_seed(0)
        outputs.append((marked, generate(**kwargs)))
    (theirs, theirs_plain), (ours, ours_plain) = outputs
    torch.testing.assert_close(ours.sequences, theirs.sequences, rtol=0, atol=0)
    assert not torch.equal(ours.sequences, ours_plain.sequences)  # the watermark changed the text
    for a, b in zip(ours.scores, theirs.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_transformers_watermarking_config_object(hf, model):
    config = transformers.WatermarkingConfig(bias=6.0, seeding_scheme="selfhash")
    ids = seeded_prompt(VOCAB, 4)
    torch.testing.assert_close(model.generate(ids, max_new_tokens=6, watermarking_config=config),
                               hf.generate(ids, max_new_tokens=6, watermarking_config=config, pad_token_id=0),
                               rtol=0, atol=0)


@pytest.mark.parametrize("config, error, match", [
    (dict(seeding_scheme="middle"), ValueError, "seeding_scheme"),
    (dict(greenlist_ratio=1.0), ValueError, "greenlist_ratio"),
    (dict(context_width=0), ValueError, "context_width"),
    (dict(bias="2"), ValueError, "bias"),
    (dict(color="green"), ValueError, "unknown fields \\['color'\\]"),
    ("lefthash", TypeError, "watermarking_config"),
])
def test_bad_watermarking_configs(model, config, error, match):
    with pytest.raises(error, match=match):
        model.generate(seeded_prompt(VOCAB, 3), max_new_tokens=2, watermarking_config=config)
