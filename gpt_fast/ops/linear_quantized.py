"""Weight-only int8 / int4 linear layers for decode (issue 15): the op wrappers the quantized model layers call.

The logical format (what quantize produces and checkpoints store) is reference.quantize_linear_weight's:
qweight int8 (N, K) with float32 scales (N, 1) for bits=8; for bits=4 qweight uint8 (N, K // 2) (two k per byte,
low nibble first) with bfloat16 scales and zeros (N, K // group_size), W = q * scale + zero.

pack_quantized_weight(qweight, scales, zeros, bits, group_size) repacks that once at load time into whatever layout
the kernel reads (cached on the layer like pack_linear_weight's copy); linear_quantized(x, packed, out_features,
bits, group_size, bias, residual, gelu) = [gelu_tanh](x @ W.T + bias) [+ residual] in x's dtype with fp32
accumulation. Without a compiled kernel for the device both fall back to the eager reference (the "packed" value is
then the logical triple itself).

The packed layout (csrc/cpu/quantized_layout.h, the same on CPU and CUDA; reference.pack_quantized_weight builds it
in PyTorch) is a uint8 tensor of 16-column blocks, each one byte stream: int8 (ceil(N/16), K + 4, 16) = K rows of 16
weights then 16 fp32 scales; int4 (ceil(N/16), K/G, 8G + 64) = per group G/2 rows of 16 bytes (one k pair per
column, low nibble first) then 16 bf16 scales and 16 bf16 zeros. Its shape pins down bits and group_size for a K,
and a -0.0 marker in the padding columns pins down N: a mismatch of out_features, K, bits or group_size with the
packed weight is a ValueError naming the op. The kernels dequantize in registers and do all math in fp32 (no
quantization of x): exact up to fp32 rounding and summation order against dequantize-then-matmul, except int8 with
a bf16 x from 5 rows on AVX512_VNNI CPUs without AMX, which holds x as 16-bit integers per group of 32 k (exact for
every x within 2^7 of its group's largest, others rounded at 2^-15 of it: csrc/cpu/int8_tile_dpwssd.h). With x_bits=8
(int4-a8, int8-a8) x is first rounded to int8 per group of group_size k (reference.round_activations), and the
result is exact in the same sense against the rounded x; the AVX-512 tier then multiplies bytes with VNNI.
CPU tiers: AVX-512, AVX2 + FMA, scalar (GPT_FAST_CPU_ISA caps the choice); CUDA: one kernel for both bit widths.
Autograd: gradients flow to x, bias and residual through the dequantized weight (an eager backward, correct not
fast); the packed weight gets none.
"""

from __future__ import annotations

import torch

from gpt_fast.ops import reference
from gpt_fast.ops._autograd import register_reference_backward
from gpt_fast.ops._library import extension_loaded, has_kernel

BLOCK_N = 16  # output columns per packed block (csrc/cpu/quantized_layout.h)


def packed_quantized_shape(out_features: int, in_features: int, bits: int, group_size: int | None = None):
    """Shape of pack_quantized_weight's uint8 result for an (N, K) = (out_features, in_features) weight."""
    blocks = -(-out_features // BLOCK_N)
    if bits == 8:
        return (blocks, in_features + 4, BLOCK_N)
    return (blocks, in_features // group_size, 8 * group_size + 64)


def _reference_from_packed(x, packed, out_features, bits, group_size, bias, residual, gelu, x_bits=0):
    """The op's eager reference on its own arguments (the backward differentiates this; x_bits=8's rounding of x
    passes the gradient straight through)."""
    w = reference.dequantize_packed_weight(packed, out_features, bits, group_size)  # (N, K) float32
    xf = x.to(torch.float32)
    if x_bits == 8:
        xf = xf + (reference.round_activations(x, group_size) - xf).detach()
    out = xf @ w.t()
    if bias is not None:
        out = out + bias.to(torch.float32)
    if gelu:
        out = torch.nn.functional.gelu(out, approximate="tanh")
    if residual is not None:
        out = out + residual.to(torch.float32)
    return out.to(x.dtype)


if extension_loaded():

    @torch.library.register_fake("gpt_fast::pack_quantized_weight")
    def _(qweight, scales, zeros, bits, group_size):
        torch._check(bits in (4, 8), lambda: f"pack_quantized_weight: bits must be 4 or 8, got {bits}")
        torch._check(qweight.dim() == 2, lambda: "pack_quantized_weight: qweight must be 2-D")
        N, K = qweight.shape[0], qweight.shape[1] * (2 if bits == 4 else 1)
        if bits == 4:
            torch._check(group_size > 0 and group_size % 2 == 0 and K % group_size == 0,
                         lambda: f"pack_quantized_weight: bits=4 needs an even group_size dividing K={K}")
        return qweight.new_empty(packed_quantized_shape(N, K, bits, group_size), dtype=torch.uint8)

    @torch.library.register_fake("gpt_fast::linear_quantized")
    def _(x, packed, out_features, bits, group_size, bias, residual, gelu, x_bits=0):
        # The data-free checks of the kernels; the exact N (from the padding marker) needs the data.
        K = x.shape[-1]
        torch._check(bits in (4, 8), lambda: f"linear_quantized: bits must be 4 or 8, got {bits}")
        torch._check(x_bits in (0, 8), lambda: f"linear_quantized: x_bits must be 0 or 8, got x_bits={x_bits}")
        torch._check(out_features > 0, lambda: f"linear_quantized: out_features must be positive, got {out_features}")
        if bits == 4 or x_bits == 8:
            torch._check(group_size > 0 and group_size % 2 == 0 and K % group_size == 0,
                         lambda: f"linear_quantized: bits=4 or x_bits=8 needs an even group_size dividing K={K}")
        expected = packed_quantized_shape(out_features, K, bits, group_size)
        torch._check(packed.dtype == torch.uint8 and tuple(packed.shape) == expected,
                     lambda: f"linear_quantized: packed has shape {tuple(packed.shape)} but needs {expected}")
        return x.new_empty((*x.shape[:-1], out_features))

    # Gradients for x, bias and residual through the dequantized weight (none for the packed weight itself).
    register_reference_backward("linear_quantized", _reference_from_packed)


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
                     residual=None, gelu: bool = False, x_bits: int = 0):
    """[gelu_tanh](x @ W.T + bias) [+ residual] with W given by pack_quantized_weight; x (..., K) -> (..., N).
    x_bits=8: x rounded to int8 per group of group_size first (reference.round_activations; with bits=8
    group_size is then x's group alone)."""
    if isinstance(packed, tuple):
        qweight, scales, zeros = packed
        return reference.linear_quantized(x, qweight, scales, zeros, bits, group_size, bias, residual, gelu, x_bits)
    return torch.ops.gpt_fast.linear_quantized(x, packed, out_features, bits, group_size or 0, bias, residual, gelu,
                                               x_bits)
