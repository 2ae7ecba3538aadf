// gpt_fast::pack_quantized_weight as a device-agnostic ATen function (plain tensor copies, so it runs on qweight's
// device): the CPU binding is pack_quantized_weight.cpp, the CUDA one csrc/cuda/bindings.cpp. The layout is
// csrc/cpu/quantized_layout.h's. Also the argument checks linear_quantized's and dequantize_linear_weight's bindings
// share.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace gpt_fast {

// The checks of a weight in the logical format (gpt_fast/ops/reference.py): bits 4 or 8; bits 8: qweight int8 (N, K),
// scales float32 (N, 1), zeros None; bits 4: qweight uint8 (N, K / 2), group_size even, positive and dividing K,
// scales and zeros bfloat16 (N, K / group_size); N, K > 0; all on qweight's device. Returns K.
int64_t check_quantized_weight(const at::Tensor& qweight, const at::Tensor& scales,
                               const std::optional<at::Tensor>& zeros, int64_t bits, int64_t group_size,
                               const char* op);

at::Tensor pack_quantized_weight_aten(const at::Tensor& qweight, const at::Tensor& scales,
                                      const std::optional<at::Tensor>& zeros, int64_t bits, int64_t group_size);

// linear_quantized's checks that need no data: x (..., K) float with K > 0, bits 4 or 8, x_bits 0 or 8, group_size
// (bits 4 or x_bits 8), out_features > 0, and packed uint8 contiguous on x's device with the shape
// pack_quantized_weight gives for (N, K, bits, group_size). Returns K.
int64_t check_linear_quantized_args(const at::Tensor& x, const at::Tensor& packed, int64_t out_features,
                                    int64_t bits, int64_t group_size, int64_t x_bits, const char* op);

// x (..., K) as float32 with each group of G consecutive k rounded to int8 by its own scale s = max |x| / 127:
// q = round half to even (x / s) in [-127, 127], x replaced by q * s; an all-zero group stays 0, a group holding a
// NaN or an infinity becomes NaN. reference.round_activations in ATen ops (any device); the CPU kernel rounds in its
// own loop, to the same bits.
at::Tensor round_activations_aten(const at::Tensor& x, int64_t G);

// The checks of linear_quantized's epilogue arguments: bias (N,) and residual with the output's shape (..., N),
// both on x's device in x's dtype. Returns the output shape.
std::vector<int64_t> check_linear_quantized_epilogue(const at::Tensor& x, int64_t N,
                                                     const std::optional<at::Tensor>& bias,
                                                     const std::optional<at::Tensor>& residual, const char* op);

}  // namespace gpt_fast
