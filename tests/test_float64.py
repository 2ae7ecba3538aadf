"""float64 models run, on PyTorch's paths (the kernels have no float64 variant), and agree with transformers in
float64: every head and backend, outputs with attentions and hidden states, gradients, generate (greedy and
padded), from_pretrained(dtype="float64"), the pipeline and `gpt-fast convert --dtype float64`."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import BACKENDS, DOUBLE, HEADS, SEQ_CLS, assert_outputs_close, gpt_fast_class, hf_model, random_ids

import gpt_fast
from gpt_fast.cli import main
from gpt_fast.ops import reference
from gpt_fast.ops.kernel_plan import plan_kernels

LM = "OpenAIGPTLMHeadModel"
TIGHT = dict(atol=1e-10, rtol=1e-10)  # both sides compute in float64


def pair64(head, backend=None):
    hf = hf_model(head).double().eval()
    ours = gpt_fast_class(head).from_transformers(hf, attn_implementation=backend).eval()
    assert ours.dtype == torch.float64
    return hf, ours


def inputs(head):
    """(ids, keyword arguments) of a forward with labels (and a right-padded row for the 2-D heads)."""
    if head == DOUBLE:
        ids = random_ids((2, 3, 7))
        return ids, dict(mc_token_ids=torch.full((2, 3), 6), labels=ids, mc_labels=torch.tensor([2, 0]))
    ids = random_ids((2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 5:] = 0
    if head == "OpenAIGPTModel":
        return ids, dict(attention_mask=mask)
    labels = torch.tensor([1, 0]) if head == SEQ_CLS else ids.masked_fill(mask == 0, -100)
    return ids, dict(attention_mask=mask, labels=labels)


def real_positions(head, output, kwargs):
    """Per-token outputs at the real (unpadded) positions only: backends may differ at padded query rows."""
    mask = kwargs.get("attention_mask")
    if mask is None or not isinstance(output, torch.Tensor) or output.dim() < 3 or head == SEQ_CLS:
        return output
    return output[mask.bool()]


@pytest.mark.parametrize("backend", BACKENDS + [None])
@pytest.mark.parametrize("head", HEADS)
def test_every_head_and_backend_matches_transformers_in_float64(head, backend):
    hf, ours = pair64(head, backend)
    ids, kwargs = inputs(head)
    with torch.no_grad():
        theirs = hf(ids, return_dict=False, **kwargs)
        mine = ours(ids, return_dict=False, **kwargs)
    assert all(t.dtype in (torch.float64, torch.float32) for t in mine)  # losses are float32 in both
    assert [t.dtype for t in mine] == [t.dtype for t in theirs]
    assert_outputs_close(tuple(real_positions(head, t, kwargs) for t in mine),
                         tuple(real_positions(head, t, kwargs) for t in theirs), **TIGHT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attentions_and_hidden_states_in_float64(backend):
    hf, ours = pair64(LM, backend)
    ids = random_ids((2, 7))
    everything = dict(output_attentions=True, output_hidden_states=True, return_dict=False)
    with torch.no_grad():
        assert_outputs_close(ours(ids, **everything), hf(ids, **everything), **TIGHT)


def test_float64_gradients_match_transformers():
    hf, ours = pair64(LM, "sdpa")
    hf.train()
    ours.train()
    ids = random_ids((2, 7))
    # dropout off so the two runs draw nothing at random; train mode still takes the training paths
    for model in (hf, ours):
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model(ids, labels=ids).loss.backward()
    theirs = dict(hf.named_parameters())
    for name, param in ours.named_parameters():
        assert param.grad is not None and param.grad.dtype == torch.float64, name
        torch.testing.assert_close(param.grad, theirs[name].grad, atol=1e-9, rtol=1e-9)


def test_the_kernel_plan_sends_float64_to_pytorch():
    for backend in (None, "auto", "fused", "sdpa"):
        plan = plan_kernels(backend, torch.device("cpu"), torch.float64)
        assert plan.attention == "sdpa"
        assert plan.add_layernorm is reference.add_layernorm and plan.bias_gelu is reference.bias_gelu
        assert plan.decode_attention is reference.decode_attention
        assert plan.small_m_rows == 0 and not plan.onednn_bf16


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_greedy_generate_matches_transformers(backend):
    hf, ours = pair64(LM, backend)
    ids = random_ids((2, 5))
    expected = hf.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(ours.generate(ids, max_new_tokens=12), expected, rtol=0, atol=0)


def test_float64_padded_and_sampled_generate():
    hf, ours = pair64(LM)
    short, long = random_ids((1, 3), seed=4), random_ids((1, 6), seed=5)
    ids = torch.zeros(2, 6, dtype=torch.long)
    mask = torch.zeros(2, 6, dtype=torch.long)
    ids[0, 3:], mask[0, 3:] = short, 1  # left padding
    ids[1], mask[1] = long, 1
    batch = ours.generate(ids, attention_mask=mask, max_new_tokens=8)
    for row, alone in ((0, short), (1, long)):
        expected = hf.generate(alone, max_new_tokens=8, do_sample=False, pad_token_id=0)
        torch.testing.assert_close(batch[row, 6:], expected[0, alone.shape[1]:], rtol=0, atol=0)
    sampled = [ours.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, top_p=0.9, seed=3)
               for _ in range(2)]
    torch.testing.assert_close(sampled[0], sampled[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["float64", torch.float64, "double", "torch.float64"])
def test_from_pretrained_in_float64(dtype, tmp_path):
    hf = hf_model(LM)
    hf.save_pretrained(tmp_path)
    ours = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, dtype=dtype)
    assert {p.dtype for p in ours.parameters()} == {torch.float64}
    ids = random_ids((2, 7))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf.double()(ids).logits, **TIGHT)


def test_pipeline_in_float64(tmp_path):
    hf_model(LM).save_pretrained(tmp_path)
    generator = gpt_fast.pipeline("text-generation", model=str(tmp_path), tokenizer=_WordTokenizer(),
                                  dtype="float64")
    assert generator.model.dtype == torch.float64
    assert generator("w5 w7", max_new_tokens=3)[0]["generated_text"].startswith("w5 w7")


def test_convert_to_float64_loads_in_both_libraries(tmp_path):
    hf = hf_model(LM)
    hf.save_pretrained(tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--dtype", "float64"]) == 0
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["torch_dtype"] == "float64"
    ours = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "dst")  # float64 by default: the config says so
    theirs = transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "dst")
    assert ours.dtype == theirs.dtype == torch.float64
    ids = random_ids((2, 7))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, **TIGHT)
        torch.testing.assert_close(ours(ids).logits, hf.double()(ids).logits, **TIGHT)


class _WordTokenizer:
    """A stand-in tokenizer: "w<i>" is token i."""

    pad_token_id = eos_token_id = None

    def __call__(self, text, return_tensors=None, **kwargs):
        ids = [int(word[1:]) for word in text.split()]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}

    def decode(self, ids, skip_special_tokens=False, **kwargs):
        return " ".join(f"w{i}" for i in ids)

    def batch_decode(self, sequences, **kwargs):
        return [self.decode(s, **kwargs) for s in sequences]
