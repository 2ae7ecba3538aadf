"""apply_gpt_fast_kernels / revert_gpt_fast_kernels on live transformers OpenAIGPT models: the same numbers as the
unpatched model (fp32 logits within 1e-4, greedy and beam tokens identical) with gpt_fast's kernels actually
running (seen in the profiler), transformers' Trainer, PEFT-style wrapped layers, hooks and train mode still
working, patching twice a no-op, and revert giving back the exact original (bitwise outputs, same __dict__s)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from accuracy import assert_within_pytorch_error  # noqa: E402
from conftest import HEADS, hf_model, random_ids, seeded_prompt, shape_for, tiny_lm  # noqa: E402

import gpt_fast  # noqa: E402
from gpt_fast import apply_gpt_fast_kernels, revert_gpt_fast_kernels  # noqa: E402
from gpt_fast.ops import has_kernel  # noqa: E402
from gpt_fast.patching.generate import SHARED_MODEL  # noqa: E402

modeling_openai = transformers.models.openai.modeling_openai
KERNELS = ("gpt_fast::flash_attention", "gpt_fast::add_layernorm", "gpt_fast::bias_gelu")
needs_kernels = pytest.mark.skipif(not all(has_kernel(op.split("::")[1], "cpu") for op in KERNELS),
                                   reason="the CPU kernels were not built")


def run(model, *args, **kwargs):
    with torch.no_grad():
        return model(*args, **kwargs)


def ops_run(function) -> set[str]:
    """The gpt_fast ops that function() ran (from the profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        function()
    return {event.key for event in profile.key_averages() if event.key.startswith("gpt_fast::")}


def instance_dicts(model) -> list[dict]:
    return [dict(module.__dict__) for module in model.modules()]


def padded_inputs(head):
    ids = random_ids(shape_for(head, B=2, T=9))
    mask = torch.ones_like(ids)
    mask[0, ..., :3] = 0  # left padding
    return ids, mask.view(-1, mask.shape[-1])  # transformers' double heads take (batch * choices, T) masks


@pytest.fixture(autouse=True)
def unpatched_classes():
    """Every test starts and ends with transformers' classes as they are (a failing test reverts its patch)."""
    yield
    revert_gpt_fast_kernels()


@needs_kernels
@pytest.mark.parametrize("head", HEADS)
def test_patched_model_matches_the_unpatched_one_on_gpt_fast_kernels(head):
    hf = hf_model(head)
    ids, mask = padded_inputs(head)
    expected, expected_padded = run(hf, ids)[0], run(hf, ids, attention_mask=mask)[0]
    assert apply_gpt_fast_kernels(hf) is hf
    assert ops_run(lambda: run(hf, ids)) == set(KERNELS)
    torch.testing.assert_close(run(hf, ids)[0], expected, rtol=1e-4, atol=1e-4)
    # every position, the fully masked query rows before row 0's first real token included
    torch.testing.assert_close(run(hf, ids, attention_mask=mask)[0], expected_padded, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_is_within_pytorchs_own(dtype):
    hf = hf_model("OpenAIGPTLMHeadModel").to(dtype)
    reference = copy.deepcopy(hf).to(torch.float32)  # the same rounded weights, one step more precise
    ids = random_ids((2, 9))
    pytorch, expected = run(hf, ids).logits, run(reference, ids).logits
    apply_gpt_fast_kernels(hf)
    assert ops_run(lambda: run(hf, ids)) == set(KERNELS)
    assert_within_pytorch_error(run(hf, ids).logits, expected, pytorch)


@pytest.mark.parametrize("head", HEADS)
def test_revert_gives_back_the_exact_original(head):
    hf = hf_model(head)
    ids, mask = padded_inputs(head)
    before, expected = instance_dicts(hf), run(hf, ids, attention_mask=mask)
    apply_gpt_fast_kernels(hf)
    apply_gpt_fast_kernels(hf)  # twice: the same as once
    if head == "OpenAIGPTLMHeadModel":
        hf.generate(ids, max_new_tokens=2)
    run(hf, ids, attention_mask=mask)
    revert_gpt_fast_kernels(hf)
    assert instance_dicts(hf) == before
    for ours, theirs in zip(run(hf, ids, attention_mask=mask).values(), expected.values()):
        assert torch.equal(ours, theirs)


@needs_kernels
def test_patching_the_classes_patches_every_instance_and_reverts_exactly():
    saved = {cls: dict(vars(cls)) for cls in (modeling_openai.Attention, modeling_openai.MLP, modeling_openai.Block,
                                               modeling_openai.OpenAIGPTLMHeadModel)}
    hf = hf_model("OpenAIGPTLMHeadModel")
    ids = random_ids((2, 7))
    expected = run(hf, ids).logits
    apply_gpt_fast_kernels()
    apply_gpt_fast_kernels()
    made_after = copy.deepcopy(hf)
    for model in (hf, made_after):
        assert ops_run(lambda m=model: run(m, ids)) == set(KERNELS)
        torch.testing.assert_close(run(model, ids).logits, expected, rtol=1e-4, atol=1e-4)
    outputs = [model.generate(ids, max_new_tokens=4, return_dict_in_generate=True) for model in (hf, made_after)]
    assert all(type(out).__module__.startswith("gpt_fast.") for out in outputs)  # gpt_fast's generate ran
    assert torch.equal(outputs[0].sequences, outputs[1].sequences)
    revert_gpt_fast_kernels()
    assert {cls: dict(vars(cls)) for cls in saved} == saved
    assert torch.equal(run(hf, ids).logits, expected)


@pytest.mark.parametrize("settings", [dict(), dict(num_beams=3, num_return_sequences=2)], ids=["greedy", "beams"])
def test_generate_is_gpt_fasts_and_gives_the_same_tokens(settings):
    hf = tiny_lm(3, 41, 40)
    ids = seeded_prompt(41, 5, batch=2)
    kwargs = dict(settings, max_new_tokens=12, return_dict_in_generate=True, output_scores=True)
    hf.generation_config.no_repeat_ngram_size = 2  # the model's transformers GenerationConfig is read
    expected = hf.generate(ids, **kwargs)
    apply_gpt_fast_kernels(hf)
    ours = hf.generate(ids, transformers.GenerationConfig(max_new_tokens=6), **kwargs)  # kwargs win
    assert type(ours).__module__.startswith("gpt_fast.")  # gpt_fast's generate ran
    assert isinstance(hf.__dict__[SHARED_MODEL], gpt_fast.OpenAIGPTLMHeadModel)
    assert torch.equal(ours.sequences, expected.sequences)
    for a, b in zip(ours.scores, expected.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for replace in (False, True):  # the shared model reads the transformers model's parameters, not a copy
        if replace:  # new Parameter objects (still tied): the shared model is rebuilt
            hf.transformer.tokens_embed.weight = hf.lm_head.weight = nn.Parameter(hf.lm_head.weight.detach() + 0.5)
        with torch.no_grad():
            hf.lm_head.weight.mul_(-1.0)
        copied = gpt_fast.OpenAIGPTLMHeadModel.from_transformers(hf)
        expected = copied.generate(ids, max_new_tokens=6, no_repeat_ngram_size=2)
        assert torch.equal(hf.generate(input_ids=ids, max_new_tokens=6), expected)


def test_generate_falls_back_to_transformers_for_what_gpt_fast_does_not_take():
    hf = tiny_lm(3, 41, 40)
    ids = seeded_prompt(41, 5)
    expected = hf.generate(ids, max_new_tokens=6, guidance_scale=1.0)  # transformers' value that changes nothing
    apply_gpt_fast_kernels(hf)
    ours = hf.generate(ids, max_new_tokens=6, guidance_scale=1.0)
    assert SHARED_MODEL not in hf.__dict__  # transformers' generate ran
    assert torch.equal(ours, expected)
    for refused in (dict(synced_gpus=True), dict(cache_implementation="quantized")):  # gpt_fast's would refuse
        with pytest.raises(Exception) as error:  # transformers' own error here: no process group / quanto
            hf.generate(ids, max_new_tokens=6, **refused)
        assert "gpt_fast" not in str(error.value) and SHARED_MODEL not in hf.__dict__
    hf.generate(ids, max_new_tokens=2, synced_gpus=False, low_memory=True)  # taken by gpt_fast's generate
    assert SHARED_MODEL in hf.__dict__


class LoRA(nn.Module):
    """A PEFT-style wrapper of a linear layer: base(x) + x A B (peft's LoraLayer shape, without peft)."""

    def __init__(self, base, rank=2):
        super().__init__()
        self.base_layer = base
        n_in, n_out = base.weight.shape
        self.lora_A = nn.Parameter(0.3 * torch.randn(n_in, rank))
        self.lora_B = nn.Parameter(0.3 * torch.randn(rank, n_out))

    def forward(self, x):
        return self.base_layer(x) + x @ self.lora_A @ self.lora_B


class Wrapper(nn.Module):
    """A PeftModel-like wrapper around the whole model."""

    def __init__(self, model):
        super().__init__()
        self.base_model = model

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.base_model.generate(*args, **kwargs)


def test_peft_style_wrappers_keep_working():
    torch.manual_seed(0)
    hf = tiny_lm(3, 41, 40)
    for block in hf.transformer.h:
        block.attn.c_attn, block.mlp.c_fc = LoRA(block.attn.c_attn), LoRA(block.mlp.c_fc)
    wrapped = Wrapper(hf)
    ids = seeded_prompt(41, 6, batch=2)
    expected_logits, expected_tokens = run(wrapped, ids).logits, wrapped.generate(ids, max_new_tokens=8)
    apply_gpt_fast_kernels(wrapped)
    assert "forward" in hf.transformer.h[0].attn.__dict__
    torch.testing.assert_close(run(wrapped, ids).logits, expected_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(wrapped.generate(ids, max_new_tokens=8), expected_tokens)  # transformers' loop: LoRA seen
    wrapped(ids, labels=ids).loss.backward()
    assert hf.transformer.h[0].attn.c_attn.lora_A.grad.abs().sum() > 0


@needs_kernels
def test_hooks_keep_working():
    hf = hf_model("OpenAIGPTLMHeadModel")
    ids = random_ids((2, 7))
    expected = run(hf, ids).logits
    apply_gpt_fast_kernels(hf)
    seen = []
    block = hf.transformer.h[0]
    handles = [module.register_forward_hook(lambda m, args, out, name=name: seen.append(name))
               for name, module in (("attn", block.attn), ("mlp", block.mlp), ("ln_1", block.ln_1),
                                    ("c_attn", block.attn.c_attn))]
    torch.testing.assert_close(run(hf, ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert sorted(seen) == ["attn", "c_attn", "ln_1", "mlp"]
    assert torch.equal(hf.generate(ids, max_new_tokens=5), hf.generate(ids, max_new_tokens=5, num_beams=1))
    for handle in handles:
        handle.remove()
    assert ops_run(lambda: run(hf, ids)) == set(KERNELS)  # the kernels are back once the hooks are gone


def test_train_mode_draws_the_same_dropout_and_gradients_match():
    hf = hf_model("OpenAIGPTLMHeadModel", resid_pdrop=0.3, attn_pdrop=0.3, embd_pdrop=0.3).train()
    twin = copy.deepcopy(hf)
    ids = random_ids((2, 7))
    apply_gpt_fast_kernels(hf)
    for model in (hf, twin):  # train mode: dropout active, the same random numbers in both
        torch.manual_seed(5)
        model.loss = model(ids, labels=ids).loss
        model.loss.backward()
    torch.testing.assert_close(hf.loss, twin.loss, rtol=1e-5, atol=1e-5)
    for model in (hf, twin):  # eval mode with gradients: the kernels' backward
        model.eval().zero_grad()
        model(ids, labels=ids).loss.backward()
    for (name, ours), theirs in zip(hf.named_parameters(), twin.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-4, msg=name)


def test_trainer_trains_a_patched_model_as_the_unpatched_one(tmp_path):
    pytest.importorskip("accelerate")
    from test_trainer import CONFIG, train

    tokenizer = gpt_fast.OpenAIGPTTokenizerFast.from_pretrained("openai-gpt")
    tokenizer.pad_token = tokenizer.unk_token
    torch.manual_seed(0)
    theirs = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**CONFIG))
    ours = apply_gpt_fast_kernels(copy.deepcopy(theirs))
    expected, _ = train(theirs, tokenizer, tmp_path / "theirs")
    losses, _ = train(ours, tokenizer, tmp_path / "ours")
    assert len(losses) == 4 and losses == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("model, message", [
    (lambda: gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(vocab_size=50, n_positions=8, n_embd=8,
                                                                    n_layer=1, n_head=2)), "is a gpt_fast model"),
    (lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_positions=8, n_embd=8, n_layer=1,
                                                                  n_head=2)), "holds none"),
    (lambda: "openai-gpt", "needs a transformers OpenAIGPT"),
], ids=["gpt_fast", "gpt2", "a string"])
def test_other_models_are_a_clear_error(model, message):
    with pytest.raises(TypeError, match=message):
        apply_gpt_fast_kernels(model())
    with pytest.raises(TypeError, match=message):
        revert_gpt_fast_kernels(model())
