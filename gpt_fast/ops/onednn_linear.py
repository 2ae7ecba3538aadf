"""oneDNN's float32 GEMM in place of PyTorch's own (MKL's) on AMD x86 CPUs, where it is faster.

PyTorch multiplies float32 matrices on the CPU with MKL's sgemm, which on AMD processors runs slower than oneDNN's
own kernels (torch.ops.mkldnn._linear_pointwise, the op PyTorch's inductor uses for packed linears). Measured on
AMD EPYC Zen 4, 2 threads, float32, ms (MKL / oneDNN): GPT-1's block GEMMs at 1024 rows, forward 19.1 / 17.1
(c_attn), 28.6 / 24.5 (c_fc), 25.6 / 24.9 (mlp c_proj), 6.4 / 5.8 (attn c_proj); the input gradient 18.7 / 17.5,
24.7 / 23.1, 28.9 / 23.8, 6.4 / 5.8; the LM head's logits for 414 rows (x @ W.T, W (40478, 768)) 233 / 146. The
whole float32 training step (B=4, T=256, fused loss) 5.05 -> 4.71 s with the block GEMMs alone. The weight
gradient stays PyTorch's (oneDNN's was no faster), as does every GEMM whose operand oneDNN would first copy.

`onednn_linear(x, weight, bias)` = x @ weight.T + bias for float32 CPU tensors, weight (out, in) of any layout
whose transpose or itself is contiguous (Conv1D passes its (in, out) parameter transposed), with autograd: the
gradients are PyTorch's arithmetic (float32 GEMMs, the bias gradient a sum over rows), each weight gradient made
in its parameter's memory layout. A backward that must itself be differentiable (create_graph=True) runs PyTorch's
ops. `usable(device_type)` says where the models use it (KernelPlan.onednn_fp32); on Intel CPUs MKL is Intel's
own and stays (not measured here against oneDNN).
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

from gpt_fast.ops import cpu_isa

_POINTWISE = torch.ops.mkldnn._linear_pointwise
if _POINTWISE.default not in flop_registry:  # PyTorch counts no FLOPs for it: MFU figures would miss these GEMMs
    @register_flop_formula(_POINTWISE)
    def _(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * math.prod(x_shape) * weight_shape[0]  # x (..., K) @ weight (N, K).T


def usable(device_type: str) -> bool:
    """Whether the float32 GEMMs of a model on `device_type` go through oneDNN: on the CPU of an AMD x86 machine
    with PyTorch's oneDNN."""
    return (device_type == "cpu" and cpu_isa.ONEDNN and cpu_isa.detected_level() != "scalar"
            and cpu_isa.cpu_vendor() == "AuthenticAMD")


def serves(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether onednn_linear takes these operands (float32 CPU tensors, weight or its transpose contiguous)."""
    return (x.dtype == weight.dtype == torch.float32 and x.device.type == weight.device.type == "cpu"
            and (weight.is_contiguous() or weight.t().is_contiguous()))


def matmul_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) @ b (N, K).T through oneDNN, without autograd (see serves)."""
    return _POINTWISE(a, b, None, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # x (M, K), weight (N, K), bias (N,) or None -> (M, N)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _POINTWISE(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):  # grad (M, N)
        x, weight = ctx.saved_tensors
        want_x, want_weight, want_bias = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: gradients with a graph of their own, through PyTorch's ops
            return (grad @ weight if want_x else None, grad.t() @ x if want_weight else None,
                    grad.sum(0) if want_bias and ctx.has_bias else None)
        grad_x = grad_weight = grad_bias = None
        transposed = not weight.is_contiguous()  # weight is the transpose of a contiguous (K, N) parameter
        if want_x:  # (M, N) @ (N, K): oneDNN when weight.T is contiguous (its layout), else PyTorch's
            grad_x = matmul_t(grad, weight.t()) if transposed else grad @ weight
        if want_weight:  # in the parameter's layout: (K, M) @ (M, N) -> (K, N), handed over transposed
            grad_weight = (x.t() @ grad).t() if transposed else grad.t() @ x
        if want_bias and ctx.has_bias:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ weight (N, K).T [+ bias (N,)] -> (..., N) through oneDNN's float32 GEMM (see serves)."""
    if not serves(x, weight):
        raise ValueError(f"onednn_linear takes float32 CPU tensors with weight or weight.T contiguous, got "
                         f"{x.dtype} / {weight.dtype} on {x.device.type} / {weight.device.type}")
    flat = x.reshape(-1, x.shape[-1])  # (M, K)
    return _OneDNNLinear.apply(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])
