// CPU kernel for gpt_fast::add_layernorm: out = layer_norm(x + residual [+ bias]) * weight + ln_bias.
// Post-LN as in GPT-1. One row per task, fp32 statistics (two passes over a row kept in a float buffer),
// inputs and output in fp32, bf16 or fp16. Any row width; rows may be strided, the last dim must be contiguous.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "checks.h"

namespace gpt_fast {
namespace {

template <typename T>
void add_layernorm_rows(const T* x, const T* res, const T* bias, const T* w, const T* b, T* out, int64_t rows,
                        int64_t C, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> sum(C);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * C;
      const T* rr = res + r * C;
      float mean = 0.f;
      for (int64_t c = 0; c < C; ++c) {
        float v = static_cast<float>(xr[c]) + static_cast<float>(rr[c]);
        if (bias) v += static_cast<float>(bias[c]);
        sum[c] = v;
        mean += v;
      }
      mean /= static_cast<float>(C);
      float var = 0.f;
      for (int64_t c = 0; c < C; ++c) {
        float d = sum[c] - mean;
        var += d * d;
      }
      const float rstd = 1.f / std::sqrt(var / static_cast<float>(C) + eps);
      T* o = out + r * C;
      for (int64_t c = 0; c < C; ++c) {
        o[c] = static_cast<T>((sum[c] - mean) * rstd * static_cast<float>(w[c]) + static_cast<float>(b[c]));
      }
    }
  });
}

at::Tensor add_layernorm_cpu(const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& bias,
                             const at::Tensor& weight, const at::Tensor& ln_bias, double eps) {
  constexpr const char* op = "gpt_fast::add_layernorm";
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  check_float_dtype(x, op, "x");
  TORCH_CHECK(residual.sizes() == x.sizes(), op, ": residual shape ", residual.sizes(), " must equal x shape ",
              x.sizes());
  check_same_device(residual, x, op, "residual");
  check_same_dtype(residual, x, op, "residual");
  const int64_t C = x.size(-1);
  TORCH_CHECK(C > 0, op, ": x must have a non-empty last dimension");
  check_vector(weight, C, x, op, "weight");
  check_vector(ln_bias, C, x, op, "ln_bias");
  if (bias) check_vector(*bias, C, x, op, "bias");
  TORCH_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps must be a finite non-negative number, got ", eps);

  auto xc = x.contiguous();
  auto rc = residual.contiguous();
  auto wc = weight.contiguous();
  auto bc = ln_bias.contiguous();
  at::Tensor biasc = bias ? bias->contiguous() : at::Tensor();
  auto out = at::empty_like(xc);
  const int64_t rows = xc.numel() / C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_layernorm_cpu", [&] {
    add_layernorm_rows<scalar_t>(xc.const_data_ptr<scalar_t>(), rc.const_data_ptr<scalar_t>(),
                                 bias ? biasc.const_data_ptr<scalar_t>() : nullptr, wc.const_data_ptr<scalar_t>(),
                                 bc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), rows, C,
                                 static_cast<float>(eps));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("add_layernorm", &add_layernorm_cpu); }

}  // namespace gpt_fast
