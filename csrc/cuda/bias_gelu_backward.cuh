// CUDA kernel body for gpt_fast::bias_gelu_backward: grad_x = grad_out * gelu_tanh'(x + bias), computed in fp32.
// grad_out, x, grad_x: (rows, N) contiguous; bias: (N,). The derivative as the CPU kernel takes it
// (csrc/cpu/bias_gelu_backward.cpp): v clamped to [-9, 9], s = 1 / (1 + e), e = exp(-2u),
//   gelu'(v) = s + 2 sqrt(2/pi) v (1 + 3 * 0.044715 v^2) (e s) s,   NaN for a non-finite v.
// Vectorised variant (VEC): N % (16 / sizeof(T)) == 0 and 16-byte aligned pointers, one 128-bit chunk per thread
// per step; scalar variant otherwise. Grid-stride loop. No torch header.
#pragma once
#include "common.cuh"

namespace gpt_fast::cuda {

constexpr int kGeluBackwardThreads = 256;

__host__ __device__ inline float gelu_tanh_grad(float v) {
  constexpr float c = 0.7978845608028654f, a = 0.044715f;
  if (!(fabsf(v) < INFINITY)) return NAN;  // +-inf (PyTorch: 0 * inf) or NaN
  v = fminf(fmaxf(v, -9.f), 9.f);          // gelu' is 0 or 1 to below 1e-26 beyond: v^3 and exp cannot overflow
  const float e = expf(-2.f * c * (v + a * v * v * v));
  const float s = 1.f / (1.f + e);
  return fmaf(2.f * c * v * (1.f + 3.f * a * v * v) * (e * s), s, s);
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(kGeluBackwardThreads)
    bias_gelu_backward_kernel(const T* grad_out, const T* x, const T* bias, T* grad_x, int64_t total, int64_t N) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (VEC) {
    constexpr int V = Vec<T>::N;
    for (int64_t chunk = first; chunk < total / V; chunk += stride) {
      const int64_t i = chunk * V;
      const Vec<T> gv = load_vec(grad_out + i);
      const Vec<T> xv = load_vec(x + i);
      const Vec<T> bv = load_vec(bias + i % N);  // N % V == 0, so a chunk never wraps a row
      Vec<T> o;
#pragma unroll
      for (int j = 0; j < V; ++j)
        o.e[j] = from_float<T>(to_float(gv.e[j]) * gelu_tanh_grad(to_float(xv.e[j]) + to_float(bv.e[j])));
      store_vec(grad_x + i, o);
    }
  } else {
    for (int64_t i = first; i < total; i += stride)
      grad_x[i] = from_float<T>(to_float(grad_out[i]) * gelu_tanh_grad(to_float(x[i]) + to_float(bias[i % N])));
  }
}

}  // namespace gpt_fast::cuda
