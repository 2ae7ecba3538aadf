// CUDA kernel body for gpt_fast::bias_gelu: out = gelu_tanh(x + bias), computed in fp32.
// x, out: (rows, N) contiguous; bias: (N,). Vectorised variant (VEC): N % (16 / sizeof(T)) == 0 and 16-byte
// aligned pointers, one 128-bit chunk per thread per step; scalar variant otherwise. Grid-stride loop, so any
// size works with a capped grid. No torch header.
#pragma once
#include "common.cuh"

namespace gpt_fast::cuda {

constexpr int kGeluThreads = 256;

__host__ __device__ inline float gelu_tanh(float v) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  return 0.5f * v * (1.f + tanhf(kSqrt2OverPi * (v + 0.044715f * v * v * v)));
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(kGeluThreads) bias_gelu_kernel(const T* x, const T* bias, T* out, int64_t total,
                                                                  int64_t N) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (VEC) {
    constexpr int V = Vec<T>::N;
    for (int64_t chunk = first; chunk < total / V; chunk += stride) {
      const int64_t i = chunk * V;
      const Vec<T> xv = load_vec(x + i);
      const Vec<T> bv = load_vec(bias + i % N);  // N % V == 0, so a chunk never wraps a row
      Vec<T> o;
#pragma unroll
      for (int j = 0; j < V; ++j) o.e[j] = from_float<T>(gelu_tanh(to_float(xv.e[j]) + to_float(bv.e[j])));
      store_vec(out + i, o);
    }
  } else {
    for (int64_t i = first; i < total; i += stride) out[i] = from_float<T>(gelu_tanh(to_float(x[i]) + to_float(bias[i % N])));
  }
}

}  // namespace gpt_fast::cuda
