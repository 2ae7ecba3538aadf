"""Checkpoint folders: every on-disk form, key layouts, loading info, dtypes, devices, and damaged files.

Folders are written here with transformers, safetensors and torch.save; the loaded models are compared with
the transformers model the weights came from.
"""

import json
import sys
import types

import pytest
import torch
import transformers
from conftest import HEADS, assert_outputs_close, gpt_fast_class, hf_model, random_ids
from safetensors.torch import save_file

import gpt_fast
from gpt_fast.checkpoints.checkpoint import parse_device

LM = "OpenAIGPTLMHeadModel"


def forward(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, return_dict=False, **kwargs)


def assert_same_function(ours, hf, shape=(2, 7)):
    ids = random_ids(shape)
    assert_outputs_close(forward(ours, ids), forward(hf, ids))


def write_config(hf, folder):
    hf.config.save_pretrained(folder)
    return folder


def cloned_state(hf) -> dict:
    return {k: v.detach().clone() for k, v in hf.state_dict().items()}


# -- the forms ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", HEADS)
def test_safetensors_written_by_transformers(head, tmp_path):
    hf = hf_model(head)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert_same_function(gpt_fast_class(head).from_pretrained(tmp_path), hf,
                         (2, 3, 7) if "Double" in head else (2, 7))


def test_sharded_safetensors_with_index(tmp_path):
    hf = hf_model(LM)
    state = {k: v for k, v in cloned_state(hf).items() if k != "lm_head.weight"}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for shard, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, str(tmp_path / shard), metadata={"format": "pt"})
    weight_map = {k: shard for shard, shard_keys in shards.items() for k in shard_keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    write_config(hf, tmp_path)
    model, info = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info.missing_keys == [] and info.unexpected_keys == []
    assert_same_function(model, hf)


def test_index_naming_a_missing_shard(tmp_path):
    hf = hf_model(LM)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "nowhere.safetensors"}}))
    write_config(hf, tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("head", ["OpenAIGPTModel", LM])
def test_pytorch_model_bin(head, tmp_path):
    hf = hf_model(LM)
    torch.save(cloned_state(hf), tmp_path / "pytorch_model.bin")
    write_config(hf, tmp_path)
    model, info = gpt_fast_class(head).from_pretrained(tmp_path, output_loading_info=True)
    assert info.missing_keys == []
    assert info.unexpected_keys == ([] if head == LM else ["lm_head.weight"])
    assert_same_function(model, hf if head == LM else hf.transformer)


def legacy_state(hf) -> dict:
    """The published GPT-1 layout: base-model keys without `transformer.`, plus the old causal-mask buffers."""
    n_positions = hf.config.n_positions
    state = {k[len("transformer."):]: v for k, v in cloned_state(hf).items() if k.startswith("transformer.")}
    for layer in range(hf.config.n_layer):
        state[f"h.{layer}.attn.bias"] = torch.ones(n_positions, n_positions).tril().view(1, 1, n_positions,
                                                                                         n_positions)
        state[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    return state


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy-pickle"])
@pytest.mark.parametrize("head", ["OpenAIGPTModel", LM])
def test_legacy_published_layout(head, zipfile, tmp_path):
    hf = hf_model(LM)
    torch.save(legacy_state(hf), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=zipfile)
    write_config(hf, tmp_path)
    model, info = gpt_fast_class(head).from_pretrained(tmp_path, output_loading_info=True)
    assert info.missing_keys == [] and info.unexpected_keys == []
    assert sorted(info.ignored_keys) == sorted(f"h.{i}.attn.{b}" for i in range(2) for b in ("bias", "masked_bias"))
    if head == LM:  # the head comes from the embedding, and stays tied to it
        assert model.lm_head.weight.data_ptr() == model.transformer.tokens_embed.weight.data_ptr()
    assert_same_function(model, hf if head == LM else hf.transformer)


def test_prefixed_keys_into_the_base_model(tmp_path):
    hf = hf_model(LM)
    hf.save_pretrained(tmp_path)
    model = gpt_fast.OpenAIGPTModel.from_pretrained(tmp_path)
    assert_same_function(model, hf.transformer)


def test_head_tied_from_lm_head_weight_alone(tmp_path):
    hf = hf_model(LM)
    state = cloned_state(hf)
    del state["transformer.tokens_embed.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    write_config(hf, tmp_path)
    model, info = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info.missing_keys == []
    assert model.lm_head.weight.data_ptr() == model.transformer.tokens_embed.weight.data_ptr()
    assert_same_function(model, hf)


def test_missing_and_unexpected_keys_are_reported(tmp_path, caplog):
    hf = hf_model(LM)
    state = {k: v for k, v in cloned_state(hf).items() if k not in ("lm_head.weight", "transformer.h.1.ln_2.bias")}
    state["transformer.h.0.extra.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    write_config(hf, tmp_path)
    model, info = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info.missing_keys == ["transformer.h.1.ln_2.bias"]
    assert info.unexpected_keys == ["transformer.h.0.extra.weight"]
    assert "transformer.h.1.ln_2.bias" in caplog.text and "transformer.h.0.extra.weight" in caplog.text
    missing = model.transformer.h[1].ln_2.bias
    assert not missing.is_meta and torch.all(missing == 0)  # initialised as transformers would
    with torch.no_grad():
        hf.transformer.h[1].ln_2.bias.zero_()
    assert_same_function(model, hf)
    assert not isinstance(gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path), tuple)


def test_classifier_from_a_language_model_folder_with_num_labels(tmp_path):
    """The usual fine-tuning start: a classifier of 3 labels from a folder gpt_fast saved (which lists 2 labels)."""
    hf = hf_model(LM)
    gpt_fast.OpenAIGPTLMHeadModel.from_transformers(hf).save_pretrained(tmp_path)
    model, info = gpt_fast.OpenAIGPTForSequenceClassification.from_pretrained(tmp_path, num_labels=3,
                                                                              output_loading_info=True)
    assert model.config.num_labels == 3 and tuple(model.score.weight.shape) == (3, 32)
    assert info.missing_keys == ["score.weight"] and info.unexpected_keys == []  # the tied head is not saved
    assert_same_function(model.transformer, hf.transformer)


def test_weight_of_the_wrong_shape_names_key_and_shapes(tmp_path):
    hf = hf_model(LM)
    state = cloned_state(hf)
    del state["lm_head.weight"]
    state["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(32, 100)
    save_file(state, str(tmp_path / "model.safetensors"))
    write_config(hf, tmp_path)
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight.*\(32, 100\).*\(32, 128\)"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path)


# -- gpt_fast <-> transformers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("head", HEADS)
def test_transformers_loads_what_gpt_fast_saved(head, tmp_path):
    hf = hf_model(head)
    ours = gpt_fast_class(head).from_transformers(hf)
    ours.save_pretrained(tmp_path)
    reloaded = getattr(transformers, head).from_pretrained(tmp_path).eval()
    shape = (2, 3, 7) if "Double" in head else (2, 7)
    assert_same_function(ours.eval(), reloaded, shape)
    assert_same_function(ours, hf, shape)  # and both are still the original function
    if hasattr(reloaded, "lm_head"):
        assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.tokens_embed.weight.data_ptr()


@pytest.mark.parametrize("head", [LM, "OpenAIGPTDoubleHeadsModel"])
def test_untied_lm_head(head, tmp_path):
    """tie_word_embeddings=False: the head keeps its own weights through conversion and both save directions."""
    hf = hf_model(head, tie_word_embeddings=False)
    assert hf.lm_head.weight.data_ptr() != hf.transformer.tokens_embed.weight.data_ptr()
    shape = (2, 3, 7) if "Double" in head else (2, 7)
    ours = gpt_fast_class(head).from_transformers(hf).eval()
    assert ours.lm_head.weight.data_ptr() != ours.transformer.tokens_embed.weight.data_ptr()
    assert_same_function(ours, hf, shape)
    ours.save_pretrained(tmp_path / "ours")
    assert_same_function(getattr(transformers, head).from_pretrained(tmp_path / "ours").eval(), hf, shape)
    hf.save_pretrained(tmp_path / "theirs")
    reloaded = gpt_fast_class(head).from_pretrained(tmp_path / "theirs")
    assert reloaded.lm_head.weight.data_ptr() != reloaded.transformer.tokens_embed.weight.data_ptr()
    assert_same_function(reloaded, hf, shape)


# -- dtype and device --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argument", [dict(dtype=torch.bfloat16), dict(torch_dtype=torch.bfloat16),
                                      dict(dtype="bfloat16"), dict(torch_dtype="torch.bfloat16")])
def test_bf16_straight_from_an_fp32_file(argument, tmp_path):
    hf = hf_model(LM)
    hf.save_pretrained(tmp_path)
    model = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, **argument)
    theirs = dict(hf.named_parameters())
    for name, param in model.named_parameters():
        assert param.dtype == torch.bfloat16, name
        torch.testing.assert_close(param, theirs[name].to(torch.bfloat16), rtol=0, atol=0)
    assert model.transformer.position_ids.dtype == torch.long


def test_dtype_auto_keeps_the_stored_dtype(tmp_path):
    hf = hf_model(LM).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_conflicting_dtype_and_torch_dtype(tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="torch_dtype"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, dtype=torch.float32, torch_dtype=torch.bfloat16)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "cpu:0"])
def test_device_cpu(device, tmp_path):
    hf = hf_model(LM)
    hf.save_pretrained(tmp_path)
    model = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, device=device)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert_same_function(model, hf)


def test_device_parsing():
    assert parse_device(0) == torch.device("cuda", 0)
    assert parse_device(1) == torch.device("cuda", 1)
    assert parse_device("cuda:1") == torch.device("cuda", 1)
    assert parse_device(None) == torch.device("cpu")
    for bad in ("gpu7", "cuda:x", 3.5):
        with pytest.raises(ValueError, match="device"):
            parse_device(bad)


def test_bad_device_string_in_from_pretrained(tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="device"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, device="gpu7")


# -- folders that are not checkpoints ----------------------------------------------------------------------------
def test_name_without_huggingface_hub_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    with pytest.raises(FileNotFoundError, match="huggingface_hub"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained("no-such-model")
    with pytest.raises(FileNotFoundError, match="no such folder"):  # a path, not a hub id: the hub is not asked
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(str(tmp_path / "no-such-model"))
    with pytest.raises(FileNotFoundError, match="huggingface_hub"):
        gpt_fast.AutoModel.from_pretrained("openai-community/openai-gpt-not-a-folder")


def test_hub_name_goes_through_snapshot_download(monkeypatch, tmp_path):
    """A name that is not a folder is handed to huggingface_hub (replaced here by a stand-in: no network)."""
    hf = hf_model(LM)
    hf.save_pretrained(tmp_path)
    calls = []

    def snapshot_download(repo_id, allow_patterns=None):
        calls.append(repo_id)
        if repo_id != "someone/tiny-gpt":
            raise OSError(f"404: {repo_id} not found")
        return str(tmp_path)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    assert_same_function(gpt_fast.OpenAIGPTLMHeadModel.from_pretrained("someone/tiny-gpt"), hf)
    assert calls == ["someone/tiny-gpt"]
    with pytest.raises(FileNotFoundError, match="someone/missing.*404"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained("someone/missing")


def test_config_overrides_at_load_time(tmp_path):
    hf = hf_model(LM)
    hf.save_pretrained(tmp_path)
    model = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0)
    assert (model.config.resid_pdrop, model.config.attn_pdrop, model.config.embd_pdrop) == (0.0, 0.0, 0.0)
    model.train()  # no dropout left: train mode computes the eval function
    assert_same_function(model, hf)
    with pytest.raises(ValueError, match="config"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, config=model.config, resid_pdrop=0.2)


def test_a_file_instead_of_a_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="folder"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "model.safetensors")


def test_folder_without_config(tmp_path):
    hf = hf_model(LM)
    hf.save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path)


def test_folder_without_weights(tmp_path):
    write_config(hf_model(LM), tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path)


# -- damaged files -----------------------------------------------------------------------------------------------
@pytest.fixture
def saved_folder(tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_safetensors(saved_folder, keep):
    path = saved_folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="is truncated or corrupt: tensor"):  # (the folder's name says truncated)
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(saved_folder)


def test_safetensors_shorter_than_its_header(saved_folder):
    (saved_folder / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ValueError, match="too short"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(saved_folder)


def test_garbled_safetensors_header(saved_folder):
    path = saved_folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="header is not JSON"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(saved_folder)


def test_safetensors_header_length_beyond_the_file(saved_folder):
    path = saved_folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[:8] = (len(data) * 2).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(saved_folder)


def test_safetensors_entry_with_wrong_byte_count(saved_folder):
    """A header whose offsets disagree with the tensor's dtype (the shape is right, so only the byte count shows)."""
    path = saved_folder / "model.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["transformer.h.0.ln_1.bias"]["dtype"] = "F16"
    text = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(text) == n
    path.write_bytes(data[:8] + text + data[8 + n:])
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.ln_1\.bias.*64 bytes for shape \[32\]"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(saved_folder)


def test_corrupt_pytorch_model_bin(tmp_path):
    hf = hf_model(LM)
    torch.save(cloned_state(hf), tmp_path / "pytorch_model.bin")
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 3])
    write_config(hf, tmp_path)
    with pytest.raises(ValueError, match="could not be read"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path)
