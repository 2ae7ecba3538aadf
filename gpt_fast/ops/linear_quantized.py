"""Weight-only int8 / int4 linear layers for decode (issue 15): the op wrappers the quantized model layers call.

The logical format (what quantize produces and checkpoints store) is reference.quantize_linear_weight's:
qweight int8 (N, K) with float32 scales (N, 1) for bits=8; for bits=4 qweight uint8 (N, K // 2) (two k per byte,
low nibble first) with bfloat16 scales and zeros (N, K // group_size), W = q * scale + zero.

pack_quantized_weight(qweight, scales, zeros, bits, group_size) repacks that once at load time into whatever layout
the kernel reads (cached on the layer like pack_linear_weight's copy); linear_quantized(x, packed, out_features,
bits, group_size, bias, residual, gelu) = [gelu_tanh](x @ W.T + bias) [+ residual] in x's dtype with fp32
accumulation. Without a compiled kernel for the device both fall back to the eager reference (the "packed" value is
then the logical triple itself).
"""

from __future__ import annotations

import torch

from gpt_fast.ops import reference
from gpt_fast.ops._library import has_kernel


def quantize_linear_weight(weight: torch.Tensor, bits: int, group_size: int | None = None,
                           in_out_layout: bool = False):
    """W (N, K) [(K, N) when in_out_layout] -> (qweight, scales, zeros); see reference.quantize_linear_weight."""
    return reference.quantize_linear_weight(weight, bits, group_size, in_out_layout)


def pack_quantized_weight(qweight, scales, zeros, bits: int, group_size: int | None = None):
    """The quantized weight in the layout linear_quantized reads on qweight's device (done once per weight)."""
    if has_kernel("pack_quantized_weight", qweight.device.type):
        return torch.ops.gpt_fast.pack_quantized_weight(qweight, scales, zeros, bits, group_size or 0)
    return (qweight, scales, zeros)


def linear_quantized(x, packed, out_features: int, bits: int, group_size: int | None = None, bias=None,
                     residual=None, gelu: bool = False):
    """[gelu_tanh](x @ W.T + bias) [+ residual] with W given by pack_quantized_weight; x (..., K) -> (..., N)."""
    if isinstance(packed, tuple):
        qweight, scales, zeros = packed
        return reference.linear_quantized(x, qweight, scales, zeros, bits, group_size, bias, residual, gelu)
    return torch.ops.gpt_fast.linear_quantized(x, packed, out_features, bits, group_size or 0, bias, residual, gelu)
