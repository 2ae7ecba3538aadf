// CUDA kernel bodies for gpt_fast::add_layernorm_backward: with v = x + dropout(residual [+ bias]) and the statistics
// recomputed (mean, then the centred sum of squares, fp32, as add_layernorm.cuh takes them),
//   xhat = (v - mean) * rstd,  g = grad_out * weight
//   grad_v = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)),  grad_weight = sum_rows(grad_out * xhat),
//   grad_ln_bias = sum_rows(grad_out),  with dropout: grad_residual = grad_v * keep * scale.
// The dropout mask is redrawn from the forward's seed (csrc/philox.h, element n = row * C + col), one Philox block
// per element and pass (the passes re-read the row; 4 x 4 x the draws of one mask).
// add_layernorm_backward_kernel: one warp per row (rows w, w + W, ... for warp w of W), writing grad_v and adding
// the row's (grad_out * xhat, grad_out) into the warp's own partial row of partial (W, 2, C) fp32: no atomics, and
// each lane owns its columns, so no two threads touch one float. add_layernorm_backward_params_kernel then sums
// the W partial rows column by column in a fixed order (deterministic). Any C (scalar loads; the row is re-read
// from global memory, L1/L2-resident, on each pass). Rows are contiguous (row stride C). No torch header.
#pragma once
#include "../philox.h"
#include "common.cuh"

namespace gpt_fast::cuda {

constexpr int kLnBackwardWarpsPerBlock = 4;
constexpr int kLnBackwardMaxBlocks = 256;  // W <= 1024 partial rows
constexpr int kLnParamsThreads = 256;

template <typename T>
struct LayerNormBackwardArgs {
  const T* grad_out;  // (rows, C)
  const T* x;         // (rows, C)
  const T* residual;  // (rows, C)
  const T* bias;      // (C,) or nullptr
  const T* weight;    // (C,)
  T* grad_v;          // (rows, C)
  T* grad_residual;   // (rows, C) with dropout, else nullptr
  float* partial;     // (W, 2, C): per warp, grad_weight | grad_ln_bias partial sums
  int64_t rows;
  int C;
  float eps;
  bool drop;           // dropout on residual + bias
  uint64_t seed;       // Philox key
  uint32_t threshold;  // philox::dropout_threshold(p)
  float scale;         // 1 / (1 - p)
};

// a * b rounded, never fused into a following add: g must be the same number in its row sum and in g - mean(g)
// (for C = 1, grad_v is then exactly 0, as in exact arithmetic).
__device__ inline float mul_rounded(float a, float b) {
#ifdef GF_SIMT
  return a * b;  // the SIMT build targets baseline x86-64: no FMA to fuse into
#else
  return __fmul_rn(a, b);
#endif
}

template <typename T>
__device__ inline bool lnb_keep(const LayerNormBackwardArgs<T>& a, int64_t row, int c) {
  return philox::keep(a.seed, static_cast<uint64_t>(row * a.C + c), a.threshold);
}

template <typename T>
__device__ inline float lnb_input(const LayerNormBackwardArgs<T>& a, int64_t row, int c) {
  if (a.drop) {
    const float d = to_float(a.residual[row * a.C + c]) + (a.bias ? to_float(a.bias[c]) : 0.f);
    return to_float(a.x[row * a.C + c]) + (lnb_keep(a, row, c) ? d * a.scale : 0.f);
  }
  const float v = to_float(a.x[row * a.C + c]) + to_float(a.residual[row * a.C + c]);
  return a.bias ? v + to_float(a.bias[c]) : v;
}

template <typename T>
__global__ void __launch_bounds__(kLnBackwardWarpsPerBlock * kWarp)
    add_layernorm_backward_kernel(LayerNormBackwardArgs<T> a) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kLnBackwardWarpsPerBlock + threadIdx.x / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kLnBackwardWarpsPerBlock;
  float* dw = a.partial + warp * 2 * a.C;  // (C,) this warp's grad_weight partial sums
  float* db = dw + a.C;                    // (C,) grad_ln_bias
  for (int c = lane; c < a.C; c += kWarp) dw[c] = 0.f, db[c] = 0.f;
  const float inv_c = 1.f / static_cast<float>(a.C);
  for (int64_t row = warp; row < a.rows; row += warps) {  // warp-uniform: every lane takes part in the sums
    float sum = 0.f;
    for (int c = lane; c < a.C; c += kWarp) sum += lnb_input(a, row, c);
    const float mean = warp_sum(sum) * inv_c;
    float sq = 0.f;
    for (int c = lane; c < a.C; c += kWarp) {
      const float d = lnb_input(a, row, c) - mean;
      sq += d * d;
    }
    const float rstd = rsqrtf(warp_sum(sq) * inv_c + a.eps);
    float sg = 0.f, sgx = 0.f;
    for (int c = lane; c < a.C; c += kWarp) {
      const float xh = (lnb_input(a, row, c) - mean) * rstd;
      const float go = to_float(a.grad_out[row * a.C + c]);
      const float g = mul_rounded(go, to_float(a.weight[c]));
      sg += g;
      sgx += g * xh;
      dw[c] += go * xh;
      db[c] += go;
    }
    const float mg = warp_sum(sg) * inv_c, mgx = warp_sum(sgx) * inv_c;
    for (int c = lane; c < a.C; c += kWarp) {
      const float xh = (lnb_input(a, row, c) - mean) * rstd;
      const float g = mul_rounded(to_float(a.grad_out[row * a.C + c]), to_float(a.weight[c]));
      const float d = rstd * ((g - mg) - xh * mgx);
      a.grad_v[row * a.C + c] = from_float<T>(d);
      if (a.drop) a.grad_residual[row * a.C + c] = from_float<T>(lnb_keep(a, row, c) ? d * a.scale : 0.f);
    }
  }
}

// grad_weight[c], grad_ln_bias[c] = the sums over the W partial rows, in warp order. One thread per column.
template <typename T>
__global__ void __launch_bounds__(kLnParamsThreads)
    add_layernorm_backward_params_kernel(const float* partial, int64_t warps, int C, T* grad_weight,
                                         T* grad_ln_bias) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLnParamsThreads + threadIdx.x;  // C may be near INT32_MAX
  if (c >= C) return;
  float dw = 0.f, db = 0.f;
  for (int64_t w = 0; w < warps; ++w) {
    dw += partial[w * 2 * C + c];
    db += partial[w * 2 * C + C + c];
  }
  grad_weight[c] = from_float<T>(dw);
  grad_ln_bias[c] = from_float<T>(db);
}

}  // namespace gpt_fast::cuda
