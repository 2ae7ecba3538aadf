"""gpt_fast.GenerationConfig and model.generation_config: transformers' field names, generation_config.json both
ways, from_model_config, from_pretrained / save_pretrained, generate(generation_config=...) with keyword arguments
over it, as transformers does."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gpt_fast import GenerationConfig, OpenAIGPTLMHeadModel  # noqa: E402

VOCAB = 53


@pytest.fixture(scope="module")
def hf():
    torch.manual_seed(2)
    config = transformers.OpenAIGPTConfig(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return transformers.OpenAIGPTLMHeadModel(config).eval()


@pytest.fixture()
def model(hf):
    return OpenAIGPTLMHeadModel.from_transformers(hf).eval()


def prompt(length, batch=1, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_fields_and_json_round_trip(tmp_path):
    config = GenerationConfig(num_beams=3, max_new_tokens=7, eos_token_id=[1, 2], early_stopping="never")
    assert config.do_sample is None and config.to_diff_dict() == dict(num_beams=3, max_new_tokens=7,
                                                                     eos_token_id=[1, 2], early_stopping="never")
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text())["num_beams"] == 3
    assert GenerationConfig.from_pretrained(tmp_path) == config
    # transformers reads gpt_fast's file, and gpt_fast reads transformers'
    theirs = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert (theirs.num_beams, theirs.max_new_tokens, theirs.early_stopping) == (3, 7, "never")
    transformers.GenerationConfig(num_beams=2, length_penalty=0.5, do_sample=False).save_pretrained(tmp_path / "t")
    ours = GenerationConfig.from_pretrained(tmp_path / "t")
    assert (ours.num_beams, ours.length_penalty, ours.do_sample) == (2, 0.5, False)


def test_bad_fields_and_files_raise(tmp_path):
    with pytest.raises(ValueError, match="penalty_alpha"):
        GenerationConfig(penalty_alpha=0.6)
    with pytest.raises(FileNotFoundError, match="generation_config.json"):
        GenerationConfig.from_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        GenerationConfig.from_pretrained(tmp_path)
    transformers.GenerationConfig(guidance_scale=2.0).save_pretrained(tmp_path / "t")
    with pytest.raises(ValueError, match="guidance_scale"):
        GenerationConfig.from_pretrained(tmp_path / "t")


def test_model_generation_config_from_model_config():
    from gpt_fast import OpenAIGPTConfig

    model = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                                                 eos_token_id=3, pad_token_id=4))
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (3, 4)
    with pytest.raises(TypeError, match="GenerationConfig"):
        model.generation_config = {"num_beams": 2}


def test_save_and_load_with_the_model(model, tmp_path):
    model.generation_config = GenerationConfig(max_new_tokens=5, num_beams=2)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "generation_config.json").is_file()
    loaded = OpenAIGPTLMHeadModel.from_pretrained(tmp_path)
    assert loaded.generation_config == model.generation_config
    ids = prompt(4)
    out = loaded.generate(ids)  # the checkpoint's defaults: 5 new tokens by beam search
    assert out.shape == (1, 9)
    torch.testing.assert_close(out, loaded.generate(ids, max_new_tokens=5, num_beams=2, generation_config=
                                                    GenerationConfig()), rtol=0, atol=0)
    assert loaded.generate(ids, max_new_tokens=3).shape == (1, 7)  # a keyword argument overrides it
    (tmp_path / "generation_config.json").unlink()
    assert OpenAIGPTLMHeadModel.from_pretrained(tmp_path).generation_config.num_beams is None


@pytest.mark.parametrize("fields", [dict(num_beams=3, length_penalty=0.7, max_new_tokens=9),
                                    dict(repetition_penalty=1.5, no_repeat_ngram_size=2, max_new_tokens=9)])
def test_generate_with_a_generation_config_matches_transformers(hf, model, fields):
    ids = prompt(5, batch=2)
    expected = hf.generate(ids, generation_config=transformers.GenerationConfig(**fields), do_sample=False)
    torch.testing.assert_close(model.generate(ids, generation_config=GenerationConfig(**fields)), expected,
                               rtol=0, atol=0)
    expected = hf.generate(ids, generation_config=transformers.GenerationConfig(**fields), max_new_tokens=4,
                           do_sample=False)
    ours = model.generate(ids, generation_config=GenerationConfig(**fields), max_new_tokens=4)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


@pytest.mark.parametrize("fields", [dict(num_beams=3, length_penalty=0.7, max_new_tokens=9),
                                    dict(repetition_penalty=1.5, no_repeat_ngram_size=2, max_new_tokens=9)])
def test_transformers_generation_config_is_taken_as_it_is(hf, model, fields):
    """transformers' GenerationConfig, passed to generate() or set as model.generation_config, is read as the same
    fields in gpt_fast's: the same tokens as transformers with it, and as gpt_fast's own config."""
    ids = prompt(5, batch=2)
    expected = hf.generate(ids, generation_config=transformers.GenerationConfig(**fields), do_sample=False)
    got = model.generate(ids, generation_config=transformers.GenerationConfig(**fields))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    model.generation_config = transformers.GenerationConfig(**fields)
    assert model.generation_config == GenerationConfig(**fields)
    torch.testing.assert_close(model.generate(ids), expected, rtol=0, atol=0)
    assert not torch.equal(model.generate(ids, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0), got)


def test_generation_config_must_be_one(model):
    with pytest.raises(TypeError, match="GenerationConfig"):
        model.generate(prompt(3), generation_config=dict(num_beams=2))
    with pytest.raises(TypeError, match="GenerationConfig"):
        model.generation_config = dict(num_beams=2)
    unsupported = transformers.GenerationConfig(num_beams=4, num_beam_groups=2, diversity_penalty=0.5)
    with pytest.raises(ValueError, match=r"does not support \['diversity_penalty', 'num_beam_groups'\]"):
        model.generate(prompt(3), generation_config=unsupported)
