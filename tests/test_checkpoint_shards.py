"""save_pretrained's transformers options (gpt_fast/checkpoints/shards.py, models/pretrained.py): max_shard_size
shards that gpt_fast and transformers load back, the stale weight files of an earlier save removed, the size
strings, is_main_process, distributed_checkpoint refused (variant: tests/test_loading_options.py)."""

import json

import pytest
import torch
import transformers
from conftest import hf_model, random_ids

import gpt_fast
from gpt_fast.checkpoints.shards import parse_size, split

LM = "OpenAIGPTLMHeadModel"


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def pair():
    hf = hf_model(LM)
    return hf, gpt_fast.OpenAIGPTLMHeadModel.from_transformers(hf).eval()


def test_shards_load_in_gpt_fast_and_transformers(pair, tmp_path):
    hf, ours = pair
    ours.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    assert not (tmp_path / "model.safetensors").exists()
    state = {k: v for k, v in ours.state_dict().items()}
    assert set(index["weight_map"]) == set(state)  # the tied head once, as the token embedding
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in state.values())
    ids = random_ids((2, 7))
    for loaded, original in ((gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path), ours),
                             (transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path), hf)):
        torch.testing.assert_close(logits(loaded.eval(), ids), logits(original, ids), rtol=0, atol=0)


def test_a_new_save_removes_the_weight_files_of_the_last(pair, tmp_path):
    """Else a loader would read a stale model.safetensors beside new shards (it is looked for first)."""
    hf, ours = pair
    (tmp_path / "model-00009-of-00009.safetensors").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("kept")
    ours.save_pretrained(tmp_path, max_shard_size="20KB")
    assert not (tmp_path / "model-00009-of-00009.safetensors").exists()
    with torch.no_grad():
        ours.lm_head.weight.mul_(2.0)
    ours.save_pretrained(tmp_path)  # one file now: the shards and the index go
    assert not list(tmp_path.glob("model-*.safetensors")) and not (tmp_path / "model.safetensors.index.json").exists()
    ours.save_pretrained(tmp_path, max_shard_size=10_000)  # shards again: the single file goes
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "notes.txt").read_text() == "kept"
    ids = random_ids((1, 5))
    torch.testing.assert_close(logits(gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path), ids), logits(ours, ids))


@pytest.mark.parametrize("text, size", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30),
                                        ("20KB", 20_000), ("1.5MiB", int(1.5 * 2**20)), ("8Kb", 1000), (1234, 1234)])
def test_sizes_as_transformers_reads_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["5", "5XB", "", -1, 0, True, 2.5])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size(bad)


def test_split_keeps_order_and_gives_a_large_tensor_its_own_shard():
    state = {"a": torch.zeros(10), "b": torch.zeros(100), "c": torch.zeros(5), "d": torch.zeros(5)}  # 40, 400, 20, 20 B
    assert [list(s) for s in split(state, 60)] == [["a"], ["b"], ["c", "d"]]
    assert [list(s) for s in split(state, 10**6)] == [["a", "b", "c", "d"]]


def test_other_options(pair, tmp_path):
    _, ours = pair
    ours.save_pretrained(tmp_path / "other_rank", is_main_process=False)
    assert not (tmp_path / "other_rank").exists()
    ours.save_pretrained(tmp_path / "bin", safe_serialization=False)  # safetensors anyway, as transformers 5
    assert {p.name for p in (tmp_path / "bin").iterdir()} == {"config.json", "generation_config.json",
                                                              "model.safetensors"}
    with pytest.raises(NotImplementedError, match="gathered state_dict"):
        ours.save_pretrained(tmp_path / "refused", distributed_checkpoint=True)
    with pytest.raises(TypeError, match=r"unexpected arguments \['save_functoin'\]"):
        ours.save_pretrained(tmp_path / "refused", save_functoin=torch.save)
    with pytest.raises(TypeError, match="for push_to_hub=True"):
        ours.save_pretrained(tmp_path / "refused", repo_id="me/model")  # a hub argument without push_to_hub
    assert not (tmp_path / "refused").exists()


def test_accelerate_example_save(pair, tmp_path):
    """The save step of accelerate's no-Trainer examples (save_function=accelerator.save, the gathered state_dict):
    transformers loads what it writes."""
    from accelerate import Accelerator

    hf, ours = pair
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(ours)
    accelerator.unwrap_model(model).save_pretrained(
        tmp_path, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
        state_dict=accelerator.get_state_dict(model), token=None, save_peft_format=True, save_original_format=True)
    ids = random_ids((2, 5))
    torch.testing.assert_close(logits(transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path), ids),
                               logits(hf, ids))
