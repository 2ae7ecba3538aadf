"""The weight-only quantized linear layers: QuantizedConv1D replaces a block's Conv1D (c_attn, c_proj, mlp.c_fc,
mlp.c_proj), QuantizedLMHead replaces the LM head.

The weight is kept only in ops/reference.py's logical format, as buffers (so state_dict and safetensors carry
them): qweight, scales and zeros (zeros None for int8). The bias stays a Parameter in the model's dtype. Which
computation a call takes (the engine), from the KernelPlan and the call's row count:
- "kernel" (rows <= 32, kernel_rows below: decode steps, short prompts, the last-token logits; on the AMX tier
  in bf16 int8 up to 384 rows and int4-a8 g32 up to 64, where the kernels beat the engine below: a 256-token int8
  forward 60.5 against 69.4 ms, see ops/kernel_plan.py's AMX_QUANTIZED_ROWS):
  ops.linear_quantized over the weight repacked once for it (ops.pack_quantized_weight, cached on the layer with
  weight_cache.cached_on), bias and tanh-GELU in the kernel;
- "dequantize" (more rows, no plan, gradients on, under torch.compile): the weight dequantized to the input's dtype
  for this call only (ops.dequantize_linear_weight) and, for the -a8 schemes, x rounded as the kernel rounds it (in
  float32, then back to x's dtype), then models.linear.gemm, the same GEMM + bias/GELU epilogue as
  Conv1D's "gemm" engine. Nothing dequantized is kept, so the model stays at its quantized size. Chosen by
  measurement (benchmarks/bench_quantized_prefill.py, 512 rows, bf16, 2 threads, Sapphire Rapids, 2026-12-05):
  1.15-1.45x (int8) and 8-9x (int4) faster than the compiled linear_quantized kernel per GPT-1 layer (e.g. int8
  mlp.c_proj 1.84 against 2.65 ms, int4 c_fc 1.78 against 15.7 ms) at 1.30-1.42x the unquantized GEMM's time.

Inference only: a layer asked to run with gradients in training mode, or whose float buffers were made to require
grad, raises; there is no backward through the quantized weight (training a quantized model is out of scope).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from gpt_fast.models.linear import bound_call, gemm
from gpt_fast.ops.dequantize_linear_weight import dequantize_linear_weight
from gpt_fast.ops.kernel_plan import SMALL_M_MAX_ROWS, KernelPlan
from gpt_fast.ops.linear_quantized import linear_quantized, pack_quantized_weight, quantize_linear_weight
from gpt_fast.ops.round_activations import round_activations
from gpt_fast.ops.weight_cache import cached_on
from gpt_fast.quantization.config import QuantizationConfig

AMX_K = 32  # the AMX tile kernel's k step: linear_quantized takes it for int8 when in_features is a multiple
TRAINING_ERROR = ("{name} holds a weight-only quantized weight and is inference only: gradients through it are not "
                  "supported (training a quantized model is out of scope). Call model.eval() or run under "
                  "torch.no_grad(), or train the unquantized model and quantize it afterwards.")


def quantized_shapes(out_features: int, in_features: int, config: QuantizationConfig) -> dict:
    """{buffer name: (shape, dtype) or None} of the logical format (ops/reference.py) for W (N, K)."""
    N, K = out_features, in_features
    if config.bits == 8:
        return {"qweight": ((N, K), torch.int8), "scales": ((N, 1), torch.float32), "zeros": None}
    groups = K // config.group_size
    return {"qweight": ((N, K // 2), torch.uint8), "scales": ((N, groups), torch.bfloat16),
            "zeros": ((N, groups), torch.bfloat16)}


def kernel_rows(plan: KernelPlan, layer: QuantizedLinear) -> int:
    """Rows up to which linear_quantized serves a call of `layer`: the linear_small_m bound (the same memory-bound
    regime) when the plan runs the fused inference path, whether or not linear_small_m itself exists for the device
    (CUDA has no linear_small_m, and its decode steps must still reach the CUDA linear_quantized kernel), or the
    plan's larger bound for the layer's scheme and group size (plan.quantized_rows: the AMX tier; int8 only with
    in_features % 32 == 0, the tile kernel's k step); 0 with gradients on, with dropout, or on the "eager" reference
    backend."""
    if not plan.fused or torch.is_grad_enabled():
        return 0
    if layer.bits == 8 and layer.in_features % AMX_K:
        return SMALL_M_MAX_ROWS
    raised = [rows for s, g, rows in plan.quantized_rows if (s, g) == (layer.scheme, layer.group_size or 0)]
    return max([SMALL_M_MAX_ROWS, *raised])


class QuantizedLinear(nn.Module):
    """y = x W.T [+ b] with W (out_features, in_features) stored quantized. The base of the two layers below."""

    def __init__(self, out_features: int, in_features: int, config: QuantizationConfig,
                 dtype: torch.dtype = torch.float32, device=None):
        """An empty layer (buffers uninitialised, e.g. on the meta device before loading a checkpoint)."""
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.bits, self.group_size = config.bits, config.group_size
        self.activation_bits = config.activation_bits  # 8: x rounded to int8 per group (int4-a8, int8-a8), else None
        self.scheme = config.scheme  # "int8", "int4", "int4-a8" or "int8-a8"
        self.dtype = dtype  # the model's dtype: what `weight` dequantizes to; follows .to(dtype)
        for name, spec in quantized_shapes(out_features, in_features, config).items():
            self.register_buffer(name, None if spec is None else torch.empty(spec[0], dtype=spec[1], device=device))

    def set_quantized(self, weight: torch.Tensor, in_out_layout: bool) -> None:
        """Fills the buffers by quantizing weight (N, K) [(K, N) when in_out_layout]."""
        qweight, scales, zeros = quantize_linear_weight(weight, self.bits, self.group_size, in_out_layout)
        self.qweight, self.scales, self.zeros = qweight, scales, zeros

    # -- engines -------------------------------------------------------------------------------------------
    def engine(self, plan: KernelPlan | None, rows: int) -> str:
        """"kernel" or "dequantize" for a call of `rows` rows (see the module docstring)."""
        if plan is None or torch.compiler.is_compiling() or rows > kernel_rows(plan, self):
            return "dequantize"
        return "kernel"

    def packed(self):
        """The weight in linear_quantized's layout, packed once per version of the buffers."""
        buffers = self._buffers
        qweight, scales, zeros = buffers["qweight"], buffers["scales"], buffers["zeros"]
        sources = [qweight, scales] if zeros is None else [qweight, scales, zeros]
        return cached_on(self, "packed", sources, lambda: pack_quantized_weight(
            qweight, scales, zeros, self.bits, self.group_size), tag="quantized")

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """W (out_features, in_features) in dtype, made for this call."""
        buffers = self._buffers
        return dequantize_linear_weight(buffers["qweight"], buffers["scales"], buffers["zeros"], self.bits,
                                        self.group_size, dtype)

    def _check_inference(self) -> None:
        if torch.is_grad_enabled() and (self.training or self._buffers["scales"].requires_grad):
            raise RuntimeError(TRAINING_ERROR.format(name=type(self).__name__))

    def _linear(self, x: torch.Tensor, plan: KernelPlan | None, bias: torch.Tensor | None,
                gelu: bool) -> torch.Tensor:
        """(..., K) -> (..., N): [gelu_tanh](x W.T + bias) through the engine for x's row count."""
        self._check_inference()
        bound = bound_call(plan, self)
        if bound is not None:
            return bound(x, bias, gelu)
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if self.engine(plan, rows) == "kernel":
            return linear_quantized(x, self.packed(), self.out_features, self.bits, self.group_size, bias, None,
                                    gelu, self.activation_bits or 0)
        if self.activation_bits:  # the same rounding of x, then the GEMM in x's dtype
            x = round_activations(x, self.group_size).to(x.dtype)
        return gemm(x, self.dequantized(x.dtype).t(), bias, plan, gelu)  # weight (K, N) as Conv1D holds it

    def decode_call(self, plan: KernelPlan, rows: int) -> Callable | None:
        """call(x, bias, gelu) = _linear's result for x of `rows` rows under `plan`, with the engine and the packed
        weight resolved now (models/linear.py: bind_layers); None unless the engine is the compiled kernel."""
        if self.engine(plan, rows) != "kernel" or torch.is_grad_enabled():
            return None
        packed = self.packed()
        if isinstance(packed, tuple):  # no compiled kernel for the device: the reference, through _linear
            return None
        N, bits, group_size, x_bits = self.out_features, self.bits, self.group_size, self.activation_bits or 0
        return lambda x, bias, gelu: linear_quantized(x, packed, N, bits, group_size, bias, None, gelu, x_bits)

    # -- dtype and device moves ----------------------------------------------------------------------------
    def _apply(self, fn, recurse: bool = True):
        """.to(device) moves the buffers; a dtype change (.to(dtype), .half(), ...) reaches the bias and `dtype`
        but never the quantized buffers, which keep the logical format's dtypes exactly."""
        kept = {name: b for name, b in self._buffers.items() if b is not None}
        for name in kept:
            self._buffers[name] = None
        try:
            super()._apply(fn, recurse)
        finally:
            for name, buffer in kept.items():
                moved = fn(buffer)
                self._buffers[name] = moved if moved.dtype == buffer.dtype else buffer.to(moved.device)
        self.dtype = fn(torch.empty(0, dtype=self.dtype, device=self._buffers["qweight"].device)).dtype
        return self

    def extra_repr(self) -> str:
        group = "" if self.group_size is None else f", group_size={self.group_size}"
        activations = f", activation_bits={self.activation_bits}" if self.activation_bits else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}"
                f"{activations}")


class QuantizedConv1D(QuantizedLinear):
    """A quantized Conv1D: the same call (x, plan, with_bias, gelu) and the bias Parameter, the weight quantized."""

    fusable = True  # as Conv1D's (models/block_modules.py)

    def __init__(self, out_features: int, in_features: int, config: QuantizationConfig,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__(out_features, in_features, config, dtype, device)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))

    @classmethod
    def from_conv1d(cls, conv: nn.Module, config: QuantizationConfig) -> "QuantizedConv1D":
        """The quantized copy of a Conv1D (weight (K, N)); the bias Parameter is shared, not copied."""
        K, N = conv.weight.shape
        with torch.device("meta"):
            layer = cls(N, K, config, conv.weight.dtype)
        layer.set_quantized(conv.weight, in_out_layout=True)
        layer.bias = conv.bias
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (in_features, out_features) in the model's dtype, as Conv1D stores it (read-only,
        built per read)."""
        return self.dequantized(self.dtype).t()

    def forward(self, x: torch.Tensor, plan: KernelPlan | None = None, with_bias: bool = True,
                gelu: bool = False) -> torch.Tensor:
        """(..., in) -> (..., out): x W [+ b], or gelu_tanh(x W + b) when gelu (which always takes the bias)."""
        bias = self._parameters["bias"] if with_bias or gelu else None
        return self._linear(x, plan, bias, gelu)


class QuantizedLMHead(QuantizedLinear):
    """The LM head (vocab_size, n_embd), no bias, quantized. The token embedding it was tied to keeps its own table
    in the model's dtype (the lookup reads one row per token); this is a quantized copy of the same matrix."""

    takes_plan = True  # forward(x, plan): models/linear.py's call_head passes the model's plan

    @classmethod
    def from_weight(cls, weight: torch.Tensor, config: QuantizationConfig) -> "QuantizedLMHead":
        """The quantized copy of an nn.Linear weight (V, C)."""
        V, C = weight.shape
        with torch.device("meta"):
            layer = cls(V, C, config, weight.dtype)
        layer.set_quantized(weight, in_out_layout=False)
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (vocab_size, n_embd) in the model's dtype (read-only, built per read: the fused
        LM loss reads it)."""
        return self.dequantized(self.dtype)

    def forward(self, x: torch.Tensor, plan: KernelPlan | None = None) -> torch.Tensor:
        """(..., C) -> logits (..., V)."""
        return self._linear(x, plan, None, False)
