"""Without the compiled extension gpt_fast still imports and runs on its PyTorch paths, and says so once."""

import subprocess
import sys
import textwrap

import pytest
import torch

from gpt_fast import ops

SCRIPT = textwrap.dedent("""
    import sys, warnings
    sys.modules["gpt_fast._C"] = None  # makes `from gpt_fast import _C` raise ImportError, as a failed build does
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import torch, gpt_fast
        from gpt_fast import ops
        assert not ops.extension_loaded() and not ops.has_kernel("add_layernorm", "cpu")
        config = gpt_fast.OpenAIGPTConfig(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)
        model = gpt_fast.OpenAIGPTLMHeadModel(config).eval()
        with torch.no_grad():
            auto = model(torch.tensor([[1, 2, 3]])).logits
            model.set_attn_implementation("eager")
            eager = model(torch.tensor([[1, 2, 3]])).logits
        torch.testing.assert_close(auto, eager)
        model.set_attn_implementation("fused")
        try:
            model(torch.tensor([[1, 2, 3]]))
        except RuntimeError as error:
            assert "fused" in str(error) and "sdpa" in str(error), error
        else:
            raise AssertionError("fused without the extension must fail")
    messages = [str(w.message) for w in caught if "gpt_fast._C" in str(w.message)]
    print(len(messages), messages[0] if messages else "")
""")


def test_runs_without_extension_and_warns_once():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count, _, message = result.stdout.strip().partition(" ")
    assert count == "1", result.stdout
    assert "unavailable" in message and "PyTorch paths" in message


SCHEMAS = {  # one schema per op, as csrc/registration.cpp defines it and gpt_fast/ops/<op>.py calls it
    "add_layernorm": "(Tensor x, Tensor residual, Tensor? bias, Tensor weight, Tensor ln_bias, float eps, "
                     "float dropout_p=0., int seed=0) -> Tensor",
    "bias_gelu": "(Tensor x, Tensor bias) -> Tensor",
    "decode_attention": "(Tensor qkv, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor cache_lengths, int n_head) "
                        "-> Tensor",
    "flash_attention": "(Tensor qkv, Tensor? key_padding_mask, int n_head) -> Tensor",
    "linear_small_m": "(Tensor x, Tensor packed_weight, int out_features, Tensor? bias, Tensor? residual, bool gelu) "
                      "-> Tensor",
    "pack_linear_weight": "(Tensor weight, bool in_out_layout) -> Tensor",
    # backward ops (issue 13)
    "bias_gelu_backward": "(Tensor grad_out, Tensor x, Tensor bias) -> Tensor",
    "add_layernorm_backward": "(Tensor grad_out, Tensor x, Tensor residual, Tensor? bias, Tensor weight, float eps, "
                              "float dropout_p=0., int seed=0) -> (Tensor, Tensor, Tensor, Tensor)",
    "flash_attention_train": "(Tensor qkv, Tensor? key_padding_mask, int n_head, float dropout_p, int seed) "
                             "-> (Tensor, Tensor)",
    "flash_attention_backward": "(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, Tensor? key_padding_mask, "
                                "int n_head, float dropout_p, int seed) -> Tensor",
    "pack_quantized_weight": "(Tensor qweight, Tensor scales, Tensor? zeros, int bits, int group_size) -> Tensor",
    "linear_quantized": "(Tensor x, Tensor packed, int out_features, int bits, int group_size, Tensor? bias, "
                        "Tensor? residual, bool gelu, int x_bits=0) -> Tensor",
    "dequantize_linear_weight": "(Tensor qweight, Tensor scales, Tensor? zeros, int bits, int group_size, "
                                "ScalarType dtype) -> Tensor",
    "round_activations": "(Tensor x, int group_size) -> Tensor",
}
CUDA_OPS = ("add_layernorm", "bias_gelu", "decode_attention", "flash_attention", "bias_gelu_backward",
            "add_layernorm_backward", "linear_quantized", "pack_quantized_weight")
# CPU only: linear_small_m, dequantize_linear_weight, round_activations (elsewhere their PyTorch forms)


def test_every_op_is_listed():
    assert set(SCHEMAS) == set(ops.OPS)


@pytest.mark.skipif(not ops.extension_loaded(), reason="no extension was built (tests/conftest.py fails the run "
                                                       "when one was built but does not load)")
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_extension_registers_each_schema_and_cpu_kernel(name):
    assert str(getattr(torch.ops.gpt_fast, name).default._schema) == f"gpt_fast::{name}{SCHEMAS[name]}"
    assert ops.has_kernel(name, "cpu"), f"gpt_fast::{name} has no CPU kernel"


@pytest.mark.skipif(not any(ops.has_kernel(name, "cuda") for name in CUDA_OPS),
                    reason="the extension was built without CUDA sources")
@pytest.mark.parametrize("name", CUDA_OPS)
def test_a_cuda_build_has_every_cuda_kernel(name):
    assert ops.has_kernel(name, "cuda"), f"a CUDA build of gpt_fast lacks gpt_fast::{name}'s CUDA kernel"
