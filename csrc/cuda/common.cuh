// Device helpers shared by the gpt_fast CUDA kernels: element types, 128-bit vector loads, warp reductions,
// the launch macro and (under nvcc) the tensor-core product. Includes no torch header.
//
// Every kernel header includes this file. It compiles in two modes:
//   * nvcc (the real build), and
//   * GF_SIMT (tests/simt/simt.h included first): plain g++, every CUDA thread a std::thread; the inline-PTX
//     paths are replaced by scalar fallbacks that give the same results lane by lane.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <cstdint>

#include "launchers.h"

#ifdef GF_SIMT
#define GF_LAUNCH(kernel, grid, block, stream, ...) gf_simt::launch(grid, block, kernel, __VA_ARGS__)
#define GF_LAST_ERROR() cudaSuccess
#else
#define GF_LAUNCH(kernel, grid, block, stream, ...) kernel<<<grid, block, 0, stream>>>(__VA_ARGS__)
#define GF_LAST_ERROR() cudaGetLastError()
#endif

// A missing __syncthreads() toggle for the SIMT race test: GF_SYNC_DROP(n) is __syncthreads() unless the
// build defines GF_DROP_SYNC=n, which removes exactly that one barrier.
#if defined(GF_DROP_SYNC)
#define GF_SYNC_DROP(n) \
  do {                  \
    if ((n) != GF_DROP_SYNC) __syncthreads(); \
  } while (0)
#else
#define GF_SYNC_DROP(n) __syncthreads()
#endif

namespace gpt_fast::cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;

__host__ __device__ inline float to_float(float v) { return v; }
__host__ __device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__host__ __device__ inline float to_float(__half v) { return __half2float(v); }

template <typename T>
__host__ __device__ inline T from_float(float v);
template <>
__host__ __device__ inline float from_float<float>(float v) { return v; }
template <>
__host__ __device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <>
__host__ __device__ inline __half from_float<__half>(float v) { return __float2half(v); }

// N elements of T in one 16-byte register group (uint4), for 128-bit loads and stores.
template <typename T>
struct Vec {
  static constexpr int N = 16 / sizeof(T);
  union {
    uint4 raw;
    T e[N];
  };
};

template <typename T>
__device__ inline Vec<T> load_vec(const T* p) {  // p must be 16-byte aligned
  Vec<T> v;
  v.raw = *reinterpret_cast<const uint4*>(p);
  return v;
}

template <typename T>
__device__ inline void store_vec(T* p, const Vec<T>& v) {
  *reinterpret_cast<uint4*>(p) = v.raw;
}

__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ inline float warp_max(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Sum of 8 partial sums as a balanced tree: dot products kept in 8 interleaved accumulators and summed this way
// have about the rounding error of a blocked BLAS dot (a single running sum is several times worse in fp32).
__device__ inline float tree_sum8(const float (&acc)[8]) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

__host__ __device__ inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace gpt_fast::cuda
