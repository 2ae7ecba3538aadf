"""The whole model on every CPU kernel tier this machine can execute (scalar, avx2, avx512, avx512_bf16, amx; the
others skipped with the reason): every head's forward and generate in fp32 / bf16 / fp16 run without error, and the
forward stays within 3x the error of transformers' math (the eager backend, no gpt_fast kernel) in the same dtype,
both against that math in float64. The
GPT_FAST_CPU_ISA cap also reaches the library paths chosen in Python (oneDNN's bf16 GEMM needs avx512)."""

import pytest
import torch

import gpt_fast
from gpt_fast import ops

pytestmark = pytest.mark.skipif(not ops.extension_loaded(), reason="no extension was built")
HEADS = ["OpenAIGPTModel", "OpenAIGPTLMHeadModel", "OpenAIGPTDoubleHeadsModel", "OpenAIGPTForSequenceClassification"]
CONFIG = dict(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4, pad_token_id=0)


def first_output(model, ids):
    with torch.inference_mode():
        return model(ids)[0].double()


def copy_of(model, cls, dtype, attn_implementation=None):
    other = cls(model.config, attn_implementation=attn_implementation).eval()
    other.load_state_dict(model.state_dict())
    return other.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("head", HEADS)
def test_forward_and_generate_on_every_tier(head, dtype, cpu_tier):
    torch.manual_seed(0)
    cls = getattr(gpt_fast, head)
    model = cls(gpt_fast.OpenAIGPTConfig(**CONFIG), attn_implementation="eager").eval()
    exact = copy_of(model, cls, torch.float64, "eager")  # the oracle: transformers' math in float64
    pytorch = copy_of(model, cls, dtype, "eager")  # PyTorch's own error in this dtype: the same math, no kernel
    ours = copy_of(model, cls, dtype)  # the default: every kernel this tier has
    ids = torch.randint(1, 99, (2, 3, 40) if head == "OpenAIGPTDoubleHeadsModel" else (2, 40))
    for T in (5, 40):  # few rows (linear_small_m) and many (GEMM / oneDNN)
        part = ids[..., :T]
        expected = first_output(exact, part)
        pytorch_error = (first_output(pytorch, part) - expected).abs().max().item()
        ours_error = (first_output(ours, part) - expected).abs().max().item()
        ulp = torch.finfo(dtype).eps * expected.abs().max().item()
        assert ours_error <= 3 * pytorch_error + ulp, (T, ours_error, pytorch_error)
    if head == "OpenAIGPTLMHeadModel":
        out = ours.generate(ids[:, :5], max_new_tokens=4, min_new_tokens=4)
        assert out.shape == (2, 9)


def test_model_made_under_inference_mode_generates():
    """Loading and running under torch.inference_mode (inference tensors have no version counter)."""
    with torch.inference_mode():
        model = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**CONFIG)).eval().to(torch.bfloat16)
        ids = torch.randint(1, 99, (1, 40))
        logits = model(ids).logits
        out = model.generate(ids[:, :5], max_new_tokens=3)
    assert logits.shape == (1, 40, 99) and out.shape == (1, 8)
