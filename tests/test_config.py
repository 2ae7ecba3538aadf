"""OpenAIGPTConfig: reading the published and the transformers forms, round trips, aliases, labels, validation."""

import json

import pytest
import transformers
from conftest import SHARED_GPT

from gpt_fast import AutoConfig, OpenAIGPTConfig


@pytest.mark.skipif(not (SHARED_GPT / "config.json").is_file(), reason="shared GPT-1 config.json absent")
def test_reads_the_published_legacy_config(tmp_path):
    published = json.loads((SHARED_GPT / "config.json").read_text())
    config = OpenAIGPTConfig.from_pretrained(SHARED_GPT)
    assert (config.n_embd, config.n_layer, config.n_head, config.n_positions, config.vocab_size) == (768, 12, 12, 512,
                                                                                                     40478)
    assert config.afn == "gelu" and config.layer_norm_epsilon == 1e-5
    # legacy keys are kept as they are and written back
    assert config.n_ctx == 512 and config.n_special == 0 and config.predict_special_tokens is True
    assert config.task_specific_params == published["task_specific_params"]
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    for key, value in published.items():
        assert written[key] == value, key


def test_reads_a_config_transformers_wrote(tmp_path):
    transformers.OpenAIGPTConfig(vocab_size=123, n_positions=64, n_embd=48, n_layer=3, n_head=6, afn="relu",
                                 resid_pdrop=0.2, layer_norm_epsilon=1e-6, pad_token_id=5,
                                 summary_type="mean").save_pretrained(tmp_path)
    config = OpenAIGPTConfig.from_pretrained(tmp_path)
    expected = dict(vocab_size=123, n_positions=64, n_embd=48, n_layer=3, n_head=6, afn="relu", resid_pdrop=0.2,
                    layer_norm_epsilon=1e-6, pad_token_id=5, summary_type="mean", embd_pdrop=0.1)
    assert {k: getattr(config, k) for k in expected} == expected


def test_round_trip_keeps_unknown_keys(tmp_path):
    config = OpenAIGPTConfig(n_embd=64, n_head=4, my_custom_key={"nested": [1, 2]}, another=3.5)
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["my_custom_key"] == {"nested": [1, 2]} and data["another"] == 3.5
    assert data["model_type"] == "openai-gpt"
    again = OpenAIGPTConfig.from_pretrained(tmp_path)
    assert again.my_custom_key == {"nested": [1, 2]} and again.another == 3.5
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("alias, name, value", [
    ("hidden_size", "n_embd", 96), ("num_attention_heads", "n_head", 3),
    ("num_hidden_layers", "n_layer", 5), ("max_position_embeddings", "n_positions", 128),
])
def test_aliases_get_and_set(alias, name, value):
    config = OpenAIGPTConfig(**{alias: value})
    assert getattr(config, name) == value and getattr(config, alias) == value
    config = OpenAIGPTConfig()
    setattr(config, alias, value)
    assert getattr(config, name) == value
    assert config.to_dict()[name] == value and alias not in config.to_dict()


def test_alias_conflicting_with_its_name_is_an_error():
    with pytest.raises(ValueError, match="hidden_size"):
        OpenAIGPTConfig(n_embd=64, hidden_size=128)


def test_labels():
    config = OpenAIGPTConfig()
    assert config.num_labels == 2 and config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    config = OpenAIGPTConfig(num_labels=3)
    assert config.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
    config = OpenAIGPTConfig(id2label={"0": "neg", "1": "pos"}, problem_type="single_label_classification",
                             pad_token_id=7)
    assert config.id2label == {0: "neg", 1: "pos"} and config.label2id == {"neg": 0, "pos": 1}
    assert config.num_labels == 2 and config.problem_type == "single_label_classification" and config.pad_token_id == 7
    config.num_labels = 4
    assert len(config.id2label) == 4


def test_labels_match_transformers(tmp_path):
    theirs = transformers.OpenAIGPTConfig(id2label={0: "a", 1: "b", 2: "c"}, problem_type="regression",
                                          pad_token_id=3)
    theirs.save_pretrained(tmp_path)
    ours = OpenAIGPTConfig.from_pretrained(tmp_path)
    assert ours.num_labels == theirs.num_labels == 3
    assert ours.id2label == theirs.id2label == {0: "a", 1: "b", 2: "c"}
    assert ours.label2id == {"a": 0, "b": 1, "c": 2}
    assert ours.problem_type == "regression" and ours.pad_token_id == 3


def test_to_dict_keeps_int_label_ids_as_transformers_does(tmp_path):
    ours = OpenAIGPTConfig(id2label={0: "neg", 1: "pos"})
    theirs = transformers.OpenAIGPTConfig(id2label={0: "neg", 1: "pos"})
    assert ours.to_dict()["id2label"] == theirs.to_dict()["id2label"] == {0: "neg", 1: "pos"}
    assert ours.to_dict()["label2id"] == {"neg": 0, "pos": 1}
    assert json.loads(ours.to_json_string())["id2label"] == {"0": "neg", "1": "pos"}  # JSON's keys are strings
    assert OpenAIGPTConfig.from_dict(ours.to_dict()).id2label == {0: "neg", 1: "pos"}


def test_transformers_loads_a_config_gpt_fast_wrote(tmp_path):
    OpenAIGPTConfig(vocab_size=321, n_positions=48, n_embd=40, n_layer=2, n_head=5, afn="silu",
                    id2label={0: "x", 1: "y", 2: "z"}, pad_token_id=2, attn_pdrop=0.05).save_pretrained(tmp_path)
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    assert isinstance(theirs, transformers.OpenAIGPTConfig)
    assert (theirs.vocab_size, theirs.n_positions, theirs.hidden_size, theirs.num_hidden_layers,
            theirs.num_attention_heads) == (321, 48, 40, 2, 5)
    assert theirs.afn == "silu" and theirs.attn_pdrop == 0.05 and theirs.pad_token_id == 2
    assert theirs.id2label == {0: "x", 1: "y", 2: "z"} and theirs.num_labels == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=0), "n_embd"), (dict(n_head=-2), "n_head"), (dict(n_layer=0), "n_layer"),
    (dict(vocab_size=0), "vocab_size"), (dict(n_positions=-1), "n_positions"), (dict(n_embd=2.5), "n_embd"),
    (dict(n_embd=100, n_head=12), "divisible"), (dict(afn="tanh"), "afn"), (dict(afn="gelu_new"), "afn"),
    (dict(resid_pdrop=1.0), "resid_pdrop"), (dict(attn_pdrop=-0.1), "attn_pdrop"), (dict(embd_pdrop=1.5), "embd_pdrop"),
    (dict(summary_first_dropout=1.0), "summary_first_dropout"), (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon"),
    (dict(summary_type="attn"), "summary_type"), (dict(problem_type="ranking"), "problem_type"),
    (dict(pad_token_id=40478), "pad_token_id"), (dict(num_labels=-1), "num_labels"),
])
def test_invalid_values_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OpenAIGPTConfig(**kwargs)


@pytest.mark.parametrize("afn", ["gelu", "relu", "silu", "swish"])
def test_every_supported_activation_is_accepted(afn):
    assert OpenAIGPTConfig(afn=afn).afn == afn


def test_another_model_type_is_a_clear_error(tmp_path):
    transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="gpt2"):
        OpenAIGPTConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="gpt2"):
        AutoConfig.from_pretrained(tmp_path)


def test_malformed_config_files(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        OpenAIGPTConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        OpenAIGPTConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        OpenAIGPTConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("override", [dict(num_labels=3), dict(id2label={0: "p", 1: "q", 2: "r"})])
def test_label_overrides_replace_the_saved_labels(override, tmp_path):
    """As in transformers: from_pretrained(folder, num_labels=3) on a config.json that lists two labels."""
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "openai-gpt", "id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1},
        "num_labels": 2}))
    theirs = transformers.OpenAIGPTConfig.from_pretrained(tmp_path, **override)
    ours = OpenAIGPTConfig.from_pretrained(tmp_path, **override)
    assert ours.num_labels == theirs.num_labels == 3
    assert ours.id2label == theirs.id2label


def test_accessors_tools_call_match_transformers(tmp_path):
    """get_text_config, is_encoder_decoder, use_return_dict, name_or_path and update(), as transformers' config."""
    transformers = pytest.importorskip("transformers")
    theirs = transformers.OpenAIGPTConfig(n_layer=2, return_dict=False)
    ours = OpenAIGPTConfig(n_layer=2, return_dict=False)
    assert ours.get_text_config() is ours and ours.get_text_config(decoder=True) is ours
    for name in ("is_encoder_decoder", "use_return_dict", "name_or_path"):
        assert getattr(ours, name) == getattr(theirs, name), name
    changes = {"pad_token_id": 3, "n_embd": 96, "hidden_size": 96, "num_labels": 3, "my_key": [1]}
    for config in (ours, theirs):
        config.update(changes)
    assert (ours.pad_token_id, ours.n_embd, ours.num_labels, ours.my_key) == (3, 96, 3, [1])
    saved = ours.to_dict()
    assert saved["my_key"] == [1] and "num_labels" not in saved and "hidden_size" not in saved
    assert {k: saved[k] for k in ("pad_token_id", "n_embd", "id2label")} == \
        {k: theirs.to_dict()[k] for k in ("pad_token_id", "n_embd", "id2label")}
    with pytest.raises(ValueError, match="n_head"):
        ours.update({"n_embd": 100})  # validated: 100 is not a multiple of 12 heads
    ours.n_embd = 96
    ours.save_pretrained(tmp_path)
    transformers.OpenAIGPTConfig(n_layer=2).save_pretrained(tmp_path / "theirs")
    assert OpenAIGPTConfig.from_pretrained(tmp_path).name_or_path == ""  # only the model's from_pretrained sets it
    assert transformers.OpenAIGPTConfig.from_pretrained(tmp_path).name_or_path == ""
