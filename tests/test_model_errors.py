"""Bad input to the models: each case raises a clear error naming the argument (never a crash or garbage).

Damaged or incomplete checkpoint folders are covered in test_checkpoints.py, bad config values in test_config.py.
"""

import pytest
import torch
from conftest import TINY, random_ids

import gpt_fast

V, P = TINY["vocab_size"], TINY["n_positions"]


def config(**overrides):
    return gpt_fast.OpenAIGPTConfig(**{**TINY, "pad_token_id": 0, **overrides})


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: getattr(gpt_fast, name)(config()).eval() for name in (
        "OpenAIGPTModel", "OpenAIGPTLMHeadModel", "OpenAIGPTDoubleHeadsModel", "OpenAIGPTForSequenceClassification")}


IDS = random_ids((2, 6))
MC_IDS = random_ids((2, 3, 6))

CASES = {  # name: (model, keyword arguments, exception type, message pattern)
    "sequence longer than n_positions": ("OpenAIGPTModel", dict(input_ids=random_ids((1, P + 1))), ValueError,
                                         "n_positions"),
    "empty sequence": ("OpenAIGPTModel", dict(input_ids=torch.zeros(2, 0, dtype=torch.long)), ValueError, "empty"),
    "negative id": ("OpenAIGPTModel", dict(input_ids=torch.tensor([[1, -1, 2]])), IndexError, "input_ids holds -1"),
    "id equal to vocab_size": ("OpenAIGPTModel", dict(input_ids=torch.tensor([[1, V]])), IndexError,
                               f"input_ids holds {V}"),
    "float ids": ("OpenAIGPTModel", dict(input_ids=IDS.float()), TypeError, "input_ids"),
    "bool ids": ("OpenAIGPTModel", dict(input_ids=IDS > 3), TypeError, "input_ids"),
    "scalar ids": ("OpenAIGPTModel", dict(input_ids=torch.tensor(3)), ValueError, "input_ids"),
    "both ids and embeddings": ("OpenAIGPTModel", dict(input_ids=IDS, inputs_embeds=torch.randn(2, 6, 32)),
                                ValueError, "both input_ids and inputs_embeds"),
    "neither ids nor embeddings": ("OpenAIGPTModel", dict(), ValueError, "input_ids and inputs_embeds"),
    "embeddings of the wrong width": ("OpenAIGPTModel", dict(inputs_embeds=torch.randn(2, 6, 31)), ValueError,
                                      "inputs_embeds"),
    "integer embeddings": ("OpenAIGPTModel", dict(inputs_embeds=torch.zeros(2, 6, 32, dtype=torch.long)), TypeError,
                           "inputs_embeds"),
    "attention_mask shape": ("OpenAIGPTModel", dict(input_ids=IDS, attention_mask=torch.ones(2, 5)), ValueError,
                             "attention_mask"),
    "attention_mask not a tensor": ("OpenAIGPTModel", dict(input_ids=IDS, attention_mask=[[1] * 6] * 2), TypeError,
                                    "attention_mask"),
    "token_type_ids shape": ("OpenAIGPTModel", dict(input_ids=IDS, token_type_ids=torch.zeros(1, 6, dtype=torch.long)),
                             ValueError, "token_type_ids"),
    "token_type_ids outside the vocabulary": ("OpenAIGPTModel", dict(input_ids=IDS, token_type_ids=IDS + V),
                                              IndexError, "token_type_ids"),
    "float token_type_ids": ("OpenAIGPTModel", dict(input_ids=IDS, token_type_ids=IDS.float()), TypeError,
                             "token_type_ids"),
    "position_ids shape": ("OpenAIGPTModel", dict(input_ids=IDS, position_ids=torch.arange(5)[None]), ValueError,
                           "position_ids"),
    "position_ids beyond n_positions": ("OpenAIGPTModel", dict(input_ids=IDS, position_ids=torch.arange(P - 2, P + 4)),
                                        IndexError, "position_ids"),
    "float position_ids": ("OpenAIGPTModel", dict(input_ids=IDS, position_ids=torch.arange(6.0)), TypeError,
                           "position_ids"),
    "head_mask shape": ("OpenAIGPTModel", dict(input_ids=IDS, head_mask=torch.ones(3)), ValueError, "head_mask"),
    "unknown argument": ("OpenAIGPTModel", dict(input_ids=IDS, use_kache=True), TypeError, "use_kache"),
    "labels shape": ("OpenAIGPTLMHeadModel", dict(input_ids=IDS, labels=IDS[:, :5]), ValueError, "labels"),
    "float labels": ("OpenAIGPTLMHeadModel", dict(input_ids=IDS, labels=IDS.float()), TypeError, "labels"),
    "mc_token_ids shape": ("OpenAIGPTDoubleHeadsModel", dict(input_ids=MC_IDS, mc_token_ids=torch.tensor([5, 5])),
                           ValueError, "mc_token_ids"),
    "mc_token_ids beyond the sequence": ("OpenAIGPTDoubleHeadsModel",
                                         dict(input_ids=MC_IDS, mc_token_ids=torch.full((2, 3), 6)), IndexError,
                                         "mc_token_ids"),
    "negative mc_token_ids": ("OpenAIGPTDoubleHeadsModel", dict(input_ids=MC_IDS, mc_token_ids=torch.full((2, 3), -1)),
                              IndexError, "mc_token_ids"),
    "float mc_token_ids": ("OpenAIGPTDoubleHeadsModel", dict(input_ids=MC_IDS, mc_token_ids=torch.full((2, 3), 5.0)),
                           TypeError, "mc_token_ids"),
    "mc_labels shape": ("OpenAIGPTDoubleHeadsModel", dict(input_ids=MC_IDS, mc_labels=torch.tensor([0, 1, 2])),
                        ValueError, "mc_labels"),
    "multiple-choice labels shape": ("OpenAIGPTDoubleHeadsModel", dict(input_ids=MC_IDS, labels=IDS), ValueError,
                                     "labels"),
    "classification labels count": ("OpenAIGPTForSequenceClassification",
                                    dict(input_ids=IDS, labels=torch.tensor([0, 1, 1])), ValueError, "labels"),
    "classification labels not a tensor": ("OpenAIGPTForSequenceClassification", dict(input_ids=IDS, labels=[0, 1]),
                                           TypeError, "labels"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_forward_argument(models, case):
    name, kwargs, error, message = CASES[case]
    with pytest.raises(error, match=message), torch.no_grad():
        models[name](**kwargs)


def test_multi_label_targets_of_the_wrong_shape():
    model = gpt_fast.OpenAIGPTForSequenceClassification(config(num_labels=3,
                                                               problem_type="multi_label_classification"))
    with pytest.raises(ValueError, match="labels"), torch.no_grad():
        model(IDS, labels=torch.zeros(2, 4))


@pytest.mark.parametrize("bad", ["flash", "Eager", "", 3])
def test_bad_attn_implementation(bad, tmp_path):
    with pytest.raises(ValueError, match="attn_implementation"):
        gpt_fast.OpenAIGPTModel(config(), attn_implementation=bad)
    model = gpt_fast.OpenAIGPTModel(config())
    with pytest.raises(ValueError, match="attn_implementation"):
        model.set_attn_implementation(bad)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="attn_implementation"):
        gpt_fast.OpenAIGPTModel.from_pretrained(tmp_path, attn_implementation=bad)
    with pytest.raises(ValueError, match="attn_implementation"):
        gpt_fast.OpenAIGPTModel(config(attn_implementation=bad))


@pytest.mark.parametrize("backend", ["eager", "sdpa", "fused"])
def test_config_keyword_chooses_the_backend(backend):
    """OpenAIGPTConfig(attn_implementation=...) picks the backend, as transformers' config does; the model's own
    argument wins over it."""
    assert gpt_fast.OpenAIGPTLMHeadModel(config(attn_implementation=backend)).attn_implementation == backend
    model = gpt_fast.OpenAIGPTLMHeadModel(config(attn_implementation="eager"), attn_implementation=backend)
    assert model.attn_implementation == backend and model.transformer.attn_implementation == backend


def fused_forward():
    model = gpt_fast.OpenAIGPTLMHeadModel(config(), attn_implementation="fused").eval()
    with torch.no_grad():
        model(IDS)


def test_fused_without_a_kernel_is_a_clear_error(no_kernels):
    with pytest.raises(RuntimeError, match="attn_implementation='fused'.*flash_attention.*cpu"):
        fused_forward()


@pytest.mark.skipif(gpt_fast.ops.has_kernel("flash_attention", "cpu"), reason="the CPU kernel exists")
def test_fused_when_the_cpu_kernel_is_really_missing():
    with pytest.raises(RuntimeError, match="fused"):
        fused_forward()


def test_auto_falls_back_when_no_kernel(no_kernels):
    torch.manual_seed(0)
    model = gpt_fast.OpenAIGPTModel(config()).eval()
    with torch.no_grad():
        auto = model(IDS).last_hidden_state
        model.set_attn_implementation("eager")
        torch.testing.assert_close(auto, model(IDS).last_hidden_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", ["float64x", "int8", "bf", torch.int64, 16])
def test_bad_dtype(bad, tmp_path):
    gpt_fast.OpenAIGPTModel(config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        gpt_fast.OpenAIGPTModel.from_pretrained(tmp_path, dtype=bad)


def test_unknown_afn_in_a_folder(tmp_path):
    gpt_fast.OpenAIGPTModel(config()).save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text().replace('"afn": "gelu"', '"afn": "mish"')
    assert '"mish"' in text
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match="afn"):
        gpt_fast.OpenAIGPTModel.from_pretrained(tmp_path)


def test_config_of_another_class():
    import transformers

    with pytest.raises(TypeError, match="OpenAIGPTConfig"):
        gpt_fast.OpenAIGPTModel(transformers.OpenAIGPTConfig(**TINY))
