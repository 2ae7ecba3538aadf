"""torch.compile(fullgraph=True) traces the whole model on CPU, fused kernels included (through their fake
kernels), calls them in the compiled graph, and gives the eager model's numbers."""

import pytest
import torch

import gpt_fast
from gpt_fast import ops


def compiled_with_recorder(model, seen: set):
    """torch.compile with inductor, recording which torch.ops.gpt_fast ops the traced graph calls."""
    from torch._inductor.compile_fx import compile_fx

    def backend(graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            name = str(node.target)
            if node.op == "call_function" and name.startswith("gpt_fast."):
                seen.add(name.split(".")[1])
        return compile_fx(graph_module, example_inputs)

    return torch.compile(model, backend=backend, fullgraph=True)


@pytest.mark.skipif(not ops.has_kernel("flash_attention", "cpu"), reason="extension not built")
def test_compiled_lm_forward_calls_the_kernels_and_matches_eager_reference():
    torch.manual_seed(0)
    config = gpt_fast.OpenAIGPTConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64)
    model = gpt_fast.OpenAIGPTLMHeadModel(config).eval()  # default backend: the fused kernels
    reference = gpt_fast.OpenAIGPTLMHeadModel(config, attn_implementation="eager").eval()
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 100, (2, 17))
    mask = torch.ones(2, 17, dtype=torch.long)
    mask[1, 12:] = 0  # right padding: compare real positions only
    seen = set()
    with torch.no_grad():
        compiled = compiled_with_recorder(model, seen)(ids, attention_mask=mask).logits
        expected = reference(ids, attention_mask=mask).logits
    assert {"flash_attention", "add_layernorm", "bias_gelu"} <= seen, seen
    real = mask.bool()
    torch.testing.assert_close(compiled[real], expected[real], atol=1e-4, rtol=1e-4)
