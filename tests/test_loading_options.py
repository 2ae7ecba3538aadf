"""transformers' loading options in from_pretrained (gpt_fast/checkpoints/loading_options.py, checkpoint.py,
shards.py): variant files written and read as transformers names them, use_safetensors, device_map, the hub
options handed to snapshot_download, the options with no effect, and any other keyword either a config attribute
or a TypeError (they used to be stored silently in the config, and saved with it)."""

import json
import sys
import types

import pytest
import torch
import transformers
from conftest import hf_model, random_ids

import gpt_fast
from gpt_fast.checkpoints.loading_options import device_from_map

LM = "OpenAIGPTLMHeadModel"
LOADER_OPTIONS = dict(low_cpu_mem_usage=True, trust_remote_code=True, revision="main", cache_dir="/nonexistent",
                      token="hf_x", force_download=False, local_files_only=True, proxies=None)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def two_models():
    """Two transformers models of the same shape with different weights: the plain files and a variant's."""
    return hf_model(LM, seed=0), hf_model(LM, seed=1)


@pytest.mark.parametrize("shard_size", [None, "20KB"])
def test_variant_files_are_read_and_written_as_transformers_names_them(tmp_path, shard_size):
    plain, other = two_models()
    plain.save_pretrained(tmp_path)
    ours_other = gpt_fast.OpenAIGPTLMHeadModel.from_transformers(other).eval()
    extra = {} if shard_size is None else {"max_shard_size": shard_size}
    ours_other.save_pretrained(tmp_path, variant="v1", **extra)
    names = {p.name for p in tmp_path.iterdir()}
    if shard_size is None:
        assert "model.v1.safetensors" in names
    else:
        assert "model.safetensors.index.v1.json" in names and any(n.startswith("model.v1-00001-of-") for n in names)
    assert "model.safetensors" in names  # the plain weights stay
    ids = random_ids((2, 7))
    for loader in (gpt_fast.OpenAIGPTLMHeadModel, transformers.OpenAIGPTLMHeadModel):
        torch.testing.assert_close(logits(loader.from_pretrained(tmp_path, variant="v1"), ids), logits(other, ids))
        torch.testing.assert_close(logits(loader.from_pretrained(tmp_path), ids), logits(plain, ids))


def test_transformers_variant_loads_in_gpt_fast(tmp_path):
    plain, other = two_models()
    plain.save_pretrained(tmp_path)
    other.save_pretrained(tmp_path, variant="fp16", max_shard_size="20KB")
    ids = random_ids((1, 9))
    torch.testing.assert_close(logits(gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, variant="fp16"), ids),
                               logits(other, ids))


def test_missing_or_bad_variant_is_a_clear_error(tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.bf16.safetensors"):  # not the plain file in its place
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, variant="bf16")
    model = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path)
    for bad in ("../x", "a/b", "", 3):
        with pytest.raises(ValueError, match="variant must be a name"):
            model.save_pretrained(tmp_path / "bad", variant=bad)
    assert not (tmp_path / "bad").exists()


def test_saving_replaces_only_its_own_variant(tmp_path):
    ours = gpt_fast.OpenAIGPTLMHeadModel.from_transformers(hf_model(LM)).eval()
    ours.save_pretrained(tmp_path, variant="v1", max_shard_size="20KB")
    ours.save_pretrained(tmp_path, max_shard_size="20KB")
    ours.save_pretrained(tmp_path, variant="v1")  # one file now: its old shards and index go
    names = {p.name for p in tmp_path.iterdir()}
    assert "model.v1.safetensors" in names and "model.safetensors.index.v1.json" not in names
    assert not any(n.startswith("model.v1-") for n in names)
    assert "model.safetensors.index.json" in names and any(n.startswith("model-00001-of-") for n in names)


def test_use_safetensors_picks_the_file_kind(tmp_path):
    plain, other = two_models()
    plain.save_pretrained(tmp_path)
    torch.save(other.state_dict(), tmp_path / "pytorch_model.bin")
    ids = random_ids((1, 5))
    load = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained
    torch.testing.assert_close(logits(load(tmp_path), ids), logits(plain, ids))
    torch.testing.assert_close(logits(load(tmp_path, use_safetensors=True), ids), logits(plain, ids))
    torch.testing.assert_close(logits(load(tmp_path, use_safetensors=False), ids), logits(other, ids))
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load(tmp_path, use_safetensors=False)


def test_device_map_picks_one_device(tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    for device_map in ("cpu", "auto", {"": "cpu"}, {"transformer": "cpu", "lm_head": "cpu"}, torch.device("cpu")):
        model = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, device_map=device_map)
        expected = "cuda" if device_map == "auto" and torch.cuda.is_available() else "cpu"
        assert {p.device.type for p in model.parameters()} == {expected}
    assert device_from_map(0, None) == torch.device("cuda", 0)  # transformers' maps name CUDA devices by index
    assert device_from_map({"": 1}, None) == torch.device("cuda", 1)
    assert device_from_map("cuda", "cuda:0") == torch.device("cuda")
    assert device_from_map(None, "cpu") == "cpu"


@pytest.mark.parametrize("device_map, device, error, message", [
    ({"transformer": 0, "lm_head": "cpu"}, None, NotImplementedError, "splits the model over 2 devices"),
    ({}, None, NotImplementedError, "over no devices"),
    ("disk", None, NotImplementedError, "offloading"),
    ({"": "disk"}, None, NotImplementedError, "offloading"),
    ("cpu", "cuda:0", ValueError, "name different devices"),
    (1.5, None, TypeError, "device_map must be"),
    (True, None, TypeError, "device_map must be"),
])
def test_bad_device_map_is_a_clear_error(tmp_path, device_map, device, error, message):
    hf_model(LM).save_pretrained(tmp_path)
    with pytest.raises(error, match=message):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, device_map=device_map, device=device)


def test_loading_options_are_not_stored_in_the_config(tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    model = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, resid_pdrop=0.3, **LOADER_OPTIONS)
    assert model.config.resid_pdrop == 0.3  # a config attribute is still an override
    config = gpt_fast.OpenAIGPTConfig.from_pretrained(tmp_path, **LOADER_OPTIONS)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    for name in LOADER_OPTIONS:
        assert not hasattr(model.config, name) and not hasattr(config, name) and name not in saved, name


def test_unknown_keyword_is_a_type_error(tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['n_layers'\]"):  # a typo of n_layer
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, n_layers=1)
    with pytest.raises(TypeError):  # as transformers
        transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, n_layers=1)
    with pytest.raises(ValueError, match="quantization='int8'"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, quantization_config={"load_in_8bit": True})
    model = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, quantization_config=None)
    assert getattr(model.config, "quantization_config", None) is None


def test_hub_options_reach_snapshot_download(monkeypatch, tmp_path):
    """For a hub name, the options go to huggingface_hub (a stand-in here: no network), for the model, the config,
    the tokenizer and the Auto classes alike."""
    hf_model(LM).save_pretrained(tmp_path)
    gpt_fast.OpenAIGPTTokenizerFast.from_pretrained("openai-gpt").save_pretrained(tmp_path)
    calls = []

    def snapshot_download(repo_id, allow_patterns=None, **options):
        calls.append((repo_id, options))
        return str(tmp_path)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    hub = dict(revision="v2", cache_dir=str(tmp_path / "cache"), token="hf_x", force_download=True,
               local_files_only=False, proxies={"https": "p"})
    loads = [lambda: gpt_fast.OpenAIGPTLMHeadModel.from_pretrained("someone/tiny", device_map="cpu", **hub),
             lambda: gpt_fast.AutoModelForCausalLM.from_pretrained("someone/tiny", trust_remote_code=True, **hub),
             lambda: gpt_fast.OpenAIGPTConfig.from_pretrained("someone/tiny", **hub),
             lambda: gpt_fast.AutoConfig.from_pretrained("someone/tiny", trust_remote_code=True, **hub),
             lambda: gpt_fast.OpenAIGPTTokenizerFast.from_pretrained("someone/tiny", use_fast=True, **hub),
             lambda: gpt_fast.AutoTokenizer.from_pretrained("someone/tiny", use_fast=True, **hub)]
    for load in loads:
        calls.clear()
        load()
        assert calls and all(call == ("someone/tiny", hub) for call in calls), calls


def test_tokenizer_takes_transformers_loading_options(tmp_path):
    reference = gpt_fast.AutoTokenizer.from_pretrained("openai-gpt")
    text = "Hello, world! It's a test."
    for options in (dict(use_fast=True), dict(use_fast=False, trust_remote_code=True), dict(revision="main")):
        tokenizer = gpt_fast.AutoTokenizer.from_pretrained("openai-gpt", **options)
        assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]
    with pytest.raises(TypeError, match="unexpected arguments"):
        gpt_fast.AutoTokenizer.from_pretrained("openai-gpt", use_fats=True)


@pytest.mark.parametrize("auto", ["AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
                                  "AutoModelForMultipleChoice"])
def test_from_config_takes_transformers_options(auto):
    config = gpt_fast.OpenAIGPTConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=50, n_positions=16)
    make = getattr(gpt_fast, auto).from_config
    assert make(config).dtype == torch.float32
    for options, dtype in ((dict(dtype=torch.bfloat16), torch.bfloat16), (dict(torch_dtype="float16"), torch.float16),
                           (dict(dtype="auto", trust_remote_code=True), torch.float32)):
        model = make(config, **options)
        assert {p.dtype for p in model.parameters()} == {dtype}, options
    config.dtype = "bfloat16"  # "auto": the config's dtype
    assert make(config, dtype="auto").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not both"):
        make(config, dtype=torch.float16, torch_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="dtype must be one of"):
        make(config, dtype="int8")
