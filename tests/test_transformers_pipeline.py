"""transformers.pipeline("text-generation") on a gpt_fast model and tokenizer gives what gpt_fast.pipeline gives.

transformers' pipeline needs the model's can_generate() and main_input_name (added to the model classes in
gpt_fast/models/) and generation_config (gpt_fast/generation/config.py); until the model has them the test says so
and skips.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import gpt_fast  # noqa: E402

GPT = Path(__file__).resolve().parents[2] / "shared" / "openai-gpt"


@pytest.mark.skipif(not (GPT / "vocab.json").is_file(), reason=f"needs GPT-1's tokenizer files in {GPT}")
def test_transformers_pipeline_runs_a_gpt_fast_model():
    if not callable(getattr(gpt_fast.OpenAIGPTLMHeadModel, "can_generate", None)):
        pytest.skip("OpenAIGPTLMHeadModel has no can_generate() yet (transformers' pipeline needs it)")
    tokenizer = gpt_fast.AutoTokenizer.from_pretrained(GPT)
    torch.manual_seed(0)
    config = gpt_fast.OpenAIGPTConfig(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    model = gpt_fast.OpenAIGPTLMHeadModel(config).eval()
    theirs = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    ours = gpt_fast.pipeline("text-generation", model=model, tokenizer=tokenizer)
    for kwargs in (dict(max_new_tokens=6, do_sample=False), dict(max_new_tokens=5, num_beams=3, do_sample=False),
                   dict(max_new_tokens=5, do_sample=False, return_full_text=False)):
        assert theirs("hello world, this is", **kwargs) == ours("hello world, this is", **kwargs)
    model.generation_config = gpt_fast.GenerationConfig(max_new_tokens=4, do_sample=False)
    assert theirs("hello world")[0]["generated_text"] == ours("hello world")[0]["generated_text"]


@pytest.mark.parametrize("task", ["text-classification", "zero-shot-classification"])
def test_transformers_classification_pipelines_run_a_gpt_fast_model(task):
    """These read the outputs by name, so gpt_fast's sequence classifier gives transformers' records."""
    tokenizer = gpt_fast.OpenAIGPTTokenizerFast.from_pretrained("openai-gpt")
    tokenizer.pad_token = tokenizer.unk_token
    labels = {0: "entailment", 1: "neutral", 2: "contradiction"}
    config = dict(vocab_size=40478, n_positions=64, n_embd=32, n_layer=2, n_head=2, pad_token_id=0, id2label=labels,
                  label2id={name: i for i, name in labels.items()})
    torch.manual_seed(0)
    hf = transformers.OpenAIGPTForSequenceClassification(transformers.OpenAIGPTConfig(**config)).eval()
    ours = gpt_fast.OpenAIGPTForSequenceClassification.from_transformers(hf).eval()
    texts = ["I love this", "this is awful, really quite bad"]
    kwargs = dict(candidate_labels=["good", "bad"]) if task.startswith("zero") else dict(top_k=None)
    expected, got = (transformers.pipeline(task, model=model, tokenizer=tokenizer)(texts, **kwargs)
                     for model in (hf, ours))
    assert len(got) == len(expected) == 2
    for a, b in zip(got, expected):
        if task.startswith("zero"):
            assert a["labels"] == b["labels"] and a["scores"] == pytest.approx(b["scores"], abs=1e-6)
        else:
            assert [r["label"] for r in a] == [r["label"] for r in b]
            assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=1e-6)
