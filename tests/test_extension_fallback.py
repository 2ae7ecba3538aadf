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


@pytest.mark.skipif(not ops.extension_loaded(), reason="checks the built extension")
def test_extension_registers_every_schema():
    for name in ("add_layernorm", "bias_gelu", "flash_attention", "decode_attention"):
        assert torch._C._dispatch_has_kernel(f"gpt_fast::{name}") or hasattr(torch.ops.gpt_fast, name)
