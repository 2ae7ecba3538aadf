// Host-side helpers for the launchers: DType -> element type dispatch, and the padded head size.
#pragma once
#include "common.cuh"

namespace gpt_fast::cuda {

// Calls f(T{}) with T the element type of `dtype`.
template <typename F>
auto dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kBFloat16:
      return f(__nv_bfloat16{});
    case DType::kFloat16:
      return f(__half{});
    case DType::kFloat32:
    default:
      return f(float{});
  }
}

// Calls f(std::integral_constant<int, DP>{}) with DP = 64 for D <= 64, else 128.
template <typename F>
auto dispatch_head_dim(int D, F&& f) {
  if (D <= 64) return f(std::integral_constant<int, 64>{});
  return f(std::integral_constant<int, 128>{});
}

}  // namespace gpt_fast::cuda
