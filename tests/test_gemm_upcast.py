"""Half-precision GEMMs in float32 where PyTorch's own are its slow reference loop (cpu_isa.half_gemm_fast;
KernelPlan.gemm_upcast: the "gemm" engine and the LM head's projection in gpt_fast/models/linear.py; the fused
LM-head loss): which plans upcast, and that a forward, a generate and a training step's backward (the fused loss
included) of the model then run every matmul in float32. Accuracy of the engine itself (3x PyTorch's
error in the same dtype) is tests/test_linear_engines.py's "gemm_upcast" case and tests/test_model_tiers.py's fp16 /
capped-bf16 forwards."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gpt_fast
from gpt_fast.ops import cpu_isa
from gpt_fast.ops.cpu_isa import half_gemm_fast
from gpt_fast.ops.kernel_plan import plan_kernels

CPU = torch.device("cpu")
CONFIG = dict(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4)
X86_AVX2 = pytest.mark.skipif(cpu_isa.detected_level() in ("scalar", "avx2"),
                              reason="needs an x86 CPU with AVX-512 to cap below it (GPT_FAST_CPU_ISA=avx2)")
MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
           torch.ops.aten.baddbmm.default}


class MatmulDtypes(TorchDispatchMode):
    """Records the dtype of every aten matmul run inside it."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            self.dtypes.append(args[1].dtype)
        return func(*args, **(kwargs or {}))


def test_plan_follows_pytorch_half_gemm_support():
    fp16_fast = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_fp16_supported()
    assert plan_kernels(None, CPU, torch.float16).gemm_upcast == (not fp16_fast)
    assert half_gemm_fast(torch.float16) == fp16_fast
    for dtype in (torch.float32, torch.float64):
        assert half_gemm_fast(dtype) and not plan_kernels(None, CPU, dtype).gemm_upcast
    # transformers' own math ("eager") and autocast (whose casts pick the GEMM's dtype) are left as PyTorch runs them
    assert not plan_kernels("eager", CPU, torch.float16).gemm_upcast
    assert not plan_kernels(None, CPU, torch.float16, autocast=True).gemm_upcast


@X86_AVX2
def test_avx2_tier_upcasts_bf16_and_fp16(monkeypatch):
    """As on an AVX2 CPU, where oneDNN has no bf16 GEMM and PyTorch's bf16 matmul is the reference loop."""
    monkeypatch.setenv(cpu_isa.ENV, "avx2")
    assert plan_kernels(None, CPU, torch.bfloat16).gemm_upcast
    assert plan_kernels("sdpa", CPU, torch.float16, grad=True).gemm_upcast
    assert not plan_kernels(None, CPU, torch.float32).gemm_upcast
    monkeypatch.setenv(cpu_isa.ENV, "avx512")
    assert half_gemm_fast(torch.bfloat16) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def model_and_plan(dtype, monkeypatch):
    if dtype == torch.bfloat16 and cpu_isa.detected_level() not in ("scalar", "avx2"):
        monkeypatch.setenv(cpu_isa.ENV, "avx2")  # bf16 GEMMs are slow at that tier
    if not plan_kernels(None, CPU, dtype).gemm_upcast:
        pytest.skip(f"PyTorch's {dtype} GEMM is fast on this CPU: nothing is upcast")
    torch.manual_seed(0)
    return gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**CONFIG)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_forward_generate_and_backward_multiply_in_float32(dtype, monkeypatch):
    model = model_and_plan(dtype, monkeypatch)
    ids = torch.randint(1, 99, (2, 40))  # 80 rows: past linear_small_m's 32, so the "gemm" engine and F.linear
    with MatmulDtypes() as seen, torch.inference_mode():
        logits = model.eval()(ids).logits
        model.generate(ids[:, :36], max_new_tokens=2, min_new_tokens=2)
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert seen.dtypes and set(seen.dtypes) == {torch.float32}, seen.dtypes
    for return_logits in (True, False):  # the loss over full logits, and the fused LM-head loss
        with MatmulDtypes() as seen:
            model.train()(ids, labels=ids, return_logits=return_logits).loss.backward()
        assert seen.dtypes and set(seen.dtypes) == {torch.float32}, (return_logits, seen.dtypes)
    assert all(p.grad.dtype == dtype and torch.isfinite(p.grad).all() for p in model.parameters())
