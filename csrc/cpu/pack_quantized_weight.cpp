// gpt_fast::pack_quantized_weight: repacks a weight-only quantized linear weight once (at load time) from the
// logical format of gpt_fast/ops/reference.py into the blocked byte layout of csrc/cpu/quantized_layout.h that
// gpt_fast::linear_quantized reads (CPU and CUDA alike; the copies run on qweight's device).
//   bits 8: qweight int8 (N, K), scales fp32 (N, 1), zeros None          -> uint8 (ceil(N/16), K + 4, 16)
//   bits 4: qweight uint8 (N, K/2), scales, zeros bf16 (N, K/G)          -> uint8 (ceil(N/16), K/G, 8 G + 64)
// group_size is ignored for bits 8. Plain ATen copies: it runs once per layer, so clarity beats speed here.
// Also linear_quantized's data-free argument checks (check_linear_quantized_args), shared with its CUDA binding, and
// the ATen rounding of x for its x_bits=8 (round_activations_aten, the CUDA binding's).
#include "cpu/pack_quantized_weight.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <torch/library.h>

#include <limits>

#include "checks.h"
#include "cpu/quantized_layout.h"

namespace gpt_fast {
namespace {

void check_bits(int64_t bits, const char* op) {
  TORCH_CHECK_VALUE(bits == 4 || bits == 8, op, ": bits must be 4 or 8, got ", bits);
}

// group_size positive, even and dividing K: the weights' groups (bits 4), or x's (bits 8 with x_bits 8).
void check_group(int64_t group_size, int64_t K, const char* op, const char* needs = "bits=4") {
  TORCH_CHECK_VALUE(group_size > 0 && group_size % 2 == 0 && K % group_size == 0, op, ": ", needs,
                    " needs an even positive group_size dividing in_features K=", K, ", got ", group_size);
}

// (N, C) -> (NB * 16, C) with rows past N filled with `pad`.
at::Tensor pad_rows(const at::Tensor& t, int64_t rows, double pad) {
  if (t.size(0) == rows) return t;
  auto out = t.new_full({rows, t.size(1)}, pad);
  out.narrow(0, 0, t.size(0)).copy_(t);
  return out;
}

}  // namespace

int64_t check_quantized_weight(const at::Tensor& qweight, const at::Tensor& scales,
                               const std::optional<at::Tensor>& zeros, int64_t bits, int64_t group_size,
                               const char* op) {
  check_bits(bits, op);
  check_dim(qweight, 2, op, "qweight");
  check_dim(scales, 2, op, "scales");
  check_same_device(scales, qweight, op, "scales");
  const int64_t N = qweight.size(0);
  TORCH_CHECK_VALUE(N > 0 && qweight.size(1) > 0, op, ": qweight must be non-empty, got shape ", qweight.sizes());
  if (bits == 8) {
    TORCH_CHECK_VALUE(qweight.scalar_type() == at::kChar, op, ": bits=8 needs an int8 qweight, got ",
                      qweight.scalar_type());
    TORCH_CHECK_VALUE(scales.scalar_type() == at::kFloat && scales.size(0) == N && scales.size(1) == 1, op,
                      ": bits=8 needs float32 scales of shape (N, 1) = (", N, ", 1), got ", scales.scalar_type(), " ",
                      scales.sizes());
    TORCH_CHECK_VALUE(!zeros.has_value(), op, ": bits=8 is symmetric: zeros must be None");
    return qweight.size(1);
  }
  const int64_t K = checked_mul(qweight.size(1), 2, op, "in_features 2 * qweight.size(1)");
  TORCH_CHECK_VALUE(qweight.scalar_type() == at::kByte, op, ": bits=4 needs a uint8 qweight (two k per byte), got ",
                    qweight.scalar_type());
  check_group(group_size, K, op);
  const int64_t groups = K / group_size;
  TORCH_CHECK_VALUE(zeros.has_value(), op, ": bits=4 needs zeros (bfloat16, (N, K / group_size))");
  check_same_device(*zeros, qweight, op, "zeros");
  for (const auto& [t, name] : {std::pair{scales, "scales"}, std::pair{*zeros, "zeros"}}) {
    TORCH_CHECK_VALUE(t.scalar_type() == at::kBFloat16 && t.dim() == 2 && t.size(0) == N && t.size(1) == groups, op,
                      ": bits=4 needs bfloat16 ", name, " of shape (N, K / group_size) = (", N, ", ", groups,
                      "), got ", t.scalar_type(), " ", t.sizes());
  }
  return K;
}

at::Tensor pack_quantized_weight_aten(const at::Tensor& qweight, const at::Tensor& scales,
                                      const std::optional<at::Tensor>& zeros, int64_t bits, int64_t group_size) {
  constexpr const char* op = "gpt_fast::pack_quantized_weight";
  const int64_t K = check_quantized_weight(qweight, scales, zeros, bits, group_size, op);
  const int64_t N = qweight.size(0);
  const int64_t NB = quant::blocks(N);
  const int64_t rows = checked_mul(NB, quant::kBlockN, op, "16 * ceil(N / 16)");
  if (bits == 8) {
    checked_mul(rows, quant::rows8(K), op, "the packed size 16 * ceil(N / 16) * (K + 4)");
    // (NB, K, 16): column j of block b at [b, k, j]; padding columns are q = 0
    auto q = pad_rows(qweight, rows, 0).view({NB, quant::kBlockN, K}).permute({0, 2, 1}).view(at::kByte);
    // (NB, 4, 16) bytes: 16 fp32 scales per block, -0.0 past N (the marker), the weight's own -0.0 made +0.0
    auto s = pad_rows(scales.add(0.0), rows, -0.0).contiguous().view({NB, quant::kBlockN});
    s = s.view(at::kByte).view({NB, quant::kScaleRows8, quant::kBlockN});
    return at::cat({q.contiguous(), s}, 1);
  }
  const int64_t groups = K / group_size;
  checked_mul(checked_mul(rows, groups, op, "the packed size"), quant::group_bytes4(group_size), op,
              "the packed size 16 * ceil(N / 16) * (K / G) * (8 G + 64)");
  // (NB, groups, 8 G): byte j of pair row p of group g = qweight[16 b + j, g G / 2 + p]
  auto q = pad_rows(qweight, rows, 0).view({NB, quant::kBlockN, groups, group_size / 2}).permute({0, 2, 3, 1});
  q = q.reshape({NB, groups, 8 * group_size});
  auto per_group = [&](const at::Tensor& t, double pad) {  // (N, groups) bf16 -> (NB, groups, 32) bytes
    auto p = pad_rows(t, rows, pad).view({NB, quant::kBlockN, groups}).permute({0, 2, 1}).contiguous();
    return p.view(at::kByte).view({NB, groups, 2 * quant::kBlockN});
  };
  auto z = zeros->add(0.0);  // the weight's own -0.0 made +0.0: -0.0 marks the padding
  return at::cat({q, per_group(scales, 0.0), per_group(z, -0.0)}, 2);
}

int64_t check_linear_quantized_args(const at::Tensor& x, const at::Tensor& packed, int64_t out_features,
                                    int64_t bits, int64_t group_size, int64_t x_bits, const char* op) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least one dimension (..., K), got a scalar");
  check_float_dtype(x, op, "x");
  const int64_t K = x.size(-1);
  TORCH_CHECK_VALUE(K > 0, op, ": x must have a non-empty last dimension (K), got shape ", x.sizes());
  check_bits(bits, op);
  TORCH_CHECK_VALUE(x_bits == 0 || x_bits == 8, op, ": x_bits must be 0 (x as it is) or 8 (x rounded to int8 per ",
                    "group), got ", x_bits);
  if (bits == 4 || x_bits == 8) check_group(group_size, K, op, bits == 4 ? "bits=4" : "x_bits=8 (x's groups)");
  TORCH_CHECK_VALUE(out_features > 0, op, ": out_features must be positive, got ", out_features);
  check_same_device(packed, x, op, "packed");
  TORCH_CHECK_VALUE(packed.scalar_type() == at::kByte && packed.dim() == 3 && packed.is_contiguous(), op,
                    ": packed must be the contiguous uint8 3-D tensor pack_quantized_weight returns, got ",
                    packed.scalar_type(), " ", packed.sizes());
  const int64_t NB = quant::blocks(out_features);
  const int64_t rows = bits == 8 ? quant::rows8(K) : K / group_size;
  const int64_t cols = bits == 8 ? quant::kBlockN : quant::group_bytes4(group_size);
  TORCH_CHECK_VALUE(packed.size(0) == NB && packed.size(1) == rows && packed.size(2) == cols, op,
                    ": packed has shape ", packed.sizes(), " but out_features=", out_features, ", K=", K,
                    ", bits=", bits, bits == 4 ? ", group_size=" : "", bits == 4 ? std::to_string(group_size) : "",
                    " need (", NB, ", ", rows, ", ", cols, "); pack it with pack_quantized_weight for these");
  return K;
}

at::Tensor round_activations_aten(const at::Tensor& x, int64_t G) {
  const at::Tensor groups = x.to(at::kFloat).reshape({-1, G});  // (M K / G, G)
  at::Tensor scale = groups.abs().amax({1}, /*keepdim=*/true).div(127.0);
  scale = scale.where(scale.isfinite(), std::numeric_limits<float>::quiet_NaN());
  const at::Tensor usable = scale.gt(0);  // false for 0 and NaN: q = 0
  const at::Tensor q = groups.div(scale.where(usable, 1.0)).round().clamp(-127, 127).where(usable, 0.0);
  return q.mul(scale).reshape(x.sizes());
}

std::vector<int64_t> check_linear_quantized_epilogue(const at::Tensor& x, int64_t N,
                                                     const std::optional<at::Tensor>& bias,
                                                     const std::optional<at::Tensor>& residual, const char* op) {
  if (bias) check_vector(*bias, N, x, op, "bias");
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  if (residual) {
    TORCH_CHECK_VALUE(residual->sizes() == at::IntArrayRef(out_shape), op, ": residual must have the output shape ",
                      at::IntArrayRef(out_shape), ", got ", residual->sizes());
    check_same_device(*residual, x, op, "residual");
    check_same_dtype(*residual, x, op, "residual");
  }
  return out_shape;
}

namespace {
at::Tensor pack_quantized_weight_cpu(const at::Tensor& qweight, const at::Tensor& scales,
                                     const std::optional<at::Tensor>& zeros, int64_t bits, int64_t group_size) {
  TORCH_CHECK_VALUE(qweight.device().is_cpu(), "gpt_fast::pack_quantized_weight: qweight must be on the CPU here");
  return pack_quantized_weight_aten(qweight, scales, zeros, bits, group_size);
}
}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("pack_quantized_weight", &pack_quantized_weight_cpu); }

}  // namespace gpt_fast
