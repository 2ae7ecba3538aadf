"""torch.compile(fullgraph=True) traces the whole model on CPU, fused kernels included (through their fake
kernels), and gives the eager model's numbers."""

import torch

import gpt_fast
from gpt_fast.attention import resolve_attn_implementation


def test_compiled_lm_forward_matches_eager_reference():
    torch.manual_seed(0)
    config = gpt_fast.OpenAIGPTConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64)
    model = gpt_fast.OpenAIGPTLMHeadModel(config).eval()  # default backend: fused where the kernels exist
    reference = gpt_fast.OpenAIGPTLMHeadModel(config, attn_implementation="eager").eval()
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 100, (2, 17))
    mask = torch.ones(2, 17, dtype=torch.long)
    mask[1, 12:] = 0  # right padding: compare real positions only
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)(ids, attention_mask=mask).logits
        expected = reference(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(compiled[real], expected[real], atol=1e-4, rtol=1e-4)
    assert resolve_attn_implementation(None, "cpu") in ("fused", "sdpa")
