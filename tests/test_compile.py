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
    ops.kernel_plan.clear_plans()  # the plan is made inside the compiled forward, as in a process's first call
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


def test_models_with_different_dropout_compile_in_one_process():
    """A float that differs between two compiled models (here the dropout probabilities) turns symbolic when
    dynamo recompiles; the kernel plan's memo key must stay concrete (it crashed dynamo: 'BooleanAtom not
    allowed')."""
    torch._dynamo.reset()
    ids = torch.randint(0, 61, (2, 9))
    for dropout in (0.0, 0.1, 0.2):
        torch.manual_seed(0)
        config = gpt_fast.OpenAIGPTConfig(vocab_size=61, n_positions=16, n_embd=24, n_layer=2, n_head=3,
                                          attn_pdrop=dropout, resid_pdrop=dropout, embd_pdrop=dropout)
        model = gpt_fast.OpenAIGPTLMHeadModel(config).train()
        compiled = torch.compile(model, backend="eager")
        loss = compiled(ids, labels=ids).loss
        loss.backward()
        assert torch.isfinite(loss) and model.lm_head.weight.grad is not None
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(ids).logits, model(ids).logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fullgraph_compile_makes_the_plan_inside_the_trace(dtype):
    """A process's first call compiled with fullgraph=True: the kernel plan is made inside the trace, so it reads no
    file and calls no untraceable query (cpu_isa's constants); inference in each dtype, and a bf16 autocast step."""
    config = gpt_fast.OpenAIGPTConfig(vocab_size=61, n_positions=16, n_embd=24, n_layer=2, n_head=3,
                                      attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    torch.manual_seed(0)
    model = gpt_fast.OpenAIGPTLMHeadModel(config).eval().to(dtype)
    ids = torch.randint(0, 61, (2, 9))
    ops.kernel_plan.clear_plans()
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, backend="eager")(ids).logits
    torch.testing.assert_close(compiled, model(ids).logits)
    if dtype == torch.float32:
        ops.kernel_plan.clear_plans()
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.compile(model, fullgraph=True, backend="eager")(ids, labels=ids).loss
        loss.backward()
        assert torch.isfinite(loss) and model.lm_head.weight.grad is not None
