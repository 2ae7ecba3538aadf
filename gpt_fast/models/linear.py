"""Conv1D, GPT's linear layer (weight stored (in, out)), and the matmul engine it picks for each call.

Engines, chosen from the KernelPlan (ops/kernel_plan.py) and the number of rows of the call:
- "small_m": gpt_fast::linear_small_m over the weight packed once for it (decode steps and short prompts, up to
  plan.small_m_rows rows), with the bias and tanh-GELU in the kernel;
- "onednn": oneDNN's bf16 GEMM over the weight packed once for it, for widening layers (c_attn, c_fc) with more
  rows, GELU in its epilogue;
- "gemm": PyTorch's addmm / mm on the parameter itself, GELU through plan.bias_gelu; in float32 with the result
  rounded to the model's dtype where the plan says PyTorch's bf16 / fp16 GEMM is its slow reference loop on this
  CPU (plan.gemm_upcast: fp16 on CPUs without AVX512-FP16, bf16 on AVX2 CPUs; ~100x faster there); a float32
  GEMM through oneDNN (with autograd) where plan.onednn_fp32 says so (AMD CPUs: ops/onednn_linear.py).
The engine depends on the plan and the row count only, never on what the layer has computed before, so a call
gives the same numbers whatever came before it (the first generate() and the next, a forward before and after
generating). A layer keeps one packed copy of its weight per packed engine that has served it (ops/weight_cache.py,
rebuilt when the weight changes): a bf16 model on a CPU with oneDNN's bf16 GEMM that both prefills long prompts
and decodes holds two copies of its widening layers' weights (GPT-1: +99 MB). Measured on the 2-core AMD EPYC
(Zen 5, AVX512-BF16), bf16 GPT-1 forward of 512 tokens: oneDNN's prepacked GEMM for the widening layers ~12-16%
faster than PyTorch's GEMM; linear_small_m for all 512 rows about as fast as the GEMM.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gpt_fast.ops import linear_small_m, onednn_linear, pack_linear_weight, reference
from gpt_fast.ops.kernel_plan import KernelPlan
from gpt_fast.ops.weight_cache import PREFIX, cached_on


def _onednn_pack(weight: torch.Tensor) -> torch.Tensor:  # weight (in, out) -> oneDNN's opaque packed (out, in)
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().t().contiguous())


_PACK = {"small_m": lambda weight: pack_linear_weight(weight.detach(), True), "onednn": _onednn_pack}


class Conv1D(nn.Module):
    """A linear layer whose weight is stored (in_features, out_features), as in GPT checkpoints."""

    fusable = True  # forward(x, plan, with_bias=, gelu=): the fused block body may split off the bias, fuse a GELU

    def __init__(self, out_features: int, in_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    @property
    def widening(self) -> bool:
        return self.weight.shape[1] > self.weight.shape[0]

    def engine(self, plan: KernelPlan | None, rows: int) -> str:
        """The engine for a call of `rows` rows under `plan` (None: plain PyTorch)."""
        if plan is None or torch.compiler.is_compiling():  # torch.compile packs weights its own way
            return "gemm"
        if rows <= plan.small_m_rows:
            return "small_m"
        return "onednn" if plan.onednn_bf16 and self.widening else "gemm"

    def packed_engines(self) -> list[str]:
        """The engines whose packed copy of the weight this layer holds."""
        return [engine for engine in _PACK if PREFIX + "packed_" + engine in self.__dict__]

    def packed(self, engine: str) -> torch.Tensor:
        """The weight in `engine`'s layout, packed once per weight version."""
        weight = self._parameters["weight"]
        return cached_on(self, "packed_" + engine, (weight,), lambda: _PACK[engine](weight))

    def forward(self, x: torch.Tensor, plan: KernelPlan | None = None, with_bias: bool = True,
                gelu: bool = False) -> torch.Tensor:
        """(..., in) -> (..., out): x W [+ b], or gelu_tanh(x W + b) when gelu (which always takes the bias)."""
        # Parameters read from _parameters: nn.Module's __getattr__ costs a measurable share of a decode step.
        weight, layer_bias = self._parameters.get("weight"), self._parameters.get("bias")
        if weight is None or layer_bias is None:  # computed: parametrized or pruned (computed_weights)
            return gemm(x, self.weight, self.bias if with_bias or gelu else None, plan, gelu)
        bias = layer_bias if with_bias or gelu else None
        bound = bound_call(plan, self)
        if bound is not None:
            return bound(x, bias, gelu)
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        engine = self.engine(plan, rows)
        if engine == "small_m":
            return linear_small_m(x, self.packed(engine), layer_bias.shape[0], bias, None, gelu)
        if engine == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.packed(engine), bias, "gelu" if gelu else "none", [],
                                                      "tanh" if gelu else "")
        return gemm(x, weight, bias, plan, gelu)


    def decode_call(self, plan: KernelPlan, rows: int) -> Callable | None:
        """call(x, bias, gelu) = forward's result for x of `rows` rows under `plan`, with the engine and the packed
        weight resolved now (bind_layers); None where the engine packs nothing (PyTorch's GEMM)."""
        engine = self.engine(plan, rows)
        if engine != "small_m" or computed_weights(self):
            return None
        packed, N = self.packed(engine), self._parameters["bias"].shape[0]
        return lambda x, bias, gelu: linear_small_m(x, packed, N, bias, None, gelu)


def computed_weights(layer: nn.Module) -> bool:
    """Whether layer's weight or bias is computed at each call rather than held as a parameter: a parametrization
    (torch.nn.utils.parametrize: weight_norm, spectral_norm, LoRA-style reparametrisations) or pruning
    (torch.nn.utils.prune, whose pre-hook sets the masked weight). Such a layer multiplies by `layer.weight` through
    PyTorch's GEMM; no packed copy is made of it."""
    return "weight" not in layer._parameters or "bias" not in layer._parameters


def bound_call(plan: KernelPlan | None, layer: nn.Module) -> Callable | None:
    """layer's call bound in plan.bound_layers, if any."""
    bound = None if plan is None else plan.bound_layers
    return None if bound is None else bound.get(layer)


def bind_layers(model: nn.Module, plan: KernelPlan, rows: int) -> KernelPlan:
    """plan with bound_layers holding, for every linear layer of model (Conv1D, the quantized layers, the LM head)
    whose engine for `rows` rows reads a packed weight, that call with the engine and the packed weight resolved.

    A decode step then skips per layer the engine choice and the packed copy's validity check (together ~2-4 us of
    Python per layer, ~49 layers per GPT-1 token). The packed weights are those of the moment of binding: a decode
    loop binds once (generation/decoder.py), and a weight changed afterwards is seen only by a new binding."""
    bound = {}
    for module in model.modules():
        decode_call = getattr(module, "decode_call", None)
        call = decode_call(plan, rows) if decode_call is not None else None
        if call is not None:
            bound[module] = call
    head = getattr(model, "lm_head", None)
    if plain_linear(head) and rows <= plan.small_m_rows:  # (project_to_vocab's engine)
        packed, N = _packed_head(head), head.weight.shape[0]
        bound[head] = lambda x, bias, gelu: linear_small_m(x, packed, N, bias, None, False)
    return dataclasses.replace(plan, bound_layers=bound)


def gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: KernelPlan | None,
         gelu: bool = False) -> torch.Tensor:
    """The "gemm" engine: (..., in) @ weight (in, out) [+ bias] -> (..., out) through PyTorch's GEMM; with gelu,
    gelu_tanh(x W + bias) through plan.bias_gelu (the fused kernel where the plan has it)."""
    flat = x.reshape(-1, x.shape[-1])  # (rows, in)
    if (plan is not None and plan.onednn_fp32 and onednn_linear.serves(flat, weight.t())
            and not torch.compiler.is_compiling()):
        out = onednn_linear.onednn_linear(flat, weight.t(), None if gelu else bias)
        if gelu:
            out = plan.bias_gelu(out, bias)
    elif plan is not None and plan.gemm_upcast:  # fp32 GEMM, rounded once to x's dtype, as a half GEMM rounds
        if gelu or bias is None:
            out = (flat.float() @ weight.float()).to(x.dtype)
        else:
            out = torch.addmm(bias.float(), flat.float(), weight.float()).to(x.dtype)
        if gelu:
            out = plan.bias_gelu(out, bias)
    elif gelu:
        out = (plan.bias_gelu if plan is not None else reference.bias_gelu)(flat @ weight, bias)
    else:
        out = flat @ weight if bias is None else torch.addmm(bias, flat, weight)
    return out.view(*x.shape[:-1], weight.shape[1])


def plain_linear(module: nn.Module | None, cls: type = nn.Linear) -> bool:
    """Whether module is exactly `cls` (nn.Linear, or Conv1D) without hooks, so that gpt_fast may multiply by its
    weight directly or replace it. A subclass (its forward may differ), a wrapper (PEFT's LoRA) or a hooked layer is
    called as a module instead."""
    return type(module) is cls and not module._forward_hooks and not module._forward_pre_hooks


def weight_only_head(head: nn.Module | None) -> bool:
    """Whether head(x) is x @ head.weight.T: a plain nn.Linear without bias, the head that the fused loss (it reads
    only the weight) and the quantized head stand for."""
    return plain_linear(head) and head.bias is None


def project_to_vocab(lm_head: nn.Module, x: torch.Tensor, plan: KernelPlan | None) -> torch.Tensor:
    """x (..., C) @ lm_head.weight (V, C).T [+ lm_head.bias] -> (..., V). Few rows go through linear_small_m on a
    copy packed once (1.9x F.linear's read of the 62 MB bf16 head for one row: faster decode steps and first token).
    A head that takes the plan (gpt_fast's quantized LM head) picks its own engine; any other head that is not a
    plain nn.Linear (plain_linear) is called as a module."""
    if getattr(lm_head, "takes_plan", False):
        return lm_head(x, plan)
    if not plain_linear(lm_head):
        return lm_head(x)
    weight, bias = lm_head.weight, lm_head.bias  # (V, C), (V,) or None
    bound = bound_call(plan, lm_head)
    if bound is not None:
        return bound(x, bias, False)
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if plan is None or rows > plan.small_m_rows or torch.compiler.is_compiling():
        if plan is not None and plan.gemm_upcast:  # (see gemm)
            return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
        return F.linear(x, weight, bias)
    return linear_small_m(x, _packed_head(lm_head), weight.shape[0], bias, None, False)


def call_head(head: nn.Module, x: torch.Tensor, plan: KernelPlan | None) -> torch.Tensor:
    """head(x) for a forward's full logits (the LM head, called as a module: hooks, accelerate's and PEFT's wrappers
    apply), except that a plain nn.Linear without hooks multiplies in float32 where plan.gemm_upcast says PyTorch's
    half GEMM is its slow loop, and through oneDNN where plan.onednn_fp32 says so (see gemm). A head that takes the
    plan (gpt_fast's quantized LM head: `takes_plan`) gets it, so that its engine follows the row count (a forward's
    last-token logits through the decode kernel rather than the whole head dequantized)."""
    if getattr(head, "takes_plan", False):
        return head(x, plan)
    plain = plan is not None and plain_linear(head) and x.dtype == head.weight.dtype
    if plain and plan.gemm_upcast:
        bias = None if head.bias is None else head.bias.float()
        return F.linear(x.float(), head.weight.float(), bias).to(x.dtype)
    if plain and plan.onednn_fp32 and onednn_linear.serves(x, head.weight) and not torch.compiler.is_compiling():
        return onednn_linear.onednn_linear(x, head.weight, head.bias)
    return head(x)


def _packed_head(lm_head: nn.Linear) -> torch.Tensor:
    return cached_on(lm_head, "packed", [lm_head.weight], lambda: pack_linear_weight(lm_head.weight.detach(), False),
                     tag="small_m")
