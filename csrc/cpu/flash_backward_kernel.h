// The body of the CPU flash attention backward (see flash_attention_backward.cpp for the algorithm): a small fp32
// GEMM micro-kernel, the recomputation of one (query block, key block) tile's probabilities and score gradients, and
// the tasks over (batch, head, key block). Header-only and always inlined, compiled once per lane count
// (attention_math.h): flash_attention_backward.cpp for AVX-512 and portable code (16 lanes),
// flash_attention_backward_avx2.cpp for AVX2 + FMA (8 lanes).
//
// Tiles are row-major with keys along the vector lanes: S[i][j], P, dP, dS for query i, key j of the tile; K^T and
// V^T (d, j) and the accumulators dK^T, dV^T (d, j) too, so that every product is "C (M x N) += A (M x K) B (K x N)"
// with B's rows loaded as vectors and A's elements broadcast (A read through any strides: Q^T, dO^T are Q, dO).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "cpu/attention_math.h"
#include "cpu/dropout_mask.h"

namespace gpt_fast::flash_bwd {
using namespace attention;

constexpr int kBlock = 64;      // queries per tile and keys per task
constexpr int kMaxHead = 128;
constexpr int kPadTo = 64;      // partial dQ rows are padded to a multiple of this (>= the GEMM's column step)

// One call's arguments. T_ below is the storage type of qkv, grad_out, out and grad_qkv.
struct Params {
  int64_t B, T, H, D;
  const void* qkv;         // (B, T, 3C), element (b, t, x) at b * qkv_sb + t * qkv_st + x
  int64_t qkv_sb, qkv_st;
  const void* grad_out;    // (B, T, C) contiguous
  const void* out;         // (B, T, C) contiguous
  const float* lse;        // (B, H, T)
  const bool* mask;        // (B, T) contiguous, or null
  void* grad_qkv;          // (B, T, 3C) contiguous: this kernel writes the k and v parts
  float* dq_part;          // partial dQ of each task (dq_offset), rows of Dp floats, times sqrt(D)
  float* delta;            // (B, H, T) Delta = rowsum(dO * O) of every query row (run_delta_tasks, before the tasks)
  int64_t Dp;              // D rounded up to kPadTo
  float scale2;            // log2(e) / sqrt(D)
  float inv_sqrt_d;        // 1 / sqrt(D): dQ = dS K / sqrt(D)
  float ln2;               // dK = dS^T (Q scale2) ln 2
  uint64_t seed;
  uint32_t threshold;      // 0: no dropout
  float keep_scale;        // 1 / (1 - p)
  cpu::Isa isa = cpu::Isa::kScalar;  // the tier that draws the dropout bits (cpu/dropout_mask.h)
};

// Offset (in floats) of the partial dQ of key block kb of one (batch, head): its rows are queries [64 kb, T).
inline int64_t dq_offset(const Params& p, int64_t bh, int64_t kb) {
  const int64_t n_kb = (p.T + kBlock - 1) / kBlock;
  const int64_t per_bh = (n_kb * p.T - kBlock * n_kb * (n_kb - 1) / 2) * p.Dp;
  return bh * per_bh + (kb * p.T - kBlock * kb * (kb - 1) / 2) * p.Dp;
}

#if GPT_FAST_HAVE_X86
template <typename T>
GPT_FAST_TARGET_AVX2 void run_backward_tasks_avx2(const Params& p, int64_t begin, int64_t end);
template <typename T>
GPT_FAST_TARGET_AVX2 void run_delta_tasks_avx2(const Params& p, int64_t begin, int64_t end);
#endif

struct Tiles {  // per-thread working set, lane-count independent (fp32 arrays only)
  alignas(64) float kt[kMaxHead][kBlock];    // K^T of the task's key block (zero past its keys)
  alignas(64) float vt[kMaxHead][kBlock];    // V^T
  alignas(64) float krow[kBlock][kMaxHead];  // K, rows of the key block (zero past D)
  alignas(64) float q[kBlock][kMaxHead];     // Q of the query block, times log2(e) / sqrt(D) (the forward's scores)
  alignas(64) float dout[kBlock][kMaxHead];  // dO
  alignas(64) float s[kBlock][kBlock];       // S, then P (undropped)
  alignas(64) float z[kBlock][kBlock];       // dropout factor: 1 / (1 - p) or 0
  alignas(64) float dp[kBlock][kBlock];      // P dropped, then dP, then dS
  alignas(64) float dkt[kMaxHead][kBlock];   // dK^T accumulator (times log2(e): Q is scaled by log2(e) / sqrt(D))
  alignas(64) float dvt[kMaxHead][kBlock];   // dV^T accumulator
  alignas(64) uint32_t kmask[kBlock];        // all ones where the key exists and is not padding
  float base[kBlock];                        // lse (base 2; +inf: the row attends nothing)
};

struct DeltaTiles {  // run_delta_tasks' working set: dO^T and O^T of a query block, Delta of its rows
  alignas(64) float gt[kMaxHead][kBlock];
  alignas(64) float ot[kMaxHead][kBlock];
  alignas(64) float delta[kBlock];
};

inline namespace GPT_FAST_ATTENTION_NS {

constexpr int kNV = 4;                        // vectors of C per micro-kernel tile
constexpr int kMR = kLanes == 16 ? 6 : 3;     // rows of C per micro-kernel tile
static_assert(kBlock % (kNV * kLanes) == 0 && kPadTo % (kNV * kLanes) == 0);

// C[MR rows][kNV vectors] (+)= sum_k A[r][k] B[k][:], A[r][k] at a[r * a_rs + k * a_ks].
template <int MR, bool ACC>
GPT_FAST_INLINE void gemm_tile(int64_t K, const float* a, int64_t a_rs, int64_t a_ks, const float* b, int64_t ldb,
                               float* c, int64_t ldc) {
  VF acc[MR][kNV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) acc[r][v] = ACC ? load(c + r * ldc + v * kLanes) : VF{};
  for (int64_t k = 0; k < K; ++k) {
    VF bv[kNV];
    for (int v = 0; v < kNV; ++v) bv[v] = load(b + k * ldb + v * kLanes);
    for (int r = 0; r < MR; ++r) {
      const float av = a[r * a_rs + k * a_ks];
      for (int v = 0; v < kNV; ++v) acc[r][v] += bv[v] * av;
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) store(c + r * ldc + v * kLanes, acc[r][v]);
}

template <int R, bool ACC>
GPT_FAST_INLINE void gemm_rows(int rows, int64_t K, const float* a, int64_t a_rs, int64_t a_ks, const float* b,
                               int64_t ldb, float* c, int64_t ldc) {
  if constexpr (R == 1) {
    gemm_tile<1, ACC>(K, a, a_rs, a_ks, b, ldb, c, ldc);
  } else {
    if (rows >= R) gemm_tile<R, ACC>(K, a, a_rs, a_ks, b, ldb, c, ldc);
    else gemm_rows<R - 1, ACC>(rows, K, a, a_rs, a_ks, b, ldb, c, ldc);
  }
}

// C (M x N) (+)= A (M x K) B (K x N); N a multiple of kNV * kLanes.
template <bool ACC>
GPT_FAST_INLINE void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_ks, const float* b,
                          int64_t ldb, float* c, int64_t ldc) {
  for (int64_t n0 = 0; n0 < N; n0 += kNV * kLanes)
    for (int64_t m0 = 0; m0 < M; m0 += kMR)
      gemm_rows<kMR, ACC>(static_cast<int>(std::min<int64_t>(kMR, M - m0)), K, a + m0 * a_rs, a_rs, a_ks, b + n0, ldb,
                          c + m0 * ldc + n0, ldc);
}

// Loads the key block [j0, j0 + nk) of (b, h): K^T, V^T (zero past nk), K rows, the key mask; clears dK^T, dV^T.
template <typename T>
GPT_FAST_INLINE void load_keys(const Params& p, Tiles& t, int64_t b, int64_t h, int64_t j0, int64_t nk) {
  const int64_t C = p.H * p.D;
  const T* base = static_cast<const T*>(p.qkv) + b * p.qkv_sb + j0 * p.qkv_st + h * p.D;
  for (int64_t d = 0; d < p.D; ++d) {
    std::memset(&t.kt[d][0], 0, sizeof(t.kt[d]));
    std::memset(&t.vt[d][0], 0, sizeof(t.vt[d]));
    std::memset(&t.dkt[d][0], 0, sizeof(t.dkt[d]));
    std::memset(&t.dvt[d][0], 0, sizeof(t.dvt[d]));
  }
  for (int64_t j = 0; j < nk; ++j) {
    const T* k = base + j * p.qkv_st + C;
    const T* v = k + C;
    for (int64_t d = 0; d < p.D; ++d) {
      const float kd = static_cast<float>(k[d]);
      t.krow[j][d] = kd;
      t.kt[d][j] = kd;
      t.vt[d][j] = static_cast<float>(v[d]);
    }
  }
  for (int64_t j = 0; j < kBlock; ++j)
    t.kmask[j] = j < nk && (!p.mask || p.mask[b * p.T + j0 + j]) ? ~0u : 0u;
}

// Loads the query block [i0, i0 + nq): Q, dO and the rows' lse (base 2).
template <typename T>
GPT_FAST_INLINE void load_queries(const Params& p, Tiles& t, int64_t b, int64_t h, int64_t i0, int64_t nq) {
  const int64_t C = p.H * p.D;
  const T* q = static_cast<const T*>(p.qkv) + b * p.qkv_sb + i0 * p.qkv_st + h * p.D;
  const T* dout = static_cast<const T*>(p.grad_out) + (b * p.T + i0) * C + h * p.D;
  const float* lse = p.lse + (b * p.H + h) * p.T + i0;
  for (int64_t i = 0; i < nq; ++i) {
    for (int64_t d = 0; d < p.D; ++d) {
      t.q[i][d] = static_cast<float>(q[i * p.qkv_st + d]) * p.scale2;  // as the forward scales it
      t.dout[i][d] = static_cast<float>(dout[i * C + d]);
    }
    t.base[i] = lse[i] == kNegInf ? -kNegInf : lse[i];  // +inf: exp2(s - inf) = 0 for every key
  }
}

// Delta = rowsum(dO * O) of the query block [i0, i0 + nq) of (b, h) into p.delta, once per row (the tasks of every
// key block read it). Query rows along the lanes: the same lane-wise products and sums as the GEMM's dP = dO V^T
// (a vector multiply-add per head dim, in order, in the same tier's code), so that a row whose output is one value
// row (T = 1) gets dP - Delta = 0 exactly, as PyTorch's softmax backward does. Made in every task instead (dO^T and O^T
// stored element by element for each (key block, query block) tile) it cost a quarter or more of forward + backward
// (flash_attention_backward.cpp).
template <typename T>
GPT_FAST_INLINE void delta_rows(const Params& p, DeltaTiles& t, int64_t b, int64_t h, int64_t i0, int64_t nq) {
  const int64_t C = p.H * p.D;
  const T* dout = static_cast<const T*>(p.grad_out) + (b * p.T + i0) * C + h * p.D;
  const T* out = static_cast<const T*>(p.out) + (b * p.T + i0) * C + h * p.D;
  for (int64_t i = 0; i < nq; ++i) {
    for (int64_t d = 0; d < p.D; ++d) {
      t.gt[d][i] = static_cast<float>(dout[i * C + d]);
      t.ot[d][i] = static_cast<float>(out[i * C + d]);
    }
  }
  for (int v = 0; v < kBlock / kLanes; ++v) {  // lanes past nq sum stale values, not copied out
    VF acc{};
    for (int64_t d = 0; d < p.D; ++d) acc += load(&t.gt[d][v * kLanes]) * load(&t.ot[d][v * kLanes]);
    store(&t.delta[v * kLanes], acc);
  }
  std::memcpy(p.delta + (b * p.H + h) * p.T + i0, t.delta, nq * sizeof(float));
}

// P (into t.s), the dropout factors (t.z) and P dropped (t.dp) of the tile: queries i0 + i (i < nq), keys j0 + j.
GPT_FAST_INLINE void probabilities(const Params& p, Tiles& t, int64_t bh, int64_t i0, int64_t j0, int64_t nq) {
  constexpr int kVec = kBlock / kLanes;
  VI lane;
  for (int l = 0; l < kLanes; ++l) lane[l] = l;
  VI lane_bit;  // bit l of a row's keep bits -> lane l
  for (int l = 0; l < kLanes; ++l) lane_bit[l] = 1 << l;
  const cpu::Dropout drop{p.seed, p.threshold, p.keep_scale};
  uint64_t bits[cpu::keep_words(kBlock)];
  for (int64_t i = 0; i < nq; ++i) {
    const VF base = splat(t.base[i]);
    const bool diagonal = i0 == j0;  // blocks are aligned: keys past the query only in the diagonal tile
    for (int v = 0; v < kVec; ++v) {
      VI allowed;
      std::memcpy(&allowed, &t.kmask[v * kLanes], sizeof(allowed));
      if (diagonal) allowed &= (VI)(lane + v * kLanes <= static_cast<int32_t>(i));
      const VF e = exp2_nonpositive(load(&t.s[i][v * kLanes]) - base);
      store(&t.s[i][v * kLanes], (VF)((VI)e & allowed));
    }
    if (p.threshold == 0) continue;
    const uint64_t n0 = static_cast<uint64_t>((bh * p.T + i0 + i) * p.T + j0);
    cpu::keep_bits_best(p.isa, drop, n0, kBlock, bits);
    for (int v = 0; v < kVec; ++v) {
      const auto k = static_cast<int32_t>(cpu::keep_bits(bits, static_cast<int64_t>(n0 & 3) + v * kLanes, kLanes));
      const VF z = (VF)((VI)splat(p.keep_scale) & (VI)(((VI{} + k) & lane_bit) != 0));
      store(&t.z[i][v * kLanes], z);
      store(&t.dp[i][v * kLanes], load(&t.s[i][v * kLanes]) * z);
    }
  }
}

// The task's key block against every query block at or after it; dQ's share into the task's partial rows.
template <typename T>
GPT_FAST_INLINE void key_task(const Params& p, Tiles& t, int64_t bh, int64_t kb) {
  const int64_t b = bh / p.H, h = bh % p.H, j0 = kb * kBlock, nk = std::min<int64_t>(kBlock, p.T - j0);
  load_keys<T>(p, t, b, h, j0, nk);
  float* part = p.dq_part + dq_offset(p, bh, kb);
  constexpr int64_t ld = kMaxHead;
  for (int64_t i0 = j0; i0 < p.T; i0 += kBlock) {
    const int64_t nq = std::min<int64_t>(kBlock, p.T - i0);
    load_queries<T>(p, t, b, h, i0, nq);
    gemm<false>(nq, kBlock, p.D, &t.q[0][0], ld, 1, &t.kt[0][0], kBlock, &t.s[0][0], kBlock);  // S = Q K^T
    probabilities(p, t, bh, i0, j0, nq);
    const float* pd = p.threshold ? &t.dp[0][0] : &t.s[0][0];
    gemm<true>(p.D, kBlock, nq, &t.dout[0][0], 1, ld, pd, kBlock, &t.dvt[0][0], kBlock);  // dV^T += dO^T P_drop
    gemm<false>(nq, kBlock, p.D, &t.dout[0][0], ld, 1, &t.vt[0][0], kBlock, &t.dp[0][0], kBlock);  // dP = dO V^T
    const float* row_delta = p.delta + bh * p.T + i0;  // (nq,) from run_delta_tasks
    for (int64_t i = 0; i < nq; ++i) {  // dS = P * (dP * z - Delta)
      const VF delta = splat(row_delta[i]);
      for (int v = 0; v < kBlock / kLanes; ++v) {
        VF dp = load(&t.dp[i][v * kLanes]);
        if (p.threshold) dp *= load(&t.z[i][v * kLanes]);
        store(&t.dp[i][v * kLanes], load(&t.s[i][v * kLanes]) * (dp - delta));
      }
    }
    gemm<true>(p.D, kBlock, nq, &t.q[0][0], 1, ld, &t.dp[0][0], kBlock, &t.dkt[0][0], kBlock);  // dK^T += Q^T dS
    gemm<false>(nq, p.Dp, nk, &t.dp[0][0], kBlock, 1, &t.krow[0][0], ld, part + (i0 - j0) * p.Dp, p.Dp);  // dS K
  }
  // dK, dV rows of the block into grad_qkv
  const int64_t C = p.H * p.D;
  T* grad = static_cast<T*>(p.grad_qkv) + (b * p.T + j0) * 3 * C + h * p.D;
  alignas(64) float row[kMaxHead];
  for (int64_t j = 0; j < nk; ++j) {
    for (int64_t d = 0; d < p.D; ++d) row[d] = t.dkt[d][j] * p.ln2;
    float_to_row(row, grad + j * 3 * C + C, p.D);
    for (int64_t d = 0; d < p.D; ++d) row[d] = t.dvt[d][j];
    float_to_row(row, grad + j * 3 * C + 2 * C, p.D);
  }
}

// Task k -> (batch, head) * n_qb + query block: its rows' Delta.
template <typename T>
GPT_FAST_INLINE void run_delta_tasks(const Params& p, int64_t begin, int64_t end) {
  auto tiles = std::make_unique<DeltaTiles>();
  const int64_t n_qb = (p.T + kBlock - 1) / kBlock;
  for (int64_t k = begin; k < end; ++k) {
    const int64_t bh = k / n_qb, i0 = k % n_qb * kBlock;
    delta_rows<T>(p, *tiles, bh / p.H, bh % p.H, i0, std::min<int64_t>(kBlock, p.T - i0));
  }
}

// Task k -> (key block, batch, head); key blocks ordered 0, n-1, 1, n-2, ... (the first ones have the most queries).
template <typename T>
GPT_FAST_INLINE void run_backward_tasks(const Params& p, int64_t begin, int64_t end) {
  auto tiles = std::make_unique<Tiles>();
  const int64_t n_kb = (p.T + kBlock - 1) / kBlock;
  for (int64_t k = begin; k < end; ++k) {
    const int64_t z = k / (p.B * p.H), bh = k % (p.B * p.H);
    key_task<T>(p, *tiles, bh, z % 2 == 0 ? z / 2 : n_kb - 1 - z / 2);
  }
}

}  // inline namespace GPT_FAST_ATTENTION_NS
}  // namespace gpt_fast::flash_bwd
