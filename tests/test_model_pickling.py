"""A model pickles whole, as transformers' do (torch.save(model), multiprocessing's spawn, Ray): fresh, after it has
generated (packed weights and plans cached on it), quantized, and in bf16; the copy gives the same logits."""

import io

import pytest
import torch

import gpt_fast

CONFIG = dict(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4, pad_token_id=0)


def saved_and_loaded(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("state", ["fresh", "after generate", "int8", "bf16 after generate"])
@pytest.mark.parametrize("cls", ["OpenAIGPTLMHeadModel", "OpenAIGPTDoubleHeadsModel",
                                 "OpenAIGPTForSequenceClassification"])
def test_a_model_pickles_whole_and_gives_the_same_logits(cls, state):
    torch.manual_seed(0)
    model = getattr(gpt_fast, cls)(gpt_fast.OpenAIGPTConfig(**CONFIG)).eval()
    ids = torch.randint(1, 97, (2, 7))
    if state == "int8":
        model.quantize("int8")
    if state.startswith("bf16"):
        model.to(torch.bfloat16)
    if state.endswith("generate"):
        with torch.no_grad():
            model.generate(ids, max_new_tokens=3) if cls == "OpenAIGPTLMHeadModel" else model(ids)
    copy = saved_and_loaded(model)
    with torch.no_grad():
        torch.testing.assert_close(copy(ids).logits, model(ids).logits, rtol=0, atol=0)
