// CUDA kernel body for gpt_fast::add_layernorm: out = layer_norm(x + dropout(residual [+ bias])) * weight + ln_bias.
// One warp per row, fp32 statistics (mean, then the centred sum of squares, both over the row held in registers).
// Dropout (a.drop): element n = row * C + col of residual is kept under csrc/philox.h's contract, kept values of
// residual + bias scaled by a.scale = 1 / (1 - p); the vectorised variant draws one Philox block per 4 elements of a
// chunk (chunks start at multiples of 4), the generic one a block per element and pass (4 x 3 x the draws).
// Vectorised variant: C % (16 / sizeof(T)) == 0, 16-byte aligned rows, C <= CHUNKS * 32 * (16 / sizeof(T));
// each lane keeps its CHUNKS 128-bit chunks of the row in registers. Generic variant (CHUNKS == 0): any C, scalar
// loads, the sum recomputed from global memory on each pass. Rows are contiguous (row stride C). No torch header.
#pragma once
#include "../philox.h"
#include "common.cuh"

namespace gpt_fast::cuda {

constexpr int kLnWarpsPerBlock = 4;

template <typename T>
struct LayerNormArgs {
  const T* x;         // (rows, C)
  const T* residual;  // (rows, C)
  const T* bias;      // (C,) or nullptr
  const T* weight;    // (C,)
  const T* ln_bias;   // (C,)
  T* out;             // (rows, C)
  int64_t rows;
  int C;
  float eps;
  bool drop;           // dropout on residual + bias
  uint64_t seed;       // Philox key
  uint32_t threshold;  // philox::dropout_threshold(p)
  float scale;         // 1 / (1 - p)
};

template <typename T>
__device__ inline float ln_input(const LayerNormArgs<T>& a, int64_t row, int c) {
  if (a.drop) {
    const float d = to_float(a.residual[row * a.C + c]) + (a.bias ? to_float(a.bias[c]) : 0.f);
    const bool keep = philox::keep(a.seed, static_cast<uint64_t>(row * a.C + c), a.threshold);
    return to_float(a.x[row * a.C + c]) + (keep ? d * a.scale : 0.f);
  }
  float v = to_float(a.x[row * a.C + c]) + to_float(a.residual[row * a.C + c]);
  return a.bias ? v + to_float(a.bias[c]) : v;
}

template <typename T, int CHUNKS>
__global__ void __launch_bounds__(kLnWarpsPerBlock * kWarp) add_layernorm_kernel(LayerNormArgs<T> a) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kLnWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= a.rows) return;  // whole warps leave together; the kernel has no block barrier
  const float inv_c = 1.f / static_cast<float>(a.C);

  if constexpr (CHUNKS == 0) {
    float sum = 0.f;
    for (int c = lane; c < a.C; c += kWarp) sum += ln_input(a, row, c);
    const float mean = warp_sum(sum) * inv_c;
    float sq = 0.f;
    for (int c = lane; c < a.C; c += kWarp) {
      const float d = ln_input(a, row, c) - mean;
      sq += d * d;
    }
    const float rstd = rsqrtf(warp_sum(sq) * inv_c + a.eps);
    for (int c = lane; c < a.C; c += kWarp) {
      const float y = (ln_input(a, row, c) - mean) * rstd;
      a.out[row * a.C + c] = from_float<T>(y * to_float(a.weight[c]) + to_float(a.ln_bias[c]));
    }
  } else {
    constexpr int N = Vec<T>::N;
    float v[CHUNKS][N];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < CHUNKS; ++i) {
      const int c = (i * kWarp + lane) * N;
      if (c < a.C) {
        const Vec<T> xv = load_vec(a.x + row * a.C + c);
        const Vec<T> rv = load_vec(a.residual + row * a.C + c);
        Vec<T> bv;
        if (a.bias) bv = load_vec(a.bias + c);
        if (a.drop) {
#pragma unroll
          for (int q = 0; q < N; q += 4) {  // row * C + c + q is a multiple of 4: one Philox block
            const uint64_t block = static_cast<uint64_t>(row * a.C + c + q) >> 2;
            const philox::Block w = philox::philox4x32_10(static_cast<uint32_t>(block),
                                                          static_cast<uint32_t>(block >> 32), 0u, 0u,
                                                          static_cast<uint32_t>(a.seed),
                                                          static_cast<uint32_t>(a.seed >> 32));
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              const float d = to_float(rv.e[q + j]) + (a.bias ? to_float(bv.e[q + j]) : 0.f);
              v[i][q + j] = to_float(xv.e[q + j]) + (w.w[j] >= a.threshold ? d * a.scale : 0.f);
              sum += v[i][q + j];
            }
          }
        } else {
#pragma unroll
          for (int j = 0; j < N; ++j) {
            v[i][j] = to_float(xv.e[j]) + to_float(rv.e[j]) + (a.bias ? to_float(bv.e[j]) : 0.f);
            sum += v[i][j];
          }
        }
      } else {
#pragma unroll
        for (int j = 0; j < N; ++j) v[i][j] = 0.f;
      }
    }
    const float mean = warp_sum(sum) * inv_c;
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < CHUNKS; ++i) {
      if ((i * kWarp + lane) * N < a.C) {
#pragma unroll
        for (int j = 0; j < N; ++j) sq += (v[i][j] - mean) * (v[i][j] - mean);
      }
    }
    const float rstd = rsqrtf(warp_sum(sq) * inv_c + a.eps);
#pragma unroll
    for (int i = 0; i < CHUNKS; ++i) {
      const int c = (i * kWarp + lane) * N;
      if (c < a.C) {
        const Vec<T> wv = load_vec(a.weight + c);
        const Vec<T> bv = load_vec(a.ln_bias + c);
        Vec<T> o;
#pragma unroll
        for (int j = 0; j < N; ++j) o.e[j] = from_float<T>((v[i][j] - mean) * rstd * to_float(wv.e[j]) + to_float(bv.e[j]));
        store_vec(a.out + row * a.C + c, o);
      }
    }
  }
}

}  // namespace gpt_fast::cuda
