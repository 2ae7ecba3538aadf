"""gpt_fast.pipeline("feature-extraction") against transformers' feature-extraction pipeline on transformers' model
with the same weights: the same nested lists or tensors, for one text and a list, with truncation, from a folder
and from model objects (a head gives its first output, as there); and its bad arguments."""

import pytest
import torch
from conftest import hf_model

import gpt_fast
from gpt_fast.tokenization.tokenizer_files import PACKAGED_FOLDER

transformers = pytest.importorskip("transformers")
TEXTS = ["Hello world, this is fine!", "a much longer sentence, with several words in it"]
SHAPE = dict(vocab_size=40478, n_positions=64, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    hf_model("OpenAIGPTModel", **SHAPE).save_pretrained(path)
    transformers.OpenAIGPTTokenizerFast.from_pretrained(str(PACKAGED_FOLDER)).save_pretrained(path)
    return path


def theirs(model, **kwargs):
    tokenizer = transformers.OpenAIGPTTokenizerFast.from_pretrained(str(PACKAGED_FOLDER))
    return transformers.pipeline("feature-extraction", model=model, tokenizer=tokenizer, **kwargs)


def test_features_match_transformers(folder):
    ours = gpt_fast.pipeline("feature-extraction", model=str(folder))
    assert isinstance(ours, gpt_fast.FeatureExtractionPipeline) and type(ours.model) is gpt_fast.OpenAIGPTModel
    expected = theirs(transformers.OpenAIGPTModel.from_pretrained(folder))
    for text in TEXTS:
        got, want = ours(text), expected(text)
        assert isinstance(got, list) and len(got) == 1 and len(got[0]) == len(want[0]) > 1
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-5)
    both = ours(TEXTS, return_tensors=True)
    assert [t.shape for t in both] == [(1, len(w[0]), 32) for w in expected(TEXTS)]
    torch.testing.assert_close(both[1], torch.tensor(expected(TEXTS[1])), atol=1e-5, rtol=1e-5)


def test_truncation_and_tokenize_kwargs(folder):
    ours = gpt_fast.pipeline("feature-extraction", model=str(folder), tokenize_kwargs={"max_length": 3})
    expected = theirs(transformers.OpenAIGPTModel.from_pretrained(folder), tokenize_kwargs={"max_length": 3})
    got, want = ours(TEXTS[1], truncation=True), expected(TEXTS[1], truncation=True)
    assert len(got[0]) == len(want[0]) == 3
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="truncation given both"):
        ours(TEXTS[0], truncation=True, tokenize_kwargs={"truncation": False})


def test_a_head_gives_its_first_output_as_in_transformers():
    hf = hf_model("OpenAIGPTLMHeadModel", **SHAPE)
    model = gpt_fast.OpenAIGPTLMHeadModel.from_transformers(hf)
    ours = gpt_fast.pipeline("feature-extraction", model=model, tokenizer=str(PACKAGED_FOLDER))
    torch.testing.assert_close(ours(TEXTS[0], return_tensors=True), torch.tensor(theirs(hf)(TEXTS[0])),
                               atol=1e-4, rtol=1e-4)  # the logits, (1, T, V)


def test_bad_arguments(folder):
    with pytest.raises(TypeError, match="unexpected arguments \\['max_new_tokens'\\]"):
        gpt_fast.pipeline("feature-extraction", model=str(folder), max_new_tokens=3)
    with pytest.raises(ValueError, match="'text-generation' and 'feature-extraction' tasks"):
        gpt_fast.pipeline("fill-mask", model=str(folder))
    with pytest.raises(TypeError, match="OpenAIGPTLMHeadModel"):  # text generation needs the LM head
        gpt_fast.pipeline("text-generation", model=gpt_fast.OpenAIGPTModel.from_pretrained(folder), tokenizer=folder)
    ours = gpt_fast.pipeline("feature-extraction", model=str(folder))
    with pytest.raises(TypeError, match="string or a list of strings"):
        ours(3)
    with pytest.raises(ValueError, match="empty after tokenization"):
        ours("")
