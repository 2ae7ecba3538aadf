// Pieces shared by the CUDA training attention kernels (flash_attention_train.cuh, flash_attention_backward.cuh):
// the arguments, the dot products whose exact rounding the backward must repeat, and the dropout factor.
//
// The backward recomputes each probability as P = exp2(S - lse) from the forward's base-2 log-sum-exp; S is
// recomputed by the same function on the same fp32 values (score_dot: 8 interleaved fmaf accumulators over the
// head dims rounded up to 8, zeros past D, summed as a tree), so that a row with one key gets P = 1 exactly.
// Delta = rowsum(dO * O) and dP = dO . v use one function too (row_dot), so that such a row gets dP - Delta = 0.
// Dropout follows csrc/philox.h: probability (b, h, i, j) is element ((b H + h) T + i) T + j. No torch header.
#pragma once
#include <cmath>

#include "../philox.h"
#include "common.cuh"

namespace gpt_fast::cuda {

template <typename Elem>
struct TrainArgs {
  const Elem* qkv;        // (B, T, 3C): q | k | v, each (B, T, H, D)
  const uint8_t* allow;   // (B, T) key_padding_mask, nonzero = attend; nullptr = all
  int B, T, H, D;
  float scale_log2;       // log2(e) / sqrt(D): scores in base 2
  uint64_t seed;
  uint32_t threshold;     // floor(p 2^32); 0 = no dropout
  float keep_scale;       // 1 / (1 - p)
};

// sum_d a(d) b(d) over d < Dr (a multiple of 8; the accessors give zeros past D), in 8 interleaved fmaf chains
// summed as a tree: the forward's score and the backward's recomputation are this same sequence of operations
// (fmaf(x, y, c) = fmaf(y, x, c), so the operands' roles may swap).
template <typename A, typename B>
__device__ inline float row_dot_at(A a, B b, int Dr) {
  float acc[8] = {};
  for (int d = 0; d < Dr; d += 8)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] = fmaf(a(d + j), b(d + j), acc[j]);
  return tree_sum8(acc);
}

// row_dot_at on two fp32 rows (shared memory, zero-padded to Dr).
__device__ inline float row_dot(const float* a, const float* b, int Dr) {
  return row_dot_at([&](int d) { return a[d]; }, [&](int d) { return b[d]; }, Dr);
}

// The base-2 score q . k log2(e) / sqrt(D) from its dot product: a product rounded on its own (never fused into the
// subtraction that follows it), so that the forward's max and the backward's recomputation see the same value.
__device__ inline float score_of(float dot, float scale_log2) {
#ifdef GF_SIMT
  return dot * scale_log2;  // the harness builds for x86-64 without FMA: g++ has nothing to fuse it into
#else
  return __fmul_rn(dot, scale_log2);
#endif
}

// The dropout factor of probability (bh, i, j): keep_scale or 0 (1 without dropout).
template <typename Elem>
__device__ inline float drop_factor(const TrainArgs<Elem>& a, int bh, int i, int j) {
  if (a.threshold == 0) return 1.f;
  const uint64_t n = (static_cast<uint64_t>(bh) * a.T + i) * static_cast<uint64_t>(a.T) + j;
  return philox::keep(a.seed, n, a.threshold) ? a.keep_scale : 0.f;
}

// Whether key j of batch row b exists and is not padding.
template <typename Elem>
__device__ inline bool key_allowed(const TrainArgs<Elem>& a, int b, int j) {
  return j < a.T && (a.allow == nullptr || a.allow[static_cast<int64_t>(b) * a.T + j] != 0);
}

// Loads rows [r0, r0 + rows) of one (T, D) slice with row stride `stride` into dst[r][c] (fp32, row pitch `pitch`,
// columns up to DP), zeros past T and D. All threads of the block take part.
template <int kThreads, int DP, typename Elem>
__device__ inline void stage_rows(float* dst, int pitch, const Elem* src, int64_t stride, int r0, int rows, int T,
                                  int D) {
  for (int idx = threadIdx.x; idx < rows * DP; idx += kThreads) {
    const int r = idx / DP, c = idx % DP, t = r0 + r;
    dst[r * pitch + c] = (t < T && c < D) ? to_float(src[t * stride + c]) : 0.f;
  }
}

// log2(e) / sqrt(D), rounded once (host: both launchers).
inline float train_scale_log2(int D) {
  return static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(D)));
}

__host__ __device__ inline int round_up8(int d) { return (d + 7) / 8 * 8; }

}  // namespace gpt_fast::cuda
