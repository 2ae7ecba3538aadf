"""Malformed checkpoint files: each is a ValueError naming the file and the field, never a raw TypeError or
AttributeError from deep inside the loader.

The files are written by transformers and then edited: a safetensors header with fields of the wrong JSON type,
a sharded index whose weight_map is not an object, a config.json with a field of the wrong type.
"""

import json

import pytest
from conftest import hf_model
from safetensors.torch import load_file, save_file

import gpt_fast
from gpt_fast import OpenAIGPTConfig

LM = "OpenAIGPTLMHeadModel"
TENSOR = "transformer.h.0.ln_1.bias"  # 32 float32 values


@pytest.fixture
def folder(tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    return tmp_path


def edit_header(path, edit):
    """Rewrites the JSON header of a safetensors file in place (padded to its old length, or longer)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    text = text.ljust(n) if len(text) <= n else text.ljust(-(-len(text) // 8) * 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])


def entry_edit(field, value):
    def edit(header):
        header[TENSOR][field] = value(header[TENSOR][field]) if callable(value) else value
    return edit


@pytest.mark.parametrize("field, value", [
    ("data_offsets", lambda offsets: [str(o) for o in offsets]),  # offsets as strings
    ("data_offsets", lambda offsets: [float(o) for o in offsets]),
    ("data_offsets", lambda offsets: offsets[:1]),
    ("data_offsets", {"begin": 0}),
    ("shape", [32.0]),  # shape as floats: the byte count still matches
    ("shape", ["32"]),
    ("shape", 32),
    ("shape", [-32]),
    ("dtype", 7),
    ("dtype", "F8_E4M3"),
])
def test_safetensors_header_field_of_the_wrong_type(folder, field, value):
    path = folder / "model.safetensors"
    edit_header(path, entry_edit(field, value))
    with pytest.raises(ValueError, match=rf"model\.safetensors.*{TENSOR}.*'{field}'"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(folder)


@pytest.mark.parametrize("missing", ["dtype", "shape", "data_offsets"])
def test_safetensors_header_field_missing(folder, missing):
    edit_header(folder / "model.safetensors", lambda header: header[TENSOR].pop(missing))
    with pytest.raises(ValueError, match=rf"model\.safetensors.*{TENSOR}.*'{missing}'"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(folder)


def test_safetensors_header_entry_not_an_object(folder):
    edit_header(folder / "model.safetensors", lambda header: header.update({TENSOR: [1, 2, 3]}))
    with pytest.raises(ValueError, match=rf"model\.safetensors.*{TENSOR}"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(folder)


def shard(folder):
    """Rewrites the folder as a one-shard checkpoint with an index; returns the index's path."""
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    save_file(state, str(folder / "model-00001-of-00001.safetensors"), metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors"
                                                                for k in state}}))
    return index


def test_a_valid_index_loads(folder):
    shard(folder)
    gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(folder)


@pytest.mark.parametrize("index, field", [
    ({"weight_map": ["model-00001-of-00001.safetensors"]}, "weight_map"),  # a list
    ({"weight_map": "model-00001-of-00001.safetensors"}, "weight_map"),
    ({"weight_map": {TENSOR: 3}}, "weight_map"),
    ({"weight_map": {TENSOR: "../elsewhere.safetensors"}}, "weight_map"),
    ({"metadata": {}}, "weight_map"),
    ([1, 2], "JSON object"),
])
def test_malformed_index(folder, index, field):
    path = shard(folder)
    path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"model\.safetensors\.index\.json.*{field}"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(folder)


@pytest.mark.parametrize("field, value", [
    ("pad_token_id", "0"), ("pad_token_id", 1.0), ("pad_token_id", True), ("bos_token_id", "1"),
    ("eos_token_id", "2"), ("eos_token_id", [1, "2"]), ("eos_token_id", []),
    ("initializer_range", "0.02"), ("layer_norm_epsilon", "1e-5"), ("layer_norm_epsilon", True),
    ("tie_word_embeddings", "false"), ("summary_use_proj", 1), ("summary_activation", "relu"),
    ("id2label", ["neg", "pos"]), ("id2label", {"first": "neg"}),
])
def test_config_field_of_the_wrong_type(folder, field, value):
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    if field == "id2label":
        config.pop("label2id", None)
    (folder / "config.json").write_text(json.dumps(config))
    for load in (OpenAIGPTConfig.from_pretrained, gpt_fast.OpenAIGPTLMHeadModel.from_pretrained):
        with pytest.raises(ValueError, match=rf"config\.json: config\.{field}"):
            load(folder)


def test_config_field_of_the_wrong_type_in_code():
    with pytest.raises(ValueError, match="config.pad_token_id must be a token id"):
        OpenAIGPTConfig(pad_token_id="0")
