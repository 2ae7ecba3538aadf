"""from_pretrained loads every tensor in one dtype, decided as the installed transformers decides it.

transformers 5 treats dtype=None as "auto": the config's `dtype` (or the older `torch_dtype`), else the stored dtype
of the checkpoint's first floating-point tensor by name; every tensor, integer ones included, is cast to it. Each
test builds a folder, loads it with both libraries and compares the dtypes and the outputs.
"""

import json

import pytest
import torch
import transformers
from conftest import hf_model, random_ids
from safetensors.torch import load_file, save_file

import gpt_fast

LM = "OpenAIGPTLMHeadModel"
FIRST_KEY = "transformer.h.0.attn.c_attn.bias"  # the first tensor of the checkpoint by name


def rewrite(folder, change_state=None, change_config=None):
    """Rewrites model.safetensors and/or config.json of a folder written by transformers."""
    if change_state is not None:
        state = load_file(str(folder / "model.safetensors"))
        change_state(state)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if change_config is not None:
        config = json.loads((folder / "config.json").read_text())
        change_config(config)
        (folder / "config.json").write_text(json.dumps(config))


def drop_dtype(config):
    config.pop("dtype", None)
    config.pop("torch_dtype", None)


def both(folder, **kwargs):
    """(transformers model, gpt_fast model) loaded from folder with the same arguments."""
    hf = transformers.OpenAIGPTLMHeadModel.from_pretrained(folder, **kwargs).eval()
    return hf, gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(folder, **kwargs)


def dtypes(model):
    return {name: p.dtype for name, p in model.named_parameters()}


def assert_runs_like(ours, hf):
    ids = random_ids((2, 7))
    with torch.no_grad():
        theirs, mine = hf(ids).logits, ours(ids).logits
    assert mine.dtype == theirs.dtype
    tolerance = 1e-4 if mine.dtype == torch.float32 else 0.1  # two implementations, each rounding in bf16/fp16
    torch.testing.assert_close(mine, theirs, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("dtype", [None, "auto"])
def test_one_fp16_tensor_among_fp32_with_a_config_dtype(dtype, tmp_path):
    """The config says float32 (transformers writes it): the fp16 tensor is loaded as float32 like the rest."""
    hf_model(LM).save_pretrained(tmp_path)
    rewrite(tmp_path, lambda s: s.update({"transformer.h.1.ln_1.bias": s["transformer.h.1.ln_1.bias"].half()}))
    hf, ours = both(tmp_path, dtype=dtype)
    assert set(dtypes(ours).values()) == {torch.float32}
    assert dtypes(ours) == dtypes(hf)
    assert_runs_like(ours, hf)


@pytest.mark.parametrize("dtype", [None, "auto"])
def test_mixed_checkpoint_without_a_config_dtype_takes_the_first_floating_tensor(dtype, tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    rewrite(tmp_path, lambda s: s.update({FIRST_KEY: s[FIRST_KEY].half()}), drop_dtype)
    hf, ours = both(tmp_path, dtype=dtype)
    assert set(dtypes(ours).values()) == {torch.float16}
    assert dtypes(ours) == dtypes(hf)


@pytest.mark.parametrize("field", ["dtype", "torch_dtype"])
def test_config_dtype_decides_when_none_or_auto(field, tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    rewrite(tmp_path, change_config=lambda c: (drop_dtype(c), c.update({field: "bfloat16"})))
    for dtype in (None, "auto"):
        hf, ours = both(tmp_path, dtype=dtype)
        assert set(dtypes(ours).values()) == {torch.bfloat16}
        assert dtypes(ours) == dtypes(hf)
        assert_runs_like(ours, hf)


def test_an_explicit_dtype_wins_over_the_config(tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    rewrite(tmp_path, change_config=lambda c: c.update({"dtype": "bfloat16"}))
    ours = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert set(dtypes(ours).values()) == {torch.float32}


@pytest.mark.parametrize("stored", [torch.int64, torch.int8, torch.bool])
def test_integer_tensors_are_cast_too(stored, tmp_path):
    """A parameter stored as integers (or booleans) becomes a float parameter holding the same values."""
    hf_model(LM).save_pretrained(tmp_path)
    key = "transformer.h.0.ln_2.bias"
    rewrite(tmp_path, lambda s: s.update({key: (s[key] > 0).to(stored)}))
    hf, ours = both(tmp_path)
    assert set(dtypes(ours).values()) == {torch.float32}
    torch.testing.assert_close(ours.transformer.h[0].ln_2.bias, hf.transformer.h[0].ln_2.bias, rtol=0, atol=0)
    assert_runs_like(ours, hf)


def test_pytorch_bin_with_mixed_dtypes(tmp_path):
    hf = hf_model(LM)
    state = {k: v.detach().clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    state["transformer.h.1.mlp.c_fc.bias"] = state["transformer.h.1.mlp.c_fc.bias"].bfloat16()
    torch.save(state, tmp_path / "pytorch_model.bin")
    hf.config.save_pretrained(tmp_path)
    ours = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path)
    assert set(dtypes(ours).values()) == {torch.float32}
    ours(random_ids((1, 5)))  # runs


@pytest.mark.parametrize("value", ["int8", "float8_e4m3fn", "complex64", 3, "floaty"])
def test_a_config_dtype_gpt_fast_cannot_run_is_a_clear_error(value, tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    rewrite(tmp_path, change_config=lambda c: (drop_dtype(c), c.update({"torch_dtype": value})))
    with pytest.raises(ValueError, match=r"config\.json.*'torch_dtype'"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int32, "int8"])
def test_a_dtype_argument_gpt_fast_cannot_run_is_a_clear_error(dtype, tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dtype must be one of"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, dtype=dtype)


def test_saved_config_names_the_saved_dtype_for_both_libraries(tmp_path):
    """A folder from transformers 5 says dtype=float32; saved again in bf16, both keys must say bfloat16."""
    hf_model(LM).save_pretrained(tmp_path / "src")
    ours = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "src", dtype=torch.bfloat16)
    ours.save_pretrained(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    hf, again = both(tmp_path / "out")
    assert set(dtypes(again).values()) == set(dtypes(hf).values()) == {torch.bfloat16}
