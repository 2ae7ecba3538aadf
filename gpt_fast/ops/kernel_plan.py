"""Which implementation each step of a GPT-1 block uses, decided once per call site's circumstances.

`plan_kernels(attn_implementation, device, dtype, dropout=, needs_probs=, grad=, autocast=, transformed=, by_module=)`
returns one KernelPlan that the model's forward, the generation prefill and decode steps, and the benchmarks all
use; the layers read it and never decide again. Plans are memoised per argument tuple (and per GPT_FAST_CPU_ISA value,
which caps the CPU paths), so choosing costs a dictionary lookup per forward.

The rules:
- attention (the prompt's): "eager" whenever the attention probabilities are needed (output_attentions, head_mask);
  otherwise the requested backend, where None/"auto" means gpt_fast's flash_attention kernel when it exists for the
  device and dtype, else PyTorch's SDPA. With dropout active "fused" needs the training kernel
  (gpt_fast::flash_attention_train: dropout inside the kernel, FlashAttention-2 backward; CPU and CUDA) and runs as
  "sdpa" where it is missing (decided from the kernels the extension registered, so a build without it falls
  back). A dtype the kernels lack (float64) also runs "fused" as "sdpa". `attention_train` records whether "fused"
  has that training kernel: the attention layer runs it whenever dropout is active or gradients reach qkv (else the
  inference kernel, whose backward is the eager reference's).
- by_module (hooks on the blocks' submodules, models/hooks.py, or submodules a user replaced: a LoRA wrapper, a
  Conv1D subclass, another norm; models/block_modules.py): the blocks call their modules one by one, as
  transformers' do (fuse_modules False), so that each hook sees what it sees there and each replaced module runs
  its own forward; the attention backend and the linear engines (inside gpt_fast's own layers' calls) stay.
- transformed (a torch.func transform or forward-mode AD is active, ops/func_transforms.py): every step as the
  "eager" backend, plain PyTorch, which the transforms support; gpt_fast's custom ops would give zero tangents.
- the other kernels (add_layernorm, bias_gelu, decode_attention and the linear engines) run whenever they exist
  for the device and dtype and the backend is not "eager" (which is transformers' math, kept as the
  plain-PyTorch reference path). Dropout keeps them: add_layernorm takes the residual dropout (the caller passes
  p and a Philox seed), bias_gelu has none. Their backward (ops/_autograd.py) runs a backward kernel where one
  exists for the device and dtype (gpt_fast::bias_gelu_backward, gpt_fast::add_layernorm_backward), else the eager
  reference's autograd (attention in training runs flash_attention_train, whose backward is
  gpt_fast::flash_attention_backward).
- linear engines (models/linear.py): linear_small_m for matmuls of at most `small_m_rows` rows (decode steps and
  short prompts; bound by reading the weight, which it does at about the memory bandwidth), oneDNN's bf16 GEMM
  on a prepacked weight for widening layers with many rows where oneDNN's bf16 path runs on this CPU, otherwise
  PyTorch's GEMM. Neither packed engine has
  autograd, so neither runs when gradients are wanted.
- half-precision GEMMs (gemm_upcast): where PyTorch's own bf16 / fp16 GEMM on this CPU has no fast kernel (it takes
  oneDNN's when torch.ops.mkldnn says the CPU supports that dtype: bf16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT, fp16
  AVX512-FP16 or AMX-FP16; otherwise a reference loop), the "gemm" engine and the LM head's many-row projection
  multiply in float32 and round the result to the model's dtype (models/linear.py). Measured on AMD EPYC Zen 4, 2
  threads, (512, 768) @ (768, 3072): fp16 2178 ms through PyTorch against 17 ms through float32 (no AVX512-FP16
  there); bf16 with oneDNN capped to AVX2 2404 ms against 26 ms (an AVX2 CPU), 6 ms on oneDNN's AVX-512 bf16. Only
  on the gpt_fast backends (not "eager", transformers' own math) and not under autocast (whose casts choose the
  GEMM's dtype); GPT_FAST_CPU_ISA below avx512 counts as no fast bf16 / fp16 GEMM, as on an AVX2 CPU
  (cpu_isa.half_gemm_fast). The fused LM-head loss makes the same choice itself (ops/linear_cross_entropy.py).
- float32 GEMMs on AMD CPUs (onednn_fp32): the "gemm" engine multiplies through oneDNN's float32 GEMM instead of
  PyTorch's (MKL's sgemm, slower on AMD processors; ops/onednn_linear.py has the measurements), with and without
  gradients; not under autocast (its casts choose the GEMM's dtype) nor torch.compile.
- autocast (a torch.autocast region is active for the device): the GEMMs run in the autocast dtype while the
  residual stream keeps the model's, so add_layernorm and bias_gelu cast their other inputs to their first
  input's dtype (add_layernorm: x, the residual stream, in the model's dtype, as autocast's layer_norm computes in
  float32; bias_gelu: the matmul output, in the autocast dtype, as autocast's addmm adds the bias in it); the
  packed engines, whose weights are packed in the model's dtype, step aside for the GEMMs that autocast casts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from gpt_fast.names import check_attn_implementation
from gpt_fast.ops import _library, cpu_isa, onednn_linear, reference
from gpt_fast.ops.add_layernorm import add_layernorm
from gpt_fast.ops.bias_gelu import bias_gelu
from gpt_fast.ops.decode_attention import decode_attention

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Rows (B at a decode step, B * T at a prefill) up to which linear_small_m reads the weights. Measured at the GPT-1
# shape in bf16: at 32 rows the kernel still beats PyTorch's GEMM (decode step 26.8 vs 30.9 ms), at 64 it loses
# (41.7 vs 39.8 ms); an 8-token prefill takes 14.7 ms instead of 21.1 ms through the GEMMs.
SMALL_M_MAX_ROWS = 32
# (scheme, int4 group size or 0, rows): on the AMX tier a bf16 model's layers quantized so take linear_quantized up
# to that many rows, where its kernels beat dequantizing the weight (ops.dequantize_linear_weight) + PyTorch's GEMM,
# the engine above SMALL_M_MAX_ROWS elsewhere (quantization/layer.py). Measured 2026-12-05, GPT-1 forward of one
# sequence (last-token logits) in bf16, Sapphire Rapids, 2 threads, kernel / dequantize + GEMM in ms: int8 (AMX
# tiles converted once per call, in_features % 32 == 0) 33 rows 19.4 / 38.9, 128 36.9 / 54.4, 256 60.5 / 69.4,
# 384 89.8 / 89.5, 512 126.8 / 114.6; int4-a8 g32 33 26.8 / 44.6, 64 45.2 / 51.3, 96 66.9 / 59.8; int4 g32 (VNNI)
# loses from 33 rows (43.7 / 36.3), so it keeps SMALL_M_MAX_ROWS. Other tiers and group sizes keep SMALL_M_MAX_ROWS
# (not measured on hardware of their own: this machine's GEMM is AMX's at every GPT_FAST_CPU_ISA cap).
AMX_QUANTIZED_ROWS = (("int8", 0, 384), ("int4-a8", 32, 64))


@dataclass(frozen=True)
class KernelPlan:
    attention: str  # the prompt's attention backend: "eager", "sdpa" or "fused"
    attention_train: bool  # "fused" runs flash_attention_train (+ its backward kernel) under dropout or autograd
    fused: bool  # a gpt_fast backend (not "eager"): add_layernorm / bias_gelu kernels and the linear engines
    fuse_modules: bool  # add_layernorm / bias_gelu replace the module math (fused; block modules unhooked, own)
    add_layernorm: Callable  # (x, y, bias, weight, ln_bias, eps, dropout_p=0, seed=0) -> ln(x + dropout(y + bias))
    bias_gelu: Callable  # (x, bias) -> gelu_tanh(x + bias)
    decode_attention: Callable  # the kernel or the reference (same arguments)
    small_m_rows: int  # linear_small_m serves matmuls of at most this many rows; 0: never
    onednn_bf16: bool  # oneDNN's GEMM on a prepacked bf16 weight serves widening layers with more rows
    gemm_upcast: bool = False  # bf16 / fp16 GEMMs run in float32 (PyTorch's are the reference loop on this CPU)
    onednn_fp32: bool = False  # float32 GEMMs of the "gemm" engine through oneDNN (ops/onednn_linear.py: AMD CPUs)
    quantized_rows: tuple = ()  # AMX_QUANTIZED_ROWS where the plan has them (quantization/layer.py: kernel_rows)
    # {linear layer: call(x, bias, gelu)}: each layer's engine and packed weight resolved once for a decode loop's
    # row count (models/linear.py: bind_layers, made by generation/decoder.py). None on every memoised plan.
    bound_layers: dict | None = field(default=None, compare=False)


def _cast_to_first(kernel: Callable) -> Callable:
    """kernel(first, *rest) with every floating-point tensor of rest cast to first's dtype (autocast; see above)."""

    def cast_and_call(first, *rest):
        return kernel(first, *(a.to(first.dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                               for a in rest))

    return cast_and_call


def _has(name: str, device_type: str, dtype: torch.dtype) -> bool:
    """Whether gpt_fast::<name> has a kernel for the device type and the dtype."""
    return _library.has_kernel(name, device_type) and dtype in KERNEL_DTYPES


def _kernel(name: str, device_type: str, dtype: torch.dtype, function: Callable) -> Callable | None:
    return function if _has(name, device_type, dtype) else None


def onednn_bf16_usable(device_type: str) -> bool:
    """oneDNN's bf16 linear needs AVX-512 (BW/VL/DQ) on x86; on an AVX2 CPU its prepack raises. GPT_FAST_CPU_ISA
    caps it like the kernels. torch.compile does its own packing."""
    return device_type == "cpu" and cpu_isa.ONEDNN and cpu_isa.at_least("avx512")


_PLANS: dict[tuple, KernelPlan] = {}  # memo of _plan, per argument tuple


def _plan(attn_implementation, device_type: str, dtype: torch.dtype, dropout: bool, needs_probs: bool,
          grad: bool, autocast: bool, by_module: bool, isa: str) -> KernelPlan:
    flash = _has("flash_attention", device_type, dtype)
    if attn_implementation == "fused" and not _library.has_kernel("flash_attention", device_type):
        reason = _library.load_error() or f"it was built without {device_type} kernels"
        raise RuntimeError(
            f"attn_implementation='fused' needs gpt_fast's flash_attention kernel for {device_type}, and there is "
            f"none ({reason}). Use 'sdpa' or 'eager', or rebuild gpt_fast with the kernels."
        )
    if needs_probs:
        attention = "eager"
    elif attn_implementation in (None, "auto", "fused"):
        attention = "fused" if flash and (not dropout or _has("flash_attention_train", device_type, dtype)) else "sdpa"
    else:
        attention = attn_implementation
    fused = attention != "eager"
    attention_train = attention == "fused" and _has("flash_attention_train", device_type, dtype)
    layernorm = _kernel("add_layernorm", device_type, dtype, add_layernorm) if fused else None
    gelu = _kernel("bias_gelu", device_type, dtype, bias_gelu) if fused else None
    small_m = fused and not grad and not autocast and _has("linear_small_m", device_type, dtype)
    if autocast:
        layernorm, gelu = (layernorm and _cast_to_first(layernorm)), (gelu and _cast_to_first(gelu))
    return KernelPlan(
        attention=attention,
        attention_train=attention_train,
        fused=fused,
        fuse_modules=fused and not by_module,
        add_layernorm=layernorm or reference.add_layernorm,
        bias_gelu=gelu or reference.bias_gelu,
        decode_attention=(_kernel("decode_attention", device_type, dtype, decode_attention)
                          or reference.decode_attention),
        small_m_rows=SMALL_M_MAX_ROWS if small_m else 0,
        onednn_bf16=(fused and not grad and not autocast and dtype == torch.bfloat16
                     and onednn_bf16_usable(device_type)),
        gemm_upcast=(fused and not autocast and device_type == "cpu" and dtype in (torch.bfloat16, torch.float16)
                     and not cpu_isa.half_gemm_fast(dtype)),
        onednn_fp32=fused and not autocast and dtype == torch.float32 and onednn_linear.usable(device_type),
        quantized_rows=(AMX_QUANTIZED_ROWS if fused and not grad and not autocast and device_type == "cpu"
                        and dtype == torch.bfloat16 and isa == "amx"
                        and _library.has_kernel("linear_quantized", device_type) else ()),
    )


def plan_kernels(attn_implementation: str | None, device: torch.device, dtype: torch.dtype, *, dropout: bool = False,
                 needs_probs: bool = False, grad: bool = False, autocast: bool = False,
                 transformed: bool = False, by_module: bool = False) -> KernelPlan:
    """The plan for one forward (or one generation request) on `device` in `dtype` (the model's dtype).

    dropout: a dropout layer is active (train mode with p > 0); needs_probs: the attention probabilities are
    returned or scaled (output_attentions, head_mask); grad: gradients flow to the weights; autocast: a
    torch.autocast region is active for the device; transformed: a torch.func transform or forward-mode AD is
    active (func_transforms.transforms_active()); by_module: the blocks must call their modules one by one (hooks
    inside them or modules a user replaced: models/block_modules.py).
    """
    if transformed:
        attn_implementation = "eager"
    key = (attn_implementation, torch.device(device).type, dtype, bool(dropout), bool(needs_probs), bool(grad),
           bool(autocast), bool(by_module), cpu_isa.level())
    plan = _PLANS.get(key)
    if plan is None:
        check_attn_implementation(attn_implementation)
        plan = _PLANS[key] = _plan(*key)
    return plan


def clear_plans() -> None:
    """Forgets every memoised plan (after the kernels available change, e.g. in tests)."""
    _PLANS.clear()
